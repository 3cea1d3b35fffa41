//! Key pools: where finished key blocks of one ONU go.

use qpon_qkd::BitBlock;
use uuid::Uuid;

/// Why a pool refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A block with this ID is already in the pool (IDs are allocated once, by the OLT).
    #[error("block {0} is already in the pool")]
    Duplicate(Uuid),
    /// The store failed; the block is not in the pool.
    #[error("key store failed: {0}")]
    Store(String),
}

/// One ONU's key pool at one end. Implementations must make an appended block durable
/// before returning `Ok` (the in-memory pool is durable for the life of the process only).
pub trait KeyPool: Send {
    /// Appends a finished block.
    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError>;
    /// Unused key bits in the pool.
    fn level_bits(&self) -> u64;
    /// Blocks appended so far.
    fn blocks(&self) -> u64;
}

/// A pool in memory. Blocks are kept in arrival order; `Debug` shows sizes only.
#[derive(Default)]
pub struct MemoryPool {
    blocks: Vec<(Uuid, BitBlock)>,
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

    /// The blocks, in arrival order (tests compare the two ends' pools).
    pub fn entries(&self) -> &[(Uuid, BitBlock)] {
        &self.blocks
    }
}

impl KeyPool for MemoryPool {
    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError> {
        if self.blocks.iter().any(|(i, _)| *i == id) {
            return Err(PoolError::Duplicate(id));
        }
        self.bits += key.len() as u64;
        self.blocks.push((id, key.clone()));
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
    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError> {
        self.lock().map_err(|_| PoolError::Store("pool lock poisoned".into()))?.append(id, key)
    }

    fn level_bits(&self) -> u64 {
        self.lock().map(|p| p.level_bits()).unwrap_or(0)
    }

    fn blocks(&self) -> u64 {
        self.lock().map(|p| p.blocks()).unwrap_or(0)
    }
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
}
