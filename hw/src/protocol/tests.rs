//! Codec tests: golden bytes written by hand from PROTOCOL.md's tables (not copied from the
//! code's output), round trips over arbitrary reprs, refusal of every bad length and
//! unknown version, and "nothing panics on any byte string".

use proptest::prelude::*;
use qpon_mux::slot_map::{OnuId, Slot};
use qpon_mux::{SlotMap, WireError};

use super::control::{MAX_CHANNELS, error_flags};
use super::records::{MAX_DETECTIONS_PER_BATCH, MAX_QUERY_PULSES, MAX_QUERY_RANGES};
use super::*;
use crate::{Basis, DetectionFlags, DetectionRecord, Intensity};

fn repr(seq: u32, board_id: u16, epoch: u16, message: Message) -> Repr {
    Repr { header: HeaderRepr { flags: 0, board_id, epoch, seq }, message }
}

/// Parses `bytes`, checks the result, and checks emission gives the same bytes back.
fn golden(bytes: &[u8], expected: Repr) {
    let parsed = Repr::from_bytes(bytes).unwrap();
    assert_eq!(parsed, expected);
    assert_eq!(expected.to_bytes().unwrap(), bytes, "emit of {expected:?}");
}

// PROTOCOL.md §8.
const HELLO: &[u8] = &[
    0x51, 0x50, 0x01, 0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, //
    0x01, 0x01, 0x00, 0x00,
];

const HELLO_ACK: &[u8] = &[
    0x51, 0x50, 0x01, 0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x03, 0x2a, 0x17, 0x00, 0x00, 0x00, 0x01, //
    0x01, 0x01, 0x01, 0x01, 0x01, 0x04, 0x00, 0x02,
];

// Ack for seq 0x01020304 from board 0x0100, epoch 9 (§3, §4: empty payload).
const ACK: &[u8] =
    &[0x51, 0x50, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x09, 0x01, 0x02, 0x03, 0x04];

// Nak InvalidField at payload offset 8, board range 1..=1 (§5.3).
const NAK: &[u8] = &[
    0x51, 0x50, 0x01, 0x04, 0x00, 0x00, 0x00, 0x06, 0x00, 0x03, 0x2a, 0x17, 0x00, 0x00, 0x00, 0x02, //
    0x03, 0x01, 0x01, 0x00, 0x00, 0x08,
];

// ConfigureSource (§5.4): 10 MHz, delay 1234, ONU 5; map version 7 from frame 100,
// frame 1000 gates, guard 10, one slot 0..100 owned by ONU 5. Retransmitted (flag bit 0).
const CONFIGURE_SOURCE: &[u8] = &[
    0x51, 0x50, 0x01, 0x10, 0x01, 0x00, 0x00, 0x36, 0x00, 0x05, 0x00, 0x07, 0x00, 0x00, 0x00, 0x03, //
    0x00, 0x00, 0x00, 0x00, 0x00, 0x98, 0x96, 0x80, // clock_hz 10 000 000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0xd2, // equalisation_delay 1234
    0x00, 0x05, 0x00, 0x00, // onu 5, reserved
    0x01, 0x00, 0x00, 0x01, // slot map: format 1, flags 0, count 1
    0x00, 0x00, 0x00, 0x07, // version 7
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, // from_frame 100
    0x00, 0x00, 0x03, 0xe8, // frame_len 1000
    0x00, 0x00, 0x00, 0x0a, // guard 10
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00, 0x05, // slot 0, len 100, owner 5
];

// ConfigureDetector (§5.5): 1 GHz, gate at 200 ps for 500 ps, dead time 10, afterpulse
// window 20, two detectors behind an active basis choice, bias 10 µA, threshold −50 mV.
const CONFIGURE_DETECTOR: &[u8] = &[
    0x51, 0x50, 0x01, 0x11, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, 0x04, //
    0x00, 0x00, 0x00, 0x00, 0x3b, 0x9a, 0xca, 0x00, // clock_hz 1e9
    0x00, 0x00, 0x00, 0xc8, // gate_offset_ps 200
    0x00, 0x00, 0x01, 0xf4, // gate_width_ps 500
    0x00, 0x00, 0x00, 0x0a, // dead_time_gates 10
    0x00, 0x00, 0x00, 0x14, // afterpulse_window_gates 20
    0x02, 0x00, 0x00, 0x00, // 2 channels, reserved
    0x00, 0x00, 0x27, 0x10, 0xff, 0xce, 0xff, 0x00, // 10000 nA, −50 mV, active, bit 0
    0x00, 0x00, 0x27, 0x10, 0xff, 0xce, 0xff, 0x01, // 10000 nA, −50 mV, active, bit 1
];

// StatusReport (§5.7), answering seq 0x10.
const STATUS_REPORT: &[u8] = &[
    0x51, 0x50, 0x01, 0x16, 0x00, 0x00, 0x00, 0x4c, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, 0x10, //
    0x02, 0x01, 0x00, 0x00, // Running, 1 channel
    0x01, 0x04, 0x00, 0x02, // firmware 1.4.2
    0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x42, 0x40, // gate 1 000 000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0xa1, 0x20, // interval 500 000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // 3 double clicks
    0x00, 0x04, 0x93, 0xe0, // board at 300 K
    0x00, 0x00, 0x00, 0x04, // error: bias out of range
    0x00, 0x00, 0x00, 0x00, // records_dropped 0
    0x00, 0x00, 0x00, 0x01, // malformed_received 1
    0x00, 0x00, 0x08, 0x34, // 2100 mK
    0x00, 0x00, 0x27, 0x10, // mean 10000 nA
    0x00, 0x00, 0x23, 0x28, // min 9000
    0x00, 0x00, 0x2a, 0xf8, // max 11000
    0x00, 0x00, 0x27, 0x10, // nominal 10000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x39, // 12345 clicks
];

// DetectionBatch (§5.8), data seq 42: gates 2^32 .. 2^32 + 1000, two detections.
const DETECTION_BATCH: &[u8] = &[
    0x51, 0x50, 0x01, 0x20, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, 0x2a, //
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // start_gate 2^32
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x03, 0xe8, // end_gate 2^32 + 1000
    0x00, 0x02, 0x00, 0x00, // 2 records
    0x00, 0x00, 0x00, 0x05, 0x02, // +5: Z, bit 1
    0x00, 0x00, 0x02, 0xbc, 0x05, // +700: X, bit 0, double click
];

// PulseQuery (§5.9): pulses 1000..1003 and 5000.
const PULSE_QUERY: &[u8] = &[
    0x51, 0x50, 0x01, 0x21, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x05, 0x00, 0x07, 0x00, 0x00, 0x00, 0x20, //
    0x00, 0x02, 0x00, 0x00, // 2 ranges
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x03, // 1000, len 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x13, 0x88, 0x00, 0x00, 0x00, 0x01, // 5000, len 1
];

// PulseAnswer (§5.10) to that query.
const PULSE_ANSWER: &[u8] = &[
    0x51, 0x50, 0x01, 0x22, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x07, 0x00, 0x00, 0x00, 0x20, //
    0x00, 0x04, 0x00, 0x00, // 4 codes
    0x00, // signal, Z, 0
    0x0d, // decoy, X, 1
    0x03, // no record
    0x0a, // vacuum, Z, 1
];

fn golden_hello() -> Repr {
    repr(1, 3, 0, Message::Hello(Hello { min_version: 1, max_version: 1 }))
}

fn golden_configure_source() -> Repr {
    let map = SlotMap::new(1000, 10, 7, 100, vec![Slot { start: 0, len: 100, owner: OnuId(5) }]).unwrap();
    let mut r = repr(
        3,
        5,
        7,
        Message::ConfigureSource(ConfigureSource {
            clock_hz: 10_000_000,
            equalisation_delay: 1234,
            onu: OnuId(5),
            slot_map: map,
        }),
    );
    r.header.flags = FLAG_RETRANSMIT;
    r
}

fn golden_pulse_query() -> PulseQuery {
    PulseQuery { ranges: vec![PulseRange { start: 1000, len: 3 }, PulseRange { start: 5000, len: 1 }] }
}

fn all_golden() -> Vec<&'static [u8]> {
    vec![
        HELLO,
        HELLO_ACK,
        ACK,
        NAK,
        CONFIGURE_SOURCE,
        CONFIGURE_DETECTOR,
        STATUS_REPORT,
        DETECTION_BATCH,
        PULSE_QUERY,
        PULSE_ANSWER,
    ]
}

#[test]
fn golden_session_messages() {
    golden(HELLO, golden_hello());
    golden(
        HELLO_ACK,
        repr(
            1,
            3,
            0x2a17,
            Message::HelloAck(HelloAck {
                version: 1,
                min_version: 1,
                max_version: 1,
                kind: BoardKind::Detector,
                firmware: FirmwareVersion { major: 1, minor: 4, patch: 2 },
            }),
        ),
    );
    golden(ACK, repr(0x0102_0304, 0x0100, 9, Message::Ack));
    golden(
        NAK,
        repr(
            2,
            3,
            0x2a17,
            Message::Nak(Nak { code: NakCode::InvalidField, min_version: 1, max_version: 1, detail: 8 }),
        ),
    );
}

#[test]
fn golden_configure() {
    let r = golden_configure_source();
    golden(CONFIGURE_SOURCE, r.clone());
    assert!(r.header.retransmit());
    let Message::ConfigureSource(c) = r.message else { unreachable!() };
    let s = c.schedule();
    assert_eq!((s.from_frame, s.frame_gates, s.equalisation_delay), (100, 1000, 1234));
    assert_eq!(s.slots, vec![0..100]);
    s.validate().unwrap();

    let ch = |bit| DetectorChannelConfig {
        bias_setpoint_na: 10_000,
        threshold_mv: -50,
        basis: ChannelBasis::Active,
        bit,
    };
    golden(
        CONFIGURE_DETECTOR,
        repr(
            4,
            1,
            7,
            Message::ConfigureDetector(ConfigureDetector {
                clock_hz: 1_000_000_000,
                gate_offset_ps: 200,
                gate_width_ps: 500,
                dead_time_gates: 10,
                afterpulse_window_gates: 20,
                channels: vec![ch(false), ch(true)],
            }),
        ),
    );
}

#[test]
fn golden_status() {
    let report = StatusReport {
        state: BoardState::Running,
        firmware: FirmwareVersion { major: 1, minor: 4, patch: 2 },
        gate: 1_000_000,
        interval_gates: 500_000,
        double_clicks: 3,
        board_temperature_mk: 300_000,
        error_flags: error_flags::BIAS,
        records_dropped: 0,
        malformed_received: 1,
        channels: vec![ChannelStatus {
            temperature_mk: 2100,
            bias_mean_na: 10_000,
            bias_min_na: 9_000,
            bias_max_na: 11_000,
            bias_nominal_na: 10_000,
            events: 12_345,
        }],
    };
    golden(STATUS_REPORT, repr(0x10, 1, 7, Message::StatusReport(report.clone())));
    // 500 000 gates at 1 MHz = 0.5 s.
    let s = report.to_detector_status(1_000_000);
    assert_eq!((s.gate, s.interval_gates), (1_000_000, 500_000));
    assert_eq!(s.double_click_rate_hz, 6.0);
    assert_eq!(s.detectors[0].click_rate_hz, 24_690.0);
    assert_eq!(s.detectors[0].bias_current_ua, 10.0);
    assert_eq!(s.detectors[0].bias_current_range_ua, (9.0, 11.0));
    assert_eq!(s.detectors[0].nominal_bias_current_ua, 10.0);
}

#[test]
fn golden_data() {
    let base = 1u64 << 32;
    golden(
        DETECTION_BATCH,
        repr(
            42,
            1,
            7,
            Message::DetectionBatch(DetectionBatch {
                start_gate: base,
                end_gate: base + 1000,
                records: vec![
                    DetectionRecord { gate: base + 5, basis: Basis::Z, bit: true, flags: DetectionFlags(0) },
                    DetectionRecord {
                        gate: base + 700,
                        basis: Basis::X,
                        bit: false,
                        flags: DetectionFlags(DetectionFlags::DOUBLE_CLICK),
                    },
                ],
            }),
        ),
    );
    golden(PULSE_QUERY, repr(0x20, 5, 7, Message::PulseQuery(golden_pulse_query())));
    let choice = |basis, bit, intensity| Some(PulseChoice { basis, bit, intensity });
    let answer = PulseAnswer {
        records: vec![
            choice(Basis::Z, false, Intensity::Signal),
            choice(Basis::X, true, Intensity::Decoy),
            None,
            choice(Basis::Z, true, Intensity::Vacuum),
        ],
    };
    golden(PULSE_ANSWER, repr(0x20, 5, 7, Message::PulseAnswer(answer.clone())));
    let recs = answer.to_records(&golden_pulse_query()).unwrap();
    let pulses: Vec<Option<u64>> = recs.iter().map(|r| r.map(|r| r.pulse)).collect();
    assert_eq!(pulses, vec![Some(1000), Some(1001), None, Some(5000)]);
    assert!(answer.to_records(&PulseQuery { ranges: vec![PulseRange { start: 0, len: 3 }] }).is_none());
}

#[test]
fn every_other_version_is_refused() {
    for bytes in all_golden() {
        for v in (0..=255u8).filter(|v| *v != VERSION) {
            let mut b = bytes.to_vec();
            b[2] = v;
            assert_eq!(Repr::from_bytes(&b).unwrap_err(), ProtocolError::UnsupportedVersion(v));
        }
    }
}

#[test]
fn version_negotiation() {
    assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
    assert_eq!(negotiate((1, 4), (2, 3)), Some(3));
    assert_eq!(negotiate((2, 3), (1, 1)), None);
    // A Hello offering only future versions parses (its layout is frozen) and finds no match.
    let mut b = HELLO.to_vec();
    b[16..18].copy_from_slice(&[2, 5]);
    let Message::Hello(h) = Repr::from_bytes(&b).unwrap().message else { panic!() };
    assert_eq!(negotiate((h.min_version, h.max_version), SUPPORTED_VERSIONS), None);
    // An impossible range is refused.
    b[16..18].copy_from_slice(&[3, 2]);
    assert!(matches!(Repr::from_bytes(&b), Err(ProtocolError::FieldOutOfRange { .. })));
    b[16..18].copy_from_slice(&[0, 2]);
    assert!(matches!(Repr::from_bytes(&b), Err(ProtocolError::FieldOutOfRange { .. })));
}

/// Sets the header's length field to the payload actually present.
fn fix_len(b: &mut [u8]) {
    let n = (b.len() - HEADER_LEN) as u16;
    b[6..8].copy_from_slice(&n.to_be_bytes());
}

#[test]
fn every_payload_size_is_checked() {
    for bytes in all_golden() {
        let ty = bytes[3];
        // One byte short or one byte long, with a consistent header: the payload's own
        // size rule must catch it.
        if bytes.len() > HEADER_LEN {
            let mut short = bytes[..bytes.len() - 1].to_vec();
            fix_len(&mut short);
            let e = Repr::from_bytes(&short).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProtocolError::PayloadLength { .. } | ProtocolError::SlotMap(WireError::Truncated)
                ),
                "type {ty:#x}: {e:?}"
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        fix_len(&mut long);
        let e = Repr::from_bytes(&long).unwrap_err();
        assert!(
            matches!(e, ProtocolError::PayloadLength { .. } | ProtocolError::SlotMap(WireError::Trailing)),
            "type {ty:#x}: {e:?}"
        );
        // Every truncation of the datagram itself is refused by the header check.
        for n in 0..bytes.len() {
            assert!(Repr::from_bytes(&bytes[..n]).is_err());
        }
    }
}

#[test]
fn count_fields_are_checked() {
    // (datagram, offset of its count field in the datagram, width)
    let cases: [(&[u8], usize, usize); 6] = [
        (CONFIGURE_SOURCE, 16 + 20 + 2, 2),
        (CONFIGURE_DETECTOR, 16 + 24, 1),
        (STATUS_REPORT, 16 + 1, 1),
        (DETECTION_BATCH, 16 + 16, 2),
        (PULSE_QUERY, 16, 2),
        (PULSE_ANSWER, 16, 2),
    ];
    for (bytes, at, width) in cases {
        for delta in [1u16, 0xff] {
            let mut b = bytes.to_vec();
            // Add `delta` to the count (wrapping), leaving the bytes as they are.
            let old = if width == 1 { b[at] as u16 } else { u16::from_be_bytes([b[at], b[at + 1]]) };
            let new = old.wrapping_add(delta);
            if width == 1 {
                b[at] = new as u8;
            } else {
                b[at..at + 2].copy_from_slice(&new.to_be_bytes());
            }
            let e = Repr::from_bytes(&b).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProtocolError::PayloadLength { .. }
                        | ProtocolError::SlotMap(_)
                        | ProtocolError::FieldOutOfRange { .. }
                ),
                "count at {at} {old}→{new}: {e:?}"
            );
        }
    }
}

#[test]
fn field_ranges_are_checked() {
    let bad = |bytes: &[u8], at: usize, value: &[u8]| {
        let mut b = bytes.to_vec();
        b[at..at + value.len()].copy_from_slice(value);
        Repr::from_bytes(&b).unwrap_err()
    };
    let out = |e: ProtocolError| matches!(e, ProtocolError::FieldOutOfRange { .. });
    let reserved = |e: ProtocolError| matches!(e, ProtocolError::ReservedBits { .. });
    // Unknown type.
    assert_eq!(bad(ACK, 3, &[0x05]), ProtocolError::UnknownType(0x05));
    assert_eq!(bad(ACK, 3, &[0xff]), ProtocolError::UnknownType(0xff));
    // Hello-ack: version outside its own range, unknown kind.
    assert!(out(bad(HELLO_ACK, 16, &[2])));
    assert!(out(bad(HELLO_ACK, 19, &[3])));
    assert!(reserved(bad(HELLO, 18, &[0, 1])));
    // Nak: unknown code, reserved byte.
    assert!(out(bad(NAK, 16, &[0])));
    assert!(out(bad(NAK, 16, &[9])));
    assert!(reserved(bad(NAK, 19, &[1])));
    // Configure source: clock 0, reserved, bad map (slot past the frame).
    assert!(out(bad(CONFIGURE_SOURCE, 16, &[0; 8])));
    assert!(reserved(bad(CONFIGURE_SOURCE, 34, &[0, 1])));
    assert!(matches!(
        bad(CONFIGURE_SOURCE, 16 + 20 + 24 + 4, &[0, 0, 0x03, 0xe9]),
        ProtocolError::SlotMap(_)
    ));
    assert!(matches!(
        bad(CONFIGURE_SOURCE, 16 + 20, &[2]),
        ProtocolError::SlotMap(WireError::UnknownFormat(2))
    ));
    // Configure detector: gate wider than the 1000 ps period, offset of a whole period,
    // width 0, unknown basis, bit 2, reserved.
    assert!(out(bad(CONFIGURE_DETECTOR, 16 + 12, &[0, 0, 0x03, 0xe9])));
    assert!(out(bad(CONFIGURE_DETECTOR, 16 + 8, &[0, 0, 0x03, 0xe8])));
    assert!(out(bad(CONFIGURE_DETECTOR, 16 + 12, &[0, 0, 0, 0])));
    assert!(out(bad(CONFIGURE_DETECTOR, 16 + 28 + 6, &[2])));
    assert!(out(bad(CONFIGURE_DETECTOR, 16 + 28 + 7, &[2])));
    assert!(reserved(bad(CONFIGURE_DETECTOR, 16 + 25, &[1])));
    // Status: unknown state, interval longer than the run, unknown error bit, min > mean.
    assert!(out(bad(STATUS_REPORT, 16, &[4])));
    assert!(out(bad(STATUS_REPORT, 16 + 16, &[0, 0, 0, 0, 0, 0x0f, 0x42, 0x41])));
    assert!(reserved(bad(STATUS_REPORT, 16 + 36, &[0x80, 0, 0, 0])));
    assert!(out(bad(STATUS_REPORT, 16 + 48 + 8, &[0, 0, 0x27, 0x11])));
    // Detection batch: end before start, a record at end_gate, records out of order,
    // reserved code bits.
    assert!(out(bad(DETECTION_BATCH, 16 + 8, &[0, 0, 0, 0, 0, 0, 0, 0])));
    assert!(out(bad(DETECTION_BATCH, 16 + 25, &[0, 0, 0x03, 0xe8])));
    assert_eq!(bad(DETECTION_BATCH, 16 + 20, &[0, 0, 0x02, 0xbc]), ProtocolError::NotIncreasing { index: 1 });
    assert!(reserved(bad(DETECTION_BATCH, 16 + 24, &[0x12])));
    // Pulse query: empty range, range past u64::MAX, no ranges.
    assert!(out(bad(PULSE_QUERY, 16 + 4 + 8, &[0, 0, 0, 0])));
    assert!(out(bad(PULSE_QUERY, 16 + 4, &[0xff; 8])));
    assert!(out(
        Repr::from_bytes(&[0x51, 0x50, 1, 0x21, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err()
    ));
    // Pulse answer: "no record" with other bits, reserved bits.
    assert!(out(bad(PULSE_ANSWER, 16 + 6, &[0x07])));
    assert!(reserved(bad(PULSE_ANSWER, 16 + 4, &[0x10])));
    // Empty messages with a payload.
    let mut b = ACK.to_vec();
    b.push(0);
    fix_len(&mut b);
    assert!(matches!(
        Repr::from_bytes(&b).unwrap_err(),
        ProtocolError::PayloadLength { expected: 0, got: 1, .. }
    ));
}

#[test]
fn limits_match_the_document() {
    assert_eq!(MAX_DATAGRAM_LEN, 1472);
    assert_eq!(MAX_PAYLOAD_LEN, 1456);
    assert_eq!(MAX_DETECTIONS_PER_BATCH, 287);
    assert_eq!((MAX_QUERY_RANGES, MAX_QUERY_PULSES, MAX_CHANNELS), (120, 1024, 8));
    // 141 slots fit a ConfigureSource, 142 do not.
    let map = |n: u32| {
        let slots = (0..n).map(|i| Slot { start: 2 * i, len: 1, owner: OnuId(1) }).collect();
        SlotMap::new(1000, 0, 0, 0, slots).unwrap()
    };
    let msg = |n| {
        Message::ConfigureSource(ConfigureSource {
            clock_hz: 1,
            equalisation_delay: 0,
            onu: OnuId(1),
            slot_map: map(n),
        })
    };
    assert!(repr(0, 0, 0, msg(141)).to_bytes().is_ok());
    assert!(matches!(repr(0, 0, 0, msg(142)).to_bytes(), Err(ProtocolError::Oversized(1480))));
    // A full batch is exactly as large as allowed.
    let full = DetectionBatch {
        start_gate: 0,
        end_gate: 1000,
        records: (0..MAX_DETECTIONS_PER_BATCH as u64)
            .map(|g| DetectionRecord { gate: g, basis: Basis::Z, bit: false, flags: DetectionFlags(0) })
            .collect(),
    };
    let b = repr(0, 0, 0, Message::DetectionBatch(full.clone())).to_bytes().unwrap();
    assert!(b.len() <= MAX_DATAGRAM_LEN && b.len() + 5 > MAX_DATAGRAM_LEN);
    let mut over = full;
    over.records.push(DetectionRecord { gate: 999, basis: Basis::Z, bit: false, flags: DetectionFlags(0) });
    assert!(repr(0, 0, 0, Message::DetectionBatch(over)).to_bytes().is_err());
}

#[test]
fn message_types_are_classified() {
    for t in MessageType::ALL {
        assert_eq!(MessageType::from_u8(t as u8), Some(t));
        assert!(!(t.from_host() && t.is_response()));
    }
    assert!(!MessageType::DetectionBatch.is_response() && !MessageType::DetectionBatch.from_host());
    assert!(MessageType::PulseAnswer.is_response() && MessageType::PulseQuery.from_host());
}

// ---- arbitrary reprs ----

fn arb_versions() -> impl Strategy<Value = (u8, u8)> {
    (1u8..=255).prop_flat_map(|min| (Just(min), min..=255))
}

fn arb_fw() -> impl Strategy<Value = FirmwareVersion> {
    (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(major, minor, patch)| FirmwareVersion {
        major,
        minor,
        patch,
    })
}

fn arb_slot_map() -> impl Strategy<Value = SlotMap> {
    (
        1u32..5000,
        0u32..50,
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec((0u32..100, 1u32..500, 0u16..4), 0..30),
    )
        .prop_map(|(extra, guard, version, from, parts)| {
            let mut slots: Vec<Slot> = Vec::new();
            let mut pos = 0u32;
            for (gap, len, owner) in parts {
                let owner = OnuId(owner);
                let gap = match slots.last() {
                    Some(p) if p.owner == owner => gap.max(1),
                    Some(_) => gap.max(guard),
                    None => gap,
                };
                slots.push(Slot { start: pos + gap, len, owner });
                pos += gap + len;
            }
            SlotMap::new(pos + guard + extra, guard, version, from, slots).unwrap()
        })
}

fn arb_basis() -> impl Strategy<Value = Basis> {
    prop_oneof![Just(Basis::Z), Just(Basis::X)]
}

fn arb_detector_config() -> impl Strategy<Value = ConfigureDetector> {
    let channel = (
        any::<u32>(),
        any::<i16>(),
        prop_oneof![Just(ChannelBasis::Z), Just(ChannelBasis::X), Just(ChannelBasis::Active)],
        any::<bool>(),
    )
        .prop_map(|(bias_setpoint_na, threshold_mv, basis, bit)| DetectorChannelConfig {
            bias_setpoint_na,
            threshold_mv,
            basis,
            bit,
        });
    (
        1u64..=20_000_000_000,
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(channel, 1..=MAX_CHANNELS),
    )
        .prop_map(|(clock_hz, w, o, dead_time_gates, afterpulse_window_gates, channels)| {
            let period_ps = (1_000_000_000_000 / clock_hz).min(u32::MAX as u64);
            ConfigureDetector {
                clock_hz,
                gate_width_ps: (1 + w % period_ps.max(1)) as u32,
                gate_offset_ps: (o % period_ps.max(1)) as u32,
                dead_time_gates,
                afterpulse_window_gates,
                channels,
            }
        })
        .prop_filter("valid", |c| c.validate().is_ok())
}

fn arb_status() -> impl Strategy<Value = StatusReport> {
    let channel = (any::<u32>(), [any::<u32>(), any::<u32>(), any::<u32>()], any::<u32>(), any::<u64>())
        .prop_map(|(temperature_mk, mut bias, bias_nominal_na, events)| {
            bias.sort();
            ChannelStatus {
                temperature_mk,
                bias_min_na: bias[0],
                bias_mean_na: bias[1],
                bias_max_na: bias[2],
                bias_nominal_na,
                events,
            }
        });
    let state = prop_oneof![
        Just(BoardState::Unconfigured),
        Just(BoardState::Stopped),
        Just(BoardState::Running),
        Just(BoardState::Fault)
    ];
    (
        state,
        arb_fw(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        (any::<u32>(), any::<u32>()),
        proptest::collection::vec(channel, 0..=MAX_CHANNELS),
    )
        .prop_map(
            |(state, firmware, gate, i, double_clicks, temp, flags, (dropped, malformed), channels)| {
                StatusReport {
                    state,
                    firmware,
                    gate,
                    interval_gates: i.min(gate),
                    double_clicks,
                    board_temperature_mk: temp,
                    error_flags: flags & error_flags::KNOWN,
                    records_dropped: dropped,
                    malformed_received: malformed,
                    channels,
                }
            },
        )
}

fn arb_batch() -> impl Strategy<Value = DetectionBatch> {
    let rec = (any::<u32>(), arb_basis(), any::<bool>(), 0u8..4);
    (0u64..u64::MAX - (1 << 33), proptest::collection::vec(rec, 0..=MAX_DETECTIONS_PER_BATCH), 0u64..1 << 33)
        .prop_map(|(start_gate, mut recs, extra)| {
            recs.sort_by_key(|r| r.0);
            recs.dedup_by_key(|r| r.0);
            let records: Vec<DetectionRecord> = recs
                .into_iter()
                .map(|(off, basis, bit, flags)| DetectionRecord {
                    gate: start_gate + off as u64,
                    basis,
                    bit,
                    flags: DetectionFlags(flags),
                })
                .collect();
            let end_gate = records.last().map_or(start_gate, |r| r.gate + 1) + extra;
            DetectionBatch { start_gate, end_gate, records }
        })
}

fn arb_query() -> impl Strategy<Value = PulseQuery> {
    proptest::collection::vec(
        (prop_oneof![any::<u64>(), Just(u64::MAX)], 1u32..=8)
            .prop_map(|(s, len)| PulseRange { start: s.min(u64::MAX - (len as u64 - 1)), len }),
        1..=MAX_QUERY_RANGES,
    )
    .prop_map(|ranges| PulseQuery { ranges })
}

fn arb_answer() -> impl Strategy<Value = PulseAnswer> {
    let intensity = prop_oneof![Just(Intensity::Signal), Just(Intensity::Decoy), Just(Intensity::Vacuum)];
    let choice = (arb_basis(), any::<bool>(), intensity).prop_map(|(basis, bit, intensity)| PulseChoice {
        basis,
        bit,
        intensity,
    });
    proptest::collection::vec(proptest::option::of(choice), 0..=MAX_QUERY_PULSES)
        .prop_map(|records| PulseAnswer { records })
}

fn arb_message() -> impl Strategy<Value = Message> {
    let nak_code = proptest::sample::select(vec![
        NakCode::Malformed,
        NakCode::UnsupportedVersion,
        NakCode::InvalidField,
        NakCode::WrongState,
        NakCode::StaleEpoch,
        NakCode::WrongBoardKind,
        NakCode::Unavailable,
        NakCode::Busy,
    ]);
    prop_oneof![
        arb_versions()
            .prop_map(|(min_version, max_version)| Message::Hello(Hello { min_version, max_version })),
        (arb_versions(), any::<u8>(), any::<bool>(), arb_fw()).prop_map(|((min, max), v, det, firmware)| {
            Message::HelloAck(HelloAck {
                version: min + v % (max - min + 1).max(1),
                min_version: min,
                max_version: max,
                kind: if det { BoardKind::Detector } else { BoardKind::Source },
                firmware,
            })
        }),
        Just(Message::Ack),
        (nak_code, arb_versions(), any::<u16>()).prop_map(|(code, (min_version, max_version), detail)| {
            Message::Nak(Nak { code, min_version, max_version, detail })
        }),
        (1u64.., any::<u64>(), any::<u16>(), arb_slot_map()).prop_map(|(clock_hz, delay, onu, slot_map)| {
            Message::ConfigureSource(ConfigureSource {
                clock_hz,
                equalisation_delay: delay,
                onu: OnuId(onu),
                slot_map,
            })
        }),
        arb_detector_config().prop_map(Message::ConfigureDetector),
        Just(Message::Start),
        Just(Message::Stop),
        Just(Message::Reset),
        Just(Message::StatusRequest),
        arb_status().prop_map(Message::StatusReport),
        arb_batch().prop_map(Message::DetectionBatch),
        arb_query().prop_map(Message::PulseQuery),
        arb_answer().prop_map(Message::PulseAnswer),
    ]
}

fn arb_repr() -> impl Strategy<Value = Repr> {
    (0u8..=1, any::<u16>(), any::<u16>(), any::<u32>(), arb_message()).prop_map(
        |(flags, board_id, epoch, seq, message)| Repr {
            header: HeaderRepr { flags, board_id, epoch, seq },
            message,
        },
    )
}

/// What every parse must satisfy: no panic, and whatever is accepted re-emits to the very
/// same bytes (the encoding is canonical: no slack, no second spelling).
fn check_parse(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(p) = Packet::new_checked(bytes) {
        let _ = p.to_string();
        if let Ok(r) = Repr::parse(&p) {
            prop_assert_eq!(r.to_bytes().unwrap(), bytes);
        }
    }
    Ok(())
}

proptest! {
    // 512 cases by default (fast); PROPTEST_CASES raises it for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn roundtrip(r in arb_repr()) {
        let bytes = r.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), r.buffer_len());
        prop_assert!(bytes.len() <= MAX_DATAGRAM_LEN);
        prop_assert_eq!(Repr::from_bytes(&bytes).unwrap(), r);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        check_parse(&bytes)?;
    }

    #[test]
    fn random_payloads_behind_a_valid_header_never_panic(
        ty in proptest::sample::select(MessageType::ALL.to_vec()),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        count in 0u16..12,
    ) {
        // Random bodies mostly fail the header's length check; these pass it, and a small
        // count in the usual count positions gets random payloads past the size checks.
        let mut payload = payload;
        if payload.len() >= 2 {
            payload[..2].copy_from_slice(&count.to_be_bytes());
        }
        let mut b = vec![0x51, 0x50, VERSION, ty as u8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&payload);
        fix_len(&mut b);
        check_parse(&b)?;
    }

    #[test]
    fn mutated_datagrams_never_panic(
        r in arb_repr(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<proptest::sample::Index>(),
        how in 0u8..3,
        extra in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut b = r.to_bytes().unwrap();
        for (i, x) in flips {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        match how {
            0 => b.truncate(cut.index(b.len() + 1)),
            1 => b.extend_from_slice(&extra),
            _ => {}
        }
        check_parse(&b)?;
        // The same damage with the length field made consistent reaches the payload parsers.
        if b.len() >= HEADER_LEN && b.len() <= MAX_DATAGRAM_LEN {
            fix_len(&mut b);
            check_parse(&b)?;
        }
    }
}

#[test]
fn batch_parse_into_appends_or_leaves_untouched() {
    let payload = &DETECTION_BATCH[HEADER_LEN..];
    let earlier = DetectionRecord { gate: 1, basis: Basis::Z, bit: false, flags: DetectionFlags(0) };
    let mut out = vec![earlier];
    let gates = DetectionBatch::parse_into(payload, &mut out).unwrap();
    assert_eq!(gates, (1 << 32)..(1 << 32) + 1000);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0], earlier);
    assert_eq!(out[2].gate, (1 << 32) + 700);
    // Second record out of range: the first must not stay behind.
    let mut bad = payload.to_vec();
    bad[25..29].copy_from_slice(&1000u32.to_be_bytes());
    let mut out = vec![earlier];
    assert!(DetectionBatch::parse_into(&bad, &mut out).is_err());
    assert_eq!(out, vec![earlier]);
    // A start gate so high that an offset would overflow.
    let mut high = payload.to_vec();
    high[0..8].copy_from_slice(&(u64::MAX - 3).to_be_bytes());
    high[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        DetectionBatch::parse_into(&high, &mut out),
        Err(ProtocolError::FieldOutOfRange { .. })
    ));
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // a slot list with one slot is what is meant
fn configure_source_from_schedule() {
    let sched = crate::SourceSchedule {
        from_frame: 9,
        frame_gates: 125_000,
        slots: vec![0..10, 10..20, 100..200],
        equalisation_delay: 77,
    };
    let c = ConfigureSource::from_schedule(1_000_000, OnuId(4), 3, &sched).unwrap();
    assert_eq!(c.slot_map.slots().len(), 2); // 0..10 and 10..20 merged
    let back = c.schedule();
    assert_eq!(back.slots, vec![0..20, 100..200]);
    assert_eq!((back.from_frame, back.frame_gates, back.equalisation_delay), (9, 125_000, 77));
    let r = repr(1, 4, 1, Message::ConfigureSource(c));
    assert_eq!(Repr::from_bytes(&r.to_bytes().unwrap()).unwrap(), r);
    // What the wire cannot say is refused with the field named.
    let huge = crate::SourceSchedule { frame_gates: 1 << 33, slots: vec![], ..sched.clone() };
    assert_eq!(
        ConfigureSource::from_schedule(1, OnuId(4), 3, &huge).unwrap_err(),
        ProtocolError::FieldOutOfRange { field: "frame_len" }
    );
    let overlap = crate::SourceSchedule { slots: vec![0..10, 5..20], ..sched.clone() };
    assert!(ConfigureSource::from_schedule(1, OnuId(4), 3, &overlap).is_err());
    assert!(ConfigureSource::from_schedule(0, OnuId(4), 3, &sched).is_err());
}
