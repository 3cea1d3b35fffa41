//! Downstream encryption across a whole emulated PON: 8 ONUs, keys from each ONU's pool
//! rotated several times, every frame broadcast through the splitter. Every ONU decrypts
//! all of its own frames and nothing of anybody else's (not even with its own key on
//! another ONU's ciphertext), and both ends' pools still agree block by block with the
//! same downstream consumption.

use qpon_sim::pon::{DownstreamTraffic, PonOptions, run};
use qpon_tests::scenario;

#[test]
fn every_onu_reads_its_own_frames_and_nothing_else_across_key_switches() {
    let pon = scenario(8, &[]);
    let opts = PonOptions {
        seconds: 4.0,
        seed: 21,
        workers: 2,
        downstream: Some(DownstreamTraffic {
            frames_per_s: 200.0,
            payload_bytes: 200,
            // 0.4 s per key: several switches per ONU once the first block is in.
            rotate_every_superframes: 3_200,
            lead_superframes: 400,
            ..DownstreamTraffic::default()
        }),
        ..PonOptions::default()
    };
    let t0 = std::time::Instant::now();
    let r = run(&pon, &opts, |_| {});
    eprintln!("run took {:?}", t0.elapsed());
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    for o in &r.onus {
        let d = o.downstream.as_ref().expect("downstream report");
        eprintln!("onu {}: blocks {} {d:?}", o.onu, o.blocks);
        assert!(d.switches >= 3, "onu {}: only {} key switches", o.onu, d.switches);
        assert!(d.switches_seen >= 3, "onu {}: saw only {} key switches", o.onu, d.switches_seen);
        assert!(d.frames_sent > 0);
        // Every frame sent was opened with exactly the payload sent.
        assert_eq!(d.frames_opened, d.frames_sent, "onu {}", o.onu);
        assert_eq!(d.frames_lost, 0, "onu {}", o.onu);
        // Nothing of another ONU's frames: refused as such, and our own key on their
        // ciphertext gives garbage.
        assert_eq!(d.others_opened, 0, "onu {}", o.onu);
        assert!(d.others_refused > 0);
        assert!(d.others_tried_with_own_key > 0);
        assert_eq!(d.others_plaintext_recovered, 0, "onu {}", o.onu);
        assert_eq!(d.pool_empty_alarms, 0);
        // The pools agree: same blocks, same consumptions in the same order, the same
        // downstream bytes (up to the uses still in flight at the end).
        assert!(d.ledgers_agree, "onu {}", o.onu);
        assert_eq!(d.olt_consumed_bytes, 16 * d.keys_installed);
        assert_eq!(d.olt_consumed_bytes - d.onu_consumed_bytes, 16 * d.uses_in_flight, "onu {}", o.onu);
        assert!(o.blocks_agreeing + 1 >= o.blocks);
    }
}

/// The same over lossy datagrams: announcements and acknowledgements are lost and
/// re-sent by the sessions themselves, and every switch still happens at both ends.
#[test]
fn key_switches_survive_a_lossy_classical_channel() {
    let pon = scenario(4, &[]);
    let mut opts = PonOptions {
        seconds: 3.0,
        seed: 5,
        workers: 2,
        drop_chance: 0.05,
        medium: qpon_sim::pon::Medium::Datagram,
        downstream: Some(DownstreamTraffic {
            frames_per_s: 100.0,
            payload_bytes: 64,
            rotate_every_superframes: 3_200,
            lead_superframes: 400,
            ..DownstreamTraffic::default()
        }),
        ..PonOptions::default()
    };
    opts.session.rto = qpon_qkd::time::Duration::from_millis(5);
    let t0 = std::time::Instant::now();
    let r = run(&pon, &opts, |_| {});
    eprintln!(
        "lossy run took {:?}; {} of {} packets dropped",
        t0.elapsed(),
        r.aggregate.frames_dropped,
        r.aggregate.frames
    );
    assert!(r.aggregate.frames_dropped > 0);
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    for o in &r.onus {
        let d = o.downstream.as_ref().expect("downstream report");
        eprintln!("onu {}: blocks {} {d:?}", o.onu, o.blocks);
        assert!(d.switches >= 3, "onu {}: only {} key switches", o.onu, d.switches);
        assert_eq!(d.frames_opened, d.frames_sent, "onu {}", o.onu);
        assert_eq!((d.others_opened, d.others_plaintext_recovered), (0, 0));
        assert!(d.ledgers_agree, "onu {}", o.onu);
        assert_eq!(d.olt_consumed_bytes - d.onu_consumed_bytes, 16 * d.uses_in_flight, "onu {}", o.onu);
    }
}

/// A flow marked for one-time pads beside the AES flow: pad runs come from the pools and
/// are announced like keys; every ONU opens each of its pad frames exactly once (a replay
/// is refused), nothing of another ONU's, and both ends' pools still agree.
#[test]
fn one_time_pad_flows_open_once_at_their_own_onu_only() {
    let pon = scenario(4, &[]);
    let opts = PonOptions {
        seconds: 3.0,
        seed: 5,
        workers: 2,
        downstream: Some(DownstreamTraffic {
            frames_per_s: 50.0,
            payload_bytes: 100,
            rotate_every_superframes: 8_000,
            lead_superframes: 400,
            otp_frames_per_s: 40.0,
            otp_payload_bytes: 48,
        }),
        ..PonOptions::default()
    };
    let r = run(&pon, &opts, |_| {});
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    for o in &r.onus {
        let d = o.downstream.as_ref().expect("downstream report");
        eprintln!("onu {}: blocks {} {d:?}", o.onu, o.blocks);
        assert!(d.pad_runs >= 1, "onu {}: no pad run", o.onu);
        assert!(d.otp_frames_sent > 10, "onu {}: only {} pad frames", o.onu, d.otp_frames_sent);
        // Every pad frame sent opened to its payload, once; none of another ONU's did.
        assert_eq!(d.otp_frames_opened, d.otp_frames_sent, "onu {}", o.onu);
        assert_eq!(d.otp_frames_lost, 0);
        assert_eq!((d.otp_replays, d.otp_replays_opened), (d.otp_frames_sent, 0));
        assert_eq!(d.others_opened, 0);
        assert_eq!(d.others_plaintext_recovered, 0);
        // The AES flow went on beside it.
        assert_eq!(d.frames_opened, d.frames_sent);
        // Pad runs and keys come from the same ledger, mirrored in order.
        assert!(d.ledgers_agree, "onu {}", o.onu);
        // Every pad byte used came from the pool, and no run is longer than configured.
        let pads = d.olt_consumed_bytes - 16 * d.keys_installed;
        assert!(
            pads >= 48 * d.otp_frames_sent && pads <= 4096 * d.pad_runs,
            "onu {}: {pads} pad bytes",
            o.onu
        );
    }
}
