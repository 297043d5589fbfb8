//! `scute ps`: the sandboxes on this host (as `runc list` / `runsc list`),
//! read from their state dirs and `/proc`: no shim or guest is asked.

use std::path::Path;

use clap::Args as ClapArgs;
use scute_runtime::state::{process_start_time, StateFile};
use scute_runtime::Config;
use serde::Serialize;

use super::Output;

#[derive(ClapArgs)]
pub struct Args {
    /// `table` (default) or `json`.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

/// One sandbox: its VM, who owns it, what it holds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Row {
    pub id: String,
    /// `running`; `stale` when its owner (shim) is gone (`scute cleanup`
    /// removes it); `stopped` when the VM is gone; for a VM the pool
    /// booted, `booting`, `ready` (waiting for a sandbox) or `handed out`
    /// (the sandbox that has it is listed too, under its own id).
    pub status: &'static str,
    pub shim_pid: i32,
    pub vmm_pid: Option<u32>,
    /// The uid QEMU runs as (the jail's).
    pub vmm_uid: Option<u32>,
    /// `kvm` or `tcg`.
    pub accel: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// Proportional set size of the VMM and both virtiofsd, MiB.
    pub pss_mib: f64,
    /// The VM came booted from the pool (its name is the pool's).
    pub from_pool: bool,
    pub age_secs: Option<u64>,
}

pub fn main(config: Option<&Path>, a: Args) -> anyhow::Result<i32> {
    let c = Config::load(config)?;
    let rows = rows(&c.state_dir);
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            print!("{}", table(&rows));
            if let Some(p) = scute_runtime::handover::status(&c) {
                println!(
                    "pool: {} ready, {} booting (pid {}, {} handed out)",
                    p.ready, p.booting, p.pid, p.handed_out
                );
            }
        }
    }
    Ok(0)
}

fn rows(state_dir: &Path) -> Vec<Row> {
    let Ok(dir) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let all: Vec<(Row, bool)> = dir
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !n.starts_with('.') && !n.starts_with('_')
        })
        .filter_map(|e| StateFile::read(&e.path()))
        .map(|st| (row(&st), is_pool_member(&st)))
        .collect();
    // A pool VM a sandbox adopted: that sandbox records the same VMM.
    let adopted: Vec<u32> = all
        .iter()
        .filter(|(_, member)| !member)
        .filter_map(|(r, _)| r.vmm_pid)
        .collect();
    let mut rows: Vec<Row> = all
        .into_iter()
        .map(|(mut r, member)| {
            if member {
                r.from_pool = true;
                r.status = match r.vmm_pid {
                    Some(p) if adopted.contains(&p) => "handed out",
                    _ => pool_member(state_dir, &r.id).unwrap_or("booting"),
                };
            }
            r
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

/// Whether the state dir is a pool member's (`scute pool-vm` owns it).
fn is_pool_member(st: &StateFile) -> bool {
    let cmd = std::fs::read(format!("/proc/{}/cmdline", st.owner_pid)).unwrap_or_default();
    st.owner_alive() && cmd.split(|&c| c == 0).any(|a| a == b"pool-vm")
}

/// A pool VM's socket: `ready` while it waits in `ready/`, `handed out`
/// while a claim holds it in `claimed/`.
fn pool_member(state_dir: &Path, id: &str) -> Option<&'static str> {
    let pool = state_dir.join("_pool");
    let named = |sub: &str| {
        std::fs::read_dir(pool.join(sub)).ok().is_some_and(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.strip_suffix(".sock")
                    .is_some_and(|s| s == id || s.ends_with(&format!(".{id}")))
            })
        })
    };
    if named("ready") {
        Some("ready")
    } else if named("claimed") {
        Some("handed out")
    } else {
        None
    }
}

fn row(st: &StateFile) -> Row {
    let vmm = st.vmm_pid.filter(|&p| {
        st.starts.get(&p).copied() == process_start_time(p as i32) && st.starts.contains_key(&p)
    });
    let cmdline = vmm
        .and_then(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let arg = |flag: &str| -> Option<&str> {
        let i = cmdline.iter().position(|a| a == flag)?;
        cmdline.get(i + 1).map(String::as_str)
    };
    let pss_kib: u64 = [vmm, st.virtiofsd_pid, st.rootfs_virtiofsd_pid]
        .into_iter()
        .flatten()
        .map(|p| scute_runtime::procs::pss_parts_kib(p).0)
        .sum();
    let vm_name = arg("-name").and_then(|n| n.split(',').next()).unwrap_or("");
    Row {
        id: st.id.clone(),
        status: match (st.owner_alive(), vmm.is_some()) {
            (false, _) => "stale",
            (true, true) => "running",
            (true, false) => "stopped",
        },
        shim_pid: st.owner_pid,
        vmm_pid: vmm,
        vmm_uid: vmm.and_then(uid_of),
        accel: arg("-accel").map(|a| a.split(',').next().unwrap_or(a).to_owned()),
        vcpus: arg("-smp").and_then(|s| s.split(',').next()?.parse().ok()),
        memory_mib: arg("-m").and_then(|m| m.trim_end_matches('M').parse().ok()),
        pss_mib: pss_kib as f64 / 1024.0,
        from_pool: vmm.is_some() && vm_name != format!("scute-{}", st.id),
        age_secs: vmm.and_then(|p| age_secs(p as i32)),
    }
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn age_secs(pid: i32) -> Option<u64> {
    let start = process_start_time(pid)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((uptime as u64).saturating_sub(start / hz))
}

fn human_age(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn table(rows: &[Row]) -> String {
    let dash = || "-".to_owned();
    let opt = |v: Option<u32>| v.map_or_else(dash, |v| v.to_string());
    let mut lines = vec![[
        "SANDBOX", "STATUS", "SHIM", "VMM", "VMM UID", "ACCEL", "VCPUS", "MEM", "PSS", "POOL",
        "AGE",
    ]
    .map(str::to_owned)];
    for r in rows {
        lines.push([
            r.id.clone(),
            r.status.to_owned(),
            r.shim_pid.to_string(),
            opt(r.vmm_pid),
            opt(r.vmm_uid),
            r.accel.clone().unwrap_or_else(dash),
            opt(r.vcpus),
            r.memory_mib.map_or_else(dash, |m| format!("{m}M")),
            format!("{:.0}M", r.pss_mib),
            if r.from_pool { "yes" } else { "no" }.to_owned(),
            r.age_secs.map_or_else(dash, human_age),
        ]);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_members_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["ready", "claimed"] {
            std::fs::create_dir_all(d.path().join("_pool").join(sub)).unwrap();
        }
        std::fs::write(d.path().join("_pool/ready/ab12.pool-1-2.sock"), "").unwrap();
        std::fs::write(d.path().join("_pool/claimed/ab12.pool-1-3.sock"), "").unwrap();
        assert_eq!(pool_member(d.path(), "pool-1-2"), Some("ready"));
        assert_eq!(pool_member(d.path(), "pool-1-3"), Some("handed out"));
        assert_eq!(pool_member(d.path(), "pool-1-4"), None);
        assert_eq!(pool_member(d.path(), "web"), None);
    }

    #[test]
    fn ages_read_like_ps() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(125), "2m05s");
        assert_eq!(human_age(3 * 3600 + 61), "3h01m");
        assert_eq!(human_age(2 * 86400 + 3600), "2d01h");
    }

    #[test]
    fn a_stale_sandbox_shows_what_it_has_left() {
        let st = StateFile {
            id: "gone".into(),
            owner_pid: -1,
            owner_start: None,
            vmm_pid: Some(u32::MAX),
            virtiofsd_pid: None,
            rootfs_virtiofsd_pid: None,
            bundle: None,
            cgroups: Vec::new(),
            starts: Default::default(),
        };
        let r = row(&st);
        assert_eq!((r.status, r.vmm_pid, r.from_pool), ("stale", None, false));
        let t = table(&[r]);
        assert!(t.starts_with("SANDBOX  STATUS"), "{t}");
        assert!(
            t.lines().nth(1).unwrap().starts_with("gone     stale"),
            "{t}"
        );
    }
}
