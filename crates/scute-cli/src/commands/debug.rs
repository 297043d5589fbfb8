//! `scute debug SANDBOX`: the operator's shell in a sandbox's guest,
//! outside its containers (Kata's debug console), through the shim.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use scute_runtime::Config;
use tokio::io::AsyncWriteExt;

#[derive(ClapArgs)]
pub struct Args {
    /// The sandbox's id (`scute ps` lists them; a CRI pod's is its pod
    /// sandbox id).
    pub sandbox: String,
}

pub fn main(config: Option<&Path>, a: Args) -> anyhow::Result<i32> {
    let c = Config::load(config)?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("scute debug needs root: the shell is root in the sandbox's guest");
    }
    scute_runtime::bundle::validate_id(&a.sandbox)?;
    let dir = c.state_dir.join(&a.sandbox);
    let socket = dir.join("debug.sock");
    if !dir.is_dir() {
        bail!(
            "no sandbox {} in {} (see `scute ps`)",
            a.sandbox,
            c.state_dir.display()
        );
    }
    if !socket.exists() {
        bail!(
            "sandbox {} has no debug shell: set debug_shell = true in {} (sandboxes started after that get one)",
            a.sandbox,
            Config::path(config).0.display()
        );
    }
    let (width, height) = terminal_size().unwrap_or((80, 24));
    let raw = if std::io::stdin().is_terminal() {
        super::run::RawTerminal::enable()
    } else {
        None
    };
    let rt = super::runtime()?;
    let r: anyhow::Result<()> = rt.block_on(async {
        let conn = tokio::net::UnixStream::connect(&socket)
            .await
            .with_context(|| format!("connect {}", socket.display()))?;
        let (mut rd, mut wr) = conn.into_split();
        wr.write_all(format!("{{\"width\":{width},\"height\":{height}}}\n").as_bytes())
            .await?;
        let up = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await;
            let _ = wr.shutdown().await;
        });
        let mut out = tokio::io::stdout();
        tokio::io::copy(&mut rd, &mut out).await?;
        out.flush().await?;
        up.abort();
        Ok(())
    });
    drop(raw);
    r?;
    Ok(0)
}

fn terminal_size() -> Option<(u16, u16)> {
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`, which outlives the call.
    let r = unsafe { libc::ioctl(out.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}
