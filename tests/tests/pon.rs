//! The emulated PON: both ends agree, and the emulation agrees with the planner.

use qpon_tests::{emulate, plan, scenario};

/// Checks one ONU's emulated figures against the planner's expectations.
fn agrees(o: &qpon_sim::pon::OnuReport, p: &qpon_sim::planning::OnuRate, seconds: f64) {
    // Detections: Poisson counts, 5σ plus the receiver-poll granularity (10 ms).
    let expect = p.detections_per_s * seconds;
    let tol = 5.0 * expect.sqrt() + p.detections_per_s * 0.02;
    assert!(
        (o.detections as f64 - expect).abs() <= tol,
        "onu {}: {} detections, planner expects {expect:.0} ± {tol:.0}",
        o.onu,
        o.detections
    );
    // QBER of the key basis, measured by reconciliation over ≥ 10⁵ bits.
    assert!((o.qber - p.qber).abs() < 0.002, "onu {}: QBER {} vs planned {}", o.onu, o.qber, p.qber);
    // Key per block: the counts of one 10⁵-bit block fluctuate (a 0.05 % QBER swing moves
    // ℓ by ~15 %), and the planner charges f_EC = 1.1 where the block pays the measured
    // leakage; the mean over many ONUs is checked tightly by `mean_block_agrees`.
    let per_block = o.secret_bits as f64 / o.blocks as f64;
    let planned = p.bits_per_block as f64;
    assert!(
        per_block > 0.65 * planned && per_block < 1.35 * planned,
        "onu {}: {per_block:.0} bits per block vs planned {planned}",
        o.onu
    );
}

/// The mean key per block over the given ONUs is within a few percent of the planner's
/// (its standard error over ≥ 30 blocks is ~2 %).
fn mean_block_agrees(r: &qpon_sim::pon::PonReport, p: &qpon_sim::planning::RateReport, skip: &[usize]) {
    let ons: Vec<_> = r.onus.iter().filter(|o| !skip.contains(&o.onu) && o.blocks > 0).collect();
    let bits: u64 = ons.iter().map(|o| o.secret_bits).sum();
    let blocks: u64 = ons.iter().map(|o| o.blocks).sum();
    let planned: f64 =
        ons.iter().map(|o| p.onus[o.onu].bits_per_block as f64).sum::<f64>() / ons.len() as f64;
    let mean = bits as f64 / blocks as f64;
    assert!(
        mean > 0.92 * planned && mean < 1.12 * planned,
        "mean {mean:.0} bits per block vs planned {planned:.0}"
    );
}

#[test]
fn thirty_two_onus_agree_with_each_other_and_with_the_planner() {
    let pon = scenario(32, &[]);
    let seconds = 12.0;
    let r = emulate(&pon, seconds, 0.0, 7);
    let p = plan(&pon);
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    for o in &r.onus {
        assert!(o.blocks >= 2, "onu {} made {} blocks", o.onu, o.blocks);
        // Every block the ONU holds is the OLT's; at most the last is still in flight.
        assert!(o.blocks_agreeing + 1 >= o.blocks, "onu {}: {} of {}", o.onu, o.blocks_agreeing, o.blocks);
        agrees(o, &p.onus[o.onu], seconds);
    }
    mean_block_agrees(&r, &p, &[]);
}

#[test]
fn five_percent_frame_loss_changes_nothing_but_time() {
    let pon = scenario(32, &[]);
    let r = emulate(&pon, 12.0, 0.05, 8);
    assert!(r.aggregate.frames_dropped > 0);
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    let p = plan(&pon);
    for o in &r.onus {
        assert!(o.blocks >= 2, "onu {} made {} blocks under loss", o.onu, o.blocks);
        assert!(o.blocks_agreeing + 1 >= o.blocks);
        agrees(o, &p.onus[o.onu], 12.0);
    }
    mean_block_agrees(&r, &p, &[]);
}

#[test]
fn intercept_resend_on_one_onu_gives_it_nothing_and_leaves_the_others_alone() {
    let pon = scenario(16, &["intercept-resend:onu=5"]);
    let seconds = 8.0;
    let r = emulate(&pon, seconds, 0.0, 9);
    let p = plan(&pon);
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    let attacked = &r.onus[5];
    assert_eq!(attacked.secret_bits, 0, "attacked ONU got key: {attacked:?}");
    assert_eq!(attacked.pool_bits, 0);
    assert!(attacked.aborted.values().sum::<u64>() >= 1, "no block attempt was even made");
    for o in r.onus.iter().filter(|o| o.onu != 5) {
        assert!(o.blocks >= 1);
        agrees(o, &p.onus[o.onu], seconds);
    }
    mean_block_agrees(&r, &p, &[5]);
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let pon = scenario(4, &[]);
    let a = serde_json::to_string(&emulate(&pon, 1.5, 0.02, 3)).unwrap();
    let b = serde_json::to_string(&emulate(&pon, 1.5, 0.02, 3)).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&emulate(&pon, 1.5, 0.02, 4)).unwrap();
    assert_ne!(a, c);
}
