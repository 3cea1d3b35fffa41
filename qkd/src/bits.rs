//! Packed bit strings on `u64` words.
//!
//! Convention (used everywhere in qpon, on the wire and in test vectors): bit `i` of a
//! [`BitBlock`] is bit `i % 64` (least significant first) of word `i / 64`; serialised to
//! bytes it is bit `i % 8` of byte `i / 8` (LSB-first, i.e. the little-endian image of the
//! words). Bits beyond `len` in the last word are always zero, so word-wise operations
//! (parity, XOR, popcount, equality) never see garbage.

use core::fmt;
use serde::{Deserialize, Serialize};

/// A packed string of bits, `len` bits long, stored LSB-first in `u64` words.
///
/// `Debug` shows the length only: bit blocks carry raw and reconciled key material.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct BitBlock {
    words: Vec<u64>,
    len: usize,
}

impl fmt::Debug for BitBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BitBlock({} bits)", self.len)
    }
}

impl Drop for BitBlock {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.words);
    }
}

/// Number of `u64` words needed for `bits` bits.
#[inline]
pub const fn words_for(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// Mask of the low `n % 64` bits of the last word (all ones when `n` is a multiple of 64).
#[inline]
const fn tail_mask(n: usize) -> u64 {
    match n % 64 {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    }
}

impl BitBlock {
    /// `len` zero bits.
    pub fn zeros(len: usize) -> Self {
        Self { words: vec![0; words_for(len)], len }
    }

    /// Builds a block from words; bits beyond `len` are cleared.
    ///
    /// # Panics
    /// If `words` is shorter than `len` bits need (caller misuse).
    pub fn from_words(mut words: Vec<u64>, len: usize) -> Self {
        assert!(words.len() >= words_for(len), "from_words: {} words cannot hold {len} bits", words.len());
        words.truncate(words_for(len));
        let mut b = Self { words, len };
        b.clear_tail();
        b
    }

    /// Builds a block from LSB-first bytes; bits beyond `len` are cleared.
    ///
    /// # Panics
    /// If `bytes` is shorter than `len` bits need (caller misuse).
    pub fn from_bytes(bytes: &[u8], len: usize) -> Self {
        assert!(bytes.len() * 8 >= len, "from_bytes: {} bytes cannot hold {len} bits", bytes.len());
        let mut words = vec![0u64; words_for(len)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(buf);
        }
        Self::from_words(words, len)
    }

    /// Builds a block from one `bool` per bit (cold paths and tests).
    pub fn from_bools(bits: &[bool]) -> Self {
        let mut b = Self::zeros(bits.len());
        for (i, &v) in bits.iter().enumerate() {
            if v {
                b.words[i / 64] |= 1 << (i % 64);
            }
        }
        b
    }

    /// Random block of `len` bits from `rng`.
    pub fn random(len: usize, rng: &mut impl rand::Rng) -> Self {
        let words = (0..words_for(len)).map(|_| rng.next_u64()).collect();
        Self::from_words(words, len)
    }

    /// The bits as LSB-first bytes (`ceil(len/8)` of them).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.words.len() * 8);
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.truncate(self.len.div_ceil(8));
        out
    }

    /// One `bool` per bit (cold paths and tests).
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.len).map(|i| self.get(i)).collect()
    }

    /// Length in bits.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the block holds no bits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The backing words (bits beyond `len` are zero).
    #[inline]
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Mutable access to the backing words. Callers must keep bits beyond `len` zero;
    /// [`BitBlock::clear_tail`] restores that.
    #[inline]
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// Clears the bits beyond `len` in the last word.
    #[inline]
    pub fn clear_tail(&mut self) {
        if let Some(last) = self.words.last_mut() {
            *last &= tail_mask(self.len);
        }
    }

    /// Bit `i`.
    ///
    /// # Panics
    /// If `i >= len`.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit index {i} out of range for {} bits", self.len);
        (self.words[i / 64] >> (i % 64)) & 1 == 1
    }

    /// Sets bit `i` to `v`.
    ///
    /// # Panics
    /// If `i >= len`.
    #[inline]
    pub fn set(&mut self, i: usize, v: bool) {
        assert!(i < self.len, "bit index {i} out of range for {} bits", self.len);
        let m = 1u64 << (i % 64);
        if v {
            self.words[i / 64] |= m;
        } else {
            self.words[i / 64] &= !m;
        }
    }

    /// Flips bit `i`.
    ///
    /// # Panics
    /// If `i >= len`.
    #[inline]
    pub fn flip(&mut self, i: usize) {
        assert!(i < self.len, "bit index {i} out of range for {} bits", self.len);
        self.words[i / 64] ^= 1 << (i % 64);
    }

    /// Appends one bit.
    pub fn push(&mut self, v: bool) {
        if self.len.is_multiple_of(64) {
            self.words.push(0);
        }
        if v {
            self.words[self.len / 64] |= 1 << (self.len % 64);
        }
        self.len += 1;
    }

    /// Number of one bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Number of positions where `self` and `other` differ.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn hamming_distance(&self, other: &Self) -> usize {
        assert_eq!(self.len, other.len, "hamming_distance of blocks of different lengths");
        self.words.iter().zip(&other.words).map(|(a, b)| (a ^ b).count_ones() as usize).sum()
    }

    /// Parity (XOR of all bits) of the half-open range `start..end`.
    ///
    /// # Panics
    /// If `start > end` or `end > len`.
    pub fn parity_range(&self, start: usize, end: usize) -> bool {
        assert!(start <= end && end <= self.len, "parity range {start}..{end} out of 0..{}", self.len);
        if start == end {
            return false;
        }
        let (sw, sb) = (start / 64, start % 64);
        let (ew, eb) = ((end - 1) / 64, (end - 1) % 64);
        let hi_mask = if eb == 63 { u64::MAX } else { (1u64 << (eb + 1)) - 1 };
        let lo_mask = u64::MAX << sb;
        if sw == ew {
            return (self.words[sw] & lo_mask & hi_mask).count_ones() & 1 == 1;
        }
        let mut acc = (self.words[sw] & lo_mask) ^ (self.words[ew] & hi_mask);
        for w in &self.words[sw + 1..ew] {
            acc ^= w;
        }
        acc.count_ones() & 1 == 1
    }

    /// Parity of the bits at `indices` (each index counted as often as it appears).
    ///
    /// # Panics
    /// If an index is `>= len`.
    pub fn parity_indices(&self, indices: &[u32]) -> bool {
        let mut acc = 0u64;
        for &i in indices {
            let i = i as usize;
            assert!(i < self.len, "bit index {i} out of range for {} bits", self.len);
            acc ^= self.words[i / 64] >> (i % 64);
        }
        acc & 1 == 1
    }

    /// `self ^= other`.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn xor_assign(&mut self, other: &Self) {
        assert_eq!(self.len, other.len, "xor of blocks of different lengths");
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a ^= b;
        }
    }

    /// The block `out` with `out[i] = self[perm[i]]` (a gather). `perm` need not be a
    /// permutation: any list of in-range indices works, which makes this also the
    /// extraction of bits by index list.
    ///
    /// # Panics
    /// If an index is `>= len`.
    pub fn gather(&self, perm: &[u32]) -> Self {
        let mut out = Self::zeros(perm.len());
        for (chunk_idx, chunk) in perm.chunks(64).enumerate() {
            let mut w = 0u64;
            for (k, &i) in chunk.iter().enumerate() {
                let i = i as usize;
                assert!(i < self.len, "bit index {i} out of range for {} bits", self.len);
                w |= ((self.words[i / 64] >> (i % 64)) & 1) << k;
            }
            out.words[chunk_idx] = w;
        }
        out
    }

    /// Applies a permutation: `out[i] = self[perm[i]]`. Alias of [`BitBlock::gather`]
    /// checked to be length-preserving.
    ///
    /// # Panics
    /// If `perm.len() != len` or an index is out of range.
    pub fn permute(&self, perm: &[u32]) -> Self {
        assert_eq!(perm.len(), self.len, "permutation length differs from block length");
        self.gather(perm)
    }

    /// Extracts the bits at `indices`, in that order.
    pub fn extract(&self, indices: &[u32]) -> Self {
        self.gather(indices)
    }

    /// The sub-block `start..end`.
    ///
    /// # Panics
    /// If `start > end` or `end > len`.
    pub fn slice(&self, start: usize, end: usize) -> Self {
        assert!(start <= end && end <= self.len, "slice {start}..{end} out of 0..{}", self.len);
        let n = end - start;
        let mut out = Self::zeros(n);
        let (sw, sb) = (start / 64, start % 64);
        for (k, o) in out.words.iter_mut().enumerate() {
            let lo = self.words.get(sw + k).copied().unwrap_or(0) >> sb;
            let hi = if sb == 0 { 0 } else { self.words.get(sw + k + 1).copied().unwrap_or(0) << (64 - sb) };
            *o = lo | hi;
        }
        out.clear_tail();
        out
    }

    /// Truncates to the first `len` bits (no-op when already shorter or equal).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            self.words.truncate(words_for(len));
            self.clear_tail();
        }
    }

    /// Appends all bits of `other`.
    pub fn extend_from(&mut self, other: &Self) {
        let sb = self.len % 64;
        if sb == 0 {
            self.words.extend_from_slice(&other.words);
        } else {
            for &w in &other.words {
                let last = self.words.len() - 1;
                self.words[last] |= w << sb;
                self.words.push(w >> (64 - sb));
            }
        }
        self.len += other.len;
        self.words.truncate(words_for(self.len));
        self.clear_tail();
    }
}

/// Wire form: the bit length and the LSB-first bytes. Deserialising is strict: the byte
/// count must be exactly `ceil(len/8)` and padding bits beyond `len` must be zero, so one
/// block has exactly one encoding.
#[derive(Serialize, Deserialize)]
struct WireBits {
    len: u64,
    #[serde(with = "serde_bytes_compat")]
    bytes: Vec<u8>,
}

mod serde_bytes_compat {
    //! Bytes as a serde byte string (compact in binary formats, an array in JSON).
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

impl Serialize for BitBlock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireBits { len: self.len as u64, bytes: self.to_bytes() }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for BitBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = WireBits::deserialize(d)?;
        let len = usize::try_from(w.len).map_err(|_| D::Error::custom("bit length too large"))?;
        if w.bytes.len() != len.div_ceil(8) {
            return Err(D::Error::custom(format!("{} bytes for {len} bits", w.bytes.len())));
        }
        if len % 8 != 0 && w.bytes.last().is_some_and(|&b| b >> (len % 8) != 0) {
            return Err(D::Error::custom("non-zero padding bits"));
        }
        Ok(BitBlock::from_bytes(&w.bytes, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model_parity(b: &[bool]) -> bool {
        b.iter().fold(false, |a, &x| a ^ x)
    }

    fn bits_and_range() -> impl Strategy<Value = (Vec<bool>, usize, usize)> {
        proptest::collection::vec(any::<bool>(), 0..400).prop_flat_map(|v| {
            let n = v.len();
            (Just(v), 0..=n).prop_flat_map(move |(v, s)| (Just(v), Just(s), s..=n))
        })
    }

    proptest! {
        #[test]
        fn roundtrip_bools_bytes(v in proptest::collection::vec(any::<bool>(), 0..300)) {
            let b = BitBlock::from_bools(&v);
            prop_assert_eq!(b.to_bools(), v.clone());
            let c = BitBlock::from_bytes(&b.to_bytes(), v.len());
            prop_assert_eq!(c.to_bools(), v.clone());
            prop_assert_eq!(b.count_ones(), v.iter().filter(|&&x| x).count());
        }

        #[test]
        fn parity_range_matches_model((v, s, e) in bits_and_range()) {
            let b = BitBlock::from_bools(&v);
            prop_assert_eq!(b.parity_range(s, e), model_parity(&v[s..e]));
            prop_assert_eq!(b.slice(s, e).to_bools(), v[s..e].to_vec());
        }

        #[test]
        fn parity_indices_and_gather_match_model(
            v in proptest::collection::vec(any::<bool>(), 1..300),
            raw in proptest::collection::vec(any::<u32>(), 0..300),
        ) {
            let b = BitBlock::from_bools(&v);
            let idx: Vec<u32> = raw.iter().map(|&r| r % v.len() as u32).collect();
            let model: Vec<bool> = idx.iter().map(|&i| v[i as usize]).collect();
            prop_assert_eq!(b.parity_indices(&idx), model_parity(&model));
            prop_assert_eq!(b.extract(&idx).to_bools(), model);
        }

        #[test]
        fn permute_matches_model(v in proptest::collection::vec(any::<bool>(), 0..300), seed in any::<u64>()) {
            use rand::{SeedableRng, seq::SliceRandom};
            let mut perm: Vec<u32> = (0..v.len() as u32).collect();
            perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let b = BitBlock::from_bools(&v);
            let p = b.permute(&perm);
            let model: Vec<bool> = perm.iter().map(|&i| v[i as usize]).collect();
            prop_assert_eq!(p.to_bools(), model);
            prop_assert_eq!(p.count_ones(), b.count_ones());
        }

        #[test]
        fn xor_and_distance_match_model(
            pair in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..300)
        ) {
            let (x, y): (Vec<bool>, Vec<bool>) = pair.into_iter().unzip();
            let mut a = BitBlock::from_bools(&x);
            let b = BitBlock::from_bools(&y);
            let model: Vec<bool> = x.iter().zip(&y).map(|(p, q)| p ^ q).collect();
            prop_assert_eq!(a.hamming_distance(&b), model.iter().filter(|&&z| z).count());
            a.xor_assign(&b);
            prop_assert_eq!(a.to_bools(), model);
        }

        #[test]
        fn push_extend_truncate_match_model(
            x in proptest::collection::vec(any::<bool>(), 0..200),
            y in proptest::collection::vec(any::<bool>(), 0..200),
            t in 0usize..400,
        ) {
            let mut a = BitBlock::from_bools(&x);
            a.extend_from(&BitBlock::from_bools(&y));
            let mut model = x.clone();
            model.extend_from_slice(&y);
            prop_assert_eq!(a.to_bools(), model.clone());
            let mut p = BitBlock::zeros(0);
            for &bit in &model { p.push(bit); }
            prop_assert_eq!(&p, &a);
            a.truncate(t);
            model.truncate(t);
            prop_assert_eq!(a.to_bools(), model);
            // the tail stays clear, so word-wise equality matches bit equality
            prop_assert_eq!(a.words().last().map_or(0, |w| w & !tail_mask(a.len())), 0);
        }
    }

    #[test]
    fn serde_is_strict() {
        let b = BitBlock::from_bools(&[true, false, true, true, false, false, true, false, true]);
        let j = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<BitBlock>(&j).unwrap(), b);
        assert!(serde_json::from_str::<BitBlock>(r#"{"len":9,"bytes":[77]}"#).is_err());
        assert!(serde_json::from_str::<BitBlock>(r#"{"len":9,"bytes":[77,2]}"#).is_err());
        assert!(serde_json::from_str::<BitBlock>(r#"{"len":9,"bytes":[77,1]}"#).is_ok());
    }

    #[test]
    fn debug_hides_bits() {
        let b = BitBlock::from_bools(&[true, false, true]);
        assert_eq!(format!("{b:?}"), "BitBlock(3 bits)");
    }
}
