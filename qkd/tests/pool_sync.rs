//! The pool agreement (`session` module docs, "Pool agreement"): staged → committed in
//! three steps, the pool sync on every connection, and what a `kill -9` of either end at
//! each point of a block's commit leaves behind — on both ends, with every block either
//! committed at both or recorded as discarded, and no authentication unit used twice.

mod common;

use common::{Fate, Pair, Stage, quantum};
use qpon_qkd::session::{Direction, SessionConfig};

const ACK: u8 = 5;
const COMMITTED: u8 = 22;

fn cfg() -> SessionConfig {
    SessionConfig { onu: 7, block_bits: 40_000, auth_share_bytes: 128, ..SessionConfig::default() }
}

/// A pair with enough quantum data for `chunks` OLT incarnations (a restarted OLT is fed
/// fresh detections, as a real receiver would deliver).
fn pair(chunks: usize) -> (Pair, Vec<Vec<qpon_qkd::records::DetectionRecord>>) {
    let q = quantum(chunks * 2 * 40_000 * 4, 0.02, false, 11);
    let mut p = Pair::new(cfg(), &quantum(0, 0.0, false, 1), 12);
    p.pulses = q.pulses;
    let per = q.detections.len() / chunks;
    let chunks = q.detections.chunks(per).map(<[_]>::to_vec).collect();
    (p, chunks)
}

fn drop_kind(p: &mut Pair, dir: Direction, kind: u8) {
    p.filter =
        Some(Box::new(move |d, _, f| if d == dir && f[1] == kind { Fate::Drop } else { Fate::Deliver }));
}

fn step_until(p: &mut Pair, what: &str, done: impl Fn(&Pair) -> bool) {
    for _ in 0..200_000 {
        if done(p) {
            return;
        }
        if !p.step() {
            break;
        }
    }
    assert!(done(p), "never reached: {what}");
}

/// The block both ends staged last, if the ONU staged it.
fn last_staged(p: &Pair) -> Option<uuid::Uuid> {
    let id = p.olt_pool.blocks.last()?.0;
    p.onu_pool.stage_of(id).map(|_| id)
}

/// What must hold once both ends are idle: the same committed blocks in the same order with
/// the same keys; nothing left provisional; every block staged anywhere is committed at both
/// ends or discarded wherever it exists; no unit used twice; no tag refused.
fn assert_agree(p: &Pair) {
    let (olt, onu) = (p.olt_pool.committed(), p.onu_pool.committed());
    assert_eq!(olt.iter().map(|b| b.0).collect::<Vec<_>>(), onu.iter().map(|b| b.0).collect::<Vec<_>>());
    assert!(olt == onu, "keys differ");
    assert!(!p.olt_pool.diverged && !p.onu_pool.diverged);
    for pool in [&p.olt_pool, &p.onu_pool] {
        assert!(pool.blocks.iter().all(|b| b.1 != Stage::Provisional), "a block left provisional");
    }
    for (id, stage, ..) in p.olt_pool.blocks.iter().chain(&p.onu_pool.blocks) {
        let (a, b) = (p.olt_pool.stage_of(*id), p.onu_pool.stage_of(*id));
        match stage {
            Stage::Committed => assert_eq!((a, b), (Some(Stage::Committed), Some(Stage::Committed))),
            _ => assert!(a != Some(Stage::Committed) && b != Some(Stage::Committed), "{id} one-sided"),
        }
    }
    assert_eq!(p.olt_ledger.find_reuse(), None);
    assert_eq!(p.onu_ledger.find_reuse(), None);
    let tags = p.olt_refused.iter().chain(&p.onu_refused).filter(|e| e.contains("tag")).count();
    assert_eq!(tags, 0, "{:?} {:?}", p.olt_refused, p.onu_refused);
}

/// Runs the next chunk of detections to the end with a clean channel.
fn finish(p: &mut Pair, chunk: &[qpon_qkd::records::DetectionRecord]) {
    p.filter = None;
    p.olt.handle_detections(p.now, chunk);
    p.drive(400_000);
}

#[test]
fn olt_killed_after_the_onus_confirm_discards_the_block_on_both_ends() {
    let (mut p, chunks) = pair(2);
    drop_kind(&mut p, Direction::Downstream, ACK);
    p.olt.handle_detections(p.now, &chunks[0]);
    // The OLT got the Confirm (it sent an Ack, lost): both hold the block provisionally.
    step_until(&mut p, "an ack sent", |p| {
        p.sent.iter().any(|(d, f)| *d == Direction::Downstream && f[1] == ACK)
    });
    let x = last_staged(&p).expect("both staged the block");
    assert_eq!(p.olt_pool.stage_of(x), Some(Stage::Provisional));
    assert_eq!(p.onu_pool.stage_of(x), Some(Stage::Provisional));
    p.durable_restart_olt(99);
    finish(&mut p, &chunks[1]);
    assert_eq!(p.olt_pool.stage_of(x), Some(Stage::Discarded));
    assert_eq!(p.onu_pool.stage_of(x), Some(Stage::Discarded));
    assert!(!p.olt_pool.committed().is_empty(), "key generation went on after the restart");
    assert_agree(&p);
}

#[test]
fn olt_killed_after_the_onu_committed_takes_the_share_back_and_agrees() {
    let (mut p, chunks) = pair(2);
    drop_kind(&mut p, Direction::Upstream, COMMITTED);
    p.olt.handle_detections(p.now, &chunks[0]);
    step_until(&mut p, "the ONU committed", |p| !p.onu_pool.committed().is_empty());
    let x = p.onu_pool.committed()[0].0;
    assert_eq!(p.olt_pool.stage_of(x), Some(Stage::Provisional), "the OLT waits for Committed");
    p.durable_restart_olt(99);
    finish(&mut p, &chunks[1]);
    // The ONU had committed it (and used its share's material for the Committed tag); the
    // OLT never did: discarded on both ends, the share taken back, and the tags of every
    // later block still verify (assert_agree).
    assert_eq!(p.olt_pool.stage_of(x), Some(Stage::Discarded));
    assert_eq!(p.onu_pool.stage_of(x), Some(Stage::Discarded));
    assert!(!p.olt_pool.committed().is_empty(), "key generation went on after the restart");
    assert_agree(&p);
}

#[test]
fn onu_killed_before_the_ack_discards_the_block_on_both_ends() {
    let (mut p, chunks) = pair(1);
    drop_kind(&mut p, Direction::Downstream, ACK);
    p.olt.handle_detections(p.now, &chunks[0][..chunks[0].len() / 2]);
    step_until(&mut p, "an ack sent", |p| {
        p.sent.iter().any(|(d, f)| *d == Direction::Downstream && f[1] == ACK)
    });
    let x = last_staged(&p).expect("both staged the block");
    p.durable_restart_onu();
    finish(&mut p, &chunks[0][chunks[0].len() / 2..]);
    assert_eq!(p.olt_pool.stage_of(x), Some(Stage::Discarded));
    assert_eq!(p.onu_pool.stage_of(x), Some(Stage::Discarded));
    assert!(!p.olt_pool.committed().is_empty());
    assert_agree(&p);
}

#[test]
fn onu_killed_after_it_committed_keeps_the_block_on_both_ends() {
    let (mut p, chunks) = pair(1);
    drop_kind(&mut p, Direction::Upstream, COMMITTED);
    p.olt.handle_detections(p.now, &chunks[0][..chunks[0].len() / 2]);
    step_until(&mut p, "the ONU committed", |p| !p.onu_pool.committed().is_empty());
    let x = p.onu_pool.committed()[0].0;
    // Killed after the OLT's ack: the OLT offers the block in the sync, the ONU holds it.
    p.durable_restart_onu();
    finish(&mut p, &chunks[0][chunks[0].len() / 2..]);
    assert_eq!(p.olt_pool.stage_of(x), Some(Stage::Committed));
    assert_eq!(p.onu_pool.committed()[0].0, x);
    assert_agree(&p);
}

#[test]
fn a_broken_connection_loses_no_block() {
    let (mut p, chunks) = pair(1);
    drop_kind(&mut p, Direction::Upstream, COMMITTED);
    p.olt.handle_detections(p.now, &chunks[0][..chunks[0].len() / 2]);
    step_until(&mut p, "the ONU committed", |p| !p.onu_pool.committed().is_empty());
    let x = p.onu_pool.committed()[0].0;
    p.reconnect();
    finish(&mut p, &chunks[0][chunks[0].len() / 2..]);
    assert_eq!(p.olt_pool.stage_of(x), Some(Stage::Committed));
    assert!(p.olt_pool.blocks.iter().all(|b| b.1 == Stage::Committed), "nothing discarded");
    assert_agree(&p);
}

#[test]
fn random_kills_and_reconnects_leave_agreeing_pools() {
    let mut rng = qpon_qkd::rng::seeded(2026);
    let mut total_discarded = 0;
    for round in 0..4 {
        let (mut p, chunks) = pair(12);
        let mut chunk = 0;
        p.olt.handle_detections(p.now, &chunks[0]);
        for _ in 0..10 {
            // Half of the time strike inside a block's commit (between privacy amplification
            // and the last acknowledgement), where it matters most; else anywhere.
            let in_commit = rand::RngExt::random_bool(&mut rng, 0.5);
            let steps = rand::RngExt::random_range(&mut rng, 50..2_500);
            for _ in 0..if in_commit { 100_000 } else { steps } {
                let window = p.olt_pool.blocks.last().is_some_and(|b| b.1 == Stage::Provisional);
                if (in_commit && window && rand::RngExt::random_bool(&mut rng, 0.2)) || !p.step() {
                    break;
                }
            }
            match rand::RngExt::random_range(&mut rng, 0..3) {
                0 => p.reconnect(),
                1 => {
                    p.durable_restart_olt(1000 + chunk as u64);
                    chunk += 1;
                    p.olt.handle_detections(p.now, &chunks[chunk]);
                }
                _ => p.durable_restart_onu(),
            }
        }
        finish(&mut p, &chunks[chunk + 1]);
        let discarded = p.olt_pool.blocks.iter().filter(|b| b.1 == Stage::Discarded).count();
        total_discarded += discarded;
        eprintln!(
            "round {round}: {} blocks committed at both ends, {discarded} discarded",
            p.olt_pool.committed().len()
        );
        assert!(!p.olt_pool.committed().is_empty());
        assert_agree(&p);
    }
    assert!(total_discarded > 0, "no kill landed inside a commit: the test proves little");
}
