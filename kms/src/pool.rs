//! Key pools: where finished key blocks of one ONU go.

use crate::store::{BlockState, StoreError, StorePool};
use qpon_qkd::BitBlock;
use qpon_qkd::session::ProvisionalBlock;
use uuid::Uuid;

/// Why a pool refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A block with this ID is already in the pool (IDs are allocated once, by the OLT).
    #[error("block {0} is already in the pool")]
    Duplicate(Uuid),
    /// The store failed; the operation did not happen.
    #[error("key store failed: {0}")]
    Store(String),
    /// The peer named a block this pool does not hold committed: the two ends' pools
    /// disagree (e.g. a store was replaced or restored from a backup).
    #[error("pools diverged: block {0} is not committed here")]
    Diverged(Uuid),
}

/// One ONU's key pool at one end, as the drivers see it. It follows the sessions' pool
/// agreement (`qpon_qkd::session`, "Pool agreement"): a block is staged (stored
/// provisionally: durable, not usable), then committed or discarded. Implementations must
/// make every call durable before returning `Ok` (the in-memory pool is durable for the
/// life of the process only); on `Err` the driver stops the session (fail closed).
pub trait KeyPool: Send {
    /// Stores a block provisionally.
    fn stage(&mut self, block: &ProvisionalBlock) -> Result<(), PoolError>;
    /// Commits block `id` (staged before, with this key); a pool that was not given it
    /// staged appends it now.
    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError>;
    /// Withdraws a staged or committed block (recorded, never used). Unknown IDs are
    /// ignored: the session may withdraw a block the pool never received.
    fn discard(&mut self, id: Uuid) -> Result<(), PoolError>;
    /// Pool sync: discards every block after `last` (all blocks when `None`). Fails,
    /// changing nothing, when the pool does not hold `last` committed: the two ends' pools
    /// have diverged.
    fn truncate_after(&mut self, last: Option<Uuid>) -> Result<(), PoolError>;
    /// Unused key bits in the pool.
    fn level_bits(&self) -> u64;
    /// Blocks committed so far.
    fn blocks(&self) -> u64;
}

/// A pool in memory. Blocks are kept in arrival order; `Debug` shows sizes only.
#[derive(Default)]
pub struct MemoryPool {
    blocks: Vec<(Uuid, BitBlock)>,
    staged: Vec<(Uuid, BitBlock)>,
    discarded: u64,
    bits: u64,
}

impl core::fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MemoryPool({} blocks, {} bits)", self.blocks.len(), self.bits)
    }
}

impl MemoryPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The committed blocks, in arrival order (tests compare the two ends' pools).
    pub fn entries(&self) -> &[(Uuid, BitBlock)] {
        &self.blocks
    }

    /// Blocks discarded so far (staged or committed).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }
}

impl KeyPool for MemoryPool {
    fn stage(&mut self, block: &ProvisionalBlock) -> Result<(), PoolError> {
        if self.blocks.iter().chain(&self.staged).any(|(i, _)| *i == block.id) {
            return Err(PoolError::Duplicate(block.id));
        }
        self.staged.push((block.id, block.key.clone()));
        Ok(())
    }

    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError> {
        if self.blocks.iter().any(|(i, _)| *i == id) {
            return Err(PoolError::Duplicate(id));
        }
        self.staged.retain(|(i, _)| *i != id);
        self.bits += key.len() as u64;
        self.blocks.push((id, key.clone()));
        Ok(())
    }

    fn discard(&mut self, id: Uuid) -> Result<(), PoolError> {
        let before = self.staged.len() + self.blocks.len();
        self.staged.retain(|(i, _)| *i != id);
        if let Some(k) = self.blocks.iter().position(|(i, _)| *i == id) {
            let (_, key) = self.blocks.remove(k);
            self.bits -= key.len() as u64;
        }
        self.discarded += (before - self.staged.len() - self.blocks.len()) as u64;
        Ok(())
    }

    fn truncate_after(&mut self, last: Option<Uuid>) -> Result<(), PoolError> {
        let keep = match last {
            None => 0,
            Some(id) => self.blocks.iter().position(|(i, _)| *i == id).ok_or(PoolError::Diverged(id))? + 1,
        };
        let dropped: Vec<Uuid> = self.blocks[keep..].iter().chain(&self.staged).map(|(i, _)| *i).collect();
        for id in dropped {
            self.discard(id)?;
        }
        Ok(())
    }

    fn level_bits(&self) -> u64 {
        self.bits
    }

    fn blocks(&self) -> u64 {
        self.blocks.len() as u64
    }
}

/// A pool shared between a driver and an observer (the emulation compares both ends'
/// pools through it).
impl KeyPool for std::sync::Arc<std::sync::Mutex<MemoryPool>> {
    fn stage(&mut self, block: &ProvisionalBlock) -> Result<(), PoolError> {
        self.lock().map_err(|_| poisoned())?.stage(block)
    }

    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError> {
        self.lock().map_err(|_| poisoned())?.append(id, key)
    }

    fn discard(&mut self, id: Uuid) -> Result<(), PoolError> {
        self.lock().map_err(|_| poisoned())?.discard(id)
    }

    fn truncate_after(&mut self, last: Option<Uuid>) -> Result<(), PoolError> {
        self.lock().map_err(|_| poisoned())?.truncate_after(last)
    }

    fn level_bits(&self) -> u64 {
        self.lock().map(|p| p.level_bits()).unwrap_or(0)
    }

    fn blocks(&self) -> u64 {
        self.lock().map(|p| p.blocks()).unwrap_or(0)
    }
}

/// The persistent pool: every call is one durable store transaction.
impl KeyPool for StorePool {
    fn stage(&mut self, block: &ProvisionalBlock) -> Result<(), PoolError> {
        Ok(self.append_provisional(block.id, &block.key, block.share.expose())?)
    }

    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError> {
        match self.commit_block(id) {
            Err(StoreError::UnknownBlock(_)) => Ok(self.append_block(id, key)?),
            other => Ok(other?),
        }
    }

    fn discard(&mut self, id: Uuid) -> Result<(), PoolError> {
        match StorePool::discard(self, id) {
            Ok(_) | Err(StoreError::UnknownBlock(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn truncate_after(&mut self, last: Option<Uuid>) -> Result<(), PoolError> {
        if let Some(id) = last {
            let committed =
                self.block_infos()?.iter().any(|b| b.id == id && b.state == BlockState::Committed);
            if !committed {
                return Err(PoolError::Diverged(id));
            }
        }
        self.discard_after(last)?;
        Ok(())
    }

    /// Whole unused bytes × 8; 0 if the store cannot be read (fail closed: no key is
    /// promised that might not be there).
    fn level_bits(&self) -> u64 {
        self.try_level_bits().unwrap_or(0)
    }

    fn blocks(&self) -> u64 {
        self.totals().map(|t| t.blocks).unwrap_or(0)
    }
}

fn poisoned() -> PoolError {
    PoolError::Store("pool lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_counts_and_refuses_duplicates() {
        let mut p = MemoryPool::new();
        let id = Uuid::from_u128(1);
        p.append(id, &BitBlock::zeros(100)).unwrap();
        assert_eq!((p.level_bits(), p.blocks()), (100, 1));
        assert_eq!(p.append(id, &BitBlock::zeros(5)), Err(PoolError::Duplicate(id)));
        assert_eq!(p.level_bits(), 100);
        assert!(!format!("{p:?}").contains("BitBlock"));
    }

    #[test]
    fn staged_blocks_are_not_usable_until_committed_and_truncation_discards() {
        let mut p = MemoryPool::new();
        let block = |n: u128| ProvisionalBlock {
            id: Uuid::from_u128(n),
            key: BitBlock::zeros(64),
            share: qpon_qkd::SecretBytes::new(vec![0; 4]),
        };
        p.stage(&block(1)).unwrap();
        assert_eq!((p.level_bits(), p.blocks()), (0, 0));
        p.append(Uuid::from_u128(1), &BitBlock::zeros(64)).unwrap();
        p.stage(&block(2)).unwrap();
        p.append(Uuid::from_u128(2), &BitBlock::zeros(64)).unwrap();
        p.stage(&block(3)).unwrap();
        assert_eq!(p.truncate_after(Some(Uuid::from_u128(9))), Err(PoolError::Diverged(Uuid::from_u128(9))));
        p.truncate_after(Some(Uuid::from_u128(1))).unwrap();
        assert_eq!(p.entries().len(), 1);
        assert_eq!((p.level_bits(), p.discarded()), (64, 2));
        p.discard(Uuid::from_u128(42)).unwrap();
        assert_eq!(p.discarded(), 2);
    }
}
