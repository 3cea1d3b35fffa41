//! Key pools: where finished key blocks of one ONU go.

use crate::store::{BlockState, Purpose, StoreError, StorePool};
use qpon_qkd::session::PoolUse;
use qpon_qkd::session::ProvisionalBlock;
use qpon_qkd::{BitBlock, SecretBytes};
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
    /// Not enough key (fail closed: nothing was consumed; never fall back to clear).
    #[error("key pool exhausted: {requested} bytes requested, {available} unused")]
    Exhausted {
        /// Bytes asked for.
        requested: u64,
        /// Unused bytes in the pool.
        available: u64,
    },
    /// A mirrored consumption ([`KeyPool::take_named`]) named other bytes than this pool's
    /// cursor would take: the two ends' pools have diverged. Nothing was consumed.
    #[error("pool cursor diverged: peer consumed {block}@{offset}, here the next bytes are {found}")]
    CursorDiverged {
        /// The block the peer named.
        block: Uuid,
        /// The offset the peer named.
        offset: u64,
        /// Where this pool's cursor is (`block@offset`, or `none`).
        found: String,
    },
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
    /// Takes the next `bytes` bytes for `purpose` with the pool's cursor (the first
    /// committed block, in order, with that many unused bytes; shorter tails before it are
    /// skipped), durably recorded before returning; returns (block, offset, bytes).
    /// [`PoolError::Exhausted`] (nothing consumed) when no block can serve.
    fn take(&mut self, purpose: Purpose, bytes: usize) -> Result<(Uuid, u64, SecretBytes), PoolError>;
    /// The mirror of the peer's [`take`](Self::take): consumes the next `len` bytes for
    /// `purpose` with this pool's own cursor, which must take them from exactly `block` at
    /// `offset`; otherwise fails closed with [`PoolError::CursorDiverged`], changing
    /// nothing.
    fn take_named(
        &mut self,
        purpose: Purpose,
        block: Uuid,
        offset: u64,
        len: usize,
    ) -> Result<SecretBytes, PoolError>;
    /// Consumptions made for `purpose`, in order: (block, offset, length).
    fn consumptions(&self, purpose: Purpose) -> Result<Vec<(Uuid, u64, u64)>, PoolError> {
        Ok(self.consumptions_of(&[purpose])?.into_iter().map(|(_, b, o, l)| (b, o, l)).collect())
    }
    /// Consumptions made for any of `purposes`, in the order they were made: (purpose,
    /// block, offset, length). With [`Purpose::MIRRORED`] these are the pool uses the OLT
    /// announced (and the ONU applied), one for one.
    fn consumptions_of(&self, purposes: &[Purpose]) -> Result<Vec<(Purpose, Uuid, u64, u64)>, PoolError>;
    /// The unused bytes of the committed blocks, in cursor order: (block, first unused
    /// offset, unused bytes), blocks without unused bytes left out. What a run of
    /// [`take`](Self::take) calls would be served from, so a caller can size its requests
    /// to a block's end instead of skipping its tail.
    fn unused_runs(&self) -> Result<Vec<(Uuid, u64, u64)>, PoolError>;
    /// Bytes consumed for `purpose` so far.
    fn consumed_bytes(&self, purpose: Purpose) -> u64 {
        self.consumptions(purpose).map(|v| v.iter().map(|c| c.2).sum()).unwrap_or(0)
    }
}

/// The pool uses to restore into a restarted OLT session
/// ([`qpon_qkd::session::OltSession::restore_pool_uses`]): the number of consumptions made
/// for the purposes the OLT announces ([`Purpose::MIRRORED`]) and the newest `keep` of them
/// as uses (without key switches).
pub fn recent_uses(pool: &dyn KeyPool, keep: usize) -> Result<(u64, Vec<PoolUse>), PoolError> {
    let all = pool.consumptions_of(&Purpose::MIRRORED)?;
    let n = all.len() as u64;
    let skip = all.len().saturating_sub(keep);
    let uses = all
        .into_iter()
        .enumerate()
        .skip(skip)
        .map(|(i, (purpose, block, offset, len))| PoolUse {
            seq: i as u64 + 1,
            purpose: purpose as u8,
            block,
            offset,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            switch: None,
        })
        .collect();
    Ok((n, uses))
}

/// One consumption of a [`MemoryPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// What for (`None`: a tail skipped by the cursor).
    pub purpose: Option<Purpose>,
    /// The block.
    pub block: Uuid,
    /// First byte within the block.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A pool in memory. Blocks are kept in arrival order; `Debug` shows sizes only.
#[derive(Default)]
pub struct MemoryPool {
    blocks: Vec<(Uuid, BitBlock)>,
    /// Bytes of each committed block used or skipped by the cursor (same order as `blocks`).
    used: Vec<u64>,
    staged: Vec<(Uuid, BitBlock)>,
    discarded: u64,
    bits: u64,
    ledger: Vec<MemoryUse>,
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

    /// Every consumption and skipped tail, in order (tests compare the two ends' ledgers).
    pub fn ledger(&self) -> &[MemoryUse] {
        &self.ledger
    }

    /// Bytes of each committed block used (consumed or skipped), in block order.
    pub fn used(&self) -> &[u64] {
        &self.used
    }

    /// The cursor: the index of the first block with `want` unused whole bytes.
    fn cursor(&self, want: u64) -> Option<usize> {
        (0..self.blocks.len()).find(|&i| self.blocks[i].1.len() as u64 / 8 - self.used[i] >= want)
    }

    fn consume(
        &mut self,
        purpose: Purpose,
        bytes: usize,
        expect: Option<(Uuid, u64)>,
    ) -> Result<(Uuid, u64, SecretBytes), PoolError> {
        let want = bytes as u64;
        if want == 0 {
            return Err(PoolError::Store("zero-byte consumption".into()));
        }
        let Some(k) = self.cursor(want) else {
            if let Some((block, offset)) = expect {
                return Err(PoolError::CursorDiverged { block, offset, found: "none".into() });
            }
            return Err(PoolError::Exhausted { requested: want, available: self.level_bits() / 8 });
        };
        let (id, offset) = (self.blocks[k].0, self.used[k]);
        if let Some((block, off)) = expect
            && (block, off) != (id, offset)
        {
            return Err(PoolError::CursorDiverged { block, offset: off, found: format!("{id}@{offset}") });
        }
        for i in 0..k {
            let rem = self.blocks[i].1.len() as u64 / 8 - self.used[i];
            if rem > 0 {
                self.ledger.push(MemoryUse {
                    purpose: None,
                    block: self.blocks[i].0,
                    offset: self.used[i],
                    len: rem,
                });
                self.used[i] += rem;
                self.bits -= 8 * rem;
            }
        }
        let all = self.blocks[k].1.to_bytes();
        let key = SecretBytes::from_slice(&all[offset as usize..(offset + want) as usize]);
        self.used[k] += want;
        self.bits -= 8 * want;
        self.ledger.push(MemoryUse { purpose: Some(purpose), block: id, offset, len: want });
        Ok((id, offset, key))
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
        self.used.push(0);
        Ok(())
    }

    fn discard(&mut self, id: Uuid) -> Result<(), PoolError> {
        let before = self.staged.len() + self.blocks.len();
        self.staged.retain(|(i, _)| *i != id);
        if let Some(k) = self.blocks.iter().position(|(i, _)| *i == id) {
            let (_, key) = self.blocks.remove(k);
            let used = self.used.remove(k);
            self.bits -= key.len() as u64 - 8 * used;
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

    fn take(&mut self, purpose: Purpose, bytes: usize) -> Result<(Uuid, u64, SecretBytes), PoolError> {
        self.consume(purpose, bytes, None)
    }

    fn take_named(
        &mut self,
        purpose: Purpose,
        block: Uuid,
        offset: u64,
        len: usize,
    ) -> Result<SecretBytes, PoolError> {
        self.consume(purpose, len, Some((block, offset))).map(|(_, _, k)| k)
    }

    fn consumptions_of(&self, purposes: &[Purpose]) -> Result<Vec<(Purpose, Uuid, u64, u64)>, PoolError> {
        Ok(self
            .ledger
            .iter()
            .filter_map(|u| match u.purpose {
                Some(p) if purposes.contains(&p) => Some((p, u.block, u.offset, u.len)),
                _ => None,
            })
            .collect())
    }

    fn unused_runs(&self) -> Result<Vec<(Uuid, u64, u64)>, PoolError> {
        Ok(self
            .blocks
            .iter()
            .zip(&self.used)
            .filter_map(|((id, key), &used)| {
                let left = key.len() as u64 / 8 - used;
                (left > 0).then_some((*id, used, left))
            })
            .collect())
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

    fn take(&mut self, purpose: Purpose, bytes: usize) -> Result<(Uuid, u64, SecretBytes), PoolError> {
        self.lock().map_err(|_| poisoned())?.take(purpose, bytes)
    }

    fn take_named(
        &mut self,
        purpose: Purpose,
        block: Uuid,
        offset: u64,
        len: usize,
    ) -> Result<SecretBytes, PoolError> {
        self.lock().map_err(|_| poisoned())?.take_named(purpose, block, offset, len)
    }

    fn consumptions_of(&self, purposes: &[Purpose]) -> Result<Vec<(Purpose, Uuid, u64, u64)>, PoolError> {
        self.lock().map_err(|_| poisoned())?.consumptions_of(purposes)
    }

    fn unused_runs(&self) -> Result<Vec<(Uuid, u64, u64)>, PoolError> {
        self.lock().map_err(|_| poisoned())?.unused_runs()
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

    fn take(&mut self, purpose: Purpose, bytes: usize) -> Result<(Uuid, u64, SecretBytes), PoolError> {
        let c = self.consume(purpose, bytes)?;
        Ok((c.block, c.offset, c.key))
    }

    fn take_named(
        &mut self,
        purpose: Purpose,
        block: Uuid,
        offset: u64,
        len: usize,
    ) -> Result<SecretBytes, PoolError> {
        Ok(self.consume_at(purpose, block, offset, len)?)
    }

    fn consumptions_of(&self, purposes: &[Purpose]) -> Result<Vec<(Purpose, Uuid, u64, u64)>, PoolError> {
        Ok(StorePool::consumptions_of(self, purposes)?)
    }

    fn unused_runs(&self) -> Result<Vec<(Uuid, u64, u64)>, PoolError> {
        Ok(self
            .block_infos()?
            .iter()
            .filter(|b| b.remaining_bytes() > 0)
            .map(|b| (b.id, b.used_bytes, b.remaining_bytes()))
            .collect())
    }

    fn consumed_bytes(&self, purpose: Purpose) -> u64 {
        self.totals().map(|t| t.consumed_for(purpose)).unwrap_or(0)
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
    fn take_and_take_named_follow_one_cursor_and_fail_closed() {
        let mut a = MemoryPool::new();
        let mut b = MemoryPool::new();
        let k1 = BitBlock::from_bools(&(0..8 * 20).map(|i| i % 3 == 0).collect::<Vec<_>>());
        let k2 = BitBlock::from_bools(&(0..8 * 40).map(|i| i % 5 == 0).collect::<Vec<_>>());
        for p in [&mut a, &mut b] {
            p.append(Uuid::from_u128(1), &k1).unwrap();
            p.append(Uuid::from_u128(2), &k2).unwrap();
        }
        let (b1, o1, x1) = a.take(Purpose::Downstream, 16).unwrap();
        let (b2, o2, x2) = a.take(Purpose::Downstream, 16).unwrap();
        assert_eq!((b1, o1, b2, o2), (Uuid::from_u128(1), 0, Uuid::from_u128(2), 0));
        assert_eq!(a.level_bits(), 8 * 60 - 8 * 36);
        // A drifted mirror is refused and nothing changes.
        let level = b.level_bits();
        assert!(matches!(
            b.take_named(Purpose::Downstream, b2, o2, 16),
            Err(PoolError::CursorDiverged { .. })
        ));
        assert_eq!((b.level_bits(), b.ledger().len()), (level, 0));
        assert_eq!(b.take_named(Purpose::Downstream, b1, o1, 16).unwrap().expose(), x1.expose());
        assert_eq!(b.take_named(Purpose::Downstream, b2, o2, 16).unwrap().expose(), x2.expose());
        assert_eq!(a.ledger(), b.ledger());
        assert_eq!(a.consumed_bytes(Purpose::Downstream), 32);
        assert_eq!(b.consumptions(Purpose::Downstream).unwrap().len(), 2);
        assert!(matches!(a.take(Purpose::Downstream, 32), Err(PoolError::Exhausted { .. })));
        let (n, uses) = recent_uses(&a, 1).unwrap();
        assert_eq!((n, uses.len(), uses[0].seq, uses[0].offset), (2, 1, 2, 0));
    }

    #[test]
    fn announced_uses_cover_the_mirrored_purposes_in_order_and_runs_follow_the_cursor() {
        let mut a = MemoryPool::new();
        for (n, bytes) in [(1u128, 50usize), (2, 70)] {
            a.append(Uuid::from_u128(n), &BitBlock::from_bools(&vec![true; 8 * bytes])).unwrap();
        }
        assert_eq!(a.unused_runs().unwrap(), vec![(Uuid::from_u128(1), 0, 50), (Uuid::from_u128(2), 0, 70)]);
        // Five 16-byte API keys: three from block 1 (its 2-byte tail skipped), two from 2.
        let plan = crate::etsi::api_runs(&a.unused_runs().unwrap(), 16, 5).unwrap();
        assert_eq!(plan, vec![48, 32]);
        assert_eq!(crate::etsi::api_runs(&a.unused_runs().unwrap(), 16, 8), None);
        a.take(Purpose::Downstream, 10).unwrap();
        a.take(Purpose::SensorAuth, 10).unwrap(); // not announced: not in the uses
        let (_, _, k) = a.take(Purpose::Api, 16).unwrap();
        assert_eq!(crate::etsi::split_run(Uuid::from_u128(1), 20, &k, 8).len(), 2);
        a.take(Purpose::Downstream, 40).unwrap(); // skips block 1's 4-byte tail
        assert_eq!(a.unused_runs().unwrap(), vec![(Uuid::from_u128(2), 40, 30)]);
        let (n, uses) = recent_uses(&a, 8).unwrap();
        let got: Vec<(u8, u64, u64, u32)> =
            uses.iter().map(|u| (u.purpose, u.seq, u.offset, u.len)).collect();
        assert_eq!(n, 3);
        assert_eq!(
            got,
            vec![
                (Purpose::Downstream as u8, 1, 0, 10),
                (Purpose::Api as u8, 2, 20, 16),
                (Purpose::Downstream as u8, 3, 0, 40)
            ]
        );
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
