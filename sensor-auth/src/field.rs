//! The field device's end: mirrors batches, opens requests, seals responses.

use core::fmt;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::batch::{Batch, BatchKeys};
use crate::common::{Common, PadBuf, pad_error};
use crate::config::EndConfig;
use crate::error::AuthError;
use crate::frame::{Class, FrameRepr, Kind, MAX_PAYLOAD_LEN};
use crate::pads::PadSource;
use crate::replay::ReplayWindow;
use crate::status::{Alarm, Role, Status};
use crate::{Opened, OpenedRef, Sealed};

/// A classifier of request payloads (e.g. Modbus function codes): `Some(Class::Command)`
/// for payloads that act on the plant. A frame claiming a weaker class than its payload's
/// is refused ([`AuthError::ClassMismatch`]).
pub type Classifier = fn(&[u8]) -> Option<Class>;

/// An accepted request awaiting its response.
struct Pending {
    request_seq: u64,
    class: Class,
    keys: Arc<BatchKeys>,
    pad: PadBuf,
    pad_offset: u32,
}

/// The field device's end of one device's authenticated stream (the mirroring end).
///
/// Calls: [`open_request`](Self::open_request) for every frame from the control end;
/// [`seal_response`](Self::seal_response) once per accepted request. `Debug` shows
/// counters only.
pub struct FieldEnd {
    c: Common,
    batch: Option<Batch>,
    window: ReplayWindow,
    pending: VecDeque<Pending>,
    /// Learned clock offset: min over accepted frames of (local − control time), ms, and
    /// when it was last updated (local ms).
    offset: Option<(i128, u64)>,
    responses: u64,
    classifier: Option<Classifier>,
    /// Local time of the last accepted request, or of the first call.
    last_heard_ms: Option<u64>,
}

impl FieldEnd {
    /// A field end mirroring batches from `pads`. An invalid `config` makes every call
    /// fail with [`AuthError::Config`] (use [`try_new`](Self::try_new) to fail early).
    pub fn new(config: EndConfig, pads: Box<dyn PadSource>) -> Self {
        let window = ReplayWindow::new(config.replay_window);
        Self {
            c: Common::new(Role::Field, config, pads),
            batch: None,
            window,
            pending: VecDeque::new(),
            offset: None,
            responses: 0,
            classifier: None,
            last_heard_ms: None,
        }
    }

    /// Like [`new`](Self::new) but refuses an invalid configuration.
    pub fn try_new(config: EndConfig, pads: Box<dyn PadSource>) -> Result<Self, AuthError> {
        let e = Self::new(config, pads);
        e.c.check_config()?;
        Ok(e)
    }

    /// Installs a payload classifier (see [`Classifier`]).
    pub fn set_classifier(&mut self, classifier: Classifier) {
        self.classifier = Some(classifier);
    }

    /// The configuration.
    pub fn config(&self) -> &EndConfig {
        &self.c.config
    }

    /// Opens a request; the payload is copied out. See [`open_request_ref`](Self::open_request_ref).
    pub fn open_request(&mut self, frame: &[u8], now_ms: u64) -> Result<Opened, AuthError> {
        let o = self.open_request_ref(frame, now_ms)?;
        Ok(Opened { seq: o.seq, request_seq: None, class: o.class, payload: o.payload.to_vec() })
    }

    /// Opens a request from the control end, borrowing the payload from `frame`.
    ///
    /// Checks in order: well-formed; this device; tag length per class policy; payload
    /// class (if a classifier is set); batch (the current one, or a new one named by a
    /// descriptor, mirrored from the pool); pads unused; sequence number inside the
    /// replay window; tag; for commands, freshness. Only then is the sequence number
    /// recorded and the response pad kept. A bad tag retires the batch: no further request
    /// is accepted under its hash key, and the control end, getting no response, opens a
    /// new batch with a new key.
    pub fn open_request_ref<'a>(&mut self, frame: &'a [u8], now_ms: u64) -> Result<OpenedRef<'a>, AuthError> {
        self.c.check_config()?;
        let (f, r) = self.c.parse(frame)?;
        if r.kind != Kind::Request {
            return Err(self.c.reject(AuthError::WrongKind { expected: "request" }));
        }
        if let Some(classify) = self.classifier
            && let Some(classified) = classify(f.payload())
            && classified == Class::Command
            && r.class != Class::Command
        {
            return Err(self.c.reject(AuthError::ClassMismatch { claimed: r.class, classified }));
        }
        self.last_heard_ms.get_or_insert(now_ms);
        self.select_batch(&r, now_ms)?;
        let Some(batch) = self.batch.as_mut() else {
            return Err(self.c.reject(AuthError::UnknownBatch { batch: r.batch }));
        };
        if !self.window.check(r.seq) {
            let highest = self.window.highest().unwrap_or(0);
            return Err(self.c.reject(AuthError::Replay { seq: r.seq, highest }));
        }
        let (off, t) = (r.pad_offset as usize, r.tag_len);
        if !batch.is_free(off, 2 * t) {
            return Err(self.c.reject(AuthError::PadReuse { batch: r.batch, offset: r.pad_offset }));
        }
        let ok = batch.keys.verify(r.class, f.authenticated(), &batch.pad(off, t), f.tag()).is_ok();
        if !ok {
            // Refresh the hash key after a rejected forgery (REFERENCE.md §3; Abidin &
            // Larsson): this batch takes no further request.
            batch.retired = true;
            self.c.status.retired_after_forgery += 1;
            self.c.account(r.class, f.authenticated().len());
            return Err(self.c.reject(AuthError::BadTag { seq: r.seq, batch: r.batch }));
        }
        // Authentic from here on: the pads and the sequence number are spent either way.
        batch.mark_used(off, 2 * t);
        self.window.accept(r.seq);
        let keys = Arc::clone(&batch.keys);
        let pad = PadBuf::from_pad_bytes(batch.pad_bytes(off + t, t));
        self.c.account(r.class, f.authenticated().len());
        if r.class == Class::Command {
            self.check_fresh(&r, now_ms)?;
        }
        self.learn_offset(&r, now_ms);
        self.last_heard_ms = Some(now_ms);
        if self.pending.len() >= self.c.config.max_outstanding {
            // The oldest response pad is given up: that request goes unanswered.
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            request_seq: r.seq,
            class: r.class,
            keys,
            pad,
            pad_offset: (off + t) as u32,
        });
        self.c.status.frames_opened += 1;
        self.c.status.pad_bytes_used += 2 * t as u64;
        Ok(OpenedRef { seq: r.seq, request_seq: None, class: r.class, payload: f_payload(frame, &r) })
    }

    /// Seals the response to accepted request `request_seq`; see
    /// [`seal_response_into`](Self::seal_response_into).
    pub fn seal_response(
        &mut self,
        request_seq: u64,
        class: Class,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Sealed, AuthError> {
        let mut bytes = Vec::with_capacity(payload.len() + 80);
        let seq = self.seal_response_into(request_seq, class, payload, now_ms, &mut bytes)?;
        Ok(Sealed { seq, bytes })
    }

    /// Seals the response to accepted request `request_seq` into `out` (cleared first),
    /// with the pad the request reserved; returns the response's sequence number. Each
    /// request is answered at most once. `class` may not need a longer tag than the
    /// request's (a command request may be answered as a reading, not the reverse).
    pub fn seal_response_into(
        &mut self,
        request_seq: u64,
        class: Class,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<u64, AuthError> {
        out.clear();
        self.c.check_config()?;
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(self
                .c
                .reject(AuthError::PayloadTooLarge { len: payload.len(), max: MAX_PAYLOAD_LEN }));
        }
        let Some(i) = self.pending.iter().position(|p| p.request_seq == request_seq) else {
            return Err(self.c.reject(AuthError::NoOutstandingRequest { request_seq }));
        };
        let tag_len = self.c.config.tag_len(class);
        let p = &self.pending[i];
        if tag_len > p.pad.len() {
            let request = p.class;
            return Err(self.c.reject(AuthError::ResponseClass { request, response: class }));
        }
        self.responses += 1;
        let repr = FrameRepr {
            kind: Kind::Response,
            class,
            device: self.c.config.device,
            seq: self.responses,
            request_seq,
            time_ms: now_ms,
            batch: p.keys.ordinal,
            pad_offset: p.pad_offset,
            descriptor: None,
            payload_len: payload.len(),
            tag_len,
        };
        repr.emit(payload, out);
        let auth_len = out.len() - tag_len;
        match p.keys.tag(class, &out[..auth_len], &p.pad.pad(tag_len)) {
            Ok(t) => out[auth_len..].copy_from_slice(t.as_bytes()),
            Err(e) => {
                out.clear();
                return Err(self.c.reject(AuthError::Store(format!("tagging failed: {e}"))));
            }
        }
        self.pending.remove(i);
        self.c.status.frames_sealed += 1;
        Ok(self.responses)
    }

    /// Sequence numbers of accepted requests not yet answered.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.iter().map(|p| p.request_seq)
    }

    /// A snapshot of counters and levels.
    pub fn status(&self) -> Status {
        let mut s = self.c.status.clone();
        s.current_batch = self.batch.as_ref().filter(|b| !b.retired).map(|b| b.ordinal());
        s.batch_remaining_bytes =
            self.batch.as_ref().filter(|b| !b.retired).map_or(0, |b| b.free_pad_bytes() as u64);
        s.pool_remaining_bytes = self.c.pads.level_bytes();
        s.outstanding = self.pending.len();
        s
    }

    /// Makes the batch `r` names current, mirroring it (and any batches the control end
    /// reserved and never used before it) from the pool if it is new.
    fn select_batch(&mut self, r: &FrameRepr, now_ms: u64) -> Result<(), AuthError> {
        if let Some(b) = &self.batch
            && b.ordinal() == r.batch
        {
            if b.retired {
                return Err(self.c.reject(AuthError::BatchRetired { batch: r.batch }));
            }
            if let Some(d) = r.descriptor
                && d != b.descriptor
            {
                return Err(self.c.reject(AuthError::BatchReference(format!(
                    "descriptor of batch {} disagrees with the mirrored one",
                    r.batch
                ))));
            }
            return Ok(());
        }
        let next = self.c.next_ordinal().map_err(|e| self.c.reject(e))?;
        if r.batch < next {
            // Mirrored (or skipped) before: the ledger has it as consumed.
            return Err(self.c.reject(AuthError::BatchRetired { batch: r.batch }));
        }
        let Some(d) = r.descriptor else {
            return Err(self.c.reject(AuthError::UnknownBatch { batch: r.batch }));
        };
        let len = self.c.config.batch_bytes;
        if d.len as usize != len {
            return Err(self.c.reject(AuthError::BatchReference(format!(
                "batch {} is {} bytes, configured {len}",
                r.batch, d.len
            ))));
        }
        let skip = r.batch - next;
        let allowed = self.skip_allowance(now_ms);
        if skip > allowed {
            return Err(self.c.reject(AuthError::BatchReference(format!(
                "batch {} is {skip} batches ahead (at most {allowed} skipped now)",
                r.batch
            ))));
        }
        // Batches the control end reserved and never used (lost at its crash) are taken
        // here too, so the n-th batch sits at the same pool position at both ends. This
        // happens before the frame's tag can be checked (the pool cannot be read without
        // consuming), so a forged frame can make this end run ahead by at most
        // `1 + max_batch_skip` batches. That never desynchronises the pools for good:
        // frames of batches below our count are refused without consuming, and the
        // control end, timing out, opens batches until its ordinal meets ours — at the
        // same pool position, because the n-th `batch_bytes` take of two identical pools
        // is the same bytes.
        for k in 0..skip {
            self.c.pads.skip(len).map_err(|e| {
                let e = pad_error(e);
                self.c.reject(e)
            })?;
            self.c.set_next_ordinal(next + k + 1);
            self.c.status.batches_skipped += 1;
            self.c.status.batch_bytes_taken += len as u64;
        }
        let bytes = self.c.pads.mirror(&d).map_err(|e| {
            let e = pad_error(e);
            self.c.reject(e)
        })?;
        self.c.set_next_ordinal(r.batch + 1);
        self.c.status.batches += 1;
        self.c.status.batch_bytes_taken += len as u64;
        if bytes.len() != len {
            self.batch = None;
            return Err(self.c.reject(AuthError::Store(format!(
                "pool returned {} bytes for a {len}-byte batch",
                bytes.len()
            ))));
        }
        if matches!(self.c.status.alarm, Some(Alarm::PoolDiverged | Alarm::Store | Alarm::Exhausted)) {
            // The pools agree again (this take was where the peer's was).
            self.c.status.alarm = None;
        }
        match Batch::new(r.batch, &self.c.config, d, bytes) {
            Ok(b) => {
                self.batch = Some(b);
                Ok(())
            }
            Err(_) => {
                self.batch = None;
                Err(self.c.reject(AuthError::WeakKey { batch: r.batch }))
            }
        }
    }

    /// How many unused batches may be skipped now: `max_batch_skip`, plus one per
    /// `response_timeout_ms` since this end last accepted a request (or started), capped
    /// at `max_silence_skip`. The control end opens at most one batch per
    /// [`crate::UNACKED_TIMEOUTS`] timeouts while unanswered, so after an outage the
    /// allowance outgrows the gap; while traffic flows a forged frame can make this end
    /// skip at most `max_batch_skip` batches.
    fn skip_allowance(&self, now_ms: u64) -> u64 {
        let silence = now_ms.saturating_sub(self.last_heard_ms.unwrap_or(now_ms));
        let grown = (silence / self.c.config.response_timeout_ms.max(1))
            .min(u64::from(self.c.config.max_silence_skip));
        u64::from(self.c.config.max_batch_skip) + grown
    }

    /// Freshness of a command (see the crate docs, "Clocks").
    fn check_fresh(&mut self, r: &FrameRepr, now_ms: u64) -> Result<(), AuthError> {
        let deadline = self.c.config.command_deadline_ms;
        let delay = i128::from(now_ms) - i128::from(r.time_ms);
        let stale = |age: i128| AuthError::Stale {
            seq: r.seq,
            age_ms: u64::try_from(age.max(0)).unwrap_or(u64::MAX),
            deadline_ms: deadline,
        };
        if let Some(skew) = self.c.config.max_clock_skew_ms
            && delay.abs() > i128::from(skew) + i128::from(deadline)
        {
            let e = stale(delay.abs() - i128::from(skew));
            return Err(self.c.reject(e));
        }
        if let Some(base) = self.relaxed_offset(now_ms) {
            let age = delay - base;
            if age > i128::from(deadline) {
                let e = stale(age);
                return Err(self.c.reject(e));
            }
        }
        Ok(())
    }

    /// The learned offset, relaxed by the allowed drift since it was last updated.
    fn relaxed_offset(&self, now_ms: u64) -> Option<i128> {
        self.offset.map(|(base, at)| {
            let elapsed = i128::from(now_ms.saturating_sub(at));
            base + elapsed * i128::from(self.c.config.clock_drift_ppm) / 1_000_000
        })
    }

    fn learn_offset(&mut self, r: &FrameRepr, now_ms: u64) {
        let delay = i128::from(now_ms) - i128::from(r.time_ms);
        let base = self.relaxed_offset(now_ms).map_or(delay, |b| b.min(delay));
        self.offset = Some((base, now_ms));
    }
}

/// The payload of a checked frame (borrowed for the frame's lifetime).
fn f_payload<'a>(frame: &'a [u8], r: &FrameRepr) -> &'a [u8] {
    let s = r.header_len();
    &frame[s..s + r.payload_len]
}

impl fmt::Debug for FieldEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldEnd")
            .field("device", &self.c.config.device)
            .field("batch", &self.batch)
            .field("highest_seq", &self.window.highest())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}
