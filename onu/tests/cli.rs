//! The `onu` binary's command line: the shipped default config, errors that name the field
//! with exit code 2.

use std::process::Command;

fn onu(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_onu")).env_remove("QPON_KEK").args(args).output().expect("onu runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn show_config_and_field_errors() {
    let (code, out, _) = onu(&["show-config"]);
    assert_eq!(code, 0);
    assert!(out.contains("[onu]") && out.contains("reconnect_min_ms"), "{out}");
    let d = std::env::temp_dir().join(format!("qpon-onu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join("onu.toml");
    std::fs::write(&f, &out).unwrap();
    // The default lacks the identity: running needs it, named.
    let (code, _, err) = onu(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("onu.id"), "{err}");
    std::fs::write(&f, "[onu]\nid = 1\npsk_file = \"k\"\n[session]\nrto = -1.0\n").unwrap();
    let (code, _, err) = onu(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("session.rto"), "{err}");
    std::fs::write(&f, "[onu]\nid = 1\npsk_file = \"k\"\n").unwrap();
    let (code, _, err) = onu(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not implemented"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn store_api_fields_and_certs() {
    let d = std::env::temp_dir().join(format!("qpon-onu-cli-fields-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join("onu.toml");
    let p = f.to_str().unwrap();
    let id = "[onu]\nid = 1\npsk_file = \"k\"\n";
    for (text, field) in [
        (format!("{id}kek_file = \"missing\"\n"), "onu.kek_file"),
        (format!("{id}[[api.sae]]\nonu = 2\nmaster = \"a\"\nslave = \"b\"\n"), "api.sae[0].onu"),
        (format!("{id}[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"\"\n"), "api.cert_file"),
    ] {
        std::fs::write(&f, &text).unwrap();
        let (code, _, err) = onu(&["run", "--config", p]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
    }
    let out = d.join("certs");
    let (code, text, err) = onu(&["certs", "--out", out.to_str().unwrap(), "--sae", "app-onu-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("[api]") && out.join("app-onu-1.key").is_file(), "{text}");
    let (code, _, _) = onu(&["certs", "--out", out.to_str().unwrap()]);
    assert_ne!(code, 0, "never overwrites");
    let _ = std::fs::remove_dir_all(&d);
}
