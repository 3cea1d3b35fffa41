//! The control station's end: reserves batches, seals requests, opens responses.

use core::fmt;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::batch::{Batch, BatchKeys};
use crate::common::{Common, PadBuf, pad_error};
use crate::config::{EndConfig, LowWaterPolicy};
use crate::error::AuthError;
use crate::frame::{Class, FrameRepr, Kind, MAX_PAYLOAD_LEN};
use crate::pads::PadSource;
use crate::status::{Alarm, Role, Status};
use crate::{Opened, OpenedRef, Sealed};

/// Timeouts in a batch the field end never answered under before the control end moves
/// on to a new batch.
pub const UNACKED_TIMEOUTS: u32 = 3;

/// A request awaiting its response.
struct Outstanding {
    seq: u64,
    class: Class,
    keys: Arc<BatchKeys>,
    /// The response's pad (reserved with the request).
    pad: PadBuf,
    pad_offset: u32,
    sent_ms: u64,
}

/// The control station's end of one device's authenticated stream (the deciding end).
///
/// Calls: [`seal_request`](Self::seal_request) (or `_into`) for every request,
/// [`open_response`](Self::open_response) for every frame from the field end, and
/// [`expire`](Self::expire) from a timer (it is also run by every seal). A request whose
/// response never comes is forgotten after `response_timeout_ms`, and the batch is
/// retired (the field end may have retired it after a forgery, or lost it in a restart):
/// at once if the field end had answered under it, else after [`UNACKED_TIMEOUTS`].
/// `Debug` shows counters only.
pub struct ControlEnd {
    c: Common,
    batch: Option<Batch>,
    /// Requests in sequence order.
    outstanding: VecDeque<Outstanding>,
    /// Requests sealed in the current batch (sequence numbers are `batch << 32 | n`).
    in_batch: u64,
    /// Pool level (bytes) when last read: reading a store per frame costs a transaction.
    level_cache: u64,
}

impl ControlEnd {
    /// A control end drawing batches from `pads`. An invalid `config` makes every call
    /// fail with [`AuthError::Config`] (use [`try_new`](Self::try_new) to fail early).
    pub fn new(config: EndConfig, pads: Box<dyn PadSource>) -> Self {
        let level_cache = pads.level_bytes();
        Self {
            c: Common::new(Role::Control, config, pads),
            batch: None,
            outstanding: VecDeque::new(),
            in_batch: 0,
            level_cache,
        }
    }

    /// Like [`new`](Self::new) but refuses an invalid configuration.
    pub fn try_new(config: EndConfig, pads: Box<dyn PadSource>) -> Result<Self, AuthError> {
        let e = Self::new(config, pads);
        e.c.check_config()?;
        Ok(e)
    }

    /// The configuration.
    pub fn config(&self) -> &EndConfig {
        &self.c.config
    }

    /// Seals `payload` as a request of `class`; see [`seal_request_into`](Self::seal_request_into).
    pub fn seal_request(&mut self, class: Class, payload: &[u8], now_ms: u64) -> Result<Sealed, AuthError> {
        let mut bytes = Vec::with_capacity(payload.len() + 128);
        let seq = self.seal_request_into(class, payload, now_ms, &mut bytes)?;
        Ok(Sealed { seq, bytes })
    }

    /// Seals `payload` as a request of `class` into `out` (cleared first); returns its
    /// sequence number. On error `out` is left empty and nothing is to be sent.
    ///
    /// Reserves the request's pad and its response's pad from the current batch, opening
    /// a new one (one durable pool commit) when needed. Below the low-water mark commands
    /// are refused or held per policy and the alarm is raised; an empty pool gives
    /// [`AuthError::PoolExhausted`].
    pub fn seal_request_into(
        &mut self,
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
        self.expire(now_ms);
        if self.outstanding.len() >= self.c.config.max_outstanding {
            return Err(self.c.reject(AuthError::TooManyOutstanding(self.outstanding.len())));
        }
        self.check_low_water(class)?;
        let tag_len = self.c.config.tag_len(class);
        let need = 2 * tag_len;
        let usable = self.batch.as_ref().is_some_and(|b| !b.retired && b.remaining() >= need);
        if !usable {
            self.open_batch()?;
        }
        let Some(batch) = self.batch.as_mut() else {
            return Err(self.c.reject(AuthError::Store("no batch".into())));
        };
        let offset = batch.cursor;
        batch.cursor += need;
        self.in_batch += 1;
        let seq = (batch.ordinal() << 32) | self.in_batch;
        let repr = FrameRepr {
            kind: Kind::Request,
            class,
            device: self.c.config.device,
            seq,
            request_seq: 0,
            time_ms: now_ms,
            batch: batch.ordinal(),
            pad_offset: offset as u32,
            descriptor: (!batch.acked).then_some(batch.descriptor),
            payload_len: payload.len(),
            tag_len,
        };
        repr.emit(payload, out);
        let auth_len = out.len() - tag_len;
        let pad = batch.pad(offset, tag_len);
        let tag = match batch.keys.tag(class, &out[..auth_len], &pad) {
            Ok(t) => t,
            Err(e) => {
                out.clear();
                return Err(self.c.reject(AuthError::Store(format!("tagging failed: {e}"))));
            }
        };
        out[auth_len..].copy_from_slice(tag.as_bytes());
        self.outstanding.push_back(Outstanding {
            seq,
            class,
            keys: Arc::clone(&batch.keys),
            pad: PadBuf::from_pad_bytes(batch.pad_bytes(offset + tag_len, tag_len)),
            pad_offset: (offset + tag_len) as u32,
            sent_ms: now_ms,
        });
        self.c.status.frames_sealed += 1;
        self.c.status.pad_bytes_used += need as u64;
        Ok(seq)
    }

    /// Opens a response from the field end: it must answer an outstanding request (each
    /// once) and carry a valid tag under the pad that request reserved. A bad tag retires
    /// the batch's hash key (the next request opens a new batch) and forgets the request.
    pub fn open_response(&mut self, frame: &[u8], now_ms: u64) -> Result<Opened, AuthError> {
        let o = self.open_response_ref(frame, now_ms)?;
        Ok(Opened { seq: o.seq, request_seq: o.request_seq, class: o.class, payload: o.payload.to_vec() })
    }

    /// [`open_response`](Self::open_response), borrowing the payload from `frame`.
    pub fn open_response_ref<'a>(
        &mut self,
        frame: &'a [u8],
        now_ms: u64,
    ) -> Result<OpenedRef<'a>, AuthError> {
        let _ = now_ms;
        self.c.check_config()?;
        let (f, r) = self.c.parse(frame)?;
        if r.kind != Kind::Response {
            return Err(self.c.reject(AuthError::WrongKind { expected: "response" }));
        }
        let Some(i) = self.outstanding.iter().position(|o| o.seq == r.request_seq) else {
            return Err(self.c.reject(AuthError::NoOutstandingRequest { request_seq: r.request_seq }));
        };
        let o = &self.outstanding[i];
        if r.batch != o.keys.ordinal || r.pad_offset != o.pad_offset {
            return Err(self.c.reject(AuthError::BatchReference(format!(
                "response to {} names pads {}@{}, the request reserved {}@{}",
                r.request_seq, r.batch, r.pad_offset, o.keys.ordinal, o.pad_offset
            ))));
        }
        if r.tag_len > o.pad.len() {
            return Err(self.c.reject(AuthError::ResponseClass { request: o.class, response: r.class }));
        }
        let ok = o.keys.verify(r.class, f.authenticated(), &o.pad.pad(r.tag_len), f.tag()).is_ok();
        self.c.account(r.class, f.authenticated().len());
        let batch_ordinal = o.keys.ordinal;
        self.outstanding.remove(i);
        let current = self.batch.as_mut().filter(|b| b.ordinal() == batch_ordinal);
        if !ok {
            // Refresh the hash key after a rejected forgery (REFERENCE.md §3): new
            // requests go to a new batch with its own key.
            if let Some(b) = current
                && !b.retired
            {
                b.retired = true;
                self.c.status.retired_after_forgery += 1;
            }
            return Err(self.c.reject(AuthError::BadTag { seq: r.seq, batch: r.batch }));
        }
        if let Some(b) = current {
            b.acked = true;
            b.timeouts = 0;
        }
        self.c.status.frames_opened += 1;
        let s = r.header_len();
        Ok(OpenedRef {
            seq: r.seq,
            request_seq: Some(r.request_seq),
            class: r.class,
            payload: &frame[s..s + r.payload_len],
        })
    }

    /// Forgets requests older than `response_timeout_ms`. A timeout in the current batch
    /// retires it (the field end may have retired it or lost it), at once if the field
    /// end has answered under it before, else after [`UNACKED_TIMEOUTS`] timeouts. Returns
    /// how many were forgotten.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let timeout = self.c.config.response_timeout_ms;
        let mut n = 0;
        while let Some(o) = self.outstanding.front() {
            if now_ms.saturating_sub(o.sent_ms) <= timeout {
                break;
            }
            let ordinal = o.keys.ordinal;
            self.outstanding.pop_front();
            self.timed_out(ordinal);
            n += 1;
        }
        n
    }

    /// The caller gave up on request `seq` (its own timer): forgets it and counts a
    /// timeout as [`expire`](Self::expire) does. False if it was not outstanding.
    pub fn request_timed_out(&mut self, seq: u64) -> bool {
        let Some(i) = self.outstanding.iter().position(|o| o.seq == seq) else {
            return false;
        };
        let ordinal = self.outstanding[i].keys.ordinal;
        self.outstanding.remove(i);
        self.timed_out(ordinal);
        true
    }

    /// Sequence numbers of the requests awaiting a response.
    pub fn outstanding(&self) -> impl Iterator<Item = u64> + '_ {
        self.outstanding.iter().map(|o| o.seq)
    }

    /// A snapshot of counters and levels.
    pub fn status(&self) -> Status {
        let mut s = self.c.status.clone();
        s.current_batch = self.batch.as_ref().filter(|b| !b.retired).map(|b| b.ordinal());
        s.batch_remaining_bytes =
            self.batch.as_ref().filter(|b| !b.retired).map_or(0, |b| b.remaining() as u64);
        s.pool_remaining_bytes = self.c.pads.level_bytes();
        s.outstanding = self.outstanding.len();
        s
    }

    /// A new link to the field end (after either side restarted or the connection broke):
    /// if the field end had mirrored the current batch (a response under it was accepted),
    /// move on to a new batch — a restarted field end refuses every batch it mirrored
    /// before, so requests under it would only time out. A batch it never mirrored is kept
    /// (its requests still carry the descriptor), so a flapping link does not make the
    /// control end run batches ahead. Costs at most the rest of one batch per reconnect.
    pub fn link_restarted(&mut self) {
        if let Some(b) = self.batch.as_mut()
            && b.acked
        {
            b.retired = true;
        }
    }

    /// A request of batch `ordinal` got no response in time. If the field end had
    /// mirrored the batch (a response under it was accepted), its silence means it retired
    /// the batch after a forgery or lost it in a restart: move on to a new batch (and hash
    /// key). If it never answered under this batch, the link may simply be down, and
    /// every new batch would be one more the field end must skip when it comes back: move
    /// on only after [`UNACKED_TIMEOUTS`] timeouts.
    fn timed_out(&mut self, ordinal: u64) {
        if let Some(b) = self.batch.as_mut()
            && b.ordinal() == ordinal
        {
            b.timeouts += 1;
            if b.acked || b.timeouts >= UNACKED_TIMEOUTS {
                b.retired = true;
            }
        }
    }

    /// Low-water check (the pads left are the pool's level plus the current batch's
    /// rest); raises or clears the alarm.
    fn check_low_water(&mut self, class: Class) -> Result<(), AuthError> {
        let low = self.c.config.low_water_bytes;
        let batch_rest = self.batch.as_ref().filter(|b| !b.retired).map_or(0, |b| b.remaining() as u64);
        let mut remaining = self.level_cache + batch_rest;
        if remaining < low && class == Class::Command {
            // The pool may have been refilled since the cached read.
            self.level_cache = self.c.pads.level_bytes();
            remaining = self.level_cache + batch_rest;
        }
        if remaining >= low {
            if self.c.status.alarm == Some(Alarm::LowWater) {
                self.c.status.alarm = None;
            }
            return Ok(());
        }
        if class == Class::Reading {
            // Readings go on until the pool is empty; the alarm is up.
            self.c.status.alarm.get_or_insert(Alarm::LowWater);
            return Ok(());
        }
        Err(self.c.reject(match self.c.config.low_water {
            LowWaterPolicy::Refuse => AuthError::PoolLow { remaining, low_water: low },
            LowWaterPolicy::Hold => AuthError::Held { remaining, low_water: low },
        }))
    }

    /// Reserves a new batch (one durable pool commit).
    fn open_batch(&mut self) -> Result<(), AuthError> {
        let ordinal = self.c.next_ordinal().map_err(|e| self.c.reject(e))?;
        let len = self.c.config.batch_bytes;
        let reserved = self.c.pads.reserve(len).map_err(|e| {
            let e = pad_error(e);
            self.c.reject(e)
        })?;
        self.c.set_next_ordinal(ordinal + 1);
        self.c.status.batches += 1;
        self.c.status.batch_bytes_taken += len as u64;
        self.level_cache = self.c.pads.level_bytes();
        if matches!(self.c.status.alarm, Some(Alarm::Exhausted | Alarm::Store)) {
            self.c.status.alarm = None;
        }
        self.in_batch = 0;
        if reserved.bytes.len() != len {
            self.batch = None;
            return Err(self.c.reject(AuthError::Store(format!(
                "pool returned {} bytes for a {len}-byte batch",
                reserved.bytes.len()
            ))));
        }
        match Batch::new(ordinal, &self.c.config, reserved.descriptor, reserved.bytes) {
            Ok(b) => {
                self.batch = Some(b);
                Ok(())
            }
            Err(_) => {
                self.batch = None;
                Err(self.c.reject(AuthError::WeakKey { batch: ordinal }))
            }
        }
    }
}

impl fmt::Debug for ControlEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlEnd")
            .field("device", &self.c.config.device)
            .field("batch", &self.batch)
            .field("outstanding", &self.outstanding.len())
            .finish_non_exhaustive()
    }
}
