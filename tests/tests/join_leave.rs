//! ONUs joining and leaving mid-run on an emulated PON: the scheduler gives a leaver's
//! slots to the others, the others keep making key and never lose gates, a newcomer and a
//! returning ONU authenticate, get slots and make key, and every block agrees at both ends.

use qpon_sim::pon::{Churn, ChurnAction, PonOptions, PonReport, run};
use qpon_tests::scenario;

fn churn(at_s: f64, onu: usize, action: ChurnAction) -> Churn {
    Churn { at_s, onu, action }
}

/// The first recorded map decided at or after `t` seconds in which `onu` owns gates (or
/// none, when `owns` is false).
fn map_after(r: &PonReport, t: f64, onu: usize, owns: bool) -> &qpon_sim::pon::MapRecord {
    r.slot_maps
        .iter()
        .find(|m| m.at_s >= t && (m.gates[onu] > 0) == owns)
        .unwrap_or_else(|| panic!("no map after {t} s with onu {onu} owning {owns}: {:?}", r.slot_maps))
}

#[test]
fn onus_leave_and_join_mid_run() {
    let pon = scenario(8, &[]);
    let leaver = 3;
    let newcomer = 7;
    let stayers: Vec<usize> = (0..8).filter(|&k| k != leaver && k != newcomer).collect();
    let opts = PonOptions {
        seconds: 4.5,
        seed: 11,
        workers: 2,
        scheduling_period_s: 0.25,
        lost_after_periods: 2,
        churn: vec![
            // ONU 3 goes dark without a word and comes back; ONU 7 is new (its first
            // event is a join, so it starts dark).
            churn(1.0, leaver, ChurnAction::Leave),
            churn(1.5, newcomer, ChurnAction::Join),
            churn(2.5, leaver, ChurnAction::Join),
        ],
        ..PonOptions::default()
    };
    let r = run(&pon, &opts, |_| {});

    // Every block at both ends of every ONU agrees (at most the last is in flight).
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    for o in &r.onus {
        assert!(o.blocks_agreeing + 1 >= o.blocks, "onu {}: {} of {}", o.onu, o.blocks_agreeing, o.blocks);
    }

    // The maps: 7 ONUs share the frame after the first period, 6 once the leaver is
    // declared lost, 7 with the newcomer, 8 with the leaver back.
    let owners = |m: &qpon_sim::pon::MapRecord| m.gates.iter().filter(|&&g| g > 0).count();
    let counts: Vec<usize> = r.slot_maps.iter().map(owners).collect();
    assert_eq!(counts, vec![7, 6, 7, 8], "{:?}", r.slot_maps);
    assert!(r.slot_maps.windows(2).all(|w| w[0].version < w[1].version && w[0].from_frame < w[1].from_frame));
    assert_eq!(r.aggregate.map_changes, 4);

    // The leaver is declared lost within two silent periods (plus the one it left in) and
    // its slots go to the others.
    let lost = map_after(&r, 1.0, leaver, false);
    assert!(lost.at_s <= 1.0 + 3.0 * 0.25 + 1e-9, "lost only at {} s", lost.at_s);
    assert_eq!(lost.gates[leaver], 0);
    let before = &r.slot_maps[0];
    for &k in &stayers {
        assert!(lost.gates[k] > before.gates[k], "onu {k} did not get the leaver's gates");
    }

    // The others never own fewer gates than they were provisioned with, and keep making key
    // through every change.
    for &k in &stayers {
        let provisioned = pon.map.owned(k);
        for m in &r.slot_maps {
            assert!(
                m.gates[k] >= provisioned,
                "onu {k}: {} gates in map v{}, provisioned {provisioned}",
                m.gates[k],
                m.version
            );
        }
        let bits: Vec<u64> =
            r.slot_maps.iter().map(|m| m.secret_bits[k]).chain([r.onus[k].secret_bits]).collect();
        assert!(bits.windows(2).all(|w| w[0] < w[1]), "onu {k} stopped making key: {bits:?}");
    }

    // The newcomer and the returning ONU are authenticated, get slots and make key.
    let with_newcomer = map_after(&r, 1.5, newcomer, true);
    assert!(with_newcomer.gates[newcomer] > 0 && with_newcomer.at_s <= 1.5 + 0.25 + 1e-9);
    assert!(r.onus[newcomer].secret_bits > with_newcomer.secret_bits[newcomer]);
    assert!(r.onus[newcomer].blocks >= 2, "{:?}", r.onus[newcomer]);
    let back = map_after(&r, 2.5, leaver, true);
    assert!(back.gates[leaver] > 0 && back.at_s <= 2.5 + 0.25 + 1e-9);
    assert!(
        r.onus[leaver].secret_bits > back.secret_bits[leaver],
        "the returning ONU made no key: {:?}",
        r.onus[leaver]
    );

    // At the end everyone holds the provisioned equal share again.
    let last = r.slot_maps.last().unwrap();
    for k in 0..8 {
        assert_eq!(last.gates[k], pon.map.owned(k), "onu {k}");
        assert!(r.onus[k].slot_share > 0.0);
    }
}

#[test]
fn nothing_changes_without_churn() {
    // Equal gates reproduce the scenario's map: no map is ever re-sent.
    let pon = scenario(4, &[]);
    let opts =
        PonOptions { seconds: 1.2, seed: 3, workers: 2, scheduling_period_s: 0.25, ..PonOptions::default() };
    let r = run(&pon, &opts, |_| {});
    assert!(r.slot_maps.is_empty(), "{:?}", r.slot_maps);
    assert_eq!(r.aggregate.blocks_disagreeing, 0);
    assert!(r.onus.iter().all(|o| o.blocks >= 1), "{:?}", r.onus);
}
