//! The virtio-fs share: host paths a container needs, bind-mounted under the
//! sandbox's `shared/` dir, and the spec rewritten to the guest's view of them.
//!
//! Layout (host `/run/scute/<sandbox>/shared/` = guest `/run/scute/shared/`):
//! `<container>/rootfs` and `<container>/mounts/<n>` for each bind mount.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use serde_json::Value;

use crate::bundle::Bundle;
use crate::Error;

/// Where the share appears in the guest.
pub const GUEST_SHARED: &str = "/run/scute/shared";

/// Bind-mounts `src` on `dst` (creating `dst` as a file or dir like `src`).
fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<(), Error> {
    if src.is_dir() {
        fs::create_dir_all(dst).map_err(Error::io(format!("create {}", dst.display())))?;
    } else {
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p).map_err(Error::io(format!("create {}", p.display())))?;
        }
        fs::write(dst, b"").map_err(Error::io(format!("create {}", dst.display())))?;
    }
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        what: format!("bind {} on {}", src.display(), dst.display()),
        source: e.into(),
    })?;
    if readonly {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| Error::Io {
            what: format!("remount {} read-only", dst.display()),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Turns `dir` into a mount point with shared propagation, so bind mounts
/// made below it later (containers joining a running sandbox) propagate into
/// virtiofsd's mount namespace.
pub fn make_shared_mount(dir: &Path) -> Result<(), Error> {
    let err = |what: &str| {
        let what = format!("{what} {}", dir.display());
        move |e: nix::errno::Errno| Error::Io {
            what,
            source: e.into(),
        }
    };
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err("bind"))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(err("make shared"))
}

/// Removes container `cid` from the share: its bind mounts and its dir.
pub fn unshare_container(shared: &Path, cid: &str) {
    crate::state::remove_tree(&shared.join(cid));
}

/// Exposes `bundle` as container `cid` in `shared` (host path) and returns the
/// spec the agent gets. Mounts are left to the state dir's teardown.
/// `joinable`: guest pids whose namespaces the container may join (see
/// [`crate::pod::guest_namespaces`]).
pub fn share_container(
    shared: &Path,
    cid: &str,
    bundle: &Bundle,
    joinable: &[u32],
) -> Result<Value, Error> {
    let base = shared.join(cid);
    let guest_base = PathBuf::from(GUEST_SHARED).join(cid);
    let mut spec = serde_json::to_value(&bundle.spec).map_err(|e| Error::InvalidSpec {
        path: bundle.dir.join("config.json"),
        message: e.to_string(),
    })?;
    // Everything that can be refused is checked before anything is mounted.
    prepare_for_guest(&mut spec, cid, joinable)?;
    bind(&bundle.rootfs, &base.join("rootfs"), false)?;
    spec["root"]["path"] = Value::String(guest_base.join("rootfs").display().to_string());

    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for (n, m) in mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let Some(src) = m.get("source").and_then(Value::as_str) else {
                continue;
            };
            let src = if Path::new(src).is_absolute() {
                PathBuf::from(src)
            } else {
                bundle.dir.join(src)
            };
            if !src.exists() {
                return Err(Error::InvalidSpec {
                    path: bundle.dir.join("config.json"),
                    message: format!("bind mount source {} does not exist", src.display()),
                });
            }
            let rel = format!("mounts/{n}");
            bind(&src, &base.join(&rel), false)?;
            m["source"] = Value::String(guest_base.join(&rel).display().to_string());
        }
    }
    Ok(spec)
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options").and_then(Value::as_array).is_some_and(|o| {
            o.iter()
                .any(|x| matches!(x.as_str(), Some("bind" | "rbind")))
        })
}

/// Parts of a host spec that mean nothing in the guest are dropped or
/// replaced; parts that can't be honoured are refused.
fn prepare_for_guest(spec: &mut Value, cid: &str, joinable: &[u32]) -> Result<(), Error> {
    let role = crate::pod::Role::of(spec)?;
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| Error::Protocol("spec is not an object".into()))?;
    // Hooks are host binaries: they run on the host (not yet supported) or not at all.
    obj.remove("hooks");
    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        // The guest has its own cgroup tree; host paths (or systemd slices) don't apply.
        linux.insert("cgroupsPath".into(), Value::String(format!("/scute/{cid}")));
    }
    crate::pod::guest_namespaces(spec, &role, joinable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_parts_are_replaced() {
        let mut s = serde_json::json!({
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "linux": {"cgroupsPath": "system.slice:docker:abc", "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]}
        });
        prepare_for_guest(&mut s, "c1", &[]).unwrap();
        assert!(s.get("hooks").is_none());
        assert_eq!(s["linux"]["cgroupsPath"], "/scute/c1");
        // The wired netns is the VM's: the container shares the guest's.
        assert_eq!(
            s["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}])
        );
    }

    #[test]
    fn bind_detection() {
        assert!(is_bind(&serde_json::json!({"type": "bind"})));
        assert!(is_bind(
            &serde_json::json!({"type": "none", "options": ["rbind", "ro"]})
        ));
        assert!(!is_bind(
            &serde_json::json!({"type": "tmpfs", "options": ["nosuid"]})
        ));
    }
}
