//! Word-level helpers: flat bitsets and all top-level block parities of a pass at once.

use super::tree::Layout;
use crate::bits::{BitBlock, words_for};

#[inline]
pub(crate) fn get(words: &[u64], i: usize) -> bool {
    (words[i >> 6] >> (i & 63)) & 1 == 1
}

#[inline]
pub(crate) fn set(words: &mut [u64], i: usize, v: bool) {
    let m = 1u64 << (i & 63);
    if v {
        words[i >> 6] |= m;
    } else {
        words[i >> 6] &= !m;
    }
}

#[inline]
pub(crate) fn toggle(words: &mut [u64], i: usize) {
    words[i >> 6] ^= 1u64 << (i & 63);
}

/// Parity of every top-level block of `copy` (a pass's permuted key), as a bitset of
/// `nb` bits. Word-wise for block sizes that are multiples of 64 or divide 64.
pub(crate) fn block_parities(copy: &BitBlock, l: &Layout) -> Vec<u64> {
    let nb = l.nb as usize;
    let k = l.k as usize;
    let mut out = vec![0u64; words_for(nb)];
    let w = copy.words();
    if k.is_multiple_of(64) {
        let kw = k / 64;
        for (b, chunk) in w.chunks(kw).enumerate().take(nb) {
            let x = chunk.iter().fold(0u64, |a, &y| a ^ y);
            set(&mut out, b, x.count_ones() & 1 == 1);
        }
    } else if 64 % k == 0 {
        let lanes = 64 / k;
        for (wi, &x) in w.iter().enumerate() {
            let mut y = x;
            let mut s = 1;
            while s < k {
                y ^= y >> s;
                s <<= 1;
            }
            for lane in 0..lanes {
                let b = wi * lanes + lane;
                if b < nb {
                    set(&mut out, b, (y >> (lane * k)) & 1 == 1);
                }
            }
        }
    } else {
        for b in 0..l.nb {
            let (s, e) = l.block_range(b);
            set(&mut out, b as usize, copy.parity_range(s as usize, e as usize));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_parities_match_parity_range() {
        let mut rng = crate::rng::seeded(9);
        for n in [1usize, 31, 64, 100, 640, 1000, 4099] {
            let key = BitBlock::random(n, &mut rng);
            for k in [1u32, 2, 4, 8, 16, 32, 64, 128, 3, 7, 100, 192, 5000] {
                let l = Layout::new(n as u32, k);
                let p = block_parities(&key, &l);
                for b in 0..l.nb {
                    let (s, e) = l.block_range(b);
                    assert_eq!(
                        get(&p, b as usize),
                        key.parity_range(s as usize, e as usize),
                        "n={n} k={k} b={b}"
                    );
                }
                assert_eq!(p.len(), words_for(l.nb as usize));
            }
        }
    }
}
