//! Encode → bytes → decode, for every message type and both framings.

mod common;

use common::*;
use firmware_bridge::dashboard::{
    AlertKind, AlertLevel, AlertMessage, AlertPoint, Counters, StationState, StatusMessage, Timings,
};
use firmware_bridge::{
    Chunk, GridShape, Message, MessageKind, Quantizer, RejectReason, Sampling, StreamDecoder,
    Values, WireMessage, cobs_max_len, decode, decode_chunk, decode_cobs, decode_forecast,
    decode_frame,
};

#[test]
fn dense_f32_frame_round_trips() {
    let frame = example_frame();
    let bytes = frame.to_vec().unwrap();
    assert_eq!(bytes.len(), frame.encoded_len().unwrap());
    let back = decode_frame(&bytes).unwrap();
    assert_eq!(back, frame);
    assert_eq!(back.values.to_vec(), EXAMPLE_VALUES);
    assert_eq!(back.dense(0, 1, 2), Some(2.5));
    assert_eq!(back.dense(0, 2, 0), None);
    assert_eq!(back.get(0, 4), Some(2.0));
    assert_eq!(back.get(1, 0), None);
    // Decoding borrows: the station id points into the input.
    let range = bytes.as_ptr_range();
    assert!(range.contains(&back.station.as_ptr()));
}

#[test]
fn quantised_point_frame_round_trips() {
    let frame = example_points_frame();
    let bytes = frame.to_vec().unwrap();
    let back = decode_frame(&bytes).unwrap();
    assert_eq!(back, frame);
    let Sampling::Points(points) = back.sampling else {
        panic!("points expected")
    };
    assert_eq!(points.to_vec(), EXAMPLE_POINTS);
    assert_eq!(back.channels.as_slice(), ["u", "v"]);
    // [channel][point]: v at point 1 is the last count.
    let v1 = back.get(1, 1).unwrap();
    assert!((v1 - (-0.4)).abs() < 1e-6, "{v1}");
}

#[test]
fn multi_channel_dense_frame_round_trips_in_both_encodings() {
    let shape = GridShape::new(16, 12, 3);
    let values = field(16, 12, 3);
    let frame = dense_frame(42, shape, &values, &["h", "hu", "hv"]);
    let bytes = frame.to_vec().unwrap();
    assert_eq!(decode_frame(&bytes).unwrap(), frame);

    let (lo, hi) = values
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let q = Quantizer::for_range(lo, hi);
    let mut counts = vec![0_i16; values.len()];
    q.quantize_into(&values, &mut counts);
    let quantised = firmware_bridge::SensorFrame {
        values: Values::i16(&counts, q),
        ..frame
    };
    let qbytes = quantised.to_vec().unwrap();
    assert!(
        qbytes.len() < bytes.len() * 6 / 10,
        "i16 is about half the size of f32"
    );
    let back = decode_frame(&qbytes).unwrap();
    assert_eq!(back, quantised);
    let worst = back
        .values
        .iter()
        .zip(&values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        worst <= q.scale * 0.5001,
        "quantisation error {worst} within half a step"
    );
}

#[test]
fn forecast_round_trips() {
    let forecast = example_forecast();
    let bytes = forecast.to_vec().unwrap();
    let back = decode_forecast(&bytes).unwrap();
    assert_eq!(back, forecast);
    assert_eq!(back.horizon(), 2);
    assert_eq!(back.get(1, 0, 0, 1), Some(4.0));
    assert_eq!(back.get(2, 0, 0, 0), None);
    assert_eq!(back.timestamps_us.to_vec(), EXAMPLE_STEPS);
}

#[test]
fn chunk_round_trips() {
    let data = [1_u8, 0, 2, 0, 3];
    let chunk = Chunk {
        frame_seq: 99,
        index: 0,
        count: 1,
        total_len: 5,
        data: &data,
    };
    let bytes = chunk.to_vec().unwrap();
    assert_eq!(decode_chunk(&bytes).unwrap(), chunk);
}

#[test]
fn decode_dispatches_on_kind_and_decode_as_checks_it() {
    let frame = example_frame().to_vec().unwrap();
    let forecast = example_forecast().to_vec().unwrap();
    assert_eq!(decode(&frame).unwrap().kind(), MessageKind::Frame);
    assert_eq!(decode(&forecast).unwrap().kind(), MessageKind::Forecast);
    let err = decode_forecast(&frame).unwrap_err();
    assert_eq!(err.reason(), RejectReason::WrongKind);
    assert!(
        err.to_string()
            .contains("expected a forecast message, got a frame"),
        "{err}"
    );
}

#[test]
fn message_enum_re_encodes_to_the_same_bytes() {
    for bytes in [
        example_frame().to_vec().unwrap(),
        example_points_frame().to_vec().unwrap(),
        example_forecast().to_vec().unwrap(),
    ] {
        let msg = decode(&bytes).unwrap();
        let mut out = vec![0; bytes.len()];
        assert_eq!(msg.encode(&mut out).unwrap(), &bytes[..]);
        let mut cobs = vec![0; cobs_max_len(bytes.len())];
        let framed = msg.encode_cobs(&mut cobs).unwrap().to_vec();
        let mut framed_copy = framed.clone();
        let (again, rest) = decode_cobs(&mut framed_copy).unwrap();
        assert_eq!(again, msg);
        assert!(rest.is_empty());
    }
}

#[test]
fn encode_into_a_fixed_buffer_reports_the_size_needed() {
    let frame = example_frame();
    let mut small = [0_u8; 20];
    let err = frame.encode(&mut small).unwrap_err();
    assert_eq!(
        err,
        firmware_bridge::EncodeError::BufferTooSmall {
            needed: 57,
            available: 20
        }
    );
    let err = frame.encode_cobs(&mut small).unwrap_err();
    assert!(matches!(
        err,
        firmware_bridge::EncodeError::BufferTooSmall { available: 20, .. }
    ));
    let mut exact = [0_u8; 57];
    assert_eq!(frame.encode(&mut exact).unwrap().len(), 57);
}

#[test]
fn cobs_frames_contain_no_zero_but_the_delimiter() {
    let bytes = example_frame().to_vec_cobs().unwrap();
    assert_eq!(bytes.last(), Some(&0));
    assert!(!bytes[..bytes.len() - 1].contains(&0));
    assert!(bytes.len() <= cobs_max_len(example_frame().encoded_len().unwrap()));
}

#[test]
fn stream_decoder_reads_back_to_back_frames_in_odd_pieces() {
    let mut stream = vec![0_u8]; // a leading delimiter, as a sender may flush with
    let values: Vec<Vec<f32>> = (0..5)
        .map(|i| field(4, 4, 1).iter().map(|v| v + i as f32).collect())
        .collect();
    for (seq, v) in values.iter().enumerate() {
        let f = dense_frame(seq as u32, GridShape::new(4, 4, 1), v, &["w"]);
        stream.extend(f.to_vec_cobs().unwrap());
    }
    stream.extend(example_forecast().to_vec_cobs().unwrap());
    for piece_len in [1, 3, 7, 64, stream.len()] {
        let mut rx = StreamDecoder::<512>::new();
        let mut seqs = vec![];
        let mut forecasts = 0;
        for piece in stream.chunks(piece_len) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (event, left) = rx.feed(rest);
                rest = left;
                match event {
                    Some(Ok(Message::Frame(f))) => {
                        assert_eq!(f.values.to_vec(), values[f.seq as usize]);
                        seqs.push(f.seq);
                    }
                    Some(Ok(Message::Forecast(_))) => forecasts += 1,
                    Some(other) => panic!("unexpected {other:?}"),
                    None => {}
                }
            }
        }
        assert_eq!(seqs, [0, 1, 2, 3, 4], "piece length {piece_len}");
        assert_eq!(forecasts, 1);
    }
}

#[test]
fn stream_decoder_skips_an_oversized_frame_and_resynchronises() {
    let big = field(32, 32, 1);
    let big_frame = dense_frame(1, GridShape::new(32, 32, 1), &big, &["h"])
        .to_vec_cobs()
        .unwrap();
    let mut stream = big_frame.clone();
    stream.extend(example_frame().to_vec_cobs().unwrap());
    for piece_len in [5, 100, stream.len()] {
        let mut rx = StreamDecoder::<128>::new();
        let mut events = vec![];
        for piece in stream.chunks(piece_len) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (event, left) = rx.feed(rest);
                rest = left;
                if let Some(e) = event {
                    events.push(e.map(|m| m.kind()).map_err(|e| e.reason()));
                }
            }
        }
        assert_eq!(
            events,
            [Err(RejectReason::TooLarge), Ok(MessageKind::Frame)],
            "piece length {piece_len}"
        );
    }
}

#[test]
fn status_message_round_trips_as_json() {
    let mut counters = Counters {
        frames_received: 1200,
        forecasts_published: 40,
        leads_published: 40,
        ..Default::default()
    };
    counters.reject(RejectReason::BadCrc);
    counters.reject(RejectReason::BadCrc);
    counters.reject(RejectReason::NonFinite);
    let status = StatusMessage {
        schema: 1,
        station: "st-01".into(),
        state: StationState::Online,
        updated_at_us: T0,
        family: Some("dam_break".into()),
        model_sha256: Some("ab".repeat(32)),
        alpha: Some(1.4),
        alpha_confidence: Some(0.8),
        extrapolating: true,
        prefix_fit_error: Some(0.031),
        timings: Timings {
            readout_ms: Some(12.5),
            merge_ms: Some(3.0),
            rollout_ms: Some(40.0),
            frame_to_forecast_ms: Some(60.0),
            frame_to_lead_ms: Some(22.0),
        },
        counters,
        state_from: Some("analysis from forecast".into()),
        model_release: Some(3),
        last_update: Some("release 3 installed".into()),
        fallback: None,
    };
    let json = serde_json::to_string_pretty(&status).unwrap();
    assert!(json.contains("\"bad_crc\": 2"), "{json}");
    assert!(json.contains("\"state\": \"online\""), "{json}");
    let back: StatusMessage = serde_json::from_str(&json).unwrap();
    assert_eq!(back, status);
    assert_eq!(back.counters.rejected(RejectReason::BadCrc), 2);
    assert_eq!(back.counters.rejected_total(), 3);
}

#[test]
fn offline_last_will_is_minimal_and_parses_back() {
    let will = StatusMessage::offline("st-01", T0);
    let json = serde_json::to_string(&will).unwrap();
    let back: StatusMessage = serde_json::from_str(&json).unwrap();
    assert_eq!(back, will);
    let minimal: StatusMessage =
        serde_json::from_str(r#"{"station":"st-01","state":"offline","some_future_key":1}"#)
            .unwrap();
    assert_eq!(minimal.state, StationState::Offline);
    assert_eq!(minimal.alpha, None);
}

#[test]
fn alert_message_round_trips_as_json_and_tolerates_new_kinds() {
    let alert = AlertMessage {
        schema: 1,
        id: "st-01-17".into(),
        station: "st-01".into(),
        kind: AlertKind::ThresholdCrossing,
        level: AlertLevel::Critical,
        issued_at_us: T0,
        point: Some(AlertPoint {
            row: 10,
            col: 20,
            channel: "h".into(),
        }),
        threshold: Some(1.5),
        expected_crossing_us: Some(T0 + 600_000_000),
        all_clear: false,
        message: "water depth forecast to exceed 1.5 m at (10, 20) in 10 min".into(),
    };
    let json = serde_json::to_string(&alert).unwrap();
    assert!(json.contains("\"kind\":\"threshold_crossing\""), "{json}");
    let back: AlertMessage = serde_json::from_str(&json).unwrap();
    assert_eq!(back, alert);
    let clear: AlertMessage = serde_json::from_str(
        r#"{"id":"st-01-17","station":"st-01","kind":"sensor_on_fire","level":"info","all_clear":true}"#,
    )
    .unwrap();
    assert_eq!(clear.kind, AlertKind::Other);
    assert!(clear.all_clear);
}
