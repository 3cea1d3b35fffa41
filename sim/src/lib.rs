//! # qpon-sim — the simulated world around qpon
//!
//! - [`model`]: physics of the splitter tree, fibre, weak-coherent decoy sources, the
//!   shared gated receiver (dead time, afterpulses spilling between slots) and
//!   eavesdroppers (intercept-resend, photon-number splitting, detector blinding).
//! - [`scenario`]: TOML scenario files with the DESIGN.md §5 defaults, validated field by
//!   field.
//! - [`planning`]: expected counts, asymptotic and finite-key rates per ONU, and a per-ONU
//!   optimiser of the source parameters (`qpon-sim rate`, `qpon-sim sweep`).
//! - [`sampler`]: the event sampler behind the `hw` traits, at a cost proportional to the
//!   number of detections.
//! - [`medium`]: the emulation's classical channel, smoltcp TCP/IP on a simulated PON
//!   (per-ONU fibre delay, seeded packet loss) driven by the virtual clock.
//! - [`plot`]: PNG plots with a font shipped in the crate.
//! - [`cli`]: the `qpon-sim` command line.
//!
//! The in-process whole-PON emulation arrives with its issue.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod link;
pub mod medium;
pub mod model;
pub mod planning;
pub mod plot;
pub mod pon;
pub mod sampler;
pub mod scenario;
