//! The two ends of the library core against each other, over in-memory pools and over two
//! real key store files holding the same blocks.

mod common;
use common::{TempDir, block_bytes};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use qpon_kms::{KeyPool, KeyStore, MemoryPool, Purpose};
use qpon_qkd::BitBlock;
use qpon_qkd::mac::MacFamily;
use qpon_sensor_auth::frame::{Frame, FrameRepr, HEADER_LEN};
use qpon_sensor_auth::{
    Alarm, AuthError, Class, ControlEnd, EndConfig, FieldEnd, LowWaterPolicy, PoolPads, frame_len,
};
use uuid::Uuid;

type Shared = Arc<Mutex<MemoryPool>>;

fn block(seed: u64, bytes: usize) -> BitBlock {
    BitBlock::from_bytes(&block_bytes(seed, bytes), 8 * bytes)
}

/// Two pools holding the same `n` blocks of `bytes` bytes.
fn memory_pair(n: u64, bytes: usize) -> (Shared, Shared) {
    let (a, b) = (Arc::new(Mutex::new(MemoryPool::new())), Arc::new(Mutex::new(MemoryPool::new())));
    for i in 0..n {
        let k = block(i + 1, bytes);
        a.lock().unwrap().append(Uuid::from_u128(u128::from(i) + 1), &k).unwrap();
        b.lock().unwrap().append(Uuid::from_u128(u128::from(i) + 1), &k).unwrap();
    }
    (a, b)
}

fn config() -> EndConfig {
    EndConfig { device: 7, low_water_bytes: 0, ..EndConfig::default() }
}

fn ends(cfg: &EndConfig, a: &Shared, b: &Shared) -> (ControlEnd, FieldEnd) {
    (
        ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(a.clone()))),
        FieldEnd::new(cfg.clone(), Box::new(PoolPads::new(b.clone()))),
    )
}

/// One request/response exchange; returns (request bytes, response bytes).
fn round_trip(
    c: &mut ControlEnd,
    f: &mut FieldEnd,
    class: Class,
    body: &[u8],
    now: u64,
) -> (Vec<u8>, Vec<u8>) {
    let req = c.seal_request(class, body, now).unwrap();
    let got = f.open_request(&req.bytes, now).unwrap();
    assert_eq!((got.seq, got.class, got.payload.as_slice()), (req.seq, class, body));
    let mut answer = body.to_vec();
    answer.reverse();
    let resp = f.seal_response(req.seq, class, &answer, now).unwrap();
    let back = c.open_response(&resp.bytes, now).unwrap();
    assert_eq!(back.request_seq, Some(req.seq));
    assert_eq!(back.payload, answer);
    (req.bytes, resp.bytes)
}

/// Two store files with the same `n` blocks for ONU 3.
fn store_pair(dir: &TempDir, n: u64, bytes: usize) -> (KeyStore, KeyStore) {
    let a = KeyStore::open(dir.0.join("control.redb")).unwrap();
    let b = KeyStore::open(dir.0.join("field.redb")).unwrap();
    for s in [&a, &b] {
        for i in 0..n {
            s.pool(3).append_block(Uuid::from_u128(100 + u128::from(i)), &block(i + 50, bytes)).unwrap();
        }
    }
    (a, b)
}

#[test]
fn ends_agree_over_many_frames_with_memory_pools() {
    let (a, b) = memory_pair(4, 64 * 1024);
    let cfg = config();
    let (mut c, mut f) = ends(&cfg, &a, &b);
    let mut last_seq = None;
    for i in 0..3000u64 {
        let class = if i % 3 == 0 { Class::Command } else { Class::Reading };
        let body = block_bytes(i, (i % 300) as usize);
        let req = c.seal_request(class, &body, 1000 + i).unwrap();
        assert!(last_seq.is_none_or(|s| req.seq > s), "request sequence numbers increase");
        last_seq = Some(req.seq);
        let got = f.open_request(&req.bytes, 1000 + i).unwrap();
        assert_eq!(got.payload, body);
        let resp = f.seal_response(req.seq, class, &body[..body.len() / 2], 1000 + i).unwrap();
        assert_eq!(c.open_response(&resp.bytes, 1000 + i).unwrap().payload, &body[..body.len() / 2]);
    }
    let (sc, sf) = (c.status(), f.status());
    assert_eq!(
        (sc.frames_sealed, sc.frames_opened, sf.frames_sealed, sf.frames_opened),
        (3000, 3000, 3000, 3000)
    );
    assert!(sc.rejected.is_empty() && sf.rejected.is_empty());
    assert!(sc.batches > 1, "several batches were used");
    // Both pools consumed exactly the same bytes, for sensor auth, once per batch.
    let (la, lb) = (a.lock().unwrap().ledger().to_vec(), b.lock().unwrap().ledger().to_vec());
    assert_eq!(la, lb);
    assert_eq!(la.len() as u64, sc.batches);
    assert!(la.iter().all(|u| u.purpose == Some(Purpose::SensorAuth) && u.len == cfg.batch_bytes as u64));
    // No per-frame store commit: one consumption per batch.
    assert!(sc.batches * 100 < 3000 * 2);
}

#[test]
fn ends_agree_with_two_store_files_and_restarts_continue() {
    let dir = TempDir::new("stores");
    let (sa, sb) = store_pair(&dir, 2, 16 * 1024);
    let cfg = config();
    let mut c = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(sa.pool(3))));
    let mut f = FieldEnd::new(cfg.clone(), Box::new(PoolPads::new(sb.pool(3))));
    for i in 0..400u64 {
        let class = if i % 2 == 0 { Class::Command } else { Class::Reading };
        round_trip(&mut c, &mut f, class, &block_bytes(i, 40), 5000 + i);
    }
    // Restart the control end: its ordinal and sequence numbers come back from the ledger.
    let last = c.status();
    drop(c);
    let mut c = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(sa.pool(3))));
    let (req, _) = round_trip(&mut c, &mut f, Class::Command, b"after control restart", 6000);
    let r = FrameRepr::parse(&Frame::new_checked(&req[..]).unwrap()).unwrap();
    assert_eq!(Some(r.batch), last.current_batch.map(|b| b + 1), "restart opens the next batch");
    // Restart the field end: it mirrors the next batch; the control end, getting no answer
    // under the old batch, moves on after its timeout.
    drop(f);
    let mut f = FieldEnd::new(cfg.clone(), Box::new(PoolPads::new(sb.pool(3))));
    let req = c.seal_request(Class::Command, b"lost", 7000).unwrap();
    assert!(matches!(f.open_request(&req.bytes, 7000), Err(AuthError::BatchRetired { .. })));
    assert_eq!(c.expire(7000 + cfg.response_timeout_ms + 1), 1);
    round_trip(&mut c, &mut f, Class::Command, b"after field restart", 7000 + cfg.response_timeout_ms + 2);
    let (ca, cb) = (
        sa.pool(3).consumptions(Purpose::SensorAuth).unwrap(),
        sb.pool(3).consumptions(Purpose::SensorAuth).unwrap(),
    );
    assert_eq!(ca, cb, "both ledgers hold the same batches");
}

#[test]
fn batch_lost_at_a_control_crash_is_skipped_by_the_field_end() {
    let dir = TempDir::new("skip");
    let (sa, sb) = store_pair(&dir, 1, 32 * 1024);
    let cfg = config();
    let mut c = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(sa.pool(3))));
    let mut f = FieldEnd::new(cfg.clone(), Box::new(PoolPads::new(sb.pool(3))));
    round_trip(&mut c, &mut f, Class::Reading, b"one", 10);
    // Twice, the control end restarts, reserves a batch and crashes before anything goes out.
    let mut c = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(sa.pool(3))));
    let _lost = c.seal_request(Class::Command, &[0; 10], 20);
    let mut c = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(sa.pool(3))));
    let _lost_too = c.seal_request(Class::Command, &[0; 10], 30);
    let mut c = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(sa.pool(3))));
    round_trip(&mut c, &mut f, Class::Command, b"after two lost batches", 40);
    assert_eq!(f.status().batches_skipped, 2);
    assert_eq!(
        sa.pool(3).consumptions(Purpose::SensorAuth).unwrap(),
        sb.pool(3).consumptions(Purpose::SensorAuth).unwrap()
    );
}

#[test]
fn replayed_request_refused_also_after_field_restart_on_the_same_store() {
    let dir = TempDir::new("replay");
    let (sa, sb) = store_pair(&dir, 1, 32 * 1024);
    let cfg = config();
    let mut c = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(sa.pool(3))));
    let mut f = FieldEnd::new(cfg.clone(), Box::new(PoolPads::new(sb.pool(3))));
    let (first, _) = round_trip(&mut c, &mut f, Class::Command, b"open valve 3", 100);
    let (second, _) = round_trip(&mut c, &mut f, Class::Command, b"close valve 3", 101);
    // Same process: the replay window.
    assert!(matches!(f.open_request(&second, 102), Err(AuthError::Replay { .. })));
    assert!(matches!(f.open_request(&first, 102), Err(AuthError::Replay { .. })));
    // Crash and restart of the field end: the window is gone, the ledger is not.
    let level = sb.pool(3).try_level_bits().unwrap();
    drop(f);
    let mut f = FieldEnd::new(cfg.clone(), Box::new(PoolPads::new(sb.pool(3))));
    assert!(matches!(f.open_request(&first, 103), Err(AuthError::BatchRetired { .. })));
    assert!(matches!(f.open_request(&second, 103), Err(AuthError::BatchRetired { .. })));
    assert_eq!(sb.pool(3).try_level_bits().unwrap(), level, "a refused replay consumes nothing");
    assert_eq!(f.status().frames_opened, 0);
}

#[test]
fn responses_replayed_or_unknown_refused() {
    let (a, b) = memory_pair(1, 16 * 1024);
    let (mut c, mut f) = ends(&config(), &a, &b);
    let (_, resp) = round_trip(&mut c, &mut f, Class::Reading, b"read 40001", 1);
    assert!(matches!(c.open_response(&resp, 2), Err(AuthError::NoOutstandingRequest { .. })));
    // A response to a request the control end never sent.
    let req = c.seal_request(Class::Reading, b"read 40002", 3).unwrap();
    f.open_request(&req.bytes, 3).unwrap();
    assert!(matches!(
        f.seal_response(req.seq + 5, Class::Reading, b"x", 3),
        Err(AuthError::NoOutstandingRequest { .. })
    ));
    let good = f.seal_response(req.seq, Class::Reading, b"42", 3).unwrap();
    // Answer once only: the field end refuses to seal twice, the control end to open twice.
    assert!(matches!(
        f.seal_response(req.seq, Class::Reading, b"43", 3),
        Err(AuthError::NoOutstandingRequest { .. })
    ));
    c.open_response(&good.bytes, 4).unwrap();
    assert!(matches!(c.open_response(&good.bytes, 4), Err(AuthError::NoOutstandingRequest { .. })));
    // A request is not a response.
    let req = c.seal_request(Class::Reading, b"r", 5).unwrap();
    assert!(matches!(c.open_response(&req.bytes, 5), Err(AuthError::WrongKind { .. })));
    // A weaker request cannot be answered with a command-strength tag.
    f.open_request(&req.bytes, 5).unwrap();
    assert!(matches!(
        f.seal_response(req.seq, Class::Command, b"r", 5),
        Err(AuthError::ResponseClass { .. })
    ));
}

#[test]
fn stale_commands_refused_readings_not() {
    let (a, b) = memory_pair(1, 16 * 1024);
    let cfg = EndConfig { command_deadline_ms: 500, ..config() };
    let (mut c, mut f) = ends(&cfg, &a, &b);
    // The control clock runs 1 h ahead of the field's: offsets are learned, not assumed.
    let skew = 3_600_000;
    round_trip_at(&mut c, &mut f, Class::Reading, skew + 10_000, 10_000);
    round_trip_at(&mut c, &mut f, Class::Command, skew + 20_000, 20_010);
    // Held back by 2 s on the link.
    let held = c.seal_request(Class::Command, b"trip breaker", skew + 30_000).unwrap();
    let e = f.open_request(&held.bytes, 32_000).unwrap_err();
    assert!(matches!(e, AuthError::Stale { age_ms, deadline_ms: 500, .. } if age_ms >= 1_900), "{e}");
    // A late reading is accepted (no deadline for readings).
    let late = c.seal_request(Class::Reading, b"temperature", skew + 40_000).unwrap();
    f.open_request(&late.bytes, 42_000).unwrap();
    // With synchronised clocks declared, even the first command after a start is judged.
    let cfg2 = EndConfig { command_deadline_ms: 500, max_clock_skew_ms: Some(100), ..config() };
    let (a, b) = memory_pair(1, 16 * 1024);
    let (mut c, mut f) = ends(&cfg2, &a, &b);
    let held = c.seal_request(Class::Command, b"open", 50_000).unwrap();
    assert!(matches!(f.open_request(&held.bytes, 51_000), Err(AuthError::Stale { .. })));
}

fn round_trip_at(c: &mut ControlEnd, f: &mut FieldEnd, class: Class, control_now: u64, field_now: u64) {
    let req = c.seal_request(class, b"x", control_now).unwrap();
    f.open_request(&req.bytes, field_now).unwrap();
    let resp = f.seal_response(req.seq, class, b"y", field_now).unwrap();
    c.open_response(&resp.bytes, control_now).unwrap();
}

#[test]
fn low_water_refuse_and_hold_and_exhaustion_give_typed_errors_and_no_frame() {
    for policy in [LowWaterPolicy::Refuse, LowWaterPolicy::Hold] {
        let (a, b) = memory_pair(1, 3 * 4096);
        let cfg = EndConfig { low_water_bytes: 2 * 4096, low_water: policy, ..config() };
        let (mut c, mut f) = ends(&cfg, &a, &b);
        // 3 batches in the pool: fine at first, then below the mark.
        round_trip(&mut c, &mut f, Class::Command, b"ok", 1);
        let mut out = vec![1, 2, 3];
        let mut refused = None;
        for i in 0..400 {
            match c.seal_request_into(Class::Command, b"cmd", 2 + i, &mut out) {
                Ok(seq) => {
                    f.open_request(&out, 2 + i).unwrap();
                    let r = f.seal_response(seq, Class::Command, b"ok", 2 + i).unwrap();
                    c.open_response(&r.bytes, 2 + i).unwrap();
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.expect("commands stop below the low-water mark");
        match policy {
            LowWaterPolicy::Refuse => assert!(matches!(e, AuthError::PoolLow { .. }), "{e}"),
            LowWaterPolicy::Hold => assert!(matches!(e, AuthError::Held { .. }), "{e}"),
        }
        assert!(out.is_empty(), "no frame on refusal");
        assert_eq!(c.status().alarm, Some(Alarm::LowWater));
        let remaining = c.status().pool_remaining_bytes + c.status().batch_remaining_bytes;
        assert!(remaining < cfg.low_water_bytes);
        // Readings go on until the pool is empty, then: exhausted, typed, no frame.
        let mut last = None;
        for i in 0..2000 {
            match c.seal_request_into(Class::Reading, b"r", 1000 + i, &mut out) {
                Ok(seq) => {
                    f.open_request(&out, 1000 + i).unwrap();
                    let r = f.seal_response(seq, Class::Reading, b"v", 1000 + i).unwrap();
                    c.open_response(&r.bytes, 1000 + i).unwrap();
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        assert!(matches!(last, Some(AuthError::PoolExhausted { .. })), "{last:?}");
        assert!(out.is_empty());
        assert_eq!(c.status().alarm, Some(Alarm::Exhausted));
        assert!(matches!(
            c.seal_request(Class::Command, b"x", 9999),
            Err(AuthError::PoolLow { .. } | AuthError::Held { .. })
        ));
    }
}

#[test]
fn readings_use_truncated_gf_tags_commands_full_tags() {
    let (a, b) = memory_pair(1, 16 * 1024);
    for bits in [32u32, 64, 96] {
        let cfg = EndConfig { reading_tag_bits: bits, ..config() };
        let (a2, b2) = memory_pair(1, 16 * 1024);
        let (mut c, mut f) = ends(&cfg, &a2, &b2);
        for (class, tag_bytes) in [(Class::Reading, bits as usize / 8), (Class::Command, 16)] {
            let (req, resp) = round_trip(&mut c, &mut f, class, &[9; 20], 1);
            for bytes in [&req, &resp] {
                let fr = Frame::new_checked(&bytes[..]).unwrap();
                assert_eq!(fr.tag().len(), tag_bytes, "{class} with reading_tag_bits {bits}");
                assert_eq!(frame_len(bytes), Ok(Some(bytes.len())));
            }
        }
    }
    // Poly1305 is never truncated.
    let bad = EndConfig { family: qpon_sensor_auth::HashFamily::Poly1305, reading_tag_bits: 64, ..config() };
    assert!(ControlEnd::try_new(bad, Box::new(PoolPads::new(a.clone()))).is_err());
    let poly =
        EndConfig { family: qpon_sensor_auth::HashFamily::Poly1305, reading_tag_bits: 128, ..config() };
    let (mut c, mut f) = ends(&poly, &a, &b);
    let (req, _) = round_trip(&mut c, &mut f, Class::Reading, b"p", 1);
    assert_eq!(Frame::new_checked(&req[..]).unwrap().tag().len(), 16);
}

#[test]
fn forgery_total_is_the_sum_of_per_message_bounds() {
    let (a, b) = memory_pair(2, 16 * 1024);
    let cfg = EndConfig { reading_tag_bits: 48, ..config() };
    let (mut c, mut f) = ends(&cfg, &a, &b);
    let (mut at_field, mut at_control) = (0.0f64, 0.0f64);
    let bound = |frame: &[u8]| {
        let fr = Frame::new_checked(frame).unwrap();
        let t = 8 * fr.tag().len() as u32;
        // The GF(2^128) bound, recomputed here from the frame: (⌈L/16⌉ + 1)/2^t over the
        // authenticated bytes (everything before the tag).
        let l = frame.len() - fr.tag().len();
        let via_qkd = MacFamily::gf128(t).unwrap().forgery_bound(l);
        let by_hand = (l.div_ceil(16).max(1) as f64 + 1.0) / 2f64.powi(t as i32);
        assert_eq!(via_qkd, by_hand);
        by_hand
    };
    for i in 0..200u64 {
        let class = if i % 4 == 0 { Class::Command } else { Class::Reading };
        let (req, resp) = round_trip(&mut c, &mut f, class, &block_bytes(i, (i * 7 % 250) as usize), i);
        at_field += bound(&req);
        at_control += bound(&resp);
    }
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y;
    assert!(
        close(f.status().forgery_bound_total, at_field),
        "{} vs {at_field}",
        f.status().forgery_bound_total
    );
    assert!(close(c.status().forgery_bound_total, at_control));
    assert!(f.status().forgery_bound_worst_case >= f.status().forgery_bound_total);
    assert!(at_field > 0.0);
}

#[test]
fn hash_key_changes_after_rejected_forgeries_at_both_ends_and_traffic_resumes() {
    let (a, b) = memory_pair(2, 32 * 1024);
    let cfg = config();
    let (mut c, mut f) = ends(&cfg, &a, &b);
    round_trip(&mut c, &mut f, Class::Command, b"hello", 1);
    let batch0 = c.status().current_batch.unwrap();
    assert_eq!(f.status().current_batch, Some(batch0));

    // 1. A forged request: the field end retires the batch and says nothing.
    let mut req = c.seal_request(Class::Command, b"set 10", 2).unwrap();
    let n = req.bytes.len();
    req.bytes[n - 1] ^= 1;
    assert!(matches!(f.open_request(&req.bytes, 2), Err(AuthError::BadTag { .. })));
    assert_eq!((f.status().current_batch, f.status().retired_after_forgery), (None, 1));
    // Genuine traffic under the old key is refused from now on.
    let next = c.seal_request(Class::Command, b"set 11", 3).unwrap();
    assert!(matches!(f.open_request(&next.bytes, 3), Err(AuthError::BatchRetired { .. })));
    // The control end times out and moves to a new batch with a new hash key.
    assert_eq!(c.expire(3 + cfg.response_timeout_ms + 1), 2);
    let t = 4 + cfg.response_timeout_ms;
    round_trip(&mut c, &mut f, Class::Command, b"set 12", t);
    let batch1 = c.status().current_batch.unwrap();
    assert!(batch1 > batch0);
    assert_eq!(f.status().current_batch, Some(batch1));

    // 2. A forged response: the control end retires its batch at once.
    let req = c.seal_request(Class::Reading, b"read", t + 1).unwrap();
    f.open_request(&req.bytes, t + 1).unwrap();
    let mut resp = f.seal_response(req.seq, Class::Reading, b"v=1", t + 1).unwrap();
    let n = resp.bytes.len();
    resp.bytes[n - 5] ^= 0x10;
    assert!(matches!(c.open_response(&resp.bytes, t + 1), Err(AuthError::BadTag { .. })));
    assert_eq!((c.status().current_batch, c.status().retired_after_forgery), (None, 1));
    round_trip(&mut c, &mut f, Class::Reading, b"read again", t + 2);
    let batch2 = c.status().current_batch.unwrap();
    assert!(batch2 > batch1);
    assert_eq!(f.status().current_batch, Some(batch2));
    assert_eq!(a.lock().unwrap().ledger(), b.lock().unwrap().ledger());
}

#[test]
fn wrong_device_and_oversized_payload_refused() {
    let (a, b) = memory_pair(1, 16 * 1024);
    let (mut c, _) = ends(&config(), &a, &b);
    let other = EndConfig { device: 8, ..config() };
    let mut f = FieldEnd::new(other, Box::new(PoolPads::new(b.clone())));
    let req = c.seal_request(Class::Reading, b"r", 1).unwrap();
    assert!(matches!(f.open_request(&req.bytes, 1), Err(AuthError::WrongDevice { got: 7, expected: 8 })));
    let big = vec![0; qpon_sensor_auth::MAX_PAYLOAD_LEN + 1];
    assert!(matches!(c.seal_request(Class::Reading, &big, 1), Err(AuthError::PayloadTooLarge { .. })));
    let max = vec![0; qpon_sensor_auth::MAX_PAYLOAD_LEN];
    let s = c.seal_request(Class::Command, &max, 1).unwrap();
    assert!(s.bytes.len() <= qpon_sensor_auth::MAX_FRAME_LEN);
    assert!(s.bytes.len() > HEADER_LEN + max.len());
}

#[test]
fn debug_output_never_shows_key_bytes() {
    // Every byte of the pool is 0xAB: any key byte in a Debug string would show.
    let (a, b) = (Arc::new(Mutex::new(MemoryPool::new())), Arc::new(Mutex::new(MemoryPool::new())));
    let k = BitBlock::from_bytes(&[0xAB; 8192], 8 * 8192);
    a.lock().unwrap().append(Uuid::from_u128(1), &k).unwrap();
    b.lock().unwrap().append(Uuid::from_u128(1), &k).unwrap();
    let cfg = config();
    let (mut c, mut f) = ends(&cfg, &a, &b);
    let req = c.seal_request(Class::Command, b"x", 1).unwrap();
    f.open_request(&req.bytes, 1).unwrap();
    let mut pads = PoolPads::new(a.clone());
    let reserved = qpon_sensor_auth::PadSource::reserve(&mut pads, 64).unwrap();
    let texts = [
        format!("{c:?}"),
        format!("{f:?}"),
        format!("{:?}", c.status()),
        format!("{:?}", f.status()),
        format!("{pads:?}"),
        format!("{reserved:?}"),
        format!("{cfg:?}"),
        format!("{:?}", AuthError::BadTag { seq: 1, batch: 0 }),
    ];
    for t in texts {
        let l = t.to_lowercase();
        assert!(!l.contains("abab") && !l.contains("171") && !l.contains("0xab"), "{t}");
    }
}

#[test]
fn ends_are_send() {
    fn is_send<T: Send>() {}
    is_send::<ControlEnd>();
    is_send::<FieldEnd>();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A flipped bit anywhere in a request or a response is refused, and nothing is
    /// accepted in its place.
    #[test]
    fn any_flipped_bit_is_refused(which in 0usize..2, class_cmd in any::<bool>(), len in 0usize..80,
                                  pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (a, b) = memory_pair(2, 8192);
        let (mut c, mut f) = ends(&config(), &a, &b);
        let class = if class_cmd { Class::Command } else { Class::Reading };
        let body = block_bytes(len as u64, len);
        let req = c.seal_request(class, &body, 1).unwrap();
        if which == 0 {
            let mut bad = req.bytes.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(f.open_request(&bad, 1).is_err());
            prop_assert_eq!(f.status().frames_opened, 0);
        } else {
            f.open_request(&req.bytes, 1).unwrap();
            let resp = f.seal_response(req.seq, class, &body, 1).unwrap();
            let mut bad = resp.bytes.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(c.open_response(&bad, 1).is_err());
            prop_assert_eq!(c.status().frames_opened, 0);
        }
    }

    /// Random bytes never panic either end and are never accepted.
    #[test]
    fn random_frames_refused(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (a, b) = memory_pair(1, 8192);
        let (mut c, mut f) = ends(&config(), &a, &b);
        prop_assert!(f.open_request(&bytes, 1).is_err());
        prop_assert!(c.open_response(&bytes, 1).is_err());
    }
}

#[test]
fn lost_responses_in_a_new_batch_do_not_burn_batches_until_three_timeouts() {
    let (a, b) = memory_pair(1, 32 * 1024);
    let cfg = config();
    let (mut c, mut f) = ends(&cfg, &a, &b);
    let t = cfg.response_timeout_ms + 1;
    // The field end accepts, but its responses are lost.
    for k in 0..qpon_sensor_auth::UNACKED_TIMEOUTS as u64 - 1 {
        let req = c.seal_request(Class::Reading, b"r", k * t).unwrap();
        f.open_request(&req.bytes, k * t).unwrap();
        assert_eq!(c.expire((k + 1) * t), 1);
        assert_eq!(c.status().current_batch, Some(0), "batch kept after {} timeouts", k + 1);
    }
    let k = qpon_sensor_auth::UNACKED_TIMEOUTS as u64 - 1;
    let req = c.seal_request(Class::Reading, b"r", k * t).unwrap();
    f.open_request(&req.bytes, k * t).unwrap();
    c.expire((k + 1) * t);
    assert_eq!(c.status().current_batch, None, "moved on after the last timeout");
    round_trip(&mut c, &mut f, Class::Command, b"next batch", (k + 1) * t + 1);
    assert_eq!(c.status().batches, 2);
    assert_eq!(a.lock().unwrap().ledger(), b.lock().unwrap().ledger());
}

#[test]
fn field_end_catches_up_after_a_long_outage_and_after_its_own_restart() {
    let (a, b) = memory_pair(8, 64 * 1024);
    let cfg = config();
    let (mut c, mut f) = ends(&cfg, &a, &b);
    let step = cfg.response_timeout_ms + 1;
    let mut now = 0;
    round_trip(&mut c, &mut f, Class::Reading, b"before", now);
    // Outage: every request is lost and times out; the control end opens new batches.
    for _ in 0..60 {
        now += 1;
        let _ = c.seal_request(Class::Reading, b"lost", now).unwrap();
        now += step;
        c.expire(now);
    }
    let ahead = c.status().batches - 1;
    assert!(ahead > u64::from(cfg.max_batch_skip), "the outage put the control end {ahead} batches ahead");
    // The link is back: the field end skips the batches it never saw.
    now += 1;
    let req = c.seal_request(Class::Command, b"after outage", now).unwrap();
    f.open_request(&req.bytes, now).unwrap();
    let resp = f.seal_response(req.seq, Class::Command, b"ok", now).unwrap();
    c.open_response(&resp.bytes, now).unwrap();
    // Every batch the control end took was mirrored or skipped by the field end.
    assert_eq!(f.status().batches + f.status().batches_skipped, c.status().batches);
    assert!(f.status().batches_skipped > u64::from(cfg.max_batch_skip));
    assert_eq!(a.lock().unwrap().ledger(), b.lock().unwrap().ledger());

    // Now the field end is down while the control end keeps polling; after its restart it
    // refuses the far-ahead batch at first and catches up as its silence allowance grows.
    for _ in 0..45 {
        now += 1;
        let _ = c.seal_request(Class::Reading, b"nobody there", now).unwrap();
        now += step;
        c.expire(now);
    }
    let mut f = FieldEnd::new(cfg.clone(), Box::new(PoolPads::new(b.clone())));
    let mut refused = 0;
    let accepted = loop {
        now += 1;
        let req = c.seal_request(Class::Reading, b"poll", now).unwrap();
        match f.open_request(&req.bytes, now) {
            Ok(_) => break req.seq,
            Err(AuthError::BatchReference(_)) => refused += 1,
            Err(e) => panic!("unexpected refusal {e}"),
        }
        assert!(refused < 100, "the field end never caught up");
        now += step;
        c.expire(now);
    };
    assert!(refused > 0, "the gap exceeded the start allowance");
    let resp = f.seal_response(accepted, Class::Reading, b"v", now).unwrap();
    c.open_response(&resp.bytes, now).unwrap();
    assert_eq!(a.lock().unwrap().ledger(), b.lock().unwrap().ledger());
}

#[test]
fn a_forged_far_ahead_frame_skips_at_most_the_allowance_and_the_stream_recovers() {
    let (a, b) = memory_pair(4, 64 * 1024);
    let cfg = EndConfig { max_batch_skip: 2, max_silence_skip: 3, ..config() };
    let (mut c, mut f) = ends(&cfg, &a, &b);
    round_trip(&mut c, &mut f, Class::Reading, b"x", 0);
    // A genuine opening frame from a later batch, replayed by the attacker with its
    // ordinal raised (the tag cannot be checked before the batch is taken).
    let level = b.lock().unwrap().level_bits();
    let t = 100 * cfg.response_timeout_ms; // long silence: the allowance is at its cap
    let mut c2 = ControlEnd::new(cfg.clone(), Box::new(PoolPads::new(a.clone())));
    let genuine = c2.seal_request(Class::Command, b"y", t).unwrap();
    let mut forged = genuine.bytes.clone();
    forged[36..44].copy_from_slice(&(1u64 + 50).to_be_bytes());
    assert!(matches!(f.open_request(&forged, t), Err(AuthError::BatchReference(_))), "50 ahead: refused");
    assert_eq!(b.lock().unwrap().level_bits(), level, "refused before any take");
    forged[36..44].copy_from_slice(&(1u64 + 5).to_be_bytes());
    assert!(f.open_request(&forged, t).is_err());
    let burnt = (level - b.lock().unwrap().level_bits()) / 8;
    assert!(burnt <= 6 * cfg.batch_bytes as u64, "at most 1 + max_batch_skip + max_silence_skip batches");
    // The control end catches up through timeouts and traffic resumes.
    let mut now = t;
    let mut ok = false;
    for _ in 0..40 {
        now += 1;
        let req = c2.seal_request(Class::Reading, b"poll", now).unwrap();
        if let Ok(o) = f.open_request(&req.bytes, now) {
            let resp = f.seal_response(o.seq, Class::Reading, b"v", now).unwrap();
            c2.open_response(&resp.bytes, now).unwrap();
            ok = true;
            break;
        }
        now += cfg.response_timeout_ms + 1;
        c2.expire(now);
    }
    assert!(ok, "traffic resumed");
    assert_eq!(f.status().alarm, None, "the divergence alarm clears once the pools agree again");
    assert_eq!(a.lock().unwrap().ledger(), b.lock().unwrap().ledger());
    drop(c);
}
