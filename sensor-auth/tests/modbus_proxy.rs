//! The Modbus/TCP bump-in-the-wire end to end, with a Modbus stack written by others
//! (tokio-modbus 0.17 client and server):
//!
//! ```text
//! tokio-modbus client ─▶ control proxy ─▶ [relay: tamper / capture / inject] ─▶ field proxy ─▶ tokio-modbus server
//! ```
//!
//! Both proxies draw pads from key stores holding the same blocks (as QKD would have left
//! them). Assertions are on the device's registers and write counter and on the exception
//! codes clients receive.

mod common;
use common::{TempDir, block_bytes};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qpon_kms::KeyStore;
use qpon_qkd::BitBlock;
use qpon_sensor_auth::proxy::{Proxy, ProxyConfig, Role};
use qpon_sensor_auth::{EndConfig, LowWaterPolicy, PoolPads, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use uuid::Uuid;

const ONU: u16 = 3;
const UNIT: u8 = 1;

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------- the device

/// An in-memory Modbus device: holding registers, and how many requests and writes reached it.
#[derive(Clone, Default)]
struct Device {
    regs: Arc<Mutex<HashMap<u16, u16>>>,
    requests: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

impl Device {
    fn get(&self, addr: u16) -> u16 {
        self.regs.lock().unwrap().get(&addr).copied().unwrap_or(0)
    }
    fn set(&self, addr: u16, v: u16) {
        self.regs.lock().unwrap().insert(addr, v);
    }
    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl tokio_modbus::server::Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut regs = self.regs.lock().unwrap();
        let r = match req.request {
            Request::ReadHoldingRegisters(addr, n) => Ok(Response::ReadHoldingRegisters(
                (0..n).map(|i| regs.get(&addr.wrapping_add(i)).copied().unwrap_or(0)).collect(),
            )),
            Request::WriteSingleRegister(addr, v) => {
                self.writes.fetch_add(1, Ordering::SeqCst);
                regs.insert(addr, v);
                Ok(Response::WriteSingleRegister(addr, v))
            }
            Request::WriteMultipleRegisters(addr, words) => {
                self.writes.fetch_add(1, Ordering::SeqCst);
                for (i, w) in words.iter().enumerate() {
                    regs.insert(addr.wrapping_add(i as u16), *w);
                }
                Ok(Response::WriteMultipleRegisters(addr, words.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(r)
    }
}

async fn start_device() -> (SocketAddr, Device) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let device = Device::default();
    let d = device.clone();
    tokio::spawn(async move {
        let server = Server::new(listener);
        let new_service = move |_addr: SocketAddr| Ok(Some(d.clone()));
        let on_connected = move |stream, addr| {
            let new_service = new_service.clone();
            async move { accept_tcp_connection(stream, addr, new_service) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    (addr, device)
}

// ---------------------------------------------------------------- key stores

/// Two store files (control, field) holding the same `blocks` blocks of `len` bytes.
fn twin_stores(dir: &TempDir, blocks: usize, len: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let paths = (dir.0.join("control.redb"), dir.0.join("field.redb"));
    for p in [&paths.0, &paths.1] {
        let store = KeyStore::open(p).unwrap();
        let pool = store.pool(ONU);
        for b in 0..blocks {
            let bytes = block_bytes(b as u64 + 1, len);
            pool.append_block(
                Uuid::from_u128(0x5e15_0000 + b as u128),
                &BitBlock::from_bytes(&bytes, len * 8),
            )
            .unwrap();
        }
    }
    paths
}

// ---------------------------------------------------------------- the relay

/// A byte position in a frame.
#[derive(Clone, Copy, Debug)]
enum At {
    FromStart(usize),
    FromEnd(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToField,
    ToControl,
}

/// A TCP relay between the proxies that cuts the link into frames, records them, can flip
/// one byte of the n-th frame in one direction, and can inject frames toward the field.
#[derive(Default)]
struct Relay {
    /// (direction, 0-based index of the frame in that direction, byte to flip).
    flip: Mutex<Option<(Dir, usize, At)>>,
    frames: Mutex<Vec<(Dir, Vec<u8>)>>,
    counts: Mutex<[usize; 2]>,
    inject: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
}

impl Relay {
    /// Flips the lowest bit of byte `at` in the next frame going `dir`.
    fn flip_next(&self, dir: Dir, at: At) {
        let next = self.counts.lock().unwrap()[dir as usize];
        *self.flip.lock().unwrap() = Some((dir, next, at));
    }

    fn frames(&self, dir: Dir) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().iter().filter(|(d, _)| *d == dir).map(|(_, f)| f.clone()).collect()
    }

    fn pass(&self, dir: Dir, mut frame: Vec<u8>) -> Vec<u8> {
        let i = {
            let mut c = self.counts.lock().unwrap();
            c[dir as usize] += 1;
            c[dir as usize] - 1
        };
        self.frames.lock().unwrap().push((dir, frame.clone()));
        let mut flip = self.flip.lock().unwrap();
        if let Some((d, n, at)) = *flip
            && d == dir
            && n == i
        {
            let at = match at {
                At::FromEnd(k) => frame.len() - 1 - k,
                At::FromStart(k) => k,
            };
            frame[at] ^= 0x01;
            *flip = None;
        }
        frame
    }
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(n) = qpon_sensor_auth::frame_len(buf).ok()?
            && buf.len() >= n
        {
            let rest = buf.split_off(n);
            return Some(std::mem::replace(buf, rest));
        }
        let mut chunk = [0u8; 2048];
        let n = r.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn start_relay(field: SocketAddr) -> (SocketAddr, Arc<Relay>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = Arc::new(Relay::default());
    let r = Arc::clone(&relay);
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(field).await else { continue };
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let (itx, mut irx) = mpsc::unbounded_channel::<Vec<u8>>();
            *r.inject.lock().unwrap() = Some(itx);
            let r1 = Arc::clone(&r);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    tokio::select! {
                        f = read_frame(&mut dr, &mut buf) => {
                            let Some(f) = f else { break };
                            let f = r1.pass(Dir::ToField, f);
                            if uw.write_all(&f).await.is_err() { break }
                        }
                        Some(f) = irx.recv() => {
                            if uw.write_all(&f).await.is_err() { break }
                        }
                    }
                }
            });
            let r2 = Arc::clone(&r);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(f) = read_frame(&mut ur, &mut buf).await {
                    let f = r2.pass(Dir::ToControl, f);
                    if dw.write_all(&f).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, relay)
}

// ---------------------------------------------------------------- the pair

struct Opts {
    auth: EndConfig,
    blocks: usize,
    block_bytes: usize,
    field_units: Vec<u8>,
    relay: bool,
    /// Field proxy's device address override (e.g. a closed port).
    device: Option<SocketAddr>,
    /// Control proxy's peer override (e.g. a closed port).
    peer: Option<SocketAddr>,
    /// Open the stores through the configuration (`open_pads`) instead of handing pools in.
    via_config: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            auth: EndConfig { low_water_bytes: 0, response_timeout_ms: 600, ..EndConfig::default() },
            blocks: 2,
            block_bytes: 32 * 1024,
            field_units: Vec::new(),
            relay: false,
            device: None,
            peer: None,
            via_config: false,
        }
    }
}

struct Pair {
    control: SocketAddr,
    field: SocketAddr,
    device: Device,
    relay: Option<Arc<Relay>>,
    control_status: watch::Receiver<Status>,
    field_status: watch::Receiver<Status>,
    /// The control proxy's status endpoint.
    control_status_addr: SocketAddr,
    _stop: watch::Sender<()>,
    /// The stores the proxies draw from (field, control), unless opened through the config.
    stores: Vec<KeyStore>,
    /// The field proxy's own stop switch, task and configuration (for a restart).
    field_stop: watch::Sender<()>,
    field_task: tokio::task::JoinHandle<Result<(), qpon_sensor_auth::proxy::ProxyError>>,
    field_config: ProxyConfig,
    _dir: TempDir,
}

impl Pair {
    /// QKD delivers a new block: appended to both ends' pools.
    fn refill(&self, id: u128, bytes: usize) {
        for store in &self.stores {
            let key = block_bytes(id as u64, bytes);
            store
                .pool(ONU)
                .append_block(Uuid::from_u128(id), &BitBlock::from_bytes(&key, bytes * 8))
                .unwrap();
        }
    }
}

async fn stopped(mut rx: watch::Receiver<()>) {
    let _ = rx.changed().await;
}

async fn pair(o: Opts) -> Pair {
    logs();
    let dir = TempDir::new("pair");
    let (cpath, fpath) = twin_stores(&dir, o.blocks, o.block_bytes);
    let (device_addr, device) = start_device().await;
    let (stop, stop_rx) = watch::channel(());

    let mut fc = ProxyConfig {
        role: Some(Role::Field),
        listen: "127.0.0.1:0".parse().unwrap(),
        device: Some(o.device.unwrap_or(device_addr)),
        allowed_units: o.field_units.clone(),
        auth: o.auth.clone(),
        ..ProxyConfig::default()
    };
    fc.store.path = fpath.clone();
    fc.store.onu = ONU;
    let stores = Arc::new(Mutex::new(Vec::new()));
    let pads = |path: &std::path::Path, cfg: &ProxyConfig| {
        if o.via_config {
            qpon_sensor_auth::proxy::open_pads(cfg).unwrap()
        } else {
            let store = KeyStore::open(path).unwrap();
            stores.lock().unwrap().push(store.clone());
            Box::new(PoolPads::new(store.pool(ONU))) as Box<dyn qpon_sensor_auth::PadSource>
        }
    };
    let field = Proxy::bind(fc.clone(), pads(&fpath, &fc)).await.unwrap();
    let field_addr = field.local_addr();
    let field_status = field.status();
    let (field_stop, field_stop_rx) = watch::channel(());
    let field_task = tokio::spawn(field.serve(stopped(field_stop_rx)));

    let (peer, relay) = if o.relay {
        let (a, r) = start_relay(field_addr).await;
        (a, Some(r))
    } else {
        (field_addr, None)
    };
    let mut cc = ProxyConfig {
        role: Some(Role::Control),
        listen: "127.0.0.1:0".parse().unwrap(),
        peer: Some(o.peer.unwrap_or(peer)),
        auth: o.auth.clone(),
        reconnect_ms: 50,
        status_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ProxyConfig::default()
    };
    cc.store.path = cpath.clone();
    cc.store.onu = ONU;
    let control = Proxy::bind(cc.clone(), pads(&cpath, &cc)).await.unwrap();
    let control_addr = control.local_addr();
    let control_status = control.status();
    let control_status_addr = control.status_addr().unwrap();
    let mut link = control.link_state();
    tokio::spawn(control.serve(stopped(stop_rx)));
    if o.peer.is_none() {
        tokio::time::timeout(Duration::from_secs(5), link.wait_for(|up| *up)).await.unwrap().unwrap();
    }
    Pair {
        control: control_addr,
        field: field_addr,
        device,
        relay,
        control_status,
        field_status,
        control_status_addr,
        _stop: stop,
        stores: std::mem::take(&mut *stores.lock().unwrap()),
        field_stop,
        field_task,
        field_config: ProxyConfig { listen: field_addr, ..fc },
        _dir: dir,
    }
}

impl Pair {
    /// Stops the field proxy (all its state in memory is lost) and starts a new one on the
    /// same address with the same store, as after a process restart.
    async fn restart_field(&mut self) {
        let (stop, rx) = watch::channel(());
        drop(std::mem::replace(&mut self.field_stop, stop));
        let old = std::mem::replace(&mut self.field_task, tokio::spawn(async { Ok(()) }));
        old.await.unwrap().unwrap();
        let pads = Box::new(PoolPads::new(self.stores[0].pool(ONU)));
        let field = Proxy::bind(self.field_config.clone(), pads).await.unwrap();
        self.field_status = field.status();
        self.field_task = tokio::spawn(field.serve(stopped(rx)));
    }
}

async fn client(addr: SocketAddr, unit: u8) -> tokio_modbus::client::Context {
    tcp::connect_slave(addr, Slave(unit)).await.unwrap()
}

/// A client call with a hard deadline (tokio-modbus has none): `Err(())` on timeout.
async fn within<T>(d: Duration, f: impl std::future::Future<Output = T>) -> Result<T, ()> {
    tokio::time::timeout(d, f).await.map_err(|_| ())
}

const CALL: Duration = Duration::from_secs(5);

fn rejected(s: &Status, code: &str) -> u64 {
    s.rejected.get(code).copied().unwrap_or(0)
}

fn rejected_total(s: &Status) -> u64 {
    s.rejected.values().sum()
}

/// Waits (up to 2 s) until a proxy's published status satisfies `f` — it is published
/// right after the event that changes it, which may be just after the client's answer.
async fn status_until(rx: &watch::Receiver<Status>, what: &str, f: impl Fn(&Status) -> bool) {
    let mut rx = rx.clone();
    let ok = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| f(s))).await.is_ok();
    assert!(ok, "status never showed {what}: {:?}", *rx.borrow());
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_pass_through_both_proxies() {
    let p = pair(Opts { via_config: true, ..Opts::default() }).await;
    p.device.set(100, 0xBEEF);
    let mut c = client(p.control, UNIT).await;

    assert_eq!(c.read_holding_registers(100, 1).await.unwrap().unwrap(), [0xBEEF]);
    c.write_single_register(5, 42).await.unwrap().unwrap();
    c.write_multiple_registers(10, &[1, 2, 3]).await.unwrap().unwrap();
    assert_eq!(p.device.get(5), 42);
    assert_eq!((p.device.get(10), p.device.get(11), p.device.get(12)), (1, 2, 3));
    assert_eq!(c.read_holding_registers(10, 3).await.unwrap().unwrap(), [1, 2, 3]);
    // The device's own exception travels back authenticated, unchanged.
    assert_eq!(c.read_coils(0, 1).await.unwrap(), Err(ExceptionCode::IllegalFunction));

    // Several clients at once, interleaved: each gets its own answers.
    let mut tasks = Vec::new();
    for k in 0..4u16 {
        let addr = p.control;
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr, UNIT).await;
            for i in 0..10u16 {
                let v = k * 100 + i;
                c.write_single_register(200 + k, v).await.unwrap().unwrap();
                assert_eq!(c.read_holding_registers(200 + k, 1).await.unwrap().unwrap(), [v]);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for k in 0..4u16 {
        assert_eq!(p.device.get(200 + k), k * 100 + 9);
    }
    assert_eq!(p.device.writes(), 2 + 40);
    // 2 + 40 writes and 3 + 40 reads (one answered with the device's exception).
    let frames = 2 + 40 + 3 + 40;
    status_until(&p.control_status, "every response accepted", |s| s.frames_opened == frames).await;
    status_until(&p.field_status, "every request accepted", |s| {
        s.frames_opened == frames && s.frames_sealed == frames
    })
    .await;
    let (cs, fs) = (p.control_status.borrow().clone(), p.field_status.borrow().clone());
    assert_eq!((rejected_total(&cs), rejected_total(&fs)), (0, 0));
    assert_eq!(cs.frames_sealed, frames);
    assert!(cs.forgery_bound_total > 0.0 && fs.forgery_bound_total > 0.0);

    // The same figures on the control proxy's status endpoint (it follows the published
    // status asynchronously: poll briefly).
    let addr = p.control_status_addr.to_string();
    let want = format!("qpon_sensor_auth_frames_opened_total{{role=\"control\"}} {frames}\n");
    let t = Instant::now();
    let metrics = loop {
        let m = qpon_node::fetch(&addr, "/metrics").await.unwrap();
        if m.contains(&want) || t.elapsed() > Duration::from_secs(2) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(metrics.contains(&want), "{metrics}");
    let json: serde_json::Value =
        serde_json::from_str(&qpon_node::fetch(&addr, "/status").await.unwrap()).unwrap();
    assert_eq!(json["role"], "control");
    assert_eq!(json["link_up"], true);
    assert_eq!(json["auth"]["frames_sealed"], frames);
    assert_eq!(json["auth"]["frames_opened"], frames);
    assert!(metrics.contains("qpon_sensor_auth_link_up{role=\"control\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_write_on_the_link_never_reaches_the_device() {
    let auth = EndConfig { response_timeout_ms: 300, ..Opts::default().auth };
    let p = pair(Opts { auth, relay: true, ..Opts::default() }).await;
    let relay = p.relay.as_ref().unwrap();
    let mut c = client(p.control, UNIT).await;
    c.write_single_register(10, 7).await.unwrap().unwrap();
    assert_eq!(p.device.writes(), 1);

    // Flip the last payload byte (low byte of the value) of the next request frame: a
    // command frame ends with a 16-byte tag.
    relay.flip_next(Dir::ToField, At::FromEnd(16));
    let r = within(CALL, c.write_single_register(10, 0x1234)).await.unwrap();
    assert_eq!(r.unwrap(), Err(ExceptionCode::GatewayTargetDevice), "the client learns the write failed");
    assert_eq!(p.device.get(10), 7, "the device register is unchanged");
    assert_eq!(p.device.writes(), 1, "the device never saw the tampered write");
    status_until(&p.field_status, "one bad tag", |s| rejected(s, "bad_tag") == 1).await;

    // Flip a header byte (the last byte of the sequence number, frame byte 19): refused.
    relay.flip_next(Dir::ToField, At::FromStart(19));
    let r = within(CALL, c.write_single_register(10, 0x4321)).await.unwrap();
    assert_eq!(r.unwrap(), Err(ExceptionCode::GatewayTargetDevice));
    assert_eq!((p.device.get(10), p.device.writes()), (7, 1));
    status_until(&p.field_status, "two bad tags", |s| rejected(s, "bad_tag") == 2).await;

    // The stream recovers: the control end moves to a new batch (new hash key) once it
    // concludes the field end retired the old one — at once for a batch the field end had
    // answered under, after `UNACKED_TIMEOUTS` silent requests otherwise. Until then
    // writes fail closed.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match within(CALL, c.write_single_register(10, 8)).await.unwrap().unwrap() {
            Ok(()) => break,
            Err(code) => {
                assert_eq!(code, ExceptionCode::GatewayTargetDevice);
                assert_eq!((p.device.get(10), p.device.writes()), (7, 1));
            }
        }
        assert!(attempts <= qpon_sensor_auth::UNACKED_TIMEOUTS as usize, "no recovery");
    }
    assert_eq!((p.device.get(10), p.device.writes()), (8, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_read_response_is_never_delivered() {
    let p = pair(Opts { relay: true, ..Opts::default() }).await;
    let relay = p.relay.as_ref().unwrap();
    p.device.set(50, 0x0102);
    let mut c = client(p.control, UNIT).await;
    assert_eq!(c.read_holding_registers(50, 1).await.unwrap().unwrap(), [0x0102]);

    // Flip the low byte of the register value in the next response (reading tags are
    // reading_tag_bits / 8 bytes).
    let tag = (EndConfig::default().reading_tag_bits / 8) as usize;
    relay.flip_next(Dir::ToControl, At::FromEnd(tag));
    let r = within(CALL, c.read_holding_registers(50, 1)).await.unwrap();
    assert!(!matches!(r, Ok(Ok(_))), "a tampered reading must not be delivered: {r:?}");
    assert_eq!(r.unwrap(), Err(ExceptionCode::GatewayTargetDevice));
    status_until(&p.control_status, "one bad tag", |s| rejected(s, "bad_tag") == 1).await;

    // Flip the tag itself: also refused.
    relay.flip_next(Dir::ToControl, At::FromEnd(0));
    let r = within(CALL, c.read_holding_registers(50, 1)).await.unwrap();
    assert_eq!(r.unwrap(), Err(ExceptionCode::GatewayTargetDevice));
    status_until(&p.control_status, "two bad tags", |s| rejected(s, "bad_tag") == 2).await;

    assert_eq!(c.read_holding_registers(50, 1).await.unwrap().unwrap(), [0x0102]);
}

/// Sends `frame` on a new TCP connection to the field proxy; returns whatever came back
/// within `wait` (a refused frame gets no answer).
async fn send_on_fresh_link(field: SocketAddr, frame: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(field).await.unwrap();
    s.write_all(frame).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_write_is_refused_on_the_link_and_on_a_fresh_connection() {
    let p = pair(Opts { relay: true, ..Opts::default() }).await;
    let relay = p.relay.as_ref().unwrap();
    let mut c = client(p.control, UNIT).await;
    c.write_single_register(20, 111).await.unwrap().unwrap();
    let captured = relay.frames(Dir::ToField).last().unwrap().clone();
    c.write_single_register(20, 222).await.unwrap().unwrap();
    assert_eq!((p.device.get(20), p.device.writes()), (222, 2));
    let before = rejected_total(&p.field_status.borrow());

    // 1. The relay replays the captured write on the live link.
    relay.inject.lock().unwrap().as_ref().unwrap().send(captured.clone()).unwrap();
    // 2. An attacker opens a fresh link connection and replays it there.
    let answer = send_on_fresh_link(p.field, &captured, Duration::from_millis(300)).await;
    assert!(answer.is_empty(), "a replay gets no answer");
    // A round trip after the replays: they have been processed.
    assert_eq!(c.read_holding_registers(20, 1).await.unwrap().unwrap(), [222]);

    assert_eq!(p.device.get(20), 222, "the replayed write did not change the register");
    assert_eq!(p.device.writes(), 2, "the device saw no third write");
    status_until(&p.field_status, "both replays refused as replays", |s| {
        rejected_total(s) == before + 2 && rejected(s, "replay") == 2
    })
    .await;

    // Also after the honest link's batch moved on: a new batch, then the old frame again.
    let _ = send_on_fresh_link(p.field, &captured, Duration::from_millis(100)).await;
    c.write_single_register(20, 333).await.unwrap().unwrap();
    assert_eq!((p.device.get(20), p.device.writes()), (333, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_field_proxy_restart_old_writes_stay_refused_and_new_ones_pass() {
    let mut p = pair(Opts { relay: true, ..Opts::default() }).await;
    let mut c = client(p.control, UNIT).await;
    c.write_single_register(20, 111).await.unwrap().unwrap();
    let captured = p.relay.as_ref().unwrap().frames(Dir::ToField).last().unwrap().clone();
    p.device.set(20, 5);

    p.restart_field().await;
    // The control proxy re-establishes the link; the first requests may meet the old one
    // going down (0x0A/0x0B), then writes pass again.
    let t = Instant::now();
    loop {
        match within(CALL, c.write_single_register(21, 1)).await.unwrap().unwrap() {
            Ok(()) => break,
            Err(code) => assert!(
                matches!(code, ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice),
                "{code:?}"
            ),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the link never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The restarted field proxy has no replay window in memory; the durable batch count
    // refuses the old frame anyway.
    let before = p.field_status.borrow().clone();
    assert!(send_on_fresh_link(p.field, &captured, Duration::from_millis(300)).await.is_empty());
    c.write_single_register(22, 2).await.unwrap().unwrap();
    assert_eq!(p.device.get(20), 5, "the replayed write did not reach the device");
    assert_eq!(p.device.writes(), 3);
    status_until(&p.field_status, "the replay refused", |s| {
        rejected_total(s) == rejected_total(&before) + 1
            && rejected(s, "batch_retired") == rejected(&before, "batch_retired") + 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_stops_writes_and_reads() {
    // 1 KiB of key in 256-byte batches: 16-byte hash key + 7 commands of 2 × 16-byte pads.
    let auth = EndConfig { batch_bytes: 256, low_water_bytes: 0, ..Opts::default().auth };
    let p = pair(Opts { auth, blocks: 1, block_bytes: 1024, ..Opts::default() }).await;
    let mut c = client(p.control, UNIT).await;
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for v in 1..=60u16 {
        let t = Instant::now();
        match within(CALL, c.write_single_register(30, v)).await.unwrap().unwrap() {
            Ok(()) => {
                assert!(refused.is_empty(), "a write passed after the pool ran out");
                ok.push(v);
            }
            Err(code) => {
                assert_eq!(code, ExceptionCode::GatewayPathUnavailable);
                assert!(t.elapsed() < Duration::from_millis(300), "refused at once, not by timeout");
                refused.push(v);
            }
        }
    }
    assert!(!ok.is_empty() && !refused.is_empty(), "ok {ok:?}, refused {refused:?}");
    assert!(ok.len() <= 28, "no more commands than 1 KiB of pads covers: {}", ok.len());
    assert_eq!(p.device.get(30), *ok.last().unwrap(), "the register holds the last authenticated write");
    assert_eq!(p.device.writes(), ok.len(), "no refused write reached the device");
    // Readings take shorter pads: the rest of the last batch may still cover a few, and
    // those carry the true value; then they are refused too, without reaching the device.
    let last = *ok.last().unwrap();
    let mut reads_refused = 0;
    for _ in 0..20 {
        let requests = p.device.requests();
        match within(CALL, c.read_holding_registers(30, 1)).await.unwrap().unwrap() {
            Ok(v) => {
                assert_eq!(reads_refused, 0, "a read answered after one was refused");
                assert_eq!(v, [last]);
            }
            Err(code) => {
                assert_eq!(code, ExceptionCode::GatewayPathUnavailable);
                assert_eq!(p.device.requests(), requests, "a refused read reached the device");
                reads_refused += 1;
            }
        }
    }
    assert!(reads_refused > 0);
    status_until(&p.control_status, "the exhausted alarm", |s| {
        s.alarm == Some(qpon_sensor_auth::Alarm::Exhausted)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_low_water_commands_are_refused_and_readings_pass() {
    // 4 KiB of key, low-water mark 8 KiB: commands refused at once, readings still served.
    let auth = EndConfig { batch_bytes: 512, low_water_bytes: 8192, ..Opts::default().auth };
    let p = pair(Opts { auth, blocks: 1, block_bytes: 4096, ..Opts::default() }).await;
    p.device.set(1, 99);
    let mut c = client(p.control, UNIT).await;
    let r = within(CALL, c.write_single_register(1, 5)).await.unwrap().unwrap();
    assert_eq!(r, Err(ExceptionCode::GatewayPathUnavailable));
    assert_eq!((p.device.get(1), p.device.writes()), (99, 0));
    assert_eq!(c.read_holding_registers(1, 1).await.unwrap().unwrap(), [99]);
    status_until(&p.control_status, "a pool_low refusal", |s| rejected(s, "pool_low") == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_command_goes_out_after_a_refill() {
    let auth = EndConfig {
        batch_bytes: 512,
        low_water_bytes: 8192,
        low_water: LowWaterPolicy::Hold,
        response_timeout_ms: 3000,
        ..Opts::default().auth
    };
    let p = pair(Opts { auth, blocks: 1, block_bytes: 4096, ..Opts::default() }).await;
    let addr = p.control;
    let write = tokio::spawn(async move {
        let mut c = client(addr, UNIT).await;
        c.write_single_register(1, 77).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.device.writes(), 0, "held below the low-water mark");
    status_until(&p.control_status, "the low-water alarm", |s| {
        s.alarm == Some(qpon_sensor_auth::Alarm::LowWater)
    })
    .await;
    p.refill(0x5e15_1000, 16 * 1024);
    let r = within(CALL, write).await.unwrap().unwrap();
    assert_eq!(r.unwrap(), Ok(()), "sent once the pool was refilled");
    assert_eq!((p.device.get(1), p.device.writes()), (77, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_command_not_refilled_in_time_gets_path_unavailable() {
    let auth = EndConfig {
        batch_bytes: 512,
        low_water_bytes: 8192,
        low_water: LowWaterPolicy::Hold,
        response_timeout_ms: 400,
        ..Opts::default().auth
    };
    let p = pair(Opts { auth, blocks: 1, block_bytes: 4096, ..Opts::default() }).await;
    let mut c = client(p.control, UNIT).await;
    let t = Instant::now();
    let r = within(CALL, c.write_single_register(1, 5)).await.unwrap().unwrap();
    assert_eq!(r, Err(ExceptionCode::GatewayPathUnavailable));
    assert!(t.elapsed() >= Duration::from_millis(400), "held until its deadline");
    assert_eq!(p.device.writes(), 0);
    // Readings are not held.
    assert_eq!(c.read_holding_registers(1, 1).await.unwrap().unwrap(), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_unit_gets_a_gateway_exception_at_once() {
    // A long response timeout: the answer must come from the field proxy, not a timer.
    let auth = EndConfig { response_timeout_ms: 10_000, ..Opts::default().auth };
    let p = pair(Opts { auth, field_units: vec![UNIT], ..Opts::default() }).await;
    let mut other = client(p.control, 7).await;
    let t = Instant::now();
    let r = within(CALL, other.read_holding_registers(0, 1)).await.unwrap().unwrap();
    assert_eq!(r, Err(ExceptionCode::GatewayPathUnavailable));
    let r = within(CALL, other.write_single_register(0, 1)).await.unwrap().unwrap();
    assert_eq!(r, Err(ExceptionCode::GatewayPathUnavailable));
    assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    assert_eq!(p.device.requests(), 0, "nothing reached the device");
    // The allowed unit still works.
    let mut c = client(p.control, UNIT).await;
    c.write_single_register(0, 1).await.unwrap().unwrap();
    assert_eq!(p.device.writes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mbap_closes_only_that_connection() {
    let p = pair(Opts::default()).await;
    let mut good = client(p.control, UNIT).await;
    good.write_single_register(3, 3).await.unwrap().unwrap();
    let bad_headers: [&[u8]; 3] = [
        &[0, 1, 0, 5, 0, 6, 1, 3, 0, 0, 0, 1], // protocol id 5
        &[0, 1, 0, 0, 1, 0, 1, 3, 0, 0, 0, 1], // length 256: over 260 bytes
        &[0, 1, 0, 0, 0, 1, 1],                // length 1: no function code
    ];
    for bad in bad_headers {
        let mut s = TcpStream::connect(p.control).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "the proxy closes the connection");
        assert!(got.is_empty(), "and answers nothing: {got:?}");
    }
    assert_eq!(p.device.requests(), 1);
    // The proxy still serves the old client and new ones.
    good.write_single_register(3, 4).await.unwrap().unwrap();
    let mut fresh = client(p.control, UNIT).await;
    assert_eq!(fresh.read_holding_registers(3, 1).await.unwrap().unwrap(), [4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_link_is_refused_and_the_field_proxy_keeps_serving() {
    let p = pair(Opts::default()).await;
    let mut c = client(p.control, UNIT).await;
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[1u8; 300][..], &[0u8; 8][..]] {
        assert!(send_on_fresh_link(p.field, junk, Duration::from_millis(200)).await.is_empty());
    }
    c.write_single_register(9, 9).await.unwrap().unwrap();
    assert_eq!((p.device.get(9), p.device.writes()), (9, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_gives_path_unavailable() {
    // A peer port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let p = pair(Opts { peer: Some(closed), ..Opts::default() }).await;
    let mut c = client(p.control, UNIT).await;
    let t = Instant::now();
    let r = within(CALL, c.write_single_register(1, 1)).await.unwrap().unwrap();
    assert_eq!(r, Err(ExceptionCode::GatewayPathUnavailable));
    assert!(t.elapsed() < Duration::from_millis(300));
    assert_eq!(p.device.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_device_gives_target_failed() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let auth = EndConfig { response_timeout_ms: 10_000, ..Opts::default().auth };
    let p = pair(Opts { auth, device: Some(closed), ..Opts::default() }).await;
    let mut c = client(p.control, UNIT).await;
    let t = Instant::now();
    let r = within(CALL, c.read_holding_registers(1, 1)).await.unwrap().unwrap();
    assert_eq!(r, Err(ExceptionCode::GatewayTargetDevice), "an authenticated 0x0B from the field proxy");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
}
