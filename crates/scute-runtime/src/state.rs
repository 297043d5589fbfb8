//! `/run/scute/<id>/`: a sandbox's state dir, owned by one process at a time.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile {
    pub id: String,
    /// Process that owns the sandbox (scute run, or the shim).
    pub owner_pid: i32,
    pub vmm_pid: Option<u32>,
    pub virtiofsd_pid: Option<u32>,
    pub bundle: Option<PathBuf>,
}

/// Owns the state dir; removing it (after unmounting anything left below it)
/// when dropped.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    id: String,
}

impl StateDir {
    /// Creates the dir for `id`. A dir whose owner is alive means the id is
    /// taken; a stale one (owner gone) is cleaned first.
    pub fn create(root: &Path, id: &str) -> Result<Self, Error> {
        fs::create_dir_all(root).map_err(Error::io(format!("create {}", root.display())))?;
        let path = root.join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Some(pid) = live_owner(&path) {
                    return Err(Error::AlreadyRunning {
                        id: id.to_owned(),
                        pid,
                    });
                }
                tracing::warn!(
                    sandbox_id = id,
                    "removing stale state dir {}",
                    path.display()
                );
                remove_tree(&path);
                fs::create_dir(&path).map_err(Error::io(format!("create {}", path.display())))?;
            }
            Err(e) => return Err(Error::io(format!("create {}", path.display()))(e)),
        }
        let dir = Self {
            path,
            id: id.to_owned(),
        };
        dir.write(&StateFile {
            id: id.to_owned(),
            owner_pid: std::process::id() as i32,
            vmm_pid: None,
            virtiofsd_pid: None,
            bundle: None,
        })?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    pub fn write(&self, st: &StateFile) -> Result<(), Error> {
        let tmp = self.path.join(".state.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(st).unwrap_or_default())
            .map_err(Error::io("write state.json"))?;
        fs::rename(&tmp, self.path.join("state.json")).map_err(Error::io("write state.json"))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        tracing::debug!(sandbox_id = %self.id, "removing {}", self.path.display());
        remove_tree(&self.path);
    }
}

/// Cleans a state dir whose owner died: kills the VMM and virtiofsd it
/// recorded (if those pids still run those programs), unmounts, removes.
pub fn cleanup_stale(dir: &Path) {
    if let Ok(bytes) = fs::read(dir.join("state.json")) {
        if let Ok(st) = serde_json::from_slice::<StateFile>(&bytes) {
            // An owner that still runs (a wedged shim) goes too.
            let owner = st.owner_pid;
            let cmd = fs::read(format!("/proc/{owner}/cmdline")).unwrap_or_default();
            if owner != std::process::id() as i32
                && String::from_utf8_lossy(&cmd).contains("containerd-shim-scute")
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(owner),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for pid in [st.vmm_pid, st.virtiofsd_pid].into_iter().flatten() {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains(&*dir.to_string_lossy()) {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
    remove_tree(dir);
}

fn live_owner(dir: &Path) -> Option<i32> {
    let st: StateFile = serde_json::from_slice(&fs::read(dir.join("state.json")).ok()?).ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.owner_pid), None).is_ok();
    (alive && st.owner_pid != std::process::id() as i32).then_some(st.owner_pid)
}

/// Unmounts every mount below `path` (deepest first), then removes it.
pub fn remove_tree(path: &Path) {
    for m in mounts_below(path).into_iter().rev() {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir_all(path);
}

/// Mount points at or below `path`, in mount order.
pub fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_twice_is_refused_while_owner_lives_elsewhere() {
        let root = tempfile::tempdir().unwrap();
        let d = StateDir::create(root.path(), "a").unwrap();
        // Pretend another live process (pid 1) owns it.
        d.write(&StateFile {
            id: "a".into(),
            owner_pid: 1,
            vmm_pid: None,
            virtiofsd_pid: None,
            bundle: None,
        })
        .unwrap();
        let e = StateDir::create(root.path(), "a").unwrap_err();
        assert!(matches!(e, Error::AlreadyRunning { pid: 1, .. }), "{e}");
        drop(d);
        assert!(!root.path().join("a").exists());
    }

    #[test]
    fn stale_dir_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("s")).unwrap();
        fs::write(
            root.path().join("s/state.json"),
            r#"{"id":"s","owner_pid":2147483600,"vmm_pid":null,"virtiofsd_pid":null,"bundle":null}"#,
        )
        .unwrap();
        let d = StateDir::create(root.path(), "s").unwrap();
        assert!(d.join("state.json").exists());
    }
}
