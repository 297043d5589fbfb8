//! scute-agent: the guest's init (PID 1).
//!
//! Stage 1 runs from the initramfs: load the kernel modules the host listed,
//! bind the initramfs content onto a tmpfs root (pivot_root can't leave the
//! initial rootfs) and chroot there. Stage 2 mounts the pseudo filesystems and the
//! shared virtio-fs directory, then serves the host over the virtio-serial port.

mod boot;
mod channel;
mod container;
mod debug;
mod dns;
mod executor;
mod netlink;
mod network;
mod reaper;
mod server;

use std::process::ExitCode;

use tracing_subscriber::filter::LevelFilter;

fn main() -> ExitCode {
    let started_ms = boot::uptime_ms();
    // A level, not an EnvFilter: EnvFilter compiles its directive regexes
    // the first time it parses one, a few ms of every boot under TCG.
    let level = std::env::var("SCUTE_AGENT_LOG").ok();
    let parsed = level.as_deref().map(str::parse::<LevelFilter>);
    let max_level = match parsed {
        Some(Ok(l)) => l,
        _ => LevelFilter::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(max_level)
        .init();
    if let (Some(l), Some(Err(_))) = (&level, &parsed) {
        tracing::warn!("SCUTE_AGENT_LOG={l:?} is not a level (error, warn, info, debug, trace, off): logging at info");
    }
    tracing::debug!(boot_ms = started_ms, "agent started");
    if let Err(err) = boot::stage1() {
        tracing::error!("agent stage 1 failed: {err:#}");
        boot::halt();
    }
    tracing::debug!(boot_ms = boot::uptime_ms(), "stage 1 done: new root");
    if let Err(err) = boot::stage2() {
        tracing::error!("agent stage 2 failed: {err:#}");
        boot::halt();
    }
    tracing::debug!(
        boot_ms = boot::uptime_ms(),
        "stage 2 done: mounts and shares"
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!("tokio runtime: {err}");
            boot::halt();
        }
    };
    if let Err(err) = rt.block_on(server::serve()) {
        tracing::error!("agent failed: {err:#}");
    }
    boot::halt();
    #[allow(unreachable_code)]
    ExitCode::FAILURE
}
