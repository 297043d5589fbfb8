//! The virtio-fs share: host paths a container needs, bind-mounted under the
//! sandbox's `shared/` dir, and the spec rewritten to the guest's view of them.
//!
//! Layout (Kata's): the host binds into a host-private tree the guest never
//! sees, `<sandbox>/private/{shared,rootfs}/`; virtiofsd serves a read-only
//! view of each, `<sandbox>/{shared,rootfs}/` (guest `/run/scute/shared`,
//! `/run/scute/rootfs`), which receives the binds by mount propagation.
//! So the guest can't create, rename or link an entry at any level the
//! host names: only inside a container's rootfs or a volume, which are
//! mounts of their own the host unmounts whole, never walks. Below the
//! share: `<container>` (the rootfs, in `rootfs/`) and
//! `<container>/mounts/<n>` for each bind mount (in `shared/`).

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

/// Whether a spec mount asks for read-only: `ro`, or `rro` (recursively
/// read-only; every bind here is read-only on each submount anyway).
fn is_readonly(m: &Value) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|x| matches!(x.as_str(), Some("ro" | "rro"))))
}

/// Turns `dir` into a mount point with shared propagation, so bind mounts
/// made below it later (containers joining a running sandbox) propagate into
/// its read-only view and from there into virtiofsd's mount namespace.
fn make_shared_mount(dir: &Path) -> Result<(), Error> {
    let err = |what: &str| {
        let what = format!("{what} {}", dir.display());
        move |e: nix::errno::Errno| Error::Io {
            what,
            source: e.into(),
        }
    };
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err("bind"))?;
    // A peer group of its own: a bind of a dir of /run (itself shared under
    // systemd) would otherwise be /run's peer, and every volume bound for
    // the guest would appear in every namespace /run propagates to.
    for (flag, what) in [
        (MsFlags::MS_PRIVATE, "make private"),
        (MsFlags::MS_SHARED, "make shared"),
    ] {
        mount(None::<&str>, dir, None::<&str>, flag, None::<&str>).map_err(err(what))?;
    }
    Ok(())
}

/// The host-private side of a share view (`<sandbox>/shared` →
/// `<sandbox>/private/shared`): where the host creates and binds.
pub fn private_of(view: &Path) -> PathBuf {
    let name = view.file_name().unwrap_or_default();
    view.with_file_name("private").join(name)
}

/// Creates the sandbox's two shares in `dir`: the private trees, each a
/// shared mount, and their read-only, `nosuid,nodev` views (peers, so binds
/// made in a private tree appear in its view with their own flags). Returns
/// the view of `shared`; the rootfs view is [`rootfs_share`] of it.
pub fn create_shares(dir: &Path) -> Result<PathBuf, Error> {
    let private = dir.join("private");
    fs::create_dir(&private).map_err(Error::io(format!("create {}", private.display())))?;
    crate::state::set_private(&private)?;
    let shared = dir.join("shared");
    for view in [shared.clone(), rootfs_share(&shared)] {
        let host = private_of(&view);
        for d in [&host, &view] {
            fs::create_dir(d).map_err(Error::io(format!("create {}", d.display())))?;
            crate::state::set_private(d)?;
        }
        make_shared_mount(&host)?;
        let err = |what: &'static str| {
            let what = format!("{what} {}", view.display());
            move |e: nix::errno::Errno| Error::Io {
                what,
                source: e.into(),
            }
        };
        mount(
            Some(&host),
            &view,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err("bind the share view"))?;
        mount(
            None::<&str>,
            &view,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(err("make read-only the share view"))?;
    }
    Ok(shared)
}

/// Guest mount point of the root filesystems' share (`--cache always`).
pub const GUEST_ROOTFS: &str = "/run/scute/rootfs";

/// The host dir of the root filesystems' share, beside `shared`.
pub fn rootfs_share(shared: &Path) -> PathBuf {
    shared.with_file_name("rootfs")
}

/// Removes container `cid` from the share: its bind mounts and its dirs in
/// the private trees, through descriptors from the sandbox's dir.
pub fn unshare_container(shared: &Path, cid: &str) {
    let Some(dir) = shared.parent() else {
        return;
    };
    for view in ["shared", "rootfs"] {
        let rel = Path::new("private").join(view).join(cid);
        if let Err(e) = crate::beneath::remove(dir, &rel) {
            tracing::error!(
                container_id = cid,
                "unshare {}: {e}",
                dir.join(&rel).display()
            );
        }
    }
}

/// Exposes `bundle` as container `cid` in `shared` (host path) and returns the
/// spec the agent gets. Mounts are left to the state dir's teardown.
/// `joinable`: (reported pid, guest pid) of the processes whose namespaces the container may join (see
/// [`crate::pod::guest_namespaces`]).
pub fn share_container(
    shared: &Path,
    cid: &str,
    bundle: &Bundle,
    joinable: &[(u32, u32)],
) -> Result<Value, Error> {
    // It names a directory of the share.
    crate::bundle::validate_id(cid)?;
    let base = private_of(shared).join(cid);
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
        &private_of(&rootfs_share(shared)).join(cid),
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
fn prepare_for_guest(spec: &mut Value, cid: &str, joinable: &[(u32, u32)]) -> Result<(), Error> {
    let role = crate::pod::Role::of(spec)?;
    let obj = spec.as_object_mut().ok_or_else(|| Error::InvalidSpec {
        path: "config.json".into(),
        message: "the spec is not a JSON object".into(),
    })?;
    // Hooks are host binaries: they run on the host (not yet supported) or not at all.
    obj.remove("hooks");
    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        // The guest has its own cgroup tree; host paths (or systemd slices) don't apply.
        linux.insert("cgroupsPath".into(), Value::String(format!("/scute/{cid}")));
        // The guest has no swap (and its kernel no memory.swap.max): memory
        // plus swap is the memory limit there. Docker sets swap to twice
        // --memory by default.
        if let Some(mem) = linux
            .get_mut("resources")
            .and_then(|r| r.get_mut("memory"))
            .and_then(Value::as_object_mut)
        {
            mem.remove("swap");
            mem.remove("swappiness");
        }
    }
    if let Some(p) = spec.get_mut("process") {
        inherit_rlimits(p);
    }
    crate::pod::guest_namespaces(spec, &role, joinable)
}

/// runc's processes inherit the runtime's open-files limit when the spec
/// sets none (containerd's CRI sets none); in the guest they would get the
/// guest kernel's 1024/4096. The shim's own limit is written into a
/// process spec without one, capped at the guest's `fs.nr_open` (1048576).
pub fn inherit_rlimits(process: &mut Value) {
    const GUEST_NR_OPEN: u64 = 1 << 20;
    let Some(obj) = process.as_object_mut() else {
        return;
    };
    let list = obj
        .entry("rlimits")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    if list
        .iter()
        .any(|r| r.get("type").and_then(Value::as_str) == Some("RLIMIT_NOFILE"))
    {
        return;
    }
    let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return;
    };
    list.push(serde_json::json!({
        "type": "RLIMIT_NOFILE",
        "soft": soft.min(GUEST_NR_OPEN),
        "hard": hard.min(GUEST_NR_OPEN),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_parts_are_replaced() {
        let mut s = serde_json::json!({
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "linux": {"cgroupsPath": "system.slice:docker:abc", "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}],
                "resources": {"memory": {"limit": 67108864, "swap": 134217728, "swappiness": 60}}}
        });
        prepare_for_guest(&mut s, "c1", &[]).unwrap();
        assert!(s.get("hooks").is_none());
        // No swap in the guest: Docker's default swap limit can't be set there.
        assert_eq!(
            s["linux"]["resources"]["memory"],
            serde_json::json!({"limit": 67108864})
        );
        assert_eq!(s["linux"]["cgroupsPath"], "/scute/c1");
        // The wired netns is the VM's: the container shares the guest's.
        assert_eq!(
            s["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}])
        );
    }

    #[test]
    fn the_runtimes_open_files_limit_is_inherited_unless_set() {
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let mut p = serde_json::json!({"args": ["sh"]});
        inherit_rlimits(&mut p);
        assert_eq!(
            p["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": soft.min(1 << 20), "hard": hard.min(1 << 20)}])
        );
        let set = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}]);
        let mut p = serde_json::json!({"rlimits": set.clone()});
        inherit_rlimits(&mut p);
        assert_eq!(p["rlimits"], set);
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
