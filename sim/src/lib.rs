//! # qpon-sim — the simulated world around qpon
//!
//! Physics of the PON splitter tree, fibre, sources, detectors and eavesdroppers; analytic
//! planning; the event sampler behind the `hw` traits; the in-process whole-PON emulation;
//! and the `qpon-sim` command line. Today it holds the command line with the finite-key
//! calculator and the benchmark harness; the physics, the sampler and the emulation arrive
//! with their issues.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
