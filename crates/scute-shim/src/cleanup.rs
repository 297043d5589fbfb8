//! `containerd-shim-scute-v2 delete`: containerd runs it after every task's
//! connection closes (a normal delete included) and after a shim dies. It
//! must know what it is deleting: while the sandbox's owner shim lives, only
//! this one container (through the owner, which holds its mounts and its
//! process); the whole sandbox only when the owner is provably gone (its
//! recorded pid no longer runs the process that started at the recorded
//! time) or wedged (its socket does not answer).

use std::path::Path;
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::Error;
use containerd_shim_protos::api::{self, DeleteResponse};
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::{self, Code};
use scute_runtime::pod::Role;
use scute_runtime::state::StateFile;

/// How long a live owner gets to answer before it counts as wedged.
const OWNER_DEADLINE: Duration = Duration::from_secs(5);

/// The sandbox container `id` belongs to (its CRI pod's, else its own),
/// from the bundle's config.json. Ids are validated: they name state dirs.
pub fn sandbox_of(id: &str, bundle: &Path) -> Result<String, scute_runtime::Error> {
    scute_runtime::bundle::validate_id(id)?;
    let spec: Option<serde_json::Value> = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match spec.as_ref().map(Role::of).transpose()? {
        Some(Role::PodMember { sandbox_id }) => Ok(sandbox_id),
        _ => Ok(id.to_owned()),
    }
}

pub async fn delete(id: &str, namespace: &str, bundle: &Path) -> Result<DeleteResponse, Error> {
    let sandbox = sandbox_of(id, bundle).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let config = scute_runtime::Config::load(None).unwrap_or_default();
    let dir = config.state_dir.join(&sandbox);
    let owner = StateFile::read(&dir).filter(StateFile::owner_alive);
    let mut resp = DeleteResponse::new();
    resp.set_exit_status(scute_protocol::ExitStatus::Signal(libc::SIGKILL).shell_code() as u32);
    resp.exited_at = MessageField::some(containerd_shim::util::timestamp()?);
    if let Some(owner) = owner {
        match delete_through_owner(id, namespace, bundle).await {
            Ok(Some(r)) => {
                tracing::info!(sandbox_id = %sandbox, container_id = %id, owner = owner.owner_pid, "deleted through the live sandbox shim");
                return Ok(r);
            }
            Ok(None) => {
                // The owner no longer has it (the usual case: containerd's
                // own Delete came first). Only this container's leftovers go.
                unmount_rootfs(bundle);
                return Ok(resp);
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %sandbox, container_id = %id, owner = owner.owner_pid, "sandbox shim does not answer ({e}): tearing the sandbox down");
            }
        }
    } else {
        tracing::warn!(sandbox_id = %sandbox, container_id = %id, "sandbox shim is gone: cleaning up after it");
    }
    scute_runtime::stale::cleanup(&dir);
    unmount_rootfs(bundle);
    remove_dead_socket(bundle);
    Ok(resp)
}

/// The owner's socket, once nothing listens on it: a shim that exits in
/// order removes its own, one that was killed leaves it to whoever
/// cleans up after it.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = address.trim().trim_start_matches("unix://");
    if !path.starts_with('/') {
        return;
    }
    if let Err(e) = std::os::unix::net::UnixStream::connect(path) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn unmount_rootfs(bundle: &Path) {
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
}

/// Asks the owner shim (at the address containerd recorded in the bundle)
/// to kill and delete container `id`. `Ok(None)`: the owner answers and no
/// longer knows it. `Err`: the owner does not answer in time.
async fn delete_through_owner(
    id: &str,
    namespace: &str,
    bundle: &Path,
) -> Result<Option<DeleteResponse>, String> {
    let address = std::fs::read_to_string(bundle.join("address"))
        .map_err(|e| format!("no shim address in the bundle: {e}"))?;
    let call = async {
        let client = ttrpc::asynchronous::Client::connect(address.trim())
            .map_err(|e| format!("connect {}: {e}", address.trim()))?;
        let task = TaskClient::new(client);
        let ctx = || {
            let mut c = ttrpc::context::with_timeout(OWNER_DEADLINE.as_nanos() as i64);
            c.add("containerd-namespace".into(), namespace.into());
            c
        };
        let state = task
            .state(
                ctx(),
                &api::StateRequest {
                    id: id.to_owned(),
                    ..Default::default()
                },
            )
            .await;
        match state {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(format!("state: {e}")),
        }
        let kill = api::KillRequest {
            id: id.to_owned(),
            signal: libc::SIGKILL as u32,
            all: true,
            ..Default::default()
        };
        if let Err(e) = task.kill(ctx(), &kill).await {
            if !is_not_found(&e) {
                return Err(format!("kill: {e}"));
            }
        }
        let wait = api::WaitRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let _ = task.wait(ctx(), &wait).await;
        let del = api::DeleteRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        match task.delete(ctx(), &del).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(format!("delete: {e}")),
        }
    };
    tokio::time::timeout(OWNER_DEADLINE * 3, call)
        .await
        .map_err(|_| format!("no answer within {:?}", OWNER_DEADLINE * 3))?
}

fn is_not_found(e: &ttrpc::Error) -> bool {
    matches!(e, ttrpc::Error::RpcStatus(s) if s.code() == Code::NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(spec: serde_json::Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
        d
    }

    #[test]
    fn pod_members_map_to_their_sandbox() {
        let b = bundle_with(serde_json::json!({"annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1"}}));
        assert_eq!(sandbox_of("c1", b.path()).unwrap(), "pod1");
        let b = bundle_with(serde_json::json!({}));
        assert_eq!(sandbox_of("c1", b.path()).unwrap(), "c1");
        // No bundle left (containerd removed it): the id itself.
        assert_eq!(sandbox_of("c1", Path::new("/nonexistent")).unwrap(), "c1");
    }

    #[test]
    fn path_like_ids_and_annotations_are_refused() {
        let b = bundle_with(serde_json::json!({}));
        for bad in ["../x", "/abs", "a/b"] {
            assert!(sandbox_of(bad, b.path()).is_err(), "{bad}");
        }
        let b = bundle_with(serde_json::json!({"annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "/etc"}}));
        assert!(sandbox_of("c1", b.path()).is_err());
    }
}
