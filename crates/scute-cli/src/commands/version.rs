//! `scute version`: this binary, and the versions of everything a sandbox
//! is made of (shim, guest assets, QEMU, containerd), read from the config;
//! `scute config`: that config, effective.

use std::path::{Path, PathBuf};
use std::process::Command;

use scute_runtime::Config;

/// The first line `bin ARGS` prints, or why there is none.
fn first_line(bin: &Path, args: &[&str]) -> String {
    match Command::new(bin).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Ok(o) => format!("{} exited with {}", bin.display(), o.status),
        Err(e) => format!("not found ({}: {e})", bin.display()),
    }
}

/// `name` beside this binary, else on `$PATH`.
fn beside_or_path(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    beside.unwrap_or_else(|| PathBuf::from(name))
}

pub fn main(config: Option<&Path>) -> anyhow::Result<i32> {
    let c = Config::load(config)?;
    let (path, _) = Config::path(config);
    println!("scute      {}", crate::VERSION);
    println!(
        "config     {}{}",
        path.display(),
        if path.exists() {
            ""
        } else {
            " (absent: defaults)"
        }
    );
    println!(
        "shim       {}",
        first_line(&beside_or_path("containerd-shim-scute-v2"), &["--version"])
    );
    println!(
        "protocol   {} (host and agent must agree)",
        scute_protocol::PROTOCOL_VERSION
    );
    let flavor = c.kernel.flavor();
    match scute_runtime::manifest::read_manifest(&c.assets_dir, flavor) {
        Some(m) => println!(
            "guest      kernel {} ({} flavor), initramfs {:.1} MiB with the agent, in {}",
            m.kernel_version,
            m.flavor,
            m.initrd_bytes as f64 / (1024.0 * 1024.0),
            c.assets_dir.display()
        ),
        None => println!(
            "guest      no assets in {}: build them with `scute assets build`",
            c.assets_dir.display()
        ),
    }
    println!("qemu       {}", first_line(&c.qemu_path, &["--version"]));
    println!(
        "containerd {}",
        first_line(Path::new("containerd"), &["--version"])
    );
    Ok(0)
}

/// `scute config`: the config as scute uses it, as TOML.
pub fn config(config: Option<&Path>) -> anyhow::Result<i32> {
    let c = Config::load(config)?;
    let (path, _) = Config::path(config);
    println!(
        "# effective scute config: {}{}",
        path.display(),
        if path.exists() {
            ", with defaults for what it leaves out"
        } else {
            " (absent: all defaults)"
        }
    );
    print!("{}", toml::to_string(&c)?);
    Ok(0)
}
