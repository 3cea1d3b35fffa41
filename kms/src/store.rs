//! The persistent key store: one redb file holding every ONU's key blocks and the ledger of
//! every byte taken from them.
//!
//! Why one embedded ACID file: a key byte must never be used twice and never lost silently,
//! across restarts and `kill -9`. Each operation below is one redb write transaction that
//! commits with [`Durability::Immediate`] (fsync) before the call returns, so the state on
//! disk is always either "before" or "after" the whole operation, never in between.
//!
//! Consumption model: each ONU has one cursor that walks its committed blocks in arrival
//! order. A consumption takes the next `n` bytes from the first block that still holds `n`
//! unused bytes; the shorter tails it passes over are recorded as *skipped*. Both ends feed
//! the same blocks in the same order and make the same requests in the same order, so they
//! take the same bytes with no negotiation. The ledger entry of a consumption is committed
//! in the same transaction that advances the cursor, and the bytes are handed out only after
//! that commit returns: a crash before the commit leaves the bytes unused and unseen, a crash
//! after it leaves them recorded as used (possibly never used by anyone, but never reused).
//!
//! Accounting: every usable byte ever appended is, at any instant, in exactly one of unused
//! (the level), consumed (per purpose), skipped or discarded, and each non-unused byte has a
//! ledger entry. Bits beyond the last whole byte of a block cannot be taken (consumption is
//! byte-granular) and are counted in [`Totals::unusable_bits`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qpon_qkd::{BitBlock, SecretBytes};
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    TableError, WriteTransaction,
};
use uuid::Uuid;

use crate::pool::{KeyPool, PoolError};

/// Format marker; its presence is what makes a redb file a qpon key store.
const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("qpon_kms_format");
/// Block ID → [`BlockMeta`] (owner ONU, order, length, cursor, state).
const BLOCKS: TableDefinition<u128, &[u8]> = TableDefinition::new("blocks");
/// Block ID → key bytes. Apart from the metadata so a consumption rewrites a few bytes only.
const KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("block_keys");
/// (ONU, arrival index) → block ID: the order both ends consume in.
const ORDER: TableDefinition<(u16, u64), u128> = TableDefinition::new("block_order");
/// (ONU, entry index) → [`LedgerEntry`].
const LEDGER: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("ledger");
/// ONU → [`OnuMeta`] (counters kept in step with the other tables in every transaction).
const ONUS: TableDefinition<u16, &[u8]> = TableDefinition::new("onus");

const FORMAT_KEY: &str = "version";
const FORMAT_VERSION: u32 = 1;

/// Namespace of the UUID v5 key IDs; fixed forever, or the two ends' key IDs would differ.
const KEY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_57e2_93b4_4f0d_8e21_0c5a_d3f7_b914);

/// The ETSI GS QKD 014 key ID of slice `slice` of block `block`.
///
/// A UUID v5 (SHA-1 name-based) of the block ID and the slice index, so the OLT and the ONU
/// compute the same ID from what they already agree on, without exchanging it.
pub fn key_id(block: Uuid, slice: u64) -> Uuid {
    let mut name = [0u8; 24];
    name[..16].copy_from_slice(block.as_bytes());
    name[16..].copy_from_slice(&slice.to_be_bytes());
    Uuid::new_v5(&KEY_ID_NAMESPACE, &name)
}

/// Why the store refused or failed an operation, by who is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The environment: the file could not be created, opened or protected.
    #[error("key store file {path}: {source}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file exists but is not a qpon key store (another program's file, or garbage).
    #[error("{path} is not a qpon key store: {reason}")]
    NotAKeyStore {
        /// The store file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The file is a key store but a record in it does not decode; nothing was changed.
    #[error("key store is corrupt: {0}")]
    Corrupt(String),
    /// Another handle (this or another process) has the file open.
    #[error("key store {0} is already open")]
    Locked(PathBuf),
    /// The storage engine failed (I/O error, full disk…); the operation did not happen.
    #[error("key store database failed: {0}")]
    Database(#[source] redb::Error),
    /// The caller: a block with this ID is already stored (IDs are allocated once).
    #[error("block {0} is already in the store")]
    Duplicate(Uuid),
    /// The caller: no block with this ID in this ONU's pool.
    #[error("block {0} is not in this ONU's pool")]
    UnknownBlock(Uuid),
    /// The caller: a request that can never be met (e.g. zero bytes).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// Not enough key: no block holds `requested` unused bytes. Nothing was consumed;
    /// callers must fail closed (no fallback to clear or unauthenticated operation).
    #[error("key pool exhausted: {requested} bytes requested, {available} unused in the pool")]
    Exhausted {
        /// Bytes asked for.
        requested: u64,
        /// Unused bytes in the whole pool (possibly spread over blocks too short to serve).
        available: u64,
    },
}

impl StoreError {
    fn db(e: impl Into<redb::Error>) -> Self {
        StoreError::Database(e.into())
    }
}

impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        Self::db(e)
    }
}
impl From<TableError> for StoreError {
    fn from(e: TableError) -> Self {
        Self::db(e)
    }
}
impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> Self {
        Self::db(e)
    }
}
impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        Self::db(e)
    }
}
impl From<redb::SetDurabilityError> for StoreError {
    fn from(e: redb::SetDurabilityError) -> Self {
        Self::db(e)
    }
}

impl From<StoreError> for PoolError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(id) => PoolError::Duplicate(id),
            other => PoolError::Store(other.to_string()),
        }
    }
}

/// What a consumption is for; the ledger accounts each purpose separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Purpose {
    /// Wegman–Carter keys and pads of the classical channel between OLT and ONU.
    ClassicalAuth = 0,
    /// Downstream encryption keys (`mux`).
    Downstream = 1,
    /// Authentication of sensor / SCADA command streams.
    SensorAuth = 2,
    /// Keys delivered to applications through ETSI GS QKD 014.
    Api = 3,
}

impl Purpose {
    /// Every purpose, in code order (indexes [`Totals::consumed`]).
    pub const ALL: [Purpose; 4] =
        [Purpose::ClassicalAuth, Purpose::Downstream, Purpose::SensorAuth, Purpose::Api];

    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.get(usize::from(c)).copied()
    }
}

/// Why bytes left the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerKind {
    /// Handed to a caller for this purpose.
    Consumed(Purpose),
    /// Passed over: the tail of a block too short for the request that followed.
    Skipped,
    /// Unused bytes of a block discarded (e.g. the peer may lack it).
    Discarded,
}

impl LedgerKind {
    const SKIPPED: u8 = 0x10;
    const DISCARDED: u8 = 0x11;

    fn code(self) -> u8 {
        match self {
            LedgerKind::Consumed(p) => p as u8,
            LedgerKind::Skipped => Self::SKIPPED,
            LedgerKind::Discarded => Self::DISCARDED,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            Self::SKIPPED => Some(LedgerKind::Skipped),
            Self::DISCARDED => Some(LedgerKind::Discarded),
            c => Purpose::from_code(c).map(LedgerKind::Consumed),
        }
    }
}

/// One ledger entry: bytes `offset..offset + len` of `block` left the pool, for `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Position in this ONU's ledger (0, 1, 2, … with no gaps).
    pub seq: u64,
    /// Why the bytes left the pool.
    pub kind: LedgerKind,
    /// The block they came from.
    pub block: Uuid,
    /// First byte within the block.
    pub offset: u64,
    /// Number of bytes (may be 0 for a discard of an already used-up block).
    pub len: u64,
}

impl LedgerEntry {
    const LEN: usize = 1 + 16 + 8 + 8;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.kind.code();
        b[1..17].copy_from_slice(self.block.as_bytes());
        b[17..25].copy_from_slice(&self.offset.to_le_bytes());
        b[25..33].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(seq: u64, b: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("ledger entry {seq}"));
        if b.len() != Self::LEN {
            return Err(bad());
        }
        Ok(Self {
            seq,
            kind: LedgerKind::from_code(b[0]).ok_or_else(bad)?,
            block: Uuid::from_slice(&b[1..17]).map_err(|_| bad())?,
            offset: le_u64(&b[17..25]),
            len: le_u64(&b[25..33]),
        })
    }
}

/// Bytes taken from the pool. `Debug` shows the key's length only.
#[derive(Debug)]
pub struct Consumed {
    /// The block they came from.
    pub block: Uuid,
    /// First byte within the block (with the block, what the peer needs to find them).
    pub offset: u64,
    /// The key bytes, already recorded as consumed.
    pub key: SecretBytes,
}

/// Whether a block's unused bytes may still be consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// Usable.
    Committed,
    /// Withdrawn; its unused bytes were recorded as discarded and are never handed out.
    Discarded,
}

/// A block's bookkeeping, without its key bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Block ID.
    pub id: Uuid,
    /// Arrival index within its ONU's pool.
    pub seq: u64,
    /// Length in bits as appended.
    pub bits: u64,
    /// Bytes already consumed or skipped (the block's cursor).
    pub used_bytes: u64,
    /// Committed or discarded.
    pub state: BlockState,
}

impl BlockInfo {
    fn usable_bytes(&self) -> u64 {
        self.bits / 8
    }

    /// Unused bytes still available for consumption.
    pub fn remaining_bytes(&self) -> u64 {
        match self.state {
            BlockState::Committed => self.usable_bytes() - self.used_bytes,
            BlockState::Discarded => 0,
        }
    }
}

/// Encoded record behind [`BlockInfo`] (plus the owner ONU).
struct BlockMeta {
    onu: u16,
    info: BlockInfo,
}

impl BlockMeta {
    const LEN: usize = 2 + 8 + 8 + 8 + 1;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..2].copy_from_slice(&self.onu.to_le_bytes());
        b[2..10].copy_from_slice(&self.info.seq.to_le_bytes());
        b[10..18].copy_from_slice(&self.info.bits.to_le_bytes());
        b[18..26].copy_from_slice(&self.info.used_bytes.to_le_bytes());
        b[26] = match self.info.state {
            BlockState::Committed => 0,
            BlockState::Discarded => 1,
        };
        b
    }

    fn decode(id: Uuid, b: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("metadata of block {id}"));
        if b.len() != Self::LEN {
            return Err(bad());
        }
        let info = BlockInfo {
            id,
            seq: le_u64(&b[2..10]),
            bits: le_u64(&b[10..18]),
            used_bytes: le_u64(&b[18..26]),
            state: match b[26] {
                0 => BlockState::Committed,
                1 => BlockState::Discarded,
                _ => return Err(bad()),
            },
        };
        if info.used_bytes > info.usable_bytes() {
            return Err(bad());
        }
        Ok(Self { onu: u16::from_le_bytes([b[0], b[1]]), info })
    }
}

/// Per-ONU totals, for audits and metrics. All in bytes unless named otherwise.
///
/// Invariant (checked by the tests): `appended = level + Σ consumed + skipped + discarded`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Blocks appended.
    pub blocks: u64,
    /// Usable (whole) bytes ever appended.
    pub appended: u64,
    /// Bits beyond the last whole byte of their block; never consumable.
    pub unusable_bits: u64,
    /// Unused bytes (the level).
    pub level: u64,
    /// Consumed bytes per purpose, indexed like [`Purpose::ALL`].
    pub consumed: [u64; 4],
    /// Bytes passed over by the cursor.
    pub skipped: u64,
    /// Unused bytes of discarded blocks.
    pub discarded: u64,
}

impl Totals {
    /// Consumed bytes for one purpose.
    pub fn consumed_for(&self, p: Purpose) -> u64 {
        self.consumed[p as usize]
    }
}

/// Encoded per-ONU counters: totals plus the next indexes.
#[derive(Default)]
struct OnuMeta {
    next_block_seq: u64,
    /// No block before this arrival index has unused bytes (speeds up the cursor walk).
    head_seq: u64,
    next_ledger_seq: u64,
    totals: Totals,
}

impl OnuMeta {
    const WORDS: usize = 13;

    fn words(&self) -> [u64; Self::WORDS] {
        let t = &self.totals;
        [
            self.next_block_seq,
            self.head_seq,
            self.next_ledger_seq,
            t.blocks,
            t.appended,
            t.unusable_bits,
            t.level,
            t.consumed[0],
            t.consumed[1],
            t.consumed[2],
            t.consumed[3],
            t.skipped,
            t.discarded,
        ]
    }

    fn encode(&self) -> Vec<u8> {
        self.words().iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn decode(onu: u16, b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != Self::WORDS * 8 {
            return Err(StoreError::Corrupt(format!("counters of ONU {onu}")));
        }
        let w: Vec<u64> = b.chunks_exact(8).map(le_u64).collect();
        let m = Self {
            next_block_seq: w[0],
            head_seq: w[1],
            next_ledger_seq: w[2],
            totals: Totals {
                blocks: w[3],
                appended: w[4],
                unusable_bits: w[5],
                level: w[6],
                consumed: [w[7], w[8], w[9], w[10]],
                skipped: w[11],
                discarded: w[12],
            },
        };
        let t = &m.totals;
        let out = t.consumed.iter().try_fold(t.level, |a, &c| a.checked_add(c));
        let out = out.and_then(|a| a.checked_add(t.skipped)).and_then(|a| a.checked_add(t.discarded));
        if out != Some(t.appended) {
            return Err(StoreError::Corrupt(format!("counters of ONU {onu} do not balance")));
        }
        Ok(m)
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// The key store: one redb file shared by all ONUs' pools. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl core::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyStore({})", self.path.display())
    }
}

impl KeyStore {
    /// Opens the store at `path`, creating it (mode 0600 on Unix) if absent.
    ///
    /// An existing file's permissions are tightened to 0600, since it holds key material.
    /// A file that is not a redb database, or a redb database of another program, is
    /// refused with [`StoreError::NotAKeyStore`] and left unchanged.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| StoreError::Io { path: path.clone(), source };
        // Create the file ourselves so it never exists, even briefly, with a wider mode.
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            opts.mode(0o600);
            let f = opts.open(&path).map_err(io)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        #[cfg(not(unix))]
        opts.open(&path).map_err(io)?;

        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.clone()),
            // redb reports a wrong magic number as invalid data: the file is not ours.
            DatabaseError::Storage(StorageError::Io(source))
                if source.kind() != std::io::ErrorKind::InvalidData =>
            {
                io(source)
            }
            DatabaseError::Storage(other) => {
                StoreError::NotAKeyStore { path: path.clone(), reason: other.to_string() }
            }
            other => StoreError::NotAKeyStore { path: path.clone(), reason: other.to_string() },
        })?;
        Self::check_format(&db, &path)?;
        Ok(Self { db: Arc::new(db), path })
    }

    /// Marks a fresh database as a key store, or checks an existing one is ours.
    fn check_format(db: &Database, path: &Path) -> Result<(), StoreError> {
        let foreign = |reason: String| StoreError::NotAKeyStore { path: path.into(), reason };
        let txn = begin(db)?;
        {
            let had_tables = txn.list_tables()?.next().is_some();
            let mut fmt = txn.open_table(FORMAT)?;
            let version = fmt.get(FORMAT_KEY)?.map(|v| v.value());
            match version {
                Some(FORMAT_VERSION) => {}
                Some(v) => return Err(foreign(format!("format version {v}"))),
                None if had_tables => return Err(foreign("no qpon format marker".into())),
                None => {
                    fmt.insert(FORMAT_KEY, FORMAT_VERSION)?;
                }
            }
            // Create every table now, so readers never meet a missing one.
            txn.open_table(BLOCKS)?;
            txn.open_table(KEYS)?;
            txn.open_table(ORDER)?;
            txn.open_table(LEDGER)?;
            txn.open_table(ONUS)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// ONU `onu`'s pool. Several handles to one pool are safe: redb serialises writers.
    pub fn pool(&self, onu: u16) -> StorePool {
        StorePool { db: Arc::clone(&self.db), onu }
    }
}

/// A write transaction that is durable when its commit returns (fsync; redb's default,
/// made explicit because every guarantee of this module rests on it).
fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

fn load_meta(table: &impl ReadableTable<u16, &'static [u8]>, onu: u16) -> Result<OnuMeta, StoreError> {
    match table.get(onu)? {
        Some(v) => OnuMeta::decode(onu, v.value()),
        None => Ok(OnuMeta::default()),
    }
}

fn load_block(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: Uuid,
) -> Result<Option<BlockMeta>, StoreError> {
    match table.get(id.as_u128())? {
        Some(v) => BlockMeta::decode(id, v.value()).map(Some),
        None => Ok(None),
    }
}

/// One ONU's pool in a [`KeyStore`]. Every mutating call is durable before it returns `Ok`.
pub struct StorePool {
    db: Arc<Database>,
    onu: u16,
}

impl core::fmt::Debug for StorePool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "StorePool(ONU {})", self.onu)
    }
}

impl StorePool {
    /// The ONU this pool belongs to.
    pub fn onu(&self) -> u16 {
        self.onu
    }

    /// Appends a finished block at the end of the consumption order, durably.
    ///
    /// Block IDs are unique across the whole store (not just this ONU), since ETSI key IDs
    /// derive from them; a repeated ID is refused with [`StoreError::Duplicate`].
    pub fn append_block(&self, id: Uuid, key: &BitBlock) -> Result<(), StoreError> {
        let bits = key.len() as u64;
        let bytes = SecretBytes::new(key.to_bytes());
        let txn = begin(&self.db)?;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            if blocks.get(id.as_u128())?.is_some() {
                return Err(StoreError::Duplicate(id));
            }
            let mut onus = txn.open_table(ONUS)?;
            let mut meta = load_meta(&onus, self.onu)?;
            let info =
                BlockInfo { id, seq: meta.next_block_seq, bits, used_bytes: 0, state: BlockState::Committed };
            let block = BlockMeta { onu: self.onu, info };
            blocks.insert(id.as_u128(), block.encode().as_slice())?;
            txn.open_table(KEYS)?.insert(id.as_u128(), bytes.expose())?;
            txn.open_table(ORDER)?.insert((self.onu, info.seq), id.as_u128())?;
            meta.next_block_seq += 1;
            let t = &mut meta.totals;
            t.blocks += 1;
            t.appended += info.usable_bytes();
            t.level += info.usable_bytes();
            t.unusable_bits += bits % 8;
            onus.insert(self.onu, meta.encode().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Takes the next `bytes` key bytes for `purpose`.
    ///
    /// The consumption (and any tail skipped to reach a block long enough) is recorded in
    /// the ledger and committed durably *before* the bytes are returned, so a crash can
    /// lose the bytes but never hand them out twice. Fails closed with
    /// [`StoreError::Exhausted`], consuming nothing, when no block holds `bytes` unused bytes.
    pub fn consume(&self, purpose: Purpose, bytes: usize) -> Result<Consumed, StoreError> {
        if bytes == 0 {
            return Err(StoreError::InvalidRequest("zero-byte consumption"));
        }
        let want = bytes as u64;
        let txn = begin(&self.db)?;
        let consumed;
        {
            let mut onus = txn.open_table(ONUS)?;
            let mut meta = load_meta(&onus, self.onu)?;
            let exhausted = StoreError::Exhausted { requested: want, available: meta.totals.level };
            if meta.totals.level < want {
                return Err(exhausted);
            }
            let mut blocks = txn.open_table(BLOCKS)?;
            // Pass 1, read only: find the first block that can serve, noting what it passes.
            let mut passed = Vec::new();
            let mut target = None;
            {
                let order = txn.open_table(ORDER)?;
                for row in order.range((self.onu, meta.head_seq)..=(self.onu, u64::MAX))? {
                    let (_, id) = row?;
                    let id = Uuid::from_u128(id.value());
                    let block = load_block(&blocks, id)?
                        .ok_or_else(|| StoreError::Corrupt(format!("ordered block {id} missing")))?;
                    if block.info.remaining_bytes() >= want {
                        target = Some(block);
                        break;
                    }
                    passed.push(block);
                }
            }
            let Some(mut target) = target else {
                // Dropping the transaction aborts it: nothing skipped, nothing consumed.
                return Err(exhausted);
            };
            // Pass 2: record the skipped tails, then the consumption, in one transaction.
            let mut ledger = txn.open_table(LEDGER)?;
            let mut record = |meta: &mut OnuMeta, kind, block: Uuid, offset, len| {
                let e = LedgerEntry { seq: meta.next_ledger_seq, kind, block, offset, len };
                meta.next_ledger_seq += 1;
                ledger.insert((self.onu, e.seq), e.encode().as_slice()).map(|_| ())
            };
            for mut b in passed {
                let rem = b.info.remaining_bytes();
                if rem > 0 {
                    record(&mut meta, LedgerKind::Skipped, b.info.id, b.info.used_bytes, rem)?;
                    b.info.used_bytes += rem;
                    meta.totals.skipped += rem;
                    meta.totals.level -= rem;
                    blocks.insert(b.info.id.as_u128(), b.encode().as_slice())?;
                }
            }
            let (id, offset) = (target.info.id, target.info.used_bytes);
            let key = {
                let keys = txn.open_table(KEYS)?;
                let stored = keys
                    .get(id.as_u128())?
                    .ok_or_else(|| StoreError::Corrupt(format!("key bytes of block {id} missing")))?;
                let all = stored.value();
                let range = usize::try_from(offset).ok().and_then(|o| all.get(o..o.checked_add(bytes)?));
                let range =
                    range.ok_or_else(|| StoreError::Corrupt(format!("key bytes of block {id} short")))?;
                SecretBytes::from_slice(range)
            };
            record(&mut meta, LedgerKind::Consumed(purpose), id, offset, want)?;
            target.info.used_bytes += want;
            blocks.insert(id.as_u128(), target.encode().as_slice())?;
            meta.totals.consumed[purpose as usize] += want;
            meta.totals.level -= want;
            meta.head_seq = target.info.seq;
            onus.insert(self.onu, meta.encode().as_slice())?;
            consumed = Consumed { block: id, offset, key };
        }
        txn.commit()?;
        Ok(consumed)
    }

    /// Withdraws block `id`: its unused bytes are recorded as discarded and never handed
    /// out. Returns how many bytes that was; discarding a block again records nothing and
    /// returns 0.
    pub fn discard(&self, id: Uuid) -> Result<u64, StoreError> {
        let txn = begin(&self.db)?;
        let rem;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            let mut block = match load_block(&blocks, id)? {
                Some(b) if b.onu == self.onu => b,
                _ => return Err(StoreError::UnknownBlock(id)),
            };
            if block.info.state == BlockState::Discarded {
                return Ok(0);
            }
            let mut onus = txn.open_table(ONUS)?;
            let mut meta = load_meta(&onus, self.onu)?;
            rem = block.info.remaining_bytes();
            let e = LedgerEntry {
                seq: meta.next_ledger_seq,
                kind: LedgerKind::Discarded,
                block: id,
                offset: block.info.used_bytes,
                len: rem,
            };
            txn.open_table(LEDGER)?.insert((self.onu, e.seq), e.encode().as_slice())?;
            meta.next_ledger_seq += 1;
            meta.totals.discarded += rem;
            meta.totals.level -= rem;
            block.info.state = BlockState::Discarded;
            blocks.insert(id.as_u128(), block.encode().as_slice())?;
            onus.insert(self.onu, meta.encode().as_slice())?;
        }
        txn.commit()?;
        Ok(rem)
    }

    /// Every ledger entry of this ONU, in order (a snapshot, for audits).
    pub fn ledger(&self) -> Result<impl Iterator<Item = LedgerEntry> + use<>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEDGER)?;
        let mut out = Vec::new();
        for row in table.range((self.onu, 0)..=(self.onu, u64::MAX))? {
            let (k, v) = row?;
            out.push(LedgerEntry::decode(k.value().1, v.value())?);
        }
        Ok(out.into_iter())
    }

    /// This ONU's blocks in consumption order, without key bytes.
    pub fn block_infos(&self) -> Result<Vec<BlockInfo>, StoreError> {
        let txn = self.db.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let blocks = txn.open_table(BLOCKS)?;
        let mut out = Vec::new();
        for row in order.range((self.onu, 0)..=(self.onu, u64::MAX))? {
            let id = Uuid::from_u128(row?.1.value());
            let b = load_block(&blocks, id)?
                .ok_or_else(|| StoreError::Corrupt(format!("ordered block {id} missing")))?;
            out.push(b.info);
        }
        Ok(out)
    }

    /// This ONU's totals (consistent snapshot).
    pub fn totals(&self) -> Result<Totals, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(load_meta(&txn.open_table(ONUS)?, self.onu)?.totals)
    }

    /// Unused key bits, or the store's error ([`KeyPool::level_bits`] reports 0 instead).
    pub fn try_level_bits(&self) -> Result<u64, StoreError> {
        Ok(self.totals()?.level * 8)
    }
}

impl KeyPool for StorePool {
    fn append(&mut self, id: Uuid, key: &BitBlock) -> Result<(), PoolError> {
        Ok(self.append_block(id, key)?)
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

#[cfg(test)]
mod tests;
