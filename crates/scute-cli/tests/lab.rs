//! `scute lab` end to end against a private containerd, with the real runc,
//! scute's shim, QEMU, virtiofsd and the CNI plugins; the assertions read
//! results.json.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{host_kernel, procs_mentioning, scute, stderr, stdout};
use scute_testkit::containerd::Containerd;
use serde_json::Value;

/// target/release, where the workspace build put containerd-shim-scute-v2.
fn bin_dir() -> PathBuf {
    let dir = Path::new(common::SCUTE).parent().unwrap().to_path_buf();
    assert!(
        dir.join("containerd-shim-scute-v2").is_file(),
        "build the whole workspace first (cargo build --release --workspace)"
    );
    dir
}

fn lab(c: &Containerd, out: &Path, args: &[&str]) -> Output {
    lab_with_path(c, out, args, &bin_dir())
}

/// [`lab`] with `first` at the head of PATH (then target/release).
fn lab_with_path(c: &Containerd, out: &Path, args: &[&str], first: &Path) -> Output {
    let path = format!(
        "{}:{}:{}",
        first.display(),
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = scute(&["lab"]);
    cmd.args(args)
        .arg("--out")
        .arg(out)
        .arg("--address")
        .arg(&c.address)
        .arg("--containerd-config")
        .arg(c.dir.join("config.toml"))
        .env("PATH", path);
    cmd.output().expect("run scute lab")
}

fn results(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
        .expect("valid JSON")
}

fn runtime<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name}"))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn verdict<'a>(rt: &'a Value, id: &str) -> &'a str {
    rt["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no probe {id} for {}", rt["name"]))["verdict"]
        .as_str()
        .unwrap()
}

/// Nothing the lab created is left: containers, tasks, VMs, netns, bridge.
fn assert_lab_left_nothing(c: &Containerd, pid_tag: &str) {
    let ls = c.ctr_ok(&["containers", "ls", "-q"]);
    assert!(
        stdout(&ls).trim().is_empty(),
        "containers left: {}",
        stdout(&ls)
    );
    // A shim answers containerd's Shutdown before it stops its VM and
    // exits (docs/design.md), so its process may outlive `ctr run --rm`
    // by a moment: gone within seconds is nothing left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left = procs_mentioning(pid_tag);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = procs_mentioning(pid_tag);
    }
    assert!(left.is_empty(), "processes left: {left:?}");
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("scute-{}", pid_tag.replace('-', ""))))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(netns.is_empty(), "netns left: {netns:?}");
    assert!(
        !Path::new("/sys/class/net/scute-lab0").exists(),
        "bridge scute-lab0 left"
    );
}

#[test]
fn lab_end_to_end() {
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = lab(
        &c,
        out.path(),
        &[
            "--runs",
            "3",
            "--runtimes",
            "runc,scute",
            "--http-seconds",
            "3",
            "--http-warmup-seconds",
            "1",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // Progress on the terminal: section, runtime, steps left.
    assert!(stderr(&o).contains("isolation · scute:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("0 steps left"), "{}", stderr(&o));
    // The escapes changed nothing on the host.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );

    let r = results(out.path());
    assert_eq!(r["schema_version"], 1);
    let host = host_kernel();
    assert_eq!(r["host"]["kernel"], host.as_str());
    assert!(["kvm", "tcg"].contains(&r["host"]["accel"].as_str().unwrap()));
    // The settings in force for that accelerator, as QEMU gets them.
    let settings = r["host"]["accel_settings"].as_str().unwrap();
    assert!(
        settings.starts_with(&format!("-accel {}", r["host"]["accel"].as_str().unwrap())),
        "{settings}"
    );
    assert_eq!(r["options"]["http_warmup_seconds"], 1);
    let runc = runtime(&r, "runc");
    let vm = runtime(&r, "scute");
    for rt in [runc, vm] {
        assert_eq!(rt["available"], true, "{rt}");
        assert_eq!(rt["errors"], serde_json::json!([]), "{}", rt["errors"]);
        assert_eq!(rt["http"]["status"], 200);
        assert_eq!(rt["http"]["warmup_seconds"], 1);
        // The warm-up ran, before the measured load, and says it isn't counted.
        let cmds: Vec<&str> = rt["commands"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        let warm = cmds.iter().position(|c| {
            c.starts_with("wrk -t1 -c8 -d1s") && c.ends_with("# warm-up, not counted")
        });
        let measured = cmds.iter().position(|c| c.starts_with("wrk -t1 -c8 -d3s"));
        assert!(
            matches!((warm, measured), (Some(w), Some(m)) if w < m),
            "{cmds:?}"
        );
        assert_eq!(rt["workload"]["health_status"], 200);
        let s = &rt["startup_ms"];
        assert_eq!(s["runs"], 3);
        assert!(num(&s["min"]) > 0.0);
        assert!(num(&s["min"]) <= num(&s["median"]) && num(&s["median"]) <= num(&s["max"]));
        assert!(num(&s["median"]) <= num(&s["p95"]) && num(&s["p95"]) <= num(&s["max"]));
        let h = &rt["http"];
        assert!(num(&h["rps"]) > 0.0);
        assert!(num(&h["p50_ms"]) > 0.0);
        assert!(num(&h["p50_ms"]) <= num(&h["p95_ms"]) && num(&h["p95_ms"]) <= num(&h["p99_ms"]));
        assert!(rt["memory_pss_kib"].as_u64().unwrap() > 0);
        assert!(num(&rt["cpu"]["seconds"]) > 0.0);
        assert!(num(&rt["file_io"]["write_mib_s"]) > 0.0);
        assert!(num(&rt["file_io"]["read_mib_s"]) > 0.0);
        assert!(!rt["cpu_model"].as_str().unwrap().is_empty());
        assert!(
            rt["cpus_seen"].as_u64().unwrap() >= 1,
            "{}",
            rt["cpus_seen"]
        );
        // Every probe has a verdict, a reason and its raw file.
        for p in rt["probes"].as_array().unwrap() {
            assert!(!p["reason"].as_str().unwrap().is_empty(), "{p}");
            assert!(out.path().join(p["raw"].as_str().unwrap()).is_file(), "{p}");
        }
    }
    // runc shares the host's kernel; scute boots its own.
    assert_eq!(runc["kernel"], host.as_str());
    assert_ne!(vm["kernel"], host.as_str());
    assert_eq!(vm["kernel"], common::guest_kernel().as_str());
    assert_eq!(verdict(runc, "kernel"), "exposed");
    assert_eq!(verdict(vm, "kernel"), "isolated");
    // dmesg: scute's is the guest's own log, even when privileged; runc's
    // privileged container reads the host's.
    assert_eq!(verdict(vm, "dmesg"), "isolated");
    assert_eq!(verdict(vm, "privileged-dmesg"), "isolated");
    assert_eq!(verdict(runc, "privileged-dmesg"), "exposed");
    // The classic escapes reach only the guest under scute.
    for id in [
        "escape-core-pattern",
        "escape-release-agent",
        "escape-module-load",
        "escape-host-disk",
    ] {
        assert_eq!(verdict(vm, id), "isolated", "{id}");
    }
    assert_eq!(verdict(runc, "escape-core-pattern"), "exposed");
    // The host's core_pattern is untouched after scute's container wrote its own.
    let reason = vm["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "escape-core-pattern")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("reached only the guest"), "{reason}");
    // The VM's memory is counted: QEMU and virtiofsd are among the processes.
    let procs = vm["memory_processes"].to_string();
    assert!(
        procs.contains("qemu") && procs.contains("virtiofsd"),
        "{procs}"
    );

    // The reports: both runtimes, analysis from the figures, self-contained HTML.
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    for needle in [
        "## Analysis",
        "| runc |",
        "| scute |",
        "escape-core-pattern",
        "ctr run",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    let median = num(&vm["startup_ms"]["median"]);
    assert!(
        md.contains(&format!("{median:.0} ms")),
        "analysis does not quote the measured median"
    );
    assert!(html.contains("<svg"), "no charts");
    // No attribute that loads anything (the commands shown as text may
    // say `--mount type=bind,src=...`).
    for attr in [" src=", " href=", "<link", "<script src", "url("] {
        assert!(!html.contains(attr), "HTML must not load anything: {attr}");
    }
    assert_lab_left_nothing(&c, &format!("lab-{}", lab_pid(&r)));
}

/// The lab's pid, from the ids it gave its containers (lab-PID-…).
fn lab_pid(r: &Value) -> String {
    let cmds = runtime(r, "runc")["commands"].to_string();
    let i = cmds.find(" lab-").expect("a lab container id") + 5;
    cmds[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect()
}

#[test]
fn lab_missing_runtime_gets_a_row() {
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let out = tempfile::tempdir().unwrap();
    // youki is "installed" but broken: its smoke run fails, and says how.
    let fake = tempfile::tempdir().unwrap();
    let youki = fake.path().join("youki");
    std::fs::write(
        &youki,
        "#!/bin/sh\necho 'youki: broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&youki, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = lab_with_path(
        &c,
        out.path(),
        &[
            "--runtimes",
            "runc,kata,youki",
            "--only",
            "setup",
            "--runs",
            "1",
        ],
        fake.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let r = results(out.path());
    let kata = runtime(&r, "kata");
    assert_eq!(kata["available"], false);
    let why = kata["unavailable_reason"].as_str().unwrap();
    assert!(why.contains("containerd-shim-kata-v2"), "{why}");
    assert_eq!(runtime(&r, "runc")["available"], true);
    assert_eq!(runtime(&r, "runc")["kernel"], host_kernel().as_str());
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    let youki = runtime(&r, "youki");
    assert_eq!(youki["available"], false);
    let why = youki["unavailable_reason"].as_str().unwrap();
    assert!(why.starts_with("smoke run failed"), "{why}");
    assert!(md.contains("| youki | no: smoke run failed"), "{md}");
    assert!(md.contains("| kata | no: not installed"), "{md}");
    assert!(stdout(&o).contains("| kata | no"), "{}", stdout(&o));
    assert_lab_left_nothing(&c, &format!("lab-{}", lab_pid(&r)));
}

#[test]
fn lab_bad_input_is_explained() {
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("report");
    let cases: &[(&[&str], &str)] = &[
        (&["--runs", "0"], "--runs must be at least 1"),
        (&["--only", "setup,bogus"], "unknown section \"bogus\""),
        (&["--runtimes", "runc,docker"], "unknown runtime \"docker\""),
        (&["--http-seconds", "0"], "--http-seconds must be between"),
        (
            &["--http-warmup-seconds", "601"],
            "--http-warmup-seconds must be between",
        ),
        (&["--cpus", "0.001"], "--cpus must be between 0.01 and 64"),
    ];
    for (args, msg) in cases {
        let o = lab(&c, &report, args);
        assert_eq!(o.status.code(), Some(125), "{args:?}");
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
        assert!(!report.exists(), "{args:?} created the report dir");
    }
    // Not root: says so before touching anything. (A copy of the binary
    // that user "nobody" can reach wherever the checkout lives.)
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        bin.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::copy(common::SCUTE, bin.path().join("scute")).unwrap();
    let mut cmd = std::process::Command::new(bin.path().join("scute"));
    cmd.args(["lab", "--out"]).arg(&report).current_dir("/");
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
    assert!(!report.exists());
    // No containerd at the address: says so and what to do.
    let mut cmd = scute(&["lab", "--address", "/run/scute-test/nothing.sock", "--out"]);
    cmd.arg(&report);
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("containerd not reachable"),
        "{}",
        stderr(&o)
    );
    assert!(!report.exists());
}

#[test]
fn lab_cpus_reach_every_runtime() {
    // `--cpus 3` on any host: runc's containers still see every host CPU
    // (a quota, not fewer CPUs), scute's VM gets 3 vCPUs.
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let out = tempfile::tempdir().unwrap();
    let args = ["--only", "setup", "--runtimes", "runc,scute", "--cpus", "3"];
    let o = lab(&c, out.path(), &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let r = results(out.path());
    assert_eq!(r["options"]["cpus"], 3.0);
    // Counted as the smoke run counts them (a quota or affinity of the
    // test's own does not change what /proc/cpuinfo lists).
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u64;
    assert_eq!(runtime(&r, "runc")["cpus_seen"], host);
    assert_eq!(runtime(&r, "scute")["cpus_seen"], 3);
    let smoke = runtime(&r, "scute")["smoke"]["command"].as_str().unwrap();
    assert!(smoke.contains("--cpus 3"), "{smoke}");
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("every container ran with `--cpus 3`"), "{md}");
    assert_lab_left_nothing(&c, &format!("lab-{}", lab_pid(&r)));
}

#[test]
fn lab_runs_another_image_on_its_own_port() {
    // An application image with its own default command and port, as the
    // lab's juice-shop on 3000; and one that cannot be pulled, which gets an
    // error in its row while the run goes on.
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let tar = c.dir.join("web.tar");
    let name = "docker.io/library/scute-web:1";
    scute_testkit::image::image_tar(
        &tar,
        name,
        &[
            "sh",
            "-c",
            "mkdir -p /w && echo web > /w/index.html && exec httpd -f -p 3000 -h /w",
        ],
        &[3000],
    )
    .unwrap();
    c.ctr_ok(&["images", "import", &tar.to_string_lossy()]);
    let out = tempfile::tempdir().unwrap();
    let workload = |image: &str, port: &str| {
        let args = [
            "--image",
            image,
            "--port",
            port,
            "--only",
            "workload",
            "--runtimes",
            "runc",
        ];
        let o = lab(&c, out.path(), &args);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        results(out.path())
    };
    let r = workload(name, "3000");
    let runc = runtime(&r, "runc");
    assert_eq!(runc["errors"], serde_json::json!([]), "{}", runc["errors"]);
    assert_eq!(runc["workload"]["image"], name);
    assert_eq!(runc["workload"]["container_port"], 3000);
    assert_eq!(runc["workload"]["health_status"], 200);

    let r = workload("localhost:1/none:1", "80");
    let err = runtime(&r, "runc")["errors"].to_string();
    assert!(err.contains("could not be pulled"), "{err}");
    assert!(runtime(&r, "runc")["workload"].is_null());
    assert_lab_left_nothing(&c, &format!("lab-{}", lab_pid(&r)));
}

#[test]
fn lab_interrupted_removes_what_it_started() {
    use std::io::{BufRead, BufReader};
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let out = tempfile::tempdir().unwrap();
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap());
    let mut child = scute(&[
        "lab",
        "--runtimes",
        "runc",
        "--only",
        "workload,isolation",
        "--address",
    ])
    .arg(&c.address)
    .arg("--out")
    .arg(out.path())
    .env("PATH", path)
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "lab ended early: {seen}"
        );
        seen.push_str(&line);
        if line.contains("workload · runc") {
            break;
        }
    }
    // Mid-step: once containerd lists the workload's container, however
    // long that takes here (bounded), so there is something to undo.
    let prefix = format!("lab-{pid}-runc-");
    let t = std::time::Instant::now();
    while !String::from_utf8_lossy(&c.ctr_ok(&["container", "ls", "-q"]).stdout).contains(&prefix) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "no workload container after 60 s: {seen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(125), "{seen}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(!out.path().join("results.json").exists());
    assert_lab_left_nothing(&c, &format!("lab-{pid}-"));
}

#[test]
fn lab_sweeps_what_a_killed_lab_left() {
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let img = c.import_busybox().unwrap();
    // A pid no process has: what a SIGKILLed lab would have left.
    let dead = (900_000..999_999)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let cid = format!("lab-{dead}-runc-http");
    c.ctr_ok(&["run", "-d", img, &cid, "sleep", "600"]);
    let net = scute_testkit::cni::Network::bridge("scute-lab", "scute-lab0", "10.98.0.0/24");
    let att = net.attach(&format!("lab{dead}w0"), &[]).unwrap();
    let ns = att.netns_path().to_path_buf();
    std::mem::forget(att);
    assert!(ns.exists());
    let out = tempfile::tempdir().unwrap();
    let o = lab(
        &c,
        out.path(),
        &["--runtimes", "runc", "--only", "setup", "--runs", "1"],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains(&format!("removing container {cid}")),
        "{}",
        stderr(&o)
    );
    assert!(!ns.exists(), "stale netns {} still there", ns.display());
    assert_lab_left_nothing(&c, &format!("lab-{dead}-"));
}

/// Probe id → verdict of runtime `name`.
fn verdicts(r: &Value, name: &str) -> std::collections::BTreeMap<String, String> {
    runtime(r, name)["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `scute lab --engine ENGINE` (only setup, workload, isolation; runc and
/// scute) into `out`, with `env` (where the engine is).
fn lab_engine(engine: &str, out: &Path, env: &[(&str, String)]) -> Value {
    let mut cmd = scute(&["lab", "--engine", engine]);
    cmd.args([
        "--only",
        "setup,workload,isolation",
        "--runtimes",
        "runc,scute",
    ])
    .arg("--out")
    .arg(out)
    .env(
        "PATH",
        format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )
    .envs(env.iter().map(|(k, v)| (k, v)));
    let o = cmd.output().expect("run scute lab");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let r = results(out);
    assert_eq!(r["setup"]["engine"], engine);
    r
}

/// Sandboxes left in an engine's scute state dir (not the jail's uid
/// records, `.vmm-uids`).
fn sandboxes_left(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect()
}

/// The lab through containerd with ctr, then through a private dockerd
/// (`docker run --runtime runc|scute`) and a private podman (`podman run
/// --runtime PATH`): scute's containers get the same isolation verdicts
/// every way, runc's too where its containers ran; the workload is
/// published with `-p`; the report says which engine ran; nothing is left
/// in the engines.
#[test]
fn lab_through_docker_and_podman_judges_as_through_ctr() {
    let c = Containerd::start(&bin_dir(), &[]).expect("start containerd");
    let by_ctr = tempfile::tempdir().unwrap();
    let o = lab(
        &c,
        by_ctr.path(),
        &[
            "--only",
            "setup,workload,isolation",
            "--runtimes",
            "runc,scute",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let rc = results(by_ctr.path());
    assert_eq!(rc["setup"]["engine"], "containerd");
    let (vc, rcv) = (verdicts(&rc, "scute"), verdicts(&rc, "runc"));
    assert!(vc.len() >= 20, "{vc:?}");

    let d = scute_testkit::engine::Dockerd::start(
        &bin_dir(),
        &bin_dir().join("scute-runc"),
        false,
        &[],
    )
    .expect("start dockerd");
    let docker_host = format!("unix://{}/docker.sock", d.dir.display());
    let by_docker = tempfile::tempdir().unwrap();
    let rd = lab_engine("docker", by_docker.path(), &[("DOCKER_HOST", docker_host)]);
    assert!(
        rd["setup"]["engine_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("20.")),
        "{}",
        rd["setup"]
    );
    let md = std::fs::read_to_string(by_docker.path().join("report.md")).unwrap();
    assert!(md.contains("Engine: Docker 20."), "{md}");
    assert_eq!(
        runtime(&rd, "scute")["runtime_type"],
        "docker --runtime scute"
    );
    let ps = d.cli(&["ps", "-a", "-q"]).output().unwrap();
    assert!(
        stdout(&ps).trim().is_empty(),
        "left in dockerd: {}",
        stdout(&ps)
    );
    let left = sandboxes_left(d.state_dir.as_deref().unwrap());
    assert!(left.is_empty(), "sandboxes left: {left:?}");
    drop(d);

    let p = scute_testkit::engine::Podman::new(&bin_dir().join("scute-runc")).expect("podman");
    // scute-runc gets the podman's own state dir through the lab's config.
    let env: Vec<(&str, String)> = p
        .env()
        .into_iter()
        .map(|(k, v)| (k, v.display().to_string()))
        .collect();
    let by_podman = tempfile::tempdir().unwrap();
    let rp = {
        let mut cmd_env = env.clone();
        cmd_env.push((
            "SCUTE_CONFIG",
            p.dir.join("scute.toml").display().to_string(),
        ));
        lab_engine("podman", by_podman.path(), &cmd_env)
    };
    let ps = p.cli(&["ps", "-a", "-q"]).output().unwrap();
    assert!(
        stdout(&ps).trim().is_empty(),
        "left in podman: {}",
        stdout(&ps)
    );
    let left = sandboxes_left(&p.state_dir);
    assert!(left.is_empty(), "sandboxes left: {left:?}");

    for (engine, r) in [("docker", &rd), ("podman", &rp)] {
        let scute = runtime(r, "scute");
        assert!(
            scute["errors"].as_array().unwrap().is_empty(),
            "{engine}: {}",
            scute["errors"]
        );
        assert_eq!(scute["workload"]["health_status"], 200, "{engine}");
        let cmds = scute["commands"].to_string();
        assert!(cmds.contains("-p 127.0.0.1:"), "{engine}: {cmds}");
        // The same probes, the same verdicts.
        assert_eq!(vc, verdicts(r, "scute"), "{engine}");
        // runc's too, for the probes that ran both ways (a host whose
        // bounding set lacks a capability refuses Docker's --privileged
        // to runc, which the lab reports as an error).
        let rv = verdicts(r, "runc");
        let common: Vec<&String> = rv.keys().filter(|k| rcv.contains_key(*k)).collect();
        assert!(common.len() >= 10, "{engine}: {rv:?}");
        for k in common {
            assert_eq!(rcv[k], rv[k], "{engine}: runc's {k}");
        }
        let left = procs_mentioning(&format!("lab-{}", lab_pid(r)));
        assert!(left.is_empty(), "{engine}: processes left: {left:?}");
    }
}
