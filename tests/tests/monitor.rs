//! The OLT's monitor in the emulated PON: the attacked ONU, and only it, is named.

use qpon_sim::pon::PonReport;
use qpon_tests::{emulate, scenario};

/// The ONUs with alarms, and their alarm lines.
fn alarmed(r: &PonReport) -> Vec<(usize, &[String])> {
    r.onus.iter().filter(|o| !o.alarms.is_empty()).map(|o| (o.onu, o.alarms.as_slice())).collect()
}

#[test]
fn an_honest_pon_raises_no_alarm() {
    let pon = scenario(16, &[]);
    let r = emulate(&pon, 4.0, 0.0, 21);
    assert!(r.onus.iter().all(|o| o.detections > 100_000), "the monitor had counts to judge");
    assert_eq!(alarmed(&r), vec![], "false alarms on an honest PON");
}

#[test]
fn blinding_raises_the_alarm_for_that_onu_only() {
    let pon = scenario(16, &["blinding:onu=3"]);
    let r = emulate(&pon, 4.0, 0.0, 22);
    let hit = alarmed(&r);
    assert_eq!(hit.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![3], "alarms: {hit:#?}");
    let lines = hit[0].1;
    // The receiver's bias anomaly is attributed to this ONU, and its own statistics show
    // why: no double clicks, decoy yields of an ideal detector at the source.
    for kind in ["BiasCurrentOutOfRange", "NoDoubleClicks", "DecoyYieldInconsistent"] {
        assert!(lines.iter().any(|l| l.contains(kind)), "no {kind} in {lines:#?}");
    }
    assert!(lines.iter().all(|l| l.starts_with("onu 3: ")));
    // Blinding leaves no errors: the QBER test has nothing to say.
    assert!(!lines.iter().any(|l| l.contains("QberAbove")), "{lines:#?}");
}

#[test]
fn intercept_resend_raises_a_qber_alarm_for_that_onu_only() {
    let pon = scenario(16, &["intercept-resend:onu=5"]);
    let r = emulate(&pon, 3.0, 0.0, 23);
    let hit = alarmed(&r);
    assert_eq!(hit.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![5], "alarms: {hit:#?}");
    assert!(hit[0].1.iter().any(|l| l.contains("QberAbove")), "{:#?}", hit[0].1);
    // The receiver is not blinded: no bias alarm.
    assert!(!hit[0].1.iter().any(|l| l.contains("BiasCurrentOutOfRange")));
}
