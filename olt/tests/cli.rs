//! The `olt` binary's command line: the shipped default config, errors that name the field
//! with exit code 2 (the key store's and the ETSI API's fields included), pre-shared secret
//! and development certificate generation.

use std::process::Command;

fn olt(args: &[&str]) -> (i32, String, String) {
    olt_env(args, None)
}

/// `olt` with `QPON_KEK` set to `kek` (or removed).
fn olt_env(args: &[&str], kek: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_olt"));
    match kek {
        Some(k) => cmd.env("QPON_KEK", k),
        None => cmd.env_remove("QPON_KEK"),
    };
    let out = cmd.args(args).output().expect("olt runs");
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

#[test]
fn certs_writes_private_files_once_and_prints_lines_that_parse() {
    let d = temp_dir("certs");
    let out = d.join("certs");
    let o = out.to_str().unwrap();
    let (code, text, err) = olt(&["certs", "--out", o, "--sae", "app-olt-3", "--sae", "app-onu-3"]);
    assert_eq!(code, 0, "{err}");
    let names = [
        "ca.pem",
        "server.pem",
        "server.key",
        "app-olt-3.pem",
        "app-olt-3.key",
        "app-onu-3.pem",
        "app-onu-3.key",
    ];
    for n in names {
        let f = out.join(n);
        assert!(f.is_file(), "{n} missing");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{n}");
        }
    }
    assert!(text.contains("[api]") && text.contains("[[api.sae]]"), "{text}");
    assert!(text.contains("master = \"app-olt-3\"") && text.contains("slave = \"app-onu-3\""), "{text}");
    // The printed lines, with the ONU they name, are a valid configuration.
    let cfg = d.join("olt.toml");
    std::fs::write(&cfg, format!("[[onu]]\nid = 0\npsk_file = \"k\"\n{text}")).unwrap();
    let (code, resolved, err) = olt(&["show-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(resolved.contains("app-onu-3"), "{resolved}");
    // Never overwritten: a second run fails and leaves the files as they were.
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    let (code, _, err) = olt(&["certs", "--out", o, "--sae", "app-olt-3"]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), ca);
    let (code, _, err) = olt(&["certs", "--out", d.join("other").to_str().unwrap(), "--sae", "../x"]);
    assert_ne!(code, 0);
    assert!(err.contains("../x"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn store_and_api_field_errors_exit_2_naming_the_field() {
    let d = temp_dir("fields");
    let f = d.join("olt.toml");
    let p = f.to_str().unwrap();
    let onu = "[[onu]]\nid = 0\npsk_file = \"k\"\n";
    let cases: [(String, Option<&str>, &str); 6] = [
        (format!("[olt]\nkek_file = \"no-such-kek\"\n{onu}"), None, "olt.kek_file"),
        (onu.to_string(), Some("not hex"), "olt.kek_file"),
        (format!("{onu}[api]\nkey_size_bits = 12\n"), None, "api.key_size_bits"),
        (format!("{onu}[api]\nlisten = \"127.0.0.1:0\"\nca_file = \"none.pem\"\n"), None, "api.ca_file"),
        (format!("{onu}[[api.sae]]\nonu = 9\nmaster = \"a\"\nslave = \"b\"\n"), None, "api.sae[0].onu"),
        (format!("{onu}[api]\nbogus = 1\n"), None, "bogus"),
    ];
    for (text, kek, field) in cases {
        std::fs::write(&f, &text).unwrap();
        let (code, _, err) = olt_env(&["run", "--config", p], kek);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
    }
    // A usable KEK passes the check (and the run stops at the missing board driver).
    std::fs::write(&f, onu).unwrap();
    let (code, _, err) = olt_env(&["run", "--config", p], Some(&"ab".repeat(32)));
    assert_eq!(code, 2);
    assert!(err.contains("not implemented"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
