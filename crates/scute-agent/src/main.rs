//! scute-agent: the guest's init (PID 1).
//!
//! Stage 1 runs from the initramfs: load the kernel modules the host listed,
//! move the initramfs content onto a tmpfs root (pivot_root can't leave the
//! initial rootfs) and re-exec. Stage 2 mounts the pseudo filesystems and the
//! shared virtio-fs directory, then serves the host over the virtio-serial port.

mod boot;
mod channel;
mod container;
mod executor;
mod network;
mod reaper;
mod server;

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SCUTE_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(err) = boot::stage1() {
        tracing::error!("agent stage 1 failed: {err:#}");
        boot::halt();
    }
    if let Err(err) = boot::stage2() {
        tracing::error!("agent stage 2 failed: {err:#}");
        boot::halt();
    }
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
