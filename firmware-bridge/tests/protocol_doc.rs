//! docs/PROTOCOL.md cannot drift from the code: its worked examples are these constants, the
//! encoder must produce them, the document must show them, its JSON examples must parse, and its
//! Python reference sender must reproduce them.

mod common;

use common::*;
use firmware_bridge::dashboard::{AlertMessage, StatusMessage};
use firmware_bridge::{WireMessage, decode, split};

/// 10.1: the dense f32 frame.
const FRAME_HEX: &str = "\
43 54 01 01 30 05 73 74 2d 30 31 07 80 80 f9 c0
c1 c4 82 03 01 01 68 02 03 01 00 00 18 00 00 00
00 00 00 00 3f 00 00 80 3f 00 00 c0 3f 00 00 00
40 00 00 20 40 dd 57 9a 5d";

/// 10.1: the same frame COBS-framed.
const FRAME_COBS_HEX: &str = "\
1b 43 54 01 01 30 05 73 74 2d 30 31 07 80 80 f9
c0 c1 c4 82 03 01 01 68 02 03 01 01 02 18 01 01
01 01 01 01 02 3f 01 03 80 3f 01 03 c0 3f 01 01
02 40 01 07 20 40 dd 57 9a 5d 00";

/// 10.2: the quantised point frame.
const POINTS_HEX: &str = "\
43 54 01 01 33 05 73 74 2d 30 31 08 c0 84 b6 c1
c1 c4 82 03 02 01 75 01 76 40 40 02 01 08 0a 00
14 00 1e 00 28 00 01 6f 12 83 3a 00 00 00 00 08
64 00 38 ff 2c 01 70 fe 5d 41 f6 53";

/// 10.3: the forecast.
const FORECAST_HEX: &str = "\
43 54 01 03 3c 05 73 74 2d 30 31 07 d0 86 fc c0
c1 c4 82 03 00 00 a0 3f 01 01 68 01 02 01 10 40
82 2d 18 24 0a 06 00 80 c4 3c 18 24 0a 06 00 00
10 00 00 80 3f 00 00 00 40 00 00 40 40 00 00 80
40 61 57 08 d3";

/// 10.4: the frame of 10.1 in two chunks of at most 32 bytes.
const CHUNK0_HEX: &str = "\
43 54 01 02 25 07 00 02 39 20 43 54 01 01 30 05
73 74 2d 30 31 07 80 80 f9 c0 c1 c4 82 03 01 01
68 02 03 01 00 00 18 00 00 00 27 ef 2f e8";

const CHUNK1_HEX: &str = "\
43 54 01 02 1e 07 01 02 39 19 00 00 00 00 3f 00
00 80 3f 00 00 c0 3f 00 00 00 40 00 00 20 40 dd
57 9a 5d 91 ab db 87";

fn examples() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let frame = example_frame().to_vec().unwrap();
    let chunks: Vec<Vec<u8>> = split(&frame, 7, 32)
        .unwrap()
        .map(|c| c.to_vec().unwrap())
        .collect();
    vec![
        ("10.1 frame", FRAME_HEX, frame.clone()),
        (
            "10.1 COBS",
            FRAME_COBS_HEX,
            example_frame().to_vec_cobs().unwrap(),
        ),
        (
            "10.2 points",
            POINTS_HEX,
            example_points_frame().to_vec().unwrap(),
        ),
        (
            "10.3 forecast",
            FORECAST_HEX,
            example_forecast().to_vec().unwrap(),
        ),
        ("10.4 chunk 0", CHUNK0_HEX, chunks[0].clone()),
        ("10.4 chunk 1", CHUNK1_HEX, chunks[1].clone()),
    ]
}

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable")
}

/// The fenced blocks of `lang` in a markdown text.
fn fenced(doc: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}\n");
    doc.split(&open)
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_encoder_produces_the_worked_examples() {
    for (name, hex, bytes) in examples() {
        assert_eq!(
            hex_block(&bytes),
            hex,
            "{name}: the encoder now writes\n{}",
            hex_block(&bytes)
        );
    }
}

#[test]
fn the_worked_examples_decode_to_the_example_messages() {
    assert_eq!(
        decode(&unhex(FRAME_HEX)).unwrap(),
        firmware_bridge::Message::Frame(example_frame())
    );
    assert_eq!(
        decode(&unhex(POINTS_HEX)).unwrap(),
        firmware_bridge::Message::Frame(example_points_frame())
    );
    assert_eq!(
        decode(&unhex(FORECAST_HEX)).unwrap(),
        firmware_bridge::Message::Forecast(example_forecast())
    );
    let mut cobs = unhex(FRAME_COBS_HEX);
    let (msg, rest) = firmware_bridge::decode_cobs(&mut cobs).unwrap();
    assert_eq!(msg, firmware_bridge::Message::Frame(example_frame()));
    assert!(rest.is_empty());
}

#[test]
fn protocol_md_shows_every_worked_example() {
    let doc = protocol_md();
    let blocks = fenced(&doc, "text");
    for (name, hex, _) in examples() {
        assert!(
            blocks.iter().any(|b| b.trim() == hex),
            "docs/PROTOCOL.md lacks the hex block of {name}; it should read\n{hex}"
        );
    }
}

#[test]
fn protocol_md_json_examples_parse() {
    let doc = protocol_md();
    let blocks = fenced(&doc, "json");
    assert_eq!(blocks.len(), 2, "a status and an alert example");
    let status: StatusMessage =
        serde_json::from_str(&blocks[0]).expect("the status example parses");
    assert_eq!(status.counters.frames_rejected.get("bad_crc"), Some(&2));
    let back: serde_json::Value = serde_json::to_value(&status).unwrap();
    let original: serde_json::Value = serde_json::from_str(&blocks[0]).unwrap();
    assert_eq!(
        back, original,
        "the status example lists exactly the fields the struct has"
    );
    let alert: AlertMessage = serde_json::from_str(&blocks[1]).expect("the alert example parses");
    let back: serde_json::Value = serde_json::to_value(&alert).unwrap();
    let original: serde_json::Value = serde_json::from_str(&blocks[1]).unwrap();
    assert_eq!(
        back, original,
        "the alert example lists exactly the fields the struct has"
    );
}

#[test]
fn the_python_reference_sender_reproduces_the_frame() {
    let doc = protocol_md();
    let blocks = fenced(&doc, "python");
    assert_eq!(blocks.len(), 1);
    let run = std::process::Command::new("python3")
        .arg("-c")
        .arg(&blocks[0])
        .output();
    let Ok(out) = run else {
        eprintln!("python3 not found: the reference sender was not run");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(unhex(lines[0]), unhex(FRAME_HEX));
    assert_eq!(unhex(lines[1]), unhex(FRAME_COBS_HEX));
}
