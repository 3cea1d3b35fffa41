//! Sifting for efficient decoy-state BB84 (key basis Z, test basis X).
//!
//! The flow, receiver = OLT, sender = ONU:
//!
//! 1. The receiver announces its detections: gate indices in its own time base and the
//!    basis it measured each in ([`Announcement`], built by [`announce`]). Bits stay
//!    secret.
//! 2. The sender maps each gate to its own pulse (its driver applies the equalisation
//!    delay and pulls the pulse records from the source), then answers, per detection,
//!    "basis match + intensity class of 3" or "discard" ([`SiftAnswer`], built by
//!    [`answer`]). In the same message it discloses its bits for the matched **test-basis**
//!    (X) detections, which are sacrificed for parameter estimation anyway; this saves a
//!    round trip.
//! 3. The receiver applies the answer ([`apply_answer`]) and compares the disclosed test
//!    bits with its own: per-intensity detections `n` and errors `m` in both bases
//!    ([`DecoyCounts`]). Key-basis errors are unknown until reconciliation and are filled
//!    in afterwards.
//!
//! Both sides end with a [`SiftedKey`]: the key-basis (Z) bits in detection order, and the
//! intensity class of each.
//!
//! Every function here takes data that arrived from the peer and checks it: lengths that
//! do not match, gate lists that are not strictly increasing, or codes out of range give a
//! typed [`InvalidInput`], never a panic.

use crate::bits::BitBlock;
use crate::error::InvalidInput;
use crate::records::{Basis, DetectionRecord, Intensity, PulseRecord};
use serde::{Deserialize, Serialize};

/// The receiver's announcement: which gates clicked, and in which basis it measured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Gate indices in the receiver's time base, strictly increasing.
    pub gates: Vec<u64>,
    /// Bit `i` set = detection `i` was measured in X.
    pub bases: BitBlock,
}

impl Announcement {
    /// Number of detections announced.
    pub fn len(&self) -> usize {
        self.gates.len()
    }

    /// True when nothing was announced.
    pub fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }

    /// Checks the structure of an announcement received from the peer.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.bases.len() != self.gates.len() {
            return Err(InvalidInput::new(
                "announcement.bases",
                format!("{} bases for {} gates", self.bases.len(), self.gates.len()),
            ));
        }
        if self.gates.windows(2).any(|w| w[0] >= w[1]) {
            return Err(InvalidInput::new("announcement.gates", "gate indices must be strictly increasing"));
        }
        Ok(())
    }

    /// Basis of detection `i`.
    #[inline]
    pub fn basis(&self, i: usize) -> Basis {
        Basis::from_bit(self.bases.get(i))
    }
}

/// Builds the announcement from the receiver's detections (in gate order).
///
/// # Panics
/// If the detections are not in strictly increasing gate order (the receiver's own data:
/// caller misuse).
pub fn announce(detections: &[DetectionRecord]) -> Announcement {
    let mut gates = Vec::with_capacity(detections.len());
    let mut bases = BitBlock::zeros(detections.len());
    let words = bases.words_mut();
    for (i, d) in detections.iter().enumerate() {
        assert!(
            gates.last().is_none_or(|&g| g < d.gate),
            "detections must be in strictly increasing gate order"
        );
        gates.push(d.gate);
        words[i / 64] |= ((d.basis == Basis::X) as u64) << (i % 64);
    }
    Announcement { gates, bases }
}

/// 2-bit sift code: intensity class index (0, 1, 2) when the bases match, 3 otherwise.
pub const CODE_DISCARD: u8 = 3;

/// The sender's answer to an [`Announcement`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiftAnswer {
    /// One 2-bit code per announced detection, packed four to a byte, detection `i` in bits
    /// `2(i%4)..2(i%4)+2` of byte `i/4`: the intensity class index when the bases match,
    /// [`CODE_DISCARD`] otherwise (basis mismatch, or no pulse record for that gate).
    pub codes: Vec<u8>,
    /// The sender's bits of the matched test-basis (X) detections, in detection order.
    pub test_bits: BitBlock,
}

impl SiftAnswer {
    /// Code of detection `i` (caller has checked the length).
    #[inline]
    pub fn code(&self, i: usize) -> u8 {
        (self.codes[i / 4] >> (2 * (i % 4))) & 3
    }
}

/// Per-intensity detections `n` and errors `m` of one basis. Counts are `f64` so the same
/// type carries measured integers and expected (real) counts for planning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BasisCounts {
    /// Detections per intensity class (μ1, μ2, μ3).
    pub n: [f64; 3],
    /// Errors per intensity class (μ1, μ2, μ3).
    pub m: [f64; 3],
}

impl BasisCounts {
    /// Total detections.
    pub fn n_total(&self) -> f64 {
        self.n.iter().sum()
    }

    /// Total errors.
    pub fn m_total(&self) -> f64 {
        self.m.iter().sum()
    }

    /// Error rate over all intensities (0 when nothing was detected).
    pub fn qber(&self) -> f64 {
        let n = self.n_total();
        if n > 0.0 { self.m_total() / n } else { 0.0 }
    }
}

/// Counts of both bases: the input of the finite-key bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecoyCounts {
    /// Key basis (Z); `m` is known only after reconciliation.
    pub key: BasisCounts,
    /// Test basis (X).
    pub test: BasisCounts,
}

/// One side's sifted key: the matched key-basis bits in detection order and their
/// intensity classes. `Debug` shows lengths only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiftedKey {
    /// Key-basis bits.
    pub bits: BitBlock,
    /// Intensity class of each key bit.
    pub intensities: Vec<Intensity>,
}

impl SiftedKey {
    /// Number of key bits per intensity class.
    pub fn counts(&self) -> [f64; 3] {
        let mut c = [0.0; 3];
        for i in &self.intensities {
            c[i.index()] += 1.0;
        }
        c
    }
}

/// What the sender keeps after answering.
#[derive(Clone, Debug, Default)]
pub struct SenderSifted {
    /// Key-basis bits and intensities.
    pub key: SiftedKey,
    /// Per-intensity test-basis detections (errors unknown to the sender until the
    /// receiver reports them).
    pub test_n: [f64; 3],
}

/// The sender's side of sifting: `pulses[i]` is the pulse record of announced detection
/// `i` after the driver's gate→pulse translation (`None` when the source has no record for
/// it, which discards the detection).
pub fn answer(
    ann: &Announcement,
    pulses: &[Option<PulseRecord>],
) -> Result<(SiftAnswer, SenderSifted), InvalidInput> {
    ann.validate()?;
    if pulses.len() != ann.len() {
        return Err(InvalidInput::new(
            "pulses",
            format!("{} pulse records for {} detections", pulses.len(), ann.len()),
        ));
    }
    let mut codes = vec![0u8; ann.len().div_ceil(4)];
    let mut test_bits = BitBlock::zeros(0);
    let mut out = SenderSifted::default();
    for (i, p) in pulses.iter().enumerate() {
        let code = match p {
            Some(p) if p.basis == ann.basis(i) => {
                match p.basis {
                    Basis::Z => {
                        out.key.bits.push(p.bit);
                        out.key.intensities.push(p.intensity);
                    }
                    Basis::X => {
                        test_bits.push(p.bit);
                        out.test_n[p.intensity.index()] += 1.0;
                    }
                }
                p.intensity.index() as u8
            }
            _ => CODE_DISCARD,
        };
        codes[i / 4] |= code << (2 * (i % 4));
    }
    Ok((SiftAnswer { codes, test_bits }, out))
}

/// What the receiver holds after applying the answer.
#[derive(Clone, Debug, Default)]
pub struct ReceiverSifted {
    /// Key-basis bits and intensities.
    pub key: SiftedKey,
    /// Per-intensity counts: `key.n`, and `test.n`/`test.m` from comparing the disclosed
    /// test bits (key-basis errors still zero: unknown until reconciliation).
    pub counts: DecoyCounts,
}

/// The receiver's side: applies the sender's answer to its own detections (the same list
/// it announced, in the same order) and compares the disclosed test-basis bits.
pub fn apply_answer(
    detections: &[DetectionRecord],
    ans: &SiftAnswer,
) -> Result<ReceiverSifted, InvalidInput> {
    if ans.codes.len() != detections.len().div_ceil(4) {
        return Err(InvalidInput::new(
            "answer.codes",
            format!("{} code bytes for {} detections", ans.codes.len(), detections.len()),
        ));
    }
    // Padding codes beyond the last detection must be zero: a strict parser leaves no slack.
    if !detections.len().is_multiple_of(4)
        && ans.codes.last().is_some_and(|&b| b >> (2 * (detections.len() % 4)) != 0)
    {
        return Err(InvalidInput::new("answer.codes", "non-zero padding after the last code"));
    }
    let mut out = ReceiverSifted::default();
    let mut t = 0usize;
    for (i, d) in detections.iter().enumerate() {
        let code = ans.code(i);
        if code == CODE_DISCARD {
            continue;
        }
        let Some(k) = Intensity::from_index(code) else { unreachable!("2-bit code below 3") };
        match d.basis {
            Basis::Z => {
                out.key.bits.push(d.bit);
                out.key.intensities.push(k);
                out.counts.key.n[k.index()] += 1.0;
            }
            Basis::X => {
                if t >= ans.test_bits.len() {
                    return Err(InvalidInput::new(
                        "answer.test_bits",
                        "fewer test bits than matched test detections",
                    ));
                }
                out.counts.test.n[k.index()] += 1.0;
                if ans.test_bits.get(t) != d.bit {
                    out.counts.test.m[k.index()] += 1.0;
                }
                t += 1;
            }
        }
    }
    if t != ans.test_bits.len() {
        return Err(InvalidInput::new(
            "answer.test_bits",
            format!("{} test bits for {t} matched test detections", ans.test_bits.len()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::DetectionFlags;
    use proptest::prelude::*;

    fn det(gate: u64, x: bool, bit: bool) -> DetectionRecord {
        DetectionRecord { gate, basis: Basis::from_bit(x), bit, flags: DetectionFlags::default() }
    }

    proptest! {
        /// Both sides agree on which detections are kept, their intensities, and the
        /// per-intensity counts; the receiver's test-error count equals the number of
        /// flipped test bits; key bits agree except where the channel flipped them.
        #[test]
        fn both_sides_agree(
            events in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), 0u8..3, any::<bool>(), 0u8..10), 0..300)
        ) {
            let mut dets = Vec::new();
            let mut pulses = Vec::new();
            let mut expect_test_err = [0.0; 3];
            let mut expect_key_err = 0usize;
            for (g, &(rx_x, tx_x, bit, k, flip, missing)) in events.iter().enumerate() {
                let k = Intensity::from_index(k).unwrap();
                dets.push(det(g as u64 * 3 + 1, rx_x, bit ^ flip));
                let p = PulseRecord { pulse: g as u64, basis: Basis::from_bit(tx_x), bit, intensity: k };
                let present = missing != 0;
                pulses.push(present.then_some(p));
                if present && rx_x == tx_x && flip {
                    if rx_x { expect_test_err[k.index()] += 1.0 } else { expect_key_err += 1 }
                }
            }
            let ann = announce(&dets);
            let (ans, tx) = answer(&ann, &pulses).unwrap();
            let rx = apply_answer(&dets, &ans).unwrap();
            prop_assert_eq!(&rx.key.intensities, &tx.key.intensities);
            prop_assert_eq!(rx.counts.key.n, tx.key.counts());
            prop_assert_eq!(rx.counts.test.n, tx.test_n);
            prop_assert_eq!(rx.counts.test.m, expect_test_err);
            prop_assert_eq!(rx.key.bits.hamming_distance(&tx.key.bits), expect_key_err);
        }

        /// Arbitrary answers never panic the receiver.
        #[test]
        fn hostile_answer_is_refused_not_panicking(
            n in 0usize..50,
            codes in proptest::collection::vec(any::<u8>(), 0..20),
            test in proptest::collection::vec(any::<bool>(), 0..30),
        ) {
            let dets: Vec<_> = (0..n).map(|g| det(g as u64, g % 3 == 0, g % 2 == 0)).collect();
            let ans = SiftAnswer { codes, test_bits: BitBlock::from_bools(&test) };
            let _ = apply_answer(&dets, &ans);
        }
    }

    #[test]
    fn malformed_announcements_are_refused() {
        let ann = Announcement { gates: vec![5, 5], bases: BitBlock::zeros(2) };
        assert_eq!(ann.validate().unwrap_err().field, "announcement.gates");
        let ann = Announcement { gates: vec![1, 2], bases: BitBlock::zeros(3) };
        assert_eq!(ann.validate().unwrap_err().field, "announcement.bases");
        let ann = Announcement { gates: vec![1, 2], bases: BitBlock::zeros(2) };
        assert_eq!(answer(&ann, &[None]).unwrap_err().field, "pulses");
    }

    #[test]
    fn padding_must_be_zero() {
        let dets = vec![det(1, false, true)];
        let ans = SiftAnswer { codes: vec![0b0000_0100], test_bits: BitBlock::zeros(0) };
        assert_eq!(apply_answer(&dets, &ans).unwrap_err().field, "answer.codes");
    }
}
