//! The sampler against the analytic model, end to end through `qkd`'s sifting.
#![allow(clippy::needless_range_loop)] // ONU indices address several parallel tables

use super::*;
use crate::model::FrameModel;
use crate::planning::{expected, tables};
use crate::scenario::{DetectorProfile, EveCfg, Scenario};
use qpon_qkd::finite_key::{BoundInput, DecoyParams, binary_entropy, finite_key};
use qpon_qkd::sift::{DecoyCounts, announce, answer, apply_answer};

/// Sifted counts of every ONU (key-basis errors filled in by comparing both ends' key
/// bits), and all detections per ONU slot.
struct Measured {
    counts: Vec<DecoyCounts>,
    detections: Vec<f64>,
    idle_detections: f64,
    doubles: Vec<f64>,
}

fn run(pon: &Pon, gates: u64, chunk: u64) -> (SimPon, Vec<DetectionRecord>) {
    let sim = SimPon::new(pon);
    let mut det = sim.detector();
    let mut recs = Vec::new();
    let mut g = 0;
    while g < gates {
        g = (g + chunk).min(gates);
        let h = det.poll_detections(g, &mut recs).unwrap();
        assert_eq!(h, g);
    }
    assert!(recs.windows(2).all(|w| w[0].gate < w[1].gate), "records in strictly increasing gate order");
    (sim, recs)
}

/// Records before this gate are left out of the counts: ONUs cannot have fired pulses
/// that arrive before their fibre delay (at most 20 km = 100 000 gates here).
const START: u64 = 200_000;

/// Seconds of records counted by [`measure`] in a run of `gates`.
fn counted_s(pon: &Pon, gates: u64) -> f64 {
    (gates - START) as f64 / pon.gate_rate_hz
}

fn measure(pon: &Pon, sim: &SimPon, recs: &[DetectionRecord]) -> Measured {
    let n = pon.onus.len();
    let f = pon.map.frame_gates;
    let mut per: Vec<Vec<DetectionRecord>> = vec![Vec::new(); n];
    let mut idle = 0.0;
    for r in recs.iter().filter(|r| r.gate >= START) {
        let g = r.gate % f;
        match (0..n).find(|&i| pon.map.slots[i].iter().any(|s| s.contains(&g))) {
            Some(i) => per[i].push(*r),
            None => idle += 1.0,
        }
    }
    let mut m =
        Measured { counts: Vec::new(), detections: Vec::new(), idle_detections: idle, doubles: Vec::new() };
    for (i, dets) in per.iter().enumerate() {
        let mut src = sim.source(i);
        let delay = (pon.onus[i].length_km * GATES_PER_KM_AT_1GHZ).round() as u64;
        let ann = announce(dets);
        let pulses: Vec<u64> = ann.gates.iter().map(|g| g - delay).collect();
        src.request_pulses(7, &pulses).unwrap();
        let a = src.poll_pulses().unwrap();
        assert_eq!(a.id, 7);
        assert!(a.records.iter().all(Option::is_some), "every detection in a slot has a pulse record");
        let (ans, tx) = answer(&ann, &a.records).unwrap();
        let rx = apply_answer(dets, &ans).unwrap();
        let mut c = rx.counts;
        for (j, k) in rx.key.intensities.iter().enumerate() {
            if rx.key.bits.get(j) != tx.key.bits.get(j) {
                c.key.m[k.index()] += 1.0;
            }
        }
        m.counts.push(c);
        m.detections.push(dets.len() as f64);
        m.doubles.push(dets.iter().filter(|d| d.flags.double_click()).count() as f64);
    }
    m
}

/// |observed − expected| within `z` Poisson standard deviations (plus a small absolute
/// slack for tiny expectations).
fn close(what: &str, obs: f64, exp: f64, z: f64) {
    let sd = exp.max(1.0).sqrt();
    assert!((obs - exp).abs() <= z * sd + 2.0, "{what}: observed {obs}, expected {exp:.1} (±{:.1})", z * sd);
}

fn analytic(pon: &Pon, seconds: f64) -> Vec<crate::planning::Expected> {
    let tabs = tables(pon);
    let fm = FrameModel::compute(&pon.map, &tabs, &pon.detector);
    (0..pon.onus.len())
        .map(|i| {
            let share = pon.map.owned(i) as f64 / pon.map.frame_gates as f64;
            let mut e = expected(&tabs[i], &fm.effects[i], share, pon.gate_rate_hz);
            for b in [&mut e.key, &mut e.test] {
                b.n = b.n.map(|x| x * seconds);
                b.m = b.m.map(|x| x * seconds);
            }
            e.detections_per_s *= seconds;
            e.double_clicks_per_s *= seconds;
            e
        })
        .collect()
}

fn small_pon(det: DetectorProfile) -> Pon {
    let mut s = Scenario { onus: 4, seed: 11, ..Default::default() };
    s.receiver.detector = det;
    s.fiber.length_km = 2.0;
    s.onu.push(crate::scenario::OnuOverride { index: 2, length_km: Some(20.0), ..Default::default() });
    s.resolve().unwrap()
}

#[test]
fn sampled_counts_agree_with_the_model() {
    for det in [DetectorProfile::Apd, DetectorProfile::Snspd] {
        let pon = small_pon(det);
        let gates = 20_000_000;
        let (sim, recs) = run(&pon, gates, 3_000_000);
        let m = measure(&pon, &sim, &recs);
        let exp = analytic(&pon, counted_s(&pon, gates));
        for i in 0..pon.onus.len() {
            let (c, e) = (&m.counts[i], &exp[i]);
            for k in 0..3 {
                close(&format!("{det:?} onu {i} key n[{k}]"), c.key.n[k], e.key.n[k], 5.0);
                close(&format!("{det:?} onu {i} test n[{k}]"), c.test.n[k], e.test.n[k], 5.0);
                close(&format!("{det:?} onu {i} test m[{k}]"), c.test.m[k], e.test.m[k], 5.0);
            }
            close(&format!("{det:?} onu {i} key errors"), c.key.m_total(), e.key.m_total(), 5.0);
            close(&format!("{det:?} onu {i} detections"), m.detections[i], e.detections_per_s, 5.0);
            close(&format!("{det:?} onu {i} double clicks"), m.doubles[i], e.double_clicks_per_s, 5.0);
        }
        assert!(m.idle_detections > 0.0 || det == DetectorProfile::Snspd);
    }
}

#[test]
fn same_seed_same_records_whatever_the_chunks() {
    let pon = small_pon(DetectorProfile::Apd);
    let (_, a) = run(&pon, 3_000_000, 1_000_000);
    let (_, b) = run(&pon, 3_000_000, 333_333);
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let mut other = pon.clone();
    other.seed += 1;
    let (_, c) = run(&other, 3_000_000, 1_000_000);
    assert_ne!(a, c);
}

#[test]
fn full_intercept_resend_gives_a_quarter_and_no_key() {
    let mut s = Scenario { onus: 4, seed: 5, ..Default::default() };
    s.receiver.detector = DetectorProfile::Snspd;
    s.eve.push(EveCfg::parse_cli("intercept-resend:onu=1").unwrap());
    let pon = s.resolve().unwrap();
    let (sim, recs) = run(&pon, 30_000_000, 10_000_000);
    let m = measure(&pon, &sim, &recs);
    let c = m.counts[1];
    let q = c.key.qber();
    assert!((q - 0.25).abs() < 0.02, "key-basis QBER {q}");
    assert!((c.test.qber() - 0.25).abs() < 0.03, "test-basis QBER {}", c.test.qber());
    let input = BoundInput {
        params: DecoyParams { mu: pon.onus[1].model.source.mu, p: pon.onus[1].model.source.p },
        key: c.key,
        test: c.test,
        eps_sec: 1e-10,
        eps_cor: 1e-15,
        lambda_ec: 1.1 * c.key.n_total() * binary_entropy(q),
    };
    assert_eq!(finite_key(&input).unwrap().ell, 0);
    // The other ONUs are untouched.
    assert!(m.counts[0].key.qber() < 0.03 && m.counts[2].key.qber() < 0.03);
}

/// Two ONUs: a bright one and a dim one right after it, many short frames.
fn spill_pon(p_ap: f64, guard: u64) -> Pon {
    let mut s = Scenario { onus: 2, seed: 3, ..Default::default() };
    s.clock.frame_gates = 400;
    s.receiver.afterpulse = Some(p_ap);
    s.slots.guard_gates = Some(guard);
    s.fiber.length_km = 0.0;
    s.onu.push(crate::scenario::OnuOverride { index: 1, extra_loss_db: Some(12.0), ..Default::default() });
    s.resolve().unwrap()
}

fn matched_qber(c: &DecoyCounts) -> f64 {
    (c.key.m_total() + c.test.m_total()) / (c.key.n_total() + c.test.n_total())
}

#[test]
fn afterpulses_spill_into_the_next_slot_unless_the_guard_covers_them() {
    let gates = 40_000_000;
    let dead = u64::from(DetectorModel::APD.dead_time);
    let mut sampled = Vec::new();
    let mut modelled = Vec::new();
    for (p_ap, guard) in [(0.02, dead), (0.2, dead), (0.2, dead + 50)] {
        let pon = spill_pon(p_ap, guard);
        let (sim, recs) = run(&pon, gates, 10_000_000);
        let m = measure(&pon, &sim, &recs);
        let e = &analytic(&pon, counted_s(&pon, gates))[1];
        let c = &m.counts[1];
        let n = c.key.n_total() + c.test.n_total();
        let q_obs = matched_qber(c);
        let q_exp = (e.key.m_total() + e.test.m_total()) / (e.key.n_total() + e.test.n_total());
        let sd = (q_exp * (1.0 - q_exp) / n).sqrt();
        assert!(
            (q_obs - q_exp).abs() < 5.0 * sd,
            "p_ap {p_ap} guard {guard}: QBER {q_obs} vs model {q_exp} (sd {sd})"
        );
        sampled.push((q_obs, sd));
        modelled.push(q_exp);
        let fx = FrameModel::compute(&pon.map, &tables(&pon), &pon.detector).effects[1];
        if guard > dead {
            assert_eq!(fx.spill_afterpulse, 0.0);
        } else {
            assert!(fx.spill_afterpulse > 0.0);
        }
    }
    // Raising p_ap raises the dim ONU's QBER by the modelled amount …
    let d_obs = sampled[1].0 - sampled[0].0;
    let d_exp = modelled[1] - modelled[0];
    let sd = (sampled[0].1.powi(2) + sampled[1].1.powi(2)).sqrt();
    assert!(d_exp > 8.0 * sd, "the effect must be well above the noise: {d_exp} vs sd {sd}");
    assert!((d_obs - d_exp).abs() < 5.0 * sd, "ΔQBER {d_obs} vs model {d_exp}");
    // … and a guard of dead time + afterpulse window removes the spill.
    assert!(sampled[2].0 < sampled[1].0 - 5.0 * sd);
}

#[test]
fn blinding_shows_on_the_monitor() {
    let mut s = Scenario { onus: 4, seed: 9, ..Default::default() };
    s.eve.push(EveCfg::parse_cli("blinding:onu=2").unwrap());
    let pon = s.resolve().unwrap();
    let (sim, recs) = run(&pon, 20_000_000, 5_000_000);
    let st = sim.detector().status().unwrap();
    let d = &st.detectors[0];
    assert!(d.bias_current_range_ua.1 > 10.0 * d.nominal_bias_current_ua, "{d:?}");
    assert!(d.bias_current_ua > 1.2 * d.nominal_bias_current_ua);
    let m = measure(&pon, &sim, &recs);
    // Zero errors and no double clicks in the blinded slot; the vacuum-class yield
    // collapses (no dark counts) while the others still see it.
    assert_eq!(m.counts[2].key.m_total() + m.counts[2].test.m_total(), 0.0);
    assert_eq!(m.doubles[2], 0.0);
    let vac = |i: usize| m.counts[i].key.n[2] + m.counts[i].test.n[2];
    assert!(vac(2) * 5.0 < vac(0), "vacuum yields {} vs {}", vac(2), vac(0));
    // Without an attack the currents are nominal.
    let honest = small_pon(DetectorProfile::Apd);
    let (sim, _) = run(&honest, 1_000_000, 1_000_000);
    let st = sim.detector().status().unwrap();
    assert_eq!(st.detectors[1].bias_current_range_ua, (2.0, 2.0));
}

#[test]
fn pulse_records_are_pulled_by_index() {
    let pon = small_pon(DetectorProfile::Apd);
    let sim = SimPon::new(&pon);
    let mut det = sim.detector();
    let mut recs = Vec::new();
    let _ = det.poll_detections(5_000_000, &mut recs).unwrap();
    let mut src = sim.source(0);
    let delay = (2.0 * GATES_PER_KM_AT_1GHZ) as u64;
    let slot = pon.map.slots[0][0].clone();
    // A pulse inside the slot that did not click: a record, the same every time.
    let p_quiet = (0..slot.end - slot.start)
        .map(|o| 2 * pon.map.frame_gates + slot.start + o)
        .find(|g| !recs.iter().any(|r| r.gate == *g))
        .unwrap()
        - delay;
    // A pulse outside every slot of ONU 0: not fired.
    let p_off = 2 * pon.map.frame_gates + slot.end + 5 - delay;
    // A pulse in the future: not fired yet.
    let p_future = 10_000_000;
    src.request_pulses(1, &[p_quiet, p_off, p_future, p_quiet]).unwrap();
    let a = src.poll_pulses().unwrap();
    assert!(a.records[0].is_some() && a.records[0] == a.records[3]);
    assert_eq!(a.records[1], None);
    assert_eq!(a.records[2], None);
    assert!(src.poll_pulses().is_none());
    src.release_before(p_quiet + 1);
    src.request_pulses(2, &[p_quiet]).unwrap();
    assert_eq!(src.poll_pulses().unwrap().records, vec![None]);
}

#[test]
fn reconfigured_slots_move_the_detections() {
    let pon = small_pon(DetectorProfile::Snspd);
    let sim = SimPon::new(&pon);
    let f = pon.map.frame_gates;
    // From frame 4 on, ONU 0 owns ONU 1's slot too, and ONU 1 nothing.
    let mut s0 = sim.source(0);
    let mut s1 = sim.source(1);
    let mut both = pon.map.slots[0].clone();
    both.extend(pon.map.slots[1].iter().cloned());
    let d0 = (2.0 * GATES_PER_KM_AT_1GHZ) as u64;
    s0.configure(&SourceSchedule { from_frame: 4, frame_gates: f, slots: both, equalisation_delay: d0 })
        .unwrap();
    s1.configure(&SourceSchedule { from_frame: 4, frame_gates: f, slots: vec![], equalisation_delay: d0 })
        .unwrap();
    let bad = SourceSchedule { from_frame: 4, frame_gates: f + 1, slots: vec![], equalisation_delay: 0 };
    assert!(
        matches!(s1.configure(&bad), Err(SourceError::InvalidConfig { field, .. }) if field == "frame_gates")
    );
    let mut recs = Vec::new();
    let _ = sim.detector().poll_detections(400 * f, &mut recs).unwrap();
    let slot1 = pon.map.slots[1][0].clone();
    let in1: Vec<_> = recs.iter().filter(|r| slot1.contains(&(r.gate % f)) && r.gate >= 4 * f).collect();
    assert!(in1.len() > 100);
    let pulses: Vec<u64> = in1.iter().map(|r| r.gate - d0).collect();
    s0.request_pulses(1, &pulses).unwrap();
    assert!(s0.poll_pulses().unwrap().records.iter().all(Option::is_some));
    s1.request_pulses(1, &pulses).unwrap();
    assert!(s1.poll_pulses().unwrap().records.iter().all(Option::is_none));
}

#[test]
fn cost_follows_detections_not_gates() {
    // A silent PON (no ONU fires): 10^13 gates, dark counts only — about 2·10^5 events.
    let mut s = Scenario { onus: 2, seed: 1, ..Default::default() };
    s.receiver.detector = DetectorProfile::Snspd;
    let pon = s.resolve().unwrap();
    let sim = SimPon::new(&pon);
    for i in 0..2 {
        sim.source(i)
            .configure(&SourceSchedule {
                from_frame: 0,
                frame_gates: 125_000,
                slots: vec![],
                equalisation_delay: 0,
            })
            .unwrap();
    }
    let t = std::time::Instant::now();
    let mut recs = Vec::new();
    let _ = sim.detector().poll_detections(10_000_000_000_000, &mut recs).unwrap();
    let expect = 1e13 * pon.detector.y0();
    close("dark counts", recs.len() as f64, expect, 5.0);
    assert!(t.elapsed().as_secs_f64() < 5.0);
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn bench_sampler() {
    for _ in 0..5 {
        let b = bench::events_per_second(128, 20.0);
        println!("{b:?}");
    }
    println!("{:?}", bench::run(&bench::scenario(128, DetectorProfile::Apd), 20.0));
}

/// Chunk invariance on a large PON (many segments, several frames per poll, the random
/// words' refills falling mid-run) and on the pulse records as well as the detections.
#[test]
fn large_pon_same_records_whatever_the_chunks() {
    let pon = bench::scenario(128, DetectorProfile::Snspd);
    let (sa, a) = run(&pon, 40_000_000, 1_000_000);
    let (sb, b) = run(&pon, 40_000_000, 777_777);
    let (sc, c) = run(&pon, 40_000_000, 40_000_000);
    assert!(a.len() > 5_000);
    assert_eq!(a, b);
    assert_eq!(a, c);
    let ra = sa.with(|s| s.records.clone());
    assert_eq!(ra, sb.with(|s| s.records.clone()));
    assert_eq!(ra, sc.with(|s| s.records.clone()));
    // Every detection but the dark counts in guard gates has its pulse record.
    let n = ra.iter().map(Vec::len).sum::<usize>();
    assert!(n <= a.len() && n as f64 > 0.99 * a.len() as f64, "{n} records, {} detections", a.len());
}

/// The receiver's counters (click rates, double clicks) agree with the records, whichever
/// path made them (the fast loop, a primary click, an afterpulse, a dark count).
#[test]
fn status_counts_every_detection() {
    for det in [DetectorProfile::Apd, DetectorProfile::Snspd] {
        let pon = small_pon(det);
        let gates = 5_000_000;
        let (sim, recs) = run(&pon, gates, 1_234_567);
        let st = sim.detector().status().unwrap();
        let secs = gates as f64 / pon.gate_rate_hz;
        let double = |r: &DetectionRecord| r.flags.has(DetectionFlags::DOUBLE_CLICK);
        let d0 = recs.iter().filter(|r| double(r) || !r.bit).count() as f64;
        let d1 = recs.iter().filter(|r| double(r) || r.bit).count() as f64;
        let dd = recs.iter().filter(|r| double(r)).count() as f64;
        assert!(dd > 0.0, "{det:?}: some double clicks");
        for (got, want) in [
            (st.detectors[0].click_rate_hz * secs, d0),
            (st.detectors[1].click_rate_hz * secs, d1),
            (st.double_click_rate_hz * secs, dd),
        ] {
            assert!((got - want).abs() < 1e-6 * want.max(1.0), "{det:?}: {got} vs {want}");
        }
    }
}

/// The click tables against the outcome they encode: the sender's basis, bit and class
/// and the receiver's basis are the category's; the receiver's bit is the encoded one,
/// flipped for a wrong outcome, and for a double click a fair coin independent of the
/// encoded bit (over the coin r, each value once for each x).
#[test]
fn click_tables_encode_the_outcome() {
    for what in 0..64usize {
        let (cat, outcome) = (what & 15, what >> 4);
        if outcome == 3 {
            continue; // never drawn
        }
        for x in 0..2usize {
            let mut bits = [0; 2];
            for r in 0..2usize {
                let i = what | x << 6 | r << 7;
                let (p, d) = (CLICK_PULSE[i], CLICK_DET[i]);
                let w = CLICK_DET[i | 256];
                assert_eq!(p.basis, Basis::from_bit(cat & 2 != 0));
                assert_eq!(p.bit, x == 1);
                assert_eq!(p.intensity, Intensity::ALL[(cat >> 2).min(2)]);
                assert_eq!(d.basis, Basis::from_bit(cat & 1 != 0));
                assert_eq!(d.flags.has(DetectionFlags::DOUBLE_CLICK), outcome == 2);
                assert!(!d.flags.has(DetectionFlags::AFTERPULSE_WINDOW));
                assert!(w.flags.has(DetectionFlags::AFTERPULSE_WINDOW));
                assert_eq!((w.basis, w.bit), (d.basis, d.bit));
                match outcome {
                    0 => assert_eq!(d.bit, x == 1),
                    1 => assert_eq!(d.bit, x == 0),
                    _ => {}
                }
                bits[usize::from(d.bit)] += 1;
            }
            if outcome == 2 {
                assert_eq!(bits, [1, 1], "a double click's bit is a fair coin given x");
            }
        }
    }
}

/// This thread's CPU time (ns), from the scheduler's accounting (Linux only).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The sampler stage of `qpon-sim bench` by this thread's CPU time as well as by wall
/// time (on a shared machine the wall time counts other processes' turns): five runs of
/// `QPON_BENCH_SECS` simulated seconds (default 50) of the 128-ONU PON, with the
/// `QPON_BENCH_DETECTOR` profile (`apd`, else SNSPD), and their median.
#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn bench_sampler_cpu() {
    let secs: f64 = std::env::var("QPON_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(50.0);
    let det = match std::env::var("QPON_BENCH_DETECTOR").as_deref() {
        Ok("apd") => DetectorProfile::Apd,
        _ => DetectorProfile::Snspd,
    };
    let pon = bench::scenario(128, det);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let c0 = thread_cpu_ns();
        let b = bench::run(&pon, secs);
        let c1 = thread_cpu_ns();
        if let (Some(c0), Some(c1)) = (c0, c1) {
            let cpu = (c1 - c0) as f64 * 1e-9;
            let r = b.detections as f64 / cpu;
            println!(
                "detections {} wall {:.1} M/s cpu {:.1} M/s",
                b.detections,
                b.events_per_s / 1e6,
                r / 1e6
            );
            rates.push(r);
        }
    }
    rates.sort_by(f64::total_cmp);
    if !rates.is_empty() {
        println!("median cpu {:.1} M/s", rates[rates.len() / 2] / 1e6);
    }
}
