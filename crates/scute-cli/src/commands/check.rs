//! `scute check`.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args as ClapArgs;
use scute_runtime::{check, Config};
use serde::Serialize;

use super::Output;

#[derive(ClapArgs)]
pub struct Args {
    /// `table` (default) or `json` (for scripts and bug reports).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
    /// containerd's config file, where scute should be registered.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// containerd's socket.
    #[arg(
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_address: PathBuf,
}

/// One line of the report.
#[derive(Serialize)]
struct Row {
    name: &'static str,
    /// `ok`, `warn` (works, with the cost or caveat `detail` states) or
    /// `fail` (scute can't run until it is fixed; `detail` says how).
    status: &'static str,
    detail: String,
}

pub fn main(config: Option<&Path>, a: Args) -> anyhow::Result<i32> {
    let config = Config::load(config)?;
    let mut rows: Vec<Row> = check::run(&config)
        .into_iter()
        .map(|i| Row {
            name: i.name,
            status: match (i.ok, i.warning) {
                (false, _) => "fail",
                (true, true) => "warn",
                (true, false) => "ok",
            },
            detail: i.detail,
        })
        .collect();
    // Reported, not required for `scute run`: leftovers, containerd.
    let mut soft = vec![("stale", check::stale(&config))];
    if let Some(r) = check::pool_shape(&config) {
        soft.push(("pool shape", r));
    }
    let containerd = containerd_items(&a.containerd_config, &a.containerd_address);
    soft.extend(
        containerd
            .into_iter()
            .chain(crate::engines::check_rows())
            .map(|(name, r)| (name, r.map_err(check::Problem))),
    );
    rows.extend(soft.into_iter().map(|(name, r)| match r {
        Ok(detail) => Row {
            name,
            status: "ok",
            detail,
        },
        Err(check::Problem(detail)) => Row {
            name,
            status: "warn",
            detail,
        },
    }));
    let failed = rows.iter().filter(|r| r.status == "fail").count();
    let warned = rows.iter().filter(|r| r.status == "warn").count();
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "version": crate::VERSION,
                "can_run": failed == 0,
                "failed": failed,
                "warnings": warned,
                "checks": rows,
            }))?
        ),
        Output::Table => {
            for r in &rows {
                let tag = match r.status {
                    "fail" => "FAIL",
                    "warn" => "warn",
                    _ => "ok  ",
                };
                println!("{tag} {:<13} {}", r.name, r.detail);
            }
            match (failed, warned) {
                (0, 0) => println!("scute can run on this host"),
                (0, n) => {
                    println!("scute can run on this host, with {n} warning(s) (see warn lines)")
                }
                (f, _) => {
                    println!("scute cannot run on this host: {f} check(s) failed (see FAIL lines)")
                }
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// `scute cleanup`.
pub fn cleanup(config: Option<&Path>) -> anyhow::Result<i32> {
    let config = Config::load(config)?;
    let stale = scute_runtime::stale::stale(&config.state_dir);
    if stale.is_empty() {
        println!("nothing to clean in {}", config.state_dir.display());
    }
    let mut left = 0;
    for dir in &stale {
        scute_runtime::stale::cleanup(dir);
        if dir.exists() {
            left += 1;
            println!("could not remove {} (see the log above)", dir.display());
        } else {
            println!("removed {}", dir.display());
        }
    }
    Ok(if left == 0 { 0 } else { 1 })
}

fn containerd_items(
    containerd_config: &Path,
    socket: &Path,
) -> Vec<(&'static str, Result<String, String>)> {
    let mut v = Vec::new();
    let unreachable = |why: &str| {
        Err(format!(
            "not reachable at {}: {why}; start containerd, or pass --containerd-address",
            socket.display()
        ))
    };
    // ctr waits 10 s for a socket that does not exist.
    let server = if !socket.exists() {
        unreachable("no such socket")
    } else {
        match Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .arg("version")
            .output()
        {
            Ok(o) if o.status.success() => {
                let t = String::from_utf8_lossy(&o.stdout);
                let ver = scute_lab::ctr::server_version_in(&t).unwrap_or("?");
                Ok(format!("reachable at {}, version {ver}", socket.display()))
            }
            Ok(o) => unreachable(&scute_lab::ctr::dial_failure(&String::from_utf8_lossy(
                &o.stderr,
            ))),
            Err(e) => Err(format!("ctr not found ({e}): apt-get install containerd")),
        }
    };
    v.push(("containerd", server));
    let cfg = containerd_config.display();
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
        match std::fs::read_to_string(containerd_config) {
            Ok(t) if crate::install::is_registered(&t) => Ok(format!(
                "{} registered in {cfg}",
                crate::install::RUNTIME_TYPE
            )),
            Ok(_) => Err(format!("not registered in {cfg}: run `scute install`")),
            Err(e) => Err(format!("{cfg}: {e}; run `scute install`")),
        },
    ));
    v
}
