//! Bad input: a clear error, the right exit status, nothing left behind.

mod common;

use common::*;
use serde_json::json;

fn assert_clean_failure(out: &std::process::Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn nonexistent_bundle() {
    let id = unique_id("nobundle");
    let out = run_cmd(scute(&["run", "-b", "/nonexistent/bundle", &id]), &id, None);
    assert_clean_failure(&out, 125, "bundle /nonexistent/bundle does not exist");
}

/// `scute run ID` in a directory that is no bundle says what a bundle is
/// and how to name one; a wrong command line is refused in the same style
/// ("scute: error:"), with status 2.
#[test]
fn no_bundle_here_and_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id("nobundlehere");
    let mut cmd = scute(&["run", &id]);
    cmd.current_dir(dir.path());
    let out = run_cmd(cmd, &id, None);
    assert_clean_failure(&out, 125, "is not an OCI bundle");
    assert!(stderr(&out).contains("--bundle DIR"), "{}", stderr(&out));
    let out = scute(&["run", "--no-such-flag", &id]).output().unwrap();
    assert_clean_failure(
        &out,
        2,
        "scute: error: unexpected argument '--no-such-flag'",
    );
}

#[test]
fn config_json_not_json() {
    let b = TestBundle::new(&["true"]);
    std::fs::write(b.path().join("config.json"), "{ this is not json").unwrap();
    let id = unique_id("notjson");
    let mut cmd = scute(&["run", "-b"]);
    cmd.arg(b.path()).arg(&id);
    let out = run_cmd(cmd, &id, None);
    assert_clean_failure(&out, 125, "not valid JSON");
}

#[test]
fn config_json_without_args() {
    let mut b = TestBundle::new(&["true"]);
    b.process().as_object_mut().unwrap().remove("args");
    let id = unique_id("noargs");
    let out = run(&b, &id, None);
    assert_clean_failure(&out, 125, "process.args");
}

#[test]
fn executable_not_in_rootfs_exits_127() {
    let b = TestBundle::new(&["no-such-binary", "x"]);
    let out = run(&b, &unique_id("noexe"), None);
    assert_clean_failure(
        &out,
        127,
        "\"no-such-binary\": executable file not found in $PATH",
    );
}

/// An absolute path that isn't in the rootfs gets runc's text for it, not
/// the one for a name looked up in PATH.
#[test]
fn absolute_executable_not_in_rootfs_says_stat() {
    let b = TestBundle::new(&["/no/such-binary"]);
    let out = run(&b, &unique_id("noabs"), None);
    assert_clean_failure(
        &out,
        127,
        "exec: \"/no/such-binary\": stat /no/such-binary: no such file or directory",
    );
}

#[test]
fn missing_kernel_says_build_assets() {
    let b = TestBundle::new(&["true"]);
    let cfg = config_with("kernel = \"/nonexistent/vmlinuz\"\n");
    let id = unique_id("nokernel");
    b.save();
    let mut cmd = scute(&["run", "--config", cfg.path().to_str().unwrap(), "-b"]);
    cmd.arg(b.path()).arg(&id);
    let out = run_cmd(cmd, &id, None);
    assert_clean_failure(&out, 125, "scute assets build");
}

#[test]
fn missing_qemu_and_virtiofsd_are_named() {
    let b = TestBundle::new(&["true"]);
    b.save();
    for (cfg, needle) in [
        (
            "qemu_path = \"/nonexistent/qemu\"\n",
            "apt-get install qemu-system-x86",
        ),
        ("virtiofsd_path = \"/nonexistent/virtiofsd\"\n", "virtiofsd"),
    ] {
        let cfg = config_with(cfg);
        let id = unique_id("novmm");
        let mut cmd = scute(&["run", "-b"]);
        cmd.env("SCUTE_CONFIG", cfg.path()).arg(b.path()).arg(&id);
        let out = run_cmd(cmd, &id, None);
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}

#[test]
fn invalid_id_refused() {
    let b = TestBundle::new(&["true"]);
    b.save();
    let out = scute(&["run", "-b"])
        .arg(b.path())
        .arg("../escape")
        .output()
        .unwrap();
    assert_clean_failure(&out, 125, "invalid id");
}

#[test]
fn host_namespace_path_refused() {
    let mut b = TestBundle::new(&["true"]);
    b.spec["linux"]["namespaces"] =
        json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]);
    let id = unique_id("nspath");
    let out = run(&b, &id, None);
    assert_clean_failure(&out, 125, "not possible from inside a VM");
}

#[test]
fn id_already_running_refused_and_first_unharmed() {
    let b = TestBundle::new(&["sh", "-c", "echo up; read x; echo bye"]);
    b.save();
    let id = unique_id("dup");
    let mut first = scute(&["run", "-b"])
        .arg(b.path())
        .arg(&id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{Read, Write};
    let mut out = first.stdout.take().unwrap();
    let mut buf = [0u8; 3];
    out.read_exact(&mut buf).unwrap();
    let second = scute(&["run", "-b"])
        .arg(b.path())
        .arg(&id)
        .output()
        .unwrap();
    assert_clean_failure(&second, 125, "already running");
    first.stdin.take().unwrap().write_all(b"x\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    assert!(first.wait().unwrap().success());
    assert_no_leaks(&id);
}
