//! containerd + ctr + containerd-shim-scute-v2 + QEMU + virtiofsd, for real.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use scute_testkit::containerd::Containerd;

mod common;

use common::{bin_dir, text, RUNTIME};

fn containerd(env: &[(&str, &str)]) -> (Containerd, &'static str) {
    let c = Containerd::start(&bin_dir(), env).expect("start containerd");
    let img = c.import_busybox().expect("import image");
    (c, img)
}

fn id(name: &str) -> String {
    format!("c-{name}-{}", std::process::id())
}

fn guest_kernel() -> String {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read("/var/lib/scute/assets/manifest.json").expect("assets built"),
    )
    .unwrap();
    m["kernel_version"].as_str().unwrap().to_owned()
}

/// Processes whose command line mentions `needle`.
fn procs(needle: &str) -> Vec<String> {
    scute_testkit::procs::mentioning(needle)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// Nothing of sandbox `sid` is left: VM, virtiofsd, shim, mounts, state dir.
fn assert_no_leaks(sid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = format!("/run/scute/{sid}");
        let mut left = procs(&format!("{state}/"));
        left.extend(procs(&format!("-id {sid} ")));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounted =
            mounts.contains(&format!("{state}/")) || mounts.contains(&format!("{state} "));
        let dir = Path::new(&state).exists();
        let cgroups = scute_testkit::procs::cgroups_named(sid);
        if left.is_empty() && !mounted && !dir && cgroups.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("leaked for {sid}: processes {left:?}, mounted {mounted}, state dir {dir}, cgroups {cgroups:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr run` (attached, not -d) of `sh -c script` as `cid`; its stdout and
/// stderr are pipes the caller may leave unread.
fn attached_run(c: &Containerd, img: &str, cid: &str, script: &str) -> std::process::Child {
    c.ctr(&["run", "--runtime", RUNTIME, img, cid, "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn task_status(c: &Containerd, cid: &str) -> Option<String> {
    let out = c.ctr_ok(&["task", "ls"]);
    text(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cid))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
}

fn wait_status(c: &Containerd, cid: &str, want: &str) {
    status_within(c, cid, want, Duration::from_secs(60));
}

/// Waits until `cid`'s task is `want`, at most `limit`.
fn status_within(c: &Containerd, cid: &str, want: &str, limit: Duration) {
    let t = Instant::now();
    while task_status(c, cid).as_deref() != Some(want) {
        assert!(
            t.elapsed() < limit,
            "{cid} never became {want} within {limit:?}: {:?}",
            task_status(c, cid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ctr run -d` of `args` as `cid` under scute, which must succeed.
fn run_detached(c: &Containerd, img: &str, cid: &str, args: &[&str]) {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME, img, cid];
    a.extend_from_slice(args);
    c.ctr_ok(&a);
}

fn run_rm(c: &Containerd, img: &str, cid: &str, args: &[&str]) -> Output {
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME, img, cid];
    a.extend_from_slice(args);
    c.ctr(&a).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn run_rm_prints_the_guest_kernel() {
    let (c, img) = containerd(&[]);
    let cid = id("uname");
    let out = run_rm(&c, img, &cid, &["uname", "-r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let k = text(&out.stdout).trim().to_owned();
    assert_eq!(k, guest_kernel());
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    assert_ne!(k, host.trim());
    assert_no_leaks(&cid);
}

#[test]
fn a_containers_own_limits_size_its_vm() {
    // `ctr run --cpus 2 --memory-limit …` (nerdctl's `--cpus`, `--memory`):
    // the VM gets the vCPUs and the memory to hold them, as Docker's
    // containers do through scute-runc (whose tests check that the limits
    // hold in the guest).
    let (c, img) = containerd(&[]);
    let cid = id("limits");
    let limit = (512u64 << 20).to_string();
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
    a.extend(["--cpus", "2", "--memory-limit", &limit]);
    let script = "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo";
    a.extend([img, cid.as_str(), "sh", "-c", script]);
    let out = c.ctr(&a).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[0], "2", "{o}");
    let kib: u64 = lines[1].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(kib > 512 << 10, "the VM holds less than the limit: {o}");
    assert_no_leaks(&cid);
}

#[test]
fn exit_codes_propagate() {
    let (c, img) = containerd(&[]);
    for code in [0, 3, 42] {
        let cid = id(&format!("exit{code}"));
        let out = run_rm(
            &c,
            img,
            &cid,
            &["sh", "-c", &format!("echo out; exit {code}")],
        );
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n");
        assert_no_leaks(&cid);
    }
}

enum Log {
    Fifo,
    Binary,
    File,
}

fn detached_lifecycle(log: Log) {
    let (c, img) = containerd(&[]);
    let cid = id(match log {
        Log::Fifo => "web",
        Log::Binary => "webbin",
        Log::File => "webfile",
    });
    let logs = tempfile_dir();
    let log_file = logs.join("out.log");
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--runtime".into(),
        RUNTIME.into(),
    ];
    match log {
        Log::Fifo => {}
        Log::Binary => {
            let logger = logs.join("logger.sh");
            std::fs::write(
                &logger,
                format!(
                    "#!/bin/sh\necho \"env $CONTAINER_NAMESPACE $CONTAINER_ID\" >> {f}\nexec 5>&-\ncat <&3 >> {f} &\ncat <&4 >> {f} &\nwait\n",
                    f = log_file.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            args.push("--log-uri".into());
            args.push(format!("binary://{}", logger.display()));
        }
        Log::File => {
            args.push("--log-uri".into());
            args.push(format!("file://{}", log_file.display()));
        }
    }
    args.extend([
        img.to_string(),
        cid.clone(),
        "sh".into(),
        "-c".into(),
        "trap 'echo bye; exit 7' TERM; echo started; echo to-stderr >&2; while true; do sleep 1; done".into(),
    ]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ctr_ok(&a);
    wait_status(&c, &cid, "RUNNING");

    let ps = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &cid,
        "ps",
        "-o",
        "pid,args",
    ]);
    let ps = text(&ps.stdout);
    assert!(ps.contains("trap") && ps.contains("ps -o"), "{ps}");
    // The container's init is PID 1 of its namespace: the guest's, not ours.
    assert!(ps.lines().any(|l| l.trim_start().starts_with("1 ")), "{ps}");

    c.ctr_ok(&["task", "kill", &cid]);
    wait_status(&c, &cid, "STOPPED");
    c.ctr_ok(&["task", "delete", &cid]);
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
    match log {
        Log::Fifo => {}
        Log::Binary | Log::File => {
            let got = std::fs::read_to_string(&log_file).unwrap();
            assert!(
                got.contains("started") && got.contains("to-stderr") && got.contains("bye"),
                "{got}"
            );
            if let Log::Binary = log {
                assert!(got.contains(&format!("env default {cid}")), "{got}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(logs);
}

fn tempfile_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "scute-shim-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn detached_with_fifos() {
    detached_lifecycle(Log::Fifo);
}

#[test]
fn detached_with_binary_log_uri() {
    detached_lifecycle(Log::Binary);
}

#[test]
fn detached_with_file_log_uri() {
    detached_lifecycle(Log::File);
}

#[test]
fn pids_stats_pause_resume_and_sigkill() {
    let (c, img) = containerd(&[]);
    let cid = id("ops");
    let mut attached = attached_run(&c, img, &cid, "sleep 1000 & wait");
    wait_status(&c, &cid, "RUNNING");
    // The shell forks `sleep` after the task is RUNNING (slowly, emulated).
    let deadline = Instant::now() + Duration::from_secs(30);
    let ps = loop {
        let ps = text(&c.ctr_ok(&["task", "ps", &cid]).stdout);
        if ps.lines().count() >= 3 || Instant::now() > deadline {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ps.lines().count() >= 3, "init and sleep expected: {ps}");
    let m = text(&c.ctr_ok(&["task", "metrics", &cid]).stdout);
    let mem: u64 = m
        .lines()
        .find(|l| l.starts_with("memory.usage_in_bytes"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    assert!(mem > 0, "{m}");
    // `scute ps` lists the sandbox: the VMM containerd knows as the task's
    // pid, run as a jail uid, with its accelerator and memory.
    let out = Command::new(bin_dir().join("scute"))
        .args(["ps", "--output", "json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ps json");
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == cid.as_str())
        .unwrap_or_else(|| panic!("{cid} not in scute ps: {rows}"));
    assert_eq!(row["status"], "running", "{row}");
    assert_eq!(
        row["vmm_pid"].as_u64(),
        Some(task_pid(&c, &cid) as u64),
        "{row}"
    );
    assert!(row["vmm_uid"].as_u64().is_some_and(|u| u > 0), "{row}");
    assert!(
        ["tcg", "kvm"].contains(&row["accel"].as_str().unwrap_or("")),
        "{row}"
    );
    assert!(row["pss_mib"].as_f64().is_some_and(|m| m > 10.0), "{row}");
    let table = text(
        &Command::new(bin_dir().join("scute"))
            .arg("ps")
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&cid) && l.contains("running")),
        "{table}"
    );
    c.ctr_ok(&["task", "pause", &cid]);
    assert_eq!(task_status(&c, &cid).as_deref(), Some("PAUSED"));
    c.ctr_ok(&["task", "resume", &cid]);
    assert_eq!(task_status(&c, &cid).as_deref(), Some("RUNNING"));
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &cid]);
    let st = attached.wait().unwrap();
    assert_eq!(st.code(), Some(137));
    // `ctr run` (attached, no --rm) deleted the task itself.
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
}

#[test]
fn task_survives_containerd_restart() {
    let (mut c, img) = containerd(&[]);
    let cid = id("restart");
    run_detached(&c, img, &cid, &["sleep", "1000"]);
    wait_status(&c, &cid, "RUNNING");
    c.restart().unwrap();
    assert_eq!(task_status(&c, &cid).as_deref(), Some("RUNNING"));
    let out = c.ctr_ok(&["task", "exec", "--exec-id", "after", &cid, "uname", "-r"]);
    assert_eq!(text(&out.stdout).trim(), guest_kernel());
    kill_and_remove(&c, &cid, Duration::from_secs(60));
    assert_no_leaks(&cid);
}

#[test]
fn terminal_with_resize() {
    let (c, img) = containerd(&[]);
    let cid = id("tty");
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = c.ctr(&["run", "-t", "--rm", "--runtime", RUNTIME, img, &cid, "sh"]);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; they make the pty
    // ctr's controlling terminal so it gets SIGWINCH on resize.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    // A reader thread, so a missing string times out instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(text(&buf[..n])).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut expect = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => seen.push_str(&s),
                Err(_) => panic!("never saw {what:?} in {seen:?}"),
            }
        }
        seen = seen.split_off(seen.find(what).unwrap() + what.len());
    };
    expect("# ");
    master.write_all(b"stty size\r").unwrap();
    expect("24 80");
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on our pty master.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
    // ctr gets SIGWINCH and forwards the size; poll until the guest sees it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        master.write_all(b"stty size\r").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let mut got = String::new();
        while let Ok(s) = rx.try_recv() {
            got.push_str(&s);
        }
        if got.contains("40 100") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resize never reached the guest: {got:?}"
        );
    }
    master.write_all(b"exit 4\r").unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(4));
    assert_no_leaks(&cid);
}

/// A terminal exec with Kubernetes-length ids (64 characters each, as
/// `kubectl exec -it` sends them): output through the pty and the exit
/// code. Naming anything after both ids passes a unix socket's 108 bytes.
#[test]
fn terminal_exec_with_kubernetes_length_ids() {
    let (c, img) = containerd(&[]);
    let cid = format!("{:x<64}", id("ktty"));
    let eid = "e".repeat(64);
    run_sleeping(&c, img, &cid);
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = c.ctr(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        &eid,
        &cid,
        "sh",
        "-c",
        "echo tty-ok; exit 3",
    ]);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(text(&buf[..n])).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "exec -t never ended");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The reader may still be behind the exit.
    let mut said = String::new();
    while !said.contains("tty-ok") {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(s) => said.push_str(&s),
            Err(_) => panic!("no output through the pty: {said:?}"),
        }
    }
    assert_eq!(st.code(), Some(3), "{said:?}");
    kill_and_remove(&c, &cid, Duration::from_secs(60));
    assert_no_leaks(&cid);
}

#[test]
fn bad_input_is_explained_and_leaves_nothing() {
    let cfg = std::env::temp_dir().join(format!("scute-bad-{}.toml", std::process::id()));
    std::fs::write(&cfg, "kernel = \"/nonexistent/vmlinuz\"\n").unwrap();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let (c, img) = containerd(&[("SCUTE_CONFIG", &cfg_s)]);
    let cid = id("noassets");
    let out = run_rm(&c, img, &cid, &["true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("scute assets build"), "{err}");
    assert!(err.contains(&cid), "error names the sandbox: {err}");
    let _ = c.ctr(&["container", "rm", &cid]).output();
    assert_no_leaks(&cid);
    assert!(task_status(&c, &cid).is_none());

    std::fs::write(
        &cfg,
        "qemu_path = \"/nonexistent/qemu\"\n[pool]\nsize = 0\n",
    )
    .unwrap();
    let cid = id("noqemu");
    let out = run_rm(&c, img, &cid, &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("qemu-system-x86"),
        "{}",
        text(&out.stderr)
    );
    let _ = c.ctr(&["container", "rm", &cid]).output();
    assert_no_leaks(&cid);

    // Specs no VM can run: refused with why, naming the sandbox.
    std::fs::write(&cfg, "[pool]\nsize = 0\n").unwrap();
    let refused = |name: &str, opts: &[&str], want: &str| {
        let cid = id(name);
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
        a.extend_from_slice(opts);
        a.extend([img, cid.as_str(), "true"]);
        let out = c.ctr(&a).stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success(), "{name}");
        let err = text(&out.stderr);
        assert!(err.contains(want) && err.contains(&cid), "{name}: {err}");
        let _ = c.ctr(&["container", "rm", &cid]).output();
        assert_no_leaks(&cid);
    };
    // Joining a host namespace.
    refused(
        "badspec",
        &["--with-ns", "ipc:/proc/1/ns/ipc"],
        "not possible from inside a VM",
    );
    // A memory limit no VM of this host may hold.
    let limit = (64u64 << 30).to_string();
    refused(
        "toobig",
        &["--memory-limit", &limit],
        "memory limit needs a VM",
    );
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn leak_check_sequential_and_concurrent_cycles() {
    let cycles: usize = std::env::var("SCUTE_LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let pairs: usize = std::env::var("SCUTE_LEAK_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (c, img) = containerd(&[]);
    let mut ids = Vec::new();
    for i in 0..cycles {
        let cid = id(&format!("seq{i}"));
        let out = run_rm(&c, img, &cid, &["true"]);
        assert!(out.status.success(), "cycle {i}: {}", text(&out.stderr));
        ids.push(cid);
    }
    for i in 0..pairs {
        let (a, b) = (id(&format!("par{i}a")), id(&format!("par{i}b")));
        let mut pa = c
            .ctr(&["run", "--rm", "--runtime", RUNTIME, img, &a, "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pb = c
            .ctr(&["run", "--rm", "--runtime", RUNTIME, img, &b, "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let sa = pa.wait().unwrap();
        assert!(
            sa.success() && pb.status.success(),
            "pair {i}: {}",
            text(&pb.stderr)
        );
        ids.push(a);
        ids.push(b);
    }
    for cid in &ids {
        assert_no_leaks(cid);
    }
    assert_eq!(text(&c.ctr_ok(&["task", "ls", "-q"]).stdout).trim(), "");
    assert_eq!(
        text(&c.ctr_ok(&["container", "ls", "-q"]).stdout).trim(),
        ""
    );
}

#[test]
fn container_joins_a_cni_netns_like_nerdctl() {
    let (c, img) = containerd(&[]);
    let cid = id("net");
    let n = std::process::id() % 50 + 200;
    let port = 45000 + (std::process::id() % 5000) as u16;
    let net = common::CniHttpd::attach(&cid, "c", 95, n, port);
    let args = net.run_args(RUNTIME, img, &cid);
    c.ctr_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_status(&c, &cid, "RUNNING");
    let addr = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "ip",
        &cid,
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(
        text(&addr.stdout).contains(&format!("{}/24", net.att.ip().unwrap())),
        "{}",
        text(&addr.stdout)
    );
    net.assert_serves();
    // containerd is told a host process of the sandbox, in the container's
    // netns (what `nerdctl`'s hook and `--net container:` resolve), never a
    // guest pid.
    let pid = task_pid(&c, &cid);
    let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        cmd.contains("qemu-system") && cmd.contains(&format!("/run/scute/{cid}/")),
        "task pid {pid} is not the sandbox's VMM: {cmd:?}"
    );
    let ns_of = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        ns_of(&format!("/proc/{pid}/ns/net")).unwrap(),
        ns_of(&net.att.netns_path().display().to_string()).unwrap(),
        "task pid {pid} is not in the container's netns"
    );
    kill_and_remove(&c, &cid, Duration::from_secs(60));
    assert_no_leaks(&cid);
    net.assert_clean_and_detach();
}

/// The pid `ctr task ls` shows for `cid`.
fn task_pid(c: &Containerd, cid: &str) -> u32 {
    text(&c.ctr_ok(&["task", "ls"]).stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cid))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("{cid} not in ctr task ls"))
}

#[test]
fn harness_kills_the_shims_a_failed_test_left() {
    // A test that panics between `run -d` and `delete` drops its containerd
    // with the task still running: the harness must not leave the VM behind.
    let (c, img) = containerd(&[]);
    let cid = id("orphan");
    run_sleeping(&c, img, &cid);
    drop(c);
    assert_no_leaks(&cid);
}

/// `nerdctl rm -f` / containerd's `WithProcessKill`: SIGKILL to *all* of a
/// task that already stopped, then delete. It used to wait forever on the
/// agent; now it returns within seconds and leaves nothing.
#[test]
fn task_rm_force_after_kill_returns() {
    let (c, img) = containerd(&[]);
    let cid = id("rmf");
    run_detached(&c, img, &cid, &["sleep", "600"]);
    wait_status(&c, &cid, "RUNNING");
    c.ctr_ok(&["task", "kill", "-s", "KILL", &cid]);
    wait_status(&c, &cid, "STOPPED");
    let mut child = c
        .ctr(&["task", "rm", "-f", &cid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "ctr task rm -f did not return within 30 s; containerd log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "ctr task rm -f: {err}");
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
}

/// A `--privileged` container (guest root) can't write through to the host:
/// its read-only volume and read-only rootfs stay read-only on the host side
/// even after a remount rw in the guest, device nodes can't be created on a
/// writable volume, the VMM runs jailed, and host users can't look inside
/// the sandbox's state.
#[test]
fn privileged_guest_cannot_write_through_to_the_host() {
    use std::os::unix::fs::PermissionsExt;
    let (c, img) = containerd(&[]);
    let cid = id("confine");
    let ro = tempfile_dir();
    let rw = tempfile_dir();
    let rro = tempfile_dir();
    std::fs::write(ro.join("f"), "orig").unwrap();
    std::fs::write(rro.join("f"), "orig").unwrap();
    let ro_m = format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display());
    let rw_m = format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display());
    // Recursively read-only, without `ro` (CVE-2020-28914's class).
    let rro_m = format!("type=bind,src={},dst=/rro,options=rbind:rro", rro.display());
    c.ctr_ok(&[
        "run",
        "-d",
        "--privileged",
        "--read-only",
        "--runtime",
        RUNTIME,
        "--mount",
        &ro_m,
        "--mount",
        &rw_m,
        "--mount",
        &rro_m,
        img,
        &cid,
        "sleep",
        "600",
    ]);
    wait_status(&c, &cid, "RUNNING");
    let script = "mount -o remount,rw /ro; echo remount_ro=$?; echo pwned > /ro/f; echo ro=$?; \
                  mount -o remount,rw /rro; echo pwned > /rro/f; echo rro=$?; \
                  mount -o remount,rw /; echo remount_root=$?; echo pwned > /planted; echo root=$?; \
                  mknod /rw/blk b 8 0; echo mknod=$?; \
                  cp /bin/busybox /rw/suid; chmod 4755 /rw/suid; echo suid=$?; \
                  touch /rw/sgid; chmod 2755 /rw/sgid; echo sgid=$?; \
                  chmod 0755 /rw/suid; echo plain=$?";
    let out = c.ctr_ok(&["task", "exec", "--exec-id", "x1", &cid, "sh", "-c", script]);
    let said = text(&out.stdout);
    assert_eq!(
        std::fs::read_to_string(ro.join("f")).unwrap(),
        "orig",
        "{said}"
    );
    // The guest's own remounts succeed (it is root in its kernel); the
    // writes then fail on the host's read-only binds.
    assert!(
        said.contains("remount_ro=0") && said.contains("remount_root=0"),
        "{said}"
    );
    assert!(
        said.contains("ro=1"),
        "the write into /ro failed in the guest: {said}"
    );
    assert!(
        said.contains("rro=1"),
        "the write into /rro failed in the guest: {said}"
    );
    assert_eq!(std::fs::read_to_string(rro.join("f")).unwrap(), "orig");
    assert!(
        said.contains("root=1"),
        "the write into / failed in the guest: {said}"
    );
    assert!(
        said.contains("mknod=1"),
        "mknod failed in the guest: {said}"
    );
    assert!(
        !rw.join("blk").exists(),
        "a device node appeared on the host"
    );
    // Set-id modes are refused by virtiofsd's filter; plain ones pass.
    assert!(
        said.contains("suid=1") && said.contains("sgid=1") && said.contains("plain=0"),
        "{said}"
    );
    for f in ["suid", "sgid"] {
        let mode = std::fs::metadata(rw.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o6000, 0, "{f} is {mode:o} on the host");
    }
    let rootfs = c.dir.join(format!(
        "state/io.containerd.runtime.v2.task/default/{cid}/rootfs"
    ));
    assert!(rootfs.join("bin").exists(), "{}", rootfs.display());
    assert!(
        !rootfs.join("planted").exists(),
        "the read-only rootfs was written"
    );

    // The VMM: its own uid, no capabilities, seccomp, no new privileges.
    let state = format!("/run/scute/{cid}");
    let qemu = scute_testkit::procs::mentioning(&format!("{state}/"))
        .into_iter()
        .find(|(_, c)| c.contains("qemu-system"))
        .expect("qemu")
        .0;
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    assert!(!field("Uid:").starts_with("0\t"), "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("Seccomp:"), "2");
    assert_eq!(field("NoNewPrivs:"), "1");
    // Only its own descriptors: nothing the shim holds (containerd's
    // listening socket for the shim API was inherited once), and the same
    // for virtiofsd.
    let (_, vfsd) = vmm_and_virtiofsd(&cid);
    let shim = scute_testkit::procs::mentioning(&format!("-id {cid} "))
        .into_iter()
        .find(|(_, c)| c.contains("containerd-shim-scute-v2"))
        .expect("shim")
        .0;
    // Beyond stdio: QEMU's and virtiofsd's stdout and stderr are the
    // pipes of their capped logs, which the shim reads.
    let fds = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter(|e| {
                pid == shim
                    || e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 2))
            })
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .filter(|t| t.starts_with("socket:") || t.starts_with("pipe:"))
            .collect()
    };
    let shim_fds = fds(shim);
    for (what, pid) in [("qemu", qemu), ("virtiofsd", vfsd)] {
        let shared: Vec<String> = fds(pid)
            .into_iter()
            .filter(|f| shim_fds.contains(f))
            .collect();
        assert!(shared.is_empty(), "{what} holds the shim's {shared:?}");
    }
    // Its own host cgroup, named after the sandbox, with a memory limit of
    // guest RAM + overhead; virtiofsd is in it too.
    let cgroups = scute_testkit::procs::cgroups_named(&cid);
    assert!(!cgroups.is_empty(), "no cgroup for {cid}");
    for dir in &cgroups {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == qemu.to_string()),
            "{}: {procs}",
            dir.display()
        );
        assert!(
            procs.lines().count() >= 3,
            "qemu and virtiofsd's two: {procs}"
        );
        for limit in ["memory.limit_in_bytes", "memory.max"] {
            if let Ok(v) = std::fs::read_to_string(dir.join(limit)) {
                assert_eq!(
                    v.trim(),
                    ((256u64 + 1024) << 20).to_string(),
                    "{}",
                    dir.display()
                );
            }
        }
    }
    // Its own mount namespace: /run holds only its own vmm/ dir, the rest
    // of the host is read-only.
    let ns = |p: String| std::fs::read_link(p).unwrap();
    assert_ne!(
        ns(format!("/proc/{qemu}/ns/mnt")),
        ns("/proc/self/ns/mnt".into())
    );
    let seen: Vec<String> = std::fs::read_dir(format!("/proc/{qemu}/root/run/scute"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(seen, std::slice::from_ref(&cid));
    assert!(!Path::new(&format!("/proc/{qemu}/root{}", c.dir.display())).exists());
    let w = std::fs::write(format!("/proc/{qemu}/root/etc/scute-probe"), b"x");
    assert_eq!(w.unwrap_err().raw_os_error(), Some(libc::EROFS));

    // A host user can't list the sandbox's state or read its console.
    for cmd in [
        format!("ls {state}"),
        format!("cat {state}/console.log"),
        format!("ls {state}/shared"),
    ] {
        let st = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                &cmd,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!st.success(), "nobody could: {cmd}");
    }

    kill_and_remove(&c, &cid, Duration::from_secs(60));
    assert_no_leaks(&cid);
    assert_eq!(std::fs::read_to_string(ro.join("f")).unwrap(), "orig");
}

/// The QEMU pid serving sandbox `sid`, and its virtiofsd's.
fn vmm_and_virtiofsd(sid: &str) -> (u32, u32) {
    let state = format!("/run/scute/{sid}/");
    let procs = scute_testkit::procs::mentioning(&state);
    let find = |what: &str| {
        procs
            .iter()
            .filter(|(_, c)| c.contains(what))
            .map(|(p, _)| *p)
            .min()
            .unwrap_or_else(|| panic!("no {what} for {sid}"))
    };
    (find("qemu-system"), find("virtiofsd"))
}

/// Runs `ctr ARGS`, failing the test if it takes longer than `limit`.
fn ctr_within(c: &Containerd, args: &[&str], limit: Duration) -> Output {
    let mut child = c
        .ctr(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("ctr {args:?} did not return within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A hung guest (QEMU stopped): SIGKILL to its container kills the VM after
/// the agent's deadline, and `ctr task rm -f` finishes; nothing is left.
#[test]
fn hung_guest_is_killed_and_removed_within_seconds() {
    let (c, img) = containerd(&[]);
    let cid = id("hung");
    run_detached(&c, img, &cid, &["sleep", "600"]);
    wait_status(&c, &cid, "RUNNING");
    let (qemu, _) = vmm_and_virtiofsd(&cid);
    Command::new("kill")
        .args(["-STOP", &qemu.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let out = ctr_within(
        &c,
        &["task", "kill", "-s", "KILL", &cid],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_status(&c, &cid, "STOPPED");
    let out = ctr_within(&c, &["task", "rm", "-f", &cid], Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
}

/// A guest that stops answering while nobody calls it (QEMU stopped): the
/// liveness checks declare it dead, its container is reported exited and
/// its VM killed, without any ctr call.
#[test]
fn silent_guest_is_declared_dead_by_the_liveness_checks() {
    let cfg = std::env::temp_dir().join(format!("scute-live-{}.toml", std::process::id()));
    // Three misses of 2 s: a guest starved for a few seconds on a loaded
    // host is no false alarm; a stopped one is declared dead in ~12 s.
    std::fs::write(&cfg, "liveness_interval_secs = 2\nliveness_misses = 3\n").unwrap();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let (c, img) = containerd(&[("SCUTE_CONFIG", &cfg_s)]);
    let cid = id("silent");
    run_detached(&c, img, &cid, &["sleep", "600"]);
    wait_status(&c, &cid, "RUNNING");
    // Healthy for a few rounds of checks first: no false alarm.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(task_status(&c, &cid).as_deref(), Some("RUNNING"));
    let (qemu, _) = vmm_and_virtiofsd(&cid);
    Command::new("kill")
        .args(["-STOP", &qemu.to_string()])
        .status()
        .unwrap();
    stopped_within(&c, &cid, Duration::from_secs(30));
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
    c.ctr_ok(&["task", "rm", &cid]);
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
    let _ = std::fs::remove_file(&cfg);
    assert!(log.contains("liveness checks"), "the reason is logged");
}

/// virtiofsd killed under a running container: the container is reported
/// exited within 30 s and everything is cleaned.
#[test]
fn dead_virtiofsd_stops_the_container() {
    let (c, img) = containerd(&[]);
    let cid = id("vfsd");
    run_detached(&c, img, &cid, &["sleep", "600"]);
    wait_status(&c, &cid, "RUNNING");
    let (_, vfsd) = vmm_and_virtiofsd(&cid);
    Command::new("kill")
        .args(["-9", &vfsd.to_string()])
        .status()
        .unwrap();
    stopped_within(&c, &cid, Duration::from_secs(30));
    c.ctr_ok(&["task", "rm", &cid]);
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
}

/// Kata's CVE-2020-2024/2026 class: guest root mounts the share itself and
/// plants symlinks named after its own container id (the name the host
/// deletes on removal) pointing at a host directory holding a file and a
/// mount, at a host file, and at another live sandbox's state dir; makes a
/// directory and fills the host's /run. Every attempt fails in the guest
/// (the share root is a read-only view); after the container is removed
/// the targets are intact, the other sandbox runs on, and nothing of this
/// sandbox is left. Twenty times in a row, the guest racing its own
/// removal with symlink swaps in its rootfs (which the host unmounts
/// whole, never walks).
#[test]
fn the_guest_cannot_steer_the_hosts_unmount_and_delete() {
    let (c, img) = containerd(&[]);
    let canary = common::Canary::new("steer");
    let file = canary.dir.join("precious");
    let other = id("steer-other");
    run_sleeping(&c, img, &other);
    let other_state = PathBuf::from(format!("/run/scute/{other}"));
    // `ctr run <how> --privileged` of `sh -c script` as `cid`.
    let run = |how: &str, cid: &str, script: &str| {
        let args = [
            "run",
            how,
            "--privileged",
            "--runtime",
            RUNTIME,
            img,
            cid,
            "sh",
            "-c",
            script,
        ];
        c.ctr(&args).stdin(Stdio::null()).output().unwrap()
    };
    let cid = id("steer");
    let script = common::share_escape_script(&cid, &[&canary.dir, &file, &other_state]);
    let out = run("--rm", &cid, &script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    common::assert_share_escape_failed(&text(&out.stdout));
    assert_no_leaks(&cid);
    canary.assert_intact();
    assert!(
        other_state.join("state.json").exists(),
        "the other sandbox's state"
    );
    assert_eq!(task_status(&c, &other).as_deref(), Some("RUNNING"));

    let k = canary.dir.display();
    for n in 0..20 {
        let cid = id(&format!("race{n}"));
        let script = format!(
            "mkdir -p /s; mount -t virtiofs scute /s; \
             while :; do mkdir -p /a/b; mv /a /a.old 2>/dev/null; ln -sfn {k} /a; \
             ln -sfn {k} /s/{cid} 2>/dev/null; rm -rf /a /a.old; done"
        );
        let out = run("-d", &cid, &script);
        assert!(out.status.success(), "{}", text(&out.stderr));
        wait_status(&c, &cid, "RUNNING");
        kill_and_remove(&c, &cid, Duration::from_secs(60));
        assert_no_leaks(&cid);
        canary.assert_intact();
    }
    kill_and_remove(&c, &other, Duration::from_secs(60));
    assert_no_leaks(&other);
}

/// `ctr task exec` as runc gives it: the container's seccomp filter
/// (`Seccomp: 2`, as its init), and a missing binary fails at once with
/// runc's text instead of leaving ctr waiting for an exit that never comes.
#[test]
fn exec_keeps_seccomp_and_a_missing_binary_fails_at_once() {
    let (c, img) = containerd(&[]);
    let cid = id("execsec");
    run_sleeping_with(&c, img, &cid, &["--seccomp"]);
    let t = Instant::now();
    let out = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "s1",
        &cid,
        "grep",
        "Seccomp:",
        "/proc/self/status",
    ]);
    // What an exec that runs takes here now; a failed one must take no
    // longer than a few of those (one that hung took its caller's limit).
    let an_exec = t.elapsed();
    assert!(text(&out.stdout).contains('2'), "{}", text(&out.stdout));
    let t = Instant::now();
    let out = ctr_within(
        &c,
        &["task", "exec", "--exec-id", "m1", &cid, "no-such-binary"],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("executable file not found"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        t.elapsed() < an_exec * 4 + Duration::from_secs(2),
        "took {:?} (an exec that runs: {an_exec:?})",
        t.elapsed()
    );
    kill_and_remove(&c, &cid, Duration::from_secs(60));
    assert_no_leaks(&cid);
}

/// A container with a network namespace of its own and no CNI (`ctr run`'s
/// default) has its loopback up, as under runc: a server on 127.0.0.1
/// answers inside it.
#[test]
fn own_netns_without_cni_has_loopback_up() {
    let (c, img) = containerd(&[]);
    let cid = id("loup");
    let script = "httpd -p 127.0.0.1:8080 -h /etc && wget -q -O - http://127.0.0.1:8080/passwd \
                  | grep -q root && echo LO-OK";
    assert_succeeded_saying(&run_rm_script(&c, img, &cid, &[], script), "LO-OK");
    assert_no_leaks(&cid);
}

/// An entrypoint or exec'd binary on a volume is found, as under runc
/// (a Kubernetes pod's command from a ConfigMap volume), also through an
/// absolute symlink in the container (resolved in its root, not the
/// guest's); a binary that is on no mount fails with runc's text.
#[test]
fn entrypoint_and_exec_from_a_volume_are_found() {
    use std::os::unix::fs::PermissionsExt;
    let (c, img) = containerd(&[]);
    let vol = tempfile_dir();
    let script = vol.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho from-volume \"$@\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = format!("type=bind,src={},dst=/vol,options=rbind:ro", vol.display());
    let cid = id("volentry");
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &m,
        img,
        &cid,
        "/vol/run.sh",
        "init",
    ]);
    assert_eq!(text(&out.stdout).trim(), "from-volume init");
    assert_no_leaks(&cid);

    let cid = id("volexec");
    run_sleeping_with(&c, img, &cid, &["--mount", &m]);
    let exec = |eid: &str, args: &[&str]| {
        let mut a = vec!["task", "exec", "--exec-id", eid, &cid];
        a.extend_from_slice(args);
        ctr_within(&c, &a, Duration::from_secs(30))
    };
    let out = exec("e1", &["/vol/run.sh", "exec"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "from-volume exec",
        "{}",
        text(&out.stderr)
    );
    let out = exec(
        "e2",
        &[
            "sh",
            "-c",
            "mkdir -p /x && ln -s /vol/run.sh /x/l && echo ok",
        ],
    );
    assert_eq!(text(&out.stdout).trim(), "ok", "{}", text(&out.stderr));
    let out = exec("e3", &["/x/l", "link"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "from-volume link",
        "{}",
        text(&out.stderr)
    );
    let out = exec("e4", &["/vol/nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stat /vol/nope: no such file or directory"),
        "{}",
        text(&out.stderr)
    );
    kill_and_remove(&c, &cid, Duration::from_secs(60));
    assert_no_leaks(&cid);
}

/// A privileged container builds networks as CNI plugins and Docker-in-
/// Docker do: a bridge with a veth enslaved, a macvlan and a vxlan on a
/// dummy device, in its own kernel; /dev/net/tun's device, connection
/// tracking and the iptables and bridge-netfilter hooks are there. (The busybox image has no `nft` or
/// `iptables` to add a rule with.)
#[test]
fn a_privileged_guest_builds_bridges_and_has_netfilter() {
    let (c, img) = containerd(&[]);
    let cid = id("netdev");
    // busybox's `ip` names a veth's peer itself (veth0).
    let script = "set -e; ip link add br0 type bridge; ip link add v0 type veth; \
                  ip link set v0 master br0; ip link set br0 up; ls /sys/class/net/br0/brif/v0; \
                  test -e /sys/class/misc/tun; ip link add d0 type dummy; \
                  ip link add mv0 link d0 type macvlan; ip link add vx0 type vxlan id 42; \
                  ls /proc/sys/net/netfilter/nf_conntrack_max /proc/net/ip_tables_names \
                     /proc/sys/net/bridge/bridge-nf-call-iptables; echo NET-OK";
    let out = run_rm_script(&c, img, &cid, &["--privileged"], script);
    assert_succeeded_saying(&out, "NET-OK");
    assert_no_leaks(&cid);
}

/// The guest applies exactly the spec it is given: `ctr run --privileged`
/// has no masked or read-only paths, so /proc/sys is not mounted read-only,
/// as under runc;
/// an ordinary container keeps them read-only.
#[test]
fn privileged_proc_sys_is_not_read_only_as_under_runc() {
    let (c, img) = containerd(&[]);
    // Mount options only: writing a sysctl to find out would change the
    // host's under runc --privileged.
    let probe = "grep -E ' /proc/(sys|sysrq-trigger) ' /proc/mounts | cut -d' ' -f2,4; echo end";
    for (privileged, want) in [(true, ""), (false, "/proc/sys ro,")] {
        for runtime in ["io.containerd.runc.v2", RUNTIME] {
            let cid = id(&format!("procsys-{privileged}-{}", runtime.len()));
            let mut a = vec!["run", "--rm", "--runtime", runtime];
            if privileged {
                a.push("--privileged");
            }
            a.extend([img, &cid, "sh", "-c", probe]);
            let out = c.ctr_ok(&a);
            let said = text(&out.stdout);
            assert!(
                said.contains(want),
                "{runtime} privileged={privileged}: {said}"
            );
            if privileged {
                assert!(
                    !said.contains("/proc/sys "),
                    "{runtime}: /proc/sys is a separate mount: {said}"
                );
            }
        }
    }
}

/// Waits until `cid` is STOPPED, at most `limit`.
fn stopped_within(c: &Containerd, cid: &str, limit: Duration) {
    status_within(c, cid, "STOPPED", limit);
}

/// SIGKILL to `cid`'s task, STOPPED within `limit`, then the task and the
/// container removed, as a user cleans up after a detached container.
fn kill_and_remove(c: &Containerd, cid: &str, limit: Duration) {
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", cid]);
    stopped_within(c, cid, limit);
    c.ctr_ok(&["task", "rm", cid]);
    c.ctr_ok(&["container", "rm", cid]);
}

/// QEMU killed under a running container: STOPPED within 10 s, and the
/// ordinary rm works and leaves nothing.
#[test]
fn killed_vmm_stops_the_container() {
    let (c, img) = containerd(&[]);
    let cid = id("qkill");
    run_detached(&c, img, &cid, &["sleep", "600"]);
    wait_status(&c, &cid, "RUNNING");
    let (qemu, _) = vmm_and_virtiofsd(&cid);
    Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status()
        .unwrap();
    stopped_within(&c, &cid, Duration::from_secs(10));
    c.ctr_ok(&["task", "rm", &cid]);
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
}

/// A guest kernel panic (sysrq c from a privileged container): the exit is
/// reported and everything is cleaned.
#[test]
fn guest_kernel_panic_stops_the_container() {
    let (c, img) = containerd(&[]);
    let cid = id("panic");
    run_sleeping_with(&c, img, &cid, &["--privileged"]);
    // The exec dies with the kernel: its own result doesn't matter, but it
    // must return.
    let mut child = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "crash",
            &cid,
            "sh",
            "-c",
            "echo c > /proc/sysrq-trigger",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let con = std::fs::read_to_string(format!("/run/scute/{cid}/console.log"))
                .unwrap_or_default();
            let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
            let tail = |s: &str, n: usize| s.lines().rev().take(n).collect::<Vec<_>>().join("\n");
            panic!(
                "exec did not return; task {:?}; procs {:?}\nconsole:\n{}\ncontainerd:\n{}",
                task_status(&c, &cid),
                procs(&format!("/run/scute/{cid}/")),
                tail(&con, 8),
                tail(&log, 25)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stopped_within(&c, &cid, Duration::from_secs(15));
    c.ctr_ok(&["task", "rm", &cid]);
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
}

/// An exec leaves the container's mounts as they are, as under runc: no
/// mounts stacked per exec, and a --privileged container's /proc/sys stays
/// writable after one (youki's exec used to re-apply default paths).
#[test]
fn exec_leaves_the_containers_mounts_alone() {
    let (c, img) = containerd(&[]);
    for runtime in ["io.containerd.runc.v2", RUNTIME] {
        for privileged in [false, true] {
            let cid = id(&format!("execmnt-{privileged}-{}", runtime.len()));
            let mut a = vec!["run", "-d", "--runtime", runtime];
            if privileged {
                a.push("--privileged");
            }
            a.extend([img, &cid, "sleep", "600"]);
            c.ctr_ok(&a);
            wait_status(&c, &cid, "RUNNING");
            let count = |n: usize| {
                let out = c.ctr_ok(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &format!("m{n}"),
                    &cid,
                    "sh",
                    "-c",
                    "wc -l < /proc/mounts; grep ' /proc/sys ' /proc/mounts; true",
                ]);
                text(&out.stdout)
            };
            let first = count(1);
            let third = {
                count(2);
                count(3)
            };
            assert_eq!(
                first, third,
                "{runtime} privileged={privileged}: mounts grew"
            );
            if privileged {
                assert_eq!(
                    first.lines().count(),
                    1,
                    "{runtime}: /proc/sys mounted after exec: {first}"
                );
            }
            kill_and_remove(&c, &cid, Duration::from_secs(60));
        }
    }
}

/// The shim killed with SIGKILL under a container wired into a netns:
/// containerd's cleanup (`shim delete`) removes the VM, virtiofsd and state
/// within 10 s; the qdisc the dead sandbox left on eth0 does not stop the
/// next sandbox in that netns.
#[test]
fn killed_shim_is_cleaned_and_its_netns_reused() {
    let (c, img) = containerd(&[]);
    let pid = std::process::id();
    let ns = scute_testkit::netns::CniShaped::new(
        &format!("scute-t-qd-{pid}"),
        &format!("stqd{}", pid % 10000),
        &format!("10.99.{}", pid % 200),
    )
    .unwrap();
    let cid = id("shimkill");
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &ns.with_ns(),
        img,
        &cid,
        "sleep",
        "600",
    ]);
    wait_status(&c, &cid, "RUNNING");
    let shim = scute_testkit::procs::mentioning(&format!("-id {cid} "))
        .into_iter()
        .find(|(_, cmd)| cmd.contains("containerd-shim-scute-v2"))
        .expect("shim")
        .0;
    let address = std::fs::read_to_string(c.bundle("default", &cid).join("address")).unwrap();
    let socket = address.trim().trim_start_matches("unix://").to_owned();
    assert!(Path::new(&socket).exists(), "no shim socket at {socket}");
    Command::new("kill")
        .args(["-9", &shim.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    while !procs(&format!("/run/scute/{cid}/")).is_empty()
        || Path::new(&format!("/run/scute/{cid}")).exists()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "containerd's cleanup left {:?}",
            procs(&format!("/run/scute/{cid}/"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let qdiscs = Command::new("tc")
        .args(["-n", &ns.name, "qdisc", "show", "dev", "eth0"])
        .output()
        .unwrap();
    eprintln!("left by the dead sandbox: {}", text(&qdiscs.stdout));
    let _ = ctr_within(&c, &["task", "rm", "-f", &cid], Duration::from_secs(30));
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
    assert!(
        !Path::new(&socket).exists(),
        "the killed shim's socket {socket} is left"
    );

    let next = id("shimkill2");
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &ns.with_ns(),
        img,
        &next,
        "ip",
        "-o",
        "-4",
        "addr",
    ]);
    assert!(
        text(&out.stdout).contains("10.99."),
        "{}",
        text(&out.stdout)
    );
    assert_no_leaks(&next);
}

/// Output nobody reads: an attached `ctr run` whose own stdout is never
/// drained stops reading the container's stdout FIFO while the container
/// writes 100 MiB. Kill and rm still return within seconds and nothing is
/// left (Kata's runtime hung there).
#[test]
fn unread_stdout_does_not_wedge_kill_and_rm() {
    let (c, img) = containerd(&[]);
    let cid = id("unread");
    let mut attached = attached_run(&c, img, &cid, "head -c 104857600 /dev/zero; sleep 600");
    wait_status(&c, &cid, "RUNNING");
    // Back-pressure all the way: ctr's stdout, which nobody reads, holds
    // its whole capacity (then ctr blocks, and every pipe behind it fills).
    let fd = std::os::fd::AsRawFd::as_raw_fd(attached.stdout.as_ref().unwrap());
    // SAFETY: F_GETPIPE_SZ on a pipe this process owns; no memory passed.
    let cap = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    assert!(cap > 0, "ctr's stdout is not a pipe");
    let t = Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int, which `queued` is.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        if queued >= cap {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "ctr's stdout holds {queued} of {cap} bytes after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ctr_within(
        &c,
        &["task", "kill", "-s", "KILL", &cid],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    stopped_within(&c, &cid, Duration::from_secs(30));
    let _ = attached.kill();
    let _ = attached.wait();
    let out = ctr_within(&c, &["task", "rm", "-f", &cid], Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);
}

/// Nothing mounted anywhere whose path names `cid` (its rootfs under
/// containerd's bundle dir, its share under the sandbox's state dir).
fn assert_nothing_mounted_for(cid: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(cid)).collect();
    assert!(left.is_empty(), "mounts left for {cid}: {left:?}");
}

/// Removes whatever ctr left of `cid` after a Create that failed: the task
/// if containerd still has one, then the container record.
fn remove_after_failed_create(c: &Containerd, cid: &str) {
    let out = ctr_within(c, &["task", "rm", "-f", cid], Duration::from_secs(30));
    let err = text(&out.stderr);
    assert!(
        out.status.success() || err.contains("not found"),
        "task rm -f {cid}: {err}"
    );
    c.ctr_ok(&["container", "rm", cid]);
}

/// A Create cancelled by its caller's deadline (ctr --timeout: containerd
/// passes the deadline to the shim, whose ttrpc server drops the call):
/// booting, creating in the guest, or done in time, nothing is left.
/// One Create is cancelled for certain, whatever the machine's speed: its
/// QEMU is stopped (SIGSTOP) as soon as it appears, so the boot cannot
/// finish before the deadline. The others race their deadlines and may
/// finish in time; each is cleaned up either way.
#[test]
fn cancelled_create_leaves_nothing() {
    let (c, img) = containerd(&[]);
    let run = |cid: &str, ms: u64| {
        c.ctr(&[
            "--timeout",
            &format!("{ms}ms"),
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            img,
            cid,
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };

    // Cancelled while booting, for certain.
    let cid = id("cancel-stopped");
    // A deadline the stopped boot can't meet, and that comes before the
    // boot's own 10 s wait for the agent's socket (from QEMU's start).
    let ctr = run(&cid, 8_000);
    let qemu = wait_qemu(&cid, Duration::from_secs(7));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let out = ctr.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{cid}: a stopped VM booted");
    assert!(err.contains("deadline"), "{cid}: {err}");
    remove_after_failed_create(&c, &cid);
    assert_no_leaks(&cid);
    assert_nothing_mounted_for(&cid);
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("create cancelled") && l.contains(&cid)),
        "the undo of {cid} is logged"
    );

    // Deadlines that may land anywhere in the Create, or after it.
    for (n, ms) in [700u64, 1300, 2600].into_iter().enumerate() {
        let cid = id(&format!("cancel{n}"));
        let out = run(&cid, ms).wait_with_output().unwrap();
        if !out.status.success() {
            let err = text(&out.stderr);
            assert!(err.contains("deadline"), "{cid}: {err}");
        }
        remove_after_failed_create(&c, &cid);
        assert_no_leaks(&cid);
        assert_nothing_mounted_for(&cid);
    }
}

/// The pid of sandbox `sid`'s QEMU, as soon as it exists.
fn wait_qemu(sid: &str, limit: Duration) -> u32 {
    let t = Instant::now();
    loop {
        let found = scute_testkit::procs::mentioning(&format!("/run/scute/{sid}/"))
            .into_iter()
            .find(|(_, c)| c.contains("qemu-system"));
        if let Some((pid, _)) = found {
            return pid;
        }
        assert!(t.elapsed() < limit, "no QEMU for {sid}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// containerd restarted while a Create boots the VM: after the restart
/// the container can be removed and nothing of it is left.
#[test]
fn containerd_restarted_during_create_leaves_nothing() {
    let (mut c, img) = containerd(&[]);
    let cid = id("crestart");
    let mut run = c
        .ctr(&["run", "-d", "--runtime", RUNTIME, img, &cid, "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The Create reached the shim, which is booting the VM (whatever the
    // machine's speed: QEMU exists from early in the boot until the
    // container is deleted).
    wait_qemu(&cid, Duration::from_secs(20));
    c.restart().unwrap();
    let _ = run.wait();
    remove_after_failed_create(&c, &cid);
    // The shim, left with nothing that anyone will ask for, exits by itself
    // after its grace period (10 s); containerd then cleans up after it.
    wait_shim_gone(&cid, Duration::from_secs(40), "is still running");
    assert_no_leaks(&cid);
    assert_nothing_mounted_for(&cid);
    let bundles = Command::new("find")
        .arg(&c.dir)
        .args(["-name", &cid])
        .output()
        .unwrap();
    assert_eq!(text(&bundles.stdout), "", "containerd's bundle is removed");
}

/// containerd started a shim and restarted before it sent the Create (the
/// new containerd knows of no task in it): the shim, which nobody will ask
/// for anything, exits by itself after its grace period (10 s) and takes
/// its socket along.
#[test]
fn a_shim_no_create_reaches_exits_by_itself() {
    let (c, _img) = containerd(&[]);
    let sid = id("nocreate");
    let bundle = tempfile::tempdir().unwrap();
    scute_testkit::write_spec(bundle.path(), &scute_testkit::default_spec(&["true"])).unwrap();
    std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
    // The shim's log, a fifo containerd creates in the bundle and reads.
    let log = bundle.path().join("log");
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
        text
    });
    let address = c.address.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-scute-v2"))
        .args(["-namespace", "default", "-address", &address])
        .args(["-publish-binary", "containerd", "-id", &sid, "start"])
        .env("TTRPC_ADDRESS", format!("{address}.ttrpc"))
        .current_dir(bundle.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "shim start: {}", text(&out.stderr));
    let socket = text(&out.stdout)
        .trim()
        .trim_start_matches("unix://")
        .to_owned();
    assert!(Path::new(&socket).exists(), "no socket at {socket}");
    assert!(
        !procs(&format!("-id {sid} ")).is_empty(),
        "no shim for {sid}"
    );
    wait_shim_gone(
        &sid,
        Duration::from_secs(30),
        "waits for a Create that never comes",
    );
    assert_no_leaks(&sid);
    assert!(
        !Path::new(&socket).exists(),
        "the shim left its socket {socket}"
    );
    let log = drain.join().unwrap();
    assert!(
        log.contains("no container arrived since the shim started"),
        "the shim says why it exits: {log}"
    );
}

/// containerd forgot a running container: it removed the bundle (what its
/// cleanup after a shim it took for dead does) without deleting the task
/// in the shim. The shim kills the container, stops the VM and exits, and
/// nothing of the sandbox is left.
#[test]
fn forgotten_container_takes_its_shim_and_vm_along() {
    let (c, img) = containerd(&[]);
    let cid = id("forgot");
    run_sleeping(&c, img, &cid);
    let bundle = c.bundle("default", &cid);
    nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir_all(&bundle).unwrap();
    wait_shim_gone(&cid, Duration::from_secs(15), "outlived its bundle");
    assert_no_leaks(&cid);
    remove_after_failed_create(&c, &cid);
    assert_nothing_mounted_for(&cid);
}

/// `ctr run --rm [flags] IMG cid sh -c script`, its output.
fn run_rm_script(c: &Containerd, img: &str, cid: &str, flags: &[&str], script: &str) -> Output {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--runtime", RUNTIME, img, cid, "sh", "-c", script]);
    c.ctr(&args).stdin(Stdio::null()).output().unwrap()
}

/// `out` is a success whose stdout holds `marker`; else both streams are shown.
fn assert_succeeded_saying(out: &Output, marker: &str) {
    assert!(
        out.status.success() && text(&out.stdout).contains(marker),
        "stdout: {} stderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `ctr run -d` of a `sleep` in container `cid`, running, its shim up.
fn run_sleeping(c: &Containerd, img: &str, cid: &str) {
    run_sleeping_with(c, img, cid, &[]);
}

/// [`run_sleeping`] with more `ctr run` flags (`--privileged`, `--seccomp`).
fn run_sleeping_with(c: &Containerd, img: &str, cid: &str, flags: &[&str]) {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[img, cid, "sleep", "600"]);
    c.ctr_ok(&args);
    wait_status(c, cid, "RUNNING");
    assert!(
        !procs(&format!("-id {cid} ")).is_empty(),
        "no shim for {cid}"
    );
}

/// Waits up to `limit` for the shim of `cid` to exit; `why` completes the
/// failure message ("the shim of {cid} {why}").
fn wait_shim_gone(cid: &str, limit: Duration, why: &str) {
    let t = Instant::now();
    while !procs(&format!("-id {cid} ")).is_empty() {
        assert!(t.elapsed() < limit, "the shim of {cid} {why}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Host memory of sandbox `sid`'s QEMU and virtiofsd (both map guest RAM):
/// the sum of their anonymous and shmem PSS (guest RAM is a memfd), in MiB.
/// File pages are left out: the QEMU binary and the guest kernel are page
/// cache shared with every other VM, so their share moves as other tests'
/// VMs come and go.
fn sandbox_pss_mib(sid: &str) -> f64 {
    let kib: u64 = scute_testkit::procs::mentioning(&format!("/run/scute/{sid}/"))
        .iter()
        .filter_map(|(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| {
                    l.strip_prefix("Pss_Anon:")
                        .or_else(|| l.strip_prefix("Pss_Shmem:"))
                })
                .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    kib as f64 / 1024.0
}

/// 150 MiB written to a tmpfs in the guest, then deleted: free page
/// reporting hands the memory back, and the host's PSS of the sandbox
/// returns to within 20 MiB of its idle value within 10 s.
#[test]
fn freed_guest_memory_goes_back_to_the_host() {
    let (c, img) = containerd(&[]);
    let cid = id("balloon");
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--mount",
        "type=tmpfs,src=tmpfs,dst=/big,options=size=200m",
        img,
        &cid,
        "sleep",
        "600",
    ]);
    wait_status(&c, &cid, "RUNNING");
    let exec = |n: &str, script: &str| {
        c.ctr_ok(&["task", "exec", "--exec-id", n, &cid, "sh", "-c", script]);
    };
    // Warm up what the exec path touches, then settle.
    exec(
        "warm",
        "dd if=/dev/zero of=/big/w bs=1M count=1 2>/dev/null; rm /big/w",
    );
    // Idle once two samples a second apart agree within 2 MiB (free page
    // reporting runs every 2 s), however long that takes here.
    let t = Instant::now();
    let mut idle = sandbox_pss_mib(&cid);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let next = sandbox_pss_mib(&cid);
        if (next - idle).abs() < 2.0 || t.elapsed() > Duration::from_secs(30) {
            idle = next;
            break;
        }
        idle = next;
    }
    exec(
        "fill",
        "dd if=/dev/zero of=/big/x bs=1M count=150 2>/dev/null",
    );
    let full = sandbox_pss_mib(&cid);
    assert!(
        full > idle + 100.0,
        "the 150 MiB did not show on the host: idle {idle:.1} MiB, full {full:.1} MiB"
    );
    exec("free", "rm /big/x");
    let t = Instant::now();
    let mut now = sandbox_pss_mib(&cid);
    // What is shown is that it comes back, not how fast: the bound only
    // ends a test whose memory never comes back.
    while now > idle + 20.0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "PSS stayed at {now:.1} MiB (idle {idle:.1}, full {full:.1}) 60 s after the guest freed it"
        );
        std::thread::sleep(Duration::from_millis(250));
        now = sandbox_pss_mib(&cid);
    }
    eprintln!(
        "balloon: idle {idle:.1} MiB, full {full:.1} MiB, {now:.1} MiB {:.1} s after the free",
        t.elapsed().as_secs_f64()
    );
    kill_and_remove(&c, &cid, Duration::from_secs(30));
    assert_no_leaks(&cid);
}

/// `scute bench churn` against this containerd: its cycles pass and leave
/// nothing, and with stderr a pipe (a log, CI) its progress comes as whole
/// lines, not one line redrawn with carriage returns.
#[test]
fn bench_churn_passes_and_logs_progress_by_lines() {
    let (c, _img) = containerd(&[]);
    let out = Command::new(bin_dir().join("scute"))
        .args(["bench", "churn", "--cycles", "3", "--concurrency", "2"])
        .arg("--address")
        .arg(c.socket())
        .output()
        .unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(!se.contains('\r'), "{se:?}");
    assert!(
        se.lines().any(|l| l.starts_with("3/3 cycles, 0 failed")),
        "{se}"
    );
}

/// `scute debug`: with `debug_shell = true` a root shell in the guest,
/// outside the container (it sees the agent as PID 1 and the container's
/// process), each session in the shim's log; without it, a clear refusal.
#[test]
fn debug_shell_is_opt_in_and_logged() {
    let cfg = tempfile_dir().join("debug-shell.toml");
    std::fs::write(&cfg, "debug_shell = true\n[pool]\nsize = 0\n").unwrap();
    let (c, img) = containerd(&[("SCUTE_CONFIG", cfg.to_str().unwrap())]);
    let cid = id("dbg");
    run_detached(&c, img, &cid, &["sleep", "4242"]);
    wait_status(&c, &cid, "RUNNING");
    let debug = |cfg: &std::path::Path, input: &str| {
        let mut child = Command::new(bin_dir().join("scute"))
            .arg("--config")
            .arg(cfg)
            .args(["debug", &cid])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = debug(&cfg, "echo pid1=$(cat /proc/1/comm); ps; exit\n");
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}\n{}", text(&out.stderr));
    assert!(
        so.contains("pid1=init"),
        "the guest's PID 1 is the agent: {so}"
    );
    assert!(
        so.contains("sleep 4242"),
        "it sees the container's process: {so}"
    );
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("debug shell opened by root") && l.contains(&cid)),
        "the session is logged"
    );
    // The same sandbox asked through a config without the shell: still
    // refused by the guest, since it is the shim's config that counts.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &cid]);
    wait_status(&c, &cid, "STOPPED");
    c.ctr_ok(&["task", "rm", &cid]);
    c.ctr_ok(&["container", "rm", &cid]);
    assert_no_leaks(&cid);

    let (c2, img2) = containerd(&[]);
    let cid2 = id("nodbg");
    run_detached(&c2, img2, &cid2, &["sleep", "4242"]);
    wait_status(&c2, &cid2, "RUNNING");
    let out = Command::new(bin_dir().join("scute"))
        .args(["debug", &cid2])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("debug_shell = true"),
        "{}",
        text(&out.stderr)
    );
    c2.ctr_ok(&["task", "kill", "-s", "SIGKILL", &cid2]);
    wait_status(&c2, &cid2, "STOPPED");
    c2.ctr_ok(&["task", "rm", &cid2]);
    c2.ctr_ok(&["container", "rm", &cid2]);
    assert_no_leaks(&cid2);
}
