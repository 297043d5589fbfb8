//! virtiofsd, one per sandbox, serving the sandbox's `shared/` dir.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// A running virtiofsd; killed and reaped when dropped.
pub struct Virtiofsd {
    child: Child,
    pub socket: PathBuf,
}

impl Virtiofsd {
    pub fn spawn(
        binary: &Path,
        shared: &Path,
        socket: &Path,
        log: &Path,
        cgroup: Option<&crate::hostcgroup::SandboxCgroup>,
    ) -> Result<Self, Error> {
        let log = crate::state::private_file(log).map_err(Error::io("create virtiofsd log"))?;
        let log2 = log.try_clone().map_err(Error::io("dup virtiofsd log"))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args([
                "--cache",
                "auto",
                "--announce-submounts",
                // Guest root must not plant device nodes on the host.
                "--modcaps=-mknod",
                "--thread-pool-size",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let cgroup_procs = cgroup
            .map(|c| c.open_procs())
            .transpose()?
            .unwrap_or_default();
        let cgroup_fds: Vec<i32> = cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: prctl, setpgid and write are async-signal-safe and touch
        // only the child; `cgroup_fds` was allocated before the fork and is
        // only read here.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                // Into the sandbox's cgroup before it allocates anything.
                for fd in &cgroup_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Own process group: virtiofsd forks its sandboxed worker,
                // and teardown must reach both.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("start {}", binary.display())))?;
        let mut me = Self {
            child,
            socket: socket.to_path_buf(),
        };
        me.wait_for_socket(Duration::from_secs(10))?;
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once virtiofsd has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    fn wait_for_socket(&mut self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        while !self.socket.exists() {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(Error::Io {
                    what: format!("virtiofsd exited early ({st})"),
                    source: std::io::Error::other("see virtiofsd.log in the state dir"),
                });
            }
            if start.elapsed() > timeout {
                return Err(Error::Io {
                    what: "virtiofsd did not create its socket".into(),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
        // The worker is not our child: wait until no live member is left
        // (zombies waiting for init to reap them don't count).
        let deadline = Instant::now() + Duration::from_secs(2);
        while live_members(pgid.as_raw()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Whether a process of group `pgid` is alive (not a zombie).
fn live_members(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // Fields after the parenthesised comm: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()
    })
}

