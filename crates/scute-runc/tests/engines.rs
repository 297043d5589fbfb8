//! Docker (Debian's dockerd 20.10 through containerd's runc shim) and
//! Podman (4.3, through conmon) running containers with scute-runc: the
//! same scenarios first under runc, then under scute, with the same
//! observable results; then nothing of scute's is left behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use scute_testkit::engine::{Dockerd, Podman, IMAGE};

fn scute_runc() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scute-runc"))
}

fn bin_dir() -> PathBuf {
    scute_runc().parent().unwrap().to_path_buf()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

/// An engine's command line for some arguments.
type Cli<'a> = Box<dyn Fn(&[&str]) -> Command + Sync + 'a>;

/// An engine's CLI, as the scenarios drive it.
struct Engine<'a> {
    name: &'static str,
    cli: Cli<'a>,
    /// `run` with runtime `rt`, and the options every run needs here.
    run: fn(&str) -> Vec<String>,
}

impl Engine<'_> {
    fn out(&self, args: &[&str]) -> Output {
        (self.cli)(args).output().expect("run the engine's CLI")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}: {}",
            self.name,
            o.status,
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    fn run(&self, rt: &str, args: &[&str]) -> Output {
        let mut all = (self.run)(rt);
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.out(&refs)
    }

    fn inspect(&self, name: &str, fmt: &str) -> String {
        self.ok(&["inspect", "-f", fmt, name])
    }
}

fn docker(d: &Dockerd) -> Engine<'_> {
    Engine {
        name: "docker",
        cli: Box::new(move |a| d.cli(a)),
        run: |rt| vec!["run".into(), "--runtime".into(), rt.into()],
    }
}

fn podman(p: &Podman) -> Engine<'_> {
    let net = p.network.clone();
    // conmon doesn't pass its environment on: scute-runc gets the test's
    // config as a runtime flag (runc would refuse it: scute's runs only).
    let scute_config = format!(
        "--runtime-flag=scute-config={}",
        p.dir.join("scute.toml").display()
    );
    Engine {
        name: "podman",
        cli: Box::new(move |a| {
            let mut c = p.cli(&[]);
            if a.first() == Some(&"--runtime") && a.get(1) == Some(&"scute") {
                c.arg(&scute_config);
            }
            // `run` goes to this test's network.
            if a.first() == Some(&"--runtime")
                && a.get(2) == Some(&"run")
                && !a.contains(&"--network")
            {
                c.args(&a[..3])
                    .arg(format!("--network={net}"))
                    .args(&a[3..]);
            } else {
                c.args(a);
            }
            c
        }),
        run: podman_run,
    }
}

/// [`podman`] with every `run` on `--network none`.
fn podman_no_network(p: &Podman) -> Engine<'_> {
    let mut e = podman(p);
    e.run = |rt| {
        let mut a = podman_run(rt);
        a.extend(["--network".to_owned(), "none".to_owned()]);
        a
    };
    e
}

/// `podman run` with runtime `rt` and the limits this host needs.
fn podman_run(rt: &str) -> Vec<String> {
    [
        "--runtime",
        rt,
        "run",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ]
    .map(String::from)
    .to_vec()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Runs every scenario under runtime `rt`; what a user sees of each.
fn scenarios(e: &Engine, rt: &str, port: u16, www: &Path) -> BTreeMap<&'static str, String> {
    let mut seen = BTreeMap::new();
    let tag = format!("{}-{rt}-{}", e.name, std::process::id());
    let img = IMAGE;

    seen.insert(
        "exit 0",
        code(&e.run(rt, &["--rm", img, "true"])).to_string(),
    );
    seen.insert(
        "exit 3",
        code(&e.run(rt, &["--rm", img, "sh", "-c", "exit 3"])).to_string(),
    );
    let o = e.run(rt, &["--rm", img, "sh", "-c", "echo out; echo err >&2"]);
    seen.insert("stdio", format!("{}|{}", text(&o.stdout), text(&o.stderr)));
    let o = e.run(
        rt,
        &[
            "--rm",
            "--user",
            "1000:1000",
            "-w",
            "/tmp",
            "-e",
            "FOO=bar",
            img,
            "sh",
            "-c",
            "id -u; pwd; echo $FOO",
        ],
    );
    seen.insert("user, workdir, env", text(&o.stdout));
    let o = e.run(rt, &["--rm", "--read-only", img, "sh", "-c", "touch /x"]);
    seen.insert(
        "--read-only refuses a write",
        (!o.status.success()).to_string(),
    );
    let o = e.run(rt, &["--rm", img, "nosuchbinary"]);
    seen.insert("run of a missing binary", code(&o).to_string());
    let o = e.run(
        rt,
        &["--rm", "--network", "none", img, "ls", "/sys/class/net"],
    );
    seen.insert("--network none: interfaces", text(&o.stdout));
    let o = e.run(
        rt,
        &[
            "--rm",
            "--cpus",
            "0.5",
            "--memory",
            "96m",
            img,
            "sh",
            "-c",
            "echo limited",
        ],
    );
    seen.insert("--cpus 0.5 --memory 96m", text(&o.stdout));
    // A healthcheck (an exec): healthy, then unhealthy once its file is
    // gone. Docker runs it on its interval; Podman here has no systemd
    // for timers, so it is run by hand (`healthcheck run`).
    let h = format!("health-{tag}");
    let o = e.run(
        rt,
        &[
            "-d",
            "--name",
            &h,
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            img,
            "sh",
            "-c",
            "touch /tmp/ok; exec sleep 300",
        ],
    );
    assert!(o.status.success(), "{}: {}", e.name, text(&o.stderr));
    let health = |want: &str| -> String {
        let t = Instant::now();
        loop {
            let now = if e.name == "docker" {
                e.inspect(&h, "{{.State.Health.Status}}")
            } else {
                let o = e.out(&["healthcheck", "run", &h]);
                if o.status.success() {
                    "healthy"
                } else {
                    "unhealthy"
                }
                .to_owned()
            };
            if now == want || t.elapsed() > Duration::from_secs(30) {
                return now;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let before = health("healthy");
    e.ok(&["exec", &h, "sh", "-c", "rm /tmp/ok"]);
    seen.insert(
        "healthcheck",
        format!("{before} then {}", health("unhealthy")),
    );
    e.ok(&["kill", &h]);
    e.ok(&["rm", "-f", &h]);
    // logs -f follows until the container ends.
    let f = format!("follow-{tag}");
    e.run(
        rt,
        &[
            "-d",
            "--name",
            &f,
            img,
            "sh",
            "-c",
            "echo one; sleep 2; echo two",
        ],
    );
    let o = e.out(&["logs", "-f", &f]);
    seen.insert("logs -f", text(&o.stdout).replace('\n', " "));
    e.ok(&["rm", "-f", &f]);
    // A restart policy restarts a failing container (the engine does).
    let r = format!("restarts-{tag}");
    e.run(
        rt,
        &[
            "-d",
            "--name",
            &r,
            "--restart",
            "on-failure:2",
            img,
            "sh",
            "-c",
            "sleep 1; exit 1",
        ],
    );
    let t0 = Instant::now();
    let restarted = loop {
        let st = e.inspect(&r, "{{.RestartCount}} {{.State.Running}}");
        if st == "2 false" || t0.elapsed() > Duration::from_secs(60) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    seen.insert("--restart on-failure:2", restarted);
    e.ok(&["rm", "-f", &r]);

    // A web server, detached, with a published port and a read-only volume.
    let web = format!("web-{tag}");
    let vol = format!("{}:/www:ro", www.display());
    let publish = format!("127.0.0.1:{port}:8080");
    let o = e.run(
        rt,
        &[
            "-d",
            "--name",
            &web,
            "-p",
            &publish,
            "-v",
            &vol,
            img,
            "sh",
            "-c",
            "echo started; exec httpd -f -p 8080 -h /www",
        ],
    );
    assert!(o.status.success(), "{rt}: run -d: {}", text(&o.stderr));
    let addr = format!("127.0.0.1:{port}");
    let body = scute_testkit::http::get_200_within(&addr, "/index.html", Duration::from_secs(30));
    seen.insert(
        "HTTP through -p",
        body.unwrap_or_default().trim().to_owned(),
    );
    let o = e.out(&["exec", &web, "sh", "-c", "echo in-exec; exit 5"]);
    seen.insert("exec", format!("{} -> {}", text(&o.stdout), code(&o)));
    seen.insert(
        "exec of a missing binary",
        code(&e.out(&["exec", &web, "nosuchbinary"])).to_string(),
    );
    seen.insert("logs", e.ok(&["logs", &web]));
    let top = e.out(&["top", &web]);
    seen.insert(
        "top lists processes",
        (top.status.success() && text(&top.stdout).lines().count() >= 2).to_string(),
    );
    let stats = e.ok(&["stats", "--no-stream", "--format", "{{.Name}}", &web]);
    seen.insert("stats", (stats == web).to_string());
    e.ok(&["pause", &web]);
    let paused = e.inspect(&web, "{{.State.Paused}}");
    e.ok(&["unpause", &web]);
    seen.insert(
        "pause/unpause",
        format!("{paused}/{}", e.inspect(&web, "{{.State.Paused}}")),
    );
    // update: a lower memory limit for the running container; a shell
    // that then grows past it is killed.
    let upd = e.out(&["update", "--memory", "64m", "--memory-swap", "64m", &web]);
    let grow = e.out(&["exec", &web, "sh", "-c", "a=x; while true; do a=$a$a; done"]);
    seen.insert(
        "update --memory 64m, then out of memory",
        format!(
            "{} {}: {}",
            upd.status.success(),
            code(&grow),
            text(&upd.stderr)
        ),
    );
    let t0 = Instant::now();
    e.ok(&["restart", "-t", "1", &web]);
    let back = scute_testkit::http::get_200_within(&addr, "/index.html", Duration::from_secs(30))
        .is_some();
    seen.insert(
        "restart",
        format!(
            "{} starts, serving again: {back}",
            e.ok(&["logs", &web]).matches("started").count()
        ),
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    e.ok(&["rm", "-f", &web]);
    let left = e.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    seen.insert(
        "rm -f of a running container",
        (!left.lines().any(|l| l == web)).to_string(),
    );

    // stop: SIGTERM, ignored, then SIGKILL after the timeout.
    let stub = format!("stubborn-{tag}");
    let o = e.run(
        rt,
        &[
            "-d",
            "--name",
            &stub,
            img,
            "sh",
            "-c",
            "trap '' TERM; while true; do sleep 1; done",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let t0 = Instant::now();
    e.ok(&["stop", "-t", "2", &stub]);
    let took = t0.elapsed();
    seen.insert(
        "stop of a TERM-ignoring container",
        format!(
            "exit {}, within 15 s: {}",
            e.inspect(&stub, "{{.State.ExitCode}}"),
            took < Duration::from_secs(15)
        ),
    );
    e.ok(&["rm", "-f", &stub]);

    // kill -s, and wait's exit codes.
    let k = format!("killed-{tag}");
    e.run(
        rt,
        &[
            "-d",
            "--name",
            &k,
            img,
            "sh",
            "-c",
            "trap 'exit 7' USR1; while true; do sleep 1; done",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    e.ok(&["kill", "-s", "USR1", &k]);
    seen.insert("kill -s USR1 then wait", e.ok(&["wait", &k]));
    e.ok(&["rm", "-f", &k]);
    let k = format!("sigkilled-{tag}");
    e.run(rt, &["-d", "--name", &k, img, "sleep", "600"]);
    e.ok(&["kill", &k]);
    seen.insert("kill then wait", e.ok(&["wait", &k]));
    e.ok(&["rm", "-f", &k]);

    let o = e.run(
        rt,
        &[
            "--rm",
            "--memory",
            "64m",
            img,
            "sh",
            "-c",
            "a=x; while true; do a=$a$a; done",
        ],
    );
    seen.insert("--memory 64m, out of memory", code(&o).to_string());
    seen.insert("terminal, resize, exit status", tty_session(e, rt));
    seen
}

/// `run -it` under a pty: the size the container sees, before and after a
/// resize, and the exit status it ends with.
fn tty_session(e: &Engine, rt: &str) -> String {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let pty = nix::pty::openpty(None, None).unwrap();
    let size = |rows: u16, cols: u16| libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let master_fd = pty.master.as_raw_fd();
    let set = |ws: libc::winsize| {
        // SAFETY: TIOCSWINSZ reads one winsize, which outlives the call.
        unsafe { libc::ioctl(master_fd, libc::TIOCSWINSZ, &ws) };
    };
    set(size(30, 100));
    let mut all = (e.run)(rt);
    all.extend(["-it", "--rm", IMAGE, "sh"].map(String::from));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut cmd = (e.cli)(&refs);
    let slave = pty.slave.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::setsid();
            libc::ioctl(slave, libc::TIOCSCTTY, 0);
            for fd in 0..3 {
                libc::dup2(slave, fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let master = std::fs::File::from(pty.master);
    let reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut r = reader;
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let mut wait_for = |want: &str, within: Duration| -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if out.contains(want) {
                return true;
            }
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(100)) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
        out.contains(want)
    };
    let mut w = &master;
    let prompt = wait_for("# ", Duration::from_secs(60));
    let _ = w.write_all(b"stty size\r");
    let before = wait_for("30 100", Duration::from_secs(20));
    set(size(50, 132));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    );
    // The CLI relays the new size when it gets to it (a loaded machine
    // delays that, under runc too): asked again until it shows.
    let mut after = false;
    for _ in 0..20 {
        let _ = w.write_all(b"stty size\r");
        if wait_for("50 132", Duration::from_secs(1)) {
            after = true;
            break;
        }
    }
    let _ = w.write_all(b"exit 4\r");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    format!("prompt {prompt}, 30x100 {before}, 50x132 after resize {after}, exit {status:?}")
}

/// What is left of scute's for containers whose ids `ids` holds.
fn leftovers(ids: &[String], runtime_root: &Path, state_dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for id in ids {
        for (pid, cmd) in scute_testkit::procs::mentioning(id) {
            if cmd.contains("scute-runc") || cmd.contains("qemu") || cmd.contains("virtiofsd") {
                left.push(format!("process {pid}: {cmd}"));
            }
        }
        for d in [runtime_root.join(id), state_dir.join(id)] {
            if d.exists() {
                left.push(format!("dir {}", d.display()));
            }
        }
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let under = state_dir.join(id).display().to_string();
            if m.lines().any(|l| l.contains(&under)) {
                left.push(format!("mount under {under}"));
            }
        }
        let cg = scute_testkit::procs::cgroups_named(id);
        if !cg.is_empty() {
            left.push(format!("cgroups {cg:?}"));
        }
    }
    left
}

/// Every container id the engine has seen (to look for leftovers by).
fn ids(e: &Engine) -> Vec<String> {
    e.ok(&["ps", "-a", "-q", "--no-trunc"])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn www() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("index.html"), "hello from the volume\n").unwrap();
    d
}

/// Entries of `dirs` (the state roots), to compare before and after.
fn entries(dirs: &[&Path]) -> std::collections::BTreeSet<PathBuf> {
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        // Not a container's: the jail's uid records (`.vmm-uids`).
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect()
}

/// Runs the scenarios under runc and scute and compares them; then no
/// sandbox or runtime state of scute's is left.
fn agree(e: &Engine, port: u16, runtime_root: &Path, state_dir: &Path) {
    let www = www();
    let runc = scenarios(e, "runc", port, www.path());
    // Both this engine's own: other tests' containers come and go in
    // theirs.
    let roots = [runtime_root, state_dir];
    let before = entries(&roots);
    let scute = scenarios(e, "scute", port + 1, www.path());
    for (k, v) in &runc {
        assert_eq!(
            Some(v),
            scute.get(k),
            "{}: {k:?} differs (runc: {v:?}; scute: {:?})",
            e.name,
            scute.get(k)
        );
    }
    eprintln!("{}: runc and scute agree on {:#?}", e.name, scute);
    // The HTTP answer and the terminal are the ones expected, not merely
    // the same.
    assert_eq!(scute["HTTP through -p"], "hello from the volume");
    assert!(
        scute["terminal, resize, exit status"].ends_with("exit Some(4)"),
        "{scute:?}"
    );
    assert!(
        !scute["terminal, resize, exit status"].contains("false"),
        "{scute:?}"
    );
    assert_eq!(scute["--memory 64m, out of memory"], "137");
    assert_eq!(
        scute["update --memory 64m, then out of memory"],
        "true 137: "
    );
    assert_eq!(scute["healthcheck"], "healthy then unhealthy");
    assert_eq!(scute["kill -s USR1 then wait"], "7");
    // The config that names it reached scute-runc (else the check below
    // would look at an empty dir).
    assert!(
        state_dir.is_dir(),
        "{}: scute-runc never used {}",
        e.name,
        state_dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let new: Vec<_> = entries(&roots).difference(&before).cloned().collect();
        if new.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: left behind: {new:#?}",
            e.name
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn docker_runs_the_same_under_runc_and_scute() {
    let d = Dockerd::start(&bin_dir(), &scute_runc(), false, &[]).expect("dockerd");
    d.load_busybox().expect("docker load");
    let e = docker(&d);
    let state_dir = d.state_dir.clone().expect("its own scute config");
    agree(
        &e,
        18600 + (std::process::id() % 100) as u16 * 2,
        &d.runtime_root(),
        &state_dir,
    );
    // A privileged container can't make a :ro volume writable on the host.
    ro_volume_holds(&e);
    // Docker's embedded DNS (127.0.0.11 in the container's namespace) on
    // a user-defined network.
    let net = format!("scute-udn{}", std::process::id());
    e.ok(&["network", "create", &net]);
    names_resolve(&e, &["--network", &net]);
    e.ok(&["network", "rm", &net]);
    let state: Vec<_> = std::fs::read_dir(d.runtime_root())
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        state.is_empty(),
        "state left under {}: {state:?}",
        d.runtime_root().display()
    );
}

#[test]
fn podman_runs_the_same_under_runc_and_scute() {
    let p = Podman::new(&scute_runc()).expect("podman");
    p.load_busybox().expect("podman load");
    let e = podman(&p);
    agree(
        &e,
        18800 + (std::process::id() % 100) as u16 * 2,
        &p.runtime_root(),
        &p.state_dir,
    );
    ro_volume_holds(&e);
    // aardvark-dns on the test's own network (its runs join it).
    names_resolve(&e, &[]);
}

/// On a user-defined network (`net`: the options that join it), a
/// container reaches another by its name, under runc and under scute.
fn names_resolve(e: &Engine, net: &[&str]) {
    let srv = format!("srv-{}-{}", e.name, std::process::id());
    let mut args = vec!["-d", "--name", &srv];
    args.extend(net);
    args.extend([
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /w && echo hi > /w/i && exec httpd -f -p 8080 -h /w",
    ]);
    let o = e.run("runc", &args);
    assert!(
        o.status.success(),
        "{}: server: {}",
        e.name,
        text(&o.stderr)
    );
    let url = format!("http://{srv}:8080/i");
    for rt in ["runc", "scute"] {
        let mut args = vec!["--rm"];
        args.extend(net);
        args.extend([IMAGE, "wget", "-qO-", &url]);
        let mut got = String::new();
        // The server's httpd may need a moment; bounded.
        for _ in 0..10 {
            let o = e.run(rt, &args);
            got = format!("{} {}", text(&o.stdout), text(&o.stderr));
            if o.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(got.trim(), "hi", "{} under {rt}: {url}", e.name);
    }
    e.ok(&["rm", "-f", &srv]);
}

fn ro_volume_holds(e: &Engine) {
    let dir = www();
    let vol = format!("{}:/data:ro", dir.path().display());
    let o = e.run(
        "scute",
        &["--rm", "--privileged", "-v", &vol, IMAGE, "sh", "-c", "mount -o remount,rw /data; echo owned > /data/index.html; echo pwned > /data/new; cat /data/index.html"],
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("index.html")).unwrap(),
        "hello from the volume\n",
        "{}: {}",
        e.name,
        text(&o.stderr)
    );
    assert!(!dir.path().join("new").exists());
}

/// `run --rm` cycles, `par` at a time: every one exits 0, and nothing of
/// scute's is left afterwards.
fn cycles(e: &Engine, n: usize, par: usize, runtime_root: &Path, state_dir: &Path) {
    let t0 = Instant::now();
    let names: Vec<String> = (0..n)
        .map(|i| format!("cycle-{}-{i}-{}", e.name, std::process::id()))
        .collect();
    let failures = std::sync::Mutex::new(Vec::new());
    let ids = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for chunk in names.chunks(n.div_ceil(par)) {
            let (failures, ids) = (&failures, &ids);
            s.spawn(move || {
                for name in chunk {
                    let o = e.run(
                        "scute",
                        &[
                            "--rm",
                            "--name",
                            name,
                            "--cidfile",
                            &format!("/tmp/{name}.cid"),
                            IMAGE,
                            "true",
                        ],
                    );
                    if let Ok(id) = std::fs::read_to_string(format!("/tmp/{name}.cid")) {
                        ids.lock().unwrap().push(id.trim().to_owned());
                        let _ = std::fs::remove_file(format!("/tmp/{name}.cid"));
                    }
                    if !o.status.success() {
                        failures.lock().unwrap().push(format!(
                            "{name}: {}: {}",
                            o.status,
                            text(&o.stderr)
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {failures:#?}",
        failures.len()
    );
    let ids = ids.into_inner().unwrap();
    assert_eq!(ids.len(), n, "every run wrote its id");
    eprintln!(
        "{}: {n} run --rm cycles, {par} at a time, in {:?}",
        e.name,
        t0.elapsed()
    );
    // `run --rm` returns once the engine removed the container: what the
    // runtime tears down is gone by then, or within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = leftovers(&ids, runtime_root, state_dir);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: left behind: {left:#?}",
            e.name
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn docker_run_rm_cycles_leave_nothing() {
    let d = Dockerd::start(&bin_dir(), &scute_runc(), false, &[]).expect("dockerd");
    d.load_busybox().expect("docker load");
    let state_dir = d.state_dir.clone().expect("its own scute config");
    cycles(&docker(&d), 100, 4, &d.runtime_root(), &state_dir);
}

#[test]
fn podman_run_rm_cycles_leave_nothing() {
    let p = Podman::new(&scute_runc()).expect("podman");
    p.load_busybox().expect("podman load");
    // No network: netavarks of two podmans with their own network configs
    // (this test's and the scenarios', side by side) both own the host's
    // NETAVARK chains and undo each other's rules. The scenarios test
    // Podman's networking.
    cycles(
        &podman_no_network(&p),
        100,
        4,
        &p.runtime_root(),
        &p.state_dir,
    );
}

/// What a VM can't give is refused at create, with a message that says
/// what to drop, and nothing is left.
#[test]
fn docker_host_namespaces_are_refused_cleanly() {
    let d = Dockerd::start(&bin_dir(), &scute_runc(), false, &[]).expect("dockerd");
    d.load_busybox().expect("docker load");
    let e = docker(&d);
    for (flag, says) in [
        ("--network=host", "--network host"),
        ("--pid=host", "--pid host"),
        ("--ipc=host", "--ipc host"),
    ] {
        let o = e.run("scute", &["--rm", flag, IMAGE, "true"]);
        let err = text(&o.stderr);
        assert_eq!(code(&o), 125, "{flag}: {err}");
        assert!(err.contains(says) && err.contains("VM"), "{flag}: {err}");
    }
    let all = ids(&e);
    let left = leftovers(&all, &d.runtime_root(), d.state_dir.as_deref().unwrap());
    assert!(left.is_empty(), "{left:#?}");
}

/// scute-runc driven directly with runc's command lines, beside runc:
/// the same states, field by field, through a container's life.
#[test]
fn scute_runc_answers_runcs_command_lines_like_runc() {
    let work = tempfile::tempdir().unwrap();
    let bundle =
        scute_testkit::busybox_bundle(&work.path().join("b"), &["sh", "-c", "sleep 600"]).unwrap();
    let id = format!("direct-{}", std::process::id());
    let run = |bin: &Path, root: &Path, args: &[&str]| -> Output {
        Command::new(bin)
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
    };
    let state = |bin: &Path, root: &Path| -> serde_json::Value {
        let o = run(bin, root, &["state", &id]);
        assert!(o.status.success(), "{bin:?} state: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let runc = PathBuf::from("/usr/sbin/runc");
    let mut seen: Vec<BTreeMap<String, String>> = Vec::new();
    for (bin, root) in [
        (runc.clone(), work.path().join("runc")),
        (scute_runc(), work.path().join("scute")),
    ] {
        let mut s = BTreeMap::new();
        let pid_file = work.path().join(format!(
            "{}.pid",
            root.file_name().unwrap().to_string_lossy()
        ));
        // stdio: files (runc's init keeps what create was given: a pipe
        // would never end).
        let err = work.path().join("create.err");
        let o = Command::new(&bin)
            .arg("--root")
            .arg(&root)
            .args([
                "create",
                "--bundle",
                bundle.to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                &id,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        assert!(
            o.success(),
            "{bin:?} create: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        let st = state(&bin, &root);
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        assert_eq!(st["pid"], pid, "{bin:?}: state's pid is the pid file's");
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let mut keys: Vec<_> = st.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        s.insert("keys".into(), keys.join(","));
        for k in ["ociVersion", "id", "status", "bundle", "rootfs"] {
            s.insert(format!("created {k}"), st[k].to_string());
        }
        s.insert(
            "created is RFC 3339".into(),
            humantime::parse_rfc3339(st["created"].as_str().unwrap())
                .is_ok()
                .to_string(),
        );
        let o = run(&bin, &root, &["start", &id]);
        assert!(o.status.success(), "{bin:?} start: {}", text(&o.stderr));
        s.insert(
            "started status".into(),
            state(&bin, &root)["status"].to_string(),
        );
        s.insert(
            "start again".into(),
            code(&run(&bin, &root, &["start", &id])).to_string(),
        );
        let o = run(&bin, &root, &["exec", &id, "sh", "-c", "echo hi; exit 3"]);
        s.insert("exec".into(), format!("{} {}", text(&o.stdout), code(&o)));
        let o = run(&bin, &root, &["ps", "--format", "json", &id]);
        let pids: Vec<i32> = serde_json::from_slice(&o.stdout).unwrap();
        s.insert(
            "ps lists the init's pid".into(),
            pids.contains(&pid).to_string(),
        );
        s.insert(
            "delete while running".into(),
            code(&run(&bin, &root, &["delete", &id])).to_string(),
        );
        s.insert(
            "kill".into(),
            code(&run(&bin, &root, &["kill", &id, "KILL"])).to_string(),
        );
        let t0 = Instant::now();
        while state(&bin, &root)["status"] != "stopped" && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = state(&bin, &root);
        s.insert(
            "stopped".into(),
            format!("{} pid {}", st["status"], st["pid"]),
        );
        s.insert(
            "kill when stopped".into(),
            code(&run(&bin, &root, &["kill", &id, "KILL"])).to_string(),
        );
        s.insert(
            "delete".into(),
            code(&run(&bin, &root, &["delete", &id])).to_string(),
        );
        let o = run(&bin, &root, &["state", &id]);
        s.insert(
            "state after delete".into(),
            format!(
                "{} {}",
                code(&o),
                text(&o.stderr).contains("does not exist")
            ),
        );
        s.insert(
            "list after delete".into(),
            text(&run(&bin, &root, &["list", "-q"]).stdout),
        );
        seen.push(s);
    }
    let (r, sc) = (&seen[0], &seen[1]);
    for (k, v) in r {
        // Paths differ (the state root); the rest must not.
        assert_eq!(
            Some(v),
            sc.get(k),
            "{k}: runc {v:?}, scute-runc {:?}",
            sc.get(k)
        );
    }
}

/// dockerd restarted with live-restore on, then containerd: a scute
/// container keeps running (the same VM) and is still managed afterwards.
#[test]
fn dockerd_restart_keeps_scute_containers() {
    let mut d = Dockerd::start(&bin_dir(), &scute_runc(), true, &[]).expect("dockerd");
    d.load_busybox().expect("docker load");
    let name = format!("live-{}", std::process::id());
    let o = d
        .cli(&[
            "run",
            "-d",
            "--runtime",
            "scute",
            "--name",
            &name,
            IMAGE,
            "sh",
            "-c",
            "echo up; sleep 600",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let vm_before = scute_testkit::procs::mentioning(&format!("scute-{}", text(&o.stdout)));
    assert!(!vm_before.is_empty(), "its VM runs");
    d.restart().expect("restart dockerd");
    let e = docker(&d);
    assert_eq!(e.inspect(&name, "{{.State.Running}}"), "true");
    assert_eq!(e.ok(&["exec", &name, "echo", "still here"]), "still here");
    // containerd too: the runc shim and the keeper don't depend on it.
    drop(e);
    d.containerd.restart().expect("restart containerd");
    let e = docker(&d);
    let t0 = Instant::now();
    while e.out(&["exec", &name, "true"]).status.code() != Some(0) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "docker exec after containerd's restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(e.ok(&["exec", &name, "echo", "and here"]), "and here");
    let vm_after = scute_testkit::procs::mentioning(&format!("scute-{}", text(&o.stdout)));
    assert_eq!(
        vm_before.iter().map(|p| p.0).collect::<Vec<_>>(),
        vm_after.iter().map(|p| p.0).collect::<Vec<_>>(),
        "the same VM"
    );
    e.ok(&["stop", "-t", "1", &name]);
    assert_eq!(e.inspect(&name, "{{.State.ExitCode}}"), "137");
    e.ok(&["rm", &name]);
    let left = leftovers(
        &[text(&o.stdout)],
        &d.runtime_root(),
        d.state_dir.as_deref().unwrap(),
    );
    assert!(left.is_empty(), "{left:#?}");
}

/// With `scute pool` running, Docker's containers take its ready VMs
/// (a bridge network: one interface) and serve through -p as with their
/// own; the pool refills.
#[test]
fn docker_takes_ready_vms_from_the_pool() {
    let root = PathBuf::from(format!("/run/scute-test/runc-pool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let state = root.join("state");
    let cfg = root.join("config.toml");
    std::fs::write(
        &cfg,
        format!("state_dir = \"{}\"\n[pool]\nsize = 1\n", state.display()),
    )
    .unwrap();
    let log = std::fs::File::create(root.join("pool.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let _pool = Kill(
        Command::new(bin_dir().join("scute"))
            .arg("--config")
            .arg(&cfg)
            .arg("pool")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("scute pool"),
    );
    let status = || -> serde_json::Value {
        std::fs::read(state.join("_pool/status.json"))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    };
    let wait_ready = || {
        let t0 = Instant::now();
        while status()["ready"].as_u64().unwrap_or(0) < 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the pool never had a ready VM: {}",
                status()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let cfg_s = cfg.display().to_string();
    let d = Dockerd::start(
        &bin_dir(),
        &scute_runc(),
        false,
        &[("SCUTE_CONFIG", &cfg_s)],
    )
    .expect("dockerd");
    d.load_busybox().expect("docker load");
    let e = docker(&d);
    wait_ready();
    let o = e.run(
        "scute",
        &["--rm", IMAGE, "sh", "-c", "echo from the pool; exit 3"],
    );
    assert_eq!(
        (text(&o.stdout).as_str(), code(&o)),
        ("from the pool", 3),
        "{}",
        text(&o.stderr)
    );
    let handed = || status()["handed_out"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    while handed() < 1 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        handed(),
        1,
        "the container took the pool's VM: {}",
        status()
    );
    // A published port on a pool VM.
    wait_ready();
    let www = www();
    let port = 18900 + (std::process::id() % 100) as u16;
    let name = format!("pooled-web-{}", std::process::id());
    let vol = format!("{}:/www:ro", www.path().display());
    let publish = format!("127.0.0.1:{port}:8080");
    let o = e.run(
        "scute",
        &[
            "-d", "--name", &name, "-p", &publish, "-v", &vol, IMAGE, "httpd", "-f", "-p", "8080",
            "-h", "/www",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let body = scute_testkit::http::get_200_within(
        &format!("127.0.0.1:{port}"),
        "/index.html",
        Duration::from_secs(30),
    );
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("hello from the volume")
    );
    let t0 = Instant::now();
    while handed() < 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(handed(), 2, "{}", status());
    let id = e.inspect(&name, "{{.Id}}");
    e.ok(&["rm", "-f", &name]);
    let t0 = Instant::now();
    loop {
        let left = leftovers(std::slice::from_ref(&id), &d.runtime_root(), &state);
        let in_state = state.join(&id).exists();
        if left.is_empty() && !in_state {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "left: {left:?}, state dir: {in_state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(e);
    drop(d);
    let _ = std::fs::remove_dir_all(&root);
}
