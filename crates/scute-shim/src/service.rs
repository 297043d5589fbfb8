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
