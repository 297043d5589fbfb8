//! Linux's new mount API (open_tree, mount_setattr, move_mount) for binds
//! whose flags must hold before anyone else sees them.
//!
//! A bind made under the sandbox's share propagates a *copy* into
//! virtiofsd's mount namespace at the moment it is attached; flags changed
//! on our copy afterwards (a classic `remount,ro`) never reach virtiofsd's.
//! So the tree is cloned detached, its attributes are set recursively, and
//! only then is it attached.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Binds `src` (recursively) on `dst` with `attrs` (`MOUNT_ATTR_*`) set on
/// every mount of the tree before it is attached.
pub fn bind_with_attrs(src: &Path, dst: &Path, attrs: u64) -> std::io::Result<()> {
    let src_c = cpath(src)?;
    let dst_c = cpath(dst)?;
    let empty = CString::default();
    // SAFETY: open_tree reads a NUL-terminated path; the returned fd (or -1)
    // is owned by us from here on.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor returned by open_tree.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: the attr struct outlives the call and its size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both paths are NUL-terminated and live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_options(dst: &Path) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let d = dst.to_string_lossy();
        info.lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&*d)))
            .map(|l| l.split(' ').nth(5).unwrap_or("").to_owned())
            .collect()
    }

    /// Needs root (mounts); the suite runs as root.
    #[test]
    fn readonly_nosuid_nodev_hold_on_every_submount() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let sub = src.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let tmpfs_src = tempfile::tempdir().unwrap();
        // A submount in the source: it must come out read-only too.
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let dst = tmpfs_src.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        bind_with_attrs(
            src.path(),
            &dst,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
        .unwrap();
        let opts = mount_options(&dst);
        let result = std::fs::write(dst.join("sub/f"), b"x");
        let _ = nix::mount::umount2(&dst.join("sub"), nix::mount::MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&dst, nix::mount::MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!(opts.len(), 2, "{opts:?}");
        for o in &opts {
            assert!(o.split(',').any(|f| f == "ro"), "{opts:?}");
            assert!(o.contains("nosuid") && o.contains("nodev"), "{opts:?}");
        }
        let err = result.expect_err("wrote through a read-only bind");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }
}
