//! `scute install` / `scute uninstall`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Args as ClapArgs;

use crate::install::{self, Paths};

#[derive(ClapArgs)]
pub struct Args {
    /// Binaries go to PREFIX/bin.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// containerd's config file (version 2 or 3).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// scute's config file (written with defaults if missing).
    #[arg(long, default_value = "/etc/scute/config.toml")]
    scute_config: PathBuf,
    /// Where install records what it changed, for uninstall.
    #[arg(long, default_value = "/var/lib/scute/install.json")]
    record: PathBuf,
    /// Print what would change (with a diff of containerd's config) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Don't restart containerd.
    #[arg(long)]
    no_restart: bool,
    /// Leave `scute pool` alone: install doesn't start it, uninstall
    /// doesn't stop it.
    #[arg(long)]
    no_pool: bool,
}

pub fn main(a: Args, uninstall: bool) -> anyhow::Result<i32> {
    let source_dir = std::env::current_exe()
        .context("locate the scute binary")?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let paths = Paths {
        prefix: a.prefix,
        scute_config: a.scute_config,
        containerd_config: a.containerd_config,
        record: a.record,
        source_dir,
        // Validate with containerd when it is installed (it may not be yet).
        validate: if which_containerd() {
            install::Validate::Containerd
        } else {
            install::Validate::None
        },
    };
    let scute = paths.prefix.join("bin/scute");
    if uninstall && !a.dry_run && !a.no_pool {
        // Ready VMs never outlive scute.
        stop_pool(&paths.scute_config)?;
    }
    let outcome = if uninstall {
        install::uninstall(&paths, a.dry_run)?
    } else {
        install::install(&paths, a.dry_run)?
    };
    for m in &outcome.messages {
        println!("{}{m}", if a.dry_run { "would " } else { "" });
    }
    if !uninstall && !a.dry_run && !a.no_pool {
        start_pool(&scute, &paths.scute_config, outcome.changed)?;
    }
    if !outcome.changed {
        println!("nothing to change: scute is installed and registered");
        return Ok(0);
    }
    if a.dry_run {
        return Ok(0);
    }
    if a.no_restart {
        println!("restart containerd to apply the change");
        return Ok(0);
    }
    let systemd = Command::new("systemctl")
        .args(["is-active", "--quiet", "containerd"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if systemd {
        let st = Command::new("systemctl")
            .args(["restart", "containerd"])
            .status()
            .context("systemctl restart containerd")?;
        if !st.success() {
            anyhow::bail!(
                "systemctl restart containerd failed ({st}): see `journalctl -u containerd`"
            );
        }
        println!("restarted containerd (systemd)");
    } else {
        println!(
            "containerd is not running under systemd here: restart it yourself to load the change"
        );
    }
    Ok(0)
}

fn which_containerd() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("containerd").is_file()))
}

const POOL_UNIT: &str = "/etc/systemd/system/scute-pool.service";
const POOL_LOG: &str = "/var/log/scute-pool.log";

fn systemd_is_init() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Starts `scute pool` for `config` (a systemd unit where systemd runs,
/// else a detached process logging to /var/log/scute-pool.log); restarts a
/// running one when the binaries changed, so it never runs a replaced binary.
fn start_pool(
    scute: &std::path::Path,
    config: &std::path::Path,
    changed: bool,
) -> anyhow::Result<()> {
    let c = scute_runtime::Config::load(Some(config))?;
    if !c.pool.enabled() {
        println!("pool: off ([pool] size = 0 in {})", config.display());
        return Ok(());
    }
    if let Some(st) = scute_runtime::pool::status(&c) {
        if !changed {
            println!("pool: running (pid {}, {} ready)", st.pid, st.ready);
            return Ok(());
        }
        stop_pool(config)?;
    }
    if systemd_is_init() {
        let unit = format!(
            "[Unit]\nDescription=scute: VMs booted ahead for new sandboxes\nAfter=containerd.service\n\n[Service]\nExecStart={} --config {} pool\nRestart=on-failure\n# Only the pool: VMs it handed out belong to their sandboxes, and\n# the ready ones die with it.\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n",
            scute.display(),
            config.display()
        );
        std::fs::write(POOL_UNIT, unit).with_context(|| format!("write {POOL_UNIT}"))?;
        for args in [&["daemon-reload"][..], &["enable", "--now", "scute-pool"]] {
            let st = Command::new("systemctl").args(args).status()?;
            if !st.success() {
                anyhow::bail!(
                    "systemctl {} failed ({st}): see `journalctl -u scute-pool`",
                    args.join(" ")
                );
            }
        }
        println!("pool: started (systemd unit scute-pool)");
        return Ok(());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(POOL_LOG)
        .with_context(|| format!("open {POOL_LOG}"))?;
    let mut cmd = Command::new(scute);
    cmd.arg("--config")
        .arg(config)
        .arg("pool")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid only, between fork and exec: the pool leaves this
    // session (and its terminal's signals).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {} pool", scute.display()))?;
    let t = std::time::Instant::now();
    while scute_runtime::pool::status(&c).is_none() {
        if t.elapsed() > std::time::Duration::from_secs(10) {
            anyhow::bail!(
                "the pool (pid {}) did not come up: see {POOL_LOG}",
                child.id()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!(
        "pool: started (pid {}, {} VMs to boot in the background, log {POOL_LOG}); `scute check` shows it",
        child.id(),
        c.pool.size
    );
    Ok(())
}

/// Stops the pool for `config`: its ready VMs go with it; VMs it handed
/// out stay with their sandboxes.
fn stop_pool(config: &std::path::Path) -> anyhow::Result<()> {
    if std::path::Path::new(POOL_UNIT).exists() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "scute-pool"])
            .status();
        std::fs::remove_file(POOL_UNIT).with_context(|| format!("remove {POOL_UNIT}"))?;
        println!("pool: stopped, {POOL_UNIT} removed");
        return Ok(());
    }
    let Ok(c) = scute_runtime::Config::load(Some(config)) else {
        return Ok(());
    };
    let Some(st) = scute_runtime::pool::status(&c) else {
        return Ok(());
    };
    let pid = nix::unistd::Pid::from_raw(st.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("stop the pool (pid {})", st.pid))?;
    let t = std::time::Instant::now();
    while scute_runtime::pool::alive(st.pid) {
        if t.elapsed() > std::time::Duration::from_secs(20) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("pool: stopped (pid {}); its ready VMs with it", st.pid);
    Ok(())
}
