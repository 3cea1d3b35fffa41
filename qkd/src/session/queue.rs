//! A session's two outputs, frames and events, in one order.
//!
//! Some events must take effect before a frame that follows them leaves: a block must be in
//! the pool (provisionally) before the `Confirm` or `Finish` that lets the peer rely on it, a
//! commit must be durable before the `Committed` that lets the peer commit. So a frame is
//! released by `poll_transmit` only once every event queued before it has been taken with
//! `poll_event`; a driver that performs each event's effect (e.g. a durable store write)
//! before taking the next event or frame gets the order right without further calls.

use super::Event;
use std::collections::VecDeque;

#[derive(Default)]
pub(super) struct Queues {
    events: VecDeque<Event>,
    /// Events taken so far.
    taken: u64,
    /// Frames, each with the number of events that must be taken before it may leave.
    frames: VecDeque<(Vec<u8>, u64)>,
}

impl Queues {
    pub(super) fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    pub(super) fn frame(&mut self, bytes: Vec<u8>) {
        let after = self.taken + self.events.len() as u64;
        self.frames.push_back((bytes, after));
    }

    pub(super) fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front()?;
        self.taken += 1;
        Some(e)
    }

    pub(super) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match self.frames.front() {
            Some((_, after)) if *after <= self.taken => self.frames.pop_front().map(|(b, _)| b),
            _ => None,
        }
    }

    /// Drops every frame not yet sent (the session stopped: nothing it queued may leave).
    pub(super) fn drop_frames(&mut self) {
        self.frames.clear();
    }
}
