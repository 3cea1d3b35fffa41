//! Authentication material and the pad ledger.
//!
//! Each ONU's session draws its Wegman–Carter secrets from three streams (DESIGN.md §3
//! item 9):
//!
//! - **hash keys**: hash key of epoch `e` = unit `e` of the stream;
//! - **downstream pads** (OLT → ONU): pad `i` = unit `i`;
//! - **upstream pads** (ONU → OLT): pad `i` = unit `i`.
//!
//! Separate streams per direction mean the pad of a tag is fixed by (ONU, direction,
//! index) and the two ends can never pick the same pad for different messages, whatever
//! is lost in between. The streams start from the pre-shared secret and are extended by
//! the reserved authentication share of every committed key block, split between the
//! three streams in the fixed proportions [`SPLIT`] (one hash key, three downstream tags and
//! one upstream tag per block at the default one-tag-per-phase policy).
//!
//! Every use of a unit goes through an [`AuthLedger`] *before* the unit is used (before a
//! tagged message leaves, before a received tag is checked); units passed over are recorded
//! as skipped, so the ledger accounts for every unit: none used twice, none lost silently.
//! Indices only grow: a unit below a stream's high-water mark is never handed out again,
//! which also makes replayed frames fail.

use super::frame::Direction;
use crate::secret::SecretBytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One of the three authentication streams of an ONU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stream {
    /// Wegman–Carter hash keys, one per epoch.
    HashKeys,
    /// One-time pads for tags in this direction.
    Pads(Direction),
}

impl Stream {
    /// The three streams, in the order of [`SPLIT`].
    pub const ALL: [Stream; 3] =
        [Stream::HashKeys, Stream::Pads(Direction::Downstream), Stream::Pads(Direction::Upstream)];

    fn slot(self) -> usize {
        match self {
            Stream::HashKeys => 0,
            Stream::Pads(Direction::Downstream) => 1,
            Stream::Pads(Direction::Upstream) => 2,
        }
    }
}

/// Proportions (in fifths) in which a pre-shared secret or a block's authentication share
/// is split between hash keys, downstream pads and upstream pads.
pub const SPLIT: [usize; 3] = [1, 3, 1];

/// Why authentication material could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The stream has no unit at that index: the reserve is exhausted.
    #[error("authentication reserve exhausted ({0:?})")]
    Exhausted(Stream),
    /// The index is below the stream's high-water mark: it was used or skipped before.
    #[error("{stream:?} unit {index} was already used or skipped (next unused is {high_water})")]
    AlreadyUsed {
        /// Stream.
        stream: Stream,
        /// Requested index.
        index: u64,
        /// Next unused index.
        high_water: u64,
    },
    /// The ledger could not record the use durably; nothing may be sent or checked.
    #[error("pad ledger failed: {0}")]
    Ledger(String),
}

/// What a unit was used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// Hash key of an epoch.
    HashKey,
    /// Pad of a tag this end sent.
    TagSent,
    /// Pad of a tag this end received and checked.
    TagChecked,
}

/// One ledger line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEntry {
    /// Unit `index` of `stream` used for `purpose`.
    Used {
        /// Stream.
        stream: Stream,
        /// Unit index.
        index: u64,
        /// Purpose.
        purpose: Purpose,
    },
    /// Units `from..to` of `stream` passed over (a peer's frame jumped ahead, a restart).
    /// They are never used.
    Skipped {
        /// Stream.
        stream: Stream,
        /// First skipped unit.
        from: u64,
        /// One past the last skipped unit.
        to: u64,
    },
}

/// Where uses of authentication material are recorded, durably, before the material is
/// used. In memory here ([`MemoryLedger`]); the key store provides a persistent one.
pub trait AuthLedger: Send {
    /// Records `entry` for `onu`. `Ok` means durable; on `Err` the caller must not use the
    /// unit (fail closed).
    fn record(&mut self, onu: u16, entry: LedgerEntry) -> Result<(), AuthError>;

    /// Next never-recorded index of `stream` for `onu` (0 for a new ONU). Sessions start
    /// from here after a restart.
    fn high_water(&self, onu: u16, stream: Stream) -> u64;
}

#[derive(Debug, Default)]
struct LedgerInner {
    entries: Vec<(u16, LedgerEntry)>,
}

/// An in-memory ledger. Cloning gives another handle on the same ledger, so a test can
/// keep one while a session (or a restarted session) records into another.
#[derive(Clone, Debug, Default)]
pub struct MemoryLedger(Arc<Mutex<LedgerInner>>);

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of all entries so far.
    pub fn entries(&self) -> Vec<(u16, LedgerEntry)> {
        self.0.lock().map(|g| g.entries.clone()).unwrap_or_default()
    }

    /// Checks from the entries alone that no unit of any stream of any ONU was recorded
    /// twice (used twice, used after being skipped, or skipped twice). Returns the first
    /// offending (onu, stream, index).
    pub fn find_reuse(&self) -> Option<(u16, Stream, u64)> {
        let mut seen = std::collections::HashSet::new();
        for (onu, e) in self.entries() {
            let (stream, range) = match e {
                LedgerEntry::Used { stream, index, .. } => (stream, index..index + 1),
                LedgerEntry::Skipped { stream, from, to } => (stream, from..to),
            };
            for i in range {
                if !seen.insert((onu, stream, i)) {
                    return Some((onu, stream, i));
                }
            }
        }
        None
    }
}

impl AuthLedger for MemoryLedger {
    fn record(&mut self, onu: u16, entry: LedgerEntry) -> Result<(), AuthError> {
        self.0
            .lock()
            .map_err(|_| AuthError::Ledger("ledger lock poisoned".into()))?
            .entries
            .push((onu, entry));
        Ok(())
    }

    fn high_water(&self, onu: u16, stream: Stream) -> u64 {
        self.0
            .lock()
            .map(|g| {
                g.entries
                    .iter()
                    .filter(|(o, _)| *o == onu)
                    .filter_map(|(_, e)| match *e {
                        LedgerEntry::Used { stream: s, index, .. } if s == stream => Some(index + 1),
                        LedgerEntry::Skipped { stream: s, to, .. } if s == stream => Some(to),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }
}

/// The bytes of one stream that are still available, from absolute byte offset `base`.
#[derive(Default)]
struct StreamBuf {
    base: u64,
    data: VecDeque<u8>,
}

impl Drop for StreamBuf {
    fn drop(&mut self) {
        let (a, b) = self.data.as_mut_slices();
        zeroize::Zeroize::zeroize(a);
        zeroize::Zeroize::zeroize(b);
    }
}

/// An ONU's authentication material: the three streams. `Debug` shows sizes only.
pub struct AuthMaterial {
    streams: [StreamBuf; 3],
}

impl core::fmt::Debug for AuthMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "AuthMaterial(hash keys {} B, down pads {} B, up pads {} B)",
            self.streams[0].data.len(),
            self.streams[1].data.len(),
            self.streams[2].data.len()
        )
    }
}

/// Splits `bytes` into the three stream shares in the proportions of [`SPLIT`].
fn split(bytes: &[u8]) -> [&[u8]; 3] {
    let total: usize = SPLIT.iter().sum();
    let a = bytes.len() * SPLIT[0] / total;
    let b = a + bytes.len() * SPLIT[1] / total;
    [&bytes[..a], &bytes[a..b], &bytes[b..]]
}

impl AuthMaterial {
    /// Material from the ONU's pre-shared secret.
    pub fn from_psk(psk: &SecretBytes) -> Self {
        let mut m = Self { streams: Default::default() };
        m.append_share(psk.expose());
        m
    }

    /// Appends a committed block's authentication share. Both ends must append the same
    /// shares in the same order.
    pub fn append_share(&mut self, share: &[u8]) {
        for (s, part) in self.streams.iter_mut().zip(split(share)) {
            s.data.extend(part.iter().copied());
        }
    }

    /// Bytes still available in `stream` beyond absolute offset `from`.
    pub fn available(&self, stream: Stream, from: u64) -> u64 {
        let s = &self.streams[stream.slot()];
        (s.base + s.data.len() as u64).saturating_sub(from.max(s.base))
    }

    /// Unit `index` of `stream` with units of `unit` bytes, and forgets everything before
    /// it (material is never handed out twice by the same holder). The caller must have
    /// recorded the use in the ledger first.
    pub fn take(&mut self, stream: Stream, index: u64, unit: usize) -> Result<SecretBytes, AuthError> {
        let s = &mut self.streams[stream.slot()];
        let start = index.checked_mul(unit as u64).ok_or(AuthError::Exhausted(stream))?;
        if start < s.base {
            return Err(AuthError::AlreadyUsed { stream, index, high_water: s.base.div_ceil(unit as u64) });
        }
        let skip = (start - s.base) as usize;
        if s.data.len() < skip + unit {
            return Err(AuthError::Exhausted(stream));
        }
        for b in s.data.drain(..skip) {
            let _ = b;
        }
        let out: Vec<u8> = s.data.drain(..unit).collect();
        s.base = start + unit as u64;
        Ok(SecretBytes::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything() {
        let bytes: Vec<u8> = (0..=255).collect();
        let parts = split(&bytes);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 256);
        assert_eq!(parts[0].len(), 51);
    }

    #[test]
    fn take_is_positional_and_never_repeats() {
        let psk = SecretBytes::new((0..160u8).collect());
        let mut a = AuthMaterial::from_psk(&psk);
        let mut b = AuthMaterial::from_psk(&psk);
        let down = Stream::Pads(Direction::Downstream);
        // the same index gives the same bytes on both ends, whatever was skipped before
        let x = a.take(down, 3, 16).unwrap();
        b.take(down, 0, 16).unwrap();
        let y = b.take(down, 3, 16).unwrap();
        assert_eq!(x, y);
        assert!(matches!(a.take(down, 3, 16), Err(AuthError::AlreadyUsed { .. })));
        assert!(matches!(a.take(down, 2, 16), Err(AuthError::AlreadyUsed { .. })));
        assert!(matches!(a.take(down, 6, 16), Err(AuthError::Exhausted(_))));
        a.append_share(&[7u8; 80]);
        assert_eq!(a.take(down, 6, 16).unwrap().expose(), &[7u8; 16]);
        assert!(!format!("{a:?}").contains("[7"));
    }

    #[test]
    fn ledger_finds_reuse() {
        let mut l = MemoryLedger::new();
        let s = Stream::Pads(Direction::Upstream);
        l.record(1, LedgerEntry::Used { stream: s, index: 0, purpose: Purpose::TagSent }).unwrap();
        l.record(1, LedgerEntry::Skipped { stream: s, from: 1, to: 4 }).unwrap();
        l.record(2, LedgerEntry::Used { stream: s, index: 0, purpose: Purpose::TagSent }).unwrap();
        assert_eq!(l.find_reuse(), None);
        assert_eq!(l.high_water(1, s), 4);
        assert_eq!(l.high_water(3, s), 0);
        l.record(1, LedgerEntry::Used { stream: s, index: 2, purpose: Purpose::TagChecked }).unwrap();
        assert_eq!(l.find_reuse(), Some((1, s, 2)));
    }
}
