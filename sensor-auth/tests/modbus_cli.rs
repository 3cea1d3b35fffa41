//! `sensor-auth proxy` on the command line: configuration errors name the field and exit
//! with code 2; `--show-config` prints the effective configuration.

use std::process::Command;

fn sensor_auth(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sensor-auth")).args(args).env_remove("QPON_KEK").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_fields_are_named_and_exit_2() {
    let (code, _, err) = sensor_auth(&["proxy", "--role", "control", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`peer`"), "{err}");
    let (code, _, err) = sensor_auth(&["proxy", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("`role`"), "{err}");
}

#[test]
fn bad_config_file_names_the_key() {
    let dir = std::env::temp_dir().join(format!("qpon-modbus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(&file, "role = \"field\"\ndevice = \"127.0.0.1:502\"\n[auth]\nreplay_window = 100\n")
        .unwrap();
    let (code, _, err) = sensor_auth(&["proxy", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("replay_window"), "{err}");
    std::fs::write(&file, "role = \"field\"\ndevcie = \"127.0.0.1:502\"\n").unwrap();
    let (code, _, err) = sensor_auth(&["proxy", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("devcie"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_config_prints_a_file_the_proxy_reads_back() {
    let (code, out, err) = sensor_auth(&[
        "proxy",
        "--role",
        "field",
        "--device",
        "127.0.0.1:502",
        "--allow-unit",
        "4",
        "--show-config",
    ]);
    assert_eq!(code, 0, "{err}");
    let c = qpon_sensor_auth::proxy::ProxyConfig::from_toml(&out).unwrap();
    assert_eq!(c.role, Some(qpon_sensor_auth::proxy::Role::Field));
    assert_eq!(c.allowed_units, [4]);
    assert_eq!(c.auth, qpon_sensor_auth::EndConfig::default());
}

#[test]
fn a_store_that_cannot_be_opened_is_an_error_not_a_start() {
    let (code, _, err) = sensor_auth(&[
        "proxy",
        "--role",
        "field",
        "--listen",
        "127.0.0.1:0",
        "--device",
        "127.0.0.1:502",
        "--store",
        "/nonexistent-dir/keys.redb",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("key store") && err.contains("/nonexistent-dir/keys.redb"), "{err}");
}
