//! The operator's debug shell (`scute debug SANDBOX`), when the config's
//! `debug_shell` is on: busybox (the host's) in the share's `.scute-debug`,
//! read-only to the guest, and a socket `debug.sock` (0600, root's) in the
//! sandbox's state dir. A connection sends one JSON line
//! (`{"width":…,"height":…}`), then is the shell's terminal; the shim logs
//! who opened it and when it closed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use scute_runtime::client::AgentClient;

use crate::listen::ListenError;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// The busybox the guest runs (Debian's busybox-static: no libraries).
const BUSYBOX: &str = "/bin/busybox";

pub const SOCKET: &str = "debug.sock";

/// The listener task; dropping it stops new sessions.
pub struct DebugShell {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DebugShell {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Puts busybox where the guest finds it and listens on `state/debug.sock`.
pub fn start(
    state: &Path,
    private_share: &Path,
    client: AgentClient,
    sandbox_id: String,
) -> Result<DebugShell, ListenError> {
    let dir = private_share.join(scute_protocol::message::DEBUG_DIR);
    std::fs::create_dir_all(&dir).map_err(ListenError::io("create", &dir))?;
    let bb = dir.join("busybox");
    // Debian's busybox-static (make setup installs it).
    std::fs::copy(BUSYBOX, &bb).map_err(ListenError::io("copy busybox-static's", BUSYBOX))?;
    let _ = std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o555));
    let path: PathBuf = state.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(ListenError::io("bind", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(ListenError::io("chmod 0600", &path))?;
    tracing::warn!(%sandbox_id, socket = %path.display(), "debug shell enabled (debug_shell = true)");
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (client, sandbox_id) = (client.clone(), sandbox_id.clone());
            tokio::spawn(session(conn, client, sandbox_id));
        }
    });
    Ok(DebugShell { task })
}

async fn session(conn: tokio::net::UnixStream, client: AgentClient, sandbox_id: String) {
    let peer = conn.peer_cred().ok();
    let (uid, pid) = (
        peer.map(|p| p.uid()),
        peer.and_then(|p| p.pid()).unwrap_or(0),
    );
    if uid != Some(0) {
        tracing::warn!(%sandbox_id, ?uid, pid, "debug shell refused: not root");
        return;
    }
    let mut conn = tokio::io::BufReader::new(conn);
    let mut header = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        (&mut conn).take(4096).read_line(&mut header),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let v: serde_json::Value = serde_json::from_str(&header).unwrap_or_default();
    let dim = |k: &str, d: u16| {
        v[k].as_u64()
            .and_then(|x| u16::try_from(x).ok())
            .unwrap_or(d)
    };
    let (width, height) = (dim("width", 80), dim("height", 24));
    let t = std::time::Instant::now();
    let id = sandbox_id.clone();
    let r = client
        .debug_shell(width, height, conn, move |guest_pid| {
            tracing::warn!(sandbox_id = %id, client_pid = pid, guest_pid, "debug shell opened by root");
        })
        .await;
    match r {
        Ok(()) => {
            tracing::warn!(%sandbox_id, client_pid = pid, secs = t.elapsed().as_secs(), "debug shell closed")
        }
        Err(e) => tracing::warn!(%sandbox_id, client_pid = pid, "debug shell failed: {e}"),
    }
}
