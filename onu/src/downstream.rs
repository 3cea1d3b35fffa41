//! Downstream decryption keys at the ONU (the receiving end of `qpon_olt::downstream`).
//!
//! The OLT decides every key: it takes the bytes from its copy of this ONU's pool and
//! announces the use with the key slot and the switch superframe over the authenticated
//! classical channel. The driver takes the *same* bytes from this ONU's pool
//! ([`qpon_kms::KeyPool::take_named`], which fails closed if the pools drifted apart) and
//! installs them here in the announced slot; frames name their key by the 2-bit index in
//! the header. The old key stays accepted for `overlap_superframes` after a switch, then
//! [`OnuDownstream::advance_to`] (driven by the ONU's own superframe clock) erases it.
//! Frames of other ONUs, clear frames, and frames under unknown or expired keys are
//! refused.
//!
//! One-time-pad frames (flows the OLT marks as such, [`qpon_mux::otp`]): a downstream pool
//! use announced *without* a key switch is a pad run; the driver takes its bytes the same
//! way and adds them here under the use's number. A pad frame names its run and offset;
//! it opens once (a replay, or a frame that fell behind a later one, is refused) and the
//! pad bytes up to it are erased.

use qpon_mux::downstream::Frame;
use qpon_mux::{DownstreamError, DownstreamKey, DownstreamKeys, KeyIndex, KeysConfig, OnuId, OtpPads};
use qpon_qkd::session::KeySwitch;
use serde::Serialize;

/// Downstream counters of the ONU.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OnuDownstreamStats {
    /// Keys installed from the OLT's announcements.
    pub keys_installed: u64,
    /// Announced keys that could not be installed (the pool still followed).
    pub install_errors: u64,
    /// Key switches seen (a frame opened under a different key index than the previous).
    pub switches_seen: u64,
    /// Own frames opened.
    pub frames_opened: u64,
    /// Frames addressed to other ONUs (refused: not ours).
    pub frames_of_others: u64,
    /// Own frames refused (unknown, not yet active or expired key, clear, malformed,
    /// pad used before or unknown).
    pub frames_refused: u64,
    /// One-time-pad runs received.
    pub pad_runs: u64,
    /// Own one-time-pad frames opened (also counted in `frames_opened`).
    pub otp_frames_opened: u64,
}

/// Pad runs held at most (older ones are dropped: their bytes stay consumed, unused). Twice
/// what the OLT holds (`qpon_olt::downstream::MAX_PAD_RUNS`, 8), so a run the OLT may
/// still use is never dropped here.
const MAX_PAD_RUNS: usize = 16;

/// The ONU's downstream key state.
#[derive(Debug)]
pub struct OnuDownstream {
    keys: DownstreamKeys,
    pads: OtpPads,
    last_index: Option<KeyIndex>,
    stats: OnuDownstreamStats,
}

impl OnuDownstream {
    /// Empty key state for `onu`; the old key is accepted `overlap_superframes` after a
    /// switch.
    pub fn new(onu: u16, overlap_superframes: u64) -> Self {
        let keys =
            DownstreamKeys::new(OnuId(onu), KeysConfig { overlap_superframes, require_encryption: true });
        Self {
            keys,
            pads: OtpPads::new(OnuId(onu), MAX_PAD_RUNS),
            last_index: None,
            stats: OnuDownstreamStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &OnuDownstreamStats {
        &self.stats
    }

    /// Installs `key` (16 bytes from the pool) as the OLT announced in `switch`.
    pub fn install(&mut self, switch: KeySwitch, key: &[u8]) -> Result<(), DownstreamError> {
        let r = match (KeyIndex::from_bits(switch.slot.wrapping_add(1)), <[u8; 16]>::try_from(key)) {
            (Some(index), Ok(raw)) if index != KeyIndex::Clear => {
                self.keys.install_at(index, DownstreamKey::from_bytes(raw), switch.from_superframe)
            }
            (Some(_), Ok(_)) | (None, _) => Err(DownstreamError::UnknownKey(KeyIndex::Clear)),
            (_, Err(_)) => Err(DownstreamError::NoKey(switch.from_superframe)),
        };
        match r {
            Ok(()) => self.stats.keys_installed += 1,
            Err(_) => self.stats.install_errors += 1,
        }
        r
    }

    /// Adds a one-time-pad run: `bytes` the OLT announced as pool use `seq` without a key
    /// switch (use numbers beyond 32 bits cannot be named by a frame and are not kept).
    pub fn add_pad_run(&mut self, seq: u64, bytes: &[u8]) -> Result<(), DownstreamError> {
        let run = u32::try_from(seq).map_err(|_| DownstreamError::UnknownPad(u32::MAX))?;
        self.pads.add_run(run, bytes)?;
        self.stats.pad_runs += 1;
        Ok(())
    }

    /// Moves the ONU's clock to `superframe` (its own clock, never frame contents): an old
    /// key past its overlap window is erased.
    pub fn advance_to(&mut self, superframe: u64) {
        self.keys.advance_to(superframe);
    }

    /// Opens a frame like [`open`](Self::open) without counting it or tracking switches
    /// (diagnostics and tests: e.g. another ONU's ciphertext with its header rewritten).
    pub fn peek(&self, frame: &[u8]) -> Result<Vec<u8>, DownstreamError> {
        if is_otp(frame) {
            return self.pads.peek(frame).map(|(_, p)| p);
        }
        self.keys.open(frame).map(|(_, p)| p)
    }

    /// Opens a downstream frame: its plaintext if it is this ONU's and names a valid key
    /// (or, for a one-time-pad frame, unused pad bytes of a run it holds).
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, DownstreamError> {
        let otp = is_otp(frame);
        let opened = if otp { self.pads.open(frame) } else { self.keys.open(frame) };
        match opened {
            Ok((repr, plain)) => {
                if otp {
                    self.stats.otp_frames_opened += 1;
                } else {
                    if self.last_index.is_some_and(|i| i != repr.key_index) {
                        self.stats.switches_seen += 1;
                    }
                    self.last_index = Some(repr.key_index);
                }
                self.stats.frames_opened += 1;
                Ok(plain)
            }
            Err(e @ DownstreamError::WrongOnu { .. }) => {
                self.stats.frames_of_others += 1;
                Err(e)
            }
            Err(e) => {
                self.stats.frames_refused += 1;
                Err(e)
            }
        }
    }
}

/// Whether `frame` is a well-formed one-time-pad frame (malformed ones go to the key path,
/// which refuses them).
fn is_otp(frame: &[u8]) -> bool {
    Frame::new_checked(frame).is_ok_and(|f| f.is_otp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_announced_keys_opens_own_frames_and_counts_the_rest() {
        let key = |n: u8| [n; 16];
        let mut olt =
            DownstreamKeys::new(OnuId(2), KeysConfig { overlap_superframes: 0, require_encryption: true });
        let mut other = DownstreamKeys::new(OnuId(3), KeysConfig::default());
        let mut onu = OnuDownstream::new(2, 4);
        let i1 = olt.install(DownstreamKey::from_bytes(key(1)), 10).unwrap();
        other.install(DownstreamKey::from_bytes(key(9)), 10).unwrap();
        onu.install(KeySwitch { slot: i1.bits() - 1, from_superframe: 10 }, &key(1)).unwrap();
        let f = olt.seal(10, b"mine").unwrap();
        assert_eq!(onu.open(&f).unwrap(), b"mine");
        // Another ONU's frame is refused; with its header rewritten it opens to garbage.
        let g = other.seal(10, b"theirs").unwrap();
        assert!(onu.open(&g).is_err());
        let mut forged = g.clone();
        forged[0..2].copy_from_slice(&2u16.to_be_bytes());
        assert_ne!(onu.peek(&forged).unwrap(), b"theirs");
        // The next key in the other slot; the switch is seen once.
        olt.advance_to(20);
        let i2 = olt.install(DownstreamKey::from_bytes(key(5)), 30).unwrap();
        onu.install(KeySwitch { slot: i2.bits() - 1, from_superframe: 30 }, &key(5)).unwrap();
        assert!(onu.install(KeySwitch { slot: i2.bits() - 1, from_superframe: 40 }, &key(6)).is_err());
        assert!(onu.install(KeySwitch { slot: 7, from_superframe: 50 }, &key(6)).is_err());
        olt.advance_to(30);
        let f2 = olt.seal(30, b"next").unwrap();
        assert_eq!(onu.open(&f2).unwrap(), b"next");
        let s = onu.stats();
        assert_eq!(
            (s.keys_installed, s.install_errors, s.switches_seen, s.frames_opened, s.frames_of_others),
            (2, 2, 1, 2, 1)
        );
        // Past the overlap the old key is gone.
        onu.advance_to(34);
        assert!(onu.open(&f).is_err());
        assert_eq!(onu.stats().frames_refused, 1);
    }
}
