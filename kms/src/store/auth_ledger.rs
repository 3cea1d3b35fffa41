//! The persistent pad ledger of the classical channel ([`StoreAuthLedger`]).
//!
//! Every use (or skip) of an authentication unit is one durable write transaction that
//! appends the entry to this ONU's ledger and moves the stream's high-water mark in the
//! same commit, so after any crash the ledger and the marks agree and a session restarted
//! from [`AuthLedger::high_water`] never reuses a unit. The ledger also refuses, inside that
//! transaction, any entry that would record a unit below its stream's high-water mark
//! ([`AuthError::AlreadyUsed`]): a second line of defence behind the session's own check.

use std::sync::Arc;

use qpon_qkd::session::{AuthError, AuthLedger, Direction, LedgerEntry, Purpose as AuthPurpose, Stream};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{KeyStore, StoreError, begin, le_u64};

/// (ONU, entry index) → encoded [`LedgerEntry`].
const AUTH_LEDGER: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("auth_ledger");
/// (ONU, stream code) → next never-recorded unit index of that stream.
const AUTH_HIGH_WATER: TableDefinition<(u16, u8), u64> = TableDefinition::new("auth_high_water");

/// Creates the ledger's tables (called when the store is opened).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(AUTH_LEDGER)?;
    txn.open_table(AUTH_HIGH_WATER)?;
    Ok(())
}

fn stream_code(s: Stream) -> u8 {
    match s {
        Stream::HashKeys => 0,
        Stream::Pads(Direction::Downstream) => 1,
        Stream::Pads(Direction::Upstream) => 2,
    }
}

fn stream_from(c: u8) -> Option<Stream> {
    Stream::ALL.into_iter().find(|&s| stream_code(s) == c)
}

fn purpose_code(p: AuthPurpose) -> u8 {
    match p {
        AuthPurpose::HashKey => 0,
        AuthPurpose::TagSent => 1,
        AuthPurpose::TagChecked => 2,
    }
}

fn purpose_from(c: u8) -> Option<AuthPurpose> {
    [AuthPurpose::HashKey, AuthPurpose::TagSent, AuthPurpose::TagChecked]
        .into_iter()
        .find(|&p| purpose_code(p) == c)
}

const USED: u8 = 0;
const SKIPPED: u8 = 1;

fn encode(e: &LedgerEntry) -> Vec<u8> {
    let mut b = Vec::with_capacity(18);
    match *e {
        LedgerEntry::Used { stream, index, purpose } => {
            b.extend([USED, stream_code(stream)]);
            b.extend(index.to_le_bytes());
            b.push(purpose_code(purpose));
        }
        LedgerEntry::Skipped { stream, from, to } => {
            b.extend([SKIPPED, stream_code(stream)]);
            b.extend(from.to_le_bytes());
            b.extend(to.to_le_bytes());
        }
    }
    b
}

fn decode(onu: u16, seq: u64, b: &[u8]) -> Result<LedgerEntry, StoreError> {
    let bad = || StoreError::Corrupt(format!("pad ledger entry {seq} of ONU {onu}"));
    let stream = b.get(1).copied().and_then(stream_from).ok_or_else(bad)?;
    match (b[0], b.len()) {
        (USED, 11) => Ok(LedgerEntry::Used {
            stream,
            index: le_u64(&b[2..10]),
            purpose: purpose_from(b[10]).ok_or_else(bad)?,
        }),
        (SKIPPED, 18) => Ok(LedgerEntry::Skipped { stream, from: le_u64(&b[2..10]), to: le_u64(&b[10..18]) }),
        _ => Err(bad()),
    }
}

/// The pad ledger of the classical channel, persisted in a [`KeyStore`]: implements
/// [`AuthLedger`] with one durable transaction per entry. Clones share the store; several
/// sessions (one per ONU) may record through clones concurrently (redb serialises writers).
#[derive(Clone)]
pub struct StoreAuthLedger {
    db: Arc<Database>,
}

impl core::fmt::Debug for StoreAuthLedger {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("StoreAuthLedger")
    }
}

impl StoreAuthLedger {
    /// The ledger kept in `store`.
    pub fn new(store: &KeyStore) -> Self {
        Self { db: Arc::clone(&store.db) }
    }

    /// Every entry recorded for `onu`, in order (for audits).
    pub fn entries(&self, onu: u16) -> Result<Vec<LedgerEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUTH_LEDGER)?;
        let mut out = Vec::new();
        for row in table.range((onu, 0)..=(onu, u64::MAX))? {
            let (k, v) = row?;
            out.push(decode(onu, k.value().1, v.value())?);
        }
        Ok(out)
    }

    /// Checks from `onu`'s entries alone that no unit of any stream was recorded twice
    /// (used twice, used after being skipped, or skipped twice). Returns the first
    /// offending (stream, index) in unit order, like [`qpon_qkd::session::MemoryLedger::find_reuse`].
    pub fn find_reuse(&self, onu: u16) -> Result<Option<(Stream, u64)>, StoreError> {
        let mut ranges: Vec<(Stream, u64, u64)> = self
            .entries(onu)?
            .into_iter()
            .map(|e| match e {
                LedgerEntry::Used { stream, index, .. } => (stream, index, index.saturating_add(1)),
                LedgerEntry::Skipped { stream, from, to } => (stream, from, to),
            })
            .filter(|r| r.1 < r.2)
            .collect();
        ranges.sort();
        Ok(ranges.windows(2).find(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2).map(|w| (w[1].0, w[1].1)))
    }

    /// [`AuthLedger::high_water`], with the store's error instead of 0.
    pub fn try_high_water(&self, onu: u16, stream: Stream) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUTH_HIGH_WATER)?;
        Ok(table.get((onu, stream_code(stream)))?.map(|v| v.value()).unwrap_or(0))
    }

    fn record_in(&self, onu: u16, entry: LedgerEntry) -> Result<Result<(), AuthError>, StoreError> {
        let txn = begin(&self.db)?;
        {
            let mut hws = txn.open_table(AUTH_HIGH_WATER)?;
            let (stream, first, end) = match entry {
                LedgerEntry::Used { stream, index, .. } => (stream, index, index.checked_add(1)),
                LedgerEntry::Skipped { stream, from, to } => (stream, from, (from <= to).then_some(to)),
            };
            let hw = hws.get((onu, stream_code(stream)))?.map(|v| v.value()).unwrap_or(0);
            if first < hw {
                return Ok(Err(AuthError::AlreadyUsed { stream, index: first, high_water: hw }));
            }
            let Some(end) = end else {
                return Ok(Err(AuthError::Ledger(format!("invalid pad ledger entry {entry:?}"))));
            };
            let mut ledger = txn.open_table(AUTH_LEDGER)?;
            let seq = match ledger.range((onu, 0)..=(onu, u64::MAX))?.next_back() {
                Some(row) => row?.0.value().1 + 1,
                None => 0,
            };
            ledger.insert((onu, seq), encode(&entry).as_slice())?;
            hws.insert((onu, stream_code(stream)), end.max(hw))?;
        }
        txn.commit()?;
        Ok(Ok(()))
    }
}

impl AuthLedger for StoreAuthLedger {
    /// Durable when `Ok`. Refuses an entry that starts below its stream's high-water mark
    /// ([`AuthError::AlreadyUsed`]) and an inverted skip range; store failures are
    /// [`AuthError::Ledger`]. Nothing is recorded on `Err`.
    fn record(&mut self, onu: u16, entry: LedgerEntry) -> Result<(), AuthError> {
        self.record_in(onu, entry).map_err(|e| AuthError::Ledger(e.to_string()))?
    }

    /// 0 if the store cannot be read; safe, since [`AuthLedger::record`] re-checks the
    /// mark inside its transaction and refuses any unit below it.
    fn high_water(&self, onu: u16, stream: Stream) -> u64 {
        self.try_high_water(onu, stream).unwrap_or(0)
    }
}

/// The entry encoding, for tests that write raw rows.
#[cfg(test)]
pub(super) fn test_encode(e: &LedgerEntry) -> Vec<u8> {
    encode(e)
}
