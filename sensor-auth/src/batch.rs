//! One batch of pool bytes: a hash key (the first [`HASH_KEY_LEN`] bytes) and the pads
//! after it, with a record of which pad bytes have been used.

use core::fmt;
use std::sync::Arc;

use qpon_qkd::SecretBytes;
use qpon_qkd::mac::{HashKey, MacError, Pad, Tag, WcMac, WegmanCarter};

use crate::config::EndConfig;
use crate::frame::{BatchDescriptor, Class};

/// Hash key length at the start of every batch.
pub const HASH_KEY_LEN: usize = qpon_qkd::mac::HASH_KEY_LEN;

/// The keyed hashes of one batch: one hash key, used with full tags for commands and
/// (GF(2^128) only) truncated tags for readings. Shared (`Arc`) by the requests still
/// waiting for a response under it.
pub(crate) struct BatchKeys {
    pub(crate) ordinal: u64,
    command: WegmanCarter,
    /// `None`: readings use the command authenticator (same tag length).
    reading: Option<WegmanCarter>,
}

impl BatchKeys {
    fn new(ordinal: u64, config: &EndConfig, key: &[u8]) -> Result<Self, MacError> {
        let cmd_family = config.mac_family(Class::Command);
        let read_family = config.mac_family(Class::Reading);
        let command = WegmanCarter::new(cmd_family, HashKey::from_slice(key))?;
        let reading = if read_family == cmd_family {
            None
        } else {
            Some(WegmanCarter::new(read_family, HashKey::from_slice(key))?)
        };
        Ok(Self { ordinal, command, reading })
    }

    pub(crate) fn mac(&self, class: Class) -> &WegmanCarter {
        match (class, &self.reading) {
            (Class::Reading, Some(r)) => r,
            _ => &self.command,
        }
    }

    pub(crate) fn tag(&self, class: Class, msg: &[u8], pad: &Pad) -> Result<Tag, MacError> {
        self.mac(class).tag(msg, pad)
    }

    pub(crate) fn verify(&self, class: Class, msg: &[u8], pad: &Pad, tag: &[u8]) -> Result<(), MacError> {
        self.mac(class).verify(msg, pad, tag)
    }
}

impl fmt::Debug for BatchKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchKeys").field("ordinal", &self.ordinal).finish_non_exhaustive()
    }
}

/// A batch in use at one end.
pub(crate) struct Batch {
    pub(crate) keys: Arc<BatchKeys>,
    pub(crate) descriptor: BatchDescriptor,
    bytes: SecretBytes,
    /// Bit per batch byte: used as a pad (field end; the control end allocates in order).
    used: Vec<u64>,
    /// Control end: next free byte.
    pub(crate) cursor: usize,
    /// No new frame may use this batch (its key met a forgery, or it timed out).
    pub(crate) retired: bool,
    /// Control end: a response under this batch was accepted, so the field end has
    /// mirrored it and the descriptor need not be sent any more.
    pub(crate) acked: bool,
    /// Control end: requests of this batch that timed out since its last response.
    pub(crate) timeouts: u32,
}

impl Batch {
    /// A batch from `bytes` (the whole reservation). `WeakKey` when the hash key is
    /// degenerate.
    pub(crate) fn new(
        ordinal: u64,
        config: &EndConfig,
        descriptor: BatchDescriptor,
        bytes: SecretBytes,
    ) -> Result<Self, MacError> {
        let keys = BatchKeys::new(ordinal, config, &bytes.expose()[..HASH_KEY_LEN])?;
        let n = bytes.len();
        Ok(Self {
            keys: Arc::new(keys),
            descriptor,
            bytes,
            used: vec![0; n.div_ceil(64)],
            cursor: HASH_KEY_LEN,
            retired: false,
            acked: false,
            timeouts: 0,
        })
    }

    pub(crate) fn ordinal(&self) -> u64 {
        self.keys.ordinal
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes after the control end's cursor.
    pub(crate) fn remaining(&self) -> usize {
        self.len().saturating_sub(self.cursor)
    }

    /// The pad at `offset..offset + len` (bounds checked by the caller).
    pub(crate) fn pad(&self, offset: usize, len: usize) -> Pad {
        Pad::from_slice(&self.bytes.expose()[offset..offset + len])
    }

    /// The secret bytes at `offset..offset + len` (bounds checked by the caller; crate
    /// internal, never logged).
    pub(crate) fn pad_bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self.bytes.expose()[offset..offset + len]
    }

    /// Whether `offset..offset + len` lies in the pad area and is unused.
    pub(crate) fn is_free(&self, offset: usize, len: usize) -> bool {
        offset >= HASH_KEY_LEN
            && offset.checked_add(len).is_some_and(|e| e <= self.len())
            && Self::words(offset, len).all(|(w, mask)| self.used[w] & mask == 0)
    }

    /// Pad bytes not yet marked used (field end).
    pub(crate) fn free_pad_bytes(&self) -> usize {
        let used: u32 = self.used.iter().map(|w| w.count_ones()).sum();
        (self.len() - HASH_KEY_LEN).saturating_sub(used as usize)
    }

    /// Marks `offset..offset + len` used (in range: checked by `is_free` before).
    pub(crate) fn mark_used(&mut self, offset: usize, len: usize) {
        for (w, mask) in Self::words(offset, len) {
            self.used[w] |= mask;
        }
    }

    /// The bitmap words and masks covering bytes `offset..offset + len` (`len` > 0).
    fn words(offset: usize, len: usize) -> impl Iterator<Item = (usize, u64)> {
        let end = offset + len;
        (offset / 64..end.div_ceil(64)).map(move |w| {
            let lo = offset.max(64 * w) - 64 * w;
            let hi = end.min(64 * w + 64) - 64 * w;
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
            (w, mask)
        })
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("ordinal", &self.ordinal())
            .field("descriptor", &self.descriptor)
            .field("len", &self.len())
            .field("cursor", &self.cursor)
            .field("retired", &self.retired)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qpon_qkd::SecretBytes;
    use uuid::Uuid;

    #[test]
    fn pad_bitmap_matches_a_byte_by_byte_model() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
        let d = BatchDescriptor { block: Uuid::nil(), offset: 0, len: 300 };
        let mut b = Batch::new(0, &EndConfig::default(), d, SecretBytes::new(bytes)).unwrap();
        let mut model = [false; 300];
        // (offset, len) in order; overlapping ranges must be refused.
        let ranges =
            [(16, 32), (48, 8), (40, 16), (60, 70), (130, 64), (193, 2), (194, 1), (290, 10), (295, 6)];
        for (off, len) in ranges {
            let free = off >= HASH_KEY_LEN && off + len <= 300 && (off..off + len).all(|i| !model[i]);
            assert_eq!(b.is_free(off, len), free, "{off}+{len}");
            if free {
                b.mark_used(off, len);
                (off..off + len).for_each(|i| model[i] = true);
            }
        }
        assert!(!b.is_free(0, 16), "the hash key is never a pad");
        assert_eq!(b.free_pad_bytes(), 284 - model.iter().filter(|&&u| u).count());
    }
}
