//! The virtio-fs share: host paths a container needs, bind-mounted under the
//! sandbox's `shared/` dir, and the spec rewritten to the guest's view of them.
//!
//! Layout (host `/run/scute/<sandbox>/shared/` = guest `/run/scute/shared/`):
//! `<container>/rootfs` and `<container>/mounts/<n>` for each bind mount.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::mountapi::{bind_with_attrs, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use serde_json::Value;

use crate::bundle::Bundle;
use crate::Error;

/// Where the share appears in the guest.
pub const GUEST_SHARED: &str = "/run/scute/shared";

/// Bind-mounts `src` on `dst` (creating `dst` as a file or dir like `src`),
/// recursively, `nosuid,nodev` and, when `readonly`, read-only on every
/// submount: flags set before the bind is attached, so the copy virtiofsd
/// serves has them too and a guest that remounts its view rw still gets
/// EROFS from the host.
fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<(), Error> {
    if src.is_dir() {
        fs::create_dir_all(dst).map_err(Error::io(format!("create {}", dst.display())))?;
    } else {
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p).map_err(Error::io(format!("create {}", p.display())))?;
        }
        fs::write(dst, b"").map_err(Error::io(format!("create {}", dst.display())))?;
    }
    let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if readonly {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    bind_with_attrs(src, dst, attrs).map_err(|source| Error::Io {
        what: format!(
            "bind {} on {}{}",
            src.display(),
            dst.display(),
            if readonly { " read-only" } else { "" }
        ),
        source,
    })
}

/// Creates the missing destinations of `spec`'s mounts under `rootfs`
/// (a file for a bind of a file, else a directory). A destination whose path
/// crosses a symlink is left alone: resolving it on the host could leave the
/// rootfs; the guest then reports it if it can't mount there.
fn create_mountpoints(rootfs: &Path, spec: &Value, bundle_dir: &Path) {
    let Some(mounts) = spec.get("mounts").and_then(Value::as_array) else {
        return;
    };
    for m in mounts {
        let Some(dest) = m.get("destination").and_then(Value::as_str) else {
            continue;
        };
        let is_file = is_bind(m)
            && m.get("source").and_then(Value::as_str).is_some_and(|s| {
                let p = Path::new(s);
                let p = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    bundle_dir.join(p)
                };
                p.metadata().is_ok_and(|md| md.is_file())
            });
        let parts: Vec<&std::ffi::OsStr> = Path::new(dest)
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut at = rootfs.to_path_buf();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            match at.symlink_metadata() {
                Ok(md) if md.file_type().is_symlink() => break,
                Ok(_) => continue,
                Err(_) => {}
            }
            let last = i + 1 == parts.len();
            let made = if last && is_file {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&at)
                    .map(drop)
            } else {
                fs::create_dir(&at)
            };
            if made.is_err() {
                break;
            }
        }
    }
}

/// An absent `maskedPaths`/`readonlyPaths` means none, as runc reads it;
/// the guest's OCI parser would put its defaults there, so they are made
/// explicit (a `--privileged` container gets a writable /proc/sys, as
/// under runc).
fn explicit_path_lists(spec: &mut Value) {
    let Some(obj) = spec.as_object_mut() else {
        return;
    };
    let linux = obj
        .entry("linux")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(l) = linux.as_object_mut() {
        for key in ["maskedPaths", "readonlyPaths"] {
            l.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        }
    }
}

/// Whether a spec mount asks for read-only (`ro` among its options).
fn is_readonly(m: &Value) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|x| x.as_str() == Some("ro")))
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
/// Guest mount point of the root filesystems' share (`--cache always`).
pub const GUEST_ROOTFS: &str = "/run/scute/rootfs";

/// The host dir of the root filesystems' share, beside `shared`.
pub fn rootfs_share(shared: &Path) -> PathBuf {
    shared.with_file_name("rootfs")
}

pub fn unshare_container(shared: &Path, cid: &str) {
    crate::state::remove_tree(&shared.join(cid));
    crate::state::remove_tree(&rootfs_share(shared).join(cid));
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
    let mut spec = bundle.raw.clone();
    explicit_path_lists(&mut spec);
    // Everything that can be refused is checked before anything is mounted.
    prepare_for_guest(&mut spec, cid, joinable)?;
    let root_readonly = spec
        .pointer("/root/readonly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if root_readonly {
        // The guest can't create mount points in a rootfs the host made
        // read-only: make them now, as runc would before its remount.
        create_mountpoints(&bundle.rootfs, &spec, &bundle.dir);
    }
    // Root filesystems on their own share, which the guest caches: only the
    // guest changes them, and re-reading a file then stays in the guest.
    bind(
        &bundle.rootfs,
        &rootfs_share(shared).join(cid),
        root_readonly,
    )?;
    spec["root"]["path"] = Value::String(Path::new(GUEST_ROOTFS).join(cid).display().to_string());

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
            bind(&src, &base.join(&rel), is_readonly(m))?;
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
