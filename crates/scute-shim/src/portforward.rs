//! CRI PortForward (`kubectl port-forward`) into a VM pod.
//!
//! containerd serves a PortForward by dialing `localhost:PORT` from inside
//! the pod's network namespace on the host, where runc's containers listen.
//! A scute pod's listeners are in the guest instead. So the shim listens on
//! one loopback port of that netns, an iptables rule there redirects every
//! other loopback TCP connection to it, and each connection it accepts is
//! relayed to `127.0.0.1:<the port it was made to>` in the guest (read back
//! with `SO_ORIGINAL_DST`) over the agent channel. The rule is removed when
//! the sandbox ends: the netns may be a user's own (`ctr run --with-ns`).

use std::net::{SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use scute_runtime::client::AgentClient;
use tokio::sync::Semaphore;

use crate::listen::ListenError;

/// Connections relayed at once; more wait for one to end.
const MAX_CONNECTIONS: usize = 1024;

/// The listener task and the redirect; both go when this is dropped.
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
    netns: PathBuf,
    port: u16,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
        if let Err(e) = iptables(&self.netns, "-D", self.port) {
            tracing::warn!(netns = %self.netns.display(), "port-forward redirect not removed: {e}");
        }
    }
}

/// Starts forwarding the loopback ports of `netns` to the guest's.
pub async fn start(
    netns: PathBuf,
    client: AgentClient,
    sandbox_id: String,
) -> Result<Forwarder, ListenError> {
    let ns = netns.clone();
    let listener = std::thread::spawn(move || bind_in(&ns))
        .join()
        .map_err(|_| ListenError::Thread)??;
    let in_netns = |what| ListenError::io(what, &netns);
    let port = listener
        .local_addr()
        .map_err(in_netns("the listener's address in"))?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(in_netns("the listener in"))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(in_netns("the listener in"))?;
    let ns = netns.clone();
    tokio::task::spawn_blocking(move || iptables(&ns, "-A", port))
        .await
        .map_err(|_| ListenError::Thread)??;
    let task = tokio::spawn(serve(listener, client, sandbox_id));
    Ok(Forwarder { task, netns, port })
}

async fn serve(listener: tokio::net::TcpListener, client: AgentClient, sandbox_id: String) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%sandbox_id, "port-forward accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Some(port) = original_port(&conn) else {
            tracing::warn!(%sandbox_id, %peer, "port-forward: a connection made to the relay itself, closed");
            continue;
        };
        let (client, sandbox_id) = (client.clone(), sandbox_id.clone());
        conns.spawn(async move {
            let _slot = slot;
            tracing::debug!(%sandbox_id, port, "port-forward connection");
            if let Err(e) = client.forward(port, conn).await {
                tracing::info!(%sandbox_id, port, "port-forward: {e}");
            }
        });
    }
}

/// A loopback listener on a free port of `netns`, made by a thread of its
/// own (a thread's netns stays switched; the socket stays in `netns`).
fn bind_in(netns: &Path) -> Result<TcpListener, ListenError> {
    let f = std::fs::File::open(netns).map_err(ListenError::io("open", netns))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
        ListenError::Setns {
            path: netns.to_owned(),
            source,
        }
    })?;
    TcpListener::bind("127.0.0.1:0").map_err(ListenError::io("bind 127.0.0.1:0 in", netns))
}

/// Adds (`-A`) or deletes (`-D`) the redirect of loopback TCP to `port`.
fn iptables(netns: &Path, op: &'static str, port: u16) -> Result<(), ListenError> {
    let port = port.to_string();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "iptables", "-w", "5", "-t", "nat", op, "OUTPUT", "-p", "tcp",
        ])
        .args(["-d", "127.0.0.1", "!", "--dport", &port])
        .args(["-j", "REDIRECT", "--to-ports", &port])
        .args(["-m", "comment", "--comment", "scute port-forward"])
        .output()
        .map_err(|e| ListenError::Iptables {
            op,
            netns: netns.to_owned(),
            message: format!("can't run it (is iptables installed?): {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ListenError::Iptables {
            op,
            netns: netns.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The port a redirected connection was made to; `None` for one made to
/// the relay's own port (not redirected).
fn original_port(conn: &tokio::net::TcpStream) -> Option<u16> {
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe `addr`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    let dst = SocketAddrV4::new(
        u32::from_be(addr.sin_addr.s_addr).into(),
        u16::from_be(addr.sin_port),
    );
    let local = conn.local_addr().ok()?;
    (dst.port() != local.port()).then_some(dst.port())
}
