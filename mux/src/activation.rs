//! ONU activation: from first sight to owning slots, and back out.
//!
//! ```text
//!  Discovered ──Ranged(eq)──▶ Ranged ──Authenticated──▶ Authenticated ──SlotsGranted──▶ Active
//!      ▲                        │                            │                            │
//!      │                        └──── AuthFailed / Left / missing N periods ──────────────┤
//!      │                                                                                  ▼
//!      └──────────────────────────── Rediscovered ◀──────────────────────────────────── Lost
//! ```
//!
//! - **Discovered**: the OLT has seen the ONU (e.g. its serial number in a discovery
//!   window) and knows nothing else.
//! - **Ranged**: its round trip was measured and an [`Equalisation`] assigned.
//! - **Authenticated**: the session layer verified its pre-shared secret (here just an
//!   input event). From now on the scheduler may give it slots
//!   ([`OnuActivation::schedulable`]).
//! - **Active**: a slot map giving it slots has been sent ([`Event::SlotsGranted`]).
//! - **Lost**: it left, failed authentication, or was not heard for
//!   [`ActivationConfig::lost_after_periods`] consecutive scheduling periods. It owns no
//!   slots (the scheduler drops it, which does not disturb the others; see
//!   [`crate::scheduler`]). Coming back means ranging and authenticating again: its
//!   distance, and its keys, may have changed.
//!
//! Transitions are pure: [`OnuActivation::handle`] takes one [`Event`] and either moves to
//! the next state or refuses the event with an [`ActivationError`] that names the state and
//! the event, leaving the state unchanged. [`Event::Period`] (once per scheduling period,
//! saying whether the ONU was heard) is accepted in every state.

use serde::{Deserialize, Serialize};

use crate::ranging::Equalisation;
use crate::slot_map::OnuId;

/// Activation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivationConfig {
    /// Consecutive scheduling periods without a sign of life after which an ONU is lost
    /// (≥ 1).
    pub lost_after_periods: u32,
}

impl Default for ActivationConfig {
    /// Lost after 3 silent periods (3 s at the default period).
    fn default() -> Self {
        Self { lost_after_periods: 3 }
    }
}

/// Why an ONU was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LossReason {
    /// Not heard for `lost_after_periods` periods.
    Missing,
    /// It deregistered, or the operator removed it.
    Left,
    /// Its pre-shared secret did not verify.
    AuthFailed,
}

/// The state of one ONU, with the data valid in that state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnuState {
    /// Seen, not yet ranged.
    Discovered,
    /// Ranged: equalisation delay assigned.
    Ranged {
        /// The ranging result.
        equalisation: Equalisation,
    },
    /// Pre-shared secret verified; eligible for slots.
    Authenticated {
        /// The ranging result.
        equalisation: Equalisation,
    },
    /// Owns slots from map `map_version` on.
    Active {
        /// The ranging result.
        equalisation: Equalisation,
        /// Version of the first map that gave it slots.
        map_version: u32,
    },
    /// Owns no slots; must be rediscovered.
    Lost {
        /// Why.
        reason: LossReason,
    },
}

/// The name of a state, for errors, logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// [`OnuState::Discovered`].
    Discovered,
    /// [`OnuState::Ranged`].
    Ranged,
    /// [`OnuState::Authenticated`].
    Authenticated,
    /// [`OnuState::Active`].
    Active,
    /// [`OnuState::Lost`].
    Lost,
}

impl OnuState {
    /// The state's name.
    pub const fn phase(&self) -> Phase {
        match self {
            OnuState::Discovered => Phase::Discovered,
            OnuState::Ranged { .. } => Phase::Ranged,
            OnuState::Authenticated { .. } => Phase::Authenticated,
            OnuState::Active { .. } => Phase::Active,
            OnuState::Lost { .. } => Phase::Lost,
        }
    }

    /// The equalisation, in the states that have one.
    pub const fn equalisation(&self) -> Option<Equalisation> {
        match *self {
            OnuState::Ranged { equalisation }
            | OnuState::Authenticated { equalisation }
            | OnuState::Active { equalisation, .. } => Some(equalisation),
            OnuState::Discovered | OnuState::Lost { .. } => None,
        }
    }
}

/// An input to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Ranging finished with this equalisation (from Discovered; from Ranged it re-ranges).
    Ranged(Equalisation),
    /// The session layer verified the ONU's pre-shared secret (from Ranged).
    Authenticated,
    /// The session layer refused the ONU's pre-shared secret (from Ranged or later).
    AuthFailed,
    /// A map giving the ONU slots, version `map_version`, was sent (from Authenticated).
    SlotsGranted {
        /// The map's version.
        map_version: u32,
    },
    /// The ONU deregistered or was removed (from any state but Lost).
    Left,
    /// A scheduling period ended; `heard` says whether the ONU showed any sign of life in it
    /// (any state).
    Period {
        /// Whether it was heard.
        heard: bool,
    },
    /// A lost ONU showed up again (from Lost).
    Rediscovered,
}

/// An event that does not apply in the current state. The state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{onu}: event {event:?} is not valid in state {phase:?}")]
pub struct ActivationError {
    /// The ONU.
    pub onu: OnuId,
    /// Its state when the event came.
    pub phase: Phase,
    /// The refused event.
    pub event: Event,
}

/// One ONU's activation state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnuActivation {
    onu: OnuId,
    config: ActivationConfig,
    state: OnuState,
    silent_periods: u32,
}

impl OnuActivation {
    /// A newly discovered ONU.
    ///
    /// # Panics
    /// If `config.lost_after_periods` is zero (caller misuse).
    pub fn discovered(onu: OnuId, config: ActivationConfig) -> Self {
        assert!(config.lost_after_periods > 0, "lost_after_periods must be at least 1");
        Self { onu, config, state: OnuState::Discovered, silent_periods: 0 }
    }

    /// The ONU.
    pub const fn onu(&self) -> OnuId {
        self.onu
    }

    /// The current state.
    pub const fn state(&self) -> OnuState {
        self.state
    }

    /// The current state's name.
    pub const fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Consecutive periods the ONU has not been heard.
    pub const fn silent_periods(&self) -> u32 {
        self.silent_periods
    }

    /// Whether the scheduler should give it slots (Authenticated or Active): the `active`
    /// flag of its [`crate::OnuDemand`].
    pub const fn schedulable(&self) -> bool {
        matches!(self.state, OnuState::Authenticated { .. } | OnuState::Active { .. })
    }

    /// Applies one event; returns the state's name before it. On error nothing changes.
    pub fn handle(&mut self, event: Event) -> Result<Phase, ActivationError> {
        let before = self.phase();
        let refuse = Err(ActivationError { onu: self.onu, phase: before, event });
        let next = match (self.state, event) {
            (_, Event::Period { heard: true }) => {
                self.silent_periods = 0;
                return Ok(before);
            }
            (OnuState::Lost { .. }, Event::Period { heard: false }) => return Ok(before),
            (_, Event::Period { heard: false }) => {
                self.silent_periods = self.silent_periods.saturating_add(1);
                if self.silent_periods < self.config.lost_after_periods {
                    return Ok(before);
                }
                OnuState::Lost { reason: LossReason::Missing }
            }
            (OnuState::Discovered | OnuState::Ranged { .. }, Event::Ranged(equalisation)) => {
                OnuState::Ranged { equalisation }
            }
            (OnuState::Ranged { equalisation }, Event::Authenticated) => {
                OnuState::Authenticated { equalisation }
            }
            (OnuState::Authenticated { equalisation }, Event::SlotsGranted { map_version }) => {
                OnuState::Active { equalisation, map_version }
            }
            (
                OnuState::Ranged { .. } | OnuState::Authenticated { .. } | OnuState::Active { .. },
                Event::AuthFailed,
            ) => OnuState::Lost { reason: LossReason::AuthFailed },
            (OnuState::Lost { .. }, Event::Left) => return refuse,
            (_, Event::Left) => OnuState::Lost { reason: LossReason::Left },
            (OnuState::Lost { .. }, Event::Rediscovered) => OnuState::Discovered,
            _ => return refuse,
        };
        self.state = next;
        self.silent_periods = 0;
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranging::RangingConfig;

    fn eq(km: f64) -> Equalisation {
        RangingConfig::default().equalise(crate::ranging::round_trip_gates(km, 1e9)).unwrap()
    }

    fn active_onu() -> OnuActivation {
        let mut a = OnuActivation::discovered(OnuId(7), ActivationConfig::default());
        a.handle(Event::Ranged(eq(4.0))).unwrap();
        a.handle(Event::Authenticated).unwrap();
        a.handle(Event::SlotsGranted { map_version: 12 }).unwrap();
        a
    }

    #[test]
    fn the_happy_path() {
        let mut a = OnuActivation::discovered(OnuId(7), ActivationConfig::default());
        assert!(!a.schedulable());
        assert_eq!(a.handle(Event::Ranged(eq(4.0))), Ok(Phase::Discovered));
        assert_eq!(a.state(), OnuState::Ranged { equalisation: eq(4.0) });
        assert!(!a.schedulable(), "not before authentication");
        assert_eq!(a.handle(Event::Authenticated), Ok(Phase::Ranged));
        assert!(a.schedulable());
        assert_eq!(a.handle(Event::SlotsGranted { map_version: 12 }), Ok(Phase::Authenticated));
        assert_eq!(a.state(), OnuState::Active { equalisation: eq(4.0), map_version: 12 });
        assert!(a.schedulable());
        assert_eq!(a.state().equalisation(), Some(eq(4.0)));
    }

    #[test]
    fn events_out_of_order_are_refused_and_change_nothing() {
        let mut a = OnuActivation::discovered(OnuId(7), ActivationConfig::default());
        for ev in [
            Event::Authenticated,
            Event::SlotsGranted { map_version: 1 },
            Event::Rediscovered,
            Event::AuthFailed,
        ] {
            let before = a.clone();
            let err = a.handle(ev).unwrap_err();
            assert_eq!(err, ActivationError { onu: OnuId(7), phase: Phase::Discovered, event: ev });
            assert_eq!(a, before);
        }
        a.handle(Event::Ranged(eq(1.0))).unwrap();
        assert!(a.handle(Event::SlotsGranted { map_version: 1 }).is_err(), "no slots before authentication");
        // Re-ranging before authentication replaces the equalisation.
        a.handle(Event::Ranged(eq(2.0))).unwrap();
        assert_eq!(a.state().equalisation(), Some(eq(2.0)));
        let mut active = active_onu();
        assert!(active.handle(Event::Ranged(eq(9.0))).is_err(), "an active ONU is not silently re-ranged");
        assert!(active.handle(Event::Authenticated).is_err());
    }

    #[test]
    fn missing_for_n_periods_loses_the_slots() {
        let mut a = active_onu();
        a.handle(Event::Period { heard: false }).unwrap();
        a.handle(Event::Period { heard: false }).unwrap();
        assert_eq!(a.phase(), Phase::Active);
        assert_eq!(a.silent_periods(), 2);
        // Heard again: the count restarts.
        a.handle(Event::Period { heard: true }).unwrap();
        assert_eq!(a.silent_periods(), 0);
        for _ in 0..2 {
            a.handle(Event::Period { heard: false }).unwrap();
        }
        assert_eq!(a.phase(), Phase::Active);
        assert_eq!(a.handle(Event::Period { heard: false }), Ok(Phase::Active));
        assert_eq!(a.state(), OnuState::Lost { reason: LossReason::Missing });
        assert!(!a.schedulable());
        // Staying silent while lost is fine.
        a.handle(Event::Period { heard: false }).unwrap();
        assert_eq!(a.phase(), Phase::Lost);
    }

    #[test]
    fn a_pre_active_onu_can_go_missing_too() {
        let mut a = OnuActivation::discovered(OnuId(1), ActivationConfig { lost_after_periods: 1 });
        a.handle(Event::Period { heard: false }).unwrap();
        assert_eq!(a.state(), OnuState::Lost { reason: LossReason::Missing });
    }

    #[test]
    fn leaving_and_failed_authentication() {
        let mut a = active_onu();
        a.handle(Event::Left).unwrap();
        assert_eq!(a.state(), OnuState::Lost { reason: LossReason::Left });
        assert!(a.handle(Event::Left).is_err());
        let mut b = OnuActivation::discovered(OnuId(2), ActivationConfig::default());
        b.handle(Event::Ranged(eq(3.0))).unwrap();
        b.handle(Event::AuthFailed).unwrap();
        assert_eq!(b.state(), OnuState::Lost { reason: LossReason::AuthFailed });
        assert!(!b.schedulable());
        let mut c = active_onu();
        c.handle(Event::AuthFailed).unwrap();
        assert!(!c.schedulable(), "a rejected tag ends the ONU's slots");
    }

    #[test]
    fn a_lost_onu_comes_back_through_ranging_and_authentication() {
        let mut a = active_onu();
        a.handle(Event::Left).unwrap();
        assert!(a.handle(Event::Authenticated).is_err());
        assert!(a.handle(Event::SlotsGranted { map_version: 13 }).is_err());
        a.handle(Event::Rediscovered).unwrap();
        assert_eq!(a.state(), OnuState::Discovered);
        assert!(a.handle(Event::Authenticated).is_err(), "ranging first");
        a.handle(Event::Ranged(eq(5.0))).unwrap();
        a.handle(Event::Authenticated).unwrap();
        a.handle(Event::SlotsGranted { map_version: 14 }).unwrap();
        assert_eq!(a.state(), OnuState::Active { equalisation: eq(5.0), map_version: 14 });
    }
}
