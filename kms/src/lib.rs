//! # qpon-kms — per-ONU key pools
//!
//! Today: the [`KeyPool`] trait through which the OLT and ONU drivers follow the sessions'
//! pool agreement (stage, commit, discard, truncate at a pool sync), an in-memory pool
//! ([`MemoryPool`]), and the crash-safe persistent store ([`KeyStore`], one redb file,
//! optionally sealed under a key-encryption key) whose per-ONU pools ([`StorePool`]) keep a
//! ledger of every byte consumed, with the classical channel's pad ledger
//! ([`StoreAuthLedger`]) beside them; [`KeyStore::resume`] gives a restarting session what
//! it needs. The [`etsi`] module serves the pools to applications through ETSI GS QKD 014
//! over mutual TLS. The crate does not know how keys were made.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod etsi;
pub mod pool;
mod resume;
pub mod store;

// The public interface is:
pub use pool::{KeyPool, MemoryPool, MemoryUse, PoolError, recent_uses};
pub use resume::{End, Resumed};
pub use store::{
    BlockInfo, BlockState, Consumed, KEK_ENV, Kek, KekError, KeyStore, LedgerEntry, LedgerKind, Purpose,
    StoreAuthLedger, StoreError, StoreOptions, StorePool, Totals, key_id,
};
