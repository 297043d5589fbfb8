//! The VMM's mount namespace: what it sees of the host's filesystem.
//!
//! Built in the child between fork and exec, while it is still root:
//! a private mount namespace where `/run` and the trees holding other
//! containers and users' files are empty tmpfs, the VMM's own directory is
//! bound back in, and everything but that directory is read-only. Every
//! path is turned into a C string before the fork; the child only makes
//! system calls.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Trees the VMM never needs: hidden under empty tmpfs when they exist.
pub const HIDDEN: &[&str] = &[
    "/run",
    "/var/run",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/kubelet",
    "/home",
    "/root",
    "/tmp",
    "/var/tmp",
    "/srv",
    "/mnt",
    "/media",
];

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Everything the child needs, prepared in the parent.
pub struct Plan {
    hide: Vec<CString>,
    /// Directories to create (in order) inside the tmpfs so the private dir
    /// has a place again.
    mkdirs: Vec<CString>,
    private_dir: CString,
    root: CString,
    empty: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
}

fn c(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

impl Plan {
    pub fn new(private_dir: &Path) -> std::io::Result<Self> {
        let private_dir = private_dir.canonicalize()?;
        let hide: Vec<PathBuf> = HIDDEN
            .iter()
            .map(PathBuf::from)
            // A symlink (/var/run → /run) is hidden through its target.
            .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
            .collect();
        // The private dir's ancestors below the hidden tree it lives in.
        let mut mkdirs = Vec::new();
        if let Some(top) = hide.iter().find(|h| private_dir.starts_with(h)) {
            let mut at = top.clone();
            for part in private_dir
                .strip_prefix(top)
                .unwrap_or(Path::new(""))
                .components()
            {
                at.push(part);
                mkdirs.push(c(&at)?);
            }
        }
        Ok(Self {
            hide: hide.iter().map(|p| c(p)).collect::<Result<_, _>>()?,
            mkdirs,
            private_dir: c(&private_dir)?,
            root: c(Path::new("/"))?,
            empty: CString::default(),
            tmpfs: CString::new("tmpfs").unwrap_or_default(),
            tmpfs_opts: CString::new("mode=0755,size=64k").unwrap_or_default(),
        })
    }

    /// Runs in the child after fork, as root. Only system calls.
    ///
    /// # Safety
    /// Must be called in a freshly forked child (it changes the calling
    /// process's mount namespace).
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_long| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(rc)
            }
        };
        // SAFETY: every pointer is to a CString or a
        // struct owned by `self` or this frame, alive across the call.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
            check(libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as libc::c_long)?;
            // Hold on to the private dir before the tmpfs covers it.
            let tree = check(libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                self.private_dir.as_ptr(),
                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
            ))? as libc::c_int;
            for h in &self.hide {
                check(libc::mount(
                    self.tmpfs.as_ptr(),
                    h.as_ptr(),
                    self.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    self.tmpfs_opts.as_ptr().cast(),
                ) as libc::c_long)?;
            }
            for d in &self.mkdirs {
                check(libc::mkdir(d.as_ptr(), 0o755) as libc::c_long)?;
            }
            check(libc::syscall(
                libc::SYS_move_mount,
                tree,
                self.empty.as_ptr(),
                libc::AT_FDCWD,
                self.private_dir.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ))?;
            libc::close(tree);
            let ro = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            check(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                self.root.as_ptr(),
                AT_RECURSIVE,
                &ro as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ))?;
            let rw = MountAttr {
                attr_set: 0,
                attr_clr: MOUNT_ATTR_RDONLY,
                propagation: 0,
                userns_fd: 0,
            };
            check(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                self.private_dir.as_ptr(),
                AT_RECURSIVE,
                &rw as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ))?;
        }
        Ok(())
    }
}
