//! The `olt` and `onu` services over real TCP on loopback, with the simulator as their
//! hardware in-process: both ends of every ONU make the same keys, the status endpoint
//! serves per-ONU metrics, a cut connection is re-established by the ONU with back-off and
//! key generation resumes, and shutdown leaves both pools in agreement.

use qpon_kms::{KeyPool, MemoryPool};
use qpon_olt::config::OltConfig;
use qpon_olt::service::{OltHandle, OltParts, PoolSource};
use qpon_olt::status::OltStatus;
use qpon_onu::config::OnuConfig;
use qpon_onu::service::OnuHandle;
use qpon_sim::pon::mux_map;
use qpon_sim::sampler::SimPon;
use qpon_sim::scenario::{DetectorProfile, Scenario};
use qpon_tests::{olt_config_text, onu_config_text, wait_for};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const ONUS: usize = 4;

/// A TCP relay between the ONUs and the OLT whose connections the test can cut.
async fn relay(listener: TcpListener, target: std::net::SocketAddr, mut cut: watch::Receiver<u32>) {
    loop {
        let Ok((mut a, _)) = listener.accept().await else { return };
        // Connections made after a cut must not see it.
        let _ = cut.borrow_and_update();
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut b) = TcpStream::connect(target).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                _ = cut.changed() => {
                    let _ = a.shutdown().await;
                }
            }
        });
    }
}

fn olt_config(dir: &Path, pon: &qpon_sim::scenario::Pon) -> OltConfig {
    // The scheduler works on the scenario's frame and guard, so its maps can follow the
    // provisioned one.
    OltConfig::parse(&olt_config_text(pon, "", ""), dir).expect("valid OLT config")
}

fn onu_config(dir: &Path, olt: &OltConfig, k: u16, addr: std::net::SocketAddr) -> OnuConfig {
    let metrics = format!("metrics_listen = \"{}\"\n", if k == 0 { "127.0.0.1:0" } else { "" });
    OnuConfig::parse(&onu_config_text(olt, k, addr, &metrics, ""), dir).expect("valid ONU config")
}

#[test]
fn olt_and_onus_over_tcp_agree_serve_metrics_and_survive_a_cut() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // A small, slow PON so the wall-clock run stays light: 100 MHz gates, 4 ONUs.
        let mut s = Scenario { onus: ONUS, ..Scenario::default() };
        s.receiver.detector = DetectorProfile::Snspd;
        s.clock.gate_rate_hz = 1e8;
        s.clock.frame_gates = 12_500;
        let pon = s.resolve().expect("valid scenario");
        let sim = SimPon::new(&pon);

        let dir = std::env::temp_dir().join(format!("qpon-services-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..ONUS {
            qpon_node::write_psk(&dir.join(format!("onu-{k}.psk")), 16 * 1024).unwrap();
        }

        let olt_pools: Vec<Arc<Mutex<MemoryPool>>> = (0..ONUS).map(|_| Arc::default()).collect();
        let onu_pools: Vec<Arc<Mutex<MemoryPool>>> = (0..ONUS).map(|_| Arc::default()).collect();
        let cfg = olt_config(&dir, &pon);
        let pools: BTreeMap<u16, Box<dyn KeyPool>> = olt_pools
            .iter()
            .enumerate()
            .map(|(k, p)| (k as u16, Box::new(p.clone()) as Box<dyn KeyPool>))
            .collect();
        let olt = OltHandle::start(
            cfg.clone(),
            OltParts {
                detector: Box::new(sim.detector()),
                slot_map: Some(mux_map(&pon)),
                pools: PoolSource::Memory(pools),
            },
        )
        .await
        .expect("the OLT starts");

        // The ONUs reach the OLT through a relay the test can cut.
        let relay_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay_l.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(0u32);
        let relay_task = tokio::spawn(relay(relay_l, olt.local_addr, cut_rx));

        let mut onus = Vec::new();
        for (k, pool) in onu_pools.iter().enumerate() {
            let c = onu_config(&dir, &cfg, k as u16, relay_addr);
            let h = OnuHandle::start_in_memory(c, sim.source(k), Box::new(pool.clone()))
                .await
                .expect("ONU starts");
            onus.push(h);
        }

        let blocks = |p: &Arc<Mutex<MemoryPool>>| p.lock().unwrap().blocks();
        wait_for("two blocks per ONU", Duration::from_secs(90), || onu_pools.iter().all(|p| blocks(p) >= 2))
            .await;

        // The status endpoint: Prometheus text and JSON with every ONU connected.
        let maddr = olt.metrics_addr.expect("metrics enabled").to_string();
        let metrics = qpon_node::fetch(&maddr, "/metrics").await.unwrap();
        for k in 0..ONUS {
            assert!(metrics.contains(&format!("qpon_olt_blocks_total{{onu=\"{k}\"}}")), "{metrics}");
        }
        let status: OltStatus =
            serde_json::from_str(&qpon_node::fetch(&maddr, "/status").await.unwrap()).unwrap();
        assert_eq!(status.onus.len(), ONUS);
        assert!(status.onus.iter().all(|o| o.connected && o.detections > 0 && o.blocks >= 1), "{status:?}");
        // Ranged on connection, authenticated by their tagged map acknowledgement, and
        // given slots by the scheduler.
        assert!(status.onus.iter().all(|o| o.phase == "Active" && o.slot_share > 0.2), "{status:?}");
        assert!(status.to_table().lines().count() > ONUS);
        let onu_metrics =
            qpon_node::fetch(&onus[0].metrics_addr.unwrap().to_string(), "/metrics").await.unwrap();
        assert!(onu_metrics.contains("qpon_onu_blocks_total{onu=\"0\"}"), "{onu_metrics}");

        // Cut every connection: the ONUs reconnect and key generation resumes.
        let before: Vec<u64> = onu_pools.iter().map(blocks).collect();
        cut.send(1).unwrap();
        wait_for("reconnections", Duration::from_secs(30), || {
            onus.iter().all(|h| h.status().connections >= 2)
        })
        .await;
        wait_for("blocks after the cut", Duration::from_secs(90), || {
            onu_pools.iter().zip(&before).all(|(p, b)| blocks(p) >= b + 2)
        })
        .await;

        // Shut down: ONUs first, then the OLT.
        for h in onus {
            let st = h.shutdown().await;
            assert_eq!(st.refused_frames, 0, "honest frames are never refused: {st:?}");
        }
        let fin = olt.shutdown().await;
        assert_eq!(fin.onus.len(), ONUS);
        relay_task.abort();

        // Both ends agree on every block the ONU holds (the OLT may hold one more: its
        // acknowledgement was in flight when the ONU stopped).
        for k in 0..ONUS {
            let a = olt_pools[k].lock().unwrap();
            let b = onu_pools[k].lock().unwrap();
            assert!(b.entries().len() >= 4);
            for (id, key) in b.entries() {
                let other = a.entries().iter().find(|(i, _)| i == id).map(|(_, k)| k);
                assert_eq!(other, Some(key), "onu {k}: block {id} differs between the ends");
            }
            assert!(a.entries().len() <= b.entries().len() + 1);
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// One OLT process serves 128 ONUs: every one connects over its own TCP connection, is
/// ranged, authenticated by its tagged slot-map acknowledgement and given slots; no thread
/// per ONU (the OLT runs one driver thread and a two-thread tokio runtime).
#[test]
fn one_olt_serves_128_onus() {
    const N: usize = 128;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // A slow receiver (1 MHz gates): this test is about the classical side.
        let mut s = Scenario { onus: N, ..Scenario::default() };
        s.receiver.detector = DetectorProfile::Snspd;
        s.clock.gate_rate_hz = 1e6;
        s.clock.frame_gates = 125_000;
        let pon = s.resolve().expect("valid scenario");
        let sim = SimPon::new(&pon);
        let dir = std::env::temp_dir().join(format!("qpon-services-128-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..N {
            qpon_node::write_psk(&dir.join(format!("onu-{k}.psk")), 4096).unwrap();
        }
        let mut cfg = olt_config(&dir, &pon);
        // Frames of 125 ms at this clock: a scheduling period of 8 frames is 1 s.
        cfg.scheduling.scheduler.frames_per_period = 8;
        cfg.scheduling.lead_frames = 1;
        let olt = OltHandle::start(
            cfg.clone(),
            OltParts {
                detector: Box::new(sim.detector()),
                slot_map: Some(mux_map(&pon)),
                pools: PoolSource::Memory(BTreeMap::new()),
            },
        )
        .await
        .expect("the OLT starts");
        let mut onus = Vec::new();
        for k in 0..N {
            let mut c = onu_config(&dir, &cfg, k as u16, olt.local_addr);
            c.onu.metrics_listen = String::new();
            let h = OnuHandle::start_in_memory(c, sim.source(k), Box::new(MemoryPool::new()))
                .await
                .expect("ONU starts");
            onus.push(h);
        }
        wait_for("128 ONUs connected and active", Duration::from_secs(60), || {
            let s = olt.status();
            s.onus.len() == N && s.onus.iter().all(|o| o.connected && o.phase == "Active")
        })
        .await;
        for h in onus {
            let st = h.shutdown().await;
            assert_eq!(st.refused_frames, 0);
        }
        let fin = olt.shutdown().await;
        assert!(fin.onus.iter().all(|o| o.refused_frames == 0));
        let _ = std::fs::remove_dir_all(&dir);
    });
}
