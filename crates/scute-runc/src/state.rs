//! A container's state under `--root`: `<root>/<id>/state.json`, written by
//! `create` and by the container's keeper, read by every other command. It
//! outlives the caller (dockerd, containerd, conmon restart) and the keeper
//! (a stopped container keeps its exit status until `delete`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Fail;

/// runc's statuses, plus the moment before the keeper reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    /// runc's refusals of `start` in this status.
    pub fn startable(self) -> Result<(), Fail> {
        match self {
            Status::Created => Ok(()),
            Status::Stopped => Err(Fail::new(
                "cannot start a container that has stopped".into(),
            )),
            _ => Err(Fail::new(
                "cannot start an already running container".into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, nanoseconds, UTC (runc's `created`).
    pub created: String,
    #[serde(default)]
    pub annotations: Map<String, Value>,
    /// The keeper: the host process that stands for the container's init
    /// (the pid in `--pid-file`). 0 until it runs.
    pub pid: i32,
    /// Its start time (/proc stat field 22), so a reused pid is not it.
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub status: Status,
    /// The init's exit status as a shell reports it, once it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
}

pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub fn ctl_socket(root: &Path, id: &str) -> PathBuf {
    dir(root, id).join("ctl.sock")
}

/// Runs `f` with a path to the control socket of `id` that fits a socket
/// address (108 bytes): `--root` plus a 64-character id may not, so it
/// goes through a descriptor of the container's dir.
pub fn with_ctl_path<T>(
    root: &Path,
    id: &str,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let d = fs::File::open(dir(root, id))?;
    let p = PathBuf::from(format!(
        "/proc/self/fd/{}/ctl.sock",
        std::os::fd::AsRawFd::as_raw_fd(&d)
    ));
    f(&p)
}

/// Makes `<root>/<id>` (0700), refusing an id that is taken.
pub fn make_dir(root: &Path, id: &str) -> Result<PathBuf, Fail> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| Fail::new(format!("create the state root {}: {e}", root.display())))?;
    let d = dir(root, id);
    match fs::DirBuilder::new().mode(0o700).create(&d) {
        Ok(()) => Ok(d),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Fail::new(format!("container with id exists: {id}")))
        }
        Err(e) => Err(Fail::new(format!("create {}: {e}", d.display()))),
    }
}

impl Saved {
    pub fn load(root: &Path, id: &str) -> Result<Self, Fail> {
        scute_runtime::bundle::validate_id(id).map_err(|e| Fail::new(e.to_string()))?;
        let p = dir(root, id).join("state.json");
        let text = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Fail::new("container does not exist".to_string())
            } else {
                Fail::new(format!("read {}: {e}", p.display()))
            }
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| Fail::new(format!("{}: not a scute-runc state: {e}", p.display())))
    }

    /// Written to a temporary file and renamed: a reader sees the old
    /// state or the new one.
    pub fn store(&self, root: &Path) -> Result<(), Fail> {
        let d = dir(root, &self.id);
        let tmp = d.join(".state.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
            fs::rename(&tmp, d.join("state.json"))
        };
        write().map_err(|e| Fail::new(format!("write the state of {}: {e}", self.id)))
    }

    /// Whether the keeper recorded here still runs (not a zombie, not a
    /// reused pid).
    pub fn keeper_alive(&self) -> bool {
        self.pid > 0
            && scute_runtime::procs::alive(self.pid as u32)
            && scute_runtime::state::process_start_time(self.pid) == self.pid_start
    }

    /// The status as runc would report it: a keeper that is gone means a
    /// stopped container, whatever the file last said.
    pub fn live_status(&self) -> Status {
        match self.status {
            Status::Creating | Status::Stopped => self.status,
            _ if !self.keeper_alive() => Status::Stopped,
            s => s,
        }
    }

    /// runc's `state` document.
    pub fn oci_state(&self) -> Value {
        let status = self.live_status();
        let mut v = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
        });
        if !self.annotations.is_empty() {
            v["annotations"] = Value::Object(self.annotations.clone());
        }
        v
    }
}

pub const OCI_VERSION: &str = "1.0.2-dev";

/// Every container under `root` (unreadable entries skipped).
pub fn list(root: &Path) -> Vec<Saved> {
    let Ok(rd) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<Saved> = rd
        .flatten()
        .filter_map(|e| Saved::load(root, e.file_name().to_str()?).ok())
        .collect();
    out.sort_by(|a, b| a.created.cmp(&b.created));
    out
}

/// Now as RFC 3339 with nanoseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// Writes `pid` to `path` as runc does: the number alone, through a
/// temporary file in the same directory, so a reader never sees a part.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), Fail> {
    let name = path
        .file_name()
        .ok_or_else(|| Fail::new(format!("--pid-file {}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    fs::write(&tmp, pid.to_string())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Fail::new(format!("write the pid file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(id: &str) -> Saved {
        Saved {
            id: id.into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            annotations: Map::new(),
            pid: std::process::id() as i32,
            pid_start: scute_runtime::state::process_start_time(std::process::id() as i32),
            status: Status::Running,
            exit_code: None,
        }
    }

    #[test]
    fn state_round_trips_and_reads_as_runc_state() {
        let root = tempfile::tempdir().unwrap();
        make_dir(root.path(), "c1").unwrap();
        let s = saved("c1");
        s.store(root.path()).unwrap();
        let back = Saved::load(root.path(), "c1").unwrap();
        let st = back.oci_state();
        assert_eq!(st["status"], "running");
        assert_eq!(st["pid"], std::process::id());
        assert_eq!(st["id"], "c1");
        assert!(st.get("annotations").is_none());
        for k in ["ociVersion", "bundle", "rootfs", "created", "owner"] {
            assert!(st.get(k).is_some(), "{k}");
        }
        let e = make_dir(root.path(), "c1").unwrap_err();
        assert_eq!(e.to_string(), "container with id exists: c1");
    }

    #[test]
    fn a_gone_keeper_is_a_stopped_container() {
        let mut s = saved("c2");
        s.pid = 2147483600;
        assert_eq!(s.live_status(), Status::Stopped);
        assert_eq!(s.oci_state()["pid"], 0);
        let mut reused = saved("c3");
        reused.pid_start = reused.pid_start.map(|t| t + 1);
        assert_eq!(reused.live_status(), Status::Stopped);
    }

    #[test]
    fn missing_and_bad_ids_say_so() {
        let root = tempfile::tempdir().unwrap();
        let e = Saved::load(root.path(), "nope").unwrap_err();
        assert_eq!(e.to_string(), "container does not exist");
        assert!(Saved::load(root.path(), "../x").is_err());
    }

    #[test]
    fn pid_file_holds_the_number_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pid");
        write_pid_file(&p, 4242).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "4242");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
