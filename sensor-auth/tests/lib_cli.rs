//! The `sensor-auth` binary's library-side subcommands: `status` on a real store, `bench`.

use std::process::Command;

use qpon_kms::{KeyStore, Purpose};
use qpon_qkd::BitBlock;
use uuid::Uuid;

#[test]
fn status_reports_level_and_sensor_auth_consumption() {
    let dir = std::env::temp_dir().join(format!("qpon-sensor-auth-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.redb");
    {
        let store = KeyStore::open(&path).unwrap();
        let pool = store.pool(5);
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 31 + 7) as u8).collect();
        pool.append_block(Uuid::from_u128(9), &BitBlock::from_bytes(&bytes, 8 * bytes.len())).unwrap();
        pool.consume(Purpose::SensorAuth, 4096).unwrap();
        pool.consume(Purpose::SensorAuth, 4096).unwrap();
        pool.consume(Purpose::Downstream, 100).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sensor-auth"))
        .args(["status", "--store"])
        .arg(&path)
        .args(["--onu", "5", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["level_bytes"], 20_000 - 2 * 4096 - 100);
    assert_eq!(v["sensor_auth_consumed_bytes"], 2 * 4096);
    assert_eq!(v["sensor_auth_batches"], 2);
    assert_eq!(v["batches_left"], (20_000 - 2 * 4096 - 100) / 4096);
    assert_eq!(v["below_low_water"], true);
    // A missing store is a clear error with exit code 2, and is not created.
    let missing = dir.join("nope.redb");
    let out = Command::new(env!("CARGO_BIN_EXE_sensor-auth"))
        .args(["status", "--store"])
        .arg(&missing)
        .args(["--onu", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));
    assert!(!missing.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_runs_and_reports_every_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_sensor-auth"))
        .args([
            "bench",
            "--json",
            "--round-trips",
            "2000",
            "--repeats",
            "1",
            "--mac-tags",
            "1000",
            "--sizes",
            "16,64",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["frames"].as_array().unwrap();
    // gf128 command + reading, poly1305 command; two sizes each.
    assert_eq!(rows.len(), 6);
    for r in rows {
        assert!(r["frames_per_s"].as_f64().unwrap() > 0.0);
        // A request and its response use two pads of the tag length plus a share of the
        // batch's hash key and tail: at least one tag's worth of bits per frame.
        assert!(r["key_bits_per_frame"].as_f64().unwrap() >= r["tag_bits"].as_f64().unwrap());
    }
}
