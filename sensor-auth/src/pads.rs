//! Where pads come from: batches reserved durably from a key pool.
//!
//! The control end is the *deciding* end: it reserves a batch with one durable
//! [`KeyPool::take`] and names it in band (block, offset, length, and the batch's ordinal
//! = how many sensor-auth batches this pool had handed out before it). The field end
//! mirrors it with [`KeyPool::take_named`] on its own copy of the pool. Because the
//! ordinal is the count of `SensorAuth` consumptions in the pool's durable ledger, it
//! survives crashes at both ends without any state of our own:
//!
//! * a batch is never taken twice (the ledger has recorded it before its bytes are used);
//! * a frame naming an older batch than the field end's count is refused without touching
//!   the pool (a replay, also after a restart);
//! * a batch the control end reserved and lost at a crash is taken (skipped) by the field
//!   end too, when the next batch's frame arrives, so both cursors stay in step; its bytes
//!   are ledgered as consumed, never reused, never silent.
//!
//! Requirement: one sensor-auth stream per pool pair, and every other consumption of the
//! two pools mirrored (the pools' cursor is shared by all purposes).

use core::fmt;

use qpon_kms::{KeyPool, PoolError, Purpose};
use qpon_qkd::SecretBytes;

use crate::frame::BatchDescriptor;

/// Why the pad source could not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PadError {
    /// Not enough key in the pool; nothing consumed.
    #[error("pool exhausted: {requested} bytes requested, {available} available")]
    Exhausted {
        /// Bytes requested.
        requested: u64,
        /// Bytes available.
        available: u64,
    },
    /// The named bytes are not where this pool's cursor is; nothing consumed.
    #[error("pool cursor diverged: {0}")]
    Diverged(String),
    /// Store failure; nothing consumed.
    #[error("store: {0}")]
    Store(String),
}

impl From<PoolError> for PadError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Exhausted { requested, available } => PadError::Exhausted { requested, available },
            e @ (PoolError::CursorDiverged { .. } | PoolError::Diverged(_)) => {
                PadError::Diverged(e.to_string())
            }
            e => PadError::Store(e.to_string()),
        }
    }
}

/// A batch reserved by the deciding end.
pub struct Reserved {
    /// Where it came from (sent in band so the peer can mirror it).
    pub descriptor: BatchDescriptor,
    /// The secret bytes (already ledgered as consumed).
    pub bytes: SecretBytes,
}

impl fmt::Debug for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reserved").field("descriptor", &self.descriptor).field("bytes", &self.bytes).finish()
    }
}

/// A durable source of batches of shared secret bytes.
///
/// Every method that returns bytes must have made their consumption durable first.
pub trait PadSource: Send {
    /// Deciding end: reserves the next `len` bytes.
    fn reserve(&mut self, len: usize) -> Result<Reserved, PadError>;
    /// Mirroring end: takes exactly the bytes the peer reserved, or fails changing nothing.
    fn mirror(&mut self, batch: &BatchDescriptor) -> Result<SecretBytes, PadError>;
    /// Mirroring end: consumes (and discards) the next `len` bytes, a batch the peer
    /// reserved but never used.
    fn skip(&mut self, len: usize) -> Result<(), PadError>;
    /// Batches handed out so far (reserved, mirrored or skipped), from the durable ledger:
    /// the ordinal of the next batch.
    fn batches_taken(&mut self) -> Result<u64, PadError>;
    /// Unused bytes left in the pool (0 if unknown: fail closed).
    fn level_bytes(&self) -> u64;
    /// Bytes consumed for sensor authentication so far (all batches).
    fn consumed_bytes(&self) -> u64;
}

/// [`PadSource`] over a [`KeyPool`] (a `kms::StorePool`, or a `kms::MemoryPool` in
/// tests), consuming for [`Purpose::SensorAuth`].
pub struct PoolPads<P: KeyPool> {
    pool: P,
    taken: Option<u64>,
}

impl<P: KeyPool> PoolPads<P> {
    /// Wraps `pool`.
    pub fn new(pool: P) -> Self {
        Self { pool, taken: None }
    }

    /// The pool.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// Gives the pool back.
    pub fn into_inner(self) -> P {
        self.pool
    }

    fn count(&mut self) {
        if let Some(t) = self.taken.as_mut() {
            *t += 1;
        }
    }
}

impl<P: KeyPool> fmt::Debug for PoolPads<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolPads").field("batches_taken", &self.taken).finish_non_exhaustive()
    }
}

impl<P: KeyPool> PadSource for PoolPads<P> {
    fn reserve(&mut self, len: usize) -> Result<Reserved, PadError> {
        self.batches_taken()?;
        let (block, offset, bytes) = self.pool.take(Purpose::SensorAuth, len)?;
        self.count();
        let len = u32::try_from(len).map_err(|_| PadError::Store("batch too long".into()))?;
        Ok(Reserved { descriptor: BatchDescriptor { block, offset, len }, bytes })
    }

    fn mirror(&mut self, b: &BatchDescriptor) -> Result<SecretBytes, PadError> {
        self.batches_taken()?;
        let bytes = self.pool.take_named(Purpose::SensorAuth, b.block, b.offset, b.len as usize)?;
        self.count();
        Ok(bytes)
    }

    fn skip(&mut self, len: usize) -> Result<(), PadError> {
        self.batches_taken()?;
        drop(self.pool.take(Purpose::SensorAuth, len)?);
        self.count();
        Ok(())
    }

    fn batches_taken(&mut self) -> Result<u64, PadError> {
        if let Some(t) = self.taken {
            return Ok(t);
        }
        let n = self.pool.consumptions(Purpose::SensorAuth)?.len() as u64;
        self.taken = Some(n);
        Ok(n)
    }

    fn level_bytes(&self) -> u64 {
        self.pool.level_bits() / 8
    }

    fn consumed_bytes(&self) -> u64 {
        self.pool.consumed_bytes(Purpose::SensorAuth)
    }
}
