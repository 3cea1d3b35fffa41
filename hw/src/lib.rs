//! # qpon-hw — the hardware boundary
//!
//! Will hold: the traits through which the OLT and ONU drivers read detection and pulse
//! records (re-exporting `qpon-qkd`'s record types), the versioned board wire protocol, the
//! host drivers (UDP via tokio, raw Ethernet via smoltcp) and the board-side protocol server
//! that an emulator plugs physics into. It contains no physics.
//!
//! Nothing is implemented yet; see the README's features table.
#![forbid(unsafe_code)]
