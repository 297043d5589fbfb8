//! `scute lab`: the runc-vs-VM lab as one command; see scute-lab.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use scute_lab::{Options, Section};

#[derive(ClapArgs)]
pub struct Args {
    /// Report directory: report.md, report.html, results.json, raw/.
    #[arg(long, default_value = "lab-report")]
    out: PathBuf,
    /// Runtimes to compare (runc, scute, crun, youki, kata, runsc); a missing one gets a row saying so.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "runc,scute,crun,youki,kata,runsc"
    )]
    runtimes: Vec<String>,
    /// Start-time runs per runtime.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Sections to run: setup, workload, isolation, performance.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "setup,workload,isolation,performance"
    )]
    only: Vec<String>,
    /// Image of the HTTP workload (default: a busybox httpd image built locally),
    /// e.g. bkimminich/juice-shop:v19.0.0 where a registry is reachable.
    #[arg(long, requires = "port")]
    image: Option<String>,
    /// Container port the workload image serves HTTP on (with --image).
    #[arg(long, requires = "image")]
    port: Option<u16>,
    /// What starts the containers: containerd (through ctr), docker or
    /// podman (their CLIs with --runtime; scute through scute-runc, see
    /// `scute install --docker --podman`).
    #[arg(long, default_value = "containerd")]
    engine: String,
    /// containerd socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// containerd's config, for the runtime entry shown as setup evidence.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// Seconds of HTTP load per runtime.
    #[arg(long, default_value_t = 10)]
    http_seconds: u32,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 8)]
    http_connections: u32,
    /// Seconds of HTTP load per runtime before the measured seconds, not
    /// counted: a JIT-compiled server (Node.js, the JVM) speeds up over
    /// its first requests, under a VM's emulated CPU for longer.
    #[arg(long, default_value_t = 5)]
    http_warmup_seconds: u32,
    /// CPUs for every container of every runtime (`--cpus` of ctr, Docker
    /// and Podman): runc gets a CFS quota, a VM runtime as many vCPUs
    /// (rounded up). Without it runc's containers may use every host CPU
    /// and scute's get its config's `vcpus`.
    #[arg(long)]
    cpus: Option<f64>,
}

pub fn main(config: Option<&Path>, a: Args) -> anyhow::Result<i32> {
    let only = a
        .only
        .iter()
        .map(|s| Section::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.http_seconds == 0 || a.http_seconds > 600 {
        anyhow::bail!("--http-seconds must be between 1 and 600");
    }
    if a.http_warmup_seconds > 600 {
        anyhow::bail!("--http-warmup-seconds must be between 0 and 600");
    }
    if let Some(c) = a.cpus {
        if !(0.01..=64.0).contains(&c) {
            anyhow::bail!("--cpus must be between 0.01 and 64 (got {c})");
        }
    }
    if a.http_connections == 0 || a.http_connections > 1000 {
        anyhow::bail!("--http-connections must be between 1 and 1000");
    }
    let opts = Options {
        out: a.out.clone(),
        runtimes: a.runtimes,
        runs: a.runs,
        only,
        image: a.image,
        port: a.port,
        address: a.address,
        containerd_config: a.containerd_config,
        http_seconds: a.http_seconds,
        http_connections: a.http_connections,
        http_warmup_seconds: a.http_warmup_seconds,
        cpus: a.cpus,
        // Named, so that Podman can hand it to scute-runc (conmon passes
        // no environment on).
        scute_config: config
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(scute_runtime::config::ENV_VAR).map(PathBuf::from)),
        engine: scute_lab::engine::Kind::parse(&a.engine)?,
        command: std::env::args()
            .map(|s| scute_lab::ctr::shell_quote(&s))
            .collect::<Vec<_>>()
            .join(" "),
        scute_version: crate::VERSION.to_owned(),
    };
    let results = scute_lab::run(&opts)?;
    println!("\n{}", scute_lab::report::summary_text(&results));
    println!(
        "report: {0}/report.md, {0}/report.html; data: {0}/results.json; evidence: {0}/raw/",
        a.out.display()
    );
    Ok(0)
}
