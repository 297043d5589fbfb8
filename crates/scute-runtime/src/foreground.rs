//! What a host process that stands for a container's process needs (`scute
//! run`, scute-runc's keeper and exec holders): the signals it forwards,
//! the caller's terminal in raw mode, the VM's liveness.

use std::os::fd::AsFd;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::client::{AgentClient, ChannelClosed};
use crate::Config;

/// The signals such a process forwards to the container's: INT, TERM,
/// HUP, QUIT, USR1, USR2, as they arrive (inside a tokio runtime).
pub fn forwarded_signals() -> std::io::Result<mpsc::Receiver<i32>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(16);
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(kind.as_raw_value()).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// Resolves once the agent missed `liveness_misses` checks in a row (each
/// `liveness_interval_secs` apart); never when the checks are off.
pub async fn liveness_lost(client: &AgentClient, config: &Config) -> ChannelClosed {
    if config.liveness_interval_secs == 0 {
        return std::future::pending().await;
    }
    let every = Duration::from_secs(config.liveness_interval_secs);
    match client.unresponsive(every, config.liveness_misses).await {
        Some(why) => why,
        None => std::future::pending().await,
    }
}

/// The caller's terminal in raw mode while it is a container's; restored
/// when dropped.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal.
    pub fn enable() -> Option<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}
