//! `scute run`: runc-compatible where it overlaps.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use scute_runtime::bundle::{validate_id, Bundle};
use scute_runtime::run::{run, RunIo};
use scute_runtime::Config;

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
        let rx = scute_runtime::foreground::forwarded_signals()?;
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

pub use scute_runtime::foreground::RawTerminal;
