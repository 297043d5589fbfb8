//! `scute check`.

use std::path::Path;
use std::process::Command;

use scute_runtime::{check, Config};

const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

pub fn main(config: Option<&Path>) -> anyhow::Result<i32> {
    let config = Config::load(config)?;
    let items = check::run(&config);
    for i in &items {
        let tag = match (i.ok, i.warning) {
            (false, _) => "FAIL",
            (true, true) => "warn",
            (true, false) => "ok  ",
        };
        println!("{tag} {:<13} {}", i.name, i.detail);
    }
    // Reported, not required for `scute run`: leftovers, containerd.
    let mut warnings = vec![("stale", check::stale(&config))];
    if let Some(r) = check::pool_shape(&config) {
        warnings.push(("pool shape", r));
    }
    warnings.extend(containerd_items());
    let mut warned = items.iter().filter(|i| i.ok && i.warning).count();
    for (name, r) in warnings {
        let (tag, detail) = match r {
            Ok(d) => ("ok  ", d),
            Err(d) => {
                warned += 1;
                ("warn", d)
            }
        };
        println!("{tag} {name:<13} {detail}");
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    if failed == 0 {
        match warned {
            0 => println!("scute can run on this host"),
            n => println!("scute can run on this host, with {n} warning(s) (see warn lines)"),
        }
        Ok(0)
    } else {
        println!("scute cannot run on this host: {failed} check(s) failed (see FAIL lines)");
        Ok(1)
    }
}

/// `scute cleanup`.
pub fn cleanup(config: Option<&Path>) -> anyhow::Result<i32> {
    let config = Config::load(config)?;
    let stale = scute_runtime::state::stale(&config.state_dir);
    if stale.is_empty() {
        println!("nothing to clean in {}", config.state_dir.display());
    }
    let mut left = 0;
    for dir in &stale {
        scute_runtime::state::cleanup_stale(dir);
        if dir.exists() {
            left += 1;
            println!("could not remove {} (see the log above)", dir.display());
        } else {
            println!("removed {}", dir.display());
        }
    }
    Ok(if left == 0 { 0 } else { 1 })
}

fn containerd_items() -> Vec<(&'static str, Result<String, String>)> {
    let mut v = Vec::new();
    let server = Command::new("ctr")
        .args(["--address", CONTAINERD_SOCKET, "version"])
        .output();
    v.push((
        "containerd",
        match server {
            Ok(o) if o.status.success() => {
                let t = String::from_utf8_lossy(&o.stdout);
                let ver = scute_lab::ctr::server_version_in(&t).unwrap_or("?");
                Ok(format!("reachable at {CONTAINERD_SOCKET}, version {ver}"))
            }
            Ok(o) => Err(format!(
                "not reachable at {CONTAINERD_SOCKET}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("ctr not found ({e}): apt-get install containerd")),
        },
    ));
    let shim = Command::new("containerd-shim-scute-v2")
        .arg("--version")
        .output();
    v.push((
        "shim",
        match shim {
            Ok(o) => {
                let got = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                let want = format!("containerd-shim-scute-v2 {}", crate::VERSION);
                if got == want {
                    Ok(format!(
                        "containerd-shim-scute-v2 on PATH, same version ({})",
                        crate::VERSION
                    ))
                } else {
                    Err(format!(
                        "version mismatch: PATH has {got:?}, this scute is {}; run `scute install`",
                        crate::VERSION
                    ))
                }
            }
            Err(_) => Err("containerd-shim-scute-v2 not on PATH: run `scute install`".into()),
        },
    ));
    v.push((
        "runtime",
        match std::fs::read_to_string(CONTAINERD_CONFIG) {
            Ok(t) if crate::install::is_registered(&t) => Ok(format!(
                "{} registered in {CONTAINERD_CONFIG}",
                crate::install::RUNTIME_TYPE
            )),
            Ok(_) => Err(format!(
                "not registered in {CONTAINERD_CONFIG}: run `scute install`"
            )),
            Err(e) => Err(format!("{CONTAINERD_CONFIG}: {e}; run `scute install`")),
        },
    ));
    v
}
