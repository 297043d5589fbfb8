//! `scute check`: can this host run scute, and if not, what to do.

use std::path::Path;
use std::process::Command;

use scute_hypervisor::{accel, RealHost};

use crate::manifest::read_manifest;
use crate::Config;

/// A check that failed: what is wrong and what to do, as `scute check`
/// prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Problem(pub String);

impl From<String> for Problem {
    fn from(s: String) -> Self {
        Problem(s)
    }
}

impl From<&str> for Problem {
    fn from(s: &str) -> Self {
        Problem(s.to_owned())
    }
}

/// What one check found: what it saw, or the [`Problem`].
pub type Finding = Result<String, Problem>;

#[derive(Debug, Clone)]
pub struct Item {
    pub name: &'static str,
    pub ok: bool,
    /// Works, with a cost or caveat the detail states.
    pub warning: bool,
    pub detail: String,
}

fn item(name: &'static str, r: Finding) -> Item {
    match r {
        Ok(detail) => Item {
            name,
            ok: true,
            warning: false,
            detail,
        },
        Err(Problem(detail)) => Item {
            name,
            ok: false,
            warning: false,
            detail,
        },
    }
}

fn version_of(bin: &Path) -> Finding {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// What confines QEMU: its own uid per sandbox (no capabilities, no new
/// privileges) and seccomp (`-sandbox on`). Not jailed is a failure: the
/// reason and the fix are the detail.
fn vmm_jail(config: &Config) -> Finding {
    if config.vmm_uids == 0 {
        return Err(Problem::from("vmm_uids = 0: QEMU runs as root with every capability; set vmm_uids (default 10000) in the scute config"));
    }
    let clash = crate::jail::uid_range_conflicts(config.vmm_uid_base, config.vmm_uids);
    if !clash.is_empty() {
        return Err(Problem::from(format!(
            "the VMM uid range {}..{} is already in use ({}): a VMM could act as those users; move vmm_uid_base in the scute config to a free range",
            config.vmm_uid_base,
            config.vmm_uid_base as u64 + config.vmm_uids as u64,
            clash.join("; ")
        )));
    }
    let help = match Command::new(&config.qemu_path).arg("-help").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        // The qemu row says what is missing; the jail can't be judged.
        Err(_) => {
            return Err(Problem::from(format!(
                "not checked: QEMU ({}) can't be run, see the qemu line",
                config.qemu_path.display()
            )))
        }
    };
    if !help.contains("-sandbox") {
        return Err(Problem::from(format!(
            "{} has no -sandbox (built without seccomp): QEMU would run without a syscall filter; install Debian's qemu-system-x86",
            config.qemu_path.display()
        )));
    }
    // Reservations are named by uid; `.lock` is not one.
    let used = std::fs::read_dir(config.state_dir.join(".vmm-uids"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0);
    Ok(format!(
        "QEMU as uid {}..{} ({used} in use), no capabilities, seccomp on, own mount namespace (docs/security.md)",
        config.vmm_uid_base,
        config.vmm_uid_base as u64 + config.vmm_uids as u64 - 1
    ))
}

/// The ready VMs: how many, what they cost, what went wrong. A pool that
/// doesn't run is not a fault (sandboxes boot their own VMs); one that
/// holds nothing because its boots fail is.
pub fn pool(config: &Config) -> Finding {
    if !config.pool.enabled() {
        return Ok("off ([pool] size = 0): every sandbox boots its own VM".into());
    }
    let Some(st) = crate::handover::status(config) else {
        return Ok(format!(
            "not running for {}: every sandbox boots its own VM (`scute install` starts it; or run `scute pool`)",
            config.state_dir.display()
        ));
    };
    let mut text = format!(
        "pid {}: {} ready, {} booting of {} ({} MiB idle, limit {} MiB); {} handed to sandboxes, {} failed boots",
        st.pid, st.ready, st.booting, st.size, st.idle_pss_mib, st.max_idle_mib, st.handed_out, st.failed
    );
    if let Some(n) = &st.note {
        text.push_str(&format!("; {n}"));
    }
    if let Some(f) = st.failures.last() {
        text.push_str(&format!("; last failure: {f}"));
    }
    if st.ready == 0 && st.booting == 0 && st.failed > 0 {
        Err(Problem::from(text))
    } else {
        Ok(text)
    }
}

/// Whether the running pool's VMs fit this config: a pool started before
/// the assets or the config changed holds VMs no sandbox can take (they
/// boot their own) and memory for nothing. A warning, not a fault.
pub fn pool_shape(config: &Config) -> Option<Finding> {
    crate::handover::status(config)?;
    // The pool boots its VMs at its own size ([pool] vcpus, memory_mib).
    Some(match crate::handover::cannot_serve(&config.for_pool()) {
        None => Ok("the ready VMs fit this config".into()),
        Some(why) => Err(Problem::from(why)),
    })
}

/// Sandboxes left behind by dead shims: not a reason scute can't run, but
/// what `scute cleanup` is for.
pub fn stale(config: &Config) -> Finding {
    let stale = crate::stale::stale(&config.state_dir);
    if stale.is_empty() {
        Ok("no sandbox left behind by a dead shim".into())
    } else {
        Err(Problem::from(format!(
            "{} sandbox(es) whose shim is gone still hold state, mounts or a VMM uid ({}): run `scute cleanup`",
            stale.len(),
            stale
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

pub fn run(config: &Config) -> Vec<Item> {
    let decision = accel::decide(config.accel, &RealHost);
    let tcg = matches!(&decision, Ok(d) if d.accel == scute_hypervisor::Accel::Tcg);
    let mut accel_item = item(
        "acceleration",
        decision
            .map(|d| format!("{}: {}", d.accel, d.reason))
            .map_err(|e| {
                Problem(format!(
                    "accel = \"kvm\" but {e}; set accel = \"auto\" or \"tcg\""
                ))
            }),
    );
    if tcg {
        // Software emulation works, at a price a newcomer should see here.
        accel_item.warning = true;
        accel_item.detail.push_str(
            "; the cost measured on scute's 2-core build machine (docs/performance.md): a cold `ctr run` ~0.7-0.9 s (6-7x runc), ~0.17 s from a pool VM (1.4x), CPU-bound work ~13x slower",
        );
    }
    // What QEMU is given for the accelerator picked, as the sandbox's
    // command line has it (scute_hypervisor::qemu).
    if accel_item.ok {
        let accel = if tcg {
            scute_hypervisor::Accel::Tcg
        } else {
            scute_hypervisor::Accel::Kvm
        };
        accel_item.detail.push_str(&format!(
            "; settings: {}; from tcg_tb_size_mib and vcpus (a container that asks for more CPUs gets more vCPUs, up to max_vcpus)",
            config.accel_settings(accel)
        ));
    }
    let mut items = vec![item("root", root()), accel_item];
    items.push(item(
        "qemu",
        if config.qemu_path.is_file() {
            version_of(&config.qemu_path).map(|v| format!("{} ({v})", config.qemu_path.display()))
        } else {
            Err(Problem::from(format!(
                "{} not found: apt-get install qemu-system-x86",
                config.qemu_path.display()
            )))
        },
    ));
    items.push(item(
        "virtiofsd",
        match config.virtiofsd() {
            Some(p) => version_of(&p).map(|v| format!("{} ({v})", p.display())),
            None => Err(Problem::from("not found: cargo install virtiofsd --locked")),
        },
    ));
    let (k, i) = (config.kernel(), config.initrd());
    items.push(item(
        "guest assets",
        if k.is_file() && i.is_file() {
            Ok(
                match read_manifest(&config.assets_dir, config.kernel.flavor()) {
                    Some(m) => format!(
                        "{} kernel {} ({} KiB), initramfs {} KiB, in {}",
                        config.kernel.flavor().name(),
                        m.kernel_version,
                        m.kernel_bytes / 1024,
                        m.initrd_bytes / 1024,
                        config.assets_dir.display()
                    ),
                    None => format!("{} and {}", k.display(), i.display()),
                },
            )
        } else {
            Err(Problem::from(format!(
                "{} or {} missing: run `scute assets build`",
                k.display(),
                i.display()
            )))
        },
    ));
    items.push(item(
        "cgroups",
        cgroups(Path::new("/sys/fs/cgroup")).map(|d| {
            if config.vmm_memory_overhead_mib == 0 {
                format!("{d}; vmm_memory_overhead_mib = 0: no memory limit")
            } else {
                format!(
                    "{d}, overhead {} MiB; guests run their own cgroup v2",
                    config.vmm_memory_overhead_mib
                )
            }
        }),
    ));
    items.push(item("vmm jail", vmm_jail(config)));
    items.push(item("pool", pool(config)));
    items.push(item("state dir", state_dir_writable(&config.state_dir)));
    items
}

/// Whether this process can create (and remove) a file in `dir`: an
/// existing dir another user owns is not writable just because it exists.
fn state_dir_writable(dir: &Path) -> Finding {
    let fail = |e: std::io::Error| format!("{}: {e} (scute runs as root)", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(format!("{} writable", dir.display()))
}

/// scute mounts, makes cgroups and network devices, and starts each QEMU
/// under a uid of its own: only root can.
fn root() -> Finding {
    let uid = nix::unistd::Uid::effective();
    if uid.is_root() {
        Ok("running as root".into())
    } else {
        Err(Problem::from(format!(
            "running as uid {uid}: scute needs root (it mounts the share, creates cgroups and taps, and runs each QEMU as a uid of its own); run `sudo scute check`"
        )))
    }
}

/// What `scute check` says about the VMM's cgroup on this host.
fn cgroups(root: &Path) -> Finding {
    if root.join("cgroup.controllers").exists() {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = ["memory", "pids"]
            .into_iter()
            .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
            .collect();
        if missing.is_empty() {
            Ok("cgroup v2: QEMU and virtiofsd in the sandbox's cgroup (memory.max = guest RAM + overhead, pids.max)".into())
        } else {
            Err(format!(
                "cgroup v2 without the {} controller(s): the VMM's cgroup gets no such limit",
                missing.join(", ")
            )
            .into())
        }
    } else {
        let mounted: Vec<&str> = crate::hostcgroup::V1_CONTROLLERS
            .into_iter()
            .filter(|c| root.join(c).is_dir())
            .collect();
        if mounted.is_empty() {
            Err(format!(
                "no cgroup hierarchy under {}: QEMU would run in the shim's cgroup, unbounded; mount cgroup2 there",
                root.display()
            )
            .into())
        } else {
            Ok(format!(
                "cgroup v1 ({}): QEMU and virtiofsd in the sandbox's cgroup (memory limit = guest RAM + overhead, pids.max)",
                mounted.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_of_another_shape_is_a_warning_with_the_remedy() {
        let d = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: d.path().to_owned(),
            ..Config::default()
        };
        assert!(pool_shape(&config).is_none(), "no pool, nothing to say");
        let dir = crate::handover::dir(&config);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |shape: String| {
            let st = crate::handover::Status {
                pid: std::process::id(),
                size: 2,
                shape,
                ..Default::default()
            };
            std::fs::write(dir.join("status.json"), serde_json::to_string(&st).unwrap()).unwrap();
        };
        write(crate::handover::shape(&config));
        assert!(pool_shape(&config).unwrap().is_ok());
        write("0000000000000000".into());
        let why = pool_shape(&config).unwrap().unwrap_err();
        assert!(why.0.contains("scute install"), "{why}");
    }
}
