//! Sandboxes whose owner died: finding them and taking back what they
//! hold (their processes, cgroups, mounts, state dir, VMM uid, a pool VM's
//! netns). Above [`crate::state`], [`crate::jail`] and [`crate::beneath`].

use std::fs;
use std::path::{Path, PathBuf};

use crate::state::{remove_tree, StateFile};

/// Sandboxes under `root` whose owner (shim or `scute run`) is gone: what
/// a host keeps after a shim was killed and containerd never came back to
/// delete it. A dir without a readable state file is left alone (it may be
/// being created).
pub fn stale(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| crate::bundle::validate_id(n).is_ok())
        })
        .filter(|p| StateFile::read(p).is_some_and(|st| !st.owner_alive()))
        .collect();
    out.sort();
    out
}

/// Cleans a state dir whose owner died (or is wedged: the caller decides):
/// kills the owner if it still runs, then the VMM and virtiofsd it recorded
/// (if those pids are still those processes: same start time), unmounts,
/// removes.
pub fn cleanup(dir: &Path) {
    if let Some(st) = StateFile::read(dir) {
        if st.owner_pid != std::process::id() as i32 && st.owner_alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(st.owner_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for pid in [st.vmm_pid, st.virtiofsd_pid, st.rootfs_virtiofsd_pid]
            .into_iter()
            .flatten()
        {
            if st.still_ours(pid, dir) {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        crate::hostcgroup::remove(&st.cgroups);
    }
    remove_tree(dir);
    if let (Some(root), Some(id)) = (dir.parent(), dir.file_name()) {
        let id = id.to_string_lossy();
        crate::jail::release_stale(root, &id);
        // A pool VM's own netns (a dead pool member's).
        if id.starts_with("pool-") {
            crate::network::remove_pool_netns(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;

    #[test]
    fn stale_lists_only_dead_owners() {
        let root = tempfile::tempdir().unwrap();
        let live = StateDir::create(root.path(), "live").unwrap();
        let dead = StateDir::create(root.path(), "dead").unwrap();
        dead.write(&StateFile {
            owner_pid: 2147483600,
            ..StateFile::owned_by_me("dead")
        })
        .unwrap();
        std::fs::create_dir(root.path().join("creating")).unwrap();
        assert_eq!(stale(root.path()), vec![root.path().join("dead")]);
        cleanup(&root.path().join("dead"));
        assert!(stale(root.path()).is_empty());
        assert!(!root.path().join("dead").exists());
        std::mem::forget(dead);
        drop(live);
    }
}
