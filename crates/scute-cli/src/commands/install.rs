//! `scute install` / `scute uninstall`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Args as ClapArgs;

use crate::install::{self, Paths};

#[derive(ClapArgs)]
pub struct Args {
    /// Install prefix: scute's binaries are in PREFIX/bin.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// containerd's config file (version 2 or 3).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// The record of what install changed, which uninstall reverses.
    #[arg(long, default_value = "/var/lib/scute/install.json")]
    record: PathBuf,
    /// Print everything that would change (files with a diff of
    /// containerd's config, the pool, containerd's restart) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Don't restart containerd.
    #[arg(long)]
    no_restart: bool,
    /// Leave `scute pool` alone: install doesn't start it, uninstall
    /// doesn't stop it.
    #[arg(long)]
    no_pool: bool,
    /// Also register scute-runc as Docker's runtime `scute` (in
    /// /etc/docker/daemon.json; a running dockerd reloads it).
    #[arg(long)]
    docker: bool,
    /// Also register scute-runc as Podman's runtime `scute` (in
    /// /etc/containers/containers.conf).
    #[arg(long)]
    podman: bool,
}

/// `config` is the global `--config` (install writes scute's config there,
/// with defaults, when it is missing; uninstall stops the pool it names).
pub fn main(config: Option<&Path>, a: Args, uninstall: bool) -> anyhow::Result<i32> {
    let source_dir = std::env::current_exe()
        .context("locate the scute binary")?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let paths = Paths {
        prefix: a.prefix,
        scute_config: scute_runtime::Config::path(config).0,
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
    if uninstall && !a.no_pool {
        // Ready VMs never outlive scute.
        stop_pool(&paths.scute_config, a.dry_run)?;
    }
    let outcome = if uninstall {
        install::uninstall(&paths, a.dry_run)?
    } else {
        install::install(&paths, a.dry_run)?
    };
    for m in &outcome.messages {
        println!("{}{m}", if a.dry_run { "would " } else { "" });
    }
    // Uninstall takes scute out of both engines whether or not it is
    // asked to: their entries would name a removed binary.
    let engines_changed = engines(
        &paths.prefix.join("bin/scute-runc"),
        a.docker || uninstall,
        a.podman || uninstall,
        !uninstall,
        a.dry_run,
    )?;
    let mut pool_acts = false;
    if !uninstall && !a.no_pool {
        pool_acts = start_pool(&scute, &paths.scute_config, outcome.changed, a.dry_run)?;
    }
    if !outcome.changed {
        if !pool_acts && !engines_changed {
            println!("nothing to change: scute is installed and registered");
        }
        return Ok(0);
    }
    if a.no_restart {
        println!(
            "{}restart containerd to apply the change",
            if a.dry_run { "then " } else { "" }
        );
        return Ok(0);
    }
    let systemd = Command::new("systemctl")
        .args(["is-active", "--quiet", "containerd"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if a.dry_run {
        println!(
            "{}",
            if systemd {
                "would restart containerd (systemctl restart containerd): its running containers keep running"
            } else {
                "would ask you to restart containerd (it is not running under systemd here)"
            }
        );
        return Ok(0);
    }
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

/// Registers (or removes) scute-runc in Docker's and Podman's configs;
/// whether anything changed. A running dockerd reloads its runtimes on
/// SIGHUP, without a restart.
fn engines(
    bin: &Path,
    docker: bool,
    podman: bool,
    register: bool,
    dry_run: bool,
) -> anyhow::Result<bool> {
    let changes = crate::engines::plan(docker, podman, bin, register)?;
    for c in &changes {
        let name = c.path.display().to_string();
        println!(
            "{}{} {name}:\n{}",
            if dry_run { "would " } else { "" },
            if register {
                "register runtime scute (scute-runc) in"
            } else {
                "remove runtime scute from"
            },
            install::diff(&c.old, &c.new, &name)
        );
        if !dry_run {
            crate::engines::write_atomic(&c.path, &c.new)?;
        }
    }
    let docker_changed = changes
        .iter()
        .any(|c| c.path == Path::new(crate::engines::DOCKER_CONFIG));
    if docker_changed {
        match crate::engines::dockerd_pid() {
            Some(pid) if !dry_run => {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .context("signal dockerd to reload its config")?;
                println!("dockerd (pid {pid}) reloads its runtimes (SIGHUP)");
            }
            Some(pid) => {
                println!("would signal dockerd (pid {pid}) to reload its runtimes (SIGHUP)")
            }
            None => println!("dockerd is not running: it reads the runtime when it starts"),
        }
    }
    Ok(!changes.is_empty())
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
/// Whether it started (or, in a dry run, would start) anything.
fn start_pool(scute: &Path, config: &Path, changed: bool, dry_run: bool) -> anyhow::Result<bool> {
    // In a dry run the config may not be written yet: its defaults then.
    let c = match (dry_run, config.exists()) {
        (true, false) => scute_runtime::Config::default(),
        _ => scute_runtime::Config::load(Some(config))?,
    };
    if !c.pool.enabled() {
        println!("pool: off ([pool] size = 0 in {})", config.display());
        return Ok(false);
    }
    if let Some(st) = scute_runtime::handover::status(&c) {
        if !changed {
            println!("pool: running (pid {}, {} ready)", st.pid, st.ready);
            return Ok(false);
        }
        if dry_run {
            println!(
                "would restart scute pool (pid {}): the binaries changed",
                st.pid
            );
            return Ok(true);
        }
        stop_pool(config, false)?;
    }
    if dry_run {
        let (vcpus, mib) = (
            c.pool.vcpus.unwrap_or(c.vcpus),
            c.pool.memory_mib.unwrap_or(c.memory_mib),
        );
        println!(
            "would start scute pool ([pool] in {}): {} VMs booted ahead, {vcpus} vCPU and {mib} MiB of guest memory each, host memory held at most {} MiB; as {}",
            config.display(),
            c.pool.size,
            c.pool.max_idle_mib,
            if systemd_is_init() {
                format!("systemd unit scute-pool ({POOL_UNIT})")
            } else {
                format!("a detached process logging to {POOL_LOG}")
            }
        );
        return Ok(true);
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
        return Ok(true);
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
    while scute_runtime::handover::status(&c).is_none() {
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
    Ok(true)
}

/// Stops the pool for `config`: its ready VMs go with it; VMs it handed
/// out stay with their sandboxes.
fn stop_pool(config: &Path, dry_run: bool) -> anyhow::Result<()> {
    if dry_run {
        let running = scute_runtime::Config::load(Some(config))
            .ok()
            .and_then(|c| scute_runtime::handover::status(&c));
        match (Path::new(POOL_UNIT).exists(), running) {
            (_, Some(st)) => println!(
                "would stop scute pool (pid {}) and its {} ready VMs{}",
                st.pid,
                st.ready,
                if Path::new(POOL_UNIT).exists() {
                    format!(", and remove {POOL_UNIT}")
                } else {
                    String::new()
                }
            ),
            (true, None) => println!("would disable and remove {POOL_UNIT}"),
            (false, None) => {}
        }
        return Ok(());
    }
    if Path::new(POOL_UNIT).exists() {
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
    let Some(st) = scute_runtime::handover::status(&c) else {
        return Ok(());
    };
    let pid = nix::unistd::Pid::from_raw(st.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("stop the pool (pid {})", st.pid))?;
    let t = std::time::Instant::now();
    while scute_runtime::procs::alive(st.pid) {
        if t.elapsed() > std::time::Duration::from_secs(20) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("pool: stopped (pid {}); its ready VMs with it", st.pid);
    Ok(())
}
