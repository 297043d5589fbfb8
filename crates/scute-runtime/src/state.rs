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
    /// Its start time (clock ticks after boot, `/proc/<pid>/stat` field 22):
    /// with the pid, what tells the owner from a later process that reused
    /// its pid.
    #[serde(default)]
    pub owner_start: Option<u64>,
    pub vmm_pid: Option<u32>,
    pub virtiofsd_pid: Option<u32>,
    /// The virtiofsd serving the root filesystems.
    #[serde(default)]
    pub rootfs_virtiofsd_pid: Option<u32>,
    pub bundle: Option<PathBuf>,
    /// The VMM's host cgroup directories, removed by the stale cleanup.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Start time of each recorded process (pid → clock ticks after boot):
    /// the stale cleanup kills a pid only while it still is that process.
    #[serde(default)]
    pub starts: std::collections::BTreeMap<u32, u64>,
}

impl StateFile {
    /// A state file whose owner is this process.
    pub fn owned_by_me(id: &str) -> Self {
        let pid = std::process::id() as i32;
        Self {
            id: id.to_owned(),
            owner_pid: pid,
            owner_start: process_start_time(pid),
            vmm_pid: None,
            virtiofsd_pid: None,
            rootfs_virtiofsd_pid: None,
            bundle: None,
            cgroups: Vec::new(),
            starts: Default::default(),
        }
    }

    /// This process's state file for a sandbox whose VMM and virtiofsds
    /// run, with their start times.
    pub fn running(id: &str, vmm: u32, virtiofsd: u32, rootfs_virtiofsd: u32) -> Self {
        let starts = [vmm, virtiofsd, rootfs_virtiofsd]
            .into_iter()
            .filter_map(|p| Some((p, process_start_time(p as i32)?)))
            .collect();
        Self {
            vmm_pid: Some(vmm),
            virtiofsd_pid: Some(virtiofsd),
            rootfs_virtiofsd_pid: Some(rootfs_virtiofsd),
            starts,
            ..Self::owned_by_me(id)
        }
    }

    /// Whether `pid`, recorded here, is still the process this sandbox
    /// started: same start time (a state file without one: its command
    /// line names `dir`).
    pub(crate) fn still_ours(&self, pid: u32, dir: &Path) -> bool {
        match self.starts.get(&pid) {
            Some(t) => process_start_time(pid as i32) == Some(*t),
            None => {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmd).contains(&*dir.to_string_lossy())
            }
        }
    }

    /// Reads `<dir>/state.json`.
    pub fn read(dir: &Path) -> Option<Self> {
        serde_json::from_slice(&fs::read(dir.join("state.json")).ok()?).ok()
    }

    /// Whether the recorded owner still runs: its pid exists *and* started
    /// when the owner did (a reused pid has another start time). Without a
    /// recorded start time (older state), the pid must run a scute program.
    pub fn owner_alive(&self) -> bool {
        let pid = self.owner_pid;
        if pid <= 0 {
            return false;
        }
        if is_zombie(pid) {
            return false;
        }
        match (self.owner_start, process_start_time(pid)) {
            (_, None) => false,
            (Some(recorded), Some(now)) => recorded == now,
            (None, Some(_)) => {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmd).contains("scute")
            }
        }
    }
}

/// A process's start time in clock ticks after boot, from `/proc/<pid>/stat`.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields after its last ')'. Start time is field 22, the 20th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Mode 0700 on `p` (owner-only).
pub fn set_private(p: &Path) -> Result<(), Error> {
    set_mode(p, 0o700)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("chmod {mode:o} {}", p.display())))
}

/// Creates (truncates) `p` readable by its owner only.
pub fn private_file(p: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s[s.rfind(')')? + 1..].split_whitespace().next()? == "Z"))
        .unwrap_or(false)
}

/// Written into a sandbox's dir once its owner is releasing it (the shim
/// answered containerd's Shutdown and is stopping the VM): a create of the
/// same id waits for the dir to go instead of refusing the id as taken.
const RELEASING: &str = "releasing";

/// How long a create waits for a releasing owner to finish.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
        // Nobody but root may list it; the jailed VMMs may only pass through
        // to their own `vmm/` dirs. Everything inside is private on its own.
        set_mode(root, 0o711)?;
        let path = root.join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Some(pid) = live_owner(&path) {
                    if !released_within(&path, RELEASE_WAIT) {
                        return Err(Error::AlreadyRunning {
                            id: id.to_owned(),
                            pid,
                        });
                    }
                }
                if path.exists() {
                    tracing::warn!(
                        sandbox_id = id,
                        "removing stale state dir {}",
                        path.display()
                    );
                    remove_tree(&path);
                }
                fs::create_dir(&path).map_err(Error::io(format!("create {}", path.display())))?;
            }
            Err(e) => return Err(Error::io(format!("create {}", path.display()))(e)),
        }
        let dir = Self {
            path,
            id: id.to_owned(),
        };
        set_mode(&dir.path, 0o711)?;
        dir.write(&StateFile::owned_by_me(id))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Says the owner is releasing the sandbox: see [`RELEASING`].
    pub fn mark_releasing(&self) {
        if let Err(e) = fs::write(self.path.join(RELEASING), b"") {
            tracing::warn!(sandbox_id = %self.id, "mark the state dir releasing: {e}");
        }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    pub fn write(&self, st: &StateFile) -> Result<(), Error> {
        let tmp = self.path.join(".state.json.tmp");
        private_file(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(
                    &mut f,
                    &serde_json::to_vec_pretty(st).unwrap_or_default(),
                )
            })
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

/// Waits (at most `limit`) while `dir`'s live owner is releasing it; true
/// once no live owner holds it. False at once for an owner that is not
/// releasing.
fn released_within(dir: &Path, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if live_owner(dir).is_none() {
            return true;
        }
        if !dir.join(RELEASING).exists() || std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn live_owner(dir: &Path) -> Option<i32> {
    let st = StateFile::read(dir)?;
    (st.owner_alive() && st.owner_pid != std::process::id() as i32).then_some(st.owner_pid)
}

/// Unmounts every mount below `path`, then removes it: through directory
/// descriptors from `path`'s parent (see [`crate::beneath`]), so a symlink
/// or a mount planted anywhere below is neither followed nor emptied.
/// `path`'s parent itself is the caller's (the state root, a sandbox dir).
///
/// Deletion is refused (and logged) while anything below `path` is still
/// mounted, and never crosses into another mount.
pub fn remove_tree(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    if let Err(e) = crate::beneath::remove(parent, Path::new(name)) {
        tracing::error!("not removing all of {}: {e}", path.display());
    }
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
            owner_pid: 1,
            owner_start: process_start_time(1),
            ..StateFile::owned_by_me("a")
        })
        .unwrap();
        let e = StateDir::create(root.path(), "a").unwrap_err();
        assert!(matches!(e, Error::AlreadyRunning { pid: 1, .. }), "{e}");
        drop(d);
        assert!(!root.path().join("a").exists());
    }

    #[test]
    fn a_reused_pid_is_not_the_owner() {
        let me = StateFile::owned_by_me("x");
        assert!(me.owner_alive());
        let reused = StateFile {
            owner_start: me.owner_start.map(|t| t + 1),
            ..me.clone()
        };
        assert!(!reused.owner_alive());
        let gone = StateFile {
            owner_pid: 2147483600,
            ..me
        };
        assert!(!gone.owner_alive());
    }

    /// Needs root (mounts); the suite runs as root.
    #[test]
    fn a_tree_with_a_live_mount_is_not_deleted() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("precious"), b"keep").unwrap();
        let state = tempfile::tempdir().unwrap();
        let dst = state.path().join("sb/shared/c/rootfs");
        std::fs::create_dir_all(&dst).unwrap();
        nix::mount::mount(
            Some(victim.path()),
            &dst,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        // Through a symlinked path, as with state_dir = /var/run/scute.
        let link = tempfile::tempdir().unwrap();
        let via = link.path().join("state");
        std::os::unix::fs::symlink(state.path(), &via).unwrap();
        remove_tree(&via.join("sb"));
        assert_eq!(
            std::fs::read(victim.path().join("precious")).unwrap(),
            b"keep"
        );
        assert!(!state.path().join("sb").exists(), "unmounted, then removed");
    }

    /// A sandbox whose owner answered Shutdown and is stopping its VM is
    /// waited for (containerd may start the next shim of the same id at
    /// once); a running one still makes the id taken, without a wait.
    #[test]
    fn a_releasing_owner_is_waited_for_a_running_one_is_not() {
        use std::time::{Duration, Instant};
        let root = tempfile::tempdir().unwrap();
        let mut owner = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = owner.id() as i32;
        let st = StateFile {
            owner_pid: pid,
            owner_start: process_start_time(pid),
            ..StateFile::owned_by_me("s")
        };
        let dir = root.path().join("s");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
        let t = Instant::now();
        assert!(matches!(
            StateDir::create(root.path(), "s"),
            Err(Error::AlreadyRunning { pid: p, .. }) if p == pid
        ));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        fs::write(dir.join(RELEASING), b"").unwrap();
        let t = Instant::now();
        let ends = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            owner.kill().unwrap();
            owner.wait().unwrap();
        });
        let d = StateDir::create(root.path(), "s").unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        ends.join().unwrap();
        assert!(!d.join(RELEASING).exists(), "a fresh dir");
        assert_eq!(
            StateFile::read(d.path()).unwrap().owner_pid,
            std::process::id() as i32
        );
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
