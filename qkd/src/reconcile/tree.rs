//! Block and bisection-node numbering of one pass.
//!
//! A pass cuts its permuted order (`0..N`) into top-level blocks `[b·k, min((b+1)·k, N))`.
//! Every block is the root of an implicit binary tree: a node `[s, e)` with at least two
//! bits has a left child `[s, m)` and a right child `[m, e)` with `m = s + ⌈(e−s)/2⌉`.
//! Within a block, nodes are numbered heap-style (root 1, children `2h` and `2h+1`), and
//! the pass-wide node id is `b · 2^(D+1) + h` with `D = ⌈log2 k⌉` the tree depth. Queries
//! name nodes by this id; both ends decode it the same way.

/// Geometry of one pass: permuted length, block size, block count, tree depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Permuted length `N`.
    pub(crate) n: u32,
    /// Top-level block size (clamped to `N`).
    pub(crate) k: u32,
    /// Number of top-level blocks.
    pub(crate) nb: u32,
    /// Tree depth `D = ⌈log2 k⌉`: nodes at depth `D` are single bits.
    pub(crate) depth: u32,
}

/// Split point of a node `[s, e)` with at least two bits.
#[inline]
pub(crate) fn split(s: u32, e: u32) -> u32 {
    s + (e - s).div_ceil(2)
}

impl Layout {
    /// Layout for `n ≥ 1` permuted bits and block size `k ≥ 1` (clamped to `n`).
    pub(crate) fn new(n: u32, k: u32) -> Self {
        debug_assert!(n >= 1 && k >= 1);
        let k = k.min(n);
        let depth = if k <= 1 { 0 } else { 32 - (k - 1).leading_zeros() };
        Self { n, k, nb: n.div_ceil(k), depth }
    }

    /// Bits of a node id that hold the in-block heap index.
    #[inline]
    pub(crate) fn shift(&self) -> u32 {
        self.depth + 1
    }

    /// Node id of block `b`'s root.
    #[inline]
    pub(crate) fn root(&self, b: u32) -> u32 {
        (b << self.shift()) | 1
    }

    /// Range `[s, e)` of block `b`.
    #[inline]
    pub(crate) fn block_range(&self, b: u32) -> (u32, u32) {
        let s = b * self.k;
        (s, (s + self.k).min(self.n))
    }

    /// Block containing permuted position `j`.
    #[inline]
    pub(crate) fn block_of(&self, j: u32) -> u32 {
        j / self.k
    }

    /// Number of internal-node slots (`nb · 2^D`): the size of per-node bitmaps indexed by
    /// [`Layout::internal_index`].
    pub(crate) fn internal_slots(&self) -> usize {
        (self.nb as usize) << self.depth
    }

    /// Index of internal node `id` (depth `< D`) in `0..internal_slots()`.
    #[inline]
    pub(crate) fn internal_index(&self, id: u32) -> usize {
        let b = id >> self.shift();
        let h = id & ((1 << self.shift()) - 1);
        debug_assert!(h >= 1 && h < (1 << self.depth));
        ((b as usize) << self.depth) | h as usize
    }

    /// Left child of internal node `id` (the right child is `left + 1`).
    #[inline]
    pub(crate) fn left_child(&self, id: u32) -> u32 {
        id + (id & ((1 << self.shift()) - 1))
    }

    /// Parent of non-root node `id`.
    #[inline]
    pub(crate) fn parent(&self, id: u32) -> u32 {
        let mask = (1 << self.shift()) - 1;
        (id & !mask) | ((id & mask) >> 1)
    }

    /// The range `[s, e)` of node `id`, or `None` when the id names no node (block out of
    /// range, heap index 0, or a path that runs past a single bit). This is the check on
    /// ids received from the peer.
    pub(crate) fn decode(&self, id: u32) -> Option<(u32, u32)> {
        let b = id >> self.shift();
        let h = id & ((1 << self.shift()) - 1);
        if b >= self.nb || h == 0 {
            return None;
        }
        let (mut s, mut e) = self.block_range(b);
        let level = 31 - h.leading_zeros();
        if e - s == self.k && self.k.is_power_of_two() {
            // A full power-of-two block halves exactly: no walk needed.
            let size = self.k >> level;
            let s = s + ((h - (1 << level)) << (self.depth - level));
            return Some((s, s + size));
        }
        for i in (0..level).rev() {
            if e - s < 2 {
                return None;
            }
            let m = split(s, e);
            if (h >> i) & 1 == 0 {
                e = m;
            } else {
                s = m;
            }
        }
        Some((s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node reachable by halving decodes to its range; children and parents agree.
    #[test]
    fn numbering_round_trips() {
        for (n, k) in
            [(1u32, 1u32), (1, 2), (7, 2), (100, 16), (100, 7), (1000, 1000), (1000, 5000), (129, 64)]
        {
            let l = Layout::new(n, k);
            let mut seen = 0u64;
            for b in 0..l.nb {
                let (s, e) = l.block_range(b);
                let mut stack = vec![(l.root(b), s, e)];
                while let Some((id, s, e)) = stack.pop() {
                    assert_eq!(l.decode(id), Some((s, e)), "n={n} k={k} id={id}");
                    seen += u64::from(e - s == 1);
                    if e - s >= 2 {
                        let left = l.left_child(id);
                        assert!(l.internal_index(id) < l.internal_slots());
                        assert_eq!(l.parent(left), id);
                        assert_eq!(l.parent(left + 1), id);
                        let m = split(s, e);
                        stack.push((left, s, m));
                        stack.push((left + 1, m, e));
                    }
                }
            }
            assert_eq!(seen, u64::from(n));
            assert_eq!(l.decode(0), None);
            assert_eq!(l.decode(l.nb << l.shift() | 1), None);
        }
    }
}
