//! `scute --version` and `scute check` on this host.

mod common;

use common::*;

#[test]
fn version_has_commit() {
    let out = scute(&["--version"]).output().unwrap();
    let s = stdout(&out);
    assert!(s.starts_with("scute 0."), "{s}");
    assert!(s.contains("commit "), "{s}");
}

#[test]
fn check_passes_here_and_explains_accel() {
    let out = scute(&["check"]).output().unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert!(s.contains("acceleration"), "{s}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(s.contains("tcg: /dev/kvm is PVM"), "{s}");
    }
}

#[test]
fn check_fails_with_explanation_when_assets_missing() {
    let cfg = config_with("assets_dir = \"/nonexistent/assets\"\n");
    let out = scute(&["check", "--config", cfg.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = stdout(&out);
    assert!(
        s.contains("FAIL guest assets") && s.contains("scute assets build"),
        "{s}"
    );
}
