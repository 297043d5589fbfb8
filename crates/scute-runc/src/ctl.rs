//! The keeper's control socket, `<root>/<id>/ctl.sock` (0600 in a 0700
//! dir): one JSON line per request and one per answer. An exec's
//! connection stays open: the keeper answers `Started`, then `Exited`, and
//! the holder sends the signals it gets in between. Descriptors (an exec's
//! stdio) travel with the first byte of the request (SCM_RIGHTS).

use std::io::{BufRead, BufReader};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Fail;

/// The longest line either side accepts (an exec's process spec fits).
pub const MAX_LINE: usize = 1 << 20;
/// The most descriptors one request carries.
const MAX_FDS: usize = 3;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    Pause,
    Resume,
    /// Host pids that stand for the container's processes.
    Ps,
    Stats,
    /// New limits for the container's cgroup in the guest.
    Update {
        limits: scute_protocol::Limits,
    },
    /// A new process in the container. Descriptors: the terminal, or
    /// stdin, stdout, stderr.
    Exec {
        process: Value,
        holder_pid: u32,
    },
    /// On an exec's connection: a signal for that process.
    Signal {
        signal: i32,
    },
    /// A created container goes away without ever running.
    Delete,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Pids(Vec<u32>),
    Stats(scute_protocol::CgroupStats),
    Started { pid: u32 },
    Exited { code: i32 },
    Error(String),
}

/// A connection to a container's keeper.
pub struct Conn {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    pub fn open(root: &Path, id: &str) -> Result<Self, Fail> {
        let p = crate::state::ctl_socket(root, id);
        let stream = crate::state::with_ctl_path(root, id, |short| UnixStream::connect(short))
            .map_err(|e| {
                Fail::new(format!(
                    "container {id}: its keeper does not answer on {}: {e}",
                    p.display()
                ))
            })?;
        Self::from_stream(stream).map_err(|e| Fail::new(format!("container {id}: {e}")))
    }

    pub fn from_stream(stream: UnixStream) -> std::io::Result<Self> {
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    pub fn send(&mut self, req: &Request, fds: &[RawFd]) -> Result<(), Fail> {
        let mut line = serde_json::to_vec(req).unwrap_or_default();
        line.push(b'\n');
        send_with_fds(&self.stream, &line, fds)
            .map_err(|e| Fail::new(format!("send to the keeper: {e}")))
    }

    /// The next answer; `None` when the keeper closed the connection.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Reply>, Fail> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| Fail::new(e.to_string()))?;
        let mut line = String::new();
        let n = std::io::Read::take(&mut self.reader, MAX_LINE as u64)
            .read_line(&mut line)
            .map_err(|e| Fail::new(format!("read the keeper's answer: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| Fail::new(format!("the keeper's answer is not valid: {e}")))
    }

    /// The socket, and what [`Conn::recv`] read from it past the last
    /// answer it returned: the keeper may have sent the next one already
    /// (a quick exec's `Exited` right after `Started`), and a reader that
    /// went on from the bare socket would miss it.
    pub fn into_parts(self) -> (UnixStream, Vec<u8>) {
        let buffered = self.reader.buffer().to_vec();
        (self.stream, buffered)
    }
}

/// One request, one answer; an `Error` answer is the failure.
pub fn call(root: &Path, id: &str, req: &Request) -> Result<Reply, Fail> {
    let mut c = Conn::open(root, id)?;
    c.send(req, &[])?;
    match c.recv(Some(Duration::from_secs(120)))? {
        Some(Reply::Error(e)) => Err(Fail::new(e)),
        Some(r) => Ok(r),
        None => Err(Fail::new(format!(
            "container {id}: the keeper closed the connection without an answer"
        ))),
    }
}

pub use scute_runtime::handover::send_with_fds;

/// Reads one request line and the descriptors that came with it, from a
/// blocking socket. More than [`MAX_FDS`] descriptors, or a line over
/// [`MAX_LINE`], is refused (the descriptors received are closed).
pub fn recv_request(conn: &UnixStream) -> std::io::Result<(Request, Vec<OwnedFd>)> {
    let (line, fds) = scute_runtime::handover::recv_line_with_fds(conn, MAX_FDS, MAX_LINE)?;
    let req = serde_json::from_slice(&line).map_err(std::io::Error::other)?;
    Ok((req, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_request_and_its_descriptors_arrive_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let req = Request::Exec {
            process: serde_json::json!({"args": ["true"]}),
            holder_pid: 7,
        };
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        send_with_fds(&a, &line, &[f.as_raw_fd(), f.as_raw_fd()]).unwrap();
        let (got, fds) = recv_request(&b).unwrap();
        assert!(matches!(got, Request::Exec { holder_pid: 7, .. }));
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn too_many_descriptors_or_garbage_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        send_with_fds(&a, b"{\"op\":\"start\"}\n", &[fd, fd, fd, fd]).unwrap();
        assert!(recv_request(&b).is_err());
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"not json\n", &[]).unwrap();
        assert!(recv_request(&b).is_err());
    }
}
