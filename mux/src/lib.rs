//! # qpon-mux — the shared medium
//!
//! One OLT receiver, time-multiplexed across all ONUs: every detector gate belongs to at
//! most one ONU, so every detection is attributed to exactly one ONU (DESIGN.md §1, §3
//! item 1). This crate holds the pure pieces of that multiplexing:
//!
//! - [`slot_map`]: a [`SlotMap`] — frames of detector gates divided into slots, each owned
//!   by one ONU, with guard gates between slots of different owners — and allocation-free
//!   lookups (`owner_of(global_gate)`, per-ONU slot iteration, the frame as segments).
//! - [`history`]: a [`SlotMapSchedule`] that answers "which map applies at frame F" (the
//!   old map until the new one's `active_from_frame`, then the new one).
//! - [`wire`]: the compact, strictly checked wire encoding of a slot map the OLT sends over
//!   the authenticated channel (smoltcp-style [`wire::Packet`] view, golden-byte tests).
//! - [`scheduler`]: the once-per-period scheduler that recomputes the map from per-ONU
//!   deficits and qualities under a [`Policy`] (max-min fair key rate, or equal gates).
//! - [`ranging`]: round-trip delays, equalisation delays (GPON's `Ranging_Time`), and the
//!   [`PulseClock`] that maps an ONU's pulse index to the OLT's gate index and back.
//! - [`activation`]: the per-ONU activation state machine (Discovered → Ranged →
//!   Authenticated → Active → Lost).
//! - [`downstream`]: downstream frames (checked view), per-ONU AES-128-CTR with the 2-bit
//!   key index, and [`DownstreamKeys`] (two key slots, switching at a superframe, erasure
//!   after the overlap window).
//!
//! Everything is sans-IO: no sockets, no clocks, no tasks. Time enters as gate and frame
//! numbers passed in by the caller.
//!
//! Conventions: a *gate* is one detector gate of the OLT's receiver; a *global gate* counts
//! gates since the receiver started; frame `F` is global gates `F·frame_len ..
//! (F+1)·frame_len`, and a gate's *offset* is its position within its frame.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod activation;
pub mod downstream;
pub mod history;
pub mod otp;
pub mod ranging;
pub mod scheduler;
pub mod slot_map;
pub mod wire;

// The public interface is:
pub use activation::{ActivationConfig, ActivationError, Event, LossReason, OnuActivation, OnuState, Phase};
pub use downstream::{
    DownstreamError, DownstreamKey, DownstreamKeys, FrameError, KeyIndex, KeysConfig, PadRef,
};
pub use history::{Inserted, ScheduleError, SlotMapSchedule};
pub use otp::OtpPads;
pub use ranging::{Equalisation, PulseClock, RangingConfig, RangingError};
pub use scheduler::{
    OnuDemand, Policy, QualityEstimate, ScheduleOutcome, SchedulerConfig, SchedulerError, quality_prior,
    schedule,
};
pub use slot_map::{GateCounts, OnuId, Segment, SegmentKind, Slot, SlotMap, SlotMapError};
pub use wire::WireError;
