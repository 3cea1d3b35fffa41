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
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError, Table,
    TableDefinition, TableError, WriteTransaction,
};
use uuid::Uuid;

use crate::pool::PoolError;

mod auth_ledger;
mod seal;

pub use auth_ledger::StoreAuthLedger;
use seal::{Cipher, ValueKind};
pub use seal::{KEK_ENV, Kek, KekError};

/// Format marker; its presence is what makes a redb file a qpon key store.
const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("qpon_kms_format");
/// Block ID → [`BlockMeta`] (owner ONU, order, length, cursor, state).
const BLOCKS: TableDefinition<u128, &[u8]> = TableDefinition::new("blocks");
/// Block ID → key bytes (sealed when the store is encrypted). Apart from the metadata so a
/// consumption rewrites a few bytes only. Deleted when the block is discarded.
const KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("block_keys");
/// Block ID → the block's authentication share (sealed when the store is encrypted); absent
/// for blocks without one. Deleted when the block is discarded.
const SHARES: TableDefinition<u128, &[u8]> = TableDefinition::new("block_auth_shares");
/// Encryption parameters of an encrypted store: [`SALT_KEY`] and [`CHECK_KEY`].
const CRYPTO: TableDefinition<&str, &[u8]> = TableDefinition::new("qpon_kms_crypto");
/// (ONU, arrival index) → block ID: the order both ends consume in.
const ORDER: TableDefinition<(u16, u64), u128> = TableDefinition::new("block_order");
/// (ONU, entry index) → [`LedgerEntry`].
const LEDGER: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("ledger");
/// ONU → [`OnuMeta`] (counters kept in step with the other tables in every transaction).
const ONUS: TableDefinition<u16, &[u8]> = TableDefinition::new("onus");
/// ETSI key ID → the ONU it was delivered for: keys handed to an application through
/// `dec_keys` (a key is delivered once per side; the OLT side delivers at consumption).
const DELIVERED: TableDefinition<u128, u16> = TableDefinition::new("api_delivered");

const FORMAT_KEY: &str = "version";
const FORMAT_VERSION: u32 = 1;
/// Format entry: 1 if key bytes and shares are sealed under a KEK, 0 (or absent, for stores
/// made before encryption existed) if not. Fixed at creation.
const ENCRYPTED_KEY: &str = "encrypted";
const SALT_KEY: &str = "salt";
const CHECK_KEY: &str = "kek_check";

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
    /// The caller: the block was discarded, so it can no longer be committed.
    #[error("block {0} was discarded")]
    BlockDiscarded(Uuid),
    /// The store is encrypted and was opened without a KEK.
    #[error("key store is encrypted: a KEK is required")]
    KekRequired,
    /// The KEK given is not the one the store was created with.
    #[error("wrong KEK for this key store")]
    WrongKek,
    /// A KEK was given but the store was created unencrypted (it is never mixed).
    #[error("key store is not encrypted but a KEK was given")]
    NotEncrypted,
    /// Not enough key: no block holds `requested` unused bytes. Nothing was consumed;
    /// callers must fail closed (no fallback to clear or unauthenticated operation).
    #[error("key pool exhausted: {requested} bytes requested, {available} unused in the pool")]
    Exhausted {
        /// Bytes asked for.
        requested: u64,
        /// Unused bytes in the whole pool (possibly spread over blocks too short to serve).
        available: u64,
    },
    /// A mirrored consumption ([`StorePool::consume_at`]) named other bytes than this
    /// pool's cursor would take: the two ends' pools have diverged. Nothing was consumed.
    #[error(
        "pool cursor diverged: peer consumed {expected_block}@{expected_offset}, here the next bytes are {found}"
    )]
    CursorDiverged {
        /// The block the peer named.
        expected_block: Uuid,
        /// The offset the peer named.
        expected_offset: u64,
        /// Where this pool's cursor is (`block@offset`, or `none`).
        found: String,
    },
    /// The caller: this key was already delivered (a key is delivered once per side).
    #[error("key {0} was already delivered")]
    AlreadyDelivered(Uuid),
    /// The caller: these bytes were never consumed from this pool (or their block was
    /// discarded), so they cannot be read back.
    #[error("bytes {block}@{offset}+{len} were not consumed from this pool")]
    NotConsumed {
        /// The block named.
        block: Uuid,
        /// First byte named.
        offset: u64,
        /// Bytes named.
        len: u64,
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
            StoreError::Exhausted { requested, available } => PoolError::Exhausted { requested, available },
            StoreError::CursorDiverged { expected_block, expected_offset, found } => {
                PoolError::CursorDiverged { block: expected_block, offset: expected_offset, found }
            }
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

    /// The purposes the OLT decides and announces to the ONU as pool uses (the ONU mirrors
    /// them in the same order): downstream keys and keys delivered through the API.
    /// Classical-channel pads follow the sessions' own schedule and sensor pads their
    /// control station's reservations, so neither is announced.
    pub const MIRRORED: [Purpose; 2] = [Purpose::Downstream, Purpose::Api];

    /// The purpose with code `c` (its `as u8` value), if any.
    pub fn from_code(c: u8) -> Option<Self> {
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
    /// Stored, with its place in the consumption order fixed, but not yet agreed with the
    /// peer: not consumable, not in the level (counted in [`Totals::provisional`]) until
    /// [`StorePool::commit_block`] or a discard.
    Provisional,
}

impl BlockState {
    fn code(self) -> u8 {
        match self {
            BlockState::Committed => 0,
            BlockState::Discarded => 1,
            BlockState::Provisional => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(BlockState::Committed),
            1 => Some(BlockState::Discarded),
            2 => Some(BlockState::Provisional),
            _ => None,
        }
    }
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
    /// Committed, provisional or discarded.
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
            BlockState::Discarded | BlockState::Provisional => 0,
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
        b[26] = self.info.state.code();
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
            state: BlockState::from_code(b[26]).ok_or_else(bad)?,
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
/// Provisional blocks are outside it: their bytes are counted in `provisional` only, and
/// enter `appended` (and `blocks`, `unusable_bits`) when they are committed or discarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Blocks appended (committed, or discarded after being provisional).
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
    /// Usable bytes of provisional blocks (not in `appended` until committed or discarded).
    pub provisional: u64,
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
    /// Words in the current encoding; records written before provisional blocks existed
    /// have one fewer (no `provisional` word) and are still read.
    const WORDS: usize = 14;

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
            t.provisional,
        ]
    }

    fn encode(&self) -> Vec<u8> {
        self.words().iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn decode(onu: u16, b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != Self::WORDS * 8 && b.len() != (Self::WORDS - 1) * 8 {
            return Err(StoreError::Corrupt(format!("counters of ONU {onu}")));
        }
        let mut w: Vec<u64> = b.chunks_exact(8).map(le_u64).collect();
        w.resize(Self::WORDS, 0);
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
                provisional: w[13],
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

/// Options of [`KeyStore::open_with`].
#[derive(Debug, Default)]
pub struct StoreOptions {
    /// Key-encryption key. With one, a new store is created encrypted (key bytes and
    /// authentication shares sealed with AES-256-GCM); an existing store must have been
    /// created the same way ([`StoreError::KekRequired`], [`StoreError::WrongKek`],
    /// [`StoreError::NotEncrypted`] otherwise). `None`: an unencrypted store.
    pub kek: Option<Kek>,
}

/// The key store: one redb file shared by all ONUs' pools. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    db: Arc<Database>,
    path: PathBuf,
    cipher: Option<Arc<Cipher>>,
}

impl core::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyStore({})", self.path.display())
    }
}

impl KeyStore {
    /// Opens the unencrypted store at `path`, creating it (mode 0600 on Unix) if absent.
    ///
    /// An existing file's permissions are tightened to 0600, since it holds key material.
    /// A file that is not a redb database, or a redb database of another program, is
    /// refused with [`StoreError::NotAKeyStore`] and left unchanged. An encrypted store is
    /// refused with [`StoreError::KekRequired`]. Same as [`KeyStore::open_with`] with
    /// default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) the store at `path` with `options`; see [`KeyStore::open`] and
    /// [`StoreOptions`]. Whether a store is encrypted is fixed when it is created.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
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
        let cipher = Self::check_format(&db, &path, options.kek.as_ref())?;
        Ok(Self { db: Arc::new(db), path, cipher: cipher.map(Arc::new) })
    }

    /// Marks a fresh database as a key store (encrypted if `kek` is given), or checks an
    /// existing one is ours and that `kek` matches how it was created.
    fn check_format(db: &Database, path: &Path, kek: Option<&Kek>) -> Result<Option<Cipher>, StoreError> {
        let foreign = |reason: String| StoreError::NotAKeyStore { path: path.into(), reason };
        let txn = begin(db)?;
        let cipher;
        {
            let had_tables = txn.list_tables()?.next().is_some();
            let mut fmt = txn.open_table(FORMAT)?;
            let version = fmt.get(FORMAT_KEY)?.map(|v| v.value());
            let mut crypto = txn.open_table(CRYPTO)?;
            match version {
                Some(FORMAT_VERSION) => {
                    let encrypted = fmt.get(ENCRYPTED_KEY)?.map(|v| v.value()).unwrap_or(0);
                    cipher = match (encrypted, kek) {
                        (0, None) => None,
                        (0, Some(_)) => return Err(StoreError::NotEncrypted),
                        (1, None) => return Err(StoreError::KekRequired),
                        (1, Some(kek)) => {
                            let get = |k| -> Result<Vec<u8>, StoreError> {
                                crypto.get(k)?.map(|v| v.value().to_vec()).ok_or_else(|| {
                                    StoreError::Corrupt(format!("encryption parameter {k} missing"))
                                })
                            };
                            let c = Cipher::derive(kek, &get(SALT_KEY)?)?;
                            if !c.verify_check(&get(CHECK_KEY)?) {
                                return Err(StoreError::WrongKek);
                            }
                            Some(c)
                        }
                        (v, _) => return Err(StoreError::Corrupt(format!("encryption flag {v}"))),
                    };
                }
                Some(v) => return Err(foreign(format!("format version {v}"))),
                None if had_tables => return Err(foreign("no qpon format marker".into())),
                None => {
                    fmt.insert(FORMAT_KEY, FORMAT_VERSION)?;
                    fmt.insert(ENCRYPTED_KEY, u32::from(kek.is_some()))?;
                    cipher = match kek {
                        Some(kek) => {
                            let salt = Cipher::new_salt()?;
                            let c = Cipher::derive(kek, &salt)?;
                            crypto.insert(SALT_KEY, salt.as_slice())?;
                            crypto.insert(CHECK_KEY, c.check_value()?.as_slice())?;
                            Some(c)
                        }
                        None => None,
                    };
                }
            }
            // Create every table now, so readers never meet a missing one.
            txn.open_table(BLOCKS)?;
            txn.open_table(KEYS)?;
            txn.open_table(SHARES)?;
            txn.open_table(ORDER)?;
            txn.open_table(LEDGER)?;
            txn.open_table(DELIVERED)?;
            txn.open_table(ONUS)?;
            auth_ledger::create_tables(&txn)?;
        }
        txn.commit()?;
        Ok(cipher)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether key bytes and authentication shares are sealed under a KEK.
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// ONU `onu`'s pool. Several handles to one pool are safe: redb serialises writers.
    pub fn pool(&self, onu: u16) -> StorePool {
        StorePool { db: Arc::clone(&self.db), cipher: self.cipher.clone(), onu }
    }

    /// The persistent pad ledger of the classical channel, in this store.
    pub fn auth_ledger(&self) -> StoreAuthLedger {
        StoreAuthLedger::new(self)
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

fn ordered_block(table: &impl ReadableTable<u128, &'static [u8]>, id: Uuid) -> Result<BlockMeta, StoreError> {
    load_block(table, id)?.ok_or_else(|| StoreError::Corrupt(format!("ordered block {id} missing")))
}

/// `a - b` on counters, a corrupt-store error instead of wrapping.
fn sub(a: u64, b: u64, what: &str) -> Result<u64, StoreError> {
    a.checked_sub(b).ok_or_else(|| StoreError::Corrupt(format!("{what} counter would go negative")))
}

/// Opens a stored value (a copy; unsealed when the store is encrypted).
fn open_value(
    cipher: Option<&Cipher>,
    block: &BlockMeta,
    kind: ValueKind,
    stored: &[u8],
) -> Result<SecretBytes, StoreError> {
    match cipher {
        None => Ok(SecretBytes::from_slice(stored)),
        Some(c) => c.open(block.onu, block.info.seq, block.info.id, kind, stored),
    }
}

/// The tables and counters of one ONU inside one write transaction.
struct Tx<'t> {
    onu: u16,
    cipher: Option<&'t Cipher>,
    blocks: Table<'t, u128, &'static [u8]>,
    keys: Table<'t, u128, &'static [u8]>,
    shares: Table<'t, u128, &'static [u8]>,
    order: Table<'t, (u16, u64), u128>,
    ledger: Table<'t, (u16, u64), &'static [u8]>,
    onus: Table<'t, u16, &'static [u8]>,
    meta: OnuMeta,
}

impl Tx<'_> {
    /// Block `id` of this ONU, or [`StoreError::UnknownBlock`].
    fn block(&self, id: Uuid) -> Result<BlockMeta, StoreError> {
        match load_block(&self.blocks, id)? {
            Some(b) if b.onu == self.onu => Ok(b),
            _ => Err(StoreError::UnknownBlock(id)),
        }
    }

    fn put_block(&mut self, b: &BlockMeta) -> Result<(), StoreError> {
        self.blocks.insert(b.info.id.as_u128(), b.encode().as_slice())?;
        Ok(())
    }

    fn record(&mut self, kind: LedgerKind, block: Uuid, offset: u64, len: u64) -> Result<(), StoreError> {
        let e = LedgerEntry { seq: self.meta.next_ledger_seq, kind, block, offset, len };
        self.ledger.insert((self.onu, e.seq), e.encode().as_slice())?;
        self.meta.next_ledger_seq += 1;
        Ok(())
    }

    fn seal(&self, b: &BlockMeta, kind: ValueKind, plain: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.cipher.map(|c| c.seal(self.onu, b.info.seq, b.info.id, kind, plain)).transpose()
    }

    /// Stores a new provisional block at the end of the order.
    fn insert_provisional(
        &mut self,
        id: Uuid,
        key: &BitBlock,
        share: &[u8],
    ) -> Result<BlockMeta, StoreError> {
        if self.blocks.get(id.as_u128())?.is_some() {
            return Err(StoreError::Duplicate(id));
        }
        let bits = key.len() as u64;
        let info = BlockInfo {
            id,
            seq: self.meta.next_block_seq,
            bits,
            used_bytes: 0,
            state: BlockState::Provisional,
        };
        let block = BlockMeta { onu: self.onu, info };
        self.put_block(&block)?;
        let bytes = SecretBytes::new(key.to_bytes());
        match self.seal(&block, ValueKind::Key, bytes.expose())? {
            Some(sealed) => self.keys.insert(id.as_u128(), sealed.as_slice())?,
            None => self.keys.insert(id.as_u128(), bytes.expose())?,
        };
        if !share.is_empty() {
            match self.seal(&block, ValueKind::Share, share)? {
                Some(sealed) => self.shares.insert(id.as_u128(), sealed.as_slice())?,
                None => self.shares.insert(id.as_u128(), share)?,
            };
        }
        self.order.insert((self.onu, info.seq), id.as_u128())?;
        self.meta.next_block_seq += 1;
        self.meta.totals.provisional += info.usable_bytes();
        Ok(block)
    }

    /// Provisional → Committed; no-op on a committed block.
    fn commit(&mut self, mut b: BlockMeta) -> Result<(), StoreError> {
        match b.info.state {
            BlockState::Committed => return Ok(()),
            BlockState::Discarded => return Err(StoreError::BlockDiscarded(b.info.id)),
            BlockState::Provisional => {}
        }
        let usable = b.info.usable_bytes();
        let t = &mut self.meta.totals;
        t.provisional = sub(t.provisional, usable, "provisional")?;
        t.blocks += 1;
        t.appended += usable;
        t.level += usable;
        t.unusable_bits += b.info.bits % 8;
        b.info.state = BlockState::Committed;
        // The block may lie before the cursor's hint (later blocks were committed and used
        // first): move the hint back so the cursor sees it.
        self.meta.head_seq = self.meta.head_seq.min(b.info.seq);
        self.put_block(&b)
    }

    /// Discards `b` (see [`StorePool::discard`]); returns the bytes recorded as discarded.
    fn discard(&mut self, mut b: BlockMeta) -> Result<u64, StoreError> {
        let id = b.info.id;
        let t = &mut self.meta.totals;
        let (offset, len) = match b.info.state {
            BlockState::Discarded => return Ok(0),
            BlockState::Committed => {
                let rem = b.info.remaining_bytes();
                t.level = sub(t.level, rem, "level")?;
                t.discarded += rem;
                (b.info.used_bytes, rem)
            }
            BlockState::Provisional => {
                let usable = b.info.usable_bytes();
                t.provisional = sub(t.provisional, usable, "provisional")?;
                t.blocks += 1;
                t.appended += usable;
                t.unusable_bits += b.info.bits % 8;
                t.discarded += usable;
                (0, usable)
            }
        };
        self.record(LedgerKind::Discarded, id, offset, len)?;
        b.info.state = BlockState::Discarded;
        self.put_block(&b)?;
        // Hygiene: the bytes can never be handed out again, so they need not be kept.
        self.keys.remove(id.as_u128())?;
        self.shares.remove(id.as_u128())?;
        Ok(len)
    }

    /// This ONU's block IDs from arrival index `from` on, in order.
    fn ids_from(&self, from: u64) -> Result<Vec<Uuid>, StoreError> {
        let mut out = Vec::new();
        for row in self.order.range((self.onu, from)..=(self.onu, u64::MAX))? {
            out.push(Uuid::from_u128(row?.1.value()));
        }
        Ok(out)
    }

    /// One consumption (see [`StorePool::consume`]), inside this transaction.
    fn consume(&mut self, purpose: Purpose, bytes: usize) -> Result<Consumed, StoreError> {
        self.consume_checked(purpose, bytes, None)
    }

    /// One consumption; with `expect`, refused (the caller drops the transaction) unless
    /// the cursor takes exactly from that block and offset.
    fn consume_checked(
        &mut self,
        purpose: Purpose,
        bytes: usize,
        expect: Option<(Uuid, u64)>,
    ) -> Result<Consumed, StoreError> {
        if bytes == 0 {
            return Err(StoreError::InvalidRequest("zero-byte consumption"));
        }
        let want = bytes as u64;
        let exhausted = StoreError::Exhausted { requested: want, available: self.meta.totals.level };
        if self.meta.totals.level < want {
            return Err(exhausted);
        }
        // Pass 1, read only: find the first block that can serve, noting what it passes.
        let mut passed = Vec::new();
        let mut target = None;
        for row in self.order.range((self.onu, self.meta.head_seq)..=(self.onu, u64::MAX))? {
            let block = ordered_block(&self.blocks, Uuid::from_u128(row?.1.value()))?;
            if block.info.remaining_bytes() >= want {
                target = Some(block);
                break;
            }
            passed.push(block);
        }
        let Some(mut target) = target else {
            // The caller drops the transaction: nothing skipped, nothing consumed.
            return Err(exhausted);
        };
        if let Some((block, offset)) = expect
            && (target.info.id, target.info.used_bytes) != (block, offset)
        {
            return Err(StoreError::CursorDiverged {
                expected_block: block,
                expected_offset: offset,
                found: format!("{}@{}", target.info.id, target.info.used_bytes),
            });
        }
        // Pass 2: record the skipped tails, then the consumption.
        for mut b in passed {
            let rem = b.info.remaining_bytes();
            if rem > 0 {
                self.record(LedgerKind::Skipped, b.info.id, b.info.used_bytes, rem)?;
                b.info.used_bytes += rem;
                self.meta.totals.skipped += rem;
                self.meta.totals.level -= rem;
                self.put_block(&b)?;
            }
        }
        let (id, offset) = (target.info.id, target.info.used_bytes);
        let key = {
            let stored = self
                .keys
                .get(id.as_u128())?
                .ok_or_else(|| StoreError::Corrupt(format!("key bytes of block {id} missing")))?;
            let slice = |all: &[u8]| {
                let range = usize::try_from(offset).ok().and_then(|o| all.get(o..o.checked_add(bytes)?));
                range
                    .map(SecretBytes::from_slice)
                    .ok_or_else(|| StoreError::Corrupt(format!("key bytes of block {id} short")))
            };
            match self.cipher {
                None => slice(stored.value())?,
                Some(c) => {
                    slice(c.open(self.onu, target.info.seq, id, ValueKind::Key, stored.value())?.expose())?
                }
            }
        };
        self.record(LedgerKind::Consumed(purpose), id, offset, want)?;
        target.info.used_bytes += want;
        self.put_block(&target)?;
        self.meta.totals.consumed[purpose as usize] += want;
        self.meta.totals.level -= want;
        self.meta.head_seq = target.info.seq;
        Ok(Consumed { block: id, offset, key })
    }
}

/// One ONU's pool in a [`KeyStore`]. Every mutating call is one write transaction, durable
/// before it returns `Ok`; on `Err` nothing changed.
///
/// Blocks enter the pool either committed at once ([`StorePool::append_block`]) or
/// provisional ([`StorePool::append_provisional`]) and later committed
/// ([`StorePool::commit_block`]) or discarded. Either way a block's place in the consumption
/// order is its arrival. The cursor takes from the first block *in that order* that is
/// committed and holds enough unused bytes; provisional blocks are passed over without
/// being skipped (they hold nothing usable yet), and a provisional block committed after
/// later blocks were used is served again from its place in the order.
pub struct StorePool {
    db: Arc<Database>,
    cipher: Option<Arc<Cipher>>,
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

    /// Runs `f` in one durable write transaction; commits if it returns `Ok`, aborts
    /// (changing nothing) otherwise. The ONU's counters are written back on success.
    fn write<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let txn = begin(&self.db)?;
        let r = {
            let onus = txn.open_table(ONUS)?;
            let meta = load_meta(&onus, self.onu)?;
            let mut tx = Tx {
                onu: self.onu,
                cipher: self.cipher.as_deref(),
                blocks: txn.open_table(BLOCKS)?,
                keys: txn.open_table(KEYS)?,
                shares: txn.open_table(SHARES)?,
                order: txn.open_table(ORDER)?,
                ledger: txn.open_table(LEDGER)?,
                onus,
                meta,
            };
            let r = f(&mut tx)?;
            let meta = tx.meta.encode();
            tx.onus.insert(self.onu, meta.as_slice())?;
            r
        };
        txn.commit()?;
        Ok(r)
    }

    /// Appends a finished, agreed block at the end of the consumption order, committed,
    /// durably (a provisional append and its commit in one transaction, with no
    /// authentication share).
    ///
    /// Block IDs are unique across the whole store (not just this ONU), since ETSI key IDs
    /// derive from them; a repeated ID is refused with [`StoreError::Duplicate`].
    pub fn append_block(&self, id: Uuid, key: &BitBlock) -> Result<(), StoreError> {
        self.write(|tx| {
            let b = tx.insert_provisional(id, key, &[])?;
            tx.commit(b)
        })
    }

    /// Stores block `id` *provisional*: its key bytes and its authentication share `share`
    /// (may be empty) are durable and its place in the consumption order is fixed, but it
    /// is not consumable and not in the level until [`StorePool::commit_block`]. Its usable
    /// bytes are counted in [`Totals::provisional`]. [`StoreError::Duplicate`] if the ID is
    /// anywhere in the store.
    pub fn append_provisional(&self, id: Uuid, key: &BitBlock, share: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| tx.insert_provisional(id, key, share).map(|_| ()))
    }

    /// Commits provisional block `id`: its bytes become consumable (added to `appended` and
    /// the level). `Ok` without change if it is already committed;
    /// [`StoreError::BlockDiscarded`] if it was discarded, [`StoreError::UnknownBlock`] if
    /// it is not this ONU's.
    pub fn commit_block(&self, id: Uuid) -> Result<(), StoreError> {
        self.write(|tx| {
            let b = tx.block(id)?;
            tx.commit(b)
        })
    }

    /// Takes the next `bytes` key bytes for `purpose`.
    ///
    /// The consumption (and any tail skipped to reach a block long enough) is recorded in
    /// the ledger and committed durably *before* the bytes are returned, so a crash can
    /// lose the bytes but never hand them out twice. Fails closed with
    /// [`StoreError::Exhausted`], consuming nothing, when no block holds `bytes` unused bytes.
    pub fn consume(&self, purpose: Purpose, bytes: usize) -> Result<Consumed, StoreError> {
        self.write(|tx| tx.consume(purpose, bytes))
    }

    /// A mirrored consumption: takes the next `bytes` key bytes for `purpose` exactly like
    /// [`StorePool::consume`], but only if the cursor takes them from `block` at `offset`
    /// (where the peer's identical pool took them). Otherwise nothing is consumed or
    /// skipped and the error is [`StoreError::CursorDiverged`] (or
    /// [`StoreError::Exhausted`] when nothing could be served at all).
    pub fn consume_at(
        &self,
        purpose: Purpose,
        block: Uuid,
        offset: u64,
        bytes: usize,
    ) -> Result<SecretBytes, StoreError> {
        let block_known = self.write(|tx| tx.consume_checked(purpose, bytes, Some((block, offset))));
        match block_known {
            Ok(c) => Ok(c.key),
            Err(StoreError::Exhausted { .. }) => Err(StoreError::CursorDiverged {
                expected_block: block,
                expected_offset: offset,
                found: "none".into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Consumptions recorded for `purpose` (ledger entries), in order: (block, offset,
    /// length) each. The number of them is how many times the pool was consumed for it.
    pub fn consumptions(&self, purpose: Purpose) -> Result<Vec<(Uuid, u64, u64)>, StoreError> {
        Ok(self.consumptions_of(&[purpose])?.into_iter().map(|(_, b, o, l)| (b, o, l)).collect())
    }

    /// Consumptions for any of `purposes`, in ledger order: (purpose, block, offset, length).
    pub fn consumptions_of(
        &self,
        purposes: &[Purpose],
    ) -> Result<Vec<(Purpose, Uuid, u64, u64)>, StoreError> {
        Ok(self
            .ledger()?
            .filter_map(|e| match e.kind {
                LedgerKind::Consumed(p) if purposes.contains(&p) => Some((p, e.block, e.offset, e.len)),
                _ => None,
            })
            .collect())
    }

    /// `count` consumptions of `bytes_each` bytes for `purpose`: exactly what `count`
    /// consecutive [`StorePool::consume`] calls would take and record, but in one
    /// transaction (one fsync). All or nothing: if any of them cannot be served, nothing is
    /// consumed and the error is [`StoreError::Exhausted`] with `requested` = the total
    /// `bytes_each × count` and `available` = the level before the call. `count == 0`
    /// returns an empty vector without touching the store.
    pub fn consume_many(
        &self,
        purpose: Purpose,
        bytes_each: usize,
        count: usize,
    ) -> Result<Vec<Consumed>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let level = tx.meta.totals.level;
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                match tx.consume(purpose, bytes_each) {
                    Ok(c) => out.push(c),
                    Err(StoreError::Exhausted { .. }) => {
                        let requested = (bytes_each as u64).saturating_mul(count as u64);
                        return Err(StoreError::Exhausted { requested, available: level });
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
    }

    /// Withdraws block `id` (committed or provisional): its unused bytes are recorded as
    /// discarded and never handed out. Returns how many bytes that was; discarding a block
    /// again records nothing and returns 0.
    ///
    /// A provisional block's usable bytes all count: `appended` and `discarded` grow by
    /// them (so the totals still balance) and `provisional` shrinks; its ledger entry has
    /// offset 0. Every discard deletes the block's key bytes and authentication share from
    /// the store; its metadata stays for audits.
    pub fn discard(&self, id: Uuid) -> Result<u64, StoreError> {
        self.write(|tx| {
            let b = tx.block(id)?;
            tx.discard(b)
        })
    }

    /// Discards, in one transaction, every not yet discarded block after `last` in this
    /// ONU's order (every block when `None`): a pool-sync rollback to the last block both
    /// ends agree on. Returns each block discarded with the state it had before, in order.
    /// [`StoreError::UnknownBlock`] (changing nothing) if `last` is not this ONU's block.
    pub fn discard_after(&self, last: Option<Uuid>) -> Result<Vec<(Uuid, BlockState)>, StoreError> {
        self.write(|tx| {
            let from = match last {
                Some(id) => tx.block(id)?.info.seq.saturating_add(1),
                None => 0,
            };
            let mut out = Vec::new();
            for id in tx.ids_from(from)? {
                let b = ordered_block(&tx.blocks, id)?;
                let state = b.info.state;
                if state != BlockState::Discarded {
                    tx.discard(b)?;
                    out.push((id, state));
                }
            }
            Ok(out)
        })
    }

    /// Discards every provisional block of this ONU in one transaction; returns their IDs
    /// in order.
    pub fn discard_provisional(&self) -> Result<Vec<Uuid>, StoreError> {
        self.write(|tx| {
            let mut out = Vec::new();
            for id in tx.ids_from(0)? {
                let b = ordered_block(&tx.blocks, id)?;
                if b.info.state == BlockState::Provisional {
                    tx.discard(b)?;
                    out.push(id);
                }
            }
            Ok(out)
        })
    }

    /// The last block in this ONU's order whose state is committed (later provisional or
    /// discarded blocks are ignored); `None` if there is none.
    pub fn last_committed(&self) -> Result<Option<Uuid>, StoreError> {
        let txn = self.db.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let blocks = txn.open_table(BLOCKS)?;
        for row in order.range((self.onu, 0)..=(self.onu, u64::MAX))?.rev() {
            let b = ordered_block(&blocks, Uuid::from_u128(row?.1.value()))?;
            if b.info.state == BlockState::Committed {
                return Ok(Some(b.info.id));
            }
        }
        Ok(None)
    }

    /// The authentication shares of all committed blocks, in consumption order, one entry
    /// per committed block: blocks stored without a share (e.g. by
    /// [`StorePool::append_block`]) give an *empty* entry, so entries line up with the
    /// committed blocks of [`StorePool::block_infos`]. Provisional and discarded blocks
    /// give nothing (a discard deletes the share).
    pub fn auth_shares(&self) -> Result<Vec<SecretBytes>, StoreError> {
        let txn = self.db.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let blocks = txn.open_table(BLOCKS)?;
        let shares = txn.open_table(SHARES)?;
        let mut out = Vec::new();
        for row in order.range((self.onu, 0)..=(self.onu, u64::MAX))? {
            let b = ordered_block(&blocks, Uuid::from_u128(row?.1.value()))?;
            if b.info.state != BlockState::Committed {
                continue;
            }
            out.push(match shares.get(b.info.id.as_u128())? {
                Some(v) => open_value(self.cipher.as_deref(), &b, ValueKind::Share, v.value())?,
                None => SecretBytes::new(Vec::new()),
            });
        }
        Ok(out)
    }

    /// Reads back `len` bytes at `offset` of `block` that were already consumed (e.g. keys
    /// mirrored for the API, waiting in the delivery table until their application asks).
    /// [`StoreError::NotConsumed`] for bytes still in the pool (they must be taken through
    /// the cursor) or of a block not committed here (a discarded block's bytes are gone).
    pub fn read_consumed(&self, block: Uuid, offset: u64, len: u64) -> Result<SecretBytes, StoreError> {
        let not = || StoreError::NotConsumed { block, offset, len };
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let b = match load_block(&blocks, block)? {
            Some(b) if b.onu == self.onu && b.info.state == BlockState::Committed => b,
            _ => return Err(not()),
        };
        let end = offset.checked_add(len).ok_or_else(not)?;
        if len == 0 || end > b.info.used_bytes {
            return Err(not());
        }
        let keys = txn.open_table(KEYS)?;
        let stored = keys
            .get(block.as_u128())?
            .ok_or_else(|| StoreError::Corrupt(format!("key bytes of block {block} missing")))?;
        let all = open_value(self.cipher.as_deref(), &b, ValueKind::Key, stored.value())?;
        let range = usize::try_from(offset).ok().zip(usize::try_from(end).ok());
        range
            .and_then(|(o, e)| all.expose().get(o..e))
            .map(SecretBytes::from_slice)
            .ok_or_else(|| StoreError::Corrupt(format!("key bytes of block {block} short")))
    }

    /// Records keys `ids` as delivered for this ONU, all or none, durably: fails with
    /// [`StoreError::AlreadyDelivered`] (recording nothing) if any of them was delivered
    /// before. Call before handing the keys out, so a crash can lose a delivery but never
    /// repeat one.
    pub fn mark_delivered(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let txn = begin(&self.db)?;
        {
            let mut t = txn.open_table(DELIVERED)?;
            for id in ids {
                if t.insert(id.as_u128(), self.onu)?.is_some() {
                    return Err(StoreError::AlreadyDelivered(*id));
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Whether key `id` was delivered (by [`StorePool::mark_delivered`]).
    pub fn is_delivered(&self, id: Uuid) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DELIVERED)?.get(id.as_u128())?.is_some())
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
            out.push(ordered_block(&blocks, Uuid::from_u128(row?.1.value()))?.info);
        }
        Ok(out)
    }

    /// This ONU's totals (consistent snapshot).
    pub fn totals(&self) -> Result<Totals, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(load_meta(&txn.open_table(ONUS)?, self.onu)?.totals)
    }

    /// Unused key bits, or the store's error ([`crate::KeyPool::level_bits`] reports 0 instead).
    pub fn try_level_bits(&self) -> Result<u64, StoreError> {
        Ok(self.totals()?.level * 8)
    }
}

#[cfg(test)]
mod tests;
