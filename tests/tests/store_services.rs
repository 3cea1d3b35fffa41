//! The `olt` and `onu` services on their persistent key stores (real redb files in temp
//! directories, the simulator in-process as hardware, TCP on loopback):
//!
//! - an OLT and two ONUs make key, stop, start again on the same stores and make more; then
//!   every ONU's committed blocks are the same, in ID and order, at both ends, the same
//!   consumptions at both ends yield the same bytes, and no pad was used twice;
//! - ETSI GS QKD 014 over real mutual TLS from the running services, with downstream key
//!   rotation on: the master SAE gets keys from the OLT's `enc_keys`, the slave behind the
//!   ONU the same keys from the ONU's `dec_keys` (announced as pool uses between the
//!   downstream keys), once only, also across an ONU restart; another SAE's certificate
//!   gets 401; both ledgers list the same downstream and API consumptions in order.

use qpon_hw::{DetectionRecord, DetectorSource, DetectorStatus, SourceError};
use qpon_kms::etsi::{DevCerts, dev_certs};
use qpon_kms::{BlockState, KeyStore, Purpose};
use qpon_node::StoreSettings;
use qpon_olt::config::OltConfig;
use qpon_olt::service::{OltHandle, OltParts, PoolSource};
use qpon_onu::config::OnuConfig;
use qpon_onu::service::OnuHandle;
use qpon_sim::pon::mux_map;
use qpon_sim::sampler::SimPon;
use qpon_sim::scenario::{DetectorProfile, Pon, Scenario};
use qpon_tests::{olt_config_text, onu_config_text, wait_for};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A small, slow PON so the wall-clock run stays light: 100 MHz gates.
fn pon(onus: usize) -> Pon {
    let mut s = Scenario { onus, ..Scenario::default() };
    s.receiver.detector = DetectorProfile::Snspd;
    s.clock.gate_rate_hz = 1e8;
    s.clock.frame_gates = 12_500;
    s.resolve().expect("valid scenario")
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("qpon-store-services-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The OLT's config: data directory `olt-data` (relative, so under `dir`), its store sealed
/// under the KEK in `kek.hex` if `kek`, `api` appended.
fn olt_config(dir: &Path, pon: &Pon, kek: bool, api: &str) -> OltConfig {
    let olt = format!("data_dir = \"olt-data\"\nkek_file = \"{}\"\n", if kek { "kek.hex" } else { "" });
    OltConfig::parse(&olt_config_text(pon, &olt, api), dir).expect("valid OLT config")
}

fn onu_config(dir: &Path, olt: &OltConfig, k: u16, addr: std::net::SocketAddr, api: &str) -> OnuConfig {
    let onu = format!("metrics_listen = \"\"\ndata_dir = \"onu-{k}-data\"\n");
    OnuConfig::parse(&onu_config_text(olt, k, addr, &onu, api), dir).expect("valid ONU config")
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// A receiver that never clicks: the services connect and sync their pools, no key is made.
struct IdleDetector;

impl DetectorSource for IdleDetector {
    fn gate_rate_hz(&self) -> f64 {
        1e8
    }
    fn poll_detections(&mut self, until: u64, _: &mut Vec<DetectionRecord>) -> Result<u64, SourceError> {
        Ok(until)
    }
    fn status(&mut self) -> Result<DetectorStatus, SourceError> {
        Err(SourceError::Unavailable("idle".into()))
    }
}

/// Committed block IDs of `onu` in `store`, in consumption order.
fn committed(store: &KeyStore, onu: u16) -> Vec<String> {
    let infos = store.pool(onu).block_infos().unwrap();
    infos.iter().filter(|b| b.state == BlockState::Committed).map(|b| b.id.to_string()).collect()
}

/// Opens a service's store as the service does (`kek`: the KEK file, or none).
fn open(dir: &Path, kek: Option<&Path>) -> KeyStore {
    qpon_node::open_store(&StoreSettings {
        data_dir: dir,
        data_dir_field: "data_dir",
        kek_file: kek.unwrap_or(Path::new("")),
        kek_field: "kek_file",
    })
    .unwrap()
}

/// One run of an OLT and its ONUs, on the stores their configurations name, until every
/// ONU's store has committed `until(k)` blocks.
async fn run_until(dir: &Path, pon: &Pon, onus: usize, until: impl Fn(u16) -> u64) {
    let sim = SimPon::new(pon);
    let cfg = olt_config(dir, pon, true, "");
    let parts = OltParts {
        detector: Box::new(sim.detector()),
        slot_map: Some(mux_map(pon)),
        pools: PoolSource::Config,
    };
    let olt = OltHandle::start(cfg.clone(), parts).await.expect("the OLT starts");
    let mut hs = Vec::new();
    for k in 0..onus as u16 {
        let c = onu_config(dir, &cfg, k, olt.local_addr, "");
        hs.push(OnuHandle::start(c, sim.source(k as usize), PoolSource::Config).await.expect("ONU starts"));
    }
    wait_for("blocks at every ONU", Duration::from_secs(60), || {
        hs.iter().enumerate().all(|(k, h)| h.status().committed_blocks >= until(k as u16))
    })
    .await;
    // The status carries the store's figures, per ONU.
    let maddr = olt.metrics_addr.unwrap().to_string();
    let metrics = qpon_node::fetch(&maddr, "/metrics").await.unwrap();
    assert!(metrics.contains("qpon_olt_pool_committed_blocks_total{onu=\"0\"}"), "{metrics}");
    assert!(metrics.contains("qpon_olt_pool_consumed_bytes_total{onu=\"1\",purpose=\"api\"} 0"), "{metrics}");
    for h in hs {
        let st = h.shutdown().await;
        assert_eq!(st.refused_frames, 0, "{st:?}");
    }
    olt.shutdown().await;
}

#[test]
fn services_restart_on_their_stores_and_both_ends_agree() {
    const N: usize = 2;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let pon = pon(N);
        let dir = Dir::new("restart");
        let d = &dir.0;
        for k in 0..N {
            qpon_node::write_psk(&d.join(format!("onu-{k}.psk")), 16 * 1024).unwrap();
        }
        // The OLT's store is sealed under a KEK from its `kek_file`; the ONUs' are not.
        let kek = d.join("kek.hex");
        write_private(&kek, &"5a".repeat(32));
        // First run: the stores are created from the configuration (data directories 0700).
        run_until(d, &pon, N, |_| 2).await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for sub in ["olt-data", "onu-0-data", "onu-1-data"] {
                let m = std::fs::metadata(d.join(sub)).unwrap().permissions().mode();
                assert_eq!(m & 0o777, 0o700, "{sub}");
                assert!(d.join(sub).join("keys.redb").is_file());
            }
        }
        let t1 = t0.elapsed();
        // Second run on the same stores (opened again by the services): more blocks.
        let (before, first): (Vec<u64>, Vec<Vec<String>>) = {
            let olt = open(&d.join("olt-data"), Some(&kek));
            assert!(olt.is_encrypted());
            (0..N as u16).map(|k| (olt.pool(k).totals().unwrap().blocks, committed(&olt, k))).unzip()
        };
        assert!(first.iter().all(|c| !c.is_empty()), "{first:?}");
        run_until(d, &pon, N, |k| before[k as usize] + 2).await;
        let t2 = t0.elapsed();

        // Third run with a silent receiver: the connections' pool syncs settle a block the
        // ONU committed while the OLT's confirmation of it was cut off by the shutdown.
        let olt_store = open(&d.join("olt-data"), Some(&kek));
        let onu_stores: Vec<KeyStore> =
            (0..N).map(|k| open(&d.join(format!("onu-{k}-data")), None)).collect();
        {
            let sim = SimPon::new(&pon);
            let cfg = olt_config(d, &pon, true, "");
            let parts = OltParts {
                detector: Box::new(IdleDetector),
                slot_map: Some(mux_map(&pon)),
                pools: PoolSource::Store(olt_store.clone()),
            };
            let olt = OltHandle::start(cfg.clone(), parts).await.expect("the OLT starts");
            let mut hs = Vec::new();
            for k in 0..N as u16 {
                let c = onu_config(d, &cfg, k, olt.local_addr, "");
                let src = PoolSource::Store(onu_stores[k as usize].clone());
                hs.push(OnuHandle::start(c, sim.source(k as usize), src).await.unwrap());
            }
            wait_for("pools in agreement", Duration::from_secs(20), || {
                (0..N as u16).all(|k| committed(&olt_store, k) == committed(&onu_stores[k as usize], k))
                    && hs.iter().all(|h| h.status().connected)
            })
            .await;
            for h in hs {
                h.shutdown().await;
            }
            olt.shutdown().await;
        }

        for k in 0..N as u16 {
            let (a, b) = (committed(&olt_store, k), committed(&onu_stores[k as usize], k));
            assert_eq!(a, b, "ONU {k}: committed blocks differ between the ends");
            // The first run's blocks kept their place; the second run's follow them.
            let f = &first[k as usize];
            assert_eq!(&a[..f.len()], &f[..], "ONU {k}: the first run's blocks changed");
            assert!(a.len() >= f.len() + 2, "ONU {k}: {} blocks after the restart", a.len() - f.len());
            // The same consumptions at both ends take the same bytes.
            let (pa, pb) = (olt_store.pool(k), onu_stores[k as usize].pool(k));
            for (purpose, n) in [(Purpose::Downstream, 100), (Purpose::Api, 32), (Purpose::SensorAuth, 7)] {
                let (x, y) = (pa.consume(purpose, n).unwrap(), pb.consume(purpose, n).unwrap());
                assert_eq!((x.block, x.offset), (y.block, y.offset), "ONU {k} {purpose:?}");
                assert_eq!(x.key.expose(), y.key.expose(), "ONU {k} {purpose:?}: different bytes");
            }
            assert_eq!(pa.totals().unwrap().consumed, pb.totals().unwrap().consumed);
            // No pad or hash key used twice, at either end, across the restarts.
            assert_eq!(olt_store.auth_ledger().find_reuse(k).unwrap(), None, "OLT, ONU {k}");
            assert_eq!(onu_stores[k as usize].auth_ledger().find_reuse(k).unwrap(), None, "ONU {k}");
        }
        eprintln!("first run {t1:?}, second {:?}, total {:?}", t2 - t1, t0.elapsed());
    });
}

const MASTER: &str = "app-olt-0";
const SLAVE: &str = "app-onu-0";
const INTRUDER: &str = "app-other";

/// One HTTPS request with `sae`'s client certificate: (status, JSON body).
async fn call(
    certs: &DevCerts,
    addr: std::net::SocketAddr,
    sae: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&certs.ca).unwrap()).unwrap();
    let (_, c, k) = certs.saes.iter().find(|(id, ..)| id == sae).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(qpon_kms::etsi::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(c).unwrap()],
            PrivateKeyDer::from_pem_file(k).unwrap(),
        )
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn keys_of(v: &Value) -> Vec<(String, String)> {
    v["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys in {v}"))
        .iter()
        .map(|k| (k["key_ID"].as_str().unwrap().to_string(), k["key"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn etsi_keys_and_downstream_keys_from_the_running_services() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let pon = pon(1);
        let dir = Dir::new("etsi");
        let d = &dir.0;
        qpon_node::write_psk(&d.join("onu-0.psk"), 16 * 1024).unwrap();
        let certs = dev_certs(&d.join("certs"), &[MASTER, SLAVE, INTRUDER]).unwrap();
        let files = "ca_file = \"certs/ca.pem\"\ncert_file = \"certs/server.pem\"\nkey_file = \"certs/server.key\"\n";
        // Downstream keys rotate every 0.5 s (4000 superframes), so API runs and downstream
        // keys interleave in the pool's consumption order.
        let olt_tail = format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n{files}[[api.sae]]\nonu = 0\nmaster = \"{MASTER}\"\nslave = \"{SLAVE}\"\n\
             [downstream]\nenabled = true\nrotate_every_superframes = 4000\nlead_superframes = 400\n"
        );
        let onu_api =
            format!("[api]\nlisten = \"127.0.0.1:0\"\n{files}[[api.sae]]\nmaster = \"{MASTER}\"\nslave = \"{SLAVE}\"\n");
        let sim = SimPon::new(&pon);
        let cfg = olt_config(d, &pon, false, &olt_tail);
        let parts = OltParts::new(Box::new(sim.detector()));
        let parts = OltParts { slot_map: Some(mux_map(&pon)), ..parts };
        let olt = OltHandle::start(cfg.clone(), parts).await.expect("the OLT starts");
        let onu_cfg = onu_config(d, &cfg, 0, olt.local_addr, &onu_api);
        let onu = OnuHandle::start(onu_cfg.clone(), sim.source(0), PoolSource::Config).await.expect("the ONU starts");
        let olt_api = olt.api_addr.expect("OLT API on");
        let onu_api = onu.api_addr.expect("ONU API on");
        wait_for("a committed block and a downstream key", Duration::from_secs(60), || {
            olt.status().onus[0].committed_blocks >= 1 && onu.status().downstream_keys >= 1
        })
        .await;
        let t_block = t0.elapsed();

        // The master at the OLT side: two keys for the slave behind ONU 0.
        let enc = format!("/api/v1/keys/{SLAVE}/enc_keys");
        let (code, v) = call(&certs, olt_api, MASTER, "POST", &enc, Some(json!({"number": 2}))).await;
        assert_eq!(code, 200, "{v}");
        let keys = keys_of(&v);
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0].1, keys[1].1);

        // Other certificates, or the right ones at the wrong KME: 401.
        let dec = format!("/api/v1/keys/{MASTER}/dec_keys");
        let ids_of = |keys: &[(String, String)]| {
            json!({"key_IDs": keys.iter().map(|(id, _)| json!({"key_ID": id})).collect::<Vec<_>>()})
        };
        let ids = ids_of(&keys);
        for (addr, sae, path) in [
            (olt_api, INTRUDER, &enc),
            (olt_api, SLAVE, &enc),
            (onu_api, INTRUDER, &dec),
            (onu_api, MASTER, &dec),
        ] {
            let body = if path == &enc { json!({"number": 1}) } else { ids.clone() };
            let (code, v) = call(&certs, addr, sae, "POST", path, Some(body)).await;
            assert_eq!(code, 401, "{sae} at {addr}{path}: {v}");
            assert!(v["message"].is_string(), "{v}");
        }

        // The slave behind ONU 0, at the ONU's service: the same keys, by ID (they arrived
        // as a pool use over the classical channel), once only.
        let (code, v) = call(&certs, onu_api, SLAVE, "POST", &dec, Some(ids.clone())).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(keys_of(&v), keys);
        let (code, _) = call(&certs, onu_api, SLAVE, "POST", &dec, Some(ids)).await;
        assert_eq!(code, 400);

        // A third key, fetched only after the ONU restarted: undelivered keys survive.
        let (code, v) = call(&certs, olt_api, MASTER, "GET", &enc, None).await;
        assert_eq!(code, 200, "{v}");
        let third = keys_of(&v);
        let downstream_before = olt.status().onus[0].downstream_keys;
        wait_for("the third key mirrored and a downstream key after it", Duration::from_secs(30), || {
            onu.status().consumed_bytes.get("api") == Some(&96)
                && olt.status().onus[0].downstream_keys > downstream_before
        })
        .await;
        let installed = onu.shutdown().await.downstream_keys;
        let onu = OnuHandle::start(onu_cfg, sim.source(0), PoolSource::Config).await.expect("the ONU restarts");
        let onu_api = onu.api_addr.expect("ONU API on");
        let (code, v) = call(&certs, onu_api, SLAVE, "POST", &dec, Some(ids_of(&third))).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(keys_of(&v), third);
        let (code, _) = call(&certs, onu_api, SLAVE, "POST", &dec, Some(ids_of(&third))).await;
        assert_eq!(code, 400, "delivered twice across a restart");
        // Downstream rotation goes on after the restart.
        wait_for("a downstream key after the restart", Duration::from_secs(30), || onu.status().downstream_keys >= 1)
            .await;

        // Both ends' status pages count the API's bytes.
        wait_for("api bytes in both statuses", Duration::from_secs(5), || {
            olt.status().onus[0].consumed_bytes.get("api") == Some(&96)
                && onu.status().consumed_bytes.get("api") == Some(&96)
        })
        .await;
        onu.shutdown().await;
        let olt_final = olt.shutdown().await;
        // Everything released the stores: they open again, and both ledgers list the same
        // downstream and API consumptions in the same order.
        let (so, sn) = (open(&d.join("olt-data"), None), open(&d.join("onu-0-data"), None));
        let (uo, un) = (
            so.pool(0).consumptions_of(&Purpose::MIRRORED).unwrap(),
            sn.pool(0).consumptions_of(&Purpose::MIRRORED).unwrap(),
        );
        assert!(uo.iter().filter(|u| u.0 == Purpose::Api).count() >= 2, "{uo:?}");
        assert!(uo.iter().filter(|u| u.0 == Purpose::Downstream).count() >= 2, "{uo:?}");
        // The ONU may have applied every use the OLT made, or one fewer if it stopped first
        // (the OLT re-sends it at the next connection): never a different one.
        assert!(uo.len() - un.len() <= 1 && uo[..un.len()] == un[..], "the ends' mirrored ledgers differ");
        assert_eq!(olt_final.onus[0].api_keys, 3);
        eprintln!(
            "first block after {t_block:?}, {installed} downstream keys before the ONU restart, {} uses mirrored, total {:?}",
            un.len(),
            t0.elapsed()
        );
    });
}
