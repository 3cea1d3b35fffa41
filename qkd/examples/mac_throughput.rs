//! Wegman–Carter tag throughput: a fixed hash key and a fresh pad per message.
//!
//! Run with `cargo run --release -p qpon-qkd --example mac_throughput`.
//!
//! Pads here are sliced from one buffer drawn from seeded ChaCha — only because this is a
//! benchmark; real pads come from the pre-shared secret or the key pool. Each message
//! builds a `Pad` from its slice, as a session taking pads from a ledger would.

use std::hint::black_box;
use std::time::{Duration, Instant};

use poly1305::{Poly1305, universal_hash::KeyInit};
use qpon_qkd::mac::{HashKey, MacFamily, Pad, WcMac, WegmanCarter};
use rand::Rng;

const PADS: usize = 1 << 16;
const MIN_TIME: Duration = Duration::from_millis(1000);

/// Runs `f(i)` for i = 0, 1, … until `MIN_TIME` has passed; returns calls per second.
fn rate(mut f: impl FnMut(usize) -> u8) -> f64 {
    let mut acc = 0u8;
    let mut n = 0usize;
    let start = Instant::now();
    loop {
        for _ in 0..4096 {
            acc ^= f(n);
            n += 1;
        }
        let el = start.elapsed();
        if el >= MIN_TIME {
            black_box(acc);
            return n as f64 / el.as_secs_f64();
        }
    }
}

fn main() {
    let mut rng = qpon_qkd::rng::seeded(2026);
    let mut msg = vec![0u8; 1500];
    rng.fill_bytes(&mut msg);
    let mut pads = vec![0u8; PADS * 16];
    rng.fill_bytes(&mut pads);
    let mut key = [0u8; 16];
    rng.fill_bytes(&mut key);

    println!("{:<28} {:>8} {:>14} {:>10}", "family", "msg (B)", "tags/s", "GB/s");
    let families =
        [MacFamily::Poly1305, MacFamily::Gf128 { tag_bits: 128 }, MacFamily::Gf128 { tag_bits: 64 }];
    for family in families {
        let wc = WegmanCarter::new(family, HashKey::from_slice(&key)).unwrap();
        let pl = wc.pad_len();
        for len in [64usize, 1500] {
            let m = &msg[..len];
            let r = rate(|i| {
                let off = (i % PADS) * 16;
                let pad = Pad::from_slice(&pads[off..off + pl]);
                wc.tag(black_box(m), &pad).unwrap().as_bytes()[0]
            });
            println!("{:<28} {:>8} {:>14.0} {:>10.2}", family.to_string(), len, r, r * len as f64 / 1e9);
        }
    }

    // For comparison: Poly1305 re-keyed with r‖s for every message (the naive way).
    for len in [64usize, 1500] {
        let m = &msg[..len];
        let r = rate(|i| {
            let off = (i % PADS) * 16;
            let mut k = poly1305::Key::default();
            k[..16].copy_from_slice(&key);
            k[16..].copy_from_slice(&pads[off..off + 16]);
            Poly1305::new(&k).compute_unpadded(black_box(m))[0]
        });
        println!("{:<28} {:>8} {:>14.0} {:>10.2}", "poly1305 (re-key per msg)", len, r, r * len as f64 / 1e9);
    }
}
