//! Sliding replay window over 64-bit sequence numbers (RFC 4303 §3.4.3 style bitmap).

/// Accepts each sequence number at most once, and none older than `size` below the
/// highest accepted. `size` is a multiple of 64.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest accepted sequence number, if any.
    highest: Option<u64>,
    /// Bit `i` set: `highest − i` accepted (bit 0 is `highest` itself).
    bits: Vec<u64>,
}

impl ReplayWindow {
    /// A window of `size` sequence numbers (rounded up to a multiple of 64, at least 64).
    pub fn new(size: u32) -> Self {
        let words = (size as usize).div_ceil(64).max(1);
        Self { highest: None, bits: vec![0; words] }
    }

    /// Window size in sequence numbers.
    pub fn size(&self) -> u64 {
        64 * self.bits.len() as u64
    }

    /// Highest accepted sequence number.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `seq` would be accepted (not seen, not too old). Changes nothing.
    pub fn check(&self, seq: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if seq > h => true,
            Some(h) => {
                let d = h - seq;
                d < self.size() && !self.get(d)
            }
        }
    }

    /// Records `seq` as accepted; false (changing nothing) if [`check`](Self::check) fails.
    pub fn accept(&mut self, seq: u64) -> bool {
        if !self.check(seq) {
            return false;
        }
        match self.highest {
            Some(h) if seq <= h => self.set(h - seq),
            Some(h) => {
                self.shift(seq - h);
                self.highest = Some(seq);
                self.set(0);
            }
            None => {
                self.highest = Some(seq);
                self.set(0);
            }
        }
        true
    }

    fn get(&self, d: u64) -> bool {
        self.bits[(d / 64) as usize] >> (d % 64) & 1 == 1
    }

    fn set(&mut self, d: u64) {
        self.bits[(d / 64) as usize] |= 1 << (d % 64);
    }

    /// Moves every bit `n` places towards older.
    fn shift(&mut self, n: u64) {
        if n >= self.size() {
            self.bits.iter_mut().for_each(|w| *w = 0);
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        let len = self.bits.len();
        for i in (0..len).rev() {
            let lo = if i >= words { self.bits[i - words] } else { 0 };
            let lo2 = if i > words { self.bits[i - words - 1] } else { 0 };
            self.bits[i] = if bits == 0 { lo } else { (lo << bits) | (lo2 >> (64 - bits)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (sequence, expected acceptance) rows applied in order to a 64-wide window.
    #[test]
    fn table() {
        let rows: &[(u64, bool)] = &[
            (10, true),
            (10, false),
            (9, true),
            (11, true),
            (9, false),
            (100, true),
            (37, true),  // 100 − 63: oldest still inside
            (36, false), // 100 − 64: outside
            (99, true),
            (99, false),
            (1000, true),
            (100, false),
            (u64::MAX, true),
            (u64::MAX, false),
            (u64::MAX - 63, true),
        ];
        let mut w = ReplayWindow::new(64);
        for (i, &(seq, ok)) in rows.iter().enumerate() {
            assert_eq!(w.accept(seq), ok, "row {i}: seq {seq}");
        }
    }

    proptest! {
        /// Agrees with a model that remembers every accepted number.
        #[test]
        fn matches_model(size in prop_oneof![Just(64u32), Just(128), Just(256)],
                         seqs in proptest::collection::vec(0u64..600, 1..300)) {
            let mut w = ReplayWindow::new(size);
            let mut seen = std::collections::BTreeSet::new();
            for s in seqs {
                let hi = seen.iter().next_back().copied();
                let model = !seen.contains(&s) && hi.is_none_or(|h: u64| s > h || h - s < u64::from(size));
                prop_assert_eq!(w.accept(s), model);
                if model { seen.insert(s); }
            }
        }
    }
}
