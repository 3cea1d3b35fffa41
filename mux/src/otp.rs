//! One-time-pad downstream frames, for flows marked as such.
//!
//! AES-128-CTR ([`crate::downstream`]) is computationally secure; a flow that must stay
//! secret against any adversary, even one who later breaks AES, can instead be sent under a
//! one-time pad: its payload XORed with key bytes used for nothing else, ever (Shannon 1949,
//! perfect secrecy: the ciphertext is independent of the plaintext when the pad is uniform,
//! as long as the message and never reused). The price is key at the traffic's rate.
//!
//! **Pad runs.** The OLT takes pad bytes from the ONU's pool in *runs* (a few KiB at a
//! time, one durable consumption each) and announces each run to the ONU as a pool use over
//! the authenticated classical channel; the ONU takes the same bytes from its own pool. A
//! run is named by the sequence number of the pool use that announced it — the same number
//! at both ends. [`OtpPads`] holds one ONU's runs at one end.
//!
//! **Frames.** A one-time-pad frame is a downstream frame with control bit 5 set, key index
//! `00` and an 8-byte pad reference (run, offset) after the header
//! ([`crate::downstream::PadRef`]); its payload is XORed with the run's bytes from that
//! offset. The header travels in clear. Like CTR, the pad gives confidentiality only.
//!
//! **No pad byte is used twice.** The sender takes pads in order, run by run, and erases
//! every byte it has used or passed over (a run's tail too short for the next payload is
//! dropped, not kept for later). The receiver keeps, per run, how far frames have used it:
//! a frame whose pad starts below that mark (a replay, or a frame reordered behind a later
//! one) is refused, and the bytes below the mark are erased. Runs are held in announcement
//! order; the oldest are dropped beyond a bound (their unused bytes stay consumed in both
//! ledgers: recorded, never reused).
//!
//! **Restarts.** Runs live in memory. After either end restarts, the runs it held are gone
//! and new runs (new use numbers, which only grow) are announced; frames naming an old run
//! are refused as unknown, never decrypted with other bytes.

use std::collections::VecDeque;
use std::fmt;

use zeroize::Zeroize;

use crate::downstream::{
    DownstreamError, Frame, FrameRepr, HEADER_LEN, KeyIndex, MAX_SUPERFRAME, PAD_REF_LEN, PadRef,
};
use crate::slot_map::OnuId;

/// One run of pad bytes.
struct Run {
    /// The pool use that announced it.
    seq: u32,
    /// The bytes; everything below `used` is zeroed.
    bytes: Vec<u8>,
    /// Bytes used (sender: taken; receiver: below the highest frame opened).
    used: usize,
}

impl Run {
    fn left(&self) -> usize {
        self.bytes.len() - self.used
    }

    /// Marks everything below `to` used and erases it.
    fn use_up_to(&mut self, to: usize) {
        let to = to.min(self.bytes.len());
        if to > self.used {
            self.bytes[self.used..to].zeroize();
            self.used = to;
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// One ONU's one-time pads at one end (the same type seals at the OLT and opens at the
/// ONU). `Debug` shows run numbers and lengths, never pad bytes.
pub struct OtpPads {
    onu: OnuId,
    runs: VecDeque<Run>,
    max_runs: usize,
    last_seq: Option<u32>,
}

impl fmt::Debug for OtpPads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs: Vec<(u32, usize, usize)> =
            self.runs.iter().map(|r| (r.seq, r.used, r.bytes.len())).collect();
        f.debug_struct("OtpPads").field("onu", &self.onu).field("runs (seq, used, len)", &runs).finish()
    }
}

impl OtpPads {
    /// No pads yet for `onu`; at most `max_runs` runs are held (the oldest are dropped).
    pub fn new(onu: OnuId, max_runs: usize) -> OtpPads {
        OtpPads { onu, runs: VecDeque::new(), max_runs: max_runs.max(1), last_seq: None }
    }

    /// The ONU these pads belong to.
    pub fn onu(&self) -> OnuId {
        self.onu
    }

    /// Adds run `seq` (the announcing pool use's number) with `bytes`. Runs must come in
    /// increasing order; beyond `max_runs` the oldest run is dropped (and erased).
    pub fn add_run(&mut self, seq: u32, bytes: &[u8]) -> Result<(), DownstreamError> {
        if let Some(last) = self.last_seq
            && seq <= last
        {
            return Err(DownstreamError::PadRunOutOfOrder { last, got: seq });
        }
        self.last_seq = Some(seq);
        self.runs.push_back(Run { seq, bytes: bytes.to_vec(), used: 0 });
        while self.runs.len() > self.max_runs {
            self.runs.pop_front();
        }
        Ok(())
    }

    /// Unused pad bytes held.
    pub fn available(&self) -> u64 {
        self.runs.iter().map(|r| r.left() as u64).sum()
    }

    /// Runs held.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The largest payload the next [`seal`](Self::seal) can take (the most unused bytes
    /// of one run).
    pub fn largest(&self) -> usize {
        self.runs.iter().map(Run::left).max().unwrap_or(0)
    }

    /// Seals `payload` for this ONU in `superframe` under the next unused pad bytes: the
    /// first run (oldest first) with room for the whole payload; runs before it are used
    /// up and erased (their tails too short for this payload are never used).
    /// [`DownstreamError::PadExhausted`] (nothing used) when no run has room: never clear.
    pub fn seal(&mut self, superframe: u64, payload: &[u8]) -> Result<Vec<u8>, DownstreamError> {
        let len = u16::try_from(payload.len()).map_err(|_| DownstreamError::PayloadTooLong(payload.len()))?;
        if superframe > MAX_SUPERFRAME {
            return Err(DownstreamError::SuperframeOutOfRange(superframe));
        }
        let Some(k) = self.runs.iter().position(|r| r.left() >= payload.len() && !payload.is_empty()) else {
            return Err(DownstreamError::PadExhausted(payload.len()));
        };
        for r in self.runs.range_mut(..k) {
            let all = r.bytes.len();
            r.use_up_to(all);
        }
        let run = &mut self.runs[k];
        let offset = run.used;
        let pad = PadRef { run: run.seq, offset: offset as u32 };
        let repr = FrameRepr {
            onu: self.onu,
            key_index: KeyIndex::Clear,
            superframe,
            frame_index: 0,
            payload_len: len,
            pad: Some(pad),
        };
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Frame::new_unchecked(&mut out[..]))?;
        let body = &mut out[HEADER_LEN + PAD_REF_LEN..];
        for ((o, p), k) in body.iter_mut().zip(payload).zip(&run.bytes[offset..offset + payload.len()]) {
            *o = p ^ k;
        }
        run.use_up_to(offset + payload.len());
        Ok(out)
    }

    /// Where `bytes`' pad lies, checked: the frame is a one-time-pad frame for this ONU
    /// naming unused bytes of a run held here. Returns (run index, offset, header, payload
    /// range).
    fn locate(&self, bytes: &[u8]) -> Result<(usize, usize, FrameRepr), DownstreamError> {
        let frame = Frame::new_checked(bytes)?;
        let repr = FrameRepr::parse(&frame)?;
        if repr.onu != self.onu {
            return Err(DownstreamError::WrongOnu { expected: self.onu, got: repr.onu });
        }
        let Some(pad) = repr.pad else {
            return Err(DownstreamError::WrongKind("a keyed or clear frame is opened with the keys"));
        };
        let k =
            self.runs.iter().position(|r| r.seq == pad.run).ok_or(DownstreamError::UnknownPad(pad.run))?;
        let run = &self.runs[k];
        let (offset, len) = (pad.offset as usize, usize::from(repr.payload_len));
        if offset < run.used || offset.checked_add(len).is_none_or(|end| end > run.bytes.len()) {
            return Err(DownstreamError::PadUnusable { run: pad.run, offset: pad.offset, len });
        }
        Ok((k, offset, repr))
    }

    /// Opens a one-time-pad frame for this ONU (at the start of `bytes`): its plaintext.
    /// Refused when the frame is not one, is another ONU's, names an unknown run, or pad
    /// bytes used before (a replay) or beyond the run. The pad bytes up to the frame's end
    /// are then used up and erased.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(FrameRepr, Vec<u8>), DownstreamError> {
        let (k, offset, repr) = self.locate(bytes)?;
        let len = usize::from(repr.payload_len);
        let run = &mut self.runs[k];
        let start = repr.header_len();
        let plain = bytes[start..start + len]
            .iter()
            .zip(&run.bytes[offset..offset + len])
            .map(|(c, p)| c ^ p)
            .collect();
        run.use_up_to(offset + len);
        Ok((repr, plain))
    }

    /// Opens a copy without using the pad (diagnostics and tests).
    pub fn peek(&self, bytes: &[u8]) -> Result<(FrameRepr, Vec<u8>), DownstreamError> {
        let (k, offset, repr) = self.locate(bytes)?;
        let len = usize::from(repr.payload_len);
        let start = repr.header_len();
        let run = &self.runs[k];
        Ok((
            repr,
            bytes[start..start + len]
                .iter()
                .zip(&run.bytes[offset..offset + len])
                .map(|(c, p)| c ^ p)
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pads(onu: u16, runs: &[(u32, Vec<u8>)]) -> OtpPads {
        let mut p = OtpPads::new(OnuId(onu), 4);
        for (seq, b) in runs {
            p.add_run(*seq, b).unwrap();
        }
        p
    }

    fn run_bytes(seed: u8, n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(151).wrapping_add(seed)).collect()
    }

    #[test]
    fn both_ends_agree_and_no_pad_byte_is_used_twice() {
        let runs = vec![(3, run_bytes(1, 100)), (7, run_bytes(2, 50))];
        let (mut olt, mut onu) = (pads(5, &runs), pads(5, &runs));
        let msgs: Vec<Vec<u8>> = vec![vec![0xAA; 40], vec![0x55; 40], vec![1; 30], vec![2; 20]];
        let mut used = Vec::new();
        for m in &msgs {
            let f = olt.seal(9, m).unwrap();
            let r = Frame::new_checked(&f[..]).unwrap().pad_ref().unwrap();
            used.push((r.run, r.offset, m.len()));
            assert_ne!(&f[HEADER_LEN + PAD_REF_LEN..], &m[..], "payload sent in clear");
            let (repr, plain) = onu.open(&f).unwrap();
            assert_eq!((plain, repr.pad), (m.clone(), Some(r)));
            // A replay is refused.
            assert!(matches!(onu.open(&f), Err(DownstreamError::PadUnusable { .. })));
        }
        // Run 3: 0..40, 40..80; the third (30 B) does not fit its 20-byte tail: run 7.
        assert_eq!(used, vec![(3, 0, 40), (3, 40, 40), (7, 0, 30), (7, 30, 20)]);
        // Nothing left: refused, never clear.
        assert_eq!(olt.seal(9, &[1]), Err(DownstreamError::PadExhausted(1)));
        assert_eq!(olt.available(), 0);
    }

    #[test]
    fn other_onus_unknown_runs_and_keyed_frames_are_refused() {
        let runs = vec![(1, run_bytes(3, 64))];
        let (mut olt, mut other, mut late) =
            (pads(1, &runs), pads(2, &runs), pads(1, &[(2, run_bytes(3, 64))]));
        let f = olt.seal(0, b"secret").unwrap();
        assert!(matches!(other.open(&f), Err(DownstreamError::WrongOnu { .. })));
        assert_eq!(late.open(&f).unwrap_err(), DownstreamError::UnknownPad(1));
        // A keyed frame is not a pad frame.
        let mut keyed = f.clone();
        keyed[2] = 0x40;
        keyed.truncate(HEADER_LEN + 6);
        keyed[12..14].copy_from_slice(&6u16.to_be_bytes());
        assert!(matches!(late.open(&keyed), Err(DownstreamError::WrongKind(_))));
        // The pad flag with a key index is malformed.
        let mut both = f.clone();
        both[2] |= 0x40;
        assert!(matches!(late.open(&both), Err(DownstreamError::Frame(_))));
        // Runs only move forward.
        assert_eq!(late.add_run(2, &[0; 4]), Err(DownstreamError::PadRunOutOfOrder { last: 2, got: 2 }));
    }

    #[test]
    fn a_frame_reordered_behind_a_later_one_is_refused_and_old_runs_are_dropped() {
        let runs = vec![(1, run_bytes(4, 64))];
        let (mut olt, mut onu) = (pads(1, &runs), pads(1, &runs));
        let a = olt.seal(0, &[7; 10]).unwrap();
        let b = olt.seal(0, &[8; 10]).unwrap();
        assert_eq!(onu.open(&b).unwrap().1, vec![8; 10]);
        assert!(matches!(onu.open(&a), Err(DownstreamError::PadUnusable { .. })));
        for seq in 2..=5 {
            onu.add_run(seq, &[0; 8]).unwrap();
        }
        assert_eq!(onu.runs(), 4);
        assert_eq!(onu.peek(&b).unwrap_err(), DownstreamError::UnknownPad(1));
        assert!(!format!("{onu:?}").contains("[0, 0"));
    }

    proptest! {
        /// Any sequence of payloads sealed from random runs opens to itself at the peer,
        /// and the pad ranges used never overlap.
        #[test]
        fn seal_open_round_trip(lens in proptest::collection::vec(1usize..120, 1..20), run_lens in proptest::collection::vec(1usize..300, 1..4)) {
            let runs: Vec<(u32, Vec<u8>)> = run_lens.iter().enumerate().map(|(i, &n)| (i as u32 * 2 + 1, run_bytes(i as u8, n))).collect();
            let (mut olt, mut onu) = (pads(1, &runs), pads(1, &runs));
            let mut ranges: Vec<(u32, u32, usize)> = Vec::new();
            for (i, len) in lens.into_iter().enumerate() {
                let m: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                match olt.seal(i as u64, &m) {
                    Ok(f) => {
                        let r = Frame::new_checked(&f[..]).unwrap().pad_ref().unwrap();
                        for &(run, off, l) in &ranges {
                            prop_assert!(run != r.run || off as usize + l <= r.offset as usize);
                        }
                        ranges.push((r.run, r.offset, len));
                        prop_assert_eq!(onu.open(&f).unwrap().1, m);
                    }
                    Err(e) => prop_assert_eq!(e, DownstreamError::PadExhausted(len)),
                }
            }
        }
    }
}
