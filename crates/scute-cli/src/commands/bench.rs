//! `scute bench start`: cold start of `true` under scute and runc, same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use scute_lab::measure::{self, max, median, min, ms, p95};
use scute_runtime::bundle::Bundle;
use scute_runtime::run::{run, RunIo};
use scute_runtime::Config;

#[derive(Subcommand)]
pub enum Cmd {
    /// Cold start of `true` in a fresh VM vs `runc run` of the same bundle.
    Start {
        /// Runs per runtime (at least 10 for the recorded figures).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// runc binary.
        #[arg(long, default_value = "runc")]
        runc: PathBuf,
    },
    /// HTTP through a published port (CNI bridge + portmap), runc vs scute.
    Http {
        /// Seconds of load per runtime.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Concurrent connections.
        #[arg(long, default_value_t = 8)]
        connections: u32,
        /// Host port published for the server (on 127.0.0.1 only: the
        /// load never leaves this host). Default: 40000 + pid % 10000.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Host memory (PSS) of one idle detached container, runc vs scute.
    Memory {
        /// containerd socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        /// Idle containers per runtime, started one after the other and
        /// measured together.
        #[arg(long, default_value_t = 1)]
        containers: usize,
    },
    /// Container lifecycles through containerd, several at once, then a
    /// leak check.
    ///
    /// Each cycle: run --rm, run -d + exec + kill + rm, rm -f, an exit
    /// status, a CNI-shaped netns. Prints failures by step, leaks, and the
    /// p50/p99 cycle time.
    Churn {
        /// Lifecycles in all.
        #[arg(long, default_value_t = 100)]
        cycles: usize,
        /// Lifecycles running at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// containerd runtime type.
        #[arg(long, default_value = scute_runtime::RUNTIME_TYPE)]
        runtime: String,
        /// containerd socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
    },
    /// `ctr run --rm IMG ID true` through containerd, runc vs scute.
    ///
    /// scute twice: booting its own VM, and with a ready VM from the pool
    /// (when one runs; each of those runs waits for a ready VM first).
    Ctr {
        /// Runs per runtime (and for scute, per way of getting a VM).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// containerd socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
    },
    /// Detached containers started back to back through the running pool.
    ///
    /// Each start is timed, with whether its VM came from the pool and how
    /// many were ready then (the refill shows); then all are removed.
    Pool {
        /// Containers started.
        #[arg(long, default_value_t = 10)]
        containers: usize,
        /// containerd socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
    },
}

pub fn main(config: Option<&Path>, cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Start { runs, runc } => start_bench(&Config::load(config)?, runs, &runc),
        Cmd::Ctr { runs, address } => ctr_bench(&Config::load(config)?, runs, &address),
        Cmd::Pool {
            containers,
            address,
        } => pool_bench(&Config::load(config)?, containers, &address),
        Cmd::Memory {
            address,
            containers,
        } => memory_bench(&address, containers),
        Cmd::Churn {
            cycles,
            concurrency,
            runtime,
            address,
        } => super::churn::main(&address, &runtime, cycles, concurrency),
        Cmd::Http {
            seconds,
            connections,
            port,
        } => http_bench(seconds, connections, port),
    }
}

/// `scute bench start`: cold starts of `true`, runc's and scute's
/// (`scute run`), and where scute's time goes.
fn start_bench(config: &Config, runs: usize, runc: &Path) -> anyhow::Result<i32> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    scute_testkit::busybox_bundle(dir.path(), &["true"]).context("build busybox bundle")?;
    let progress = super::Progress::new(runs);
    let runc_ms = runc_runs(runc, dir.path(), runs, &progress)?;
    let phases = scute_runs(config, &Bundle::load(dir.path())?, runs, &progress)?;
    let accel = scute_hypervisor_reason(config);
    let total = &phases.total;
    let (rm, rp) = (median(&runc_ms), p95(&runc_ms));
    let (sm, sp) = (median(total), p95(total));
    println!("cold start of `true` ({runs} runs each, {accel})\n");
    println!("| runtime | median ms | p95 ms | min ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let (lo, hi) = (min(&runc_ms), max(&runc_ms));
    println!("| runc | {rm:.1} | {rp:.1} | {lo:.1} | {hi:.1} |");
    let (lo, hi) = (min(total), max(total));
    println!("| scute | {sm:.1} | {sp:.1} | {lo:.1} | {hi:.1} |");
    println!(
        "\nratio scute/runc: median {:.1}x, p95 {:.1}x\n",
        sm / rm,
        sp / rp
    );
    println!("where scute's time goes (median ms):\n");
    println!("| state dir + share + virtiofsd | qemu spawn → agent ready | of which guest uptime (kernel + agent) | create + start | process run → exit event | teardown |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let m = |v: &Vec<f64>| median(v);
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        m(&phases.prepare),
        m(&phases.vm),
        m(&phases.guest),
        m(&phases.start),
        m(&phases.process),
        m(&phases.teardown)
    );
    Ok(0)
}

/// `runc run` of the bundle in `dir`, `runs` times: each run's ms.
fn runc_runs(
    runc: &Path,
    dir: &Path,
    runs: usize,
    progress: &super::Progress,
) -> anyhow::Result<Vec<f64>> {
    let mut runc_ms = Vec::new();
    for i in 0..runs {
        progress.step(i + 1, &format!("runc  run {}/{runs}", i + 1));
        let t = Instant::now();
        let st = Command::new(runc)
            .args(["run", "--bundle"])
            .arg(dir)
            .arg(format!("scute-bench-runc-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("run {}", runc.display()))?;
        if !st.success() {
            bail!("runc run failed: {st}");
        }
        runc_ms.push(ms(t.elapsed()));
    }
    Ok(runc_ms)
}

/// Each `scute run`'s ms, whole and by phase.
#[derive(Default)]
struct Phases {
    total: Vec<f64>,
    prepare: Vec<f64>,
    vm: Vec<f64>,
    guest: Vec<f64>,
    start: Vec<f64>,
    process: Vec<f64>,
    teardown: Vec<f64>,
}

/// `scute run` of `bundle`, `runs` times, each in a fresh sandbox.
fn scute_runs(
    config: &Config,
    bundle: &Bundle,
    runs: usize,
    progress: &super::Progress,
) -> anyhow::Result<Phases> {
    let rt = super::runtime()?;
    let mut p = Phases::default();
    for i in 0..runs {
        progress.step(i + 1, &format!("scute run {}/{runs}", i + 1));
        let id = format!("scute-bench-{}-{i}", std::process::id());
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let io = RunIo {
            stdin: None,
            stdout: Box::new(tokio::io::sink()),
            stderr: Box::new(tokio::io::sink()),
        };
        let t = Instant::now();
        let out = rt.block_on(run(config, &id, bundle, io, rx))?;
        let t_done = t.elapsed();
        let b = &out.boot;
        p.total.push(ms(t_done));
        p.prepare.push(ms(b.prepare));
        p.vm.push(ms(b.vm_to_agent));
        p.guest.push(ms(b.guest_uptime));
        p.start.push(ms(out.start));
        p.process.push(ms(out.process));
        let accounted = b.prepare + b.vm_to_agent + out.start + out.process;
        p.teardown.push(ms(t_done) - ms(accounted));
    }
    Ok(p)
}

fn http_bench(seconds: u32, connections: u32, port: Option<u16>) -> anyhow::Result<i32> {
    use scute_testkit::cni::{Network, PortMapping};
    let id = format!("bench-http-{}", std::process::id());
    let port = port.unwrap_or(40000 + (std::process::id() % 10000) as u16);
    let net = Network::bridge("scute-bench", "scute-bench0", "10.96.0.0/24");
    let att = net.attach(
        &id,
        &[PortMapping {
            host_port: port,
            container_port: 8080,
        }],
    )?;
    let dir = tempfile::tempdir()?;
    scute_testkit::busybox_bundle(
        dir.path(),
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; httpd -f -p 8080 -h /etc & wait",
        ],
    )?;
    let mut spec = scute_testkit::default_spec(&[
        "sh",
        "-c",
        "trap 'exit 0' TERM; httpd -f -p 8080 -h /etc & wait",
    ]);
    spec["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network", "path": att.netns_path()}
    ]);
    scute_testkit::write_spec(dir.path(), &spec)?;
    let scute = std::env::current_exe()?;
    println!("HTTP GET /group through 127.0.0.1:{port} (CNI bridge + portmap), wrk -t1 -c{connections} -d{seconds}s\n");
    println!("| runtime | requests/s | p50 ms | p95 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    for name in ["runc", "scute"] {
        let cid = format!("{id}-{name}");
        // Both take runc's command line.
        let program = match name {
            "runc" => std::path::PathBuf::from("runc"),
            _ => scute.clone(),
        };
        let mut child = Command::new(program)
            .args(["run", "--bundle"])
            .arg(dir.path())
            .arg(&cid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let addr = format!("127.0.0.1:{port}");
        if scute_testkit::http::get_200_within(&addr, "/group", Duration::from_secs(120)).is_none()
        {
            let _ = child.kill();
            bail!("{name}: the server never answered on {addr}");
        }
        let r = measure::wrk(port, "/group", seconds, connections);
        match name {
            "runc" => {
                let _ = Command::new("runc").args(["kill", &cid, "KILL"]).status();
                let _ = child.wait();
                let _ = Command::new("runc").args(["delete", "-f", &cid]).status();
            }
            _ => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = child.wait();
            }
        }
        let measure::Load { rps, p50, p95, p99 } = r?;
        println!("| {name} | {rps:.0} | {p50:.2} | {p95:.2} | {p99:.2} |");
        rows.push((rps, p50, p99));
    }
    println!(
        "\nratio scute/runc: throughput {:.2}x, p50 latency {:.1}x, p99 latency {:.1}x",
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1,
        rows[1].2 / rows[0].2
    );
    att.detach()?;
    let _ = Command::new("ip")
        .args(["link", "del", "scute-bench0"])
        .status();
    Ok(0)
}

fn ctr_cmd(address: &Path, args: &[&str]) -> Command {
    scute_lab::ctr::Ctr::new(address).command(args)
}

/// Imports the busybox test image unless containerd has it.
fn ensure_image(address: &Path) -> anyhow::Result<&'static str> {
    let image = scute_testkit::image::IMAGE;
    scute_lab::ctr::Ctr::new(address).ensure_image(image, &mut Vec::new())?;
    Ok(image)
}

fn memory_bench(address: &Path, n: usize) -> anyhow::Result<i32> {
    if n == 0 {
        bail!("--containers must be at least 1");
    }
    let image = ensure_image(address)?;
    println!(
        "host memory (PSS) of {n} idle `sleep` container(s) per runtime, started one after the other, measured after 5 s idle; scute's each in a VM of its own (pool off: a ready VM's cost is in `scute check`); file pages are the binaries and libraries mapped, page cache shared with every process that maps the same files\n"
    );
    let own_vm = format!("{}=off", scute_runtime::pod::ANN_VM_POOL);
    println!("| runtime | containers | start all, s | PSS total MiB | PSS per container MiB | of which file pages MiB | processes (first) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut per = Vec::new();
    for (name, runtime) in [
        ("runc", "io.containerd.runc.v2"),
        ("scute", scute_runtime::RUNTIME_TYPE),
    ] {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("scute-mem-{name}-{}-{i}", std::process::id()))
            .collect();
        let t = Instant::now();
        let mut started = Vec::new();
        let mut failed = None;
        let progress = super::Progress::new(n);
        for (i, id) in ids.iter().enumerate() {
            progress.step(i + 1, &format!("{name}: starting {}/{n}", i + 1));
            let mut args = vec!["run", "-d", "--runtime", runtime];
            if name == "scute" {
                args.extend(["--annotation", own_vm.as_str()]);
            }
            args.extend([image, id.as_str(), "sleep", "600"]);
            let st = ctr_cmd(address, &args).stdin(Stdio::null()).status()?;
            if !st.success() {
                failed = Some(format!("{name}: ctr run -d {id} failed"));
                break;
            }
            started.push(id.clone());
        }
        let start_all = t.elapsed();
        if failed.is_none() {
            std::thread::sleep(Duration::from_secs(5));
        }
        let (mut total, mut file) = (0u64, 0u64);
        let mut first = Vec::new();
        for id in &started {
            let (kib, file_kib, names) = measure::container_pss_parts(id);
            total += kib;
            file += file_kib;
            if first.is_empty() {
                first = names;
            }
        }
        for id in &started {
            scute_lab::ctr::Ctr::new(address).remove(id);
        }
        if let Some(why) = failed {
            bail!(why);
        }
        let each = total as f64 / 1024.0 / n as f64;
        println!(
            "| {name} | {n} | {:.1} | {:.1} | {each:.1} | {:.1} | {} |",
            start_all.as_secs_f64(),
            total as f64 / 1024.0,
            file as f64 / 1024.0 / n as f64,
            first.join(", ")
        );
        per.push(each);
    }
    println!(
        "\nratio scute/runc per container: {:.1}x",
        per[1] / per[0].max(0.001)
    );
    Ok(0)
}

fn ctr_bench(config: &Config, runs: usize, address: &Path) -> anyhow::Result<i32> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let ctr = |args: &[&str]| ctr_cmd(address, args);
    let image = ensure_image(address)?;
    let pool_off = format!("{}=off", scute_runtime::pod::ANN_VM_POOL);
    let mut rows: Vec<(&str, &str, Vec<&str>)> = vec![
        ("runc", "io.containerd.runc.v2", vec![]),
        (
            "scute, own VM",
            scute_runtime::RUNTIME_TYPE,
            vec!["--annotation", &pool_off],
        ),
    ];
    let pool = match scute_runtime::handover::cannot_serve(config) {
        None => scute_runtime::handover::status(config),
        Some(why) => {
            eprintln!("scute's row with a ready VM is left out: {why}");
            None
        }
    };
    if let Some(st) = &pool {
        rows.push(("scute, pool VM", scute_runtime::RUNTIME_TYPE, vec![]));
        eprintln!("pool: pid {}, size {}", st.pid, st.size);
    }
    // Round by round, one run of each row in turn: this machine's speed
    // drifts within minutes, and rows measured one after the other moved
    // the ratio by more than a change under test did.
    let mut table: Vec<(&str, Vec<f64>)> = rows.iter().map(|r| (r.0, Vec::new())).collect();
    let before = pool.as_ref().map_or(0, |s| s.handed_out);
    let mut unsettled = 0;
    let progress = super::Progress::new(runs * rows.len());
    for i in 0..runs {
        for (row, (name, runtime, extra)) in rows.iter().enumerate() {
            progress.step(
                i * rows.len() + row + 1,
                &format!("round {}/{runs}: {name}", i + 1),
            );
            if *name == "scute, pool VM" {
                wait_for_ready_vm(config)?;
            } else if pool.is_some() && !wait_for_settled_pool(config) {
                // A refill boot still running would slow this run.
                unsettled += 1;
            }
            let id = format!(
                "scute-bench-{}-{}-{i}",
                name.replace([',', ' '], ""),
                std::process::id()
            );
            let mut args = vec!["run", "--rm", "--runtime", runtime];
            args.extend(extra.iter().copied());
            args.extend([image, id.as_str(), "true"]);
            let t = Instant::now();
            let out = ctr(&args).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                bail!(
                    "{name}: ctr run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            table[row].1.push(measure::ms(t.elapsed()));
        }
    }
    let handed = scute_runtime::handover::status(config).map_or(0, |s| s.handed_out) - before;
    println!("`ctr run --rm IMG ID true` through containerd ({runs} rounds, one run of each row per round)\n");
    println!("| runtime | median ms | p95 ms | min ms | max ms | median / runc |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let runc = median(&table[0].1);
    for (name, ms) in &table {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}x |",
            median(ms),
            p95(ms),
            min(ms),
            max(ms),
            median(ms) / runc
        );
    }
    let r = &table[0].1;
    for (name, s) in &table[1..] {
        println!(
            "\n{name}/runc: median {:.1}x, p95 {:.1}x",
            median(s) / median(r),
            p95(s) / p95(r)
        );
    }
    if pool.is_some() {
        println!("\nThe pool handed out {handed} of the {runs} pool-row VMs; each of those runs waited for a ready VM before its clock started, and the other rows' runs for the pool's refill to finish ({unsettled} did not within 30 s).");
    }
    Ok(0)
}

/// Waits (at most 30 s) until the pool is full with no boot running;
/// whether it got there.
fn wait_for_settled_pool(config: &Config) -> bool {
    matches!(
        wait_for_pool(config, 30, |st| st.booting == 0 && st.ready >= st.size),
        Ok(None)
    )
}

/// Waits (at most 120 s) until the pool has a ready VM.
fn wait_for_ready_vm(config: &Config) -> anyhow::Result<()> {
    match wait_for_pool(config, 120, |st| st.ready > 0)? {
        None => Ok(()),
        Some(st) => bail!("the pool had no ready VM for 120 s: {st:?}"),
    }
}

/// Polls the pool's status every 50 ms until `done` holds (`None`) or
/// `secs` have passed (the last status); an error once the pool stopped.
fn wait_for_pool(
    config: &Config,
    secs: u64,
    done: impl Fn(&scute_runtime::handover::Status) -> bool,
) -> anyhow::Result<Option<scute_runtime::handover::Status>> {
    let t = Instant::now();
    loop {
        match scute_runtime::handover::status(config) {
            Some(st) if done(&st) => return Ok(None),
            Some(_) if t.elapsed() < std::time::Duration::from_secs(secs) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Some(st) => return Ok(Some(st)),
            None => bail!("the pool stopped"),
        }
    }
}

fn pool_bench(config: &Config, n: usize, address: &Path) -> anyhow::Result<i32> {
    let Some(st) = scute_runtime::handover::status(config) else {
        bail!(
            "no pool runs for {}: start one with `scute pool`",
            config.state_dir.display()
        );
    };
    let ctr = |args: &[&str]| ctr_cmd(address, args);
    let image = ensure_image(address)?;
    println!(
        "{n} detached `sleep` containers started back to back through a pool of {} (pid {})\n",
        st.size, st.pid
    );
    println!("| # | ready VMs before | from the pool | start ms |");
    println!("| ---: | ---: | --- | ---: |");
    let mut ids = Vec::new();
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for i in 0..n {
            let before = scute_runtime::handover::status(config).unwrap_or_default();
            let id = format!("scute-bench-pool-{}-{i}", std::process::id());
            let t = Instant::now();
            let out = ctr(&[
                "run",
                "-d",
                "--runtime",
                scute_runtime::RUNTIME_TYPE,
                image,
                &id,
                "sleep",
                "600",
            ])
            .stdin(Stdio::null())
            .output()?;
            let took = measure::ms(t.elapsed());
            if !out.status.success() {
                bail!("ctr run failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            ids.push(id);
            let after = scute_runtime::handover::status(config).unwrap_or_default();
            let from_pool = after.handed_out > before.handed_out;
            if from_pool {
                warm.push(took)
            } else {
                cold.push(took)
            }
            println!(
                "| {} | {} | {} | {took:.0} |",
                i + 1,
                before.ready,
                if from_pool { "yes" } else { "no" }
            );
        }
        Ok(())
    })();
    for id in &ids {
        let _ = ctr(&["task", "kill", "-s", "KILL", id]).output();
        let _ = ctr(&["task", "rm", "-f", id]).output();
        let _ = ctr(&["container", "rm", id]).output();
    }
    result?;
    println!(
        "\nfrom the pool: {} starts, median {:.0} ms; own VM: {} starts, median {}",
        warm.len(),
        if warm.is_empty() { 0.0 } else { median(&warm) },
        cold.len(),
        if cold.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0} ms", median(&cold))
        }
    );
    if let Some(st) = scute_runtime::handover::status(config) {
        println!(
            "idle cost now: {} ready VMs, {} MiB PSS ({} MiB each)",
            st.ready,
            st.idle_pss_mib,
            st.idle_pss_mib / u64::from(st.ready.max(1))
        );
    }
    Ok(0)
}

fn scute_hypervisor_reason(config: &Config) -> String {
    let items = scute_runtime::check::run(config);
    items
        .into_iter()
        .find(|i| i.name == "acceleration")
        .map(|i| i.detail)
        .unwrap_or_default()
}
