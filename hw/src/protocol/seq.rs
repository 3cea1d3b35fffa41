//! Sequence numbers (PROTOCOL.md §6), sans-IO: a send-side counter and a receive-side
//! tracker that classifies each arriving datagram as new, late (reordered), duplicate or
//! stale, and keeps the count of datagrams lost — in bounded memory.
//!
//! Sequence numbers are `u32` and wrap; comparisons use serial-number arithmetic (RFC 1982):
//! `a` is after `b` when `a − b (mod 2³²)` lies in `1 .. 2³¹`. A stream must never have more
//! than 2³¹ datagrams in flight, which at one datagram per microsecond is 35 minutes.

/// The send side: the next sequence number of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqCounter {
    next: u32,
}

impl SeqCounter {
    /// A counter whose first number is `first` (0 for a board's data stream after a Hello
    /// or Reset, PROTOCOL.md §6.1).
    pub const fn starting_at(first: u32) -> Self {
        Self { next: first }
    }

    /// The number for the next new datagram (a retransmission reuses its original number
    /// instead).
    #[must_use]
    pub fn next_seq(&mut self) -> u32 {
        let n = self.next;
        self.next = n.wrapping_add(1);
        n
    }

    /// The number [`next_seq`](Self::next_seq) will return, without taking it.
    pub const fn peek(&self) -> u32 {
        self.next
    }
}

/// What an arriving datagram is, relative to what arrived before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Ahead of everything so far. `skipped` datagrams between the previous highest and this
    /// one have not arrived (0: in order); they count as lost until they turn up.
    New {
        /// Datagrams jumped over.
        skipped: u32,
    },
    /// Behind the highest, filling a hole left earlier: reordered. It no longer counts as
    /// lost.
    Late,
    /// Seen before: drop it.
    Duplicate,
    /// Too far behind to tell (older than the window, or older than the stream's first
    /// datagram): drop it; whatever it carried stays counted as lost.
    Stale,
}

/// Receive-side state of one sequence-numbered stream (one board's data stream in one
/// epoch).
///
/// Memory is fixed: the highest number seen plus a bitmap of the [`WINDOW`](Self::WINDOW)
/// numbers below it. A datagram further behind is [`Arrival::Stale`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Highest number seen; `None` before the first datagram.
    highest: Option<u32>,
    /// Bit `i` set: `highest − 1 − i` has arrived.
    seen: u128,
    /// How many numbers below `highest` belong to the stream (≤ WINDOW): before the first
    /// datagram there is nothing to be late for.
    span: u32,
    received: u64,
    late: u64,
    duplicates: u64,
    stale: u64,
    lost: u64,
}

impl SeqTracker {
    /// How far behind the highest number a late datagram is still recognised.
    pub const WINDOW: u32 = 128;

    /// A tracker that has seen nothing.
    pub const fn new() -> Self {
        Self { highest: None, seen: 0, span: 0, received: 0, late: 0, duplicates: 0, stale: 0, lost: 0 }
    }

    /// Forgets the stream (a new epoch starts a new stream); the counters are kept.
    pub fn restart(&mut self) {
        self.highest = None;
        self.seen = 0;
        self.span = 0;
    }

    /// Classifies datagram `seq` and updates the counters.
    pub fn on_arrival(&mut self, seq: u32) -> Arrival {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.received += 1;
            return Arrival::New { skipped: 0 };
        };
        let ahead = seq.wrapping_sub(highest);
        if ahead == 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        if ahead < 1 << 31 {
            // Shift the window: the old highest becomes bit `ahead − 1`.
            self.seen = if ahead > Self::WINDOW {
                0
            } else {
                let shifted = if ahead == Self::WINDOW { 0 } else { self.seen << ahead };
                shifted | 1u128 << (ahead - 1)
            };
            self.span = self.span.saturating_add(ahead).min(Self::WINDOW);
            self.highest = Some(seq);
            self.received += 1;
            self.lost += (ahead - 1) as u64;
            return Arrival::New { skipped: ahead - 1 };
        }
        let behind = highest.wrapping_sub(seq);
        if behind > self.span {
            self.stale += 1;
            return Arrival::Stale;
        }
        let bit = 1u128 << (behind - 1);
        if self.seen & bit != 0 {
            self.duplicates += 1;
            Arrival::Duplicate
        } else {
            self.seen |= bit;
            self.received += 1;
            self.late += 1;
            self.lost -= 1;
            Arrival::Late
        }
    }

    /// Highest number seen.
    pub const fn highest(&self) -> Option<u32> {
        self.highest
    }
    /// Datagrams accepted (new or late).
    pub const fn received(&self) -> u64 {
        self.received
    }
    /// Datagrams that arrived after a later one (reordered).
    pub const fn late(&self) -> u64 {
        self.late
    }
    /// Duplicates dropped.
    pub const fn duplicates(&self) -> u64 {
        self.duplicates
    }
    /// Datagrams dropped as too old to classify.
    pub const fn stale(&self) -> u64 {
        self.stale
    }
    /// Datagrams skipped and not (yet) arrived. Those within the window may still arrive
    /// [`Late`](Arrival::Late); the rest are gone for good.
    pub const fn lost(&self) -> u64 {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_loss_duplicate_reorder() {
        let mut t = SeqTracker::new();
        assert_eq!(t.on_arrival(10), Arrival::New { skipped: 0 });
        assert_eq!(t.on_arrival(11), Arrival::New { skipped: 0 });
        assert_eq!(t.on_arrival(11), Arrival::Duplicate);
        assert_eq!(t.on_arrival(14), Arrival::New { skipped: 2 });
        assert_eq!(t.lost(), 2);
        assert_eq!(t.on_arrival(12), Arrival::Late);
        assert_eq!(t.on_arrival(12), Arrival::Duplicate);
        assert_eq!(t.lost(), 1);
        assert_eq!(t.on_arrival(9), Arrival::Stale); // before the stream's first datagram
        assert_eq!(
            t.on_arrival(14 + SeqTracker::WINDOW + 5),
            Arrival::New { skipped: SeqTracker::WINDOW + 4 }
        );
        assert_eq!(t.on_arrival(13), Arrival::Stale); // fell out of the window: stays lost
        assert_eq!(t.lost(), 1 + SeqTracker::WINDOW as u64 + 4);
        assert_eq!((t.received(), t.late(), t.duplicates(), t.stale()), (5, 1, 2, 2));
    }

    #[test]
    fn wraps_around() {
        let mut t = SeqTracker::new();
        assert_eq!(t.on_arrival(u32::MAX - 1), Arrival::New { skipped: 0 });
        assert_eq!(t.on_arrival(1), Arrival::New { skipped: 2 });
        assert_eq!(t.on_arrival(u32::MAX), Arrival::Late);
        assert_eq!(t.on_arrival(0), Arrival::Late);
        assert_eq!(t.lost(), 0);
        let mut c = SeqCounter::starting_at(u32::MAX);
        assert_eq!((c.next_seq(), c.next_seq(), c.peek()), (u32::MAX, 0, 1));
        t.restart();
        assert_eq!(t.on_arrival(0), Arrival::New { skipped: 0 });
    }

    /// The obvious model: remember every number (unwrapped, as offsets from the first).
    #[derive(Default)]
    struct Model {
        first: Option<u64>,
        highest: u64,
        seen: BTreeSet<u64>,
    }

    impl Model {
        fn on_arrival(&mut self, v: u64) -> Arrival {
            let Some(first) = self.first else {
                self.first = Some(v);
                self.highest = v;
                self.seen.insert(v);
                return Arrival::New { skipped: 0 };
            };
            if v > self.highest {
                let skipped = (v - self.highest - 1) as u32;
                self.highest = v;
                self.seen.insert(v);
                return Arrival::New { skipped };
            }
            if v == self.highest {
                return Arrival::Duplicate;
            }
            if v < first || self.highest - v > SeqTracker::WINDOW as u64 {
                return Arrival::Stale;
            }
            if self.seen.insert(v) { Arrival::Late } else { Arrival::Duplicate }
        }
        fn lost(&self) -> u64 {
            self.first.map_or(0, |f| (self.highest - f + 1) - self.seen.len() as u64)
        }
    }

    proptest! {
        #[test]
        fn tracker_matches_model(
            base in prop_oneof![Just(0u32), Just(u32::MAX - 100), any::<u32>()],
            start in 200u64..300,
            steps in proptest::collection::vec(-150i64..60, 1..300),
        ) {
            // A random walk of offsets: mostly forward, with back-steps for reordering and
            // duplicates, and long jumps for loss.
            let mut t = SeqTracker::new();
            let mut m = Model::default();
            let mut pos = start as i64;
            for s in steps {
                pos = (pos + s).max(0);
                let v = pos as u64;
                let seq = base.wrapping_add(v as u32);
                prop_assert_eq!(t.on_arrival(seq), m.on_arrival(v), "offset {}", v);
                prop_assert_eq!(t.lost(), m.lost());
            }
        }
    }
}
