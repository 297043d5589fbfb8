//! `update`: runc's `--resources FILE|-` (OCI LinuxResources as JSON, how
//! go-runc sends `docker update`) or its flags, as limits for the
//! container's cgroup in the guest.

use std::io::Read;

use serde_json::{json, Value};

use crate::Fail;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// OCI LinuxResources as JSON, from a file or `-` (stdin).
    #[arg(short, long)]
    pub resources: Option<String>,
    /// Memory limit (bytes, or with k/m/g), -1 for none.
    #[arg(long, short = 'm', allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory reservation (bytes, or with k/m/g).
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// Accepted and ignored: a scute VM has no swap.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPU CFS period, µs.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota, µs, -1 for none.
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_share: Option<u64>,
    /// Maximum number of pids, -1 for none.
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Refused: cpusets do not apply in a VM.
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Refused: cpusets do not apply in a VM.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    pub id: String,
}

/// What `--resources` may hold: an OCI LinuxResources object is small.
const MAX_RESOURCES: u64 = 1 << 20;

/// Bytes in "128m", "1g", "4096", "-1".
fn bytes(flag: &str, v: &str) -> Result<i64, Fail> {
    let t = v.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n == -1 || (*n >= 0 && n.checked_shl(shift).is_some_and(|b| b >> shift == *n)))
        .map(|n| if n == -1 { -1 } else { n << shift })
        .ok_or_else(|| {
            Fail::new(format!(
                "--{flag} {v:?}: expected bytes, e.g. 134217728 or 128m, or -1"
            ))
        })
}

/// The limits `a` asks for, checked.
pub fn limits(a: &Args) -> Result<scute_protocol::Limits, Fail> {
    let resources: Value = match a.resources.as_deref() {
        Some(src) => {
            let mut text = Vec::new();
            let read = if src == "-" {
                std::io::stdin()
                    .take(MAX_RESOURCES + 1)
                    .read_to_end(&mut text)
            } else {
                std::fs::File::open(src)
                    .and_then(|f| f.take(MAX_RESOURCES + 1).read_to_end(&mut text))
            };
            read.map_err(|e| Fail::new(format!("read --resources {src}: {e}")))?;
            if text.len() as u64 > MAX_RESOURCES {
                return Err(Fail::new(format!("--resources {src}: more than 1 MiB")));
            }
            serde_json::from_slice(&text)
                .map_err(|e| Fail::new(format!("--resources {src}: not JSON: {e}")))?
        }
        None => {
            let mem =
                |flag: &str, v: &Option<String>| v.as_deref().map(|v| bytes(flag, v)).transpose();
            json!({
                "memory": {
                    "limit": mem("memory", &a.memory)?,
                    "reservation": mem("memory-reservation", &a.memory_reservation)?,
                },
                "cpu": {
                    "period": a.cpu_period,
                    "quota": a.cpu_quota,
                    "shares": a.cpu_share,
                    "cpus": a.cpuset_cpus,
                    "mems": a.cpuset_mems,
                },
                "pids": {"limit": a.pids_limit},
            })
        }
    };
    scute_runtime::limits::from_oci(&resources).map_err(Fail::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    fn parse(args: &[&str]) -> Args {
        T::try_parse_from(std::iter::once("update").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn runcs_flags() {
        let l = limits(&parse(&[
            "--memory",
            "128m",
            "--cpu-quota",
            "50000",
            "--pids-limit",
            "-1",
            "c1",
        ]))
        .unwrap();
        assert_eq!(l.memory_max, Some(128 << 20));
        assert_eq!(l.cpu_max, Some((50_000, 100_000)));
        assert_eq!(l.pids_max, Some(-1));
        let e = limits(&parse(&["--memory", "lots", "c1"])).unwrap_err();
        assert!(e.to_string().contains("expected bytes"), "{e}");
        let e = limits(&parse(&["--cpuset-cpus", "0", "c1"])).unwrap_err();
        assert!(e.to_string().contains("--cpus"), "{e}");
    }

    #[test]
    fn a_resources_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            r#"{"memory": {"limit": 67108864}, "cpu": {"shares": 512}}"#,
        )
        .unwrap();
        let l = limits(&parse(&["--resources", f.path().to_str().unwrap(), "c1"])).unwrap();
        assert_eq!(l.memory_max, Some(64 << 20));
        assert!(l.cpu_weight.is_some());
        std::fs::write(f.path(), "nope").unwrap();
        let e = limits(&parse(&["-r", f.path().to_str().unwrap(), "c1"])).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }
}
