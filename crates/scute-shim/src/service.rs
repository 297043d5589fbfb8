//! The shim process: `start` (spawn the daemon for a sandbox), `delete`
//! (clean up after a dead shim), and the daemon's state shared by the task
//! service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use scute_runtime::client::AgentClient;
use scute_runtime::sandbox::Sandbox;

use crate::task::Ctr;

/// CRI annotations that group containers into one sandbox (one VM).
pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

pub struct Inner {
    pub namespace: String,
    /// The shim's own id: the sandbox id, which names `/run/scute/<id>`.
    pub sandbox_id: String,
    pub exit: ExitSignal,
    pub config: Mutex<Option<scute_runtime::Config>>,
    pub publisher: tokio::sync::OnceCell<RemotePublisher>,
    /// The VM, booted by the first Create.
    pub sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    pub client: Mutex<Option<AgentClient>>,
    pub containers: Mutex<HashMap<String, Ctr>>,
}

/// The sandbox a container belongs to: its CRI sandbox, else itself.
pub fn sandbox_of(id: &str, bundle: &Path) -> String {
    let spec: Option<serde_json::Value> = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let ann = spec.as_ref().and_then(|s| s.get("annotations"));
    let get = |k: &str| ann.and_then(|a| a.get(k)).and_then(|v| v.as_str());
    match (get(ANN_CONTAINER_TYPE), get(ANN_SANDBOX_ID)) {
        (Some("container"), Some(sb)) if !sb.is_empty() => sb.to_owned(),
        _ => id.to_owned(),
    }
}

#[async_trait]
impl Shim for Service {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                sandbox_id: args.id.clone(),
                exit: ExitSignal::default(),
                config: Mutex::new(None),
                publisher: tokio::sync::OnceCell::new(),
                sandbox: tokio::sync::Mutex::new(None),
                client: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let cwd = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        let grouping = sandbox_of(&opts.id, &cwd);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // containerd finds a running shim again after a restart through this.
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// Cleans up after a shim that died: VM, virtiofsd, mounts, state dir.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let sandbox = sandbox_of(&self.inner.sandbox_id, &bundle);
        let config = scute_runtime::Config::load(None).unwrap_or_default();
        let dir = config.state_dir.join(&sandbox);
        tracing::warn!(sandbox_id = %sandbox, "cleaning up after a dead shim");
        scute_runtime::state::cleanup_stale(&dir);
        let rootfs = bundle.join("rootfs");
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        let mut resp = DeleteResponse::new();
        resp.set_exit_status(128 + libc::SIGKILL as u32);
        resp.exited_at = containerd_shim::protos::protobuf::MessageField::some(
            containerd_shim::util::timestamp()?,
        );
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.inner.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let _ = self.inner.publisher.set(publisher);
        self.clone()
    }
}
