//! End-to-end properties of the OLT⇄ONU distillation sessions over the `Pair` harness.

mod common;

use common::{Fate, Pair, quantum};
use proptest::prelude::*;
use qpon_qkd::finite_key::{BoundInput, finite_key};
use qpon_qkd::records::Basis;
use qpon_qkd::session::{AbortReason, AuthPolicy, Direction, Event, SessionConfig};
use qpon_qkd::sift::DecoyCounts;
use qpon_qkd::verification;

fn cfg(block_bits: usize) -> SessionConfig {
    SessionConfig { onu: 7, block_bits, auth_share_bytes: 128, ..SessionConfig::default() }
}

/// The counts the receiver's records imply for the first `n_key` key-basis detections'
/// block: recomputed here from the generated truth, independently of the sessions.
fn true_counts(q: &common::Quantum, block_bits: usize, sift_batch: usize) -> DecoyCounts {
    let mut c = DecoyCounts::default();
    let mut key = 0usize;
    for chunk in q.detections.chunks(sift_batch) {
        for d in chunk {
            let p = q.pulses[&d.gate];
            if p.basis != d.basis {
                continue;
            }
            let k = p.intensity.index();
            match d.basis {
                Basis::Z => {
                    c.key.n[k] += 1.0;
                    key += 1;
                }
                Basis::X => {
                    c.test.n[k] += 1.0;
                    if p.bit != d.bit {
                        c.test.m[k] += 1.0;
                    }
                }
            }
        }
        if key >= block_bits {
            break;
        }
    }
    c
}

#[test]
fn both_ends_emit_identical_blocks_of_the_proven_length() {
    let block_bits = 40_000;
    let c = cfg(block_bits);
    let q = quantum(2 * 40_000 * 4 + 5_000, 0.02, false, 11);
    let mut p = Pair::new(c.clone(), &q, 1);
    p.drive(100_000);
    let olt = Pair::blocks(&p.olt_events);
    let onu = Pair::blocks(&p.onu_events);
    assert!(!olt.is_empty(), "no block: {:?}", p.olt_events);
    // The ONU commits a block on the OLT's ack.
    assert_eq!(olt.len(), onu.len());
    for ((ia, ka, sa), (ib, kb, sb)) in olt.iter().zip(&onu) {
        assert_eq!(ia, ib);
        assert_eq!(ka, kb, "keys differ");
        assert_eq!(sa.ell, sb.ell);
        assert_eq!(ka.len() as u64 + sa.auth_share_bits, sa.ell);
    }
    // The first block's ℓ is the bound on the true counts with the measured leakage.
    let (_, _, s) = &olt[0];
    let counts = true_counts(&q, block_bits, c.sift_batch);
    assert_eq!(counts.key.n.iter().sum::<f64>() as u64, s.key_bits);
    let t = verification::tag_bits(s.key_bits as usize, c.eps_cor);
    let lambda = s.lambda_ec as f64 + verification::excess_leakage_bits(t, c.eps_cor);
    let b = finite_key(&BoundInput::from_counts(c.decoy, &counts, c.eps_sec, c.eps_cor, lambda)).unwrap();
    assert_eq!(b.ell, s.ell);
    assert!(p.olt_ledger.find_reuse().is_none() && p.onu_ledger.find_reuse().is_none());
    assert!(p.olt_refused.is_empty() && p.onu_refused.is_empty(), "{:?} {:?}", p.olt_refused, p.onu_refused);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Over random seeds and QBERs: identical keys at both ends, each exactly the bound,
    /// and nothing when the bound proves nothing.
    #[test]
    fn random_links_agree_or_give_nothing(seed in 0u64..1000, qber in 0.0f64..0.14) {
        let block_bits = 40_000;
        let q = quantum(block_bits * 4 + 3_000, qber, false, seed);
        let mut p = Pair::new(cfg(block_bits), &q, seed ^ 0xABCD);
        p.drive(100_000);
        let olt = Pair::blocks(&p.olt_events);
        let onu = Pair::blocks(&p.onu_events);
        prop_assert_eq!(olt.len(), onu.len());
        for ((ia, ka, sa), (ib, kb, _)) in olt.iter().zip(&onu) {
            prop_assert_eq!(ia, ib);
            prop_assert_eq!(ka, kb);
            prop_assert_eq!(ka.len() as u64 + sa.auth_share_bits, sa.ell);
        }
        let attempts = p.olt_events.iter().filter(|e| matches!(e, Event::Block(..) | Event::Aborted { .. })).count();
        prop_assert!(attempts >= 1);
        if qber > 0.12 {
            prop_assert!(olt.is_empty(), "key at QBER {}", qber);
        }
    }
}

#[test]
fn intercept_resend_gives_no_key() {
    let block_bits = 40_000;
    let q = quantum(block_bits * 4 + 3_000, 0.01, true, 5);
    let mut p = Pair::new(cfg(block_bits), &q, 9);
    p.drive(100_000);
    assert!(Pair::blocks(&p.olt_events).is_empty());
    assert!(Pair::blocks(&p.onu_events).is_empty());
    let aborted: Vec<_> = p
        .olt_events
        .iter()
        .filter_map(|e| match e {
            Event::Aborted { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert!(aborted.contains(&AbortReason::PrecheckNoKey), "{aborted:?}");
}

#[test]
fn lost_frames_are_retransmitted_without_reusing_pads() {
    let block_bits = 40_000;
    let q = quantum(3 * block_bits * 4, 0.02, false, 3);
    let mut p = Pair::new(cfg(block_bits), &q, 4);
    // Drop every 7th frame each way (including tagged ones and their retransmissions).
    p.filter = Some(Box::new(|_, idx, _| if idx % 7 == 3 { Fate::Drop } else { Fate::Deliver }));
    p.drive(200_000);
    let olt = Pair::blocks(&p.olt_events);
    let onu = Pair::blocks(&p.onu_events);
    assert!(!olt.is_empty());
    // Every block the ONU committed, the OLT has, with the same key.
    for (id, k, _) in &onu {
        let (_, ko, _) = olt.iter().find(|(i, _, _)| i == id).expect("ONU block unknown to the OLT");
        assert_eq!(k, ko);
    }
    assert_eq!(p.olt_ledger.find_reuse(), None);
    assert_eq!(p.onu_ledger.find_reuse(), None);
}

#[test]
fn restarts_never_reuse_a_pad_or_hash_key() {
    let block_bits = 40_000;
    let q = quantum(4 * block_bits * 4, 0.02, false, 21);
    let mut p = Pair::new(cfg(block_bits), &q, 22);
    // Run one block, restart the OLT mid-way through the next, then the ONU.
    for _ in 0..400 {
        p.step();
    }
    p.restart_olt(23);
    let rest = quantum(2 * block_bits * 4, 0.02, false, 24);
    let shift = 1 << 40;
    let dets: Vec<_> =
        rest.detections.iter().map(|d| qpon_qkd::DetectionRecord { gate: d.gate + shift, ..*d }).collect();
    for (g, r) in &rest.pulses {
        p.pulses.insert(g + shift, qpon_qkd::PulseRecord { pulse: g + shift, ..*r });
    }
    p.olt.handle_detections(p.now, &dets);
    for _ in 0..300 {
        p.step();
    }
    p.restart_onu();
    p.drive(200_000);
    assert_eq!(p.olt_ledger.find_reuse(), None);
    assert_eq!(p.onu_ledger.find_reuse(), None);
    let olt = Pair::blocks(&p.olt_events);
    let onu = Pair::blocks(&p.onu_events);
    assert!(!olt.is_empty(), "no key after restarts: {:?}", p.olt_events);
    for (id, k, _) in &onu {
        if let Some((_, ko, _)) = olt.iter().find(|(i, _, _)| i == id) {
            assert_eq!(k, ko);
        }
    }
}

/// Flipping any bit of any frame makes the receiving side refuse it — at once when it is
/// tagged or malformed, or at the tag covering it — and no block ever differs between the
/// ends.
fn tamper_run(policy: AuthPolicy, dir: Direction, frame_idx: usize, bit: usize) -> (Pair, bool) {
    let block_bits = 40_000;
    let q = quantum(2 * block_bits * 4, 0.02, false, 77);
    let mut c = cfg(block_bits);
    c.auth_policy = policy;
    let mut p = Pair::new(c, &q, 78);
    let hit = std::rc::Rc::new(std::cell::Cell::new(false));
    let h = hit.clone();
    p.filter = Some(Box::new(move |d, idx, bytes| {
        if d == dir && idx == frame_idx {
            let mut b = bytes.to_vec();
            let bit = bit % (8 * b.len());
            b[bit / 8] ^= 1 << (bit % 8);
            h.set(true);
            Fate::Replace(b)
        } else {
            Fate::Deliver
        }
    }));
    p.drive(100_000);
    (p, hit.get())
}

#[test]
fn any_flipped_bit_is_refused() {
    // A clean run to know how many frames there are.
    let (clean, _) = tamper_run(AuthPolicy::PerPhase, Direction::Downstream, usize::MAX, 0);
    let frames: Vec<_> = clean.sent.clone();
    assert!(!Pair::blocks(&clean.olt_events).is_empty(), "{:?}", clean.olt_events);
    let mut rng = qpon_qkd::rng::seeded(5);
    for policy in [AuthPolicy::PerPhase, AuthPolicy::PerMessage] {
        for dir in [Direction::Downstream, Direction::Upstream] {
            // The frames of the first block (up to the OLT's ack); later frames belong to a
            // block the run never finishes, so nothing is ever decided on them.
            let ack = frames.iter().position(|(d, f)| *d == Direction::Downstream && f[1] == 5).unwrap();
            let in_block: Vec<usize> = (0..=ack).filter(|&i| frames[i].0 == dir).collect();
            let n = in_block.len();
            // every frame of the first and last few, a sample in between
            let picks: Vec<usize> = (0..n).filter(|i| *i < 14 || *i + 6 >= n || i % 5 == 0).collect();
            for idx in picks {
                let bit = rand::Rng::next_u32(&mut rng) as usize;
                let (p, hit) = tamper_run(policy, dir, idx, bit);
                if !hit {
                    continue;
                }
                let refused = match dir {
                    Direction::Downstream => &p.onu_refused,
                    Direction::Upstream => &p.olt_refused,
                };
                let aborted_by_tag = p
                    .onu_events
                    .iter()
                    .chain(&p.olt_events)
                    .any(|e| matches!(e, Event::Aborted { by_peer: false, .. }));
                assert!(
                    !refused.is_empty() || aborted_by_tag,
                    "{policy:?} {dir:?} frame {idx} bit {bit}: tampering went unnoticed"
                );
                if policy == AuthPolicy::PerMessage {
                    assert!(!refused.is_empty(), "per-message: frame {idx} not refused at once");
                }
                let olt = Pair::blocks(&p.olt_events);
                for (id, k, _) in Pair::blocks(&p.onu_events) {
                    let (_, ko, _) =
                        olt.iter().find(|(i, _, _)| *i == id).expect("ONU block unknown to the OLT");
                    assert_eq!(&k, ko, "keys differ after tampering");
                }
                assert_eq!(p.olt_ledger.find_reuse(), None);
                assert_eq!(p.onu_ledger.find_reuse(), None);
            }
        }
    }
}

#[test]
fn replayed_frames_are_refused() {
    let block_bits = 40_000;
    let q = quantum(3 * block_bits * 4, 0.02, false, 31);
    let mut p = Pair::new(cfg(block_bits), &q, 32);
    p.drive(100_000);
    let before = Pair::blocks(&p.onu_events).len();
    assert!(before >= 1);
    // Replay every downstream frame, then every upstream frame, of the whole run.
    let sent = p.sent.clone();
    let n_down = sent.iter().filter(|(d, _)| *d == Direction::Downstream).count();
    let n_up = sent.len() - n_down;
    for (d, f) in sent {
        p.inject(d, f);
    }
    p.drive(100_000);
    // Each replay except a byte-identical copy of the last accepted frame (treated as a
    // retransmission, not processed again) is refused.
    assert!(p.onu_refused.len() >= n_down - 1, "{} of {n_down}", p.onu_refused.len());
    assert!(p.olt_refused.len() >= n_up - 1, "{} of {n_up}", p.olt_refused.len());
    assert_eq!(Pair::blocks(&p.onu_events).len(), before, "a replay produced a block");
}

#[test]
fn garbage_is_refused_without_disturbing_the_session() {
    let block_bits = 40_000;
    let q = quantum(2 * block_bits * 4, 0.02, false, 41);
    let mut p = Pair::new(cfg(block_bits), &q, 42);
    for _ in 0..50 {
        p.step();
    }
    let garbage: Vec<Vec<u8>> = vec![vec![], vec![1; 10], vec![2; 40], {
        // a header claiming a huge body
        let mut f = vec![1u8, 1, 0, 7, 0, 0, 0xff, 0xff, 0xff, 0xff];
        f.resize(60, 0);
        f
    }];
    for g in garbage {
        assert!(p.onu.handle_frame(p.now, &g).is_err());
        assert!(p.olt.handle_frame(p.now, &g).is_err());
    }
    p.drive(100_000);
    let olt = Pair::blocks(&p.olt_events);
    let onu = Pair::blocks(&p.onu_events);
    assert!(!olt.is_empty());
    assert_eq!(olt.iter().map(|b| &b.1).collect::<Vec<_>>(), onu.iter().map(|b| &b.1).collect::<Vec<_>>());
}

#[test]
fn auth_reserve_exhaustion_stops_the_session_with_an_alarm() {
    let block_bits = 40_000;
    let q = quantum(6 * block_bits * 4, 0.02, false, 51);
    let mut c = cfg(block_bits);
    c.auth_share_bytes = 0; // blocks never refill the reserve
    let mut p = Pair::new(c, &q, 52);
    p.psk = common::psk(200); // enough for about one block
    p.restart_olt(53);
    p.restart_onu();
    p.olt.handle_detections(p.now, &q.detections);
    p.drive(100_000);
    let stopped = p
        .olt_events
        .iter()
        .chain(&p.onu_events)
        .any(|e| matches!(e, Event::Stopped(AbortReason::AuthReserveLow)));
    assert!(stopped, "{:?}", p.olt_events);
    assert!(p.olt_events.iter().chain(&p.onu_events).any(|e| matches!(e, Event::Alarm(_))));
    assert_eq!(p.olt_ledger.find_reuse(), None);
}

#[test]
fn auth_bits_per_block_are_a_small_share_of_the_key() {
    let block_bits = 40_000;
    let q = quantum(2 * block_bits * 4, 0.02, false, 61);
    for policy in [AuthPolicy::PerPhase, AuthPolicy::PerMessage] {
        let mut c = cfg(block_bits);
        c.auth_policy = policy;
        let mut p = Pair::new(c, &q, 62);
        p.drive(100_000);
        let blocks = Pair::blocks(&p.olt_events);
        let (_, k, s) = &blocks[0];
        eprintln!(
            "{policy:?}: ℓ = {} bits, key {} bits, auth spent by the OLT {} bits, round trips {}",
            s.ell,
            k.len(),
            s.auth_bits_spent,
            s.round_trips
        );
        if policy == AuthPolicy::PerPhase {
            // One 256-bit hash key; Estimate, Finish, Ack, Confirm and Committed tags, and (the
            // first block of a connection) the pool sync's tag.
            assert!(s.auth_bits_spent <= 2 * 128 + 6 * 128, "{}", s.auth_bits_spent);
            assert!(s.auth_bits_spent <= s.auth_share_bits);
        }
    }
}

#[test]
#[ignore]
fn debug_frames() {
    let (clean, _) = tamper_run(AuthPolicy::PerPhase, Direction::Downstream, usize::MAX, 0);
    for (i, (d, f)) in clean.sent.iter().enumerate() {
        eprintln!("{i} {d:?} kind={} len={}", f[1], f.len());
    }
    eprintln!("{:?}", clean.olt_events);
    let block_bits = 40_000;
    let q = quantum(2 * block_bits * 4, 0.02, false, 61);
    let mut c = cfg(block_bits);
    c.auth_policy = AuthPolicy::PerMessage;
    let mut p = Pair::new(c, &q, 62);
    p.drive(100_000);
    eprintln!("{:?}\n{:?}\n{:?}\n{:?}", p.olt_events, p.onu_events, p.olt_refused, p.onu_refused);
}
