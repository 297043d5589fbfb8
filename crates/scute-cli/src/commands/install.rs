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
    let outcome = if uninstall {
        install::uninstall(&paths, a.dry_run)?
    } else {
        install::install(&paths, a.dry_run)?
    };
    for m in &outcome.messages {
        println!("{}{m}", if a.dry_run { "would " } else { "" });
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
