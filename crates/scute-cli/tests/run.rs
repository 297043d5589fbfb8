//! `scute run` against real QEMU (TCG here), virtiofsd and the built assets.

mod common;

use common::*;
use serde_json::json;

#[test]
fn guest_kernel_is_not_the_hosts() {
    let b = TestBundle::new(&["uname", "-r"]);
    let id = unique_id("uname");
    let out = run(&b, &id, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = stdout(&out).trim().to_owned();
    assert_eq!(got, guest_kernel());
    assert_ne!(got, host_kernel());
}

/// `kernel = "debian"` still boots Debian's cloud kernel, with its modules
/// from the initramfs and ACPI (the path scute's own kernel left).
#[test]
fn the_debian_kernel_stays_available() {
    let dir = std::env::var("SCUTE_ASSETS").unwrap_or_else(|_| "/var/lib/scute/assets".into());
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&dir).join("manifest-debian.json"))
            .expect("Debian assets missing: run `make assets`"),
    )
    .unwrap();
    let want = m["kernel_version"].as_str().unwrap();
    assert_ne!(want, guest_kernel());
    let cfg = config_with(&format!("assets_dir = \"{dir}\"\nkernel = \"debian\"\n"));
    let b = TestBundle::new(&["uname", "-r"]);
    b.save();
    let id = unique_id("debian");
    let cmd = {
        let mut c = scute(&["run", "--config", cfg.path().to_str().unwrap(), "-b"]);
        c.arg(b.path()).arg(&id);
        c
    };
    let out = run_cmd(cmd, &id, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), want);
}

#[test]
fn proc_version_and_dmesg_are_the_guests() {
    let mut b = TestBundle::new(&["sh", "-c", "cat /proc/version; echo ---; dmesg"]);
    // dmesg needs CAP_SYSLOG (kernel.dmesg_restrict=1 on Debian).
    let caps = json!(["CAP_SYSLOG", "CAP_KILL"]);
    b.process()["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    let id = unique_id("dmesg");
    let out = run(&b, &id, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let (version, dmesg) = text.split_once("---").unwrap();
    assert!(version.contains(&guest_kernel()), "{version}");
    let host_version = std::fs::read_to_string("/proc/version").unwrap();
    assert_ne!(version.trim(), host_version.trim());
    // The guest's boot log: its own kernel command line, with scute's params.
    assert!(
        dmesg.contains("Command line:") && dmesg.contains("rdinit=/init"),
        "{dmesg}"
    );
    assert!(
        dmesg.contains(&format!("Linux version {}", guest_kernel())),
        "{dmesg}"
    );
}

#[test]
fn exit_codes_propagate() {
    for code in [0, 1, 42] {
        let b = TestBundle::new(&["sh", "-c", &format!("exit {code}")]);
        let out = run(&b, &unique_id(&format!("exit{code}")), None);
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    }
}

#[test]
fn killed_by_signal_gives_128_plus_n() {
    // Without a pid namespace the shell is not an init, so SIGKILL kills it.
    let mut b = TestBundle::new(&["sh", "-c", "kill -9 $$"]);
    b.spec["linux"]["namespaces"] =
        json!([{"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]);
    let out = run(&b, &unique_id("sigkill"), None);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
}

#[test]
fn stdout_stderr_separate_and_stdin_piped() {
    let b = TestBundle::new(&[
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; cat; cat >&2 </dev/null",
    ]);
    let out = run(&b, &unique_id("stdio"), Some("line one\nline two\n"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "to-out\nline one\nline two\n");
    assert_eq!(stderr(&out), "to-err\n");
}

#[test]
fn large_output_arrives_intact() {
    // 4 MiB through the channel: many frames, all bytes in order.
    let b = TestBundle::new(&[
        "sh",
        "-c",
        "dd if=/dev/zero bs=65536 count=64 2>/dev/null | wc -c",
    ]);
    let out = run(&b, &unique_id("bulk"), None);
    assert_eq!(stdout(&out).trim(), "4194304", "{}", stderr(&out));
    let b = TestBundle::new(&["cat"]);
    let input: String = (0..20000).map(|i| format!("{i:08}\n")).collect();
    let out = run(&b, &unique_id("bulkin"), Some(&input));
    assert_eq!(out.stdout.len(), input.len());
    assert!(stdout(&out) == input);
}

#[test]
fn env_cwd_user_groups_hostname_pid_honoured() {
    let mut b = TestBundle::new(&[
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; id -G; hostname; echo $$",
    ]);
    b.process()["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    b.process()["cwd"] = json!("/tmp");
    b.process()["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [2000, 2001]});
    b.spec["hostname"] = json!("scute-test-host");
    let out = run(&b, &unique_id("env"), None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "bar baz");
    assert_eq!(lines[1], "/tmp");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "1001");
    let groups: Vec<&str> = lines[4].split_whitespace().collect();
    assert!(
        groups.contains(&"2000") && groups.contains(&"2001"),
        "{groups:?}"
    );
    assert_eq!(lines[5], "scute-test-host");
    assert_eq!(lines[6], "1", "the process is PID 1 of its pid namespace");
}

#[test]
fn rlimits_caps_and_readonly_root_applied() {
    let mut b = TestBundle::new(&[
        "sh",
        "-c",
        "ulimit -n; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; touch /x 2>/dev/null && echo rw || echo ro",
    ]);
    b.process()["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 321}]);
    let out = run(&b, &unique_id("limits"), None);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "321", "{text}");
    // CAP_AUDIT_WRITE(29) | CAP_KILL(5) | CAP_NET_BIND_SERVICE(10)
    assert!(lines[1].ends_with("0000000020000420"), "{text}");
    assert!(lines[2].ends_with('1'), "{text}");
    assert_eq!(lines[3], "ro", "{text}");
}

/// `state_dir` named through a symlink (`/var/run/...` style): tearing the
/// sandbox down must unmount the volume's bind before deleting anything, so
/// the volume's files on the host survive.
#[test]
fn state_dir_through_a_symlink_keeps_the_volumes_files() {
    let real = tempfile::tempdir().unwrap();
    let link = real.path().with_extension("link");
    std::os::unix::fs::symlink(real.path(), &link).unwrap();
    let cfg = config_with(&format!("state_dir = \"{}/state\"\n", link.display()));
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("keep.txt"), "precious\n").unwrap();
    let mut b = TestBundle::new(&["sh", "-c", "echo new > /data/new.txt; ls /data"]);
    b.spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind",
        "source": vol.path(), "options": ["rbind", "rw"]
    }));
    b.save();
    let id = unique_id("symstate");
    let out = scute(&["run", "--config", cfg.path().to_str().unwrap(), "-b"])
        .arg(b.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "keep.txt\nnew.txt\n");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("keep.txt")).unwrap(),
        "precious\n"
    );
    assert_eq!(
        std::fs::read_to_string(vol.path().join("new.txt")).unwrap(),
        "new\n"
    );
    assert!(!real.path().join("state").join(&id).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "a mount of {id} is left");
    std::fs::remove_file(&link).unwrap();
}

#[test]
fn bind_mount_from_the_bundle_is_visible() {
    let mut b = TestBundle::new(&["cat", "/data/hello.txt"]);
    std::fs::create_dir(b.path().join("shared")).unwrap();
    std::fs::write(b.path().join("shared/hello.txt"), "from the host\n").unwrap();
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/data", "type": "bind", "source": "shared", "options": ["rbind", "ro"]}));
    let out = run(&b, &unique_id("bind"), None);
    assert_eq!(stdout(&out), "from the host\n", "{}", stderr(&out));
}

#[test]
fn sigterm_to_scute_is_forwarded() {
    let b = TestBundle::new(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 3' TERM; echo ready; sleep 60 & wait",
    ]);
    b.save();
    let id = unique_id("sigterm");
    let mut child = scute(&["run", "-b"])
        .arg(b.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "ready" before signalling.
    use std::io::Read;
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(3));
    assert_no_leaks(&id);
}

/// `scute run` killed with SIGKILL: its VM dies with it (death signal),
/// its state, mounts and cgroup stay; `scute check` names the sandbox and
/// `scute cleanup` removes everything.
#[test]
fn a_killed_run_is_found_by_check_and_removed_by_cleanup() {
    let b = TestBundle::new(&["sh", "-c", "echo ready; sleep 60"]);
    b.save();
    let id = unique_id("killed");
    let mut child = scute(&["run", "-b"])
        .arg(b.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Read;
    let mut buf = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut buf).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let state = std::path::PathBuf::from("/run/scute").join(&id);
    assert!(state.exists(), "the premise: a killed run leaves its state");
    let check = scute(&["check"]).output().unwrap();
    let said = stdout(&check);
    assert!(
        said.contains("warn stale") && said.contains(&id) && said.contains("scute cleanup"),
        "{said}"
    );
    let out = scute(&["cleanup"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("removed {}", state.display())),
        "{}",
        stdout(&out)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !procs_mentioning(&format!("/run/scute/{id}/")).is_empty()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_no_leaks(&id);
}

#[test]
fn terminal_mode_through_a_pty() {
    let mut b = TestBundle::new(&[
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo is-a-tty; read x; echo got:$x; exit 5",
    ]);
    b.process()["terminal"] = json!(true);
    b.save();
    let id = unique_id("tty");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = scute(&["run", "-b"])
        .arg(b.path())
        .arg(&id)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    use std::io::{Read, Write};
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !seen.contains("is-a-tty") && std::time::Instant::now() < deadline {
        let n = master.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    master.write_all(b"hello\r").unwrap();
    while !seen.contains("got:hello") && std::time::Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let status = child.wait().unwrap();
    assert!(
        seen.contains("is-a-tty") && seen.contains("got:hello"),
        "{seen:?}"
    );
    assert_eq!(status.code(), Some(5));
    assert_no_leaks(&id);
}

#[test]
fn seccomp_from_the_spec_is_enforced_in_the_guest() {
    let mut b = TestBundle::new(&["sh", "-c", "mkdir /tmp/denied && echo made || echo refused"]);
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let out = run(&b, &unique_id("seccomp"), None);
    assert_eq!(stdout(&out).trim(), "refused", "{}", stderr(&out));
    // Same bundle without the filter: the mkdir works (the test can fail).
    b.spec["linux"].as_object_mut().unwrap().remove("seccomp");
    let out = run(&b, &unique_id("noseccomp"), None);
    assert_eq!(stdout(&out).trim(), "made", "{}", stderr(&out));
}

/// Without `PATH` in the environment, as under runc on the same bundle: an
/// absolute `args[0]` runs, a relative one is not found (exit 127 here,
/// runc refuses to start it).
#[test]
fn no_path_in_env_follows_runcs_rules() {
    // runc's own state root for this test, removed after it.
    let root = format!("/run/scute-test/runc-nopath-{}", std::process::id());
    for (args, ok) in [(["/bin/echo", "abs-ok"], true), (["echo", "rel"], false)] {
        let mut b = TestBundle::new(&args);
        b.process()["env"] = json!(["HOME=/root"]);
        b.save();
        let runc = std::process::Command::new("runc")
            .args(["--root", &root, "run", "--bundle"])
            .arg(b.path())
            .arg(unique_id(&format!("runc-nopath-{ok}")))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run runc");
        let out = run(&b, &unique_id(&format!("nopath-{ok}")), None);
        assert_eq!(out.status.success(), ok, "scute {args:?}: {}", stderr(&out));
        assert_eq!(
            runc.status.success(),
            ok,
            "runc {args:?}: {}",
            String::from_utf8_lossy(&runc.stderr)
        );
        if ok {
            assert_eq!(stdout(&out).trim(), "abs-ok");
        } else {
            assert_eq!(out.status.code(), Some(127));
            assert!(
                stderr(&out).contains("executable file not found in $PATH"),
                "{}",
                stderr(&out)
            );
        }
    }
    // Empty once runc's containers are gone: `--rm`-like `run` removed them.
    std::fs::remove_dir(&root).unwrap_or_else(|e| panic!("runc left {root}: {e}"));
}
