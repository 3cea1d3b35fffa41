//! # qpon-sensor-auth — authenticated SCADA and sensor command streams
//!
//! Will hold: Wegman–Carter authenticated framing for command streams between a control
//! station and field devices (tags from `qpon-qkd`'s MAC, pads from the key pools), replay
//! protection, key budgets, fail-closed policy, a Modbus/TCP bump-in-the-wire proxy and the
//! `sensor-auth` binary.
//!
//! Nothing is implemented yet; see the README's features table.
#![forbid(unsafe_code)]
