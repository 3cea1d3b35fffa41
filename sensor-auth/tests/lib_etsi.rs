//! The two ends of the library with keys through ETSI GS QKD 014: two real KMEs (OLT and
//! ONU side, each over its own key store holding the same blocks) served over real mutual
//! TLS in-process, the control end as master SAE, the field end as slave SAE.

mod common;
use common::{TempDir, block_bytes};
use std::path::Path;
use std::sync::Arc;

use qpon_kms::KeyStore;
use qpon_kms::etsi::{
    DevCerts, KeySupply, Kme, KmeConfig, MirrorSupply, SaeMap, SaePair, Side, dev_certs, router, serve_tls,
};
use qpon_qkd::BitBlock;
use qpon_sensor_auth::frame::{Frame, FrameRepr};
use qpon_sensor_auth::{
    Alarm, AuthError, BatchDescriptor, Class, ControlEnd, EndConfig, EtsiError, EtsiPads, EtsiRole,
    EtsiSettings, FieldEnd, PadError, PadSource,
};
use uuid::Uuid;

const MASTER: &str = "scada-control";
const SLAVE: &str = "rtu-7";
const ONU: u16 = 3;
/// Batch = one ETSI key (the KMEs serve `BATCH × 8`-bit keys).
const BATCH: usize = 512;

/// Two KMEs over real mutual TLS, on a runtime of their own (the library's calls block).
struct Kmes {
    rt: tokio::runtime::Runtime,
    dir: TempDir,
    certs: DevCerts,
    olt: String,
    onu: String,
}

impl Kmes {
    /// `blocks` blocks of `keys_per_block` keys each, the same in both stores.
    fn start(tag: &str, blocks: u64, keys_per_block: usize) -> Self {
        let dir = TempDir::new(tag);
        let certs = dev_certs(&dir.0.join("certs"), &[MASTER, SLAVE, "stranger"]).unwrap();
        let saes =
            || SaeMap::new(vec![SaePair { master: MASTER.into(), slave: SLAVE.into(), onu: ONU }]).unwrap();
        let mut stores = Vec::new();
        for name in ["olt", "onu"] {
            let store = KeyStore::open(dir.0.join(format!("{name}.redb"))).unwrap();
            for i in 0..blocks {
                let len = keys_per_block * BATCH;
                let k = BitBlock::from_bytes(&block_bytes(i + 1, len), 8 * len);
                store.pool(ONU).append_block(Uuid::from_u128(500 + u128::from(i)), &k).unwrap();
            }
            stores.push(store);
        }
        let supply: Arc<dyn KeySupply> = Arc::new(MirrorSupply::new(stores[0].clone(), stores[1].clone()));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut addrs = Vec::new();
        for (name, side, store) in [("olt", Side::Olt, &stores[0]), ("onu", Side::Onu, &stores[1])] {
            let mut config = KmeConfig::new(format!("kme-{name}"), "peer", side);
            config.key_size = (BATCH * 8) as u32;
            config.dec_wait_ms = 200;
            let supply = (side == Side::Olt).then(|| supply.clone());
            let kme = Kme::new(config, saes(), store.clone(), supply).unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            let (ca, cert, key) = (certs.ca.clone(), certs.server_cert.clone(), certs.server_key.clone());
            let app = router(Arc::new(kme));
            rt.spawn(async move { serve_tls(listener, app, &ca, &cert, &key).await.unwrap() });
        }
        let onu = addrs.pop().unwrap();
        let olt = addrs.pop().unwrap();
        Self { rt, dir, certs, olt, onu }
    }

    fn settings(&self, role: EtsiRole, me: &str, state: &Path) -> EtsiSettings {
        let (_, cert, key) = self.certs.saes.iter().find(|(id, ..)| id == me).unwrap();
        let (kme, peer) = match role {
            EtsiRole::Master => (&self.olt, SLAVE),
            EtsiRole::Slave => (&self.onu, MASTER),
        };
        EtsiSettings::new(role, kme, peer, &self.certs.ca, cert, key, state)
    }

    /// The control end's pads (state in `<dir>/control`).
    fn master(&self) -> EtsiPads {
        EtsiPads::open(self.settings(EtsiRole::Master, MASTER, &self.dir.0.join("control"))).unwrap()
    }

    /// The field end's pads (state in `<dir>/field`).
    fn slave(&self) -> EtsiPads {
        EtsiPads::open(self.settings(EtsiRole::Slave, SLAVE, &self.dir.0.join("field"))).unwrap()
    }

    fn control(&self) -> ControlEnd {
        ControlEnd::try_new(config(), Box::new(self.master())).unwrap()
    }

    fn field(&self) -> FieldEnd {
        FieldEnd::try_new(config(), Box::new(self.slave())).unwrap()
    }
}

fn config() -> EndConfig {
    EndConfig { device: 7, batch_bytes: BATCH, low_water_bytes: 0, ..EndConfig::default() }
}

/// One request/response exchange; returns the request's bytes and sequence number.
fn round_trip(c: &mut ControlEnd, f: &mut FieldEnd, class: Class, body: &[u8], now: u64) -> (Vec<u8>, u64) {
    let req = c.seal_request(class, body, now).unwrap();
    let got = f.open_request(&req.bytes, now).unwrap();
    assert_eq!((got.seq, got.class, got.payload.as_slice()), (req.seq, class, body));
    let answer: Vec<u8> = body.iter().rev().copied().collect();
    let resp = f.seal_response(req.seq, class, &answer, now).unwrap();
    let back = c.open_response(&resp.bytes, now).unwrap();
    assert_eq!((back.request_seq, back.payload), (Some(req.seq), answer));
    (req.bytes, req.seq)
}

fn header(frame: &[u8]) -> FrameRepr {
    FrameRepr::parse(&Frame::new_checked(frame).unwrap()).unwrap()
}

fn counter(dir: &Path) -> u64 {
    let files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one counter file: {files:?}");
    std::fs::read_to_string(&files[0]).unwrap().trim().parse().unwrap()
}

#[test]
fn ends_agree_and_replays_are_refused_also_after_field_restarts() {
    let k = Kmes::start("agree", 4, 16);
    let (mut c, mut f) = (k.control(), k.field());
    let mut frames = Vec::new();
    let mut last_seq = 0;
    for i in 0..300u64 {
        let class = if i % 3 == 0 { Class::Command } else { Class::Reading };
        let (req, seq) = round_trip(&mut c, &mut f, class, &block_bytes(i, (i % 200) as usize), 1000 + i);
        assert!(seq > last_seq, "sequence numbers increase");
        last_seq = seq;
        frames.push(req);
    }
    let (sc, sf) = (c.status(), f.status());
    assert!(sc.batches >= 10, "several keys were used ({})", sc.batches);
    assert_eq!(sf.batches, sc.batches);
    assert_eq!(sf.batches_skipped, 0);
    assert!(sc.rejected.is_empty() && sf.rejected.is_empty());
    assert_eq!(counter(&k.dir.0.join("control")), sc.batches);
    assert_eq!(counter(&k.dir.0.join("field")), sf.batches);

    // The first frame names its key in band: key ID in the block field, offset 0, length =
    // the batch. The slave KME delivered it once: asking again is refused.
    let first = header(&frames[0]);
    let d = first.descriptor.expect("the first request of a batch carries the descriptor");
    assert_eq!((d.offset, d.len as usize, first.batch), (0, BATCH, 0));
    match k.slave().dec_key(d.block, BATCH) {
        Err(EtsiError::Refused { key_id, .. }) => assert_eq!(key_id, d.block),
        other => panic!("second delivery of a key: {other:?}"),
    }
    let mid = frames.iter().position(|b| header(b).descriptor.is_none()).unwrap();
    assert_eq!(header(&frames[mid]).batch, 0);

    // Replays: refused by this end, and by a restarted one (ordinal below its counter)
    // without asking the KME; the frame under the current batch as well.
    let last = frames.last().unwrap().clone();
    for old in [&frames[0], &frames[mid], &last] {
        assert!(f.open_request(old, 2000).is_err());
    }
    drop(f);
    let mut f = k.field();
    for old in [&frames[0], &frames[mid], &last] {
        let e = f.open_request(old, 2000).unwrap_err();
        assert!(matches!(e, AuthError::BatchRetired { .. }), "{e}");
    }
    assert_eq!(f.status().frames_opened, 0);

    // Traffic goes on: the control end's current batch is behind the new field end's
    // counter (its key was delivered before the restart); after the request times out the
    // control end opens a new batch (a new key) and it flows.
    let lost = c.seal_request(Class::Command, b"to a restarted field end", 3000).unwrap();
    let e = f.open_request(&lost.bytes, 3000).unwrap_err();
    assert!(matches!(e, AuthError::BatchRetired { .. }), "{e}");
    assert!(c.request_timed_out(lost.seq));
    for i in 0..20 {
        let (_, seq) = round_trip(&mut c, &mut f, Class::Command, b"after field restart", 3001 + i);
        assert!(seq > last_seq);
        last_seq = seq;
    }

    // Even with its counter file lost, a replayed frame naming an old key is refused: the
    // KME delivers a key ID once (400 → refusal, nothing accepted).
    drop(f);
    std::fs::remove_dir_all(k.dir.0.join("field")).unwrap();
    let mut f = k.field();
    let e = f.open_request(&frames[0], 4000).unwrap_err();
    assert!(matches!(e, AuthError::PoolDiverged(_)), "{e}");
    assert!(e.to_string().contains("400"), "{e}");
    assert_eq!(f.status().frames_opened, 0);
}

#[test]
fn control_restarts_keep_sequence_numbers_increasing() {
    let k = Kmes::start("restart", 2, 16);
    let (mut c, mut f) = (k.control(), k.field());
    let mut last_seq = 0;
    for i in 0..40u64 {
        last_seq = round_trip(&mut c, &mut f, Class::Command, &block_bytes(i, 30), 100 + i).1;
    }
    // One more exchange whose response is kept, to replay it after the restart.
    let req = c.seal_request(Class::Command, b"before restart", 150).unwrap();
    f.open_request(&req.bytes, 150).unwrap();
    let old_resp = f.seal_response(req.seq, Class::Command, b"done", 150).unwrap();
    c.open_response(&old_resp.bytes, 150).unwrap();
    let batches = c.status().batches;

    // A clean restart: the next batch, with a higher ordinal.
    drop(c);
    let mut c = k.control();
    let (req, seq) = round_trip(&mut c, &mut f, Class::Command, b"after control restart", 200);
    assert!(seq > last_seq, "{seq:#x} after {last_seq:#x}");
    assert_eq!(header(&req).batch, batches);
    last_seq = seq;
    // The old response answers no request of the restarted end (its sequence numbers are
    // all new), even with one outstanding.
    let pending = c.seal_request(Class::Command, b"outstanding", 210).unwrap();
    let e = c.open_response(&old_resp.bytes, 210).unwrap_err();
    assert!(matches!(e, AuthError::NoOutstandingRequest { .. }), "{e}");
    f.open_request(&pending.bytes, 210).unwrap();
    let resp = f.seal_response(pending.seq, Class::Command, b"ok", 210).unwrap();
    c.open_response(&resp.bytes, 210).unwrap();

    // Twice, the control end restarts, reserves a batch (a key) and crashes before anything
    // goes out: the field end skips both ordinals (consuming nothing) and goes on.
    for t in [300, 310] {
        let mut lost = k.control();
        let sealed = lost.seal_request(Class::Command, b"never sent", t).unwrap();
        assert!(sealed.seq > last_seq);
    }
    let mut c = k.control();
    for i in 0..20 {
        let (_, seq) = round_trip(&mut c, &mut f, Class::Reading, b"after two lost batches", 400 + i);
        assert!(seq > last_seq);
        last_seq = seq;
    }
    assert_eq!(f.status().batches_skipped, 2);
    assert_eq!(counter(&k.dir.0.join("control")), counter(&k.dir.0.join("field")));
}

#[test]
fn exhausted_kme_gives_a_typed_error_and_no_frame() {
    let k = Kmes::start("exhausted", 1, 3);
    assert_eq!(k.master().level_bytes(), 3 * BATCH as u64, "level from the KME's status");
    let (mut c, mut f) = (k.control(), k.field());
    let mut out = Vec::new();
    let mut sent = 0u64;
    let e = loop {
        match c.seal_request_into(Class::Command, b"write coil", 10 + sent, &mut out) {
            Ok(seq) => {
                f.open_request(&out, 10 + sent).unwrap();
                let resp = f.seal_response(seq, Class::Command, b"ok", 10 + sent).unwrap();
                c.open_response(&resp.bytes, 10 + sent).unwrap();
                sent += 1;
                assert!(sent < 1000, "never exhausted");
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(e, AuthError::PoolExhausted { .. }), "{e}");
    assert!(out.is_empty(), "no frame");
    assert_eq!(sent, 3 * ((BATCH as u64 - 16) / 32), "all three keys were used, and no more");
    let s = c.status();
    assert_eq!(s.alarm, Some(Alarm::Exhausted));
    assert_eq!(s.batches, 3);
    // Still refused on retry (fail closed), and the typed error below it.
    let e = c.seal_request(Class::Command, b"write coil", 5000).unwrap_err();
    assert!(matches!(e, AuthError::PoolExhausted { .. }), "{e}");
    let pads = k.master();
    assert!(matches!(pads.enc_key(BATCH), Err(EtsiError::Exhausted(_))));
    assert_eq!(pads.level_bytes(), 0);
}

#[test]
fn misconfiguration_and_unreachable_kmes_are_typed_errors() {
    let k = Kmes::start("errors", 1, 4);
    // Another SAE's certificate (CA-signed, but not the pair's master): 401.
    let s = k.settings(EtsiRole::Master, "stranger", &k.dir.0.join("stranger"));
    let e = EtsiPads::open(s).unwrap().enc_key(BATCH).unwrap_err();
    assert!(matches!(e, EtsiError::Unauthorized(_)), "{e}");
    // A key size the KME does not serve: a configuration error, nothing issued.
    let e = k.master().enc_key(BATCH / 2).unwrap_err();
    assert!(matches!(e, EtsiError::Config(_)), "{e}");
    // A key ID never issued: refused.
    let e = k.slave().dec_key(Uuid::from_u128(99), BATCH).unwrap_err();
    assert!(matches!(e, EtsiError::Refused { .. }), "{e}");
    // A descriptor with an offset is not an ETSI key reference: refused without a request.
    let bad = BatchDescriptor { block: Uuid::from_u128(1), offset: 16, len: BATCH as u32 };
    assert!(matches!(k.slave().mirror(&bad), Err(PadError::Diverged(_))));
    // Wrong roles.
    assert!(matches!(k.slave().reserve(BATCH), Err(PadError::Store(_))));
    assert!(k.master().skip(BATCH).is_err());
    // Nothing listening: an I/O error, quickly, and the control end seals nothing.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut s = k.settings(EtsiRole::Master, MASTER, &k.dir.0.join("gone"));
    s.kme = format!("127.0.0.1:{port}");
    s.server_name = "localhost".into();
    let pads = EtsiPads::open(s).unwrap();
    assert!(matches!(pads.enc_key(BATCH), Err(EtsiError::Io { .. })));
    let mut c = ControlEnd::try_new(config(), Box::new(pads)).unwrap();
    let e = c.seal_request(Class::Command, b"x", 1).unwrap_err();
    assert!(matches!(e, AuthError::Store(_)), "{e}");
    // The counter file is private; Debug shows no key material.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = k.master().settings().counter_path();
        assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let mut m = k.master();
    let r = m.reserve(BATCH).unwrap();
    let shown = format!("{r:?} {m:?}");
    assert!(!shown.contains(&format!("{:?}", &r.bytes.expose()[..8])), "{shown}");
}

/// A Modbus device for the proxy test: holding registers only.
#[derive(Clone, Default)]
struct Device(Arc<std::sync::Mutex<std::collections::HashMap<u16, u16>>>);

impl tokio_modbus::server::Service for Device {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = tokio_modbus::Response;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        use tokio_modbus::{Request, Response};
        let mut regs = self.0.lock().unwrap();
        std::future::ready(match req.request {
            Request::ReadHoldingRegisters(a, n) => Ok(Response::ReadHoldingRegisters(
                (0..n).map(|i| regs.get(&a.wrapping_add(i)).copied().unwrap_or(0)).collect(),
            )),
            Request::WriteSingleRegister(a, v) => {
                regs.insert(a, v);
                Ok(Response::WriteSingleRegister(a, v))
            }
            _ => Err(tokio_modbus::ExceptionCode::IllegalFunction),
        })
    }
}

#[test]
fn modbus_proxies_take_their_keys_from_the_kmes() {
    use qpon_sensor_auth::proxy::{EtsiConfig, Proxy, ProxyConfig, Role, open_pads};
    use tokio_modbus::client::{Reader as _, Writer as _};
    let k = Kmes::start("proxy", 2, 16);
    let etsi = |me: &str, peer: &str, kme: &str, state: &str| {
        let (_, cert, key) = k.certs.saes.iter().find(|(id, ..)| id == me).unwrap();
        EtsiConfig {
            kme: kme.to_string(),
            server_name: "localhost".into(),
            peer_sae: peer.into(),
            ca_file: k.certs.ca.clone(),
            cert_file: cert.clone(),
            key_file: key.clone(),
            state_dir: k.dir.0.join(state),
            timeout_ms: 5000,
        }
    };
    let auth = EndConfig { response_timeout_ms: 2000, ..config() };
    k.rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let device_addr = listener.local_addr().unwrap();
        let device = Device::default();
        let d = device.clone();
        tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let new_service = move |_| Ok(Some(d.clone()));
            let on_connected = move |stream, addr| {
                let new_service = new_service.clone();
                async move { tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, new_service) }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(());
        let fc = ProxyConfig {
            role: Some(Role::Field),
            listen: "127.0.0.1:0".parse().unwrap(),
            device: Some(device_addr),
            auth: auth.clone(),
            etsi: Some(etsi(SLAVE, MASTER, &k.onu, "field-proxy")),
            ..ProxyConfig::default()
        };
        let field = Proxy::bind(fc.clone(), open_pads(&fc).unwrap()).await.unwrap();
        let field_addr = field.local_addr();
        let mut rx = stop_rx.clone();
        tokio::spawn(field.serve(async move {
            let _ = rx.changed().await;
        }));
        let cc = ProxyConfig {
            role: Some(Role::Control),
            listen: "127.0.0.1:0".parse().unwrap(),
            peer: Some(field_addr),
            reconnect_ms: 50,
            auth,
            etsi: Some(etsi(MASTER, SLAVE, &k.olt, "control-proxy")),
            ..ProxyConfig::default()
        };
        let control = Proxy::bind(cc.clone(), open_pads(&cc).unwrap()).await.unwrap();
        let control_addr = control.local_addr();
        let status = control.status();
        let mut link = control.link_state();
        let mut rx = stop_rx.clone();
        tokio::spawn(control.serve(async move {
            let _ = rx.changed().await;
        }));
        tokio::time::timeout(std::time::Duration::from_secs(5), link.wait_for(|up| *up))
            .await
            .unwrap()
            .unwrap();

        let mut c =
            tokio_modbus::client::tcp::connect_slave(control_addr, tokio_modbus::Slave(1)).await.unwrap();
        for i in 0..40u16 {
            c.write_single_register(100 + i, 1000 + i).await.unwrap().unwrap();
            assert_eq!(c.read_holding_registers(100 + i, 1).await.unwrap().unwrap(), [1000 + i]);
        }
        assert_eq!(device.0.lock().unwrap().get(&139), Some(&1039));
        let s = status.borrow().clone();
        assert!(s.batches >= 2, "keys were fetched per batch: {s:?}");
        assert!(s.rejected.is_empty(), "{s:?}");
        drop(stop);
    });
    assert!(counter(&k.dir.0.join("control-proxy")) >= 2);
    assert_eq!(counter(&k.dir.0.join("control-proxy")), counter(&k.dir.0.join("field-proxy")));
}
