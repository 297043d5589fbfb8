//! The host cgroup of a sandbox: its QEMU and virtiofsd go there before
//! they run a single instruction of their own, so the VM's memory, its
//! threads and its CPU time are accounted (and bounded) as the sandbox's, the
//! way runc places a container.
//!
//! Where: the sandbox container's `linux.cgroupsPath`: a cgroupfs path
//! (`/default/<id>` from ctr, `/kubepods/.../pod<uid>/<id>` from a kubelet
//! with the cgroupfs driver) as it is; the systemd driver's
//! `slice:prefix:name` (kubeadm's default) as the path systemd gives that
//! unit, `<prefix>-<name>.scope` in the pod's slice, so that the VM counts
//! in the pod's and `kubepods.slice`'s accounting (node allocatable,
//! eviction); otherwise (no path, or one that is neither) `/scute/<id>`.
//! cgroup v2 gets one directory; v1 one per controller scute uses (memory,
//! pids, cpuacct). Limits: `memory` = guest RAM + `vmm_memory_overhead_mib`
//! (0: none), `pids` = [`PIDS_MAX`]. The directory is removed with the
//! sandbox; parents it had to create are left (shared, like runc's).

use std::fs::{self, File, OpenOptions};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

/// Tasks (threads) QEMU and virtiofsd may have together: QEMU's vCPU, I/O
/// and RCU threads plus its AIO pool (64 at most), virtiofsd's two
/// processes and pool. A bound, not a target.
pub const PIDS_MAX: u32 = 512;

/// cgroup v1 controllers scute places the VMM in.
pub(crate) const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpuacct"];

/// Where the sandbox's cgroup goes, relative to each hierarchy's root.
pub fn relative_path(id: &str, requested: Option<&str>) -> PathBuf {
    let fallback = || PathBuf::from("scute").join(id);
    let Some(req) = requested.filter(|r| !r.is_empty()) else {
        return fallback();
    };
    let p = Path::new(req);
    let normal = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && p.components().count() > 1;
    if req.contains(':') {
        return systemd_path(req).unwrap_or_else(|| {
            tracing::info!(
                sandbox_id = id,
                cgroups_path = req,
                "not a systemd slice:prefix:name: the VMM goes to /scute/<id>"
            );
            fallback()
        });
    }
    if !normal {
        tracing::info!(
            sandbox_id = id,
            cgroups_path = req,
            "not a cgroupfs path: the VMM goes to /scute/<id>"
        );
        return fallback();
    }
    p.strip_prefix("/").unwrap_or(p).to_path_buf()
}

/// The cgroupfs path of the systemd driver's `slice:prefix:name` (runc's
/// reading): the slice expanded into its parents (`a-b.slice` is
/// `a.slice/a-b.slice`; empty means `system.slice`, `-.slice` the root),
/// then the scope `<prefix>-<name>.scope`. `None` when it is not that form.
fn systemd_path(req: &str) -> Option<PathBuf> {
    let mut parts = req.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    let plain = |s: &str| !s.contains('/') && s != "." && s != "..";
    if parts.next().is_some() || name.is_empty() || ![slice, prefix, name].iter().all(|s| plain(s))
    {
        return None;
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = PathBuf::new();
    if slice != "-.slice" {
        let base = slice.strip_suffix(".slice")?;
        if base.is_empty() || base.starts_with('-') || base.ends_with('-') || base.contains("--") {
            return None;
        }
        let mut acc = String::new();
        for part in base.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            path.push(format!("{acc}.slice"));
        }
    }
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Some(path)
}

pub struct SandboxCgroup {
    /// Leaf directories, one per hierarchy; removed when dropped.
    dirs: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// Creates the sandbox's cgroup below `root` (normally `/sys/fs/cgroup`)
    /// and sets its limits.
    pub fn create(root: &Path, rel: &Path, memory_max: Option<u64>) -> Result<Self, Error> {
        let mut me = Self { dirs: Vec::new() };
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(rel);
            enable_v2_controllers(root, rel);
            me.make(&dir)?;
            if let Some(m) = memory_max {
                set(&dir, "memory.max", &m.to_string());
            }
            set(&dir, "pids.max", &PIDS_MAX.to_string());
        } else {
            let mut seen = Vec::new();
            for c in V1_CONTROLLERS {
                let Ok(hier) = root.join(c).canonicalize() else {
                    tracing::info!("cgroup v1 controller {c} not mounted: not used");
                    continue;
                };
                if seen.contains(&hier) {
                    continue;
                }
                let dir = hier.join(rel);
                me.make(&dir)?;
                match c {
                    "memory" => {
                        if let Some(m) = memory_max {
                            set(&dir, "memory.limit_in_bytes", &m.to_string());
                        }
                    }
                    "pids" => set(&dir, "pids.max", &PIDS_MAX.to_string()),
                    _ => {}
                }
                seen.push(hier);
            }
        }
        if me.dirs.is_empty() {
            return Err(Error::Io {
                what: format!("create the VMM's cgroup under {}", root.display()),
                source: std::io::Error::other("no cgroup hierarchy is mounted there"),
            });
        }
        Ok(me)
    }

    fn make(&mut self, dir: &Path) -> Result<(), Error> {
        match fs::create_dir_all(dir) {
            Ok(()) => {
                self.dirs.push(dir.to_path_buf());
                Ok(())
            }
            Err(e) => Err(Error::io(format!("create cgroup {}", dir.display()))(e)),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files, opened for writing: a child writes `0` to
    /// each between fork and exec to move itself in.
    pub fn open_procs(&self) -> Result<Vec<File>, Error> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(Error::io(format!("open {}", p.display())))
            })
            .collect()
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        remove(&self.dirs);
    }
}

/// Removes cgroup directories once the processes in them have gone (their
/// owner killed them); what is still alive after a second is killed. Only
/// directories below `/sys/fs/cgroup` are touched (the list may come from a
/// dead sandbox's state file).
pub fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        if !dir.starts_with("/sys/fs/cgroup") && !cfg!(test) {
            tracing::warn!("not removing {}: not a cgroup directory", dir.display());
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut killed = false;
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!("cgroup {} left behind: {e}", dir.display());
                    break;
                }
                Err(_) => {
                    if !killed && Instant::now() + Duration::from_secs(1) > deadline {
                        for pid in procs(dir) {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        killed = true;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// v2: the memory and pids controllers must be enabled in every ancestor's
/// `cgroup.subtree_control` for the leaf to have their files. Best effort:
/// a limit whose file is missing is logged by [`set`].
fn enable_v2_controllers(root: &Path, rel: &Path) {
    let mut dir = root.to_path_buf();
    for c in rel.components() {
        let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
        dir.push(c);
        let _ = fs::create_dir(&dir);
    }
}

fn set(dir: &Path, file: &str, value: &str) {
    if let Err(e) = fs::write(dir.join(file), value) {
        tracing::warn!(
            "cgroup {}: {file} = {value} not applied: {e}",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_used_and_others_fall_back() {
        assert_eq!(
            relative_path("s1", Some("/default/s1")),
            PathBuf::from("default/s1")
        );
        assert_eq!(
            relative_path("s1", Some("/kubepods/besteffort/podx/s1")),
            PathBuf::from("kubepods/besteffort/podx/s1")
        );
        for odd in [
            None,
            Some(""),
            Some("/"),
            Some("a/b.slice:cri-containerd:s1"),
            Some("kubepods--x.slice:cri-containerd:s1"),
            Some("kubepods.slice:cri:s1:extra"),
            Some("relative/s1"),
            Some("/a/../../etc"),
        ] {
            assert_eq!(
                relative_path("s1", odd),
                PathBuf::from("scute/s1"),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn systemd_slices_expand_as_systemd_names_them() {
        assert_eq!(
            relative_path(
                "s1",
                Some("kubepods-besteffort-pod12ab.slice:cri-containerd:s1")
            ),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12ab.slice/cri-containerd-s1.scope"
            )
        );
        assert_eq!(
            relative_path("s1", Some("system.slice:cri-containerd:s1")),
            PathBuf::from("system.slice/cri-containerd-s1.scope")
        );
        assert_eq!(
            relative_path("s1", Some(":docker:s1")),
            PathBuf::from("system.slice/docker-s1.scope")
        );
        assert_eq!(
            relative_path("s1", Some("-.slice::s1")),
            PathBuf::from("s1.scope")
        );
    }

    #[test]
    fn v1_dirs_are_made_limited_and_removed() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "pids"] {
            fs::create_dir(root.path().join(c)).unwrap();
        }
        let rel = relative_path("s1", None);
        let cg = SandboxCgroup::create(root.path(), &rel, Some(1 << 30)).unwrap();
        assert_eq!(cg.dirs().len(), 2, "cpuacct is not mounted: skipped");
        let mem = root.path().join("memory/scute/s1");
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (1u64 << 30).to_string()
        );
        assert_eq!(
            fs::read_to_string(root.path().join("pids/scute/s1/pids.max")).unwrap(),
            "512"
        );
        // A real cgroup dir has only kernel files; these are test files.
        for d in cg.dirs() {
            for f in fs::read_dir(d).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        drop(cg);
        assert!(!mem.exists());
        assert!(
            root.path().join("memory/scute").exists(),
            "shared parent kept"
        );
    }
}
