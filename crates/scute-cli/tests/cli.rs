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
    assert!(s.contains("ok   root"), "{s}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // Software emulation works, and check says what it costs.
        assert!(
            s.contains("warn acceleration")
                && s.contains("tcg: /dev/kvm is PVM")
                && s.contains("13x slower"),
            "{s}"
        );
        // And the settings in force for it.
        assert!(s.contains("settings: -accel tcg,tb-size="), "{s}");
        assert!(s.contains("with ") && s.contains("warning(s)"), "{s}");
    }
}

/// As a user other than root, `check` says scute needs root and fails; the
/// state dir (0711, root's) is not "writable" because it exists.
#[test]
fn check_as_nobody_fails_and_says_why() {
    let mut c = scute(&["check"]);
    // SAFETY: setgid/setuid in the child before exec; both are
    // async-signal-safe and touch only the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(
        s.contains("FAIL root") && s.contains("sudo scute check"),
        "{s}"
    );
    assert!(s.contains("FAIL state dir"), "{s}");
    assert!(s.contains("cannot run on this host"), "{s}");
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

fn install_args(dir: &std::path::Path, cfg: &std::path::Path) -> Vec<String> {
    vec![
        "--prefix".into(),
        dir.join("prefix").display().to_string(),
        "--containerd-config".into(),
        cfg.display().to_string(),
        "--config".into(),
        dir.join("etc/scute/config.toml").display().to_string(),
        "--record".into(),
        dir.join("install.json").display().to_string(),
        "--no-restart".into(),
        // This host's pool (state dir /run/scute) is not the test's.
        "--no-pool".into(),
    ]
}

/// `scute install` starts the pool for the config it installs (here one
/// with its own state dir and one ready VM), `scute check` shows it, and
/// `scute uninstall` stops it: the ready VM goes with it.
#[test]
fn install_starts_the_pool_and_uninstall_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("containerd.toml");
    std::fs::write(&cfg, "version = 2\n").unwrap();
    let state = std::path::PathBuf::from(format!("/run/scute-test/install-{}", std::process::id()));
    let scute_cfg = dir.path().join("etc/scute/config.toml");
    std::fs::create_dir_all(scute_cfg.parent().unwrap()).unwrap();
    std::fs::write(
        &scute_cfg,
        format!("state_dir = \"{}\"\n[pool]\nsize = 1\n", state.display()),
    )
    .unwrap();
    let mut args = install_args(dir.path(), &cfg);
    args.retain(|a| a != "--no-pool");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = scute(&[&["install"], &a[..]].concat()).output().unwrap();
    // Should an assertion below fail, the pool this test started (and its
    // ready VM) must not outlive it.
    struct StopPool<'a>(&'a std::path::Path);
    impl Drop for StopPool<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = std::process::Command::new("pkill")
                    .args(["-TERM", "-f", &format!("{} pool", self.0.display())])
                    .status();
            }
        }
    }
    let _stop = StopPool(&scute_cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("pool: started"), "{}", stdout(&out));
    let check = |what: &str| {
        let t = std::time::Instant::now();
        loop {
            let c = scute(&["--config", scute_cfg.to_str().unwrap(), "check"])
                .output()
                .unwrap();
            let line = stdout(&c)
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some("pool"))
                .unwrap_or_default()
                .to_owned();
            if line.contains(what) {
                return line;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(90),
                "pool never showed {what:?}: {line}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    check("1 ready");
    let vms = || {
        scute_testkit::procs::mentioning(&format!("{}/", state.display()))
            .into_iter()
            .filter(|(_, c)| c.contains("qemu-system"))
            .count()
    };
    assert_eq!(vms(), 1);
    let dry = scute(&[&["uninstall", "--dry-run"], &a[..]].concat())
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("would stop scute pool (pid") && stdout(&dry).contains("1 ready VMs"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(vms(), 1, "a dry run stopped the pool");
    let un = scute(&[&["uninstall"], &a[..]].concat()).output().unwrap();
    assert!(un.status.success(), "{}", stderr(&un));
    assert!(stdout(&un).contains("pool: stopped"), "{}", stdout(&un));
    let t = std::time::Instant::now();
    while vms() > 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "a ready VM outlived uninstall"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "_pool" && !n.to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the state dir: {left:?}");
    let _ = std::fs::remove_dir_all(&state);
}

fn install_roundtrip(fixture: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("containerd.toml");
    let original = std::fs::read_to_string(fixture).unwrap();
    std::fs::write(&cfg, &original).unwrap();
    let args = install_args(dir.path(), &cfg);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();

    let dry = scute(&[&["install", "--dry-run"], &a[..]].concat())
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains(&format!("+{needle}")),
        "{}",
        stdout(&dry)
    );
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        original,
        "dry run changed the file"
    );

    let first = scute(&[&["install"], &a[..]].concat()).output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let installed = std::fs::read_to_string(&cfg).unwrap();
    assert!(installed.contains(needle), "{installed}");
    let mut it = installed.lines();
    for l in original.lines() {
        assert!(it.any(|n| n == l), "install lost line {l:?}");
    }
    for b in ["scute", "scute-agent", "containerd-shim-scute-v2"] {
        assert!(
            dir.path().join("prefix/bin").join(b).is_file(),
            "{b} not installed"
        );
    }
    assert!(dir.path().join("etc/scute/config.toml").is_file());

    let second = scute(&[&["install"], &a[..]].concat()).output().unwrap();
    assert!(
        stdout(&second).contains("nothing to change"),
        "{}",
        stdout(&second)
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), installed);

    let un = scute(&[&["uninstall"], &a[..]].concat()).output().unwrap();
    assert!(un.status.success(), "{}", stderr(&un));
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        original,
        "uninstall did not restore"
    );
    assert!(!dir.path().join("prefix/bin/scute").exists());
    assert!(!dir.path().join("etc/scute/config.toml").exists());
}

#[test]
fn install_on_a_real_v2_config() {
    install_roundtrip(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/containerd-v2.toml"
        ),
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.scute]",
    );
}

#[test]
fn install_on_a_v3_config() {
    install_roundtrip(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/containerd-v3.toml"
        ),
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.scute]",
    );
}

/// The global `--config` is the config install writes and whose pool it
/// starts: a dry run names that file and previews the pool (size, memory,
/// how it runs) without writing or starting anything; a missing explicit
/// config is an error for every other command.
#[test]
fn install_honours_config_and_previews_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("containerd.toml");
    std::fs::write(&cfg, "version = 2\n").unwrap();
    let mine = dir.path().join("mine/config.toml");
    let mut args = install_args(dir.path(), &cfg);
    let i = args.iter().position(|a| a == "--config").unwrap();
    args[i + 1] = mine.display().to_string();
    args.retain(|a| a != "--no-pool");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = scute(&[&["install", "--dry-run"], &a[..]].concat())
        .output()
        .unwrap();
    let s = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        s.contains(&format!("would write {}", mine.display())),
        "{s}"
    );
    assert!(
        s.contains("would start scute pool")
            && s.contains("2 VMs booted ahead")
            && s.contains("at most 1024 MiB"),
        "{s}"
    );
    assert!(!s.contains("nothing to change"), "{s}");
    assert!(!mine.exists(), "a dry run wrote the config");

    let out = scute(&["--config", "/nonexistent/scute.toml", "version"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("/nonexistent/scute.toml"),
        "{}",
        stderr(&out)
    );
}

/// `check --output json` carries what the table says, for scripts and bug
/// reports: every check with its status, and the verdict the exit code has.
#[test]
fn check_json_matches_the_table_and_the_exit_code() {
    let out = scute(&["check", "--output", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["can_run"], out.status.code() == Some(0), "{v}");
    let checks = v["checks"].as_array().unwrap();
    let root = checks.iter().find(|c| c["name"] == "root").unwrap();
    assert_eq!(root["status"], "ok", "{v}");
    let warns = checks.iter().filter(|c| c["status"] == "warn").count();
    assert_eq!(v["warnings"].as_u64(), Some(warns as u64));
    let table = stdout(&scute(&["check"]).output().unwrap());
    for c in checks {
        let tag = match c["status"].as_str().unwrap() {
            "ok" => "ok  ",
            "warn" => "warn",
            _ => "FAIL",
        };
        let name = c["name"].as_str().unwrap();
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{tag} {name} "))),
            "{name} ({tag}) not in the table:\n{table}"
        );
    }
    // A containerd config elsewhere is read from where it is said to be.
    let out = scute(&[
        "check",
        "--containerd-config",
        "/nonexistent/containerd.toml",
    ])
    .output()
    .unwrap();
    assert!(
        stdout(&out).contains("/nonexistent/containerd.toml"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn completion_scripts_know_the_commands() {
    let out = scute(&["completion", "bash"]).output().unwrap();
    assert!(out.status.success());
    let s = stdout(&out);
    assert!(
        s.contains("_scute()") && s.contains("ps") && s.contains("install"),
        "{s}"
    );
    let st = std::process::Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(st.success(), "bash -n refused the script");
    assert!(scute(&["completion", "zsh"])
        .output()
        .unwrap()
        .status
        .success());
}

/// A missing QEMU fails its own line; the jail line doesn't blame QEMU's
/// build for it; every line stays readable (under 200 characters but
/// acceleration's cost note).
#[test]
fn check_missing_qemu_fails_once_and_lines_stay_short() {
    let cfg = config_with("qemu_path = \"/nonexistent/qemu-system-x86_64\"\n");
    let out = scute(&["check", "--config", cfg.path().to_str().unwrap()])
        .output()
        .unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.lines().any(|l| l.starts_with("FAIL qemu")), "{s}");
    let jail = s.lines().find(|l| l.contains(" vmm jail ")).unwrap();
    assert!(
        !jail.contains("-sandbox") && jail.contains("see the qemu line"),
        "{jail}"
    );
    let ok = stdout(&scute(&["check"]).output().unwrap());
    for l in ok.lines().filter(|l| !l.contains(" acceleration ")) {
        assert!(l.len() < 200, "{} characters: {l}", l.len());
    }
    // An unreachable containerd is named by its root cause, in one short
    // line: a socket nobody listens on, and one that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.sock");
    // Closed at once: the file stays and connecting is refused.
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    for (sock, why) in [
        (dead.clone(), "connection refused"),
        (dir.path().join("none.sock"), "no such socket"),
    ] {
        let out = scute(&["check", "--containerd-address", sock.to_str().unwrap()])
            .output()
            .unwrap();
        let s = stdout(&out);
        let l = s.lines().find(|l| l.contains(" containerd ")).unwrap();
        assert!(l.contains(why) && l.len() < 200, "{l}");
    }
}

/// `scute config` prints the effective config, every key with its value,
/// as a file scute reads back to the same config.
#[test]
fn config_prints_the_effective_config_that_reads_back() {
    let cfg = config_with("memory_mib = 300\n[pool]\nsize = 0\n");
    let out = scute(&["--config", cfg.path().to_str().unwrap(), "config"])
        .output()
        .unwrap();
    let s = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        s.contains("memory_mib = 300") && s.contains("vcpus = 1"),
        "{s}"
    );
    let again = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(again.path(), &s).unwrap();
    let out2 = scute(&["--config", again.path().to_str().unwrap(), "config"])
        .output()
        .unwrap();
    let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&stdout(&out2)), body(&s));
}

/// A listing piped into a reader that stops early (`| head -1`) ends
/// quietly, without a panic.
#[test]
fn listings_piped_into_head_end_quietly() {
    for args in [&["version"][..], &["completion", "bash"], &["config"]] {
        let mut c = scute(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end at once: every write fails.
        drop(c.stdout.take());
        let out = c.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "scute {args:?}: {err}");
    }
}
