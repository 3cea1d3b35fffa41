//! Real mutual TLS over loopback, with a small HTTP/1.1 client on tokio-rustls.

use super::*;
use qpon_qkd::BitBlock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "qpon-kms-etsi-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MASTER: &str = "app-olt";
const SLAVE: &str = "app-onu";
const OTHER_M: &str = "other-olt";
const OTHER_S: &str = "other-onu";
const ONU: u16 = 3;

fn block(seed: u8, bytes: usize) -> BitBlock {
    let v: Vec<u8> = (0..bytes).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    BitBlock::from_bytes(&v, bytes * 8)
}

fn sae_map() -> SaeMap {
    SaeMap::new(vec![
        SaePair { master: MASTER.into(), slave: SLAVE.into(), onu: ONU },
        SaePair { master: OTHER_M.into(), slave: OTHER_S.into(), onu: ONU + 1 },
    ])
    .unwrap()
}

struct Setup {
    dir: TempDir,
    certs: DevCerts,
    olt: String,
    onu: String,
}

impl Setup {
    /// Two KMEs (OLT and ONU side), each with its own store fed the same `blocks` for ONU 3.
    async fn start(blocks: &[(u8, usize)]) -> Self {
        let dir = TempDir::new();
        let certs = dev_certs(&dir.0.join("certs"), &[MASTER, SLAVE, OTHER_M, OTHER_S]).unwrap();
        let mut stores = Vec::new();
        for name in ["olt", "onu"] {
            let store = KeyStore::open(dir.0.join(format!("{name}.redb"))).unwrap();
            for (i, &(seed, len)) in blocks.iter().enumerate() {
                store.pool(ONU).append_block(Uuid::from_u128(1000 + i as u128), &block(seed, len)).unwrap();
            }
            stores.push(store);
        }
        let supply: Arc<dyn KeySupply> = Arc::new(MirrorSupply::new(stores[0].clone(), stores[1].clone()));
        let mut addrs = Vec::new();
        for (name, side, store) in [("olt", Side::Olt, &stores[0]), ("onu", Side::Onu, &stores[1])] {
            let mut config = KmeConfig::new(format!("kme-{name}"), "peer", side);
            config.dec_wait_ms = 100;
            let supply = (side == Side::Olt).then(|| supply.clone());
            let kme = Kme::new(config, sae_map(), store.clone(), supply).unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            let (ca, cert, key) = (certs.ca.clone(), certs.server_cert.clone(), certs.server_key.clone());
            let app = router(Arc::new(kme));
            tokio::spawn(async move { serve_tls(listener, app, &ca, &cert, &key).await.unwrap() });
        }
        let onu = addrs.pop().unwrap();
        let olt = addrs.pop().unwrap();
        Self { dir, certs, olt, onu }
    }

    fn identity(&self, sae: &str) -> (PathBuf, PathBuf) {
        let (_, c, k) = self.certs.saes.iter().find(|(id, ..)| id == sae).unwrap();
        (c.clone(), k.clone())
    }

    /// One request as `sae` (or with no client certificate): (status, JSON body).
    async fn call(
        &self,
        addr: &str,
        sae: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> io::Result<(u16, Value)> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&self.certs.ca).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match sae {
            Some(sae) => {
                let (c, k) = self.identity(sae);
                let chain = vec![CertificateDer::from_pem_file(c).unwrap()];
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(k).unwrap()).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        let read = tls.read_to_end(&mut resp).await;
        if resp.is_empty() {
            read?;
            return Err(io::Error::other("empty response"));
        }
        let text = String::from_utf8_lossy(&resp).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| io::Error::other("not HTTP"))?;
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
    }
}

fn keys_of(v: &Value) -> Vec<(String, String)> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key_ID"].as_str().unwrap().to_string(), k["key"].as_str().unwrap().to_string()))
        .collect()
}

fn assert_error(v: &Value) {
    assert!(v["message"].is_string(), "error body {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_slave_get_the_same_keys_once() {
    let s = Setup::start(&[(1, 100), (2, 400)]).await;
    let enc = format!("/api/v1/keys/{SLAVE}/enc_keys");
    let dec = format!("/api/v1/keys/{MASTER}/dec_keys");

    // Master: 2 keys of 256 bits (POST), then 1 more (GET).
    let (code, v) =
        s.call(&s.olt, Some(MASTER), "POST", &enc, Some(json!({"number": 2, "size": 256}))).await.unwrap();
    assert_eq!(code, 200, "{v}");
    let keys = keys_of(&v);
    assert_eq!(keys.len(), 2);
    for (id, k) in &keys {
        Uuid::parse_str(id).unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(k).unwrap().len(), 32);
    }
    assert_ne!(keys[0], keys[1]);
    let (code, v) =
        s.call(&s.olt, Some(MASTER), "GET", &format!("{enc}?number=1&size=256"), None).await.unwrap();
    assert_eq!(code, 200, "{v}");
    let third = keys_of(&v).remove(0);

    // Another SAE's certificate asking for these keys: 401 with the spec's error body, at
    // both KMEs and whichever role it claims.
    for (addr, path, body) in
        [(&s.onu, &dec, json!({"key_IDs": [{"key_ID": keys[0].0}]})), (&s.olt, &enc, json!({"number": 1}))]
    {
        for sae in [OTHER_M, OTHER_S, MASTER, SLAVE] {
            let own = (sae == SLAVE && addr == &s.onu) || (sae == MASTER && addr == &s.olt);
            if own {
                continue;
            }
            let (code, v) = s.call(addr, Some(sae), "POST", path, Some(body.clone())).await.unwrap();
            assert_eq!(code, 401, "{sae} at {addr}: {v}");
            assert_error(&v);
        }
    }

    // Slave: the third key first (out of order, GET), then the first two (POST).
    let (code, v) =
        s.call(&s.onu, Some(SLAVE), "GET", &format!("{dec}?key_ID={}", third.0), None).await.unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(keys_of(&v), vec![third.clone()]);
    let ids: Vec<Value> = keys.iter().map(|(id, _)| json!({"key_ID": id})).collect();
    let (code, v) = s.call(&s.onu, Some(SLAVE), "POST", &dec, Some(json!({"key_IDs": ids}))).await.unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(keys_of(&v), keys);

    // Delivered twice: refused (400, as the spec has no 404).
    let (code, v) =
        s.call(&s.onu, Some(SLAVE), "GET", &format!("{dec}?key_ID={}", keys[1].0), None).await.unwrap();
    assert_eq!(code, 400, "{v}");
    assert_error(&v);
    // An ID never issued: 400, nothing consumed (the next key still matches).
    let bogus = Uuid::from_u128(42);
    let (code, v) = s.call(&s.onu, Some(SLAVE), "GET", &format!("{dec}?key_ID={bogus}"), None).await.unwrap();
    assert_eq!(code, 400, "{v}");
    let (code, v) = s.call(&s.olt, Some(MASTER), "GET", &enc, None).await.unwrap();
    assert_eq!(code, 200, "{v}");
    let fourth = keys_of(&v).remove(0);
    let (code, v) =
        s.call(&s.onu, Some(SLAVE), "GET", &format!("{dec}?key_ID={}", fourth.0), None).await.unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(keys_of(&v), vec![fourth]);

    // Bad requests: wrong size, too many keys, not a UUID.
    for (addr, sae, path) in [
        (&s.olt, MASTER, format!("{enc}?size=128")),
        (&s.olt, MASTER, format!("{enc}?number=100000")),
        (&s.onu, SLAVE, format!("{dec}?key_ID=nope")),
    ] {
        let (code, v) = s.call(addr, Some(sae), "GET", &path, None).await.unwrap();
        assert_eq!(code, 400, "{path}: {v}");
        assert_error(&v);
        assert!(v["details"].is_array(), "{v}");
    }
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fields() {
    let s = Setup::start(&[(1, 100), (2, 70)]).await;
    let (code, v) =
        s.call(&s.olt, Some(MASTER), "GET", &format!("/api/v1/keys/{SLAVE}/status"), None).await.unwrap();
    assert_eq!(code, 200, "{v}");
    for f in [
        "source_KME_ID",
        "target_KME_ID",
        "master_SAE_ID",
        "slave_SAE_ID",
        "key_size",
        "stored_key_count",
        "max_key_count",
        "max_key_per_request",
        "max_key_size",
        "min_key_size",
        "max_SAE_ID_count",
    ] {
        assert!(!v[f].is_null(), "{f} missing in {v}");
    }
    assert_eq!(v["master_SAE_ID"], MASTER);
    assert_eq!(v["slave_SAE_ID"], SLAVE);
    assert_eq!(v["key_size"], 256);
    assert_eq!(v["stored_key_count"], 3 + 2); // 100 B → 3 keys, 70 B → 2 keys
    let (code, v) =
        s.call(&s.olt, Some(OTHER_M), "GET", &format!("/api/v1/keys/{SLAVE}/status"), None).await.unwrap();
    assert_eq!(code, 401, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_is_503_and_consumes_nothing() {
    let s = Setup::start(&[(7, 64)]).await; // exactly two 256-bit keys
    let enc = format!("/api/v1/keys/{SLAVE}/enc_keys");
    let (code, v) = s.call(&s.olt, Some(MASTER), "GET", &format!("{enc}?number=3"), None).await.unwrap();
    assert_eq!(code, 503, "{v}");
    assert_error(&v);
    let (code, v) = s.call(&s.olt, Some(MASTER), "GET", &format!("{enc}?number=2"), None).await.unwrap();
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.call(&s.olt, Some(MASTER), "GET", &enc, None).await.unwrap();
    assert_eq!(code, 503, "{v}");
    assert_error(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused_by_tls() {
    let s = Setup::start(&[(1, 100)]).await;
    let r = s.call(&s.olt, None, "GET", &format!("/api/v1/keys/{SLAVE}/status"), None).await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");
}

#[test]
fn subject_cn_of_dev_certificates() {
    let dir = TempDir::new();
    let certs = dev_certs(&dir.0, &["sae-1"]).unwrap();
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(&certs.saes[0].1).unwrap();
    assert_eq!(subject_cn(&der).as_deref(), Some("sae-1"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&certs.saes[0].2).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&certs.server_key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&certs.ca).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(dev_certs(&dir.0, &["../x"]).is_err());
    // Never overwritten, and nothing written when any file of the set exists.
    let ca_before = std::fs::read(&certs.ca).unwrap();
    let e = dev_certs(&dir.0, &["sae-2", "sae-1"]).unwrap_err();
    assert!(e.to_string().contains("sae-1.pem") || e.to_string().contains("ca.pem"), "{e}");
    assert_eq!(std::fs::read(&certs.ca).unwrap(), ca_before);
    assert!(!dir.0.join("sae-2.pem").exists());
    assert!(matches!(dev_certs(&dir.0.join("d"), &["a", "a"]), Err(EtsiConfigError::DuplicateSae(_))));
    assert!(
        SaeMap::new(vec![
            SaePair { master: "a".into(), slave: "b".into(), onu: 1 },
            SaePair { master: "c".into(), slave: "d".into(), onu: 1 },
        ])
        .is_err()
    );
}
