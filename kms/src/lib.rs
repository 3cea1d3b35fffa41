//! # qpon-kms — per-ONU key pools
//!
//! Today: the [`KeyPool`] trait the OLT and ONU drivers append finished key blocks to, and
//! an in-memory pool ([`MemoryPool`]). Still to come (see the README's features table): the
//! crash-safe persistent store with its consumption ledger, the pool-sync protocol between
//! the two ends, and the ETSI GS QKD 014 router. The crate does not know how keys were made.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pool;

// The public interface is:
pub use pool::{KeyPool, MemoryPool, PoolError};
