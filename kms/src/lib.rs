//! # qpon-kms — per-ONU key pools
//!
//! Will hold: the crash-safe persistent store of key blocks and their consumption ledger
//! (pads included), key IDs, the pool-sync protocol between the two ends, and the ETSI GS
//! QKD 014 router served by `olt` and `onu`. It does not know how keys were made.
//!
//! Nothing is implemented yet; see the README's features table.
#![forbid(unsafe_code)]
