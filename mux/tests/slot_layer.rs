//! The slot layer end to end, without I/O: ranging and activation, scheduling, the map on
//! the wire, and both ends agreeing on who owns every gate across a map switch.

use qpon_mux::ranging::round_trip_gates;
use qpon_mux::{
    ActivationConfig, Event, Inserted, OnuActivation, OnuDemand, OnuId, RangingConfig, SchedulerConfig,
    SlotMap, SlotMapSchedule, schedule,
};

const FRAME: u32 = 125_000;

/// An ONU's view: its pulse clock and its copy of the schedule, fed only with bytes.
struct OnuEnd {
    id: OnuId,
    clock: qpon_mux::PulseClock,
    schedule: SlotMapSchedule,
}

#[test]
fn olt_and_onus_agree_on_every_gate_across_a_map_switch() {
    let cfg = SchedulerConfig::default();
    let ranging = RangingConfig::default();
    let distances_km = [0.5, 7.0, 13.0, 19.5];
    let mut act: Vec<OnuActivation> = (0..distances_km.len())
        .map(|k| OnuActivation::discovered(OnuId(k as u16 + 1), ActivationConfig::default()))
        .collect();
    // Ranging: the OLT sends a request at gate 1 000 000 and times the answers.
    for (a, &km) in act.iter_mut().zip(&distances_km) {
        let rtd = ranging.measure(1_000_000, 1_000_000 + round_trip_gates(km, 1e9)).unwrap();
        a.handle(Event::Ranged(ranging.equalise(rtd).unwrap())).unwrap();
        a.handle(Event::Authenticated).unwrap();
    }
    let initial = SlotMap::idle(FRAME, cfg.guard, 0, 0);
    let mut olt = SlotMapSchedule::new(initial.clone());
    let mut onus: Vec<OnuEnd> = act
        .iter()
        .map(|a| OnuEnd {
            id: a.onu(),
            clock: a.state().equalisation().unwrap().pulse_clock(),
            schedule: SlotMapSchedule::new(initial.clone()),
        })
        .collect();
    let quality = |km: f64| 4e-4 * 10f64.powf(-0.033 * km);
    let demands = |act: &[OnuActivation]| -> Vec<OnuDemand> {
        act.iter()
            .zip(&distances_km)
            .map(|(a, &km)| OnuDemand {
                onu: a.onu(),
                active: a.schedulable(),
                deficit_bits: 1e9,
                quality: quality(km),
            })
            .collect()
    };

    // Period 1: everyone gets slots from frame 10.
    let out = schedule(&cfg, olt.latest(), &demands(&act), 10).unwrap();
    assert!(out.changed);
    deliver(&mut olt, &mut onus, &out.map, 2);
    for a in &mut act {
        a.handle(Event::SlotsGranted { map_version: out.map.version() }).unwrap();
    }
    // Period 2: ONU 2 goes silent and is lost after three periods; the new map applies
    // from frame 20.
    for _ in 0..3 {
        for a in &mut act {
            let heard = a.onu() != OnuId(2);
            a.handle(Event::Period { heard }).unwrap();
        }
    }
    assert!(!act[1].schedulable());
    let out2 = schedule(&cfg, olt.latest(), &demands(&act), 20).unwrap();
    assert!(out2.changed);
    deliver(&mut olt, &mut onus, &out2.map, 12);
    assert!(!out2.map.has_owner(OnuId(2)));
    for o in [OnuId(1), OnuId(3), OnuId(4)] {
        assert!(out2.map.owned_gates(o) >= out.map.owned_gates(o));
    }

    // Every gate from frame 8 to 22, in steps that hit every segment: the OLT attributes it
    // to ONU k exactly when ONU k fires the pulse that lands there, and to nobody else.
    let mut checked = 0u64;
    for gate in (8 * FRAME as u64..22 * FRAME as u64).step_by(37) {
        let owner = olt.owner_of(gate);
        let firing: Vec<OnuId> = onus
            .iter()
            .filter(|o| o.clock.pulse_of_gate(gate).is_some_and(|p| o.clock.fires(&o.schedule, o.id, p)))
            .map(|o| o.id)
            .collect();
        assert_eq!(firing, owner.into_iter().collect::<Vec<_>>(), "gate {gate}");
        checked += owner.is_some() as u64;
    }
    assert!(checked > 10_000);
    // Before frame 10 nobody fires; ONU 2 fires in frames 10..20 only.
    assert_eq!(olt.owner_of(9 * FRAME as u64 + 5), None);
    let first_of = |map: &SlotMap, o: OnuId| map.slots_of(o).next().unwrap().start as u64;
    assert_eq!(olt.owner_of(15 * FRAME as u64 + first_of(&out.map, OnuId(2))), Some(OnuId(2)));
}

/// The OLT keeps the map and sends its bytes; every ONU parses and installs them.
fn deliver(olt: &mut SlotMapSchedule, onus: &mut [OnuEnd], map: &SlotMap, current_frame: u64) {
    assert_eq!(olt.insert(map.clone(), current_frame), Ok(Inserted::New));
    let bytes = map.to_bytes();
    for o in onus {
        let parsed = SlotMap::from_bytes(&bytes).unwrap();
        assert_eq!(o.schedule.insert(parsed.clone(), current_frame), Ok(Inserted::New));
        // A retransmission is harmless.
        assert_eq!(o.schedule.insert(parsed, current_frame), Ok(Inserted::Duplicate));
    }
}
