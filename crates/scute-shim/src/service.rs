//! The shim process: `start` (spawn the daemon for a sandbox, or find the
//! pod's running one), `delete` (containerd's cleanup after a task or a dead
//! shim, see [`crate::cleanup`]), and the daemon's task service.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, Shim};
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;

use crate::sandbox::SandboxState;

/// How long a new shim waits for its id's previous one to exit.
const PREDECESSOR_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Returns once nothing accepts connections on `address` (a shim's
/// `unix://` socket), or after `limit`.
async fn wait_unanswered(address: &str, limit: std::time::Duration) {
    let path = address.trim_start_matches("unix://");
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::net::UnixStream::connect(path).await.is_ok() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("a shim still answers at {address} after {limit:?}; starting anyway");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[derive(Clone)]
pub struct Service {
    pub(crate) sandbox: Arc<SandboxState>,
    id: String,
}

#[async_trait]
impl Shim for Service {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            sandbox: Arc::new(SandboxState::new(&args.namespace, &args.id)),
            id: args.id.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let cwd = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        let grouping = crate::cleanup::sandbox_of(&opts.id, &cwd)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if grouping == opts.id {
            // A sandbox of its own: a shim still answering at its address
            // is this id's previous one, stopping its VM after answering
            // containerd's Shutdown. `spawn` would hand the new task to it
            // (that is how a pod's containers find their shim); wait for
            // it to go instead.
            let address =
                containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
            wait_unanswered(&address, PREDECESSOR_WAIT).await;
        }
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // containerd finds a running shim again after a restart through this.
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        crate::cleanup::delete(&self.id, &self.sandbox.namespace, &bundle).await
    }

    /// Returns when the shim is to exit, its VM stopped: the task server
    /// still answers meanwhile (containerd's `delete` call after the
    /// disconnect finds the owner alive and the container gone).
    async fn wait(&mut self) {
        self.sandbox.exit.wait().await;
        self.sandbox.teardown_if_empty().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let _ = self.sandbox.events.set(Arc::new(publisher));
        self.sandbox.watch_for_a_first_create();
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_predecessor_is_waited_for_until_it_stops_answering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let address = format!("unix://{}", path.display());
        // Nothing there: no wait.
        let t = Instant::now();
        wait_unanswered(&address, Duration::from_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // A shim answering for 300 ms more: waited for.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let p = path.clone();
        let gone = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(listener);
            std::fs::remove_file(p).unwrap();
        });
        let t = Instant::now();
        wait_unanswered(&address, Duration::from_secs(5)).await;
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        gone.join().unwrap();
        // One that never goes: given up on at the limit.
        let _stays = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = Instant::now();
        wait_unanswered(&address, Duration::from_millis(200)).await;
        assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(2));
    }
}
