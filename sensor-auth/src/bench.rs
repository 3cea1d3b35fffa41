//! Throughput of the authenticated framing, without any transport: per frame, the
//! sealing end frames and tags it, the opening end parses, checks and verifies it.
//!
//! Each measured round trip is one request (control → field) and its response (field →
//! control): two frames, each sealed once and opened once, with the real ends
//! ([`ControlEnd`], [`FieldEnd`]) and their replay, pad and forgery accounting. Pads come
//! from [`BenchPads`], an in-memory source that fills each batch with filler bytes (bench
//! only: never a key source); batches are `batch_bytes` long as in production, so the
//! per-batch work (reserve, mirror, keying the hash) is included.
//!
//! A second table measures the bare MAC families with a one-time pad per message, with
//! the hash key recycled (what the ends do) and with a fresh hash key per message.

use std::time::Instant;

use qpon_qkd::SecretBytes;
use qpon_qkd::mac::{HashKey, MacFamily, Pad, WcMac, WegmanCarter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{EndConfig, HashFamily};
use crate::frame::{BatchDescriptor, Class};
use crate::pads::{PadError, PadSource, Reserved};
use crate::{ControlEnd, FieldEnd};

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Payload sizes in bytes.
    pub payload_sizes: Vec<usize>,
    /// Round trips (2 frames each) per measurement.
    pub round_trips: u64,
    /// Measurements per row; the median is reported.
    pub repeats: usize,
    /// Reading tag length (GF(2^128) rows).
    pub reading_tag_bits: u32,
    /// Batch size in bytes.
    pub batch_bytes: usize,
    /// Pool key rate (bits/s) for the "sustained frames/s" column.
    pub key_rate_bps: f64,
    /// Include Poly1305 rows.
    pub poly1305: bool,
    /// Tags per measurement in the bare-MAC table.
    pub mac_tags: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            payload_sizes: vec![16, 64, 256],
            round_trips: 200_000,
            repeats: 3,
            reading_tag_bits: 64,
            batch_bytes: EndConfig::default().batch_bytes,
            key_rate_bps: 1.0e6,
            poly1305: true,
            mac_tags: 1_000_000,
        }
    }
}

/// One row of the framing table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameRow {
    /// Hash family.
    pub family: HashFamily,
    /// Message class (both directions).
    pub class: Class,
    /// Tag length in bits.
    pub tag_bits: u32,
    /// Payload bytes.
    pub payload: usize,
    /// Frame bytes (request without descriptor).
    pub frame_bytes: usize,
    /// Frames (sealed and opened) per second of one core's run time (thread CPU time on
    /// Linux, wall clock elsewhere), median of the repeats.
    pub frames_per_s: f64,
    /// Microseconds per frame (seal + open), median.
    pub us_per_frame: f64,
    /// Key bits taken from the pool per frame (pads, hash keys, batch tails).
    pub key_bits_per_frame: f64,
    /// Frames per second the configured pool key rate sustains.
    pub sustained_frames_per_s: f64,
    /// Durable pool commits per frame at one end.
    pub commits_per_frame: f64,
}

/// One row of the bare-MAC table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MacRow {
    /// Family (with tag length).
    pub family: String,
    /// Message bytes.
    pub msg: usize,
    /// Tags/s, hash key recycled, fresh pad per tag.
    pub recycled_key_tags_per_s: f64,
    /// Tags/s, fresh hash key and pad per tag.
    pub fresh_key_tags_per_s: f64,
}

/// The results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Options used.
    pub options: BenchOptions,
    /// Framing + tag + verification per frame.
    pub frames: Vec<FrameRow>,
    /// Bare MAC families.
    pub macs: Vec<MacRow>,
}

/// Runs the benchmark.
pub fn run(options: &BenchOptions) -> BenchReport {
    let mut frames = Vec::new();
    let mut families = vec![HashFamily::Gf128];
    if options.poly1305 {
        families.push(HashFamily::Poly1305);
    }
    for &family in &families {
        for class in [Class::Command, Class::Reading] {
            if family == HashFamily::Poly1305 && class == Class::Reading {
                continue; // Poly1305 is never truncated: readings are the command row.
            }
            for &payload in &options.payload_sizes {
                frames.push(frame_row(options, family, class, payload));
            }
        }
    }
    let mut macs = Vec::new();
    let mac_families =
        [MacFamily::Gf128 { tag_bits: 128 }, MacFamily::Gf128 { tag_bits: 32 }, MacFamily::Poly1305];
    for fam in mac_families {
        for &msg in &options.payload_sizes {
            macs.push(mac_row(options, fam, msg));
        }
    }
    BenchReport { options: options.clone(), frames, macs }
}

fn frame_row(o: &BenchOptions, family: HashFamily, class: Class, payload: usize) -> FrameRow {
    let config = EndConfig {
        family,
        reading_tag_bits: if family == HashFamily::Poly1305 { 128 } else { o.reading_tag_bits },
        batch_bytes: o.batch_bytes,
        low_water_bytes: 0,
        ..EndConfig::default()
    };
    let tag_len = config.tag_len(class);
    let mut rates = Vec::new();
    let mut key_bits = 0.0;
    let mut commits = 0.0;
    for rep in 0..o.repeats.max(1) {
        let seed = 0x5EED_0000 + rep as u64;
        let mut control = ControlEnd::new(config.clone(), Box::new(BenchPads::new(seed)));
        let mut field = FieldEnd::new(config.clone(), Box::new(BenchPads::new(seed)));
        let body = vec![0xA5u8; payload];
        let (mut req, mut resp) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
        let trips = o.round_trips.max(1);
        let mut now = 1_000u64;
        let mut start = Clock::now();
        // The first tenth warms caches and branch predictors and is not timed.
        for i in 0..trips + trips / 10 {
            if i == trips / 10 {
                start = Clock::now();
            }
            now += u64::from(i % 1024 == 0);
            let seq = control.seal_request_into(class, &body, now, &mut req).expect("bench: seal request");
            let got = field.open_request_ref(&req, now).expect("bench: open request");
            debug_assert_eq!(got.payload.len(), payload);
            field.seal_response_into(seq, class, &body, now, &mut resp).expect("bench: seal response");
            control.open_response_ref(&resp, now).expect("bench: open response");
        }
        let secs = start.elapsed_secs();
        rates.push(2.0 * trips as f64 / secs);
        // Key per frame: everything the control end took from its pool (hash keys, pads,
        // unused batch tails) over every frame sealed in either direction.
        let s = control.status();
        let frames = (s.frames_sealed + s.frames_opened) as f64;
        key_bits = 8.0 * s.batch_bytes_taken as f64 / frames;
        commits = s.batches as f64 / frames;
    }
    rates.sort_by(f64::total_cmp);
    let frames_per_s = rates[rates.len() / 2];
    FrameRow {
        family,
        class,
        tag_bits: 8 * tag_len as u32,
        payload,
        frame_bytes: crate::frame::HEADER_LEN + payload + tag_len,
        frames_per_s,
        us_per_frame: 1e6 / frames_per_s,
        key_bits_per_frame: key_bits,
        sustained_frames_per_s: o.key_rate_bps / key_bits,
        commits_per_frame: commits,
    }
}

fn mac_row(o: &BenchOptions, fam: MacFamily, msg_len: usize) -> MacRow {
    let msg = vec![0x3Cu8; msg_len];
    let mut fill = SplitMix(0xC0FFEE);
    let n = o.mac_tags.max(1000);
    let mut recycled = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..o.repeats.max(1) {
        let mac = WegmanCarter::new(fam, HashKey::from_slice(&fill.bytes16())).expect("bench: key");
        let mut sink = 0u8;
        let t = Clock::now();
        for _ in 0..n {
            let pad = Pad::from_slice(&fill.bytes16()[..fam.pad_len()]);
            sink ^= mac.tag(&msg, &pad).expect("bench: tag").as_bytes()[0];
        }
        recycled.push(n as f64 / t.elapsed_secs());
        let t = Clock::now();
        for _ in 0..n {
            let m = WegmanCarter::new(fam, HashKey::from_slice(&fill.bytes16())).expect("bench: key");
            let pad = Pad::from_slice(&fill.bytes16()[..fam.pad_len()]);
            sink ^= m.tag(&msg, &pad).expect("bench: tag").as_bytes()[0];
        }
        fresh.push(n as f64 / t.elapsed_secs());
        std::hint::black_box(sink);
    }
    recycled.sort_by(f64::total_cmp);
    fresh.sort_by(f64::total_cmp);
    MacRow {
        family: fam.to_string(),
        msg: msg_len,
        recycled_key_tags_per_s: recycled[recycled.len() / 2],
        fresh_key_tags_per_s: fresh[fresh.len() / 2],
    }
}

/// Time on this thread's core: the scheduler's per-thread run time from
/// `/proc/thread-self/schedstat` (ns) where Linux provides it, so that other processes
/// sharing the machine do not count; wall-clock time otherwise.
struct Clock {
    wall: Instant,
    cpu_ns: Option<u64>,
}

impl Clock {
    fn now() -> Self {
        Self { wall: Instant::now(), cpu_ns: thread_cpu_ns() }
    }

    fn elapsed_secs(&self) -> f64 {
        match (self.cpu_ns, thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 * 1e-9,
            _ => self.wall.elapsed().as_secs_f64(),
        }
    }
}

fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Filler generator for benchmarks (SplitMix64). Not a key source.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn bytes16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&(self.next() | 1).to_le_bytes());
        b
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let w = self.next().to_le_bytes();
            c.copy_from_slice(&w[..c.len()]);
        }
    }
}

/// An unbounded in-memory [`PadSource`] for benchmarks: batch `k` is filler bytes from
/// `seed` and `k`, so two instances with one seed agree. Never a key source.
#[derive(Debug)]
pub struct BenchPads {
    seed: u64,
    taken: u64,
    consumed: u64,
}

impl BenchPads {
    /// A source; ends built with equal seeds share their "pool".
    pub fn new(seed: u64) -> Self {
        Self { seed, taken: 0, consumed: 0 }
    }

    fn batch(&self, ordinal: u64, len: usize) -> SecretBytes {
        let mut v = vec![0u8; len];
        SplitMix(self.seed ^ ordinal.wrapping_mul(0xA076_1D64_78BD_642F)).fill(&mut v);
        SecretBytes::new(v)
    }
}

impl PadSource for BenchPads {
    fn reserve(&mut self, len: usize) -> Result<Reserved, PadError> {
        let ordinal = self.taken;
        self.taken += 1;
        self.consumed += len as u64;
        let descriptor =
            BatchDescriptor { block: Uuid::nil(), offset: ordinal * len as u64, len: len as u32 };
        Ok(Reserved { descriptor, bytes: self.batch(ordinal, len) })
    }

    fn mirror(&mut self, b: &BatchDescriptor) -> Result<SecretBytes, PadError> {
        let expect = self.taken * u64::from(b.len);
        if b.block != Uuid::nil() || b.offset != expect {
            return Err(PadError::Diverged(format!("bench pads at {expect}, named {}", b.offset)));
        }
        let bytes = self.batch(self.taken, b.len as usize);
        self.taken += 1;
        self.consumed += u64::from(b.len);
        Ok(bytes)
    }

    fn skip(&mut self, len: usize) -> Result<(), PadError> {
        self.taken += 1;
        self.consumed += len as u64;
        Ok(())
    }

    fn batches_taken(&mut self) -> Result<u64, PadError> {
        Ok(self.taken)
    }

    fn level_bytes(&self) -> u64 {
        u64::MAX / 2
    }

    fn consumed_bytes(&self) -> u64 {
        self.consumed
    }
}
