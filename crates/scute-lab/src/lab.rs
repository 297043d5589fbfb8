//! The lab run: setup evidence, the same HTTP workload under every runtime,
//! the isolation probes and the benchmarks, through one containerd with
//! `ctr`, then results.json and the reports. A runtime that is missing or
//! fails gets a row saying so; the run goes on.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use scute_testkit::cni::{Network, PortMapping};

use crate::ctr::Outcome;
use crate::engine::{self, Bind, Engine, Net, Spec};
use crate::measure;
use crate::probes::{self, HostFacts, Set};
use crate::results::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Setup,
    Workload,
    Isolation,
    Performance,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Setup,
        Section::Workload,
        Section::Isolation,
        Section::Performance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Setup => "setup",
            Section::Workload => "workload",
            Section::Isolation => "isolation",
            Section::Performance => "performance",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s.trim())
            .with_context(|| {
                format!("unknown section {s:?}: use setup, workload, isolation, performance")
            })
    }
}

/// A runtime the lab knows how to run through containerd.
pub struct Known {
    pub name: &'static str,
    pub kind: RuntimeKind,
    pub runtime_type: &'static str,
    /// `ctr run --runc-binary` for OCI runtimes behind the runc shim.
    pub runc_binary: Option<&'static str>,
    /// Binaries that must be on PATH; the first one's `--version` is shown.
    pub needs: &'static [&'static str],
    /// Its runc-compatible command, which Docker and Podman run
    /// (`--runtime`); None: not usable through them.
    pub oci_binary: Option<&'static str>,
    /// Shell to install it, for the "missing" row.
    pub install: &'static str,
}

pub const KNOWN: &[Known] = &[
    Known {
        name: "runc",
        oci_binary: Some("runc"),
        kind: RuntimeKind::SharedKernel,
        runtime_type: "io.containerd.runc.v2",
        runc_binary: None,
        needs: &["runc", "containerd-shim-runc-v2"],
        install: "apt-get install runc containerd",
    },
    Known {
        name: "scute",
        oci_binary: Some("scute-runc"),
        kind: RuntimeKind::Vm,
        runtime_type: scute_runtime::RUNTIME_TYPE,
        runc_binary: None,
        needs: &["containerd-shim-scute-v2"],
        install: "make install",
    },
    Known {
        name: "crun",
        oci_binary: Some("crun"),
        kind: RuntimeKind::SharedKernel,
        runtime_type: "io.containerd.runc.v2",
        runc_binary: Some("crun"),
        needs: &["crun", "containerd-shim-runc-v2"],
        install: "apt-get install crun",
    },
    Known {
        name: "youki",
        oci_binary: Some("youki"),
        kind: RuntimeKind::SharedKernel,
        runtime_type: "io.containerd.runc.v2",
        runc_binary: Some("youki"),
        needs: &["youki", "containerd-shim-runc-v2"],
        install: "see https://github.com/youki-dev/youki",
    },
    Known {
        name: "kata",
        oci_binary: None,
        kind: RuntimeKind::Vm,
        runtime_type: "io.containerd.kata.v2",
        runc_binary: None,
        needs: &["containerd-shim-kata-v2"],
        install: "see https://github.com/kata-containers/kata-containers",
    },
    Known {
        name: "runsc",
        oci_binary: Some("runsc"),
        kind: RuntimeKind::UserKernel,
        runtime_type: "io.containerd.runsc.v1",
        runc_binary: None,
        needs: &["containerd-shim-runsc-v1", "runsc"],
        install: "see https://gvisor.dev/docs/user_guide/install/",
    },
];

pub fn known(name: &str) -> anyhow::Result<&'static Known> {
    KNOWN.iter().find(|k| k.name == name).with_context(|| {
        format!(
            "unknown runtime {name:?}: the lab knows {}",
            KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        )
    })
}

#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    pub runtimes: Vec<String>,
    pub runs: usize,
    pub only: Vec<Section>,
    /// None: the built-in busybox httpd image.
    pub image: Option<String>,
    /// Container port of `image`'s HTTP server.
    pub port: Option<u16>,
    pub address: PathBuf,
    pub containerd_config: PathBuf,
    pub http_seconds: u32,
    pub http_connections: u32,
    /// Seconds of load before the measured ones, not counted.
    pub http_warmup_seconds: u32,
    /// `--cpus` for every container of every runtime.
    pub cpus: Option<f64>,
    pub scute_config: Option<PathBuf>,
    /// What runs the containers: containerd (`ctr`), Docker or Podman.
    pub engine: engine::Kind,
    /// The command line, for the report.
    pub command: String,
    pub scute_version: String,
}

const BUILTIN_PORT: u16 = 8080;
const BUILTIN_HTTPD: &str = "mkdir -p /tmp/www && printf '<!doctype html><title>scute lab</title><h1>Hello from %s</h1>\\n' \"$(uname -r)\" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";
const CPU_MIB: u64 = 32;
const IO_MIB: u64 = 64;
/// Timings in centiseconds from the kernel's clock inside the container
/// (as a number: the digits of a young VM's uptime, "0.08", read as "008"
/// were an invalid octal number to the shell):
/// md5sum of CPU_MIB of zeros; IO_MIB written with fsync; the file re-read
/// until half a second has passed (at most 64 times).
fn perf_script() -> String {
    format!(
        "c() {{ awk '{{ printf \"%d\\n\", $1 * 100 + 0.5 }}' /proc/uptime; }}; \
         a=$(c); head -c {cpu} /dev/zero | md5sum >/dev/null; b=$(c); echo \"cpu=$((b-a))\"; \
         a=$(c); dd if=/dev/zero of=/lab-io bs=1M count={io} conv=fsync 2>/dev/null; b=$(c); echo \"write=$((b-a))\"; \
         n=0; a=$(c); while [ $n -lt 64 ]; do cat /lab-io >/dev/null; n=$((n+1)); b=$(c); [ $((b-a)) -ge 50 ] && break; done; \
         echo \"read=$n $((b-a))\"; rm -f /lab-io",
        cpu = CPU_MIB << 20,
        io = IO_MIB
    )
}
const SMOKE: &str = "uname -r; cat /proc/version; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'; echo \"cpus=$(grep -c ^processor /proc/cpuinfo)\"";

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM stop the lab between steps, so that what the current
/// step started is removed on the way out (children get the default action
/// back at exec).
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted: the lab's containers and networks were removed; no report written");
    }
    Ok(())
}

/// Prints "[k/n] section · runtime: what (m left)" on stderr.
struct Progress {
    done: usize,
    total: usize,
}

impl Progress {
    fn step(&mut self, section: &str, runtime: &str, what: &str) -> anyhow::Result<()> {
        check_interrupted()?;
        self.done += 1;
        let left = self.total.saturating_sub(self.done);
        eprintln!(
            "[{}/{}] {section} · {runtime}: {what} ({left} step{} left)",
            self.done,
            self.total,
            if left == 1 { "" } else { "s" }
        );
        Ok(())
    }
}

/// Deletes the lab's bridge when dropped, unless another lab running at the
/// same time still has interfaces on it.
struct Bridge(&'static str);

impl Drop for Bridge {
    fn drop(&mut self) {
        let dev = Path::new("/sys/class/net").join(self.0);
        let ports = std::fs::read_dir(dev.join("brif")).map_or(0, |d| d.count());
        if dev.exists() && ports == 0 {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", self.0])
                .status();
        }
    }
}

/// The pid in a name the lab gave (`lab-PID-…` containers, `scute-labPIDw0`
/// netns), when that lab process is gone.
fn dead_owner(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    !pid.is_empty()
        && pid != std::process::id().to_string()
        && !Path::new("/proc").join(&pid).exists()
}

/// Removes what an earlier lab left when it was killed: its containers in
/// this containerd and its CNI network namespaces.
fn sweep_stale(engine: &Engine, network: &Network) {
    for id in engine.containers().iter().filter(|l| dead_owner(l, "lab-")) {
        eprintln!("lab: removing container {id} left by an earlier, interrupted lab");
        engine.remove(id);
    }
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    for ns in netns.iter().filter(|n| dead_owner(n, "scute-lab")) {
        eprintln!("lab: removing network namespace {ns} left by an earlier, interrupted lab");
        if let Err(e) = network.release(ns.trim_start_matches("scute-")) {
            eprintln!("lab: {ns}: {e}");
        }
    }
}

/// One runtime's state during the run.
struct Rt {
    known: &'static Known,
    r: RuntimeResult,
}

pub fn run(opts: &Options) -> anyhow::Result<Results> {
    let (selected, engine, server_version) = preflight(opts)?;
    // raw/ is the lab's own: evidence of an earlier run must not mix in.
    let _ = std::fs::remove_dir_all(opts.out.join("raw"));
    std::fs::create_dir_all(opts.out.join("raw"))
        .with_context(|| format!("create {}", opts.out.display()))?;

    let config = scute_runtime::Config::load(opts.scute_config.as_deref())?;
    let (host, facts) = host_facts(&config)?;
    if facts.boot_id.is_empty() {
        bail!("cannot read /proc/sys/kernel/random/boot_id: the probes need it to tell the host's kernel from a guest's");
    }
    let setup = setup_evidence(opts, &config, &engine, server_version);
    let image = opts
        .image
        .clone()
        .unwrap_or_else(|| scute_testkit::image::IMAGE.to_owned());
    let mut housekeeping = Vec::new();
    engine.ensure_image(scute_testkit::image::IMAGE, &mut housekeeping)?;

    let mut rts = detect_all(&selected, &engine);
    let steps: Vec<&Step> = STEPS.iter().filter(|s| s.runs_in(&opts.only)).collect();
    let available = rts.iter().filter(|r| r.r.available).count();
    // Each runtime: its smoke run, then the steps.
    let mut progress = Progress {
        done: 0,
        total: available * (1 + steps.len()),
    };
    let network = Network::bridge("scute-lab", "scute-lab0", "10.98.0.0/24");
    sweep_stale(&engine, &network);
    let bridge = Bridge("scute-lab0");
    let mut lab = Lab {
        engine: &engine,
        opts,
        image: &image,
        busybox: scute_testkit::image::IMAGE,
        network: &network,
        facts: &facts,
        config: &config,
        raw: PathBuf::new(),
        prefix: String::new(),
        idx: 0,
    };
    for (idx, rt) in rts.iter_mut().enumerate().filter(|(_, r)| r.r.available) {
        lab.each(idx, &rt.r.name)?;
        run_one(&lab, rt, &steps, &mut progress)?;
    }
    check_interrupted()?;
    drop(bridge);
    let runtimes = rts.into_iter().map(|r| r.r).collect();
    let results = results(opts, image, host, setup, runtimes);
    write_outputs(&opts.out, &results)?;
    Ok(results)
}

/// The run's record, as results.json has it.
fn results(
    opts: &Options,
    image: String,
    host: Host,
    setup: Setup,
    runtimes: Vec<RuntimeResult>,
) -> Results {
    Results {
        schema_version: SCHEMA_VERSION,
        scute_version: opts.scute_version.clone(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        command: opts.command.clone(),
        options: RunOptions {
            runs: opts.runs,
            only: opts.only.iter().map(|s| s.name().to_owned()).collect(),
            image,
            port: opts.port.unwrap_or(BUILTIN_PORT),
            http_seconds: opts.http_seconds,
            http_connections: opts.http_connections,
            http_warmup_seconds: opts.http_warmup_seconds,
            cpus: opts.cpus,
        },
        host,
        setup,
        runtimes,
    }
}

/// The runtimes asked for, each found or not (said so here).
fn detect_all(selected: &[&'static Known], engine: &Engine) -> Vec<Rt> {
    let rts: Vec<Rt> = selected.iter().map(|k| detect(k, engine)).collect();
    for rt in rts.iter().filter(|r| !r.r.available) {
        let why = rt.r.unavailable_reason.as_deref().unwrap_or("");
        eprintln!("lab: {} is not available: {why}", rt.r.name);
    }
    rts
}

/// Checks the options and the host: the runtimes asked for, root, and an
/// engine that answers (its server's version).
fn preflight(opts: &Options) -> anyhow::Result<(Vec<&'static Known>, Engine, String)> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if opts.runtimes.is_empty() {
        bail!("--runtimes is empty: name at least one of runc, scute, crun, youki, kata, runsc");
    }
    let selected: Vec<&Known> = opts
        .runtimes
        .iter()
        .map(|n| known(n))
        .collect::<anyhow::Result<_>>()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("scute lab needs root (containerd's socket, CNI network namespaces, privileged probes): run it with sudo");
    }
    let mut engine = Engine::new(opts.engine, &opts.address, opts.scute_config.as_deref());
    engine.cpus = opts.cpus;
    catch_interrupts();
    let version = engine.server_version()?;
    Ok((selected, engine, version))
}

/// One runtime's smoke run, then every step; a step's failure is filed in
/// the runtime's errors and the next step runs.
fn run_one(lab: &Lab, rt: &mut Rt, steps: &[&Step], progress: &mut Progress) -> anyhow::Result<()> {
    let name = rt.r.name.clone();
    progress.step(
        "setup",
        &name,
        "smoke run (uname -r, /proc/version, CPU model, CPUs)",
    )?;
    smoke(
        lab.engine,
        rt,
        lab.busybox,
        &format!("{}-smoke", lab.prefix),
        &lab.raw,
    )?;
    if !rt.r.available {
        eprintln!(
            "lab: {name} failed its smoke run: {}",
            rt.r.unavailable_reason.as_deref().unwrap_or("")
        );
        progress.done += steps.len();
        return Ok(());
    }
    for step in steps {
        let what = (step.what)(lab);
        progress.step(step.sections[0].name(), &name, &what)?;
        if let Err(e) = (step.run)(lab, rt) {
            rt.r.errors
                .push(format!("{}: {e:#}", (step.files_as)(&what)));
        }
    }
    Ok(())
}

/// What every step of one runtime works with.
struct Lab<'a> {
    engine: &'a Engine,
    opts: &'a Options,
    /// The workload's image; the probes use [`Lab::busybox`].
    image: &'a str,
    busybox: &'static str,
    network: &'a Network,
    facts: &'a HostFacts,
    config: &'a scute_runtime::Config,
    /// This runtime's evidence dir, container id prefix and index.
    raw: PathBuf,
    prefix: String,
    idx: usize,
}

impl Lab<'_> {
    /// Points the steps at runtime `name` (the `idx`th).
    fn each(&mut self, idx: usize, name: &str) -> anyhow::Result<()> {
        self.raw = self.opts.out.join("raw").join(name);
        std::fs::create_dir_all(&self.raw)?;
        self.prefix = format!("lab-{}-{name}", std::process::id());
        self.idx = idx;
        Ok(())
    }

    /// A CNI attachment id for step `tag`, unique to this lab and runtime.
    fn cni_id(&self, tag: char) -> String {
        format!("lab{}{tag}{}", std::process::id(), self.idx)
    }

    fn isolation(&self, rt: &mut Rt, set: Set, tag: &str) -> anyhow::Result<()> {
        // The ordinary probes get a network, as a real workload: CNI's
        // under containerd, the engine's own bridge under Docker and Podman.
        let net = (set == Set::Default).then(|| (self.network, self.cni_id('p')));
        let id = format!("{}-{tag}", self.prefix);
        let (facts, out) = (self.facts, &self.opts.out);
        isolation(
            self.engine,
            rt,
            self.busybox,
            facts,
            set,
            net,
            &id,
            &self.raw,
            out,
        )
    }
}

/// One step of the lab, run for each runtime when one of its sections is
/// asked for (`--only`): the progress total and the report's error labels
/// follow from this table.
struct Step {
    /// The sections that run it; the first names it in the progress line.
    sections: &'static [Section],
    /// What the progress line says it does.
    what: fn(&Lab) -> String,
    /// What its failure is filed under, from `what`.
    files_as: fn(&str) -> String,
    run: fn(&Lab, &mut Rt) -> anyhow::Result<()>,
}

impl Step {
    fn runs_in(&self, only: &[Section]) -> bool {
        self.sections.iter().any(|s| only.contains(s))
    }
}

const STEPS: &[Step] = &[
    Step {
        // The published-port workload is also what the load test measures.
        sections: &[Section::Workload, Section::Performance],
        what: |l| format!("{} detached with a published port", l.image),
        files_as: |_| "workload".into(),
        run: |l, rt| {
            let load = l.opts.only.contains(&Section::Performance);
            let (cni, id) = (l.cni_id('w'), format!("{}-http", l.prefix));
            workload(l.engine, rt, l.opts, l.image, l.network, &cni, &id, load)
        },
    },
    Step {
        sections: &[Section::Isolation],
        what: |_| "probes in an ordinary container".into(),
        files_as: |w| format!("isolation ({w})"),
        run: |l, rt| l.isolation(rt, Set::Default, "probe"),
    },
    Step {
        sections: &[Section::Isolation],
        what: |_| "escapes in a --privileged container".into(),
        files_as: |w| format!("isolation ({w})"),
        run: |l, rt| l.isolation(rt, Set::Privileged, "priv"),
    },
    Step {
        sections: &[Section::Isolation],
        what: |_| "escapes through the VM's file share, --privileged".into(),
        files_as: |w| format!("isolation ({w})"),
        run: |l, rt| l.isolation(rt, Set::Share, "share"),
    },
    Step {
        sections: &[Section::Isolation],
        what: |_| "its rootfs from the host, as nobody".into(),
        files_as: |_| "isolation (host side)".into(),
        run: |l, rt| {
            let id = format!("{}-host", l.prefix);
            host_side(l.engine, rt, l.busybox, &id, &l.raw, l.facts, &l.opts.out)
        },
    },
    Step {
        sections: &[Section::Performance],
        what: |l| {
            let run = l.engine.program();
            format!("start time, {} × {run} run --rm true", l.opts.runs)
        },
        files_as: |_| "start time".into(),
        run: |l, rt| startup(l.engine, rt, l.busybox, &l.prefix, l.opts.runs, l.config),
    },
    Step {
        sections: &[Section::Performance],
        what: |_| "CPU loop and file I/O in the rootfs".into(),
        files_as: |_| "cpu/io".into(),
        run: |l, rt| {
            cpu_io(
                l.engine,
                rt,
                l.busybox,
                &format!("{}-perf", l.prefix),
                &l.raw,
            )
        },
    },
];
/// results.json, report.md and report.html in `out`.
pub fn write_outputs(out: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    std::fs::write(out.join("report.md"), crate::report::markdown(results))?;
    std::fs::write(out.join("report.html"), crate::report::html(results))?;
    Ok(())
}

/// Whether runtime `k` can run here: under containerd its binaries are on
/// PATH; under Docker or Podman its runc-compatible command is, and Docker
/// knows it by name.
fn detect(k: &'static Known, engine: &Engine) -> Rt {
    let needs: Vec<&str> = match engine.kind {
        engine::Kind::Containerd => k.needs.to_vec(),
        _ => k.oci_binary.into_iter().collect(),
    };
    let found: Vec<Option<PathBuf>> = needs.iter().map(|b| measure::which(b)).collect();
    let missing: Vec<&str> = needs
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    let binary = found.first().cloned().flatten();
    let unavailable = match engine.runtime_usable(k) {
        Err(why) => Some(why),
        Ok(()) if !missing.is_empty() => Some(format!(
            "not installed: {} not on PATH (install: {})",
            missing.join(", "),
            k.install
        )),
        Ok(()) => None,
    };
    let runtime_type = match engine.kind {
        engine::Kind::Containerd => k.runtime_type.to_owned(),
        engine::Kind::Docker => format!("docker --runtime {}", k.name),
        engine::Kind::Podman => format!("podman --runtime {}", k.oci_binary.unwrap_or(k.name)),
    };
    let r = RuntimeResult {
        name: k.name.into(),
        kind: k.kind,
        runtime_type,
        binary: binary.as_ref().map(|p| p.display().to_string()),
        version: binary.as_deref().and_then(measure::version_line),
        available: unavailable.is_none(),
        unavailable_reason: unavailable,
        errors: Vec::new(),
        smoke: None,
        kernel: None,
        proc_version: None,
        cpu_model: None,
        cpus_seen: None,
        workload: None,
        startup_ms: None,
        startup_pool_ms: None,
        http: None,
        cpu: None,
        memory_pss_kib: None,
        memory_processes: Vec::new(),
        file_io: None,
        probes: Vec::new(),
        commands: Vec::new(),
    };
    Rt { known: k, r }
}

fn write_raw(path: &Path, cmd: &str, o: &Outcome) -> anyhow::Result<()> {
    let mut s = format!("$ {cmd}\n");
    s.push_str(&o.combined());
    let _ = writeln!(
        s,
        "\n(exit {:?}, {:.0} ms)",
        o.code,
        o.elapsed.as_secs_f64() * 1000.0
    );
    std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
}

fn smoke(engine: &Engine, rt: &mut Rt, image: &str, id: &str, raw: &Path) -> anyhow::Result<()> {
    let args = engine.run_args(rt.known, &Spec::new(id, image, &["sh", "-c", SMOKE]));
    let o = engine.run(&args, Duration::from_secs(300), &mut rt.r.commands)?;
    write_raw(&raw.join("smoke.txt"), &engine.display(&args), &o)?;
    if !o.ok() {
        // A runtime that failed half-way may leave its container behind.
        engine.remove(id);
    }
    let lines: Vec<&str> = o.stdout.lines().collect();
    rt.r.smoke = Some(Smoke {
        command: engine.display(&args),
        exit_code: o.code.unwrap_or(-1),
        output: o.combined().trim_end().to_owned(),
    });
    if !o.ok() || lines.len() < 2 {
        rt.r.available = false;
        rt.r.unavailable_reason = Some(format!("smoke run failed: {}", o.failure()));
        return Ok(());
    }
    rt.r.kernel = Some(lines[0].trim().to_owned());
    rt.r.proc_version = Some(lines[1].trim().to_owned());
    rt.r.cpu_model = lines
        .get(2)
        .filter(|l| !l.starts_with("cpus="))
        .map(|l| l.trim().to_owned());
    rt.r.cpus_seen = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("cpus="))
        .and_then(|n| n.parse().ok());
    Ok(())
}

/// A host port nobody listens on now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET / until it answers 200 or `limit` passes: the last status seen, and
/// when the 200 came (ms since `since`).
fn health(port: u16, limit: Duration, since: Instant) -> (Option<u16>, Option<f64>) {
    let t = Instant::now();
    let mut status = None;
    let addr = format!("127.0.0.1:{port}");
    while t.elapsed() < limit && !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some((line, _)) = scute_testkit::http::get(&addr, "/") {
            status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            if status == Some(200) {
                return (status, Some(measure::ms(since.elapsed())));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    (status, None)
}

#[allow(clippy::too_many_arguments)]
fn workload(
    engine: &Engine,
    rt: &mut Rt,
    opts: &Options,
    image: &str,
    network: &Network,
    cni_id: &str,
    id: &str,
    measure_load: bool,
) -> anyhow::Result<()> {
    engine.ensure_image(image, &mut rt.r.commands)?;
    let container_port = opts.port.unwrap_or(BUILTIN_PORT);
    let host_port = free_port()?;
    // Under containerd the lab publishes the port with CNI's portmap;
    // Docker and Podman publish it themselves (`-p`).
    let att = if engine.kind == engine::Kind::Containerd {
        let att = network.attach(
            cni_id,
            &[PortMapping {
                host_port,
                container_port,
            }],
        )?;
        rt.r.commands.push(format!(
            "# CNI bridge+portmap: netns {} with 127.0.0.1:{host_port} → {container_port}",
            att.netns_path().display()
        ));
        Some(att)
    } else {
        None
    };
    let cmd: Vec<&str> = if opts.image.is_none() {
        vec!["sh", "-c", BUILTIN_HTTPD]
    } else {
        vec![]
    };
    let mut spec = Spec::new(id, image, &cmd);
    spec.detach = true;
    spec.net = match &att {
        Some(a) => Net::Netns(a.netns_path().to_path_buf()),
        None => Net::Bridge(Some((host_port, container_port))),
    };
    let args = engine.run_args(rt.known, &spec);
    let started = Instant::now();
    let o = engine.run(&args, Duration::from_secs(300), &mut rt.r.commands)?;
    let guard = Removal { engine, id };
    if !o.ok() {
        bail!("{} run -d: {}", engine.program(), o.failure());
    }
    let (status, ready_ms) = health(host_port, Duration::from_secs(180), started);
    check_interrupted()?;
    rt.r.commands.push(format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{host_port}/"
    ));
    rt.r.workload = Some(Workload {
        image: image.into(),
        host_port,
        container_port,
        health_status: status,
        ready_ms,
    });
    if status != Some(200) {
        bail!(
            "no HTTP 200 from 127.0.0.1:{host_port} within 180 s (last status: {})",
            status.map_or("no answer".into(), |s| s.to_string())
        );
    }
    if measure_load {
        // Idle a moment, then the PSS of everything the container costs the host.
        std::thread::sleep(Duration::from_secs(3));
        let (kib, names) = measure::container_pss(&engine.runtime_id(id));
        rt.r.memory_pss_kib = Some(kib);
        rt.r.memory_processes = names;
        rt.r.commands.push(format!(
            "# PSS: sum of Pss in /proc/PID/smaps_rollup of the shim of {id} and its descendants"
        ));
        if opts.http_warmup_seconds > 0 {
            rt.r.commands.push(format!(
                "wrk -t1 -c{} -d{}s http://127.0.0.1:{host_port}/  # warm-up, not counted",
                opts.http_connections, opts.http_warmup_seconds
            ));
            measure::wrk(
                host_port,
                "/",
                opts.http_warmup_seconds,
                opts.http_connections,
            )
            .context("HTTP warm-up")?;
            check_interrupted()?;
        }
        rt.r.commands.push(format!(
            "wrk -t1 -c{} -d{}s http://127.0.0.1:{host_port}/",
            opts.http_connections, opts.http_seconds
        ));
        let l = measure::wrk(host_port, "/", opts.http_seconds, opts.http_connections)?;
        rt.r.http = Some(Http {
            status: 200,
            rps: l.rps,
            p50_ms: l.p50,
            p95_ms: l.p95,
            p99_ms: l.p99,
            connections: opts.http_connections,
            seconds: opts.http_seconds,
            warmup_seconds: opts.http_warmup_seconds,
        });
    }
    drop(guard);
    if let Some(a) = att {
        a.detach()?;
    }
    Ok(())
}

/// Kills and removes a detached container when dropped.
struct Removal<'a> {
    engine: &'a Engine,
    id: &'a str,
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        self.engine.remove(self.id);
    }
}

#[allow(clippy::too_many_arguments)]
fn isolation(
    engine: &Engine,
    rt: &mut Rt,
    image: &str,
    facts: &HostFacts,
    set: Set,
    net: Option<(&Network, String)>,
    id: &str,
    raw: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let script = probes::script(set);
    let cmd = ["sh", "-c", script.as_str()];
    let mut spec = Spec::new(id, image, &cmd);
    let att = match &net {
        Some((n, cni_id)) if engine.kind == engine::Kind::Containerd => {
            Some(n.attach(cni_id, &[])?)
        }
        _ => None,
    };
    spec.net = match (&att, &net) {
        (Some(a), _) => Net::Netns(a.netns_path().to_path_buf()),
        (None, Some(_)) => Net::Bridge(None),
        (None, None) => Net::Loopback,
    };
    spec.env = facts.env();
    // The privileged escapes get two scratch volumes: host dirs only root
    // can reach, removed when this function returns.
    let scratch = match set {
        Set::Privileged => Some(Scratch::new()?),
        _ => None,
    };
    // The share escapes get a host canary dir (a file and a mount) to aim
    // at, and their own container id.
    let canary = match set {
        Set::Share => Some(Canary::new()?),
        _ => None,
    };
    if let Some(c) = &canary {
        // The symlink is named after the id the runtime knows the
        // container by: Docker and Podman choose theirs at create, after
        // the environment is set, so there it is the container's name.
        spec.env
            .push(("LAB_CANARY".into(), c.dir.display().to_string()));
        spec.env.push(("LAB_CID".into(), id.to_owned()));
    }
    if let Some(s) = &scratch {
        for (src, dst, read_only) in [
            (&s.ro, probes::RO_VOLUME, true),
            (&s.rw, probes::RW_VOLUME, false),
        ] {
            spec.binds.push(Bind {
                src: src.clone(),
                dst,
                read_only,
            });
        }
    }
    // As nerdctl, docker and CRI's RuntimeDefault: the default seccomp
    // profile for the ordinary probes.
    spec.seccomp = matches!(set, Set::Default | Set::Host);
    spec.privileged = matches!(set, Set::Privileged | Set::Share);
    let args = engine.run_args(rt.known, &spec);
    let o = engine.run(&args, Duration::from_secs(300), &mut rt.r.commands)?;
    let file = match set {
        Set::Default | Set::Host => "probes.txt",
        Set::Privileged => "probes-privileged.txt",
        Set::Share => "probes-share.txt",
    };
    let volumes = scratch
        .as_ref()
        .map(|s| probes::VolumesAfter::observe(&s.ro, &s.rw));
    write_raw(&raw.join(file), &engine.display(&args), &o)?;
    if !o.ok() {
        engine.remove(id);
    }
    // Judged once the container is gone: removal is when the host acts.
    let canary_after = canary
        .as_ref()
        .map(|c| probes::CanaryAfter::observe(&c.dir, &c.mnt));
    let after = std::fs::read_to_string("/proc/sys/kernel/core_pattern")
        .ok()
        .map(|s| s.trim().to_owned());
    if after.as_deref().is_some_and(|a| a != facts.core_pattern) {
        // The probes never write the host's; should a runtime let a write
        // through anyway, put the host's value back and say so.
        let _ = std::fs::write("/proc/sys/kernel/core_pattern", &facts.core_pattern);
        rt.r.errors.push(format!(
            "the host's core_pattern was changed to {:?} during the probes; restored to {:?}",
            after.as_deref().unwrap_or(""),
            facts.core_pattern
        ));
    }
    let cx = probes::Context {
        host: facts,
        host_core_pattern_after: after,
        volumes,
        canary: canary_after,
    };
    let rel = raw
        .join(file)
        .strip_prefix(out)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| raw.join(file));
    // A container that never ran its script (the runtime refused it) has
    // no verdicts to give: its failure is the step's error.
    if o.stdout.contains("=== probe ") {
        rt.r.probes.extend(probes::evaluate(
            set,
            &o.stdout,
            &cx,
            &rel.display().to_string(),
        ));
    }
    if let Some(a) = att {
        a.detach()?;
    }
    if !o.ok() {
        bail!("probe container: {}", o.failure());
    }
    Ok(())
}

/// The lab's scratch volumes for the privileged escapes: a read-only one
/// holding one file, and a writable one; both 0700 root, removed on drop.
struct Scratch {
    _dir: tempfile::TempDir,
    ro: PathBuf,
    rw: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("scute-lab-volumes-")
            .tempdir()
            .context("create the scratch volumes")?;
        let (ro, rw) = (dir.path().join("ro"), dir.path().join("rw"));
        for d in [&ro, &rw] {
            std::fs::create_dir(d).with_context(|| format!("create {}", d.display()))?;
        }
        std::fs::write(ro.join(probes::RO_FILE), probes::RO_ORIGINAL)
            .context("write the read-only volume's file")?;
        Ok(Self { _dir: dir, ro, rw })
    }
}

/// A host directory for the share escapes to aim at: a file and a tmpfs
/// mounted in it; unmounted and removed when dropped.
struct Canary {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    mnt: PathBuf,
}

impl Canary {
    fn new() -> anyhow::Result<Self> {
        let t = tempfile::Builder::new()
            .prefix("scute-lab-canary-")
            .tempdir()
            .context("create the canary dir")?;
        let dir = t.path().join("canary");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
        std::fs::write(dir.join(probes::CANARY_FILE), probes::CANARY_CONTENT)
            .context("write the canary's file")?;
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=1m,mode=0700"),
        )
        .with_context(|| format!("mount a tmpfs on {}", mnt.display()))?;
        Ok(Self { _dir: t, dir, mnt })
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The host-side probes: an ordinary container writes a file into its
/// rootfs and sleeps; meanwhile the host, as root, finds every host path of
/// that rootfs and tries to read the file as user nobody.
fn host_side(
    engine: &Engine,
    rt: &mut Rt,
    image: &str,
    id: &str,
    raw: &Path,
    facts: &HostFacts,
    out: &Path,
) -> anyhow::Result<()> {
    let write = format!(
        "echo secret > /{f} && chmod 0644 /{f} && sleep 120",
        f = probes::SECRET_FILE
    );
    let cmd = ["sh", "-c", write.as_str()];
    let mut spec = Spec::new(id, image, &cmd);
    spec.detach = true;
    let args = engine.run_args(rt.known, &spec);
    let o = engine.run(&args, Duration::from_secs(180), &mut rt.r.commands)?;
    if !o.ok() {
        engine.remove(id);
        bail!("host-side probe container: {}", o.failure());
    }
    let needles = engine.rootfs_needles(id).join(" ");
    let script = probes::script(Set::Host);
    let mut result = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let r = Command::new("sh")
            .args(["-c", &script])
            .env("CID", &needles)
            .stdin(Stdio::null())
            .output();
        let done = r
            .as_ref()
            .is_ok_and(|r| !String::from_utf8_lossy(&r.stdout).contains("located=0"));
        result = Some(r);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    engine.remove(id);
    let r = result
        .context("the host-side probe never ran")?
        .context("run sh for the host-side probe")?;
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    let file = "probes-host.txt";
    std::fs::write(
        raw.join(file),
        format!("# sh -c (on the host, CID='{needles}')\n{script}\n# stdout\n{stdout}"),
    )
    .with_context(|| format!("write {}", raw.join(file).display()))?;
    let rel = raw
        .join(file)
        .strip_prefix(out)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| raw.join(file));
    let cx = probes::Context {
        host: facts,
        host_core_pattern_after: None,
        volumes: None,
        canary: None,
    };
    rt.r.probes.extend(probes::evaluate(
        Set::Host,
        &stdout,
        &cx,
        &rel.display().to_string(),
    ));
    Ok(())
}

/// The VM size (vCPUs, MiB) scute gives a container that runs with
/// `--cpus`: a pool of another size cannot serve it.
fn vm_size_for_cpus(config: &scute_runtime::Config, cpus: Option<f64>) -> (u32, u32) {
    let spec = match cpus {
        Some(n) => serde_json::json!({"linux": {"resources": {"cpu": {
            "quota": (n * 100_000.0).round() as i64, "period": 100_000}}}}),
        None => serde_json::json!({}),
    };
    scute_runtime::pod::vm_size(&spec, config).unwrap_or((config.vcpus, config.memory_mib))
}

/// `runs` × `ctr run --rm true`. scute boots a VM of its own for each
/// (annotation `io.scute.vm.pool=off`); when a pool runs for its config,
/// another `runs` take a ready VM from it, each waiting for one first.
fn startup(
    engine: &Engine,
    rt: &mut Rt,
    image: &str,
    prefix: &str,
    runs: usize,
    config: &scute_runtime::Config,
) -> anyhow::Result<()> {
    let scute = rt.known.name == "scute";
    // Why scute can't start from a ready VM here (None: a pool serves).
    // With `--cpus` a run may ask for a VM of another size than the
    // pool's (sized as scute sizes it), and would boot its own.
    let (vcpus, memory) = vm_size_for_cpus(config, engine.cpus);
    let no_pool = scute.then(|| match scute_runtime::handover::cannot_serve(config) {
        None if (vcpus, memory) != (config.vcpus, config.memory_mib) => Some(format!(
            "--cpus asks for VMs of {vcpus} vCPUs and the pool's have {}: each run would boot its own",
            config.vcpus
        )),
        other => other,
    });
    if no_pool == Some(None) && engine.kind == engine::Kind::Docker {
        // Docker 20.10 has no --annotation: its containers take a ready VM
        // whenever the pool runs, so only the pool's start is measured.
        rt.r.commands.push(
            "# no start with a VM of its own: a pool runs, and Docker 20.10 cannot pass the annotation that declines it".into(),
        );
    } else {
        let own_vm = vec![(scute_runtime::pod::ANN_VM_POOL.to_owned(), "off".to_owned())];
        rt.r.startup_ms = Some(start_runs(
            engine,
            rt,
            image,
            &format!("{prefix}-start"),
            runs,
            if scute { &own_vm } else { &[] },
            None,
        )?);
    }
    match no_pool {
        None => {}
        Some(Some(why)) => {
            rt.r.commands
                .push(format!("# no start from a ready VM: {why}"))
        }
        Some(None) => {
            rt.r.startup_pool_ms = Some(start_runs(
                engine,
                rt,
                image,
                &format!("{prefix}-pool"),
                runs,
                &[],
                Some(config),
            )?);
        }
    }
    Ok(())
}

fn start_runs(
    engine: &Engine,
    rt: &mut Rt,
    image: &str,
    prefix: &str,
    runs: usize,
    annotations: &[(String, String)],
    pool: Option<&scute_runtime::Config>,
) -> anyhow::Result<Stats> {
    let mut ms = Vec::new();
    for i in 0..runs {
        check_interrupted()?;
        if let Some(config) = pool {
            let t = Instant::now();
            while scute_runtime::handover::status(config).is_some_and(|s| s.ready == 0) {
                if t.elapsed() > Duration::from_secs(120) {
                    bail!("the pool had no ready VM for 120 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let id = format!("{prefix}-{i}");
        let mut spec = Spec::new(&id, image, &["true"]);
        spec.annotations = annotations.to_vec();
        // Docker and Podman start it on their default network, as `docker
        // run --rm IMAGE true` does.
        if engine.kind != engine::Kind::Containerd {
            spec.net = Net::Bridge(None);
        }
        let args = engine.run_args(rt.known, &spec);
        let mut log = Vec::new();
        let o = engine.run(&args, Duration::from_secs(300), &mut log)?;
        if i == 0 {
            if pool.is_some() {
                rt.r.commands
                    .push("# with a ready VM from `scute pool` (each run waits for one)".into());
            }
            rt.r.commands.extend(log);
        }
        if !o.ok() {
            engine.remove(&id);
            bail!("run {}/{runs}: {}", i + 1, o.failure());
        }
        ms.push(measure::ms(o.elapsed));
    }
    Ok(measure::stats(&ms))
}

fn cpu_io(engine: &Engine, rt: &mut Rt, image: &str, id: &str, raw: &Path) -> anyhow::Result<()> {
    let script = perf_script();
    let args = engine.run_args(rt.known, &Spec::new(id, image, &["sh", "-c", &script]));
    let o = engine.run(&args, Duration::from_secs(600), &mut rt.r.commands)?;
    write_raw(&raw.join("perf.txt"), &engine.display(&args), &o)?;
    if !o.ok() {
        if o.timed_out {
            engine.remove(id);
        }
        bail!("{}", o.failure());
    }
    let (cpu, write, read) = parse_perf(&o.stdout);
    // A 10 ms clock: an interval read as 0 is under 10 ms, counted as 5 ms.
    let secs = |cs: u64| (cs as f64 / 100.0).max(0.005);
    if let Some(cs) = cpu {
        rt.r.cpu = Some(Cpu {
            task: format!("md5sum of {CPU_MIB} MiB of zeros"),
            seconds: secs(cs),
        });
    }
    if let (Some(w), Some((n, r))) = (write, read) {
        rt.r.file_io = Some(FileIo {
            mib: IO_MIB,
            write_mib_s: IO_MIB as f64 / secs(w),
            read_mib_s: (IO_MIB * n) as f64 / secs(r),
        });
    }
    if rt.r.cpu.is_none() || rt.r.file_io.is_none() {
        bail!("could not read the timings: {}", o.combined());
    }
    Ok(())
}

/// (cpu cs, write cs, (reads, read cs)) from the perf script's output.
fn parse_perf(out: &str) -> (Option<u64>, Option<u64>, Option<(u64, u64)>) {
    let num = |k: &str| probes::kv(out, k).and_then(|v| v.parse().ok());
    let read = probes::kv(out, "read").and_then(|v| {
        let mut it = v.split_whitespace().map(|x| x.parse::<u64>().ok());
        Some((it.next()??, it.next()??))
    });
    (num("cpu"), num("write"), read.filter(|(n, _)| *n > 0))
}

fn first_line_with(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_owned())
}

/// md5 of the first 4 KiB of `path`, as busybox `head -c 4096 | md5sum` prints it.
fn head_md5(path: &str) -> Option<String> {
    let o = std::process::Command::new("sh")
        .args(["-c", "head -c 4096 \"$1\" | md5sum", "sh", path])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let sum = String::from_utf8_lossy(&o.stdout);
    let sum = sum.split_whitespace().next()?;
    (o.status.success() && sum.len() == 32).then(|| sum.to_owned())
}

fn host_facts(config: &scute_runtime::Config) -> anyhow::Result<(Host, HostFacts)> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let count = |p: &str| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let (accel, accel_reason, accel_settings) =
        match scute_hypervisor::accel::decide(config.accel, &scute_hypervisor::RealHost) {
            Ok(d) => (
                d.accel.to_string(),
                d.reason,
                config.accel_settings(d.accel),
            ),
            Err(e) => ("none".to_owned(), e.to_string(), String::new()),
        };
    let host = Host {
        kernel: read("/proc/sys/kernel/osrelease"),
        proc_version: read("/proc/version"),
        cpu_model: first_line_with(&cpuinfo, "model name")
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib: first_line_with(&meminfo, "MemTotal:")
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024,
        accel,
        accel_reason,
        accel_settings,
        proc_entries: count("/proc"),
        sys_module_count: count("/sys/module"),
    };
    let macs = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| read(&e.path().join("address").to_string_lossy()))
                .filter(|m| !m.is_empty() && m != "00:00:00:00:00:00")
                .collect()
        })
        .unwrap_or_default();
    let root_dev = std::fs::metadata("/").ok().and_then(|m| {
        let dev = m.dev();
        let (maj, min) = (libc::major(dev), libc::minor(dev));
        let uevent = read(&format!("/sys/dev/block/{maj}:{min}/uevent"));
        first_line_with(&uevent, "DEVNAME=")
    });
    let nonce = format!(
        "scute-lab-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let facts = HostFacts {
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        kernel: host.kernel.clone(),
        proc_entries: host.proc_entries,
        sys_module_count: host.sys_module_count,
        macs,
        root_dev_openable: root_dev
            .as_ref()
            .is_some_and(|d| std::fs::File::open(format!("/dev/{d}")).is_ok()),
        root_dev_head_md5: root_dev
            .as_ref()
            .and_then(|d| head_md5(&format!("/dev/{d}"))),
        root_dev,
        core_pattern: read("/proc/sys/kernel/core_pattern"),
        marker: nonce,
    };
    Ok((host, facts))
}

fn setup_evidence(
    opts: &Options,
    config: &scute_runtime::Config,
    engine: &Engine,
    server_version: String,
) -> Setup {
    let check: Vec<CheckItem> = scute_runtime::check::run(config)
        .into_iter()
        .map(|i| CheckItem {
            name: i.name.into(),
            ok: i.ok,
            detail: i.detail,
        })
        .collect();
    let containerd = engine.kind == engine::Kind::Containerd;
    Setup {
        engine: engine.kind.name().into(),
        engine_version: (!containerd).then(|| server_version.clone()),
        containerd_address: opts.address.display().to_string(),
        containerd_version: containerd.then_some(server_version),
        containerd_config: match engine.kind {
            engine::Kind::Containerd => opts.containerd_config.display().to_string(),
            engine::Kind::Docker => "docker info (Runtimes)".into(),
            engine::Kind::Podman => "podman --runtime".into(),
        },
        runtime_entry: match engine.kind {
            engine::Kind::Containerd => std::fs::read_to_string(&opts.containerd_config)
                .ok()
                .and_then(|t| scute_runtime::containerd_config::scute_entry(&t)),
            _ => engine.scute_entry(),
        },
        check_ok: check.iter().all(|c| c.ok),
        check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_follow_from_the_sections_asked_for() {
        let count = |only: &[Section]| STEPS.iter().filter(|s| s.runs_in(only)).count();
        assert_eq!(count(&[Section::Setup]), 0);
        assert_eq!(count(&[Section::Workload]), 1);
        assert_eq!(count(&[Section::Isolation]), 4);
        // The load test needs the workload running.
        assert_eq!(count(&[Section::Performance]), 3);
        assert_eq!(count(&Section::ALL), STEPS.len());
        let labels: Vec<String> = STEPS.iter().map(|s| (s.files_as)("x")).collect();
        assert!(labels.contains(&"isolation (x)".to_owned()), "{labels:?}");
    }

    #[test]
    fn sections_and_runtimes() {
        assert_eq!(Section::parse("isolation").unwrap(), Section::Isolation);
        let e = Section::parse("bogus").unwrap_err().to_string();
        assert!(e.contains("setup, workload"), "{e}");
        assert!(known("kata").is_ok());
        let e = known("docker").err().unwrap().to_string();
        assert!(e.contains("runc, scute"), "{e}");
    }

    #[test]
    fn perf_output() {
        assert_eq!(
            parse_perf("cpu=225\nwrite=18\nread=12 51\n"),
            (Some(225), Some(18), Some((12, 51)))
        );
        assert_eq!(parse_perf("cpu=x\nread=0 3\n"), (None, None, None));
    }

    #[test]
    fn perf_script_runs_here() {
        // The same script, on the host's busybox: it must print all three.
        let dir = tempfile::tempdir().unwrap();
        let script = perf_script().replace("/lab-io", &dir.path().join("io").to_string_lossy());
        let o = std::process::Command::new("busybox")
            .args(["sh", "-c", &script])
            .output()
            .unwrap();
        let (c, w, r) = parse_perf(&String::from_utf8_lossy(&o.stdout));
        assert!(c.is_some() && w.is_some() && r.is_some(), "{o:?}");
    }

    #[test]
    fn a_young_vms_uptime_is_read_as_a_number() {
        // A VM 0.08 s old: its digits once made the shell's arithmetic fail.
        let dir = tempfile::tempdir().unwrap();
        let uptime = dir.path().join("uptime");
        std::fs::write(&uptime, "0.08 0.05\n").unwrap();
        let script = perf_script();
        let clock = &script[..script.find("}; ").unwrap() + 1];
        let clock = clock.replace("/proc/uptime", &uptime.to_string_lossy());
        let o = std::process::Command::new("busybox")
            .args(["sh", "-c", &format!("{clock}; echo $(( $(c) + 1 ))")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "9", "{o:?}");
    }
}
