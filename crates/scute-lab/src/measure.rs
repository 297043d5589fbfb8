//! Measurement helpers shared by `scute lab` and `scute bench`: order
//! statistics, PSS of process trees, wrk with exact percentiles.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::results::Stats;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}

pub fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank 95th percentile.
pub fn p95(v: &[f64]) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((0.95 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn min(v: &[f64]) -> f64 {
    sorted(v).first().copied().unwrap_or(f64::NAN)
}

pub fn max(v: &[f64]) -> f64 {
    sorted(v).last().copied().unwrap_or(f64::NAN)
}

pub fn stats(v: &[f64]) -> Stats {
    Stats {
        median: median(v),
        p95: p95(v),
        min: min(v),
        max: max(v),
        runs: v.len(),
    }
}

pub use scute_runtime::procs::{pss_kib, pss_parts_kib};

/// Pids of processes whose command line (NULs as spaces) contains `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    scute_testkit::procs::mentioning(needle)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// Host memory of container `id`: its shim and everything below it (runc:
/// the container's processes; scute: QEMU, virtiofsd), plus any process that
/// works in scute's state dir for it. Returns (PSS KiB, process names).
pub fn container_pss(id: &str) -> (u64, Vec<String>) {
    let (all, _file, names) = container_pss_parts(id);
    (all, names)
}

/// [`container_pss`] with the file-backed part apart: (PSS KiB, of which
/// file pages KiB, process names). See [`pss_parts_kib`].
pub fn container_pss_parts(id: &str) -> (u64, u64, Vec<String>) {
    let pids = sandbox_pids(id);
    let names = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    let (all, file) = pids
        .iter()
        .map(|p| pss_parts_kib(*p))
        .fold((0, 0), |(a, f), (pa, pf)| (a + pa, f + pf));
    (all, file, names)
}

/// The host processes of sandbox (or container) `id`: its shim and
/// everything below it, whatever works in its state dir, and the pool
/// member (with its tree) whose VM it adopted. Sorted, no duplicates.
pub fn sandbox_pids(id: &str) -> Vec<u32> {
    // containerd's shims (`-id ID`), Podman's conmon (`-c ID`).
    let mut pids: Vec<u32> = pids_with(&format!("-id {id} "))
        .into_iter()
        .chain(pids_with(&format!("conmon --api-version 1 -c {id} ")))
        .flat_map(scute_testkit::procs::descendants)
        .collect();
    for p in pids_with(&format!("/run/scute/{id}/")) {
        pids.extend(scute_testkit::procs::descendants(p));
    }
    // A VM adopted from the pool runs under the pool member that booted it
    // (`scute pool-vm`), not under the shim: count the member and its tree.
    if let Some(member) = pool_member_of(id) {
        pids.extend(scute_testkit::procs::descendants(member));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The pool member process whose VM sandbox `id` adopted, if it did.
fn pool_member_of(id: &str) -> Option<u32> {
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("/run/scute/{id}/state.json")).ok()?).ok()?;
    let vmm = st["vmm_pid"].as_u64()?;
    let stat = std::fs::read_to_string(format!("/proc/{vmm}/stat")).ok()?;
    let ppid: u32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let cmd = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmd)
        .contains("pool-vm")
        .then_some(ppid)
}

/// Load from wrk: requests/s and latency percentiles in ms.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rps: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// wrk against `http://127.0.0.1:{port}{path}` at fixed concurrency for a
/// fixed time (bounded); a Lua `done` hook prints exact percentiles.
pub fn wrk(port: u16, path: &str, seconds: u32, connections: u32) -> anyhow::Result<Load> {
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(
        script.path(),
        "done = function(s, l, r)\n  io.write(string.format(\"scute-pct %d %d %d\\n\", l:percentile(50), l:percentile(95), l:percentile(99)))\nend\n",
    )?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script.path())
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("run wrk (apt-get install wrk)")?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> anyhow::Result<Load> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let pct: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("scute-pct "))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse::<f64>().ok())
                .map(|us| us / 1000.0)
                .collect()
        })
        .unwrap_or_default();
    if pct.len() != 3 || !rps.is_finite() {
        bail!("could not read wrk's output: {text}");
    }
    Ok(Load {
        rps,
        p50: pct[0],
        p95: pct[1],
        p99: pct[2],
    })
}

/// First line of `bin --version` (stdout, else stderr).
pub fn version_line(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// `name` on $PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&v), 3.0);
        assert_eq!(median(&[1.0, 2.0]), 1.5);
        assert_eq!(p95(&v), 5.0);
        let many: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(p95(&many), 19.0);
        assert_eq!(min(&v), 1.0);
        assert_eq!(max(&v), 5.0);
        assert!(median(&[]).is_nan());
        let s = stats(&v);
        assert_eq!((s.min, s.median, s.max, s.runs), (1.0, 3.0, 5.0, 5));
    }

    #[test]
    fn wrk_output() {
        let text = "Running 1s test\n  8 threads\nRequests/sec:    123.45\nTransfer/sec: 1KB\nscute-pct 1500 2500 9000\n";
        let l = parse_wrk(text).unwrap();
        assert_eq!(l.rps, 123.45);
        assert_eq!((l.p50, l.p95, l.p99), (1.5, 2.5, 9.0));
        assert!(parse_wrk("unable to connect").is_err());
    }
}
