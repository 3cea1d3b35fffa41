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
//! three streams in the fixed proportions [`SPLIT`].
//!
//! **Budget** (Poly1305: 32-byte hash keys, 16-byte pads; the default 224-byte share split
//! 2:3:2 gives 64 B of hash keys, 96 B of downstream and 64 B of upstream pads per block).
//! A block with per-phase tags spends one hash key, three downstream pads (`Estimate`,
//! `Finish`, `Ack`) and two upstream pads (`Confirm`, `Committed`), so each block leaves a
//! surplus of one hash key, three downstream and two upstream pads for what happens between
//! blocks: the pool sync of a new connection (a restarted OLT loads a fresh hash key; one
//! pad each way), slot maps and their acknowledgements, key-switch announcements, and the
//! retransmissions of all of these. Without that surplus every reconnection would eat into
//! the pre-shared secret until the session stops (fail closed) — a 1 KiB secret holds only
//! six hash keys.
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
pub const SPLIT: [usize; 3] = [2, 3, 2];

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

/// The bytes of one stream that are still available.
///
/// Positions are absolute byte offsets in the stream (the pre-shared secret's part first,
/// then each committed share's part). Positions below `taken` are gone: used, skipped, or
/// passed over. `data` holds positions `start..start + data.len()`; normally
/// `start == taken`, but after [`StreamBuf::remove_tail`] took back bytes some of which
/// were already used, the end may lie below `taken`, and bytes appended at positions below
/// `taken` are then dropped on arrival (never handed out).
#[derive(Default)]
struct StreamBuf {
    start: u64,
    taken: u64,
    data: VecDeque<u8>,
}

impl StreamBuf {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    fn append(&mut self, bytes: &[u8]) {
        let end = self.end();
        let drop = usize::try_from(self.taken.saturating_sub(end)).unwrap_or(usize::MAX).min(bytes.len());
        if self.data.is_empty() {
            self.start = end + drop as u64;
        }
        self.data.extend(bytes[drop..].iter().copied());
    }

    /// Removes the last `len` bytes of the stream (zeroised).
    fn remove_tail(&mut self, len: u64) {
        let new_end = self.end().saturating_sub(len);
        if new_end >= self.start {
            let keep = (new_end - self.start) as usize;
            for b in self.data.range_mut(keep..) {
                *b = 0;
            }
            self.data.truncate(keep);
        } else {
            self.wipe();
            self.data.clear();
            self.start = new_end;
        }
    }

    fn wipe(&mut self) {
        let (a, b) = self.data.as_mut_slices();
        zeroize::Zeroize::zeroize(a);
        zeroize::Zeroize::zeroize(b);
    }
}

impl Drop for StreamBuf {
    fn drop(&mut self) {
        self.wipe();
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

/// The lengths of the three stream shares of `len` bytes, in the proportions of [`SPLIT`].
fn split_lens(len: usize) -> [usize; 3] {
    let total: usize = SPLIT.iter().sum();
    let a = len * SPLIT[0] / total;
    let b = len * SPLIT[1] / total;
    [a, b, len - a - b]
}

/// Splits `bytes` into the three stream shares in the proportions of [`SPLIT`].
fn split(bytes: &[u8]) -> [&[u8]; 3] {
    let [a, b, _] = split_lens(bytes.len());
    [&bytes[..a], &bytes[a..a + b], &bytes[a + b..]]
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
            s.append(part);
        }
    }

    /// Takes back the last share appended, of `len` bytes: its block was discarded (the
    /// peer never committed it), so the peer's streams end before it. Positions of it that
    /// were already used stay used, so a later share's bytes at those positions are never
    /// handed out either (the peer skips them when it sees our next index).
    pub fn remove_last_share(&mut self, len: usize) {
        for (s, part) in self.streams.iter_mut().zip(split_lens(len)) {
            s.remove_tail(part as u64);
        }
    }

    /// Bytes still available in `stream` beyond absolute offset `from`.
    pub fn available(&self, stream: Stream, from: u64) -> u64 {
        let s = &self.streams[stream.slot()];
        s.end().saturating_sub(from.max(s.taken))
    }

    /// Unit `index` of `stream` with units of `unit` bytes, and forgets everything before
    /// it (material is never handed out twice by the same holder). The caller must have
    /// recorded the use in the ledger first.
    pub fn take(&mut self, stream: Stream, index: u64, unit: usize) -> Result<SecretBytes, AuthError> {
        let s = &mut self.streams[stream.slot()];
        let start = index.checked_mul(unit as u64).ok_or(AuthError::Exhausted(stream))?;
        if start < s.taken {
            return Err(AuthError::AlreadyUsed { stream, index, high_water: s.taken.div_ceil(unit as u64) });
        }
        let stop = start.checked_add(unit as u64).ok_or(AuthError::Exhausted(stream))?;
        if stop > s.end() {
            return Err(AuthError::Exhausted(stream));
        }
        // start >= taken and the data reaches `stop`, so the data begins at `taken`.
        let skip = (start - s.start) as usize;
        for b in s.data.drain(..skip) {
            let _ = b;
        }
        let out: Vec<u8> = s.data.drain(..unit).collect();
        s.start = stop;
        s.taken = stop;
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
        assert_eq!(parts[0].len(), 256 * SPLIT[0] / SPLIT.iter().sum::<usize>());
    }

    #[test]
    fn take_is_positional_and_never_repeats() {
        // 224 bytes split 2:3:2 = 64 B of hash keys, 96 B (six pads) each way down, 64 B up.
        let psk = SecretBytes::new((0..224u8).collect());
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
        a.append_share(&[7u8; 112]);
        assert_eq!(a.take(down, 6, 16).unwrap().expose(), &[7u8; 16]);
        assert!(!format!("{a:?}").contains("[7"));
    }

    #[test]
    fn removed_share_keeps_positions_and_never_repeats_used_units() {
        let psk = SecretBytes::new(vec![1u8; 224]);
        let up = Stream::Pads(Direction::Upstream);
        let [_, _, up_len] = split_lens(224);
        // Two holders of the same material; one also committed a block the other never did.
        let mut olt = AuthMaterial::from_psk(&psk);
        let mut onu = AuthMaterial::from_psk(&psk);
        onu.append_share(&[2u8; 224]);
        // The ONU used the first unit of the discarded share's upstream part.
        let units_psk = (up_len / 16) as u64;
        onu.take(up, units_psk, 16).unwrap();
        onu.remove_last_share(224);
        assert_eq!(onu.available(up, 0), 0);
        // Both then commit the same next block: its bytes sit at the same positions.
        olt.append_share(&[3u8; 224]);
        onu.append_share(&[3u8; 224]);
        // The unit the ONU used is gone at the ONU (it skips it); the next agrees.
        assert!(matches!(onu.take(up, units_psk, 16), Err(AuthError::AlreadyUsed { .. })));
        assert_eq!(olt.take(up, units_psk + 1, 16).unwrap(), onu.take(up, units_psk + 1, 16).unwrap());
        assert_eq!(olt.take(up, units_psk + 1 + 1, 16).unwrap().expose(), &[3u8; 16]);
        // Removing a share nobody touched restores the previous end exactly.
        let mut m = AuthMaterial::from_psk(&psk);
        let before = m.available(up, 0);
        m.append_share(&[9u8; 224]);
        m.remove_last_share(224);
        assert_eq!(m.available(up, 0), before);
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
