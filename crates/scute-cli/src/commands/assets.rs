//! `scute assets build`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use scute_runtime::assets::{self, BuildRequest, Outcome};
use scute_runtime::Config;

#[derive(Subcommand)]
pub enum Cmd {
    /// Build the guest kernel + initramfs into the assets dir (only if inputs changed).
    Build {
        /// scute-agent binary (default: next to this scute binary).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Kernel version from /boot (default: newest *-cloud-amd64).
        #[arg(long)]
        kernel_version: Option<String>,
        /// Output dir (default: assets_dir from the config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rebuild even if nothing changed.
        #[arg(long)]
        force: bool,
    },
}

pub fn main(config: Option<&Path>, cmd: Cmd) -> anyhow::Result<i32> {
    let config = Config::load(config)?;
    let Cmd::Build {
        agent,
        kernel_version,
        dir,
        force,
    } = cmd;
    let agent = match agent {
        Some(a) => a,
        None => std::env::current_exe()
            .context("locate scute binary")?
            .with_file_name("scute-agent"),
    };
    let req = BuildRequest {
        assets_dir: dir.unwrap_or(config.assets_dir),
        agent,
        kernel_version,
        force,
    };
    let outcome = assets::build(&req, &mut |line| eprintln!("scute assets: {line}"))?;
    let (verb, m) = match outcome {
        Outcome::Built(m) => ("built", m),
        Outcome::UpToDate(m) => ("up to date", m),
    };
    println!(
        "assets {verb} in {}: kernel {} ({:.1} MiB), initramfs {:.1} MiB, modules: {}",
        req.assets_dir.display(),
        m.kernel_version,
        m.kernel_bytes as f64 / 1048576.0,
        m.initrd_bytes as f64 / 1048576.0,
        m.modules.join(" ")
    );
    Ok(0)
}
