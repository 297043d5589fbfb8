//! `exec`: a new process in a running container. Its host stand-in, the
//! holder, is this process (or with `--detach` a child forked for it, the
//! pid in `--pid-file`): it hands its stdio (or terminal) to the keeper,
//! forwards the signals it gets, and exits with the process's status.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde_json::Value;

use crate::ctl::{Conn, Reply, Request};
use crate::state::{Saved, Status};
use crate::{Fail, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Path to a process.json (an OCI `process`); else the command after the id.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(short, long)]
    pub env: Vec<String>,
    /// UID[:GID]
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    #[arg(long)]
    pub no_new_privs: bool,
    #[arg(short, long)]
    pub cap: Vec<String>,
    #[arg(long)]
    pub process_label: Option<String>,
    #[arg(long)]
    pub apparmor: Option<String>,
    #[arg(long)]
    pub preserve_fds: Option<u32>,
    #[arg(long)]
    pub cgroup: Vec<String>,
    #[arg(long)]
    pub ignore_paused: bool,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn main(g: &Global, a: Args) -> Result<i32, Fail> {
    let saved = Saved::load(&g.root, &a.id)?;
    match saved.live_status() {
        Status::Running => {}
        Status::Paused if a.ignore_paused => {}
        Status::Paused => {
            return Err(Fail::new(
                "cannot exec in a paused container (use --ignore-paused to override)".into(),
            ))
        }
        s => {
            return Err(Fail::new(format!(
                "cannot exec in a {} container",
                s.as_str()
            )))
        }
    }
    let process = match &a.process {
        Some(p) => {
            let text = std::fs::read(p)
                .map_err(|e| Fail::new(format!("read the process file {}: {e}", p.display())))?;
            serde_json::from_slice::<Value>(&text)
                .map_err(|e| Fail::new(format!("{}: not a JSON process: {e}", p.display())))?
        }
        None => flag_process(&saved, &a)?,
    };
    if process
        .get("args")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
    {
        return Err(Fail::new(
            "args must not be empty: give the command after the container id".into(),
        ));
    }
    let terminal = process
        .get("terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // What the keeper relays: the terminal's slave, or this stdio.
    let mut own: Vec<OwnedFd> = Vec::new();
    let mut raw_terminal = None;
    let fds: Vec<RawFd> = if terminal {
        if let Some(sock) = &a.console_socket {
            let (master, slave) = crate::tty::open_pty()?;
            crate::tty::send_master(sock, &master, &slave)?;
            drop(master);
            let fd = slave.as_raw_fd();
            own.push(slave);
            vec![fd]
        } else if !a.detach && crate::tty::is_terminal(&std::io::stdin()) {
            raw_terminal = scute_runtime::foreground::RawTerminal::enable();
            vec![0]
        } else {
            return Err(Fail::new(
                "cannot allocate tty if runc will detach without setting console socket".into(),
            ));
        }
    } else {
        vec![0, 1, 2]
    };
    if a.detach {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Fail::new(format!("pipe: {e}")))?;
        // SAFETY: this process runs no other thread (nothing started one
        // before: no async runtime in the command line's process).
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(r);
                let _ = nix::unistd::setsid();
                let code = hold(g, &a.id, process, &fds, Some(std::fs::File::from(w)));
                std::process::exit(code);
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                drop(w);
                drop(own);
                let mut msg = String::new();
                let _ = std::fs::File::from(r).read_to_string(&mut msg);
                if msg.trim() == "ok" {
                    if let Some(p) = &a.pid_file {
                        crate::state::write_pid_file(p, child.as_raw())?;
                    }
                    return Ok(0);
                }
                let _ = nix::sys::wait::waitpid(child, None);
                let why = msg.trim().strip_prefix("error: ").unwrap_or(msg.trim());
                return Err(Fail::new(if why.is_empty() {
                    "the exec's holder exited before the process started".into()
                } else {
                    why.to_owned()
                }));
            }
            Err(e) => return Err(Fail::new(format!("fork: {e}"))),
        }
    }
    if let Some(p) = &a.pid_file {
        crate::state::write_pid_file(p, std::process::id() as i32)?;
    }
    let code = hold(g, &a.id, process, &fds, None);
    drop(raw_terminal);
    Ok(code)
}

/// runc's flag form: the container's own process with the command, and
/// `--env`, `--cwd`, `--user`, `--tty` applied.
fn flag_process(saved: &Saved, a: &Args) -> Result<Value, Fail> {
    if a.command.is_empty() {
        return Err(Fail::new(
            "exec needs a command after the container id, or --process FILE".into(),
        ));
    }
    let cfg = saved.bundle.join("config.json");
    let spec: Value = std::fs::read(&cfg)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .ok_or_else(|| Fail::new(format!("read the container's spec {}", cfg.display())))?;
    let mut p = spec.get("process").cloned().unwrap_or(Value::Null);
    if !p.is_object() {
        p = serde_json::json!({"cwd": "/", "user": {"uid": 0, "gid": 0}});
    }
    p["args"] = serde_json::json!(a.command);
    p["terminal"] = Value::Bool(a.tty);
    if !a.env.is_empty() {
        let mut env: Vec<Value> = p
            .get("env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        env.extend(a.env.iter().map(|e| Value::String(e.clone())));
        p["env"] = Value::Array(env);
    }
    if let Some(c) = &a.cwd {
        p["cwd"] = Value::String(c.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        let num = |s: &str| {
            s.parse::<u32>().map_err(|_| {
                Fail::new(format!(
                    "--user {u}: give UID[:GID] as numbers (names are resolved by the engine)"
                ))
            })
        };
        p["user"] = serde_json::json!({"uid": num(uid)?, "gid": num(gid)?});
    }
    if !a.additional_gids.is_empty() {
        p["user"]["additionalGids"] = serde_json::json!(a.additional_gids);
    }
    if a.no_new_privs {
        p["noNewPrivileges"] = Value::Bool(true);
    }
    Ok(p)
}

/// The holder's life: asks the keeper for the process, says on `ready`
/// that it started (or why not), then mirrors it; its exit status.
fn hold(
    g: &Global,
    id: &str,
    process: Value,
    fds: &[RawFd],
    mut ready: Option<std::fs::File>,
) -> i32 {
    let fail = |ready: &mut Option<std::fs::File>, why: String| {
        match ready {
            Some(r) => {
                let _ = writeln!(r, "error: {why}");
            }
            None => crate::report_error(g, &why),
        }
        255
    };
    let mut conn = match Conn::open(&g.root, id) {
        Ok(c) => c,
        Err(e) => return fail(&mut ready, e.to_string()),
    };
    let req = Request::Exec {
        process,
        holder_pid: std::process::id(),
    };
    if let Err(e) = conn.send(&req, fds) {
        return fail(&mut ready, e.to_string());
    }
    match conn.recv(None) {
        Ok(Some(Reply::Started { .. })) => {}
        Ok(Some(Reply::Error(e))) => return fail(&mut ready, format!("exec failed: {e}")),
        Ok(other) => return fail(&mut ready, format!("the keeper answered {other:?}")),
        Err(e) => return fail(&mut ready, e.to_string()),
    }
    if let Some(mut r) = ready.take() {
        // Detached: the keeper has the process's stdio; the caller may
        // wait for this process's copies to close (go-runc does, with a
        // terminal).
        crate::null_stdio();
        let _ = writeln!(r, "ok");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return 255,
    };
    let code = rt.block_on(async {
        match scute_runtime::foreground::forwarded_signals() {
            Ok(signals) => mirror(conn, signals).await,
            Err(_) => 255,
        }
    });
    rt.shutdown_background();
    code
}

/// Forwards signals to the process and waits for its exit status; 137 if
/// the keeper goes away first (the container, and the process, with it).
async fn mirror(conn: Conn, mut rx: tokio::sync::mpsc::Receiver<i32>) -> i32 {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (std, buffered) = conn.into_parts();
    let _ = std.set_read_timeout(None);
    let _ = std.set_nonblocking(true);
    let Ok(stream) = tokio::net::UnixStream::from_std(std) else {
        return 255;
    };
    let (r, mut w) = stream.into_split();
    // What came with `Started` first: for a quick process, its `Exited`.
    let read = AsyncReadExt::chain(std::io::Cursor::new(buffered), r);
    let mut lines = tokio::io::BufReader::new(read).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    if let Ok(Reply::Exited { code }) = serde_json::from_str(&l) {
                        return code;
                    }
                }
                _ => return 137,
            },
            Some(signal) = rx.recv() => {
                let mut line = serde_json::to_vec(&Request::Signal { signal }).unwrap_or_default();
                line.push(b'\n');
                let _ = w.write_all(&line).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// What the holder exits with, signals not forwarded.
    fn mirrored(conn: Conn) -> i32 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(mirror(conn, tokio::sync::mpsc::channel(1).1))
    }

    /// The keeper's `Started` and a quick process's `Exited` can arrive in
    /// one read: the holder still exits with the process's status (it
    /// used to see only the socket's end, and say 137).
    #[test]
    fn an_exit_read_together_with_the_start_is_not_lost() {
        let (holder, mut keeper) = UnixStream::pair().unwrap();
        keeper
            .write_all(b"{\"started\":{\"pid\":7}}\n{\"exited\":{\"code\":5}}\n")
            .unwrap();
        // The keeper is done (the container may be gone too).
        drop(keeper);
        let mut conn = Conn::from_stream(holder).unwrap();
        assert_eq!(conn.recv(None).unwrap(), Some(Reply::Started { pid: 7 }));
        assert_eq!(mirrored(conn), 5);
    }

    #[test]
    fn a_keeper_gone_without_an_exit_is_137() {
        let (holder, mut keeper) = UnixStream::pair().unwrap();
        keeper.write_all(b"{\"started\":{\"pid\":7}}\n").unwrap();
        let mut conn = Conn::from_stream(holder).unwrap();
        assert!(matches!(conn.recv(None), Ok(Some(Reply::Started { .. }))));
        drop(keeper);
        assert_eq!(mirrored(conn), 137);
    }
}
