//! # qpon-kms — per-ONU key pools
//!
//! Today: the [`KeyPool`] trait the OLT and ONU drivers append finished key blocks to, an
//! in-memory pool ([`MemoryPool`]), and the crash-safe persistent store ([`KeyStore`], one
//! redb file) whose per-ONU pools ([`StorePool`]) keep a ledger of every byte consumed.
//! The [`etsi`] module serves the pools to applications through ETSI GS QKD 014 over mutual
//! TLS. Still to come (see the README's features table): the pool-sync protocol between the
//! two ends. The crate does not know how keys were made.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod etsi;
pub mod pool;
pub mod store;

// The public interface is:
pub use pool::{KeyPool, MemoryPool, PoolError};
pub use store::{
    BlockInfo, BlockState, Consumed, KeyStore, LedgerEntry, LedgerKind, Purpose, StoreError, StorePool,
    Totals, key_id,
};
