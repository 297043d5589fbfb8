//! The stdio containerd asks for: FIFO paths, `file://` and `binary://` log
//! URIs (containerd's logging-binary protocol: the logger gets stdout, stderr
//! and a readiness pipe as fds 3, 4 and 5, and CONTAINER_ID /
//! CONTAINER_NAMESPACE in its environment; it is ready when it closes fd 5).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::unix::pipe;

pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;
pub type Source = Box<dyn AsyncRead + Send + Unpin>;

/// Where a process's output goes.
#[derive(Default)]
pub struct Outputs {
    pub stdout: Option<Sink>,
    pub stderr: Option<Sink>,
    /// The logging binary, reaped in the background once its pipes close.
    pub logger: Option<tokio::process::Child>,
}

/// How containerd spelled one stdio destination.
#[derive(Debug, PartialEq, Eq)]
pub enum Dest {
    None,
    Fifo(String),
    File(String),
    Binary { path: String, args: Vec<String> },
}

pub fn parse(s: &str) -> io::Result<Dest> {
    if s.is_empty() {
        return Ok(Dest::None);
    }
    if !s.contains("://") {
        return Ok(Dest::Fifo(s.to_owned()));
    }
    let u = url::Url::parse(s).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("stdio URI {s:?}: {e}"))
    })?;
    match u.scheme() {
        "fifo" => Ok(Dest::Fifo(u.path().to_owned())),
        "file" => Ok(Dest::File(u.path().to_owned())),
        "binary" => {
            let mut args = Vec::new();
            for (k, v) in u.query_pairs() {
                args.push(k.into_owned());
                if !v.is_empty() {
                    args.push(v.into_owned());
                }
            }
            Ok(Dest::Binary {
                path: u.path().to_owned(),
                args,
            })
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("stdio URI scheme {other:?} is not supported (fifo paths, file://, binary://)"),
        )),
    }
}

/// Opens stdout/stderr destinations (stderr is ignored with a terminal).
pub async fn open_outputs(
    stdout: &str,
    stderr: &str,
    terminal: bool,
    container_id: &str,
    namespace: &str,
) -> io::Result<Outputs> {
    let out = parse(stdout)?;
    let err = if terminal { Dest::None } else { parse(stderr)? };
    // containerd passes the same log URI for both streams.
    if let Dest::Binary { path, args } = &out {
        return spawn_logger(path, args, container_id, namespace, !terminal).await;
    }
    if let (Dest::File(p), Dest::File(q)) = (&out, &err) {
        if p == q {
            let f = open_log_file(p).await?;
            let f2 = f.try_clone().await?;
            return Ok(Outputs {
                stdout: Some(Box::new(f)),
                stderr: Some(Box::new(f2)),
                logger: None,
            });
        }
    }
    Ok(Outputs {
        stdout: open_sink(out).await?,
        stderr: open_sink(err).await?,
        logger: None,
    })
}

async fn open_sink(d: Dest) -> io::Result<Option<Sink>> {
    Ok(match d {
        Dest::None => None,
        Dest::Fifo(p) => Some(Box::new(
            pipe::OpenOptions::new().read_write(true).open_sender(&p)?,
        )),
        Dest::File(p) => Some(Box::new(open_log_file(&p).await?)),
        Dest::Binary { .. } => None,
    })
}

async fn open_log_file(p: &str) -> io::Result<tokio::fs::File> {
    if let Some(dir) = std::path::Path::new(p).parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .await
}

/// Opens a stdin FIFO (read-write, so a closing writer is not EOF: containerd
/// sends CloseIO for that).
pub fn open_stdin(path: &str) -> io::Result<Option<Source>> {
    match parse(path)? {
        Dest::None => Ok(None),
        Dest::Fifo(p) => Ok(Some(Box::new(
            pipe::OpenOptions::new().read_write(true).open_receiver(p)?,
        ))),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("stdin must be a FIFO, got {other:?}"),
        )),
    }
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn nonblocking_sender(fd: OwnedFd) -> io::Result<Sink> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(Box::new(pipe::Sender::from_owned_fd(fd)?))
}

async fn spawn_logger(
    path: &str,
    args: &[String],
    container_id: &str,
    namespace: &str,
    with_stderr: bool,
) -> io::Result<Outputs> {
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let (ready_r, ready_w) = pipe_pair()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move the three fds out of the way first, then onto 3, 4, 5
            // (dup2 clears close-on-exec on the copies).
            let mut high = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if high[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("start logging binary {path}: {e}")))?;
    drop((out_r, err_r, ready_w));
    // Ready when the logger closes (or writes to) fd 5.
    let mut ready = pipe::Receiver::from_owned_fd({
        let flags = nix::fcntl::fcntl(ready_r.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(ready_r.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        ready_r
    })?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(30), ready.read(&mut b)).await {
        Ok(_) => {}
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("logging binary {path} did not signal readiness on fd 5 within 30 s"),
            ))
        }
    }
    Ok(Outputs {
        stdout: Some(nonblocking_sender(out_w)?),
        stderr: if with_stderr {
            Some(nonblocking_sender(err_w)?)
        } else {
            None
        },
        logger: Some(child),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_containerd_uses() {
        assert_eq!(parse("").unwrap(), Dest::None);
        assert_eq!(
            parse("/run/containerd/fifo/1/x-stdout").unwrap(),
            Dest::Fifo("/run/containerd/fifo/1/x-stdout".into())
        );
        assert_eq!(
            parse("file:///var/log/c.log").unwrap(),
            Dest::File("/var/log/c.log".into())
        );
        assert_eq!(
            parse("binary:///usr/bin/logger?tag=web&debug").unwrap(),
            Dest::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "web".into(), "debug".into()]
            }
        );
        assert!(parse("http://x/y").is_err());
    }

    #[tokio::test]
    async fn binary_logger_gets_fds_and_env() {
        let dir = std::env::temp_dir().join(format!("scute-logger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("logger.sh");
        let out = dir.join("out");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE $1\" > {o}\ncat <&3 >> {o}\ncat <&4 >> {o}\n",
                o = out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let uri = format!("binary://{}?arg1", script.display());
        let mut o = open_outputs(&uri, &uri, false, "c1", "ns1").await.unwrap();
        use tokio::io::AsyncWriteExt;
        o.stdout
            .as_mut()
            .unwrap()
            .write_all(b"hello\n")
            .await
            .unwrap();
        o.stderr
            .as_mut()
            .unwrap()
            .write_all(b"oops\n")
            .await
            .unwrap();
        drop(o.stdout.take());
        drop(o.stderr.take());
        let st = o.logger.unwrap().wait().await.unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "c1 ns1 arg1\nhello\noops\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
