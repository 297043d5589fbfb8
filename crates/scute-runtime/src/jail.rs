//! The VMM's jail on the host: an unprivileged uid of its own per sandbox
//! (from the configured range, so two sandboxes' QEMUs can't signal or trace
//! each other), no capabilities, seccomp (`-sandbox on`), and a directory
//! of its own holding the only files it opens by path.
//!
//! A uid is taken by creating `<state_root>/.vmm-uids/<uid>` exclusively and
//! given back when the [`VmmUid`] is dropped; a file whose sandbox is gone
//! (killed shim) is taken over.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use scute_hypervisor::Jail;

use crate::Error;

/// A uid reserved for one sandbox's VMM.
#[derive(Debug)]
pub struct VmmUid {
    pub uid: u32,
    lock: PathBuf,
}

impl VmmUid {
    /// Reserves a uid in `base..base+count` for sandbox `id`, starting at a
    /// slot derived from the id.
    pub fn allocate(state_root: &Path, id: &str, base: u32, count: u32) -> Result<Self, Error> {
        let dir = state_root.join(".vmm-uids");
        fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        crate::state::set_private(&dir)?;
        // Held while choosing: a reservation is created, and a stale one
        // taken over, by one sandbox at a time (two that both found a slot
        // stale, or one reading another's file before its id is written,
        // would otherwise get the same uid).
        let _held = lock_dir(&dir)?;
        let start = id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            % count;
        for i in 0..count {
            let uid = base + (start + i) % count;
            let lock = dir.join(uid.to_string());
            let open = || {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lock)
            };
            let mut created = open();
            if matches!(&created, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
                // The last sandbox's drop removed the (then empty) dir.
                fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
                created = open();
            }
            match created {
                Ok(mut f) => {
                    let _ = f.write_all(id.as_bytes());
                    return Ok(Self { uid, lock });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if is_stale(&lock, state_root) && fs::remove_file(&lock).is_ok() {
                        if let Ok(mut f) = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&lock)
                        {
                            let _ = f.write_all(id.as_bytes());
                            return Ok(Self { uid, lock });
                        }
                    }
                }
                Err(e) => return Err(Error::io(format!("reserve {}", lock.display()))(e)),
            }
        }
        Err(Error::Io {
            what: format!("no free VMM uid in {base}..{}", base as u64 + count as u64),
            source: std::io::Error::other("raise vmm_uids in the scute config"),
        })
    }

    /// The VMM's credentials: its uid as uid and gid, and the group of
    /// `/dev/kvm` when it uses KVM.
    pub fn jail(&self, kvm: bool, private_dir: &Path) -> Jail {
        use std::os::unix::fs::MetadataExt;
        let groups = if kvm {
            fs::metadata("/dev/kvm")
                .map(|m| vec![m.gid()])
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Jail {
            uid: self.uid,
            gid: self.uid,
            groups,
            private_dir: private_dir.to_path_buf(),
        }
    }
}

impl Drop for VmmUid {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.lock);
    }
}

/// Gives back the uid sandbox `id` held when its owner died without
/// dropping its [`VmmUid`] (a killed shim): called by the stale cleanup.
pub fn release_stale(state_root: &Path, id: &str) {
    let dir = state_root.join(".vmm-uids");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        if fs::read_to_string(e.path()).is_ok_and(|held| held == id) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Where the VMM uid range `base..base+count` meets ids the host already
/// hands out: users and groups (`/etc/passwd`, `/etc/group`) and the
/// ranges of user namespaces (`/etc/subuid`, `/etc/subgid`). A VMM sharing
/// an id with one of those could signal or ptrace its processes, or read
/// their files. Empty when the range is clear.
pub fn uid_range_conflicts(base: u32, count: u32) -> Vec<String> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    range_conflicts(
        base,
        count,
        &[
            ("/etc/passwd", &read("/etc/passwd")),
            ("/etc/group", &read("/etc/group")),
        ],
        &[
            ("/etc/subuid", &read("/etc/subuid")),
            ("/etc/subgid", &read("/etc/subgid")),
        ],
    )
}

/// [`uid_range_conflicts`] on the files' texts: `ids` are passwd/group
/// files (id in the third field), `ranges` subuid/subgid files
/// (`name:start:count`).
fn range_conflicts(
    base: u32,
    count: u32,
    ids: &[(&str, &str)],
    ranges: &[(&str, &str)],
) -> Vec<String> {
    let (lo, hi) = (u64::from(base), u64::from(base) + u64::from(count));
    let mut out = Vec::new();
    for (file, text) in ids {
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = l.split(':').collect();
            if let Some(id) = f.get(2).and_then(|v| v.parse::<u64>().ok()) {
                if (lo..hi).contains(&id) {
                    out.push(format!("{file}: {} has id {id}", f[0]));
                }
            }
        }
    }
    for (file, text) in ranges {
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = l.split(':').collect();
            let (Some(start), Some(n)) = (
                f.get(1).and_then(|v| v.parse::<u64>().ok()),
                f.get(2).and_then(|v| v.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if start < hi && lo < start + n {
                out.push(format!("{file}: {} has {start}..{}", f[0], start + n));
            }
        }
    }
    out
}

/// An exclusive `flock` on `<dir>/.lock`, released when dropped. The lock
/// file stays (removing it would let two holders lock two files).
fn lock_dir(dir: &Path) -> Result<fs::File, Error> {
    use std::os::fd::AsRawFd;
    let p = dir.join(".lock");
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(Error::io(format!("open {}", p.display())))?;
    // SAFETY: flock on a descriptor `f` owns; it only takes a lock.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(format!("lock {}", p.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

/// A reservation whose sandbox no longer has a live owner.
fn is_stale(lock: &Path, state_root: &Path) -> bool {
    let Ok(id) = fs::read_to_string(lock) else {
        return false;
    };
    if crate::bundle::validate_id(&id).is_err() {
        return true;
    }
    !crate::state::StateFile::read(&state_root.join(&id)).is_some_and(|st| st.owner_alive())
}

/// Creates `<sandbox dir>/vmm`, owned by the VMM's uid, mode 0700: where
/// its sockets and console log live.
pub fn vmm_dir(sandbox_dir: &Path, uid: Option<u32>) -> Result<PathBuf, Error> {
    let dir = sandbox_dir.join("vmm");
    fs::create_dir(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(Error::io(format!("chmod {}", dir.display())))?;
    if let Some(uid) = uid {
        chown(&dir, Some(uid), Some(uid)).map_err(Error::io(format!("chown {}", dir.display())))?;
    }
    Ok(dir)
}

/// Hands `path` (a file or socket another process created) to the VMM:
/// owner `uid`, mode 0600.
pub fn give(path: &Path, uid: Option<u32>) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(Error::io(format!("chmod {}", path.display())))?;
    if let Some(uid) = uid {
        chown(path, Some(uid), Some(uid))
            .map_err(Error::io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sandboxes_never_share_a_uid() {
        let root = tempfile::tempdir().unwrap();
        // Sandboxes "a" and "b" are live (their owner, this process, runs).
        for id in ["a", "b"] {
            let d = crate::state::StateDir::create(root.path(), id).unwrap();
            std::mem::forget(d);
        }
        let a = VmmUid::allocate(root.path(), "a", 5000, 2).unwrap();
        let b = VmmUid::allocate(root.path(), "b", 5000, 2).unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(
            VmmUid::allocate(root.path(), "c", 5000, 2).is_err(),
            "range exhausted"
        );
        let freed = a.uid;
        drop(a);
        let c = VmmUid::allocate(root.path(), "c", 5000, 2).unwrap();
        assert_eq!(c.uid, freed);
        drop((b, c));
        let left: Vec<_> = fs::read_dir(root.path().join(".vmm-uids"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [".lock"], "the last one out leaves only the lock");
        let again = VmmUid::allocate(root.path(), "a", 5000, 2).unwrap();
        assert!(again.uid >= 5000);
    }

    #[test]
    fn the_stale_cleanup_gives_the_uid_back() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(".vmm-uids");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("7000"), "killed").unwrap();
        fs::write(dir.join("7001"), "other").unwrap();
        release_stale(root.path(), "killed");
        assert!(!dir.join("7000").exists());
        assert!(dir.join("7001").exists());
    }

    #[test]
    fn a_dead_sandboxes_uid_is_taken_over() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(".vmm-uids");
        fs::create_dir_all(&dir).unwrap();
        // Reserved by sandbox "gone", which has no state dir (its shim died).
        fs::write(dir.join("7000"), "gone").unwrap();
        let u = VmmUid::allocate(root.path(), "new", 7000, 1).unwrap();
        assert_eq!(u.uid, 7000);
        assert_eq!(fs::read_to_string(dir.join("7000")).unwrap(), "new");
    }

    #[test]
    fn a_range_meeting_users_or_subids_is_named() {
        let passwd = "root:x:0:0::/root:/bin/sh\nvmm:x:2000005:2000005::/:/bin/false\n";
        let subuid = "alice:100000:65536\nbob:1999000:2000\n";
        let c = range_conflicts(
            2_000_000,
            10_000,
            &[("/etc/passwd", passwd)],
            &[("/etc/subuid", subuid)],
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("vmm has id 2000005"), "{c:?}");
        assert!(c[1].contains("bob has 1999000..2001000"), "{c:?}");
        assert!(range_conflicts(
            3_000_000,
            10,
            &[("/etc/passwd", passwd)],
            &[("/etc/subuid", subuid)]
        )
        .is_empty());
    }

    /// Sandboxes booting at once, with stale reservations to take over:
    /// no uid is handed out twice.
    #[test]
    fn racing_allocations_never_share_a_uid() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(".vmm-uids");
        fs::create_dir_all(&dir).unwrap();
        for uid in 7000..7008 {
            fs::write(dir.join(uid.to_string()), "gone").unwrap();
        }
        let ids: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        for id in &ids {
            std::mem::forget(crate::state::StateDir::create(root.path(), id).unwrap());
        }
        let got: Vec<VmmUid> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| s.spawn(|| VmmUid::allocate(root.path(), id, 7000, 8).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut uids: Vec<u32> = got.iter().map(|u| u.uid).collect();
        uids.sort();
        uids.dedup();
        assert_eq!(uids.len(), 8, "{uids:?}");
    }
}
