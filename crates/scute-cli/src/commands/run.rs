//! `scute run`: runc-compatible where it overlaps.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use scute_runtime::bundle::{validate_id, Bundle};
use scute_runtime::run::{run, RunIo};
use scute_runtime::Config;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

#[derive(ClapArgs)]
pub struct Args {
    /// Bundle directory (config.json + rootfs).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Container id (also the sandbox id).
    pub id: String,
}

pub fn main(config_path: Option<&Path>, debug: bool, args: Args) -> anyhow::Result<i32> {
    let mut config = Config::load(config_path)?;
    config.debug |= debug;
    validate_id(&args.id)?;
    let bundle = Bundle::load(&args.bundle)?;
    let rt = super::runtime()?;
    let raw = if bundle.terminal() {
        RawTerminal::enable()
    } else {
        None
    };
    let result = rt.block_on(async {
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
        let io = RunIo {
            stdin: Some(Box::new(tokio::io::stdin())),
            stdout: Box::new(tokio::io::stdout()),
            stderr: Box::new(tokio::io::stderr()),
        };
        anyhow::Ok(run(&config, &args.id, &bundle, io, rx).await?)
    });
    drop(raw);
    // Don't wait for the blocking stdin reader: it may never return.
    rt.shutdown_background();
    let outcome = result?;
    tracing::debug!(?outcome, "finished");
    Ok(outcome.status.shell_code())
}

/// Puts the caller's terminal in raw mode for a container terminal; restores
/// it when dropped.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
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
