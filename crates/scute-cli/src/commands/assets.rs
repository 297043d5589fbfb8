//! `scute assets build`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use scute_assets::{self as assets, BuildRequest, Outcome};
use scute_runtime::config::{Flavor, KernelChoice};
use scute_runtime::Config;

#[derive(Subcommand)]
pub enum Cmd {
    /// Build the guest kernel + initramfs into the assets dir (only if inputs changed).
    Build {
        /// scute-agent binary (default: next to this scute binary, or the
        /// newer static `target/x86_64-unknown-linux-gnu/agent/scute-agent`
        /// that `make build` makes).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Which kernel: `scute` (compiled from linux-source-6.1, minimal)
        /// or `debian` (the cloud kernel from /boot). Default: the config's.
        #[arg(long, value_parser = ["scute", "debian"])]
        kernel: Option<String>,
        /// Debian kernel version from /boot (default: newest *-cloud-amd64).
        #[arg(long)]
        kernel_version: Option<String>,
        /// Where scute's kernel is compiled (default: /var/cache/scute).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
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
        kernel,
        kernel_version,
        cache_dir,
        dir,
        force,
    } = cmd;
    let flavor = match kernel.as_deref() {
        Some("debian") => Flavor::Debian,
        Some(_) => Flavor::Scute,
        None if kernel_version.is_some() => Flavor::Debian,
        None => match config.kernel {
            KernelChoice::Scute => Flavor::Scute,
            _ => Flavor::Debian,
        },
    };
    let agent = match agent {
        Some(a) => a,
        None => crate::install::agent_binary(
            std::env::current_exe()
                .context("locate scute binary")?
                .parent()
                .unwrap_or(std::path::Path::new("/")),
        ),
    };
    let req = BuildRequest {
        assets_dir: dir.unwrap_or(config.assets_dir),
        agent,
        flavor,
        kernel_version,
        cache_dir: cache_dir.unwrap_or_else(|| assets::DEFAULT_CACHE_DIR.into()),
        force,
    };
    let outcome = assets::build(&req, &mut |line| eprintln!("scute assets: {line}"))?;
    let (verb, m) = match outcome {
        Outcome::Built(m) => ("built", m),
        Outcome::UpToDate(m) => ("up to date", m),
    };
    let modules = if m.modules.is_empty() {
        "none (built in)".to_owned()
    } else {
        m.modules.join(" ")
    };
    println!(
        "assets {verb} in {}: {} kernel {} ({:.1} MiB), initramfs {:.1} MiB, modules: {modules}",
        req.assets_dir.display(),
        flavor.name(),
        m.kernel_version,
        m.kernel_bytes as f64 / 1048576.0,
        m.initrd_bytes as f64 / 1048576.0,
    );
    Ok(0)
}
