//! State and helpers shared by the two ends.

use qpon_qkd::mac::{MacFamily, Pad};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::config::EndConfig;
use crate::error::AuthError;
use crate::frame::{Class, Frame, FrameRepr, MAX_FRAME_LEN, MAX_TAG_LEN};
use crate::pads::{PadError, PadSource};
use crate::status::{Alarm, Role, Status};

/// A pad kept for a response (inline, zeroised on drop, never printed).
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct PadBuf {
    bytes: [u8; MAX_TAG_LEN],
    len: u8,
}

impl PadBuf {
    pub(crate) fn from_pad_bytes(b: &[u8]) -> Self {
        let mut p = Self { bytes: [0; MAX_TAG_LEN], len: b.len().min(MAX_TAG_LEN) as u8 };
        p.bytes[..p.len as usize].copy_from_slice(&b[..p.len as usize]);
        p
    }
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }
    /// The first `n` (≤ len) bytes as a one-time pad.
    pub(crate) fn pad(&self, n: usize) -> Pad {
        Pad::from_slice(&self.bytes[..n.min(self.len())])
    }
}

impl core::fmt::Debug for PadBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PadBuf({} bytes)", self.len)
    }
}

pub(crate) struct Common {
    pub(crate) config: EndConfig,
    pub(crate) pads: Box<dyn PadSource>,
    pub(crate) status: Status,
    /// Invalid configuration: every call fails with it.
    pub(crate) broken: Option<String>,
    /// Ordinal of the next batch (from the durable ledger, lazily).
    next_ordinal: Option<u64>,
    /// Per-attempt bound at the longest frame, per class (command, reading).
    worst: [f64; 2],
}

impl Common {
    pub(crate) fn new(role: Role, config: EndConfig, pads: Box<dyn PadSource>) -> Self {
        let broken = config.validate().err();
        let status = Status { role, device: config.device, ..Status::default() };
        let worst = [Class::Command, Class::Reading].map(|c| {
            let fam = config.mac_family(c);
            fam.forgery_bound(MAX_FRAME_LEN - fam.tag_len())
        });
        Self { config, pads, status, broken, next_ordinal: None, worst }
    }

    pub(crate) fn check_config(&self) -> Result<(), AuthError> {
        match &self.broken {
            Some(m) => Err(AuthError::Config(m.clone())),
            None => Ok(()),
        }
    }

    /// Counts a refusal and passes it on.
    pub(crate) fn reject(&mut self, e: AuthError) -> AuthError {
        match self.status.rejected.get_mut(e.code()) {
            Some(n) => *n += 1,
            None => {
                self.status.rejected.insert(e.code().to_string(), 1);
            }
        }
        match &e {
            AuthError::PoolExhausted { .. } => self.status.alarm = Some(Alarm::Exhausted),
            AuthError::PoolDiverged(_) => self.status.alarm = Some(Alarm::PoolDiverged),
            AuthError::Store(_) => self.status.alarm = Some(Alarm::Store),
            AuthError::PoolLow { .. } | AuthError::Held { .. } => self.status.alarm = Some(Alarm::LowWater),
            _ => {}
        }
        e
    }

    pub(crate) fn next_ordinal(&mut self) -> Result<u64, AuthError> {
        if let Some(n) = self.next_ordinal {
            return Ok(n);
        }
        let n = self.pads.batches_taken().map_err(pad_error)?;
        self.next_ordinal = Some(n);
        Ok(n)
    }

    pub(crate) fn set_next_ordinal(&mut self, n: u64) {
        self.next_ordinal = Some(n);
    }

    /// Charges one tag verification of `auth_len` authenticated bytes to the forgery
    /// budget (union bound over attempts; per-attempt bound from
    /// [`MacFamily::forgery_bound`]: (⌈L/16⌉ + 1)/2^t for GF(2^128), after Wegman–Carter
    /// 1981 and the polynomial-hash argument in `qkd::mac`; 8⌈L/16⌉/2^106 for Poly1305,
    /// Bernstein 2005).
    pub(crate) fn account(&mut self, class: Class, auth_len: usize) {
        let fam: MacFamily = self.config.mac_family(class);
        self.status.verifications += 1;
        self.status.forgery_bound_total += fam.forgery_bound(auth_len);
        self.status.forgery_bound_worst_case += self.worst[usize::from(class == Class::Reading)];
    }

    /// Parses untrusted bytes into a checked view and its header.
    pub(crate) fn parse<'a>(&mut self, frame: &'a [u8]) -> Result<(Frame<&'a [u8]>, FrameRepr), AuthError> {
        let f = Frame::new_checked(frame).map_err(|e| self.reject(e.into()))?;
        let r = FrameRepr::parse(&f).map_err(|e| self.reject(e.into()))?;
        if r.device != self.config.device {
            return Err(self.reject(AuthError::WrongDevice { got: r.device, expected: self.config.device }));
        }
        let expected = self.config.tag_len(r.class);
        if r.tag_len != expected {
            return Err(self.reject(AuthError::TagPolicy { class: r.class, got: r.tag_len, expected }));
        }
        Ok((f, r))
    }
}

pub(crate) fn pad_error(e: PadError) -> AuthError {
    match e {
        PadError::Exhausted { requested, available } => AuthError::PoolExhausted { requested, available },
        PadError::Diverged(m) => AuthError::PoolDiverged(m),
        PadError::Store(m) => AuthError::Store(m),
    }
}
