//! Pool uses (kinds 9 and 24): the OLT's consumptions reach the ONU in order, each once,
//! authenticated, despite loss, reordering, forgery, replays and restarts.

mod common;

use common::{Fate, Pair, quantum};
use qpon_qkd::session::{
    Direction, Event, FrameRepr, KeySwitch, Message, PoolUse, PoolUseAck, SessionConfig,
};
use std::cell::RefCell;
use std::rc::Rc;
use uuid::Uuid;

fn cfg(block_bits: usize) -> SessionConfig {
    SessionConfig { onu: 5, block_bits, auth_share_bytes: 128, ..SessionConfig::default() }
}

/// The `i`-th use the test's OLT driver "consumed" (16 bytes of block 1 each).
fn use_no(i: u64) -> PoolUse {
    PoolUse {
        seq: 0,
        purpose: 1,
        block: Uuid::from_u128(1),
        offset: 16 * (i - 1),
        len: 16,
        switch: (i % 2 == 1).then_some(KeySwitch { slot: (i % 2) as u8, from_superframe: 1_000 * i }),
    }
}

fn uses_seen(events: &[Event]) -> Vec<PoolUse> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PoolUse(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

fn is_kind(frame: &[u8], kind: u8) -> bool {
    frame.get(1) == Some(&kind)
}

/// A synced pair with no blocks running.
fn synced_pair() -> Pair {
    let mut p = Pair::new(cfg(40_000), &quantum(0, 0.0, false, 1), 2);
    p.reconnect();
    p.drive(1_000);
    assert!(p.olt.is_synced() && p.onu.is_synced());
    p
}

fn check_seqs(p: &Pair, n: u64) {
    let seen = uses_seen(&p.onu_events);
    let seqs: Vec<u64> = seen.iter().map(|u| u.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "each use once, in order");
    for u in &seen {
        let mut want = use_no(u.seq);
        want.seq = u.seq;
        assert_eq!(*u, want);
    }
    assert_eq!(p.olt.pool_uses(), (n, n), "all acknowledged");
    assert_eq!(p.onu.pool_uses(), (n, n));
    assert_eq!(p.olt_ledger.find_reuse(), None);
    assert_eq!(p.onu_ledger.find_reuse(), None);
}

#[test]
fn uses_are_delivered_in_order_and_one_ack_covers_several() {
    let mut p = synced_pair();
    for i in 1..=5 {
        assert_eq!(p.olt.announce_use(p.now, use_no(i)).unwrap(), i);
    }
    p.drive(10_000);
    check_seqs(&p, 5);
    // Acknowledgements are cumulative: at most one per use (fewer when several uses are
    // applied before the ONU transmits).
    let acks = p.sent.iter().filter(|(d, f)| *d == Direction::Upstream && is_kind(f, 24)).count();
    assert!((1..=5).contains(&acks), "{acks} acknowledgements");
    assert!(p.olt_refused.is_empty() && p.onu_refused.is_empty(), "{:?} {:?}", p.olt_refused, p.onu_refused);
}

#[test]
fn uses_survive_loss_and_reordering() {
    let mut p = synced_pair();
    let held: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let h = held.clone();
    let mut dropped_acks = 0;
    p.filter = Some(Box::new(move |d, _, f| match d {
        // Hold back the first two uses sent (delivered later, after the others).
        Direction::Downstream if is_kind(f, 9) && h.borrow().len() < 2 => {
            h.borrow_mut().push(f.to_vec());
            Fate::Drop
        }
        // Lose the first two acknowledgements.
        Direction::Upstream if is_kind(f, 24) && dropped_acks < 2 => {
            dropped_acks += 1;
            Fate::Drop
        }
        _ => Fate::Deliver,
    }));
    for i in 1..=4 {
        p.olt.announce_use(p.now, use_no(i)).unwrap();
    }
    // Uses 3 and 4 arrive first: a gap, refused, nothing applied.
    p.step();
    p.step();
    p.step();
    assert!(uses_seen(&p.onu_events).is_empty(), "no use applied past a gap");
    // The held ones arrive late (stale pads now, or in order again): never applied twice.
    for f in held.borrow_mut().drain(..) {
        p.inject(Direction::Downstream, f);
    }
    p.drive(100_000);
    check_seqs(&p, 4);
    assert!(!p.onu_refused.is_empty(), "the gap was refused");
}

#[test]
fn untagged_forged_and_replayed_uses_are_refused() {
    let mut p = synced_pair();
    p.olt.announce_use(p.now, use_no(1)).unwrap();
    p.drive(1_000);
    check_seqs(&p, 1);
    let genuine =
        p.sent.iter().find(|(d, f)| *d == Direction::Downstream && is_kind(f, 9)).unwrap().1.clone();

    // An untagged use (anyone on the fibre can send one).
    let mut body = Vec::new();
    let mut u2 = use_no(2);
    u2.seq = 2;
    Message::PoolUse(u2.clone()).encode_body(&mut body);
    let repr = FrameRepr { kind: 9, onu: 5, direction: Direction::Downstream, seq: 1_000, auth: None };
    let mut untagged = Vec::new();
    repr.emit_header_and_body(&body, &mut untagged);
    p.inject(Direction::Downstream, untagged);
    p.drive(1_000);
    assert!(p.onu_refused.last().is_some_and(|e| e.contains("untagged")), "{:?}", p.onu_refused);

    // A tagged use with a changed body (offset) and a future pad.
    let mut forged = genuine.clone();
    let n = forged.len();
    forged[n - 20] ^= 1;
    p.inject(Direction::Downstream, forged);
    p.drive(1_000);
    // A replay of the genuine frame (its pad is used).
    p.inject(Direction::Downstream, genuine);
    p.drive(1_000);
    assert_eq!(p.onu_refused.len(), 3, "{:?}", p.onu_refused);
    assert_eq!(uses_seen(&p.onu_events).len(), 1, "nothing applied twice or forged");
    // A forged acknowledgement does not make the OLT believe anything either.
    p.olt.announce_use(p.now, use_no(2)).unwrap();
    let mut body = Vec::new();
    Message::PoolUseAck(PoolUseAck { seq: 2 }).encode_body(&mut body);
    let repr = FrameRepr { kind: 24, onu: 5, direction: Direction::Upstream, seq: 1_000, auth: None };
    let mut ack = Vec::new();
    repr.emit_header_and_body(&body, &mut ack);
    p.filter =
        Some(Box::new(
            |d, _, f| {
                if d == Direction::Downstream && is_kind(f, 9) { Fate::Drop } else { Fate::Deliver }
            },
        ));
    p.pump_and_inject(Direction::Upstream, ack);
    assert_eq!(p.olt.pool_uses(), (2, 1), "an untagged ack is refused");
    p.filter = None;
    p.drive(100_000);
    check_seqs(&p, 2);
}

#[test]
fn a_restarted_onu_applies_nothing_twice_and_misses_nothing() {
    let mut p = synced_pair();
    // The ONU applies uses 1..=3 but every acknowledgement is lost; then it restarts.
    p.filter =
        Some(Box::new(
            |d, _, f| {
                if d == Direction::Upstream && is_kind(f, 24) { Fate::Drop } else { Fate::Deliver }
            },
        ));
    for i in 1..=3 {
        p.olt.announce_use(p.now, use_no(i)).unwrap();
    }
    for _ in 0..100 {
        if p.onu_pool.uses.len() == 3 {
            break;
        }
        p.step();
    }
    assert_eq!(p.onu_pool.uses.len(), 3);
    assert_eq!(p.olt.pool_uses(), (3, 0));
    p.filter = None;
    p.durable_restart_onu();
    p.olt.announce_use(p.now, use_no(4)).unwrap();
    p.drive(100_000);
    // The sync told the OLT how far the ONU got: only use 4 was applied after the restart.
    let seqs: Vec<u64> = p.onu_pool.uses.iter().map(|u| u.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(p.olt.pool_uses(), (4, 4));
}

#[test]
fn a_restarted_olt_resends_what_the_onu_missed_from_its_log() {
    let mut p = synced_pair();
    // Uses 1..=2 reach the ONU; 3 is consumed at the OLT and lost with the OLT's crash.
    for i in 1..=2 {
        p.olt.announce_use(p.now, use_no(i)).unwrap();
    }
    p.drive(10_000);
    p.filter =
        Some(Box::new(
            |d, _, f| {
                if d == Direction::Downstream && is_kind(f, 9) { Fate::Drop } else { Fate::Deliver }
            },
        ));
    p.olt.announce_use(p.now, use_no(3)).unwrap();
    p.step();
    p.filter = None;
    p.durable_restart_olt(9);
    // The restarted driver rebuilds the uses from its pool's ledger (no key switches).
    let log: Vec<PoolUse> = (1..=3).map(|i| PoolUse { seq: i, switch: None, ..use_no(i) }).collect();
    p.olt.restore_pool_uses(3, log);
    p.reconnect();
    p.drive(100_000);
    let seqs: Vec<u64> = p.onu_pool.uses.iter().map(|u| u.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(p.onu_pool.uses[2].offset, 32);
    assert_eq!(p.olt.pool_uses(), (3, 3));
}

#[test]
fn uses_interleave_with_running_blocks() {
    let q = quantum(40_000 * 8, 0.02, false, 11);
    let mut p = Pair::new(cfg(40_000), &q, 4);
    let mut announced = 0;
    let mut steps = 0;
    while announced < 6 && steps < 200_000 {
        steps += 1;
        let busy = p.step();
        // A use now and then, whatever the blocks are doing.
        if p.olt.is_synced() && (steps % 25 == 0 || !busy) {
            announced += 1;
            p.olt.announce_use(p.now, use_no(announced)).unwrap();
        }
    }
    p.drive(200_000);
    assert_eq!(announced, 6);
    check_seqs(&p, 6);
    assert!(!Pair::blocks(&p.olt_events).is_empty(), "blocks still finish");
    // The uses' tags never disturbed a block's (no refusal, no abort).
    assert!(p.olt_refused.is_empty() && p.onu_refused.is_empty(), "{:?} {:?}", p.olt_refused, p.onu_refused);
    assert!(!p.olt_events.iter().any(|e| matches!(e, Event::Aborted { .. })));
    assert_eq!(p.olt_pool.committed(), p.onu_pool.committed());
}
