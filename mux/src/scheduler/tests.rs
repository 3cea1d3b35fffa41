use super::*;
use crate::history::{Inserted, SlotMapSchedule};
use crate::slot_map::SegmentKind;
use proptest::prelude::*;

/// Loss budget of an ONU `km` from the OLT on a 1:32 PON (DESIGN.md §5: 0.33 dB/km fibre,
/// 10·log10(32) + 1 dB splitter, 2 dB receiver).
fn loss_db(km: f64) -> f64 {
    0.33 * km + 10.0 * 32f64.log10() + 1.0 + 2.0
}

/// Secret bits per gate of a 2 km ONU: a realistic order of magnitude for an SNSPD receiver
/// on 1:32 (the tests only depend on ratios).
const Q_2KM: f64 = 4e-4;

fn quality_at(km: f64) -> f64 {
    quality_prior(Q_2KM, loss_db(2.0), loss_db(km))
}

fn demand(onu: u16, km: f64) -> OnuDemand {
    OnuDemand { onu: OnuId(onu), active: true, deficit_bits: 1e12, quality: quality_at(km) }
}

fn idle_map(cfg: &SchedulerConfig) -> SlotMap {
    SlotMap::idle(cfg.frame_len, cfg.guard, 0, 0)
}

fn run(cfg: &SchedulerConfig, prev: &SlotMap, demands: &[OnuDemand]) -> ScheduleOutcome {
    schedule(cfg, prev, demands, prev.active_from_frame() + 8_000).unwrap()
}

/// Key bits per frame of `d` under `map`.
fn rate(map: &SlotMap, d: &OnuDemand) -> f64 {
    d.quality * map.owned_gates(d.onu) as f64
}

fn rel_spread(rates: &[f64]) -> f64 {
    let max = rates.iter().cloned().fold(f64::MIN, f64::max);
    let min = rates.iter().cloned().fold(f64::MAX, f64::min);
    (max - min) / max
}

/// Every structural promise of a scheduled map.
fn assert_well_formed(cfg: &SchedulerConfig, map: &SlotMap, demands: &[OnuDemand]) {
    let active: Vec<&OnuDemand> = demands.iter().filter(|d| d.active).collect();
    assert_eq!(map.frame_len(), cfg.frame_len);
    assert_eq!(map.slots().len(), active.len(), "one slot per active ONU");
    for d in demands {
        let n = map.slots_of(d.onu).count();
        if d.active {
            assert_eq!(n, 1, "{} has {n} slots", d.onu);
            assert!(map.owned_gates(d.onu) >= cfg.min_slot as u64, "{} below min_slot", d.onu);
        } else {
            assert_eq!(n, 0, "inactive {} owns gates", d.onu);
        }
    }
    // Guards between consecutive slots, and across the frame boundary.
    let s = map.slots();
    for w in s.windows(2) {
        assert!(w[1].start as u64 - w[0].end() >= cfg.guard as u64);
    }
    if let (Some(f), Some(l)) = (s.first(), s.last()) {
        assert!(cfg.frame_len as u64 - l.end() + f.start as u64 >= cfg.guard as u64);
    }
    // The segments tile the frame; owned + guard + idle == frame; at most one owner per gate.
    let mut pos = 0;
    for seg in map.segments() {
        assert_eq!(seg.start, pos);
        assert!(seg.len > 0);
        pos = seg.end();
    }
    assert_eq!(pos, cfg.frame_len as u64);
    let c = map.gate_counts();
    assert_eq!(c.owned + c.guard + c.idle, cfg.frame_len as u64);
    assert_eq!(c.owned, s.iter().map(|s| s.len as u64).sum::<u64>());
    assert_eq!(c.guard, active.len() as u64 * cfg.guard as u64, "every slot is followed by a full guard");
    if !active.is_empty() {
        assert!(c.idle <= active.len() as u64, "only the rounding remainder is idle, got {}", c.idle);
    }
}

#[test]
fn max_min_equalises_key_rates_of_near_and_far_onus() {
    let cfg = SchedulerConfig::default();
    let (near, far) = (demand(1, 2.0), demand(2, 20.0));
    // 18 km of fibre: 5.9 dB, a factor ~3.9 in quality.
    assert!(near.quality / far.quality > 3.0);
    let out = run(&cfg, &idle_map(&cfg), &[near, far]);
    assert!(out.changed);
    assert_well_formed(&cfg, &out.map, &[near, far]);
    let (rn, rf) = (rate(&out.map, &near), rate(&out.map, &far));
    assert!(rel_spread(&[rn, rf]) < 0.10, "near {rn} vs far {rf} bits/frame");
    assert!(out.map.owned_gates(far.onu) > out.map.owned_gates(near.onu));
}

#[test]
fn equal_gates_does_not_equalise_key_rates() {
    let cfg = SchedulerConfig { policy: Policy::EqualGates, ..SchedulerConfig::default() };
    let (near, far) = (demand(1, 2.0), demand(2, 20.0));
    let out = run(&cfg, &idle_map(&cfg), &[near, far]);
    assert_well_formed(&cfg, &out.map, &[near, far]);
    assert_eq!(out.map.owned_gates(near.onu), out.map.owned_gates(far.onu));
    let (rn, rf) = (rate(&out.map, &near), rate(&out.map, &far));
    assert!(rel_spread(&[rn, rf]) > 0.10, "near {rn} vs far {rf} bits/frame");
}

#[test]
fn max_min_over_a_32_onu_pon_from_0_to_20_km() {
    let cfg = SchedulerConfig::default();
    let demands: Vec<OnuDemand> = (0..32).map(|k| demand(k, 20.0 * k as f64 / 31.0)).collect();
    let out = run(&cfg, &idle_map(&cfg), &demands);
    assert_well_formed(&cfg, &out.map, &demands);
    let rates: Vec<f64> = demands.iter().map(|d| rate(&out.map, d)).collect();
    assert!(rel_spread(&rates) < 0.10, "rates {rates:?}");
}

#[test]
fn a_full_pool_gets_only_the_minimum_while_others_need_gates() {
    let cfg = SchedulerConfig::default();
    let mut full = demand(1, 2.0);
    full.deficit_bits = -5e6;
    let hungry = demand(2, 20.0);
    let out = run(&cfg, &idle_map(&cfg), &[full, hungry]);
    assert_well_formed(&cfg, &out.map, &[full, hungry]);
    assert_eq!(out.map.owned_gates(full.onu), cfg.min_slot as u64);
    assert!(rate(&out.map, &hungry) > rate(&out.map, &full));
}

#[test]
fn a_small_deficit_is_met_before_the_rest_is_shared() {
    let cfg = SchedulerConfig::default();
    let budget = (cfg.frame_len - 2 * cfg.guard) as f64;
    // ONU 1 needs 10 % of the budget to fill its pool within the period; ONU 2 is hungry.
    let mut small = demand(1, 2.0);
    small.deficit_bits = 0.1 * budget * small.quality * cfg.frames_per_period as f64;
    let hungry = demand(2, 2.0);
    let out = run(&cfg, &idle_map(&cfg), &[small, hungry]);
    assert_well_formed(&cfg, &out.map, &[small, hungry]);
    let g = out.map.owned_gates(small.onu) as f64;
    assert!((g - 0.1 * budget).abs() <= 1.0, "small got {g} gates, needs {}", 0.1 * budget);
    // Its key rate over a period covers its deficit.
    assert!(g * small.quality * cfg.frames_per_period as f64 >= small.deficit_bits * (1.0 - 1e-9));
    // Both small: needs met, and the spare gates are shared rather than left idle.
    let mut small2 = hungry;
    small2.deficit_bits = small.deficit_bits;
    let out = run(&cfg, &idle_map(&cfg), &[small, small2]);
    assert_well_formed(&cfg, &out.map, &[small, small2]);
    assert!(out.map.owned_gates(small.onu) as f64 > 0.4 * budget);
}

#[test]
fn an_onu_making_no_key_cannot_take_the_whole_frame() {
    let cfg = SchedulerConfig::default();
    let good: Vec<OnuDemand> = (0..8).map(|k| demand(k, 5.0)).collect();
    let mut attacked = demand(8, 5.0);
    attacked.quality = 0.0;
    let mut all = good.clone();
    all.push(attacked);
    let out = run(&cfg, &idle_map(&cfg), &all);
    assert_well_formed(&cfg, &out.map, &all);
    let g_bad = out.map.owned_gates(attacked.onu) as f64;
    let g_good = out.map.owned_gates(OnuId(0)) as f64;
    assert!(g_bad <= (g_good + 1.0) / cfg.min_relative_quality, "attacked {g_bad} vs good {g_good}");
    assert!(g_bad > g_good, "max-min still favours the worse ONU");
}

#[test]
fn a_leaving_onu_does_not_disturb_the_others() {
    let cfg = SchedulerConfig::default();
    let demands: Vec<OnuDemand> = (0..8).map(|k| demand(k, 2.5 * k as f64)).collect();
    let first = run(&cfg, &idle_map(&cfg), &demands).map;
    for leaver in [0u16, 3, 7] {
        let mut after = demands.clone();
        after[leaver as usize].active = false;
        let out = run(&cfg, &first, &after);
        assert!(out.changed);
        assert_well_formed(&cfg, &out.map, &after);
        assert!(!out.map.has_owner(OnuId(leaver)));
        let stayed: Vec<OnuId> = first.owners().into_iter().filter(|&o| o != OnuId(leaver)).collect();
        assert_eq!(out.map.owners(), stayed, "the others keep their order");
        for &o in &stayed {
            assert!(out.map.owned_gates(o) >= first.owned_gates(o), "{o} shrank after {leaver} left");
        }
        let rates: Vec<f64> = after.iter().filter(|d| d.active).map(|d| rate(&out.map, d)).collect();
        assert!(rel_spread(&rates) < 0.10);
        // Omitting the ONU from the demands altogether means the same.
        let omitted: Vec<OnuDemand> = demands.iter().filter(|d| d.onu != OnuId(leaver)).copied().collect();
        assert_eq!(run(&cfg, &first, &omitted).map, out.map);
    }
}

#[test]
fn a_joining_onu_gets_a_slot_at_the_end() {
    let cfg = SchedulerConfig::default();
    let mut demands: Vec<OnuDemand> = [3u16, 9, 1].iter().map(|&k| demand(k, 4.0 * k as f64 / 3.0)).collect();
    let first = run(&cfg, &idle_map(&cfg), &demands).map;
    assert_eq!(first.owners(), vec![OnuId(1), OnuId(3), OnuId(9)], "newcomers ordered by id");
    demands.push(demand(2, 12.0));
    let out = run(&cfg, &first, &demands);
    assert!(out.changed);
    assert_well_formed(&cfg, &out.map, &demands);
    assert_eq!(out.map.owners(), vec![OnuId(1), OnuId(3), OnuId(9), OnuId(2)]);
    assert!(out.map.owned_gates(OnuId(2)) >= cfg.min_slot as u64);
    let rates: Vec<f64> = demands.iter().map(|d| rate(&out.map, d)).collect();
    assert!(rel_spread(&rates) < 0.10);
}

#[test]
fn consecutive_maps_chain_into_a_schedule() {
    let cfg = SchedulerConfig::default();
    let mut demands: Vec<OnuDemand> = (0..4).map(|k| demand(k, 5.0 * k as f64)).collect();
    let mut schedule_ = SlotMapSchedule::new(idle_map(&cfg));
    let mut prev = idle_map(&cfg);
    for step in 0..6u16 {
        match step {
            2 => demands[1].active = false,
            3 => demands.push(demand(10, 1.0)),
            4 => demands[1].active = true,
            5 => demands[0].quality *= 0.3,
            _ => {}
        }
        let out = run(&cfg, &prev, &demands);
        if out.changed {
            assert_eq!(out.map.version(), prev.version() + 1);
            assert_eq!(out.map.active_from_frame(), prev.active_from_frame() + 8_000);
            assert_eq!(schedule_.insert(out.map.clone(), prev.active_from_frame() + 1), Ok(Inserted::New));
        } else {
            assert_eq!(out.map, prev);
        }
        prev = out.map;
    }
    assert!(prev.version() >= 4);
}

#[test]
fn hysteresis_keeps_the_map_under_small_fluctuations() {
    let cfg = SchedulerConfig::default();
    let demands: Vec<OnuDemand> = (0..6).map(|k| demand(k, 3.0 * k as f64)).collect();
    let first = run(&cfg, &idle_map(&cfg), &demands).map;
    // Same inputs: unchanged.
    let again = run(&cfg, &first, &demands);
    assert!(!again.changed);
    assert_eq!(again.map, first);
    // ±1 % quality noise: unchanged.
    let noisy: Vec<OnuDemand> = demands
        .iter()
        .enumerate()
        .map(|(i, d)| OnuDemand { quality: d.quality * if i % 2 == 0 { 1.01 } else { 0.99 }, ..*d })
        .collect();
    let out = run(&cfg, &first, &noisy);
    assert!(!out.changed);
    assert_eq!(out.map, first);
    // One ONU's quality halves: a new map.
    let mut worse = demands.clone();
    worse[2].quality *= 0.5;
    let out = run(&cfg, &first, &worse);
    assert!(out.changed);
    assert_eq!(out.map.version(), first.version() + 1);
    // Without hysteresis, even the noise changes the map.
    let strict = SchedulerConfig { hysteresis: 0.0, ..cfg };
    assert!(run(&strict, &first, &noisy).changed);
}

#[test]
fn nothing_active_means_an_idle_frame() {
    let cfg = SchedulerConfig::default();
    let out = run(&cfg, &idle_map(&cfg), &[]);
    assert!(!out.changed);
    let mut d = demand(1, 2.0);
    let first = run(&cfg, &idle_map(&cfg), &[d]).map;
    d.active = false;
    let out = run(&cfg, &first, &[d]);
    assert!(out.changed);
    assert!(out.map.slots().is_empty());
    assert_eq!(out.map.gate_counts().idle, cfg.frame_len as u64);
}

#[test]
fn bad_inputs_are_refused() {
    let cfg = SchedulerConfig::default();
    let prev = idle_map(&cfg);
    let d = demand(1, 2.0);
    let err = |cfg: &SchedulerConfig, prev: &SlotMap, ds: &[OnuDemand], from: u64| {
        schedule(cfg, prev, ds, from).unwrap_err()
    };
    assert_eq!(err(&cfg, &prev, &[d, d], 1), SchedulerError::DuplicateOnu(OnuId(1)));
    let nan = OnuDemand { deficit_bits: f64::NAN, ..d };
    assert_eq!(
        err(&cfg, &prev, &[nan], 1),
        SchedulerError::InvalidDemand { onu: OnuId(1), field: "deficit_bits" }
    );
    let neg = OnuDemand { quality: -1.0, ..d };
    assert_eq!(
        err(&cfg, &prev, &[neg], 1),
        SchedulerError::InvalidDemand { onu: OnuId(1), field: "quality" }
    );
    let many: Vec<OnuDemand> = (0..=cfg.max_onus() as u16).map(|k| demand(k, 1.0)).collect();
    assert!(matches!(err(&cfg, &prev, &many, 1), SchedulerError::TooManyOnus { .. }));
    // Exactly max_onus fit.
    let max: Vec<OnuDemand> = many[1..].to_vec();
    assert_well_formed(&cfg, &run(&cfg, &prev, &max).map, &max);
    let other = SlotMap::idle(1000, cfg.guard, 0, 0);
    assert!(matches!(err(&cfg, &other, &[d], 1), SchedulerError::FrameLenMismatch { .. }));
    let later = SlotMap::idle(cfg.frame_len, cfg.guard, 5, 100);
    assert!(matches!(err(&cfg, &later, &[d], 100), SchedulerError::ApplyFrameTooEarly { .. }));
    let last = SlotMap::idle(cfg.frame_len, cfg.guard, u32::MAX, 0);
    assert_eq!(err(&cfg, &last, &[d], 1), SchedulerError::VersionExhausted);
    for bad in [
        SchedulerConfig { min_slot: 0, ..cfg },
        SchedulerConfig { frames_per_period: 0, ..cfg },
        SchedulerConfig { min_relative_quality: 0.0, ..cfg },
        SchedulerConfig { hysteresis: 1.0, ..cfg },
        SchedulerConfig { guard: cfg.frame_len, ..cfg },
    ] {
        assert!(matches!(err(&bad, &prev, &[d], 1), SchedulerError::InvalidConfig { .. }));
    }
}

#[test]
fn quality_estimate_tracks_the_measured_rate() {
    let mut q = QualityEstimate::new(1e-3, 0.25);
    for _ in 0..60 {
        q.observe(2_000.0, 10_000_000); // 2e-4 bits per gate
    }
    assert!((q.value() - 2e-4).abs() < 1e-9);
    let before = q.value();
    q.observe(5.0, 0);
    q.observe(f64::NAN, 100);
    assert_eq!(q.value(), before, "no gates, no information");
    // 3 dB more loss: half the transmittance, half the prior.
    assert!((quality_prior(1e-4, 20.0, 23.0) - 0.5e-4).abs() < 1e-6);
    assert!((quality_prior(1e-4, 20.0, 20.0) - 1e-4).abs() < 1e-18);
}

#[test]
fn periods_start_at_multiples_of_the_period() {
    let cfg = SchedulerConfig::default();
    assert_eq!(cfg.next_period_frame(0), 8_000);
    assert_eq!(cfg.next_period_frame(7_999), 8_000);
    assert_eq!(cfg.next_period_frame(8_000), 16_000);
    assert_eq!(cfg.next_period_frame(u64::MAX), u64::MAX);
}

#[test]
fn guard_from_the_detector_profiles() {
    // DESIGN.md §5: apd dead time 10 + afterpulse window 50; snspd dead time 40, no afterpulses.
    assert_eq!(SchedulerConfig::guard_for(10, 50), 60);
    assert_eq!(SchedulerConfig::guard_for(40, 0), 40);
    assert_eq!(SchedulerConfig::default().guard, 60);
}

fn arb_case() -> impl Strategy<Value = (SchedulerConfig, Vec<OnuDemand>)> {
    let cfg = (280u32..20_000, 0u32..80, 1u32..200, prop::bool::ANY, 1u64..10_000);
    let demands = prop::collection::vec((any::<u16>(), prop::bool::ANY, -1e6f64..1e9, 0f64..1e-3), 0..40);
    (cfg, demands).prop_map(|((frame_len, guard, min_slot, equal, fpp), ds)| {
        let cfg = SchedulerConfig {
            frame_len,
            guard,
            min_slot,
            frames_per_period: fpp,
            policy: if equal { Policy::EqualGates } else { Policy::MaxMinFair },
            ..SchedulerConfig::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut demands: Vec<OnuDemand> = ds
            .into_iter()
            .filter(|d| seen.insert(d.0))
            .map(|(onu, active, deficit_bits, quality)| OnuDemand {
                onu: OnuId(onu),
                active,
                deficit_bits,
                quality,
            })
            .collect();
        // Keep within what the frame can hold.
        let max = cfg.max_onus();
        let mut active = 0;
        for d in &mut demands {
            if d.active {
                active += 1;
                d.active = active <= max;
            }
        }
        (cfg, demands)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn scheduled_maps_are_always_well_formed((cfg, demands) in arb_case()) {
        let prev = idle_map(&cfg);
        let out = schedule(&cfg, &prev, &demands, 1).unwrap();
        assert_well_formed(&cfg, &out.map, &demands);
        // Deterministic, and independent of the order of the demands.
        let mut rev = demands.clone();
        rev.reverse();
        prop_assert_eq!(&schedule(&cfg, &prev, &rev, 1).unwrap(), &out);
        prop_assert_eq!(&schedule(&cfg, &prev, &demands, 1).unwrap(), &out);
        // The wire form carries it losslessly.
        prop_assert_eq!(&SlotMap::from_bytes(&out.map.to_bytes()).unwrap(), &out.map);
        // Every owned gate is attributed to its slot's owner and nobody else.
        for seg in out.map.segments() {
            let owner = match seg.kind { SegmentKind::Owned(o) => Some(o), _ => None };
            prop_assert_eq!(out.map.owner_at_offset(seg.start), owner);
            prop_assert_eq!(out.map.owner_at_offset(seg.end() - 1), owner);
        }
    }

    #[test]
    fn leaving_never_shrinks_the_others(
        qualities in prop::collection::vec(1.0e-4f64..9.9e-4, 2..24),
        deficits in prop::collection::vec(0f64..5e7, 24),
        leaver in any::<prop::sample::Index>(),
        hungry in prop::bool::ANY,
    ) {
        // Qualities within a factor 10 of each other: nobody sits at the quality floor.
        let cfg = SchedulerConfig::default();
        let demands: Vec<OnuDemand> = qualities.iter().zip(&deficits).enumerate().map(|(k, (&q, &def))| OnuDemand {
            onu: OnuId(k as u16), active: true, deficit_bits: if hungry { 1e12 } else { def }, quality: q,
        }).collect();
        let first = run(&cfg, &idle_map(&cfg), &demands).map;
        let mut after = demands.clone();
        let gone = leaver.index(after.len());
        after[gone].active = false;
        let out = run(&cfg, &first, &after);
        for d in after.iter().filter(|d| d.active) {
            prop_assert!(out.map.owned_gates(d.onu) >= first.owned_gates(d.onu));
        }
        let stayed: Vec<OnuId> = first.owners().into_iter().filter(|&o| o != OnuId(gone as u16)).collect();
        prop_assert_eq!(out.map.owners(), stayed);
    }
}
