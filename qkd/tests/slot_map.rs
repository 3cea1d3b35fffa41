//! The slot-map control messages (kinds 7 and 21): delivered, acknowledged, authenticated,
//! replay-protected, and independent of the blocks in progress.

mod common;

use common::{Fate, Pair, quantum};
use qpon_qkd::session::{AuthPolicy, Direction, Event, FrameRepr, Message, SessionConfig, SlotMapUpdate};

fn cfg(block_bits: usize) -> SessionConfig {
    SessionConfig { onu: 7, block_bits, auth_share_bytes: 128, ..SessionConfig::default() }
}

fn update(version: u32) -> SlotMapUpdate {
    // Opaque bytes to the session (the mux wire format in real use).
    SlotMapUpdate { version, from_frame: 1_000 + u64::from(version), map: vec![1, 0, version as u8, 42] }
}

fn maps_seen(events: &[Event]) -> Vec<SlotMapUpdate> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SlotMap(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

fn is_kind(frame: &[u8], kind: u8) -> bool {
    frame.get(1) == Some(&kind)
}

#[test]
fn a_slot_map_is_delivered_acknowledged_and_authenticates_the_onu() {
    let mut p = Pair::new(cfg(40_000), &quantum(0, 0.0, false, 1), 2);
    p.olt.send_slot_map(p.now, update(3)).unwrap();
    assert_eq!(p.olt.slot_map_pending(), Some(3));
    p.drive(1_000);
    assert_eq!(maps_seen(&p.onu_events), vec![update(3)]);
    assert_eq!(p.olt.slot_map_acked(), Some(3));
    assert_eq!(p.olt.slot_map_pending(), None, "acknowledged: no more retransmissions");
    // An idle ONU tags its acknowledgement: the OLT's evidence that it holds its secret.
    assert_eq!(p.olt.peer_tags_verified(), 1);
    let down: Vec<_> = p.sent.iter().filter(|(d, f)| *d == Direction::Downstream && is_kind(f, 7)).collect();
    assert_eq!(down.len(), 1, "sent once");
    assert!(p.olt_refused.is_empty() && p.onu_refused.is_empty(), "{:?} {:?}", p.olt_refused, p.onu_refused);
    assert_eq!(p.olt_ledger.find_reuse(), None);
    assert_eq!(p.onu_ledger.find_reuse(), None);
}

#[test]
fn a_lost_map_or_ack_is_retransmitted_with_a_fresh_pad() {
    let mut p = Pair::new(cfg(40_000), &quantum(0, 0.0, false, 1), 2);
    // Lose the first map and the first two acknowledgements.
    p.filter = Some(Box::new(|d, idx, f| {
        let lose = match d {
            Direction::Downstream => idx == 0 && is_kind(f, 7),
            Direction::Upstream => idx < 2 && is_kind(f, 21),
        };
        if lose { Fate::Drop } else { Fate::Deliver }
    }));
    p.olt.send_slot_map(p.now, update(1)).unwrap();
    p.drive(1_000);
    assert_eq!(p.olt.slot_map_acked(), Some(1));
    // The ONU saw the map once, however many copies arrived.
    assert_eq!(maps_seen(&p.onu_events), vec![update(1)]);
    let copies: Vec<&Vec<u8>> =
        p.sent.iter().filter(|(d, f)| *d == Direction::Downstream && is_kind(f, 7)).map(|(_, f)| f).collect();
    assert_eq!(copies.len(), 4, "one original and three retransmissions");
    // Each retransmission is a new frame with its own pad (bytes 22..30 of the header).
    let mut pads: Vec<&[u8]> = copies.iter().map(|f| &f[22..30]).collect();
    pads.dedup();
    assert_eq!(pads.len(), copies.len());
    assert_eq!(p.olt_ledger.find_reuse(), None);
    assert_eq!(p.onu_ledger.find_reuse(), None);
}

#[test]
fn a_forged_or_untagged_map_is_refused() {
    let mut p = Pair::new(cfg(40_000), &quantum(0, 0.0, false, 1), 2);
    // Any bit flipped in the map's frame (header, body or tag) is refused.
    p.filter = Some(Box::new(|d, idx, f| {
        if d == Direction::Downstream && idx == 0 {
            let mut b = f.to_vec();
            let at = b.len() - 20; // inside the map bytes
            b[at] ^= 0x10;
            Fate::Replace(b)
        } else {
            Fate::Deliver
        }
    }));
    p.olt.send_slot_map(p.now, update(5)).unwrap();
    for _ in 0..3 {
        p.step();
    }
    assert!(maps_seen(&p.onu_events).is_empty(), "a forged map was accepted");
    assert!(p.onu_refused.iter().any(|e| e.contains("tag")), "{:?}", p.onu_refused);
    assert!(p.onu_events.iter().any(|e| matches!(e, Event::Alarm(_))), "no alarm for a refused tag");
    // The genuine retransmission still gets through (with a fresh hash key after the
    // refused tag).
    p.drive(1_000);
    assert_eq!(maps_seen(&p.onu_events), vec![update(5)]);

    // An untagged map, well-formed in every other respect, is refused.
    let msg = Message::SlotMap(update(9));
    let mut body = Vec::new();
    msg.encode_body(&mut body);
    let mut frame = Vec::new();
    FrameRepr { kind: 7, onu: 7, direction: Direction::Downstream, seq: 1 << 40, auth: None }
        .emit_header_and_body(&body, &mut frame);
    let err = p.onu.handle_frame(p.now, &frame).unwrap_err();
    assert!(err.to_string().contains("requires a tag"), "{err}");
    // So is a tagged one whose tag is made up.
    let mut forged = Vec::new();
    FrameRepr { kind: 7, onu: 7, direction: Direction::Downstream, seq: 1 << 41, auth: Some((1, 2, 16)) }
        .emit_header_and_body(&body, &mut forged);
    forged.extend_from_slice(&[0xA5; 16]);
    assert!(p.onu.handle_frame(p.now, &forged).is_err());
    p.drive(1_000);
    assert_eq!(maps_seen(&p.onu_events), vec![update(5)], "only the genuine map");
    assert_eq!(p.onu_ledger.find_reuse(), None);
}

#[test]
fn a_replayed_map_is_refused_even_after_a_new_connection() {
    let mut p = Pair::new(cfg(40_000), &quantum(0, 0.0, false, 1), 2);
    p.olt.send_slot_map(p.now, update(1)).unwrap();
    p.drive(1_000);
    p.olt.send_slot_map(p.now, update(2)).unwrap();
    p.drive(1_000);
    let maps: Vec<Vec<u8>> = p
        .sent
        .iter()
        .filter(|(d, f)| *d == Direction::Downstream && is_kind(f, 7))
        .map(|(_, f)| f.clone())
        .collect();
    assert_eq!(maps.len(), 2);
    let refused = p.onu_refused.len();
    for f in &maps {
        p.inject(Direction::Downstream, f.clone());
    }
    p.drive(1_000);
    assert_eq!(p.onu_refused.len(), refused + 2, "{:?}", p.onu_refused);
    // A new connection makes the ONU accept the map in force again, but still no replay.
    p.onu.reset_link();
    for f in &maps {
        p.inject(Direction::Downstream, f.clone());
    }
    p.drive(1_000);
    assert_eq!(p.onu_refused.len(), refused + 4, "{:?}", p.onu_refused);
    assert_eq!(maps_seen(&p.onu_events), vec![update(1), update(2)]);
    // The OLT re-sending the map in force on the new connection is accepted again.
    p.olt.reset_link(p.now);
    p.olt.send_slot_map(p.now, update(2)).unwrap();
    p.drive(1_000);
    assert_eq!(maps_seen(&p.onu_events), vec![update(1), update(2), update(2)]);
    // A replayed acknowledgement changes nothing either.
    let acks: Vec<Vec<u8>> = p
        .sent
        .iter()
        .filter(|(d, f)| *d == Direction::Upstream && is_kind(f, 21))
        .map(|(_, f)| f.clone())
        .collect();
    for f in acks {
        p.inject(Direction::Upstream, f);
    }
    p.drive(1_000);
    assert_eq!(p.olt.slot_map_acked(), Some(2));
    assert_eq!(p.olt_ledger.find_reuse(), None);
    assert_eq!(p.onu_ledger.find_reuse(), None);
}

/// Runs a few blocks, sending a new map every `every` steps, with `drop` deciding the fate of
/// every frame; returns the pair.
fn run_with_maps(
    policy: AuthPolicy,
    every: Option<usize>,
    drop: fn(Direction, usize, &[u8]) -> bool,
) -> Pair {
    let block_bits = 40_000;
    let q = quantum(3 * block_bits * 4, 0.02, false, 71);
    let mut c = cfg(block_bits);
    c.auth_policy = policy;
    let mut p = Pair::new(c, &q, 72);
    p.filter = Some(Box::new(move |d, idx, f| if drop(d, idx, f) { Fate::Drop } else { Fate::Deliver }));
    let mut version = 0;
    for i in 0..20_000 {
        if every.is_some_and(|e| i % e == e / 2) {
            version += 1;
            p.olt.send_slot_map(p.now, update(version)).unwrap();
        }
        if !p.step() {
            break;
        }
    }
    p.drive(200_000);
    p
}

#[test]
fn maps_in_the_middle_of_blocks_disturb_nothing() {
    for policy in [AuthPolicy::PerPhase, AuthPolicy::PerMessage] {
        let clean = run_with_maps(policy, None, |_, _, _| false);
        let with_maps = run_with_maps(policy, Some(23), |_, _, _| false);
        let a = Pair::blocks(&clean.olt_events);
        assert!(a.len() >= 2, "{policy:?}: {:?}", clean.olt_events);
        // The very same blocks (IDs and keys) at both ends, as without any map.
        let p = &with_maps;
        let b = Pair::blocks(&p.olt_events);
        let c = Pair::blocks(&p.onu_events);
        assert_eq!(
            a.iter().map(|x| (x.0, &x.1)).collect::<Vec<_>>(),
            b.iter().map(|x| (x.0, &x.1)).collect::<Vec<_>>()
        );
        assert_eq!(
            b.iter().map(|x| (x.0, &x.1)).collect::<Vec<_>>(),
            c.iter().map(|x| (x.0, &x.1)).collect::<Vec<_>>()
        );
        assert!(
            !p.olt_events.iter().any(|e| matches!(e, Event::Aborted { .. })),
            "{policy:?}: {:?}",
            p.olt_events
        );
        assert!(
            p.olt_refused.is_empty() && p.onu_refused.is_empty(),
            "{policy:?}: {:?} {:?}",
            p.olt_refused,
            p.onu_refused
        );
        let seen = maps_seen(&p.onu_events);
        assert!(seen.len() >= 10, "{policy:?}: {} maps", seen.len());
        assert!(seen.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(p.olt.slot_map_acked(), seen.last().map(|u| u.version));
        assert_eq!(p.olt_ledger.find_reuse(), None);
        assert_eq!(p.onu_ledger.find_reuse(), None);
    }
}

#[test]
fn maps_and_blocks_survive_losses_together() {
    for policy in [AuthPolicy::PerPhase, AuthPolicy::PerMessage] {
        let p = run_with_maps(policy, Some(31), |_, idx, _| idx % 9 == 4);
        let olt = Pair::blocks(&p.olt_events);
        let onu = Pair::blocks(&p.onu_events);
        assert!(!olt.is_empty(), "{policy:?}: {:?}", p.olt_events);
        for (id, k, _) in &onu {
            let (_, ko, _) = olt.iter().find(|(i, _, _)| i == id).expect("ONU block unknown to the OLT");
            assert_eq!(k, ko);
        }
        let seen = maps_seen(&p.onu_events);
        assert!(seen.windows(2).all(|w| w[0].version < w[1].version));
        // The last map sent reached the ONU and was acknowledged.
        assert_eq!(p.olt.slot_map_pending(), None);
        assert_eq!(p.olt.slot_map_acked(), seen.last().map(|u| u.version));
        assert_eq!(p.olt_ledger.find_reuse(), None);
        assert_eq!(p.onu_ledger.find_reuse(), None);
    }
}
