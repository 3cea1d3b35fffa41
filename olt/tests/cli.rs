//! The `olt` binary's command line: the shipped default config, errors that name the field
//! with exit code 2, pre-shared secret generation.

use std::process::Command;

fn olt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_olt")).args(args).output().expect("olt runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qpon-olt-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn show_config_prints_the_commented_default_which_parses() {
    let (code, out, _) = olt(&["show-config"]);
    assert_eq!(code, 0);
    assert!(out.contains("[session]") && out.contains("# "), "{out}");
    let d = temp_dir("show");
    let f = d.join("olt.toml");
    std::fs::write(&f, &out).unwrap();
    let (code, resolved, err) = olt(&["show-config", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(resolved.contains("block_bits = 100000"), "{resolved}");
}

#[test]
fn bad_configs_exit_2_naming_the_field() {
    let d = temp_dir("bad");
    let f = d.join("olt.toml");
    std::fs::write(&f, "[session]\nblock_bits = \"many\"\n").unwrap();
    let (code, _, err) = olt(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("session.block_bits"), "{err}");
    std::fs::write(&f, "[olt]\npoll_ms = 0\n").unwrap();
    let (code, _, err) = olt(&["show-config", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("olt.poll_ms"), "{err}");
    // No ONUs: nothing to serve.
    std::fs::write(&f, "").unwrap();
    let (code, _, err) = olt(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("`onu`"), "{err}");
}

#[test]
fn the_board_backend_is_refused_with_a_clear_message_until_it_exists() {
    let d = temp_dir("board");
    let f = d.join("olt.toml");
    std::fs::write(&f, "[[onu]]\nid = 0\npsk_file = \"k\"\n").unwrap();
    let (code, _, err) = olt(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("board") && err.contains("not implemented"), "{err}");
}

#[test]
fn gen_psk_writes_a_private_secret_once() {
    let d = temp_dir("psk");
    let f = d.join("onu-0.psk");
    let (code, _, err) = olt(&["gen-psk", "--out", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 16 * 1024);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (code, _, _) = olt(&["gen-psk", "--out", f.to_str().unwrap()]);
    assert_ne!(code, 0, "an existing secret is never overwritten");
    let (code, _, _) = olt(&["gen-psk", "--out", d.join("x").to_str().unwrap(), "--bytes", "16"]);
    assert_eq!(code, 2);
}

#[test]
fn status_without_a_running_olt_fails_cleanly() {
    let (code, _, err) = olt(&["status", "--addr", "127.0.0.1:9"]);
    assert_eq!(code, 1);
    assert!(err.contains("127.0.0.1:9"), "{err}");
}
