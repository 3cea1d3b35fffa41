//! The pool agreement under `kill -9` of either end, with two real processes (issue 6).
//!
//! An OLT-side and an ONU-side worker run one ONU's distillation sessions over loopback
//! TCP, each on its own key store file (`KeyStore`, `StoreAuthLedger`, resumed with
//! `KeyStore::resume` exactly as the services do). The parent kills one of them with
//! SIGKILL at random instants, many times over — often between privacy amplification and
//! the peer's acknowledgement — and starts it again. At the end both are started once more
//! without quantum data, so the pool sync that opens their connection settles whatever the
//! last kill left in doubt. Then, from the two store files:
//!
//! - both pools hold the same committed blocks, in the same order, with the same bytes
//!   (consuming everything in equal chunks at both ends yields equal keys);
//! - nothing is left provisional; every block that is not committed at both ends is
//!   recorded as discarded wherever it exists — and some blocks were caught mid-commit and
//!   discarded on both ends (else the test proved little);
//! - no authentication unit (hash key, pad) was used twice at either end;
//! - the keys the OLT took from its pool and announced (`PoolUse`: one per committed block
//!   while running, alternately a downstream key and a run of two ETSI API keys) were
//!   mirrored by the ONU exactly: both ledgers list the same consumptions for the mirrored
//!   purposes (`Purpose::MIRRORED`), in the same order — none applied twice, none lost,
//!   whichever end was killed between taking, announcing, applying and acknowledging.
//!
//! The quantum channel is a pure function of the gate index (`pulse`, `detection`), so the
//! two processes agree on it without talking; every OLT incarnation starts at a fresh gate
//! (the wall clock in nanoseconds), as a real receiver never delivers a detection twice.
//!
//! Workers: the test binary re-executes itself (`pool_worker` only) with `QPON_POOL_ROLE`
//! set. `QPON_POOL_KILLS` sets the number of kills (default 40).
#![cfg(unix)]

use qpon_kms::{BlockState, End, KeyPool, KeyStore, LedgerKind, Purpose, StoreError, StorePool};
use qpon_qkd::records::{Basis, DetectionFlags, DetectionRecord, Intensity, PulseRecord};
use qpon_qkd::session::stream::{StreamDecoder, encode_frame};
use qpon_qkd::session::{Event, OltSession, OnuSession, PoolUse, SessionConfig, USE_LOG};
use qpon_qkd::time::Instant as QInstant;
use qpon_qkd::{SecretBytes, rng};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "QPON_POOL_ROLE";
const DIR_ENV: &str = "QPON_POOL_DIR";
const PORT_ENV: &str = "QPON_POOL_PORT";
/// "run": make key; "settle": no quantum data, exit once the pool sync is done.
const MODE_ENV: &str = "QPON_POOL_MODE";
const ONU: u16 = 1;
const SEED: u64 = 0x005E_ED0F_9001;

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// What the ONU's source sent in pulse `g` (only detected pulses are ever asked about, so
/// the intensity mix is that of detections: the 1:32, 10 km SNSPD example's).
fn pulse(g: u64) -> PulseRecord {
    let h = splitmix(SEED ^ g.wrapping_mul(0xA24B_AED4_963E_E407));
    let u = unit(h);
    let intensity = if u < 0.6247 {
        Intensity::Signal
    } else if u < 0.6247 + 0.3751 {
        Intensity::Decoy
    } else {
        Intensity::Vacuum
    };
    let bits = splitmix(h);
    PulseRecord { pulse: g, basis: Basis::from_bit(bits & 1 == 1), bit: bits & 2 != 0, intensity }
}

/// What the receiver detected at gate `g`: 2 % errors on matched bases, random for the
/// vacuum class (dark counts) and for mismatched bases.
fn detection(g: u64) -> DetectionRecord {
    let p = pulse(g);
    let h = splitmix(splitmix(SEED ^ 0x0D37 ^ g.wrapping_mul(0x9FB2_1C65_1E98_DF25)));
    let basis = Basis::from_bit(h & 1 == 1);
    let bit = if basis == p.basis {
        let p_err = if p.intensity == Intensity::Vacuum { 0.5 } else { 0.02 };
        p.bit ^ (unit(splitmix(h)) < p_err)
    } else {
        h & 2 != 0
    };
    DetectionRecord { gate: g, basis, bit, flags: DetectionFlags::default() }
}

fn cfg() -> SessionConfig {
    SessionConfig {
        onu: ONU,
        block_bits: 40_000,
        rto: qpon_qkd::time::Duration::from_millis(100),
        ..SessionConfig::default()
    }
}

fn psk() -> SecretBytes {
    SecretBytes::new((0..4096u64).map(|i| splitmix(SEED ^ i) as u8).collect())
}

// ---------------------------------------------------------------------------------------
// The worker processes.

/// Either session, behind one interface for the worker loop.
enum Session {
    Olt(Box<OltSession<rng::OsRng>>),
    Onu(Box<OnuSession>),
}

impl Session {
    fn reset_link(&mut self, now: QInstant) {
        match self {
            Session::Olt(s) => s.reset_link(now),
            Session::Onu(s) => s.reset_link(),
        }
    }

    fn handle_frame(&mut self, now: QInstant, f: &[u8]) {
        let _ = match self {
            Session::Olt(s) => s.handle_frame(now, f),
            Session::Onu(s) => s.handle_frame(now, f),
        };
    }

    fn handle_timeout(&mut self, now: QInstant) {
        if let Session::Olt(s) = self
            && s.poll_timeout().is_some_and(|t| t <= now)
        {
            s.handle_timeout(now);
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        match self {
            Session::Olt(s) => s.poll_event(),
            Session::Onu(s) => s.poll_event(),
        }
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match self {
            Session::Olt(s) => s.poll_transmit(),
            Session::Onu(s) => s.poll_transmit(),
        }
    }

    fn pool_failed(&mut self, now: QInstant) {
        match self {
            Session::Olt(s) => s.pool_failed(now),
            Session::Onu(s) => s.pool_failed(),
        }
    }
}

/// Entry point of a worker process; a no-op unless [`ROLE_ENV`] is set.
#[test]
fn pool_worker() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let port: u16 = std::env::var(PORT_ENV).unwrap().parse().unwrap();
    let settle = std::env::var(MODE_ENV).is_ok_and(|m| m == "settle");
    let olt = role == "olt";
    let store = KeyStore::open(dir.join(format!("{role}.redb"))).unwrap();
    let end = if olt { End::Olt } else { End::Onu };
    let r = store.resume(ONU, &psk(), end).unwrap();
    let mut pool = r.pool;
    let mut session = if olt {
        let mut s = OltSession::new(cfg(), r.material, Box::new(r.ledger), rng::os_rng());
        s.restore_last_committed(r.last_committed.map(|(id, _)| id));
        // The uses announced so far are the mirrored consumptions in the ledger.
        let (last, recent) = qpon_kms::recent_uses(&pool, USE_LOG).unwrap();
        s.restore_pool_uses(last, recent);
        Session::Olt(Box::new(s))
    } else {
        let mut s = OnuSession::new(cfg(), r.material, Box::new(r.ledger));
        s.restore_last_committed(r.last_committed);
        s.restore_pool_uses(pool.consumptions_of(&Purpose::MIRRORED).unwrap().len() as u64);
        Session::Onu(Box::new(s))
    };
    // At most one downstream key per committed block: the authentication budget of a
    // block covers about two (`qkd::session`, "Pool use"); faster rotation drains the
    // reserve and the sessions stop, fail closed.
    let mut used_at_blocks = KeyPool::blocks(&pool);
    // The worker's stderr goes to ROLE.err in the test's directory (shown if the test fails).
    eprintln!("{role} {} start", if settle { "settle" } else { "run" });
    let started = Instant::now();
    let now = || QInstant::from_nanos(started.elapsed().as_nanos() as u64);
    // A fresh stretch of gates for this incarnation.
    let mut gate =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let listener = olt.then(|| {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    println!("QPON-POOL-WORKER-READY");
    let mut conn: Option<TcpStream> = None;
    let mut decoder = StreamDecoder::new(16 << 20);
    let mut buf = vec![0u8; 1 << 16];
    let mut synced_at: Option<Instant> = None;
    loop {
        if conn.is_none() {
            let c = match &listener {
                Some(l) => l.accept().ok().map(|(c, _)| c),
                None => TcpStream::connect(("127.0.0.1", port)).ok(),
            };
            match c {
                Some(c) => {
                    c.set_nodelay(true).unwrap();
                    c.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
                    decoder = StreamDecoder::new(16 << 20);
                    session.reset_link(now());
                    conn = Some(c);
                }
                None => {
                    if !olt && settle && started.elapsed() > Duration::from_secs(2) {
                        return; // the settling OLT is gone: done
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            }
        }
        // Quantum data: keep the OLT's session supplied.
        if let Session::Olt(s) = &mut session
            && !settle
            && s.pending_detections() < 100_000
        {
            let dets: Vec<DetectionRecord> = (gate..gate + 50_000).map(detection).collect();
            gate += 50_000;
            s.handle_detections(now(), &dets);
        }
        // A downstream key or two API keys now and then: taken durably, then announced.
        if let Session::Olt(s) = &mut session
            && !settle
            && s.is_synced()
            && !s.is_stopped()
            && s.pool_uses_unacked() < 4
            && KeyPool::blocks(&pool) > used_at_blocks
        {
            used_at_blocks = KeyPool::blocks(&pool);
            let (purpose, len) =
                if used_at_blocks.is_multiple_of(2) { (Purpose::Downstream, 16) } else { (Purpose::Api, 64) };
            if let Ok((block, offset, _key)) = pool.take(purpose, len) {
                let u =
                    PoolUse { seq: 0, purpose: purpose as u8, block, offset, len: len as u32, switch: None };
                if s.announce_use(now(), u).is_err() {
                    s.pool_failed(now());
                }
            }
        }
        let mut closed = false;
        if let Some(c) = conn.as_mut() {
            match c.read(&mut buf) {
                Ok(0) => closed = true,
                Ok(n) => decoder.push(&buf[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => closed = true,
            }
        }
        while let Ok(Some(f)) = decoder.next_frame() {
            session.handle_frame(now(), &f);
        }
        session.handle_timeout(now());
        // Each event durably before the next (the frames that depend on it wait for that).
        loop {
            let mut progress = false;
            while let Some(e) = session.poll_event() {
                progress = true;
                let stored = match e {
                    Event::Provisional(b) => pool.stage(&b),
                    Event::Block(b, _) => pool.append(b.id, &b.key),
                    Event::Discarded { id } => KeyPool::discard(&mut pool, id),
                    Event::PoolSync { last_committed } => pool.truncate_after(last_committed),
                    Event::PoolUse(u) => {
                        let taken = Purpose::from_code(u.purpose)
                            .ok_or_else(|| qpon_kms::PoolError::Store("unknown purpose".into()))
                            .and_then(|p| pool.take_named(p, u.block, u.offset, u.len as usize));
                        match (&mut session, taken) {
                            (Session::Onu(s), Ok(_key)) => {
                                let _ = s.ack_pool_use(u.seq);
                                Ok(())
                            }
                            (_, Err(e)) => Err(e),
                            _ => Ok(()),
                        }
                    }
                    Event::NeedPulses { request, pulses } => {
                        let recs: Vec<Option<PulseRecord>> = pulses.iter().map(|p| p.map(pulse)).collect();
                        if let Session::Onu(s) = &mut session {
                            let _ = s.handle_pulses(now(), request, &recs);
                        }
                        Ok(())
                    }
                    Event::Stopped(r) => {
                        eprintln!("{role}: stopped: {r:?}");
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if let Err(e) = &stored {
                    eprintln!("{role}: pool failed: {e}");
                    session.pool_failed(now());
                }
            }
            while let Some(f) = session.poll_transmit() {
                progress = true;
                let mut bytes = Vec::with_capacity(f.len() + 4);
                encode_frame(&f, &mut bytes);
                if let Some(c) = conn.as_mut()
                    && c.write_all(&bytes).is_err()
                {
                    closed = true;
                }
            }
            if !progress {
                break;
            }
        }
        if closed {
            conn = None;
            if !olt && settle {
                return;
            }
        }
        if settle && let Session::Olt(s) = &session {
            // Done once the sync is settled and nothing is in flight.
            if s.is_synced() && s.poll_timeout().is_none() {
                let t = *synced_at.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_millis(200) {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parent.

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(role: &str, dir: &Path, port: u16, mode: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["pool_worker", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .env(PORT_ENV, port.to_string())
        .env(MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{role}.err")))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    // Wait until it has opened its store and (OLT) bound its port.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("QPON-POOL-WORKER-READY") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "{role} worker exited before it was ready: {:?}", child.wait());
    }
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

fn committed(infos: &[qpon_kms::BlockInfo]) -> Vec<uuid::Uuid> {
    infos.iter().filter(|b| b.state == BlockState::Committed).map(|b| b.id).collect()
}

/// Consumes everything in 32-byte keys (a test-only audit of the bytes).
fn drain(pool: &StorePool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match pool.consume(Purpose::Api, 32) {
            Ok(c) => out.push(c.key.expose().to_vec()),
            Err(StoreError::Exhausted { .. }) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn kill_9_of_either_end_leaves_agreeing_pools() {
    let kills: usize = std::env::var("QPON_POOL_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let dir = std::env::temp_dir().join(format!("qpon-pool-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut rng = splitmix(std::process::id().into());
    let mut next = move |n: u64| {
        rng = splitmix(rng);
        rng % n
    };
    let t0 = Instant::now();
    let mut olt = spawn("olt", &dir.0, port, "run");
    let mut onu = spawn("onu", &dir.0, port, "run");
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(20 + next(300)));
        let (role, victim) = if next(2) == 0 { ("olt", &mut olt) } else { ("onu", &mut onu) };
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        *victim = spawn(role, &dir.0, port, "run");
    }
    std::thread::sleep(Duration::from_millis(400));
    for c in [&mut olt, &mut onu] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // Settle: both once more, without quantum data, until the pool sync is done.
    let mut olt = spawn("olt", &dir.0, port, "settle");
    let mut onu = spawn("onu", &dir.0, port, "settle");
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in [&mut olt, &mut onu] {
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                assert!(s.success(), "a settling worker failed: {s}");
                break;
            }
            if Instant::now() >= deadline {
                for role in ["olt", "onu"] {
                    let e = std::fs::read_to_string(dir.0.join(format!("{role}.err"))).unwrap_or_default();
                    eprintln!(
                        "--- {role} stderr ---\n{}",
                        e.lines()
                            .filter(|l| l.contains("failed") || l.contains("stopped:") || l.contains("start"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
                panic!("the settling workers did not finish");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    let olt_store = KeyStore::open(dir.0.join("olt.redb")).unwrap();
    let onu_store = KeyStore::open(dir.0.join("onu.redb")).unwrap();
    let (po, pn) = (olt_store.pool(ONU), onu_store.pool(ONU));
    let (io, inn) = (po.block_infos().unwrap(), pn.block_infos().unwrap());
    let (co, cn) = (committed(&io), committed(&inn));
    assert_eq!(co, cn, "the two ends hold different committed blocks");
    assert!(co.len() >= 3, "too little key was made to test anything: {} blocks", co.len());
    for infos in [&io, &inn] {
        assert!(infos.iter().all(|b| b.state != BlockState::Provisional), "a block left provisional");
    }
    // Every block that is not committed at both ends is discarded wherever it exists, and
    // recorded so in that end's ledger.
    let state = |infos: &[qpon_kms::BlockInfo], id| infos.iter().find(|b| b.id == id).map(|b| b.state);
    let mut both_discarded = 0;
    for b in io.iter().chain(&inn) {
        if b.state == BlockState::Committed {
            continue;
        }
        assert!(
            state(&io, b.id) != Some(BlockState::Committed)
                && state(&inn, b.id) != Some(BlockState::Committed),
            "block {} committed at one end only",
            b.id
        );
        if state(&io, b.id).is_some() && state(&inn, b.id).is_some() {
            both_discarded += 1;
        }
    }
    for (pool, infos) in [(&po, &io), (&pn, &inn)] {
        let discarded: Vec<_> =
            pool.ledger().unwrap().filter(|e| e.kind == LedgerKind::Discarded).map(|e| e.block).collect();
        for b in infos.iter().filter(|b| b.state == BlockState::Discarded) {
            assert!(discarded.contains(&b.id), "discarded block {} has no ledger entry", b.id);
        }
    }
    both_discarded /= 2;
    // The downstream and API keys: the ONU mirrored exactly what the OLT took.
    let (uo, un) =
        (po.consumptions_of(&Purpose::MIRRORED).unwrap(), pn.consumptions_of(&Purpose::MIRRORED).unwrap());
    for p in Purpose::MIRRORED {
        assert!(uo.iter().any(|u| u.0 == p), "no {p:?} key was taken");
    }
    assert_eq!(uo, un, "the mirrored consumptions differ");
    // The same bytes at both ends.
    let (ko, kn) = (drain(&po), drain(&pn));
    assert!(!ko.is_empty());
    assert!(ko == kn, "the committed keys differ between the ends");
    for store in [&olt_store, &onu_store] {
        assert_eq!(
            store.auth_ledger().find_reuse(ONU).unwrap(),
            None,
            "an authentication unit was used twice"
        );
    }
    eprintln!(
        "{kills} kills in {:.1} s: {} blocks committed at both ends, {both_discarded} caught mid-commit and \
         discarded at both, {} discarded at one end only; {} downstream and {} API uses mirrored",
        t0.elapsed().as_secs_f64(),
        co.len(),
        io.iter().chain(&inn).filter(|b| b.state == BlockState::Discarded).count() - 2 * both_discarded,
        uo.iter().filter(|u| u.0 == Purpose::Downstream).count(),
        uo.iter().filter(|u| u.0 == Purpose::Api).count(),
    );
    assert!(both_discarded > 0, "no kill landed inside a commit: raise QPON_POOL_KILLS");
}
