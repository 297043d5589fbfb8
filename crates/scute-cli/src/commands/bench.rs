//! `scute bench start`: cold start of `true` under scute and runc, same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
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
    /// `ctr run --rm IMG ID true` through containerd, runc vs scute.
    Ctr {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// containerd socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
    },
}

pub fn main(config: Option<&Path>, cmd: Cmd) -> anyhow::Result<i32> {
    let (runs, runc) = match cmd {
        Cmd::Start { runs, runc } => (runs, runc),
        Cmd::Ctr { runs, address } => return ctr_bench(runs, &address),
    };
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let config = Config::load(config)?;
    let dir = tempfile::tempdir()?;
    scute_testkit::busybox_bundle(dir.path(), &["true"]).context("build busybox bundle")?;
    let bundle = Bundle::load(dir.path())?;

    let mut runc_ms = Vec::new();
    for i in 0..runs {
        eprint!("\rrunc  run {}/{runs}", i + 1);
        let t = Instant::now();
        let st = Command::new(&runc)
            .args(["run", "--bundle"])
            .arg(dir.path())
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
    eprintln!();

    let rt = super::runtime()?;
    let mut total = Vec::new();
    let (mut prepare, mut vm, mut guest, mut start, mut process, mut teardown) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for i in 0..runs {
        eprint!("\rscute run {}/{runs}", i + 1);
        let id = format!("scute-bench-{}-{i}", std::process::id());
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let io = RunIo {
            stdin: None,
            stdout: Box::new(tokio::io::sink()),
            stderr: Box::new(tokio::io::sink()),
        };
        let t = Instant::now();
        let out = rt.block_on(run(&config, &id, &bundle, io, rx))?;
        let t_done = t.elapsed();
        total.push(ms(t_done));
        prepare.push(ms(out.boot.prepare));
        vm.push(ms(out.boot.vm_to_agent));
        guest.push(ms(out.boot.guest_uptime));
        start.push(ms(out.start));
        process.push(ms(out.process));
        teardown.push(
            ms(t_done) - ms(out.boot.prepare + out.boot.vm_to_agent + out.start + out.process),
        );
    }
    eprintln!();
    let accel = scute_hypervisor_reason(&config);
    let (rm, rp) = (median(&runc_ms), p95(&runc_ms));
    let (sm, sp) = (median(&total), p95(&total));
    println!("cold start of `true` ({runs} runs each, {accel})\n");
    println!("| runtime | median ms | p95 ms | min ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| runc | {rm:.1} | {rp:.1} | {:.1} | {:.1} |",
        min(&runc_ms),
        max(&runc_ms)
    );
    println!(
        "| scute | {sm:.1} | {sp:.1} | {:.1} | {:.1} |",
        min(&total),
        max(&total)
    );
    println!(
        "\nratio scute/runc: median {:.1}x, p95 {:.1}x\n",
        sm / rm,
        sp / rp
    );
    println!("where scute's time goes (median ms):\n");
    println!("| state dir + share + virtiofsd | qemu spawn → agent ready | of which guest uptime (kernel + agent) | create + start | process run → exit event | teardown |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        median(&prepare),
        median(&vm),
        median(&guest),
        median(&start),
        median(&process),
        median(&teardown)
    );
    Ok(0)
}

fn ctr_bench(runs: usize, address: &Path) -> anyhow::Result<i32> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(address).args(args);
        c
    };
    let have = ctr(&["images", "ls", "-q"]).output().context("run ctr")?;
    if !have.status.success() {
        bail!(
            "containerd not reachable at {}: start it (or pass --address)",
            address.display()
        );
    }
    let image = scute_testkit::image::IMAGE;
    if !String::from_utf8_lossy(&have.stdout)
        .lines()
        .any(|l| l == image)
    {
        let dir = tempfile::tempdir()?;
        let tar = dir.path().join("busybox.tar");
        scute_testkit::image::busybox_image_tar(&tar)?;
        let st = ctr(&["images", "import", &tar.to_string_lossy()])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("ctr images import failed");
        }
    }
    let mut table = Vec::new();
    for (name, runtime) in [
        ("runc", "io.containerd.runc.v2"),
        ("scute", "io.containerd.scute.v2"),
    ] {
        let mut ms = Vec::new();
        for i in 0..runs {
            eprint!("\r{name} ctr run --rm {}/{runs}", i + 1);
            let id = format!("scute-bench-{name}-{}-{i}", std::process::id());
            let t = Instant::now();
            let out = ctr(&["run", "--rm", "--runtime", runtime, image, &id, "true"])
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!(
                    "{name}: ctr run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            ms.push(self::ms(t.elapsed()));
        }
        eprintln!();
        table.push((name, ms));
    }
    println!("`ctr run --rm IMG ID true` through containerd ({runs} runs each)\n");
    println!("| runtime | median ms | p95 ms | min ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, ms) in &table {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            median(ms),
            p95(ms),
            min(ms),
            max(ms)
        );
    }
    let (r, s) = (&table[0].1, &table[1].1);
    println!(
        "\nratio scute/runc: median {:.1}x, p95 {:.1}x",
        median(s) / median(r),
        p95(s) / p95(r)
    );
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank 95th percentile.
fn p95(v: &[f64]) -> f64 {
    let s = sorted(v);
    let rank = ((0.95 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn min(v: &[f64]) -> f64 {
    sorted(v)[0]
}

fn max(v: &[f64]) -> f64 {
    *sorted(v).last().unwrap_or(&0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&v), 3.0);
        assert_eq!(median(&[1.0, 2.0]), 1.5);
        assert_eq!(p95(&v), 5.0);
        let many: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(p95(&many), 19.0);
        assert_eq!(min(&v), 1.0);
        assert_eq!(max(&v), 5.0);
    }
}
