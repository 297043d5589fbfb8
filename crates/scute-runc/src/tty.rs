//! Terminals: the host side of a container's terminal is a pty whose
//! master goes to the caller's `--console-socket` (as runc sends it) and
//! whose slave the keeper relays to the guest's terminal, byte for byte
//! (raw mode: the guest's line discipline is the one that counts).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::Fail;

/// A new pty: (master, slave), the slave in raw mode.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd), Fail> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let pty = nix::pty::openpty(None, None).map_err(|e| Fail::new(format!("openpty: {e}")))?;
    let mut t = tcgetattr(pty.slave.as_fd()).map_err(|e| Fail::new(format!("tcgetattr: {e}")))?;
    cfmakeraw(&mut t);
    tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t)
        .map_err(|e| Fail::new(format!("tcsetattr: {e}")))?;
    Ok((pty.master, pty.slave))
}

/// Sends the pty master to the caller's console socket, with the slave's
/// path as the message, as runc does (go-runc and conmon read it so).
pub fn send_master(socket: &Path, master: &OwnedFd, slave: &OwnedFd) -> Result<(), Fail> {
    let conn = UnixStream::connect(socket).map_err(|e| {
        Fail::new(format!(
            "connect to the console socket {}: {e}",
            socket.display()
        ))
    })?;
    let name = nix::unistd::ttyname(slave.as_fd())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/dev/ptmx".into());
    crate::ctl::send_with_fds(&conn, name.as_bytes(), &[master.as_raw_fd()])
        .map_err(|e| Fail::new(format!("send the terminal to {}: {e}", socket.display())))
}

/// The size of the terminal `fd`: (columns, rows); `None` when unset.
pub fn size(fd: &impl AsRawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Sets the size of the terminal `fd`.
pub fn set_size(fd: &impl AsRawFd, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which outlives the call.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

pub fn is_terminal(fd: &impl AsFd) -> bool {
    nix::unistd::isatty(fd.as_fd().as_raw_fd()).unwrap_or(false)
}
