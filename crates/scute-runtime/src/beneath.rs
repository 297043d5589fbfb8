//! Unmount and delete below a host-owned directory without following a
//! name anybody else could have changed: what every teardown of a sandbox's
//! state dir (delete, undone create, forgotten container, `scute cleanup`,
//! `shim delete`) goes through.
//!
//! The rules (docs/design.md, "Threat model"):
//! - a path below `root` is opened one component at a time from `root`'s
//!   descriptor (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), never
//!   `canonicalize`d;
//! - only mounts whose mount point is strictly below `root` (from mountinfo)
//!   are unmounted, the topmost ones, lazily (which takes their submounts
//!   along) and with `UMOUNT_NOFOLLOW`, through their parent's descriptor;
//! - deletion walks directory descriptors (`O_NOFOLLOW`, `..` checked by
//!   inode on the way back up, so any depth works with two descriptors
//!   open) and never leaves the mount that holds the target.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// Why [`remove`] left something behind.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// `{0}` is not a plain relative path below the root
    #[error("{0} is not a plain relative path below the root")]
    NotBeneath(PathBuf),
    /// a directory on the way could not be opened without following a link
    #[error("open {path} beneath {root}: {source}")]
    Open {
        root: PathBuf,
        path: PathBuf,
        source: Errno,
    },
    /// a mount below the target survived its unmount
    #[error("{0} is still mounted; unmount it and remove the dir by hand")]
    StillMounted(PathBuf),
    /// the walk's own I/O failed
    #[error("remove {path}: {source}")]
    Io { path: PathBuf, source: Errno },
}

/// The path parts of `rel`, refused unless all are plain names.
fn names(rel: &Path) -> Result<Vec<&OsStr>, RemoveError> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(RemoveError::NotBeneath(rel.to_path_buf())),
        })
        .collect()
}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `rel` below `root` without following a symlink or
/// leaving `root` on the way (`..` and absolute parts are refused).
pub fn open_beneath(root: RawFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match nix::fcntl::openat2(root, rel, how) {
        Err(Errno::ENOSYS) => return open_by_components(root, rel),
        r => r?,
    };
    // SAFETY: `openat2` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// [`open_beneath`] for kernels without `openat2` (before 5.6).
fn open_by_components(root: RawFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let mut cur = openat(root, OsStr::new("."))?;
    for c in rel.components() {
        match c {
            Component::Normal(n) => cur = openat(cur.as_raw_fd(), n)?,
            Component::CurDir => {}
            _ => return Err(Errno::EXDEV),
        }
    }
    Ok(cur)
}

/// The directory `name` in `dir`, not through a symlink.
fn openat(dir: RawFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::openat(
        Some(dir),
        name,
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `name` in `dir` is, without following it (`name` empty: `dir`
/// itself): enough to tell it from what a rename put in its place, and
/// the mount it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id {
    ino: u64,
    mnt: u64,
    is_dir: bool,
}

fn identity(dir: RawFd, name: &OsStr) -> Result<Id, Errno> {
    let c = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a NUL-terminated string and `st` a statx buffer, both
    // alive for the call.
    let r = unsafe {
        libc::statx(
            dir,
            c.as_ptr(),
            flags,
            libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID,
            st.as_mut_ptr(),
        )
    };
    Errno::result(r)?;
    // SAFETY: statx succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    Ok(Id {
        ino: st.stx_ino,
        mnt: st.stx_mnt_id,
        is_dir: u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
    })
}

/// Mount points strictly below `root_real` that are at or below `target`
/// (both real paths), topmost first: unmounting one of those lazily takes
/// everything below it along.
fn topmost_mounts(root_real: &Path, target: &Path) -> Vec<PathBuf> {
    let all: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m != root_real && m.starts_with(root_real) && m.starts_with(target))
        .collect();
    let mut top: Vec<PathBuf> = all
        .iter()
        .filter(|m| !all.iter().any(|o| o != *m && m.starts_with(o)))
        .cloned()
        .collect();
    top.sort();
    top.dedup();
    top
}

fn real_path(fd: &OwnedFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

fn unmount_with(root_fd: &OwnedFd, rel: &Path) -> Result<(), RemoveError> {
    let Some(root_real) = real_path(root_fd) else {
        return Ok(());
    };
    let target = root_real.join(rel);
    // Stacked mounts on one point come off one per round.
    for _ in 0..16 {
        let top = topmost_mounts(&root_real, &target);
        if top.is_empty() {
            return Ok(());
        }
        for m in top {
            let Ok(below) = m.strip_prefix(&root_real) else {
                continue;
            };
            let (Some(parent), Some(name)) = (below.parent(), below.file_name()) else {
                continue;
            };
            let parent_fd = match open_beneath(root_fd.as_raw_fd(), parent) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!("unmount {}: its parent: {e}", m.display());
                    continue;
                }
            };
            let mut via = OsString::from(format!("/proc/self/fd/{}/", parent_fd.as_raw_fd()));
            via.push(name);
            if let Err(e) = nix::mount::umount2(
                Path::new(&via),
                nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
            ) {
                tracing::warn!("unmount {}: {e}", m.display());
            }
        }
    }
    match topmost_mounts(&root_real, &target).into_iter().next() {
        Some(m) => Err(RemoveError::StillMounted(m)),
        None => Ok(()),
    }
}

/// Unmounts what is mounted at or below `root/rel`, then deletes `rel`
/// (a file or a whole tree) if it is on the mount that holds its parent.
/// Nothing is deleted while a mount below it survives. A missing `rel` is
/// not an error.
pub fn remove(root: &Path, rel: &Path) -> Result<(), RemoveError> {
    let parts = names(rel)?;
    let Some((name, parents)) = parts.split_last() else {
        return Err(RemoveError::NotBeneath(rel.to_path_buf()));
    };
    let root_fd = match open_dir(root) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(source) => {
            return Err(RemoveError::Open {
                root: root.into(),
                path: PathBuf::new(),
                source,
            })
        }
    };
    unmount_with(&root_fd, rel)?;
    let parent_rel: PathBuf = parents.iter().collect();
    let parent = match open_beneath(root_fd.as_raw_fd(), &parent_rel) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(source) => {
            return Err(RemoveError::Open {
                root: root.into(),
                path: parent_rel,
                source,
            })
        }
    };
    let io = |source| RemoveError::Io {
        path: root.join(rel),
        source,
    };
    let mnt = identity(parent.as_raw_fd(), OsStr::new(""))
        .map_err(io)?
        .mnt;
    let target = match identity(parent.as_raw_fd(), name) {
        Ok(id) => id,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    if !target.is_dir {
        return unlink(parent.as_raw_fd(), name, false).map_err(io);
    }
    if target.mnt != mnt {
        return Err(RemoveError::StillMounted(root.join(rel)));
    }
    let top = openat(parent.as_raw_fd(), name).map_err(io)?;
    empty_dir(top, mnt).map_err(io)?;
    unlink(parent.as_raw_fd(), name, true).map_err(io)
}

fn unlink(dir: RawFd, name: &OsStr, is_dir: bool) -> Result<(), Errno> {
    let flag = if is_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    match nix::unistd::unlinkat(Some(dir), name, flag) {
        Err(Errno::ENOENT) => Ok(()),
        r => r,
    }
}

/// The names in directory `dir` (not `.` and `..`).
fn entries(dir: RawFd) -> Result<Vec<OsString>, Errno> {
    let fd = nix::unistd::dup(dir)?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    Ok(d.iter()
        .flatten()
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// Empties the directory `top` depth-first on mount `mnt`. Climbs back
/// through `..`, checked against the inode it came from, so that only two
/// descriptors are open at any depth. A subdirectory on another mount, or
/// one that can't be emptied, is left (and so then is `top`).
fn empty_dir(top: OwnedFd, mnt: u64) -> Result<(), Errno> {
    let top_ino = identity(top.as_raw_fd(), OsStr::new(""))?.ino;
    let mut cur = top;
    let mut cur_ino = top_ino;
    // (name in the parent, the parent's inode) for each level below `top`.
    let mut path: Vec<(OsString, u64)> = Vec::new();
    let mut kept: HashSet<u64> = HashSet::new();
    loop {
        let mut descend = None;
        for name in entries(cur.as_raw_fd())? {
            let Ok(Id {
                ino,
                mnt: m,
                is_dir,
            }) = identity(cur.as_raw_fd(), &name)
            else {
                continue;
            };
            if !is_dir {
                if let Err(e) = unlink(cur.as_raw_fd(), &name, false) {
                    tracing::warn!("remove {name:?}: {e}");
                }
            } else if m != mnt {
                tracing::error!("not removing {name:?}: another mount");
                kept.insert(ino);
            } else if !kept.contains(&ino) {
                descend = Some((name, ino));
                break;
            }
        }
        if let Some((name, ino)) = descend {
            match openat(cur.as_raw_fd(), &name) {
                Ok(child)
                    if identity(child.as_raw_fd(), OsStr::new("")).map(|i| i.ino) == Ok(ino) =>
                {
                    path.push((name, cur_ino));
                    cur = child;
                    cur_ino = ino;
                }
                _ => {
                    kept.insert(ino);
                }
            }
            continue;
        }
        let Some((name, parent_ino)) = path.pop() else {
            return Ok(());
        };
        let parent = openat(cur.as_raw_fd(), OsStr::new(".."))?;
        let up = identity(parent.as_raw_fd(), OsStr::new(""))?;
        if up.ino != parent_ino || up.mnt != mnt {
            // Moved while we were below it: stop rather than guess.
            return Err(Errno::ESTALE);
        }
        if unlink(parent.as_raw_fd(), &name, true).is_err() {
            kept.insert(cur_ino);
        }
        cur = parent;
        cur_ino = parent_ino;
    }
}

/// Every mount point of this mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\011c\\012d\\134e"),
            "/a b\tc\nd\\e"
        );
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn a_symlinked_level_is_not_followed() {
        let victim = tempfile::tempdir().unwrap();
        std::fs::create_dir(victim.path().join("sub")).unwrap();
        std::fs::write(victim.path().join("sub/precious"), b"keep").unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir(state.path().join("shared")).unwrap();
        std::os::unix::fs::symlink(victim.path(), state.path().join("shared/c1")).unwrap();
        // The link itself goes; what it points at stays.
        remove(state.path(), Path::new("shared/c1")).unwrap();
        assert!(!state.path().join("shared/c1").exists());
        assert_eq!(
            std::fs::read(victim.path().join("sub/precious")).unwrap(),
            b"keep"
        );
        // A level above the target that is a link is refused.
        std::os::unix::fs::symlink(victim.path(), state.path().join("lvl")).unwrap();
        let e = remove(state.path(), Path::new("lvl/sub")).unwrap_err();
        assert!(matches!(e, RemoveError::Open { .. }), "{e}");
        assert!(victim.path().join("sub/precious").exists());
        assert!(matches!(
            remove(state.path(), Path::new("../x")),
            Err(RemoveError::NotBeneath(_))
        ));
    }

    #[test]
    fn any_depth_is_removed() {
        let state = tempfile::tempdir().unwrap();
        // Deeper than PATH_MAX, built with relative steps.
        let top = state.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        let mut fd = open_dir(&top).unwrap();
        let name = OsStr::new("dddddddddddddddddddddddddddddddddddddddddddddddddd");
        for i in 0..200 {
            nix::sys::stat::mkdirat(Some(fd.as_raw_fd()), name, nix::sys::stat::Mode::S_IRWXU)
                .unwrap();
            if i % 50 == 0 {
                let f = nix::fcntl::openat(
                    Some(fd.as_raw_fd()),
                    "f",
                    OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::S_IRWXU,
                )
                .unwrap();
                nix::unistd::close(f).unwrap();
            }
            fd = openat(fd.as_raw_fd(), name).unwrap();
        }
        drop(fd);
        remove(state.path(), Path::new("deep")).unwrap();
        assert!(!top.exists());
    }
}
