//! Crash safety of the key store under `kill -9` (issue 6).
//!
//! A worker process consumes key from a [`KeyStore`] in a deterministic sequence and, right
//! after each `consume` returns, appends `block offset len checksum` to a "used" log with
//! fsync (that line stands for "the key was used"). The test kills the worker with SIGKILL
//! at random instants, many times over, and after every kill checks from the ledger, on a
//! copy of the crashed file (so the next worker also recovers from the crashed state):
//!
//! - (a) no byte left the pool twice: consumed/skipped/discarded ranges never overlap;
//! - (b) every key in the used log is a ledger consumption with the right bytes, and only
//!   the last consumption of a run may be missing from the log (crash between commit and
//!   use: recorded as consumed, never reused);
//! - (c) nothing silently lost: per block the ledger ranges tile `0..used` with no hole,
//!   the ledger sums equal the totals, and appended = level + consumed + skipped + discarded;
//! - (d) the ledger's sequence numbers are 0, 1, 2, … with no gap.
//!
//! At the end a second, fresh store replays the same deterministic operations as the
//! other end would; its ledger, blocks and key bytes must equal the crashed store's.
//!
//! Worker process: the test binary re-executes itself (`current_exe()`) with
//! `QPON_CRASH_WORKER_DIR` set, running only [`worker_entry`]. An example binary would not
//! be built by `cargo test --test crash_loop`, nor is its path exposed to tests
//! (`CARGO_BIN_EXE_*` exists for bins only); the test binary itself always exists.
//!
//! `QPON_CRASH_LOOPS` sets the number of kills (default 200), `QPON_CRASH_SEED` the seed.
#![cfg(unix)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qpon_kms::{BlockState, KeyStore, LedgerEntry, LedgerKind, Purpose, StoreError, StorePool};
use qpon_qkd::BitBlock;
use uuid::Uuid;

const WORKER_DIR_ENV: &str = "QPON_CRASH_WORKER_DIR";
const WORKER_SEED_ENV: &str = "QPON_CRASH_WORKER_SEED";
const READY: &str = "QPON-WORKER-READY";
const RUN_START: &str = "start";
const ONU: u16 = 7;
/// The worker appends blocks while the level is below this many bytes.
const LOW_WATER: u64 = 8192;
const MAX_REQUEST: u64 = 300;

// ---------------------------------------------------------------------------------------
// Determinism: everything both ends do derives from (seed, index).

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(seed: u64, tag: u64, i: u64) -> u64 {
    splitmix(splitmix(seed ^ tag.rotate_left(32)) ^ i)
}

/// A small PRNG for the test's own (non-replayed) choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0.wrapping_mul(0x2545_F491_4F6C_DD1D))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn block_id(seed: u64, n: u64) -> Uuid {
    Uuid::from_u128((u128::from(seed) << 64) | u128::from(n))
}

/// Block `n`'s raw bytes and bit length: 256..=4096 whole bytes plus 0..=7 odd bits.
fn block_bytes(seed: u64, n: u64) -> (Vec<u8>, usize) {
    let r = mix(seed, 1, n);
    let whole = 256 + (r % 3841) as usize;
    let bits = whole * 8 + ((r >> 20) % 8) as usize;
    let bytes = (0..bits.div_ceil(8) as u64).map(|i| mix(seed, 2 + n, i) as u8).collect();
    (bytes, bits)
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// What operation `k` of the sequence is.
enum Op {
    Consume(Purpose, usize),
    /// Discard the first block that still has unused bytes.
    DiscardHead,
}

fn op(seed: u64, k: u64) -> Op {
    let r = mix(seed, 3, k);
    if r.is_multiple_of(32) {
        Op::DiscardHead
    } else {
        Op::Consume(Purpose::ALL[((r >> 8) % 4) as usize], (1 + (r >> 16) % MAX_REQUEST) as usize)
    }
}

/// Appends blocks `blocks, blocks+1, …` until the level reaches [`LOW_WATER`]. A function of
/// the store's state only, so it is idempotent across crashes and the same on both ends.
fn top_up(pool: &StorePool, seed: u64) -> Result<(), StoreError> {
    loop {
        let t = pool.totals()?;
        if t.level >= LOW_WATER {
            return Ok(());
        }
        let (bytes, bits) = block_bytes(seed, t.blocks);
        pool.append_block(block_id(seed, t.blocks), &BitBlock::from_bytes(&bytes, bits))?;
    }
}

/// Operations already done: each one leaves exactly one Consumed or Discarded ledger entry.
fn ops_done(pool: &StorePool) -> Result<u64, StoreError> {
    Ok(pool.ledger()?.filter(|e| !matches!(e.kind, LedgerKind::Skipped)).count() as u64)
}

/// Performs operation `k`; returns the consumption, if it was one.
fn step(pool: &StorePool, seed: u64, k: u64) -> Result<Option<qpon_kms::Consumed>, StoreError> {
    top_up(pool, seed)?;
    match op(seed, k) {
        Op::Consume(purpose, len) => pool.consume(purpose, len).map(Some),
        Op::DiscardHead => {
            let head = pool.block_infos()?.into_iter().find(|b| b.remaining_bytes() > 0);
            pool.discard(head.expect("top_up leaves unused bytes").id)?;
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The worker process.

/// Entry point of the worker process; a no-op unless [`WORKER_DIR_ENV`] is set.
#[test]
fn worker_entry() {
    let Some(dir) = std::env::var_os(WORKER_DIR_ENV) else { return };
    let seed: u64 = std::env::var(WORKER_SEED_ENV).unwrap().parse().unwrap();
    let dir = PathBuf::from(dir);
    let store = KeyStore::open(dir.join("store.redb")).unwrap();
    let pool = store.pool(ONU);
    let mut log = open_used_log(&dir.join("used.log"));
    writeln_synced(&mut log, RUN_START);
    println!("{READY}");
    std::io::stdout().flush().unwrap();
    let mut k = ops_done(&pool).unwrap();
    // Never outlive the test that spawned us, should it die without killing us.
    let parent = std::os::unix::process::parent_id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::process::parent_id() == parent && Instant::now() < deadline {
        if let Some(c) = step(&pool, seed, k).unwrap() {
            // The key is "used" from here on.
            let line = format!("{} {} {} {:016x}", c.block, c.offset, c.key.len(), checksum(c.key.expose()));
            writeln_synced(&mut log, &line);
        }
        k += 1;
    }
}

/// Opens the used log for appending, dropping a torn last line (killed mid-write).
fn open_used_log(path: &Path) -> File {
    let mut f = OpenOptions::new().create(true).read(true).append(true).open(path).unwrap();
    let text = std::fs::read(path).unwrap();
    if text.last().is_some_and(|&b| b != b'\n') {
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        f.set_len(keep as u64).unwrap();
        f.sync_all().unwrap();
        f = OpenOptions::new().append(true).open(path).unwrap();
    }
    f
}

fn writeln_synced(f: &mut File, line: &str) {
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
    f.sync_all().unwrap();
}

// ---------------------------------------------------------------------------------------
// Checks.

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("qpon-crash-loop-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Used {
    block: Uuid,
    offset: u64,
    len: u64,
    sum: u64,
}

/// The used log as runs (one per worker start), each a list of used keys.
fn read_used_log(path: &Path) -> Vec<Vec<Used>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs: Vec<Vec<Used>> = Vec::new();
    // A torn last line is the last run's unfinished "use": not a use yet.
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    for line in complete.lines() {
        if line == RUN_START {
            runs.push(Vec::new());
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "bad used-log line {line:?}");
        let used = Used {
            block: f[0].parse().unwrap(),
            offset: f[1].parse().unwrap(),
            len: f[2].parse().unwrap(),
            sum: u64::from_str_radix(f[3], 16).unwrap(),
        };
        runs.last_mut().expect("use before run start").push(used);
    }
    runs
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    ops: u64,
    consumed: u64,
    discards: u64,
    skips: u64,
    blocks: u64,
    /// Consumptions committed but never used (kill between commit and the used-log line).
    unlogged: u64,
}

/// Checks (a)–(d) and the used log on the store at `path`; returns what the ledger shows.
fn check(path: &Path, seed: u64, used_log: &Path) -> Stats {
    let store = KeyStore::open(path).unwrap();
    let pool = store.pool(ONU);
    let totals = pool.totals().unwrap();
    let ledger: Vec<LedgerEntry> = pool.ledger().unwrap().collect();
    let infos = pool.block_infos().unwrap();

    // (d) gap-free sequence.
    for (i, e) in ledger.iter().enumerate() {
        assert_eq!(e.seq, i as u64, "ledger sequence gap at {i}");
    }

    // (a) + (c): per block, the ranges tile 0..end with no overlap and no hole.
    let mut ranges: HashMap<Uuid, Vec<&LedgerEntry>> = HashMap::new();
    let (mut consumed, mut skipped, mut discarded) = ([0u64; 4], 0u64, 0u64);
    for e in &ledger {
        ranges.entry(e.block).or_default().push(e);
        match e.kind {
            LedgerKind::Consumed(p) => consumed[p as usize] += e.len,
            LedgerKind::Skipped => skipped += e.len,
            LedgerKind::Discarded => discarded += e.len,
        }
    }
    let mut level = 0;
    let mut appended = 0;
    for (n, b) in infos.iter().enumerate() {
        assert_eq!(b.id, block_id(seed, n as u64), "block order");
        assert_eq!(b.bits as usize, block_bytes(seed, n as u64).1, "block {n} length");
        let usable = b.bits / 8;
        appended += usable;
        level += b.remaining_bytes();
        let mut rs = ranges.remove(&b.id).unwrap_or_default();
        rs.sort_by_key(|e| (e.offset, e.seq));
        let mut end = 0;
        for e in &rs {
            assert_eq!(e.offset, end, "block {n}: range {e:?} overlaps or leaves a hole before it");
            end += e.len;
        }
        assert!(end <= usable, "block {n}: ledger runs past its end");
        match b.state {
            BlockState::Committed => assert_eq!(end, b.used_bytes, "block {n}: cursor vs ledger"),
            BlockState::Discarded => assert_eq!(end, usable, "discarded block {n} not fully accounted"),
            // This worker appends committed blocks only.
            other => panic!("block {n} is {other:?}"),
        }
        assert_eq!(end + b.remaining_bytes(), usable, "block {n}: bytes unaccounted for");
    }
    assert!(ranges.is_empty(), "ledger names blocks that are not in the pool");
    assert_eq!(totals.consumed, consumed, "consumed totals vs ledger");
    assert_eq!(totals.skipped, skipped, "skipped total vs ledger");
    assert_eq!(totals.discarded, discarded, "discarded total vs ledger");
    assert_eq!(totals.level, level, "level vs blocks");
    assert_eq!(totals.appended, appended, "appended vs blocks");
    assert_eq!(totals.blocks, infos.len() as u64);
    assert_eq!(
        totals.appended,
        totals.level + consumed.iter().sum::<u64>() + skipped + discarded,
        "appended != level + consumed + skipped + discarded"
    );

    // (b) every used key is a ledger consumption, in order, with the bytes of its block;
    // only the last consumption of each run may be missing from the log.
    let cons: Vec<&LedgerEntry> =
        ledger.iter().filter(|e| matches!(e.kind, LedgerKind::Consumed(_))).collect();
    // Each run ended by a kill may have committed one consumption after its last used key;
    // `slack` counts the runs whose such consumption is not yet matched.
    let mut j = 0;
    let mut slack = 0;
    let mut unlogged = 0u64;
    let at = |e: &LedgerEntry, u: &Used| (e.block, e.offset, e.len) == (u.block, u.offset, u.len);
    for (r, run) in read_used_log(used_log).iter().enumerate() {
        if r > 0 {
            slack += 1;
        }
        for (x, u) in run.iter().enumerate() {
            if x == 0 {
                while slack > 0 && cons.get(j).is_some_and(|e| !at(e, u)) {
                    j += 1;
                    slack -= 1;
                    unlogged += 1;
                }
                slack = 0;
            }
            let e = cons.get(j).unwrap_or_else(|| panic!("used key {u:?} has no ledger consumption"));
            assert!(at(e, u), "used key {u:?} is not the ledger's next consumption {e:?}");
            let n = (u.block.as_u128() & u128::from(u64::MAX)) as u64;
            let (bytes, _) = block_bytes(seed, n);
            assert_eq!(u.sum, checksum(&bytes[u.offset as usize..][..u.len as usize]), "used key bytes");
            j += 1;
        }
    }
    let rest = cons.len() - j;
    assert!(rest <= slack + 1, "{rest} consumptions after the last used key, at most {} allowed", slack + 1);
    unlogged += rest as u64;

    Stats {
        ops: ops_done(&pool).unwrap(),
        consumed: cons.len() as u64,
        discards: ledger.iter().filter(|e| e.kind == LedgerKind::Discarded).count() as u64,
        skips: ledger.iter().filter(|e| e.kind == LedgerKind::Skipped).count() as u64,
        blocks: totals.blocks,
        unlogged,
    }
}

/// The other end: a fresh store replaying the same operations must agree entry for entry
/// and byte for byte with the crashed one.
fn check_twin(crashed: &Path, twin: &Path, seed: u64) {
    let store = KeyStore::open(crashed).unwrap();
    let pool = store.pool(ONU);
    let ledger: Vec<LedgerEntry> = pool.ledger().unwrap().collect();
    let infos = pool.block_infos().unwrap();
    let ops = ops_done(&pool).unwrap();

    let twin_store = KeyStore::open(twin).unwrap();
    let tw = twin_store.pool(ONU);
    for k in 0..ops {
        if let Some(c) = step(&tw, seed, k).unwrap() {
            let n = (c.block.as_u128() & u128::from(u64::MAX)) as u64;
            let (bytes, _) = block_bytes(seed, n);
            assert_eq!(c.key.expose(), &bytes[c.offset as usize..][..c.key.len()], "twin key bytes");
        }
    }
    let twin_ledger: Vec<LedgerEntry> = tw.ledger().unwrap().collect();
    assert_eq!(twin_ledger, ledger, "the two ends' ledgers differ");
    let twin_infos = tw.block_infos().unwrap();
    assert!(twin_infos.len() <= infos.len(), "twin has more blocks");
    assert_eq!(twin_infos[..], infos[..twin_infos.len()], "the two ends' blocks differ");
    // Blocks the crashed end appended before an operation it never committed: untouched.
    assert!(infos[twin_infos.len()..].iter().all(|b| b.used_bytes == 0 && b.state == BlockState::Committed));
}

#[test]
fn kill_9_at_random_points_loses_and_reuses_nothing() {
    let loops: u32 = std::env::var("QPON_CRASH_LOOPS").map_or(200, |v| v.parse().expect("QPON_CRASH_LOOPS"));
    let seed: u64 = std::env::var("QPON_CRASH_SEED").map_or_else(
        |_| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
        |v| v.parse().expect("QPON_CRASH_SEED"),
    );
    eprintln!("crash loop: {loops} kills, QPON_CRASH_SEED={seed}");
    let start = Instant::now();
    let tmp = TempDir::new();
    let store = tmp.0.join("store.redb");
    let copy = tmp.0.join("check.redb");
    let used_log = tmp.0.join("used.log");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(seed);
    let (mut blind, mut after_ready) = (0, 0);
    let mut stats = Stats::default();

    for i in 0..loops {
        let mut child = Command::new(&exe)
            .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER_DIR_ENV, &tmp.0)
            .env(WORKER_SEED_ENV, seed.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        if rng.below(4) == 0 {
            // Anywhere from process start through open, recovery and the first operations.
            blind += 1;
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        } else {
            // In the middle of the consumption loop.
            after_ready += 1;
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            // The harness prints `test worker_entry ... ` before the test's own output.
            while !line.trim_end().ends_with(READY) {
                line.clear();
                let n = out.read_line(&mut line).unwrap();
                assert!(n > 0, "worker {i} exited before it was ready: {:?}", child.wait());
            }
            std::thread::sleep(Duration::from_micros(1_000 + rng.below(29_000)));
        }
        assert!(child.try_wait().unwrap().is_none(), "worker {i} stopped by itself: {:?}", child.wait());
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "worker {i} was not killed");

        // Check a copy: the next worker must recover from the crashed file itself.
        if store.exists() {
            std::fs::copy(&store, &copy).unwrap();
            stats = check(&copy, seed, &used_log);
            std::fs::remove_file(&copy).unwrap();
        }
    }
    let loop_time = start.elapsed();

    let twin = tmp.0.join("twin.redb");
    check_twin(&store, &twin, seed);
    eprintln!(
        "crash loop: {loops} kills ({blind} blind, {after_ready} mid-loop) in {loop_time:.1?} \
         (+ twin replay, total {:.1?}); ledger: {} operations, {} consumptions ({} committed \
         but never used), {} discards, {} skips, {} blocks",
        start.elapsed(),
        stats.ops,
        stats.consumed,
        stats.unlogged,
        stats.discards,
        stats.skips,
        stats.blocks
    );
    assert!(stats.consumed >= u64::from(loops), "too little progress to mean anything: {stats:?}");
}
