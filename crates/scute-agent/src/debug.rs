//! The operator's debug shell: busybox `sh` in the agent's own namespaces
//! (the guest as a whole, outside every container), on a pty. The host puts
//! busybox in the share only when its config enables the shell; without it
//! there is nothing to run.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use scute_protocol::{AgentError, ErrorCode};

use crate::container::{HostSide, Spawned};
use crate::reaper::{Reaper, SPAWN_LOCK};

fn busybox() -> PathBuf {
    PathBuf::from(crate::boot::SHARED_DIR)
        .join(scute_protocol::message::DEBUG_DIR)
        .join("busybox")
}

fn internal(what: &'static str) -> impl Fn(std::io::Error) -> AgentError {
    move |e| AgentError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

pub fn spawn(reaper: &Reaper, width: u16, height: u16) -> Result<Spawned, AgentError> {
    let bb = busybox();
    if !bb.is_file() {
        return Err(AgentError::new(
            ErrorCode::FailedPrecondition,
            "the debug shell is off for this sandbox: the host's scute config has debug_shell = false",
        ));
    }
    let size = nix::pty::Winsize {
        ws_row: height.max(1),
        ws_col: width.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).map_err(|e| internal("openpty")(e.into()))?;
    let slave: OwnedFd = pty.slave;
    let mut cmd = std::process::Command::new(&bb);
    cmd.arg0("sh")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/")
        .env("TERM", "xterm")
        .env("PS1", "scute-debug:\\w# ")
        .stdin(slave.try_clone().map_err(internal("dup pty"))?)
        .stdout(slave.try_clone().map_err(internal("dup pty"))?)
        .stderr(slave);
    // SAFETY: between fork and exec, only async-signal-safe calls: setsid
    // and an ioctl on fd 0 (the pty's slave) to make it the controlling
    // terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Registered with the reaper before anyone can reap it.
    let guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn().map_err(internal("start the debug shell"))?;
    let pid = child.id() as i32;
    let exit = reaper.watch(pid);
    drop(guard);
    let master = std::fs::File::from(pty.master);
    let out = master.try_clone().map_err(internal("dup pty master"))?;
    let keep = master.try_clone().map_err(internal("dup pty master"))?;
    tracing::debug!(fd = master.as_raw_fd(), "debug shell pty");
    Ok(Spawned {
        pid,
        exit,
        io: HostSide {
            stdin: Some(master),
            stdout: Some(out),
            stderr: None,
        },
        pty: Some(keep),
    })
}
