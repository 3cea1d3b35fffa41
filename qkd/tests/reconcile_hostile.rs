//! The responder faces messages from a peer that is not authenticated yet: every malformed,
//! oversized or out-of-order request must give a typed error, change nothing and never
//! panic; every accepted one must be answered and counted exactly.

use proptest::prelude::*;
use qpon_qkd::BitBlock;
use qpon_qkd::reconcile::{
    CascadeCorrector, CascadeOptions, CascadeResponder, CascadeStart, ParityAnswer, ParityQuery, PassQuery,
    PermutationKind, ReconcileDone, ReconcileError, ReconcileReply, ReconcileRequest, ReconcileResponder,
    Reconciler, Schedule,
};

const N: usize = 3000;

fn reference() -> BitBlock {
    BitBlock::random(N, &mut qpon_qkd::rng::seeded(77))
}

fn schedule() -> Schedule {
    Schedule::new(vec![8, 32, 100, 1500, 1500])
}

/// A responder that has accepted a `CascadeStart`.
fn started(kind: PermutationKind) -> CascadeResponder {
    let mut r = CascadeResponder::new(reference());
    let start = CascadeStart {
        n_bits: N as u64,
        seed: [5; 32],
        schedule: Schedule { permutation: kind, ..schedule() },
    };
    assert_eq!(r.handle_request(&ReconcileRequest::CascadeStart(start)).unwrap(), None);
    r
}

fn answer(r: &mut CascadeResponder, q: ParityQuery) -> Result<BitBlock, ReconcileError> {
    match r.handle_request(&ReconcileRequest::ParityQuery(q))? {
        Some(ReconcileReply::ParityAnswer(a)) => Ok(a.parities),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn arb_kind() -> impl Strategy<Value = PermutationKind> {
    prop_oneof![Just(PermutationKind::WordSkew), Just(PermutationKind::FisherYates)]
}

fn arb_pass_query() -> impl Strategy<Value = PassQuery> {
    (
        prop_oneof![4 => 0u16..5, 1 => any::<u16>()],
        prop_oneof![3 => 0u32..400, 1 => any::<u32>()],
        prop_oneof![3 => 0u32..50, 1 => any::<u32>()],
        prop_oneof![
            proptest::collection::vec(0u32..20_000, 0..40),
            proptest::collection::vec(any::<u32>(), 0..5),
            proptest::collection::btree_set(0u32..20_000, 0..40).prop_map(|s| s.into_iter().collect()),
        ],
    )
        .prop_map(|(pass, top_first, top_count, nodes)| PassQuery { pass, top_first, top_count, nodes })
}

fn arb_query() -> impl Strategy<Value = ParityQuery> {
    (prop_oneof![4 => Just(1u32), 1 => any::<u32>()], proptest::collection::vec(arb_pass_query(), 0..5))
        .prop_map(|(round, passes)| ParityQuery { round, passes })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x00ba_110c),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random queries: refused without effect, or answered and counted exactly.
    #[test]
    fn random_queries_never_panic(kind in arb_kind(), queries in proptest::collection::vec(arb_query(), 1..6)) {
        let mut r = started(kind);
        for q in queries {
            let (leaked, rounds) = (r.leaked_bits(), r.round_trips());
            match answer(&mut r, q.clone()) {
                Ok(bits) => {
                    prop_assert_eq!(bits.len() as u64, q.bits());
                    prop_assert_eq!(r.leaked_bits(), leaked + q.bits());
                    prop_assert_eq!(r.round_trips(), rounds + 1);
                }
                Err(e) => {
                    prop_assert!(!matches!(e, ReconcileError::Inconsistent(_)));
                    prop_assert_eq!(r.leaked_bits(), leaked);
                    prop_assert_eq!(r.round_trips(), rounds);
                }
            }
        }
    }

    /// Random opening messages: refused or accepted, never a panic.
    #[test]
    fn random_starts_never_panic(
        n_bits in prop_oneof![Just(N as u64), any::<u64>()],
        sizes in proptest::collection::vec(prop_oneof![any::<u32>(), 0u32..5000], 0..40),
        kind in arb_kind(),
    ) {
        let mut r = CascadeResponder::new(reference());
        let start = CascadeStart { n_bits, seed: [1; 32], schedule: Schedule { block_sizes: sizes.clone(), permutation: kind } };
        let res = r.handle_request(&ReconcileRequest::CascadeStart(start));
        let valid = n_bits == N as u64 && !sizes.is_empty() && sizes.len() <= qpon_qkd::reconcile::MAX_PASSES
            && sizes.iter().all(|&k| k >= 2);
        prop_assert_eq!(res.is_ok(), valid);
        prop_assert_eq!(r.leaked_bits(), 0);
    }

    /// Random replies to the corrector: refused (nothing changes) or taken, never a panic.
    #[test]
    fn random_replies_never_panic(round in 0u32..4, len in 0usize..400, seed in any::<u64>()) {
        let noisy = reference();
        let mut c = CascadeCorrector::with_seed(noisy, schedule(), [2; 32], CascadeOptions::default()).unwrap();
        while c.poll_request().unwrap().is_some() {}
        let parities = BitBlock::random(len, &mut qpon_qkd::rng::seeded(seed));
        let res = c.handle_reply(&ReconcileReply::ParityAnswer(ParityAnswer { round, parities }));
        if res.is_ok() {
            // then keep going with garbage until it finishes or refuses
            for _ in 0..64 {
                match c.poll_request() {
                    Ok(Some(ReconcileRequest::ParityQuery(q))) => {
                        let parities = BitBlock::random(q.bits() as usize, &mut qpon_qkd::rng::seeded(seed ^ u64::from(q.round)));
                        if c.handle_reply(&ReconcileReply::ParityAnswer(ParityAnswer { round: q.round, parities })).is_err() {
                            break;
                        }
                    }
                    Ok(_) | Err(_) => break,
                }
            }
        } else {
            prop_assert_eq!(c.leaked_bits(), 0);
        }
    }
}

#[test]
fn honest_answers_are_consistent() {
    for kind in [PermutationKind::WordSkew, PermutationKind::FisherYates] {
        let mut r = started(kind);
        let n_perm = kind.permuted_len(N) as u32;
        // All top-level blocks of pass 0 (k = 8): their XOR is the key's total parity.
        let nb = n_perm.div_ceil(8);
        let tops = answer(
            &mut r,
            ParityQuery {
                round: 1,
                passes: vec![PassQuery { pass: 0, top_first: 0, top_count: nb, nodes: vec![] }],
            },
        )
        .unwrap();
        assert_eq!(tops.count_ones() % 2, reference().count_ones() % 2);
        // A node's parity is the XOR of its children's: pass 3 (k = 1500, depth 11), block 1.
        let shift = 12;
        let root = (1 << shift) | 1;
        let nodes = vec![root, root + 1, root + 2];
        let p = answer(
            &mut r,
            ParityQuery { round: 2, passes: vec![PassQuery { pass: 3, top_first: 1, top_count: 1, nodes }] },
        )
        .unwrap();
        assert_eq!(p.get(0), p.get(1));
        assert_eq!(p.get(1), p.get(2) ^ p.get(3));
        assert_eq!(r.leaked_bits(), u64::from(nb) + 4);
    }
}

#[test]
fn out_of_order_and_repeated_messages() {
    let mut r = CascadeResponder::new(reference());
    let q = ParityQuery {
        round: 1,
        passes: vec![PassQuery { pass: 0, top_first: 0, top_count: 3, nodes: vec![] }],
    };
    let done = ReconcileDone { leaked_bits: 3, round_trips: 1 };
    // nothing before the start
    assert!(matches!(
        r.handle_request(&ReconcileRequest::ParityQuery(q.clone())),
        Err(ReconcileError::Unexpected { .. })
    ));
    assert!(matches!(
        r.handle_request(&ReconcileRequest::Done(done.clone())),
        Err(ReconcileError::Unexpected { .. })
    ));
    let start = CascadeStart { n_bits: N as u64, seed: [0; 32], schedule: schedule() };
    r.handle_request(&ReconcileRequest::CascadeStart(start.clone())).unwrap();
    // no second start
    assert!(r.handle_request(&ReconcileRequest::CascadeStart(start)).is_err());
    let a = r.handle_request(&ReconcileRequest::ParityQuery(q.clone())).unwrap();
    // a retransmission is answered again, counted once
    assert_eq!(r.handle_request(&ReconcileRequest::ParityQuery(q.clone())).unwrap(), a);
    assert_eq!(r.leaked_bits(), 3);
    // a different query reusing the round number is refused
    let mut q2 = q.clone();
    q2.passes[0].top_count = 2;
    assert!(r.handle_request(&ReconcileRequest::ParityQuery(q2)).is_err());
    // empty queries are refused
    assert!(
        r.handle_request(&ReconcileRequest::ParityQuery(ParityQuery { round: 2, passes: vec![] })).is_err()
    );
    // duplicate passes, unsorted nodes, nodes past a leaf
    for passes in [
        vec![
            PassQuery { pass: 1, top_count: 1, ..Default::default() },
            PassQuery { pass: 1, top_count: 1, ..Default::default() },
        ],
        vec![PassQuery { pass: 1, nodes: vec![(1 << 6) | 3, (1 << 6) | 2], ..Default::default() }],
        // pass 2 (k = 100): always-right reaches a single bit at depth 6; below it is nothing
        vec![PassQuery { pass: 2, nodes: vec![255], ..Default::default() }],
        vec![PassQuery { pass: 2, nodes: vec![0], ..Default::default() }],
        vec![PassQuery { pass: 0, top_first: u32::MAX, top_count: 2, ..Default::default() }],
        vec![PassQuery { pass: 9, top_count: 1, ..Default::default() }],
    ] {
        let e =
            r.handle_request(&ReconcileRequest::ParityQuery(ParityQuery { round: 2, passes })).unwrap_err();
        assert!(matches!(e, ReconcileError::Invalid(_)), "{e}");
    }
    assert_eq!(r.leaked_bits(), 3);
    // a wrong count in Done is refused; the right one closes the run
    let bad = ReconcileDone { leaked_bits: 4, round_trips: 1 };
    assert_eq!(
        r.handle_request(&ReconcileRequest::Done(bad)).unwrap_err(),
        ReconcileError::LeakageMismatch { corrector: 4, responder: 3 }
    );
    r.handle_request(&ReconcileRequest::Done(done.clone())).unwrap();
    assert!(r.is_finished());
    assert!(r.handle_request(&ReconcileRequest::Done(done)).is_err());
}

#[test]
fn leakage_limit_is_enforced() {
    let mut r = CascadeResponder::with_leak_limit(reference(), 10);
    let start = CascadeStart { n_bits: N as u64, seed: [0; 32], schedule: schedule() };
    r.handle_request(&ReconcileRequest::CascadeStart(start)).unwrap();
    let q = |round, count| ParityQuery {
        round,
        passes: vec![PassQuery { pass: 0, top_first: 0, top_count: count, nodes: vec![] }],
    };
    answer(&mut r, q(1, 8)).unwrap();
    assert_eq!(
        answer(&mut r, q(2, 3)).unwrap_err(),
        ReconcileError::LeakageLimit { requested: 11, limit: 10 }
    );
    answer(&mut r, q(2, 2)).unwrap();
    assert_eq!(r.leaked_bits(), 10);
    // a wrong key length in the start is refused
    let mut r = CascadeResponder::new(reference());
    let start = CascadeStart { n_bits: N as u64 + 1, seed: [0; 32], schedule: schedule() };
    assert!(matches!(
        r.handle_request(&ReconcileRequest::CascadeStart(start)),
        Err(ReconcileError::Invalid(_))
    ));
}

#[test]
fn garbage_bytes_do_not_deserialise_into_panics() {
    let mut rng = qpon_qkd::rng::seeded(3);
    for len in 0..200usize {
        let b = BitBlock::random(len * 8, &mut rng).to_bytes();
        let _ = serde_json::from_slice::<ReconcileRequest>(&b);
        let _ = serde_json::from_slice::<ReconcileReply>(&b);
    }
    let _ =
        serde_json::from_str::<ReconcileRequest>(r#"{"parity_query":{"round":1,"passes":[{"pass":70000}]}}"#);
    assert!(
        serde_json::from_str::<ReconcileReply>(
            r#"{"parity_answer":{"round":1,"parities":{"len":9,"bytes":[1]}}}"#
        )
        .is_err()
    );
}
