//! Every rejection comes with the right reason: corrupted, cut, padded, malformed and
//! meaningless messages, and senders that try to encode them.

mod common;

use common::*;
use firmware_bridge::limits::{MAX_CHANNELS, MAX_FRAME_VALUES, MAX_STATION_LEN};
use firmware_bridge::{
    Channels, ChunkProblem, DecodeError, EncodeError, Field, GridPoint, Limit, Malformation,
    MessageKind, PackedSlice, Quantizer, RejectReason, Sampling, SensorFrame, ShapeProblem, Values,
    WireMessage, decode, decode_frame,
};

#[test]
fn every_single_bit_flip_is_rejected_and_crc_catches_those_in_body_and_crc() {
    for msg in [
        example_frame().to_vec().unwrap(),
        example_points_frame().to_vec().unwrap(),
        example_forecast().to_vec().unwrap(),
    ] {
        let body = body_range(&msg);
        for byte in 0..msg.len() {
            for bit in 0..8 {
                let mut m = msg.clone();
                m[byte] ^= 1 << bit;
                let err = decode(&m).expect_err("a flipped bit must be caught");
                let expected: &[RejectReason] = match byte {
                    0 | 1 => &[RejectReason::BadMagic],
                    2 => &[RejectReason::UnsupportedVersion],
                    3 => &[RejectReason::BadCrc],
                    b if b < body.start => {
                        // The length prefix: the body and CRC shift, so the message no longer adds up.
                        &[
                            RejectReason::Truncated,
                            RejectReason::TrailingBytes,
                            RejectReason::BadCrc,
                        ]
                    }
                    _ => &[RejectReason::BadCrc],
                };
                assert!(
                    expected.contains(&err.reason()),
                    "byte {byte} bit {bit}: got {err:?}, expected one of {expected:?}"
                );
            }
        }
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let msg = example_points_frame().to_vec().unwrap();
    for len in 0..msg.len() {
        let err = decode(&msg[..len]).unwrap_err();
        assert_eq!(
            err.reason(),
            RejectReason::Truncated,
            "length {len}: {err:?}"
        );
    }
    assert_eq!(
        decode(&msg[..3]).unwrap_err(),
        DecodeError::Truncated { field: Field::Kind }
    );
    assert_eq!(
        decode(&msg[..msg.len() - 2]).unwrap_err(),
        DecodeError::Truncated { field: Field::Crc }
    );
}

#[test]
fn bytes_after_the_crc_are_rejected() {
    let mut msg = example_frame().to_vec().unwrap();
    msg.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        decode(&msg).unwrap_err(),
        DecodeError::TrailingBytes {
            field: Field::Crc,
            count: 3
        }
    );
}

#[test]
fn header_errors_name_what_was_found() {
    let msg = example_frame().to_vec().unwrap();
    let mut m = msg.clone();
    m[0] = b'X';
    assert_eq!(
        decode(&m).unwrap_err(),
        DecodeError::BadMagic {
            found: [b'X', b'T']
        }
    );
    let mut m = msg.clone();
    m[2] = 2;
    let err = decode(&m).unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedVersion { found: 2 });
    assert!(
        err.to_string().contains("version 2 is not supported"),
        "{err}"
    );
    let body = &msg[body_range(&msg)];
    assert_eq!(
        decode(&seal(9, body)).unwrap_err(),
        DecodeError::UnknownKind { found: 9 }
    );
    // An intact message of the wrong kind.
    // A frame body sealed under the forecast kind (a sender bug): intact, but not a forecast.
    let err = decode(&seal(3, body)).unwrap_err();
    assert!(
        matches!(
            err.reason(),
            RejectReason::Malformed | RejectReason::Truncated | RejectReason::InvalidName
        ),
        "a frame body read as a forecast: {err:?}"
    );
    let forecast = example_forecast().to_vec().unwrap();
    assert_eq!(
        decode_frame(&forecast).unwrap_err(),
        DecodeError::WrongKind {
            expected: MessageKind::Frame,
            found: MessageKind::Forecast
        }
    );
}

#[test]
fn bad_crc_reports_both_values() {
    let mut msg = example_frame().to_vec().unwrap();
    let last = msg.len() - 1;
    msg[last] ^= 0xff;
    let err = decode(&msg).unwrap_err();
    let DecodeError::BadCrc { carried, computed } = err else {
        panic!("{err:?}")
    };
    assert_eq!(computed, 0x5d9a_57dd);
    assert_eq!(carried, 0xa29a_57dd);
    assert!(err.to_string().contains("0x5d9a57dd"), "{err}");
}

#[test]
fn malformed_fields_are_named() {
    // Invalid UTF-8 in the station id.
    let body = Body::new().bytes(&[0xff, 0xfe]).0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::Malformed {
            field: Field::Station,
            problem: Malformation::BadUtf8
        }
    );
    // A u16 row count that overflows.
    let body = Body::new()
        .str("st-01")
        .varint(7)
        .varint(T0)
        .varint(1)
        .str("h")
        .varint(70_000)
        .0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::Malformed {
            field: Field::Shape,
            problem: Malformation::BadVarint
        }
    );
    // Unknown sampling and encoding tags.
    let body = Body::new().frame_head("st-01", &["h"], 2, 3, 1).varint(5).0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::Malformed {
            field: Field::Sampling,
            problem: Malformation::UnknownTag { tag: 5 }
        }
    );
    let body = Body::new()
        .frame_head("st-01", &["h"], 2, 3, 1)
        .varint(0)
        .varint(2)
        .0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::Malformed {
            field: Field::Encoding,
            problem: Malformation::UnknownTag { tag: 2 }
        }
    );
    // f32 values whose byte length is not a multiple of 4.
    let body = Body::new()
        .frame_head("st-01", &["h"], 2, 3, 1)
        .varint(0)
        .varint(0)
        .bytes(&[0; 23])
        .0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::Malformed {
            field: Field::Values,
            problem: Malformation::RaggedArray {
                bytes: 23,
                element: 4
            }
        }
    );
    // A body cut inside the values (with a valid CRC: a buggy sender, not the link).
    let body = Body::new()
        .frame_head("st-01", &["h"], 2, 3, 1)
        .varint(0)
        .varint(0)
        .varint(24)
        .0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::Truncated {
            field: Field::Values
        }
    );
    // Bytes after the last field of the body.
    let mut body = Body::new()
        .frame_head("st-01", &["h"], 2, 3, 1)
        .varint(0)
        .varint(0)
        .f32s(&EXAMPLE_VALUES)
        .0;
    body.push(0);
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::TrailingBytes {
            field: Field::Values,
            count: 1
        }
    );
}

#[test]
fn shape_and_count_mismatches_are_rejected_on_both_sides() {
    // Five values for a 2×3 grid.
    let head = || Body::new().frame_head("st-01", &["h"], 2, 3, 1).varint(0);
    let err = decode(&seal(1, &head().varint(0).f32s(&[1.0; 5]).0)).unwrap_err();
    assert_eq!(
        err,
        DecodeError::ValueCountMismatch {
            expected: 6,
            found: 5
        }
    );
    assert!(err.to_string().contains("calls for 6 values"), "{err}");
    let values = [1.0_f32; 5];
    let frame = SensorFrame {
        values: Values::f32(&values),
        ..example_frame()
    };
    assert_eq!(frame.to_vec().unwrap_err(), EncodeError::Invalid(err));

    // Two channel names for a one-channel shape.
    let body = Body::new()
        .frame_head("st-01", &["h", "u"], 2, 3, 1)
        .varint(0)
        .varint(0)
        .f32s(&EXAMPLE_VALUES)
        .0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::ShapeMismatch {
            problem: ShapeProblem::ChannelCount { names: 2, shape: 1 }
        }
    );
    // A zero dimension.
    let body = Body::new()
        .frame_head("st-01", &[], 2, 3, 0)
        .varint(0)
        .varint(0)
        .f32s(&[])
        .0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::ShapeMismatch {
            problem: ShapeProblem::ZeroDimension
        }
    );
    // A sensor point outside the grid, and an empty point list.
    let points = [GridPoint::new(1, 2), GridPoint::new(2, 0)];
    let two = [1.0_f32, 2.0];
    let frame = SensorFrame {
        sampling: Sampling::Points(PackedSlice::new(&points)),
        values: Values::f32(&two),
        ..example_frame()
    };
    assert_eq!(
        frame.validate().unwrap_err(),
        DecodeError::ShapeMismatch {
            problem: ShapeProblem::PointOutsideGrid { index: 1 }
        }
    );
    let frame = SensorFrame {
        sampling: Sampling::Points(PackedSlice::new(&[])),
        values: Values::f32(&[]),
        ..example_frame()
    };
    assert_eq!(
        frame.validate().unwrap_err(),
        DecodeError::ShapeMismatch {
            problem: ShapeProblem::NoPoints
        }
    );
}

#[test]
fn non_finite_values_are_rejected_with_their_index() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = EXAMPLE_VALUES;
        values[4] = bad;
        let body = Body::new()
            .frame_head("st-01", &["h"], 2, 3, 1)
            .varint(0)
            .varint(0)
            .f32s(&values)
            .0;
        let err = decode(&seal(1, &body)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::NonFinite {
                field: Field::Values,
                index: 4
            }
        );
        let frame = SensorFrame {
            values: Values::f32(&values),
            ..example_frame()
        };
        assert_eq!(frame.to_vec().unwrap_err(), EncodeError::Invalid(err));
    }
    // A quantised NaN (the reserved count) and a non-finite scale.
    let counts = [0_i16, 1, 2, Quantizer::NAN, 4, 5];
    let frame = SensorFrame {
        values: Values::i16(&counts, Quantizer::new(0.1, 0.0)),
        ..example_frame()
    };
    assert_eq!(
        frame.validate().unwrap_err(),
        DecodeError::NonFinite {
            field: Field::Values,
            index: 3
        }
    );
    let frame = SensorFrame {
        values: Values::i16(&[0; 6], Quantizer::new(f32::NAN, 0.0)),
        ..example_frame()
    };
    let err = frame.validate().unwrap_err();
    assert_eq!(
        err,
        DecodeError::NonFinite {
            field: Field::Encoding,
            index: 0
        }
    );
    assert!(err.to_string().contains("scale"), "{err}");
    let forecast = firmware_bridge::Forecast {
        alpha: f32::NAN,
        ..example_forecast()
    };
    assert_eq!(
        forecast.validate().unwrap_err(),
        DecodeError::NonFinite {
            field: Field::Alpha,
            index: 0
        }
    );
}

#[test]
fn names_are_checked() {
    for bad in ["", "st/01", "st+", "#", "$SYS", "st 01", "stätion"] {
        let frame = SensorFrame {
            station: bad,
            ..example_frame()
        };
        assert_eq!(
            frame.validate().unwrap_err(),
            DecodeError::InvalidName {
                field: Field::Station
            },
            "{bad:?}"
        );
    }
    let long = "s".repeat(MAX_STATION_LEN + 1);
    let frame = SensorFrame {
        station: &long,
        ..example_frame()
    };
    assert_eq!(
        frame.validate().unwrap_err().reason(),
        RejectReason::TooLarge
    );
    let frame = SensorFrame {
        channels: Channels::single("water depth"),
        ..example_frame()
    };
    assert_eq!(
        frame.validate().unwrap_err(),
        DecodeError::InvalidName {
            field: Field::Channels
        }
    );
    let nine = ["a"; MAX_CHANNELS + 1];
    assert_eq!(
        Channels::new(&nine).unwrap_err().reason(),
        RejectReason::TooLarge
    );
    // Nine channel names on the wire are refused before they are read.
    let body = Body::new().str("st-01").varint(7).varint(T0).varint(9).0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::TooLarge {
            what: Limit::Channels,
            value: 9,
            max: 8
        }
    );
}

#[test]
fn oversized_shapes_are_refused_before_counting_values() {
    let body = Body::new()
        .frame_head(
            "st-01",
            &["a", "b", "c", "d", "e", "f", "g", "h"],
            1024,
            1024,
            8,
        )
        .varint(0)
        .varint(0)
        .f32s(&[])
        .0;
    assert_eq!(
        decode(&seal(1, &body)).unwrap_err(),
        DecodeError::TooLarge {
            what: Limit::FrameValues,
            value: 8 << 20,
            max: MAX_FRAME_VALUES
        }
    );
}

#[test]
fn forecast_timestamps_must_increase() {
    let steps = [T0 + 2, T0 + 2];
    let forecast = firmware_bridge::Forecast {
        timestamps_us: PackedSlice::new(&steps),
        ..example_forecast()
    };
    assert_eq!(
        forecast.validate().unwrap_err(),
        DecodeError::TimestampsNotIncreasing { index: 1 }
    );
    let forecast = firmware_bridge::Forecast {
        timestamps_us: PackedSlice::new(&[]),
        values: Values::f32(&[]),
        ..example_forecast()
    };
    assert_eq!(
        forecast.validate().unwrap_err(),
        DecodeError::ShapeMismatch {
            problem: ShapeProblem::ZeroDimension
        }
    );
}

#[test]
fn chunk_headers_that_contradict_themselves_are_rejected() {
    use firmware_bridge::Chunk;
    let data = [7_u8; 10];
    let bad = |index, count, total_len, len| {
        Chunk {
            frame_seq: 1,
            index,
            count,
            total_len,
            data: &data[..len],
        }
        .validate()
        .unwrap_err()
    };
    let problem = |problem| DecodeError::BadChunk { problem };
    assert_eq!(bad(0, 0, 10, 10), problem(ChunkProblem::ZeroCount));
    assert_eq!(
        bad(3, 3, 30, 10),
        problem(ChunkProblem::IndexOutOfRange { index: 3, count: 3 })
    );
    assert_eq!(bad(0, 3, 30, 0), problem(ChunkProblem::Empty));
    assert_eq!(bad(0, 1, 11, 10), problem(ChunkProblem::Layout)); // a single chunk carries it all
    assert_eq!(bad(0, 3, 31, 10), problem(ChunkProblem::Layout)); // 3 × 10 cannot hold 31
    assert_eq!(bad(1, 3, 20, 10), problem(ChunkProblem::Layout)); // 2 × 10 already hold 20
    assert_eq!(bad(2, 3, 25, 4), problem(ChunkProblem::Layout)); // 21 is not 2 × L
    assert_eq!(bad(2, 3, 14, 6), problem(ChunkProblem::Layout)); // the last exceeds L = 4
    let ok = Chunk {
        frame_seq: 1,
        index: 2,
        count: 3,
        total_len: 25,
        data: &data[..5],
    };
    assert_eq!(ok.layout(), Ok((10, 20)));
    let too_many = Chunk {
        frame_seq: 1,
        index: 0,
        count: 2000,
        total_len: 20_000,
        data: &data,
    };
    assert_eq!(
        too_many.validate().unwrap_err().reason(),
        RejectReason::TooLarge
    );
}

#[test]
fn every_reason_has_a_stable_name_and_a_message() {
    let samples = [
        DecodeError::Truncated { field: Field::Body },
        DecodeError::TrailingBytes {
            field: Field::Crc,
            count: 1,
        },
        DecodeError::BadMagic { found: [0, 0] },
        DecodeError::UnsupportedVersion { found: 9 },
        DecodeError::BadCrc {
            carried: 1,
            computed: 2,
        },
        DecodeError::UnknownKind { found: 7 },
        DecodeError::WrongKind {
            expected: MessageKind::Frame,
            found: MessageKind::Chunk,
        },
        DecodeError::BadCobs,
        DecodeError::Malformed {
            field: Field::Station,
            problem: Malformation::BadUtf8,
        },
        DecodeError::InvalidName {
            field: Field::Channels,
        },
        DecodeError::ShapeMismatch {
            problem: ShapeProblem::NoPoints,
        },
        DecodeError::ValueCountMismatch {
            expected: 2,
            found: 1,
        },
        DecodeError::NonFinite {
            field: Field::Values,
            index: 0,
        },
        DecodeError::TimestampsNotIncreasing { index: 1 },
        DecodeError::TooLarge {
            what: Limit::StreamFrame,
            value: 257,
            max: 256,
        },
        DecodeError::BadChunk {
            problem: ChunkProblem::Conflicting,
        },
    ];
    let reasons: Vec<_> = samples.iter().map(DecodeError::reason).collect();
    assert_eq!(
        reasons,
        RejectReason::ALL,
        "one sample per reason, in order"
    );
    for err in samples {
        let text = err.to_string();
        assert!(text.len() > 10 && !text.contains("{"), "{err:?}: {text}");
    }
    let mut names: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    assert!(
        names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    );
    names.sort();
    names.dedup();
    assert_eq!(names.len(), RejectReason::ALL.len());
}
