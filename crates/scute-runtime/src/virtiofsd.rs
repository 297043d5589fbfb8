//! virtiofsd, two per sandbox: one serving the containers' root
//! filesystems (`rootfs/`, `--cache always`: only the guest changes them),
//! one the rest of the share (`shared/`: volumes the host may change,
//! `--cache auto`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// virtiofsd's `--cache` mode for a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// The guest keeps data and metadata (`always`): for trees only the
    /// guest changes, so that re-reading a file doesn't cross FUSE.
    Always,
    /// Metadata for a second, data re-validated on open (`auto`): for
    /// trees the host may change under the guest (volumes).
    Auto,
}

impl Cache {
    fn arg(self) -> &'static str {
        match self {
            Cache::Always => "always",
            Cache::Auto => "auto",
        }
    }
}

/// A running virtiofsd; killed and reaped when dropped.
pub struct Virtiofsd {
    child: Child,
    pub socket: PathBuf,
    /// Set by [`Virtiofsd::kill`].
    killed: bool,
    /// The sandboxed worker's pidfd, taken at the kill; `None` when it
    /// could not be found (the drop then scans `/proc` for the group).
    worker: Option<std::os::fd::OwnedFd>,
}

impl Virtiofsd {
    /// Starts virtiofsd; its socket may not exist yet (see
    /// [`Virtiofsd::wait_for_socket`]), so that a sandbox's two start side
    /// by side.
    pub fn spawn(
        binary: &Path,
        shared: &Path,
        socket: &Path,
        log: &Path,
        cgroup: Option<&crate::hostcgroup::SandboxCgroup>,
        cache: Cache,
    ) -> Result<Self, Error> {
        // Capped: the guest's requests can make virtiofsd log.
        let log = scute_hypervisor::boundedlog::spawn(log, scute_hypervisor::boundedlog::LIMIT)
            .map_err(Error::io("create virtiofsd log"))?;
        let log2 = log.try_clone().map_err(Error::io("dup virtiofsd log"))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args([
                "--cache",
                cache.arg(),
                "--announce-submounts",
                // Guest root must not plant device nodes on the host.
                "--modcaps=-mknod",
                "--thread-pool-size",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let filter = no_setid::filter();
        let cgroup_procs = cgroup
            .map(|c| c.open_procs())
            .transpose()?
            .unwrap_or_default();
        let cgroup_fds: Vec<i32> = cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: prctl, setpgid and write are async-signal-safe and touch
        // only the child; `filter` and `cgroup_fds` were allocated before the
        // fork and are only read here.
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
                scute_hypervisor::cloexec_from_3()?;
                no_setid::install(&filter)
            });
        }
        let child = scute_hypervisor::spawner::spawn(cmd)
            .map_err(Error::io(format!("start {}", binary.display())))?;
        Ok(Self {
            child,
            socket: socket.to_path_buf(),
            killed: false,
            worker: None,
        })
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

    /// Returns once virtiofsd listens on its socket, or with its exit.
    pub fn wait_for_socket(&mut self, timeout: Duration) -> Result<(), Error> {
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
            // virtiofsd listens a few ms after its exec: a finer poll
            // than that shows on every cold start.
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Sends SIGKILL to virtiofsd and its sandboxed worker (its process
    /// group) without waiting, so that a sandbox's two die side by side;
    /// the drop waits. Idempotent.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        use nix::sys::signal::{killpg, Signal};
        let pid = self.child.id();
        // The worker is virtiofsd's only child, forked at its start; once
        // virtiofsd dies it is reparented and no longer listed here, so
        // its pidfd is taken first. One child and no other: else the drop
        // scans for the group.
        if self.exited().is_none() {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            let kids: Vec<u32> = kids
                .split_whitespace()
                .filter_map(|k| k.parse().ok())
                .collect();
            if let [k] = kids[..] {
                self.worker = crate::procs::pidfd_open(k);
            }
        }
        // Also when virtiofsd has died: its worker may live on.
        let _ = killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        self.killed = true;
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        self.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(2);
        // The worker is not our child: wait until it has exited (a zombie
        // waiting for init to reap it counts as gone).
        if let Some(worker) = &self.worker {
            let mut p = libc::pollfd {
                fd: worker.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a pidfd is readable once its process exited.
            unsafe { libc::poll(&mut p, 1, 2000) };
            return;
        }
        while live_members(pgid) && Instant::now() < deadline {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for virtiofsd that forks a long-lived "worker" (its pid
    /// in `dir/worker`), then either waits for it or exits at once.
    fn fake(dir: &Path, parent_exits: bool) -> (Virtiofsd, u32) {
        let bin = dir.join("fake-virtiofsd");
        let tail = if parent_exits { "exit 0" } else { "wait" };
        let script = format!(
            "#!/bin/sh\nsleep 600 &\necho $! > {}/worker\n{tail}\n",
            dir.display()
        );
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (sock, log) = (dir.join("s.sock"), dir.join("v.log"));
        let mut v = Virtiofsd::spawn(&bin, dir, &sock, &log, None, Cache::Auto).unwrap();
        let wpath = dir.join("worker");
        let t = Instant::now();
        let worker = loop {
            if let Some(p) = std::fs::read_to_string(&wpath)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the fake never forked"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        if parent_exits {
            while v.exited().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        (v, worker)
    }

    /// The fake's worker is alive, then gone once the `Virtiofsd` is dropped.
    fn drop_kills_the_worker(parent_exits: bool) {
        use crate::procs::alive;
        let d = tempfile::tempdir().unwrap();
        let (v, worker) = fake(d.path(), parent_exits);
        assert!(alive(worker));
        drop(v);
        assert!(!alive(worker), "worker {worker} outlived the drop");
    }

    #[test]
    fn drop_kills_and_waits_for_the_worker() {
        drop_kills_the_worker(false);
    }

    /// A virtiofsd that died (a guest's request crashed it) may leave its
    /// worker serving: the drop still kills the group.
    #[test]
    fn a_worker_outliving_its_virtiofsd_is_killed() {
        drop_kills_the_worker(true);
    }
}

/// A seccomp filter, stacked under virtiofsd's own, that refuses (EPERM)
/// every mode change or file creation asking for the setuid or setgid bit:
/// guest root owns its kernel, and a setuid-root file it leaves on a
/// volume would be a root shell for any host user who can reach it.
/// A directory made inside a setgid one still inherits the bit (the kernel
/// sets it, not a mode), but `chmod g+s` is refused on directories too:
/// the filter sees a mode, not the file it applies to.
mod no_setid {
    /// `S_ISUID | S_ISGID`.
    const SETID: u32 = 0o6000;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    // Classic BPF opcodes (linux/bpf_common.h).
    /// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const JSET_K: u16 = 0x05 | 0x40;
    const RET_K: u16 = 0x06;

    /// (syscall number on x86-64, index of its mode argument).
    const MODE_ARG: [(u32, u32); 8] = [
        (2, 2),   // open(path, flags, mode)
        (85, 1),  // creat(path, mode)
        (90, 1),  // chmod(path, mode)
        (91, 1),  // fchmod(fd, mode)
        (133, 1), // mknod(path, mode, dev)
        (257, 3), // openat(dirfd, path, flags, mode)
        (259, 2), // mknodat(dirfd, path, mode, dev)
        (268, 2), // fchmodat(dirfd, path, mode)
    ];
    /// fchmodat2 (Linux 6.6) and openat2 carry the mode where a filter
    /// can't check it (flags, a struct): refused outright, so virtiofsd
    /// falls back to the calls above.
    const REFUSED: [u32; 2] = [437, 452];

    fn stmt(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }

    /// The program. Offsets into `struct seccomp_data`: nr at 0, arch at 4,
    /// args[i] at 16 + 8 i (its low 32 bits, little-endian).
    pub fn filter() -> Vec<libc::sock_filter> {
        if !cfg!(target_arch = "x86_64") {
            return Vec::new();
        }
        let errno = RET_ERRNO | libc::EPERM as u32;
        let mut p = vec![
            stmt(LD_W_ABS, 4),
            jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(RET_K, RET_ALLOW),
            stmt(LD_W_ABS, 0),
        ];
        for nr in REFUSED {
            p.push(jump(JEQ_K, nr, 0, 1));
            p.push(stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32));
        }
        for (nr, arg) in MODE_ARG {
            // nr matches: load the mode, refuse if a set-id bit is set;
            // otherwise reload nr and try the next entry.
            p.push(jump(JEQ_K, nr, 0, 4));
            p.push(stmt(LD_W_ABS, 16 + 8 * arg));
            p.push(jump(JSET_K, SETID, 0, 1));
            p.push(stmt(RET_K, errno));
            p.push(stmt(LD_W_ABS, 0));
        }
        p.push(stmt(RET_K, RET_ALLOW));
        p
    }

    /// Installs `filter` in the calling process (called between fork and
    /// exec: only async-signal-safe calls).
    pub fn install(filter: &[libc::sock_filter]) -> std::io::Result<()> {
        if filter.is_empty() {
            return Ok(());
        }
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut _,
        };
        // SAFETY: `prog` points at a live, well-formed program.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    mod tests {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        use std::process::Command;

        fn confined(args: &[&str]) -> bool {
            let filter = super::filter();
            let mut cmd = Command::new(args[0]);
            cmd.args(&args[1..]);
            // SAFETY: only prctl between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    super::install(&filter)
                });
            }
            cmd.stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        }

        #[test]
        fn setid_modes_are_refused_and_others_pass() {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("f");
            let fs = f.to_str().unwrap();
            std::fs::write(&f, "x").unwrap();
            let mode = || std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
            assert!(confined(&["chmod", "0755", fs]));
            assert_eq!(mode(), 0o755);
            assert!(!confined(&["chmod", "4755", fs]), "setuid refused");
            assert!(!confined(&["chmod", "2755", fs]), "setgid refused");
            assert_eq!(mode(), 0o755);
            // mknod/creat of a setuid file (install -m creates, then chmods).
            let g = dir.path().join("g");
            assert!(!confined(&[
                "install",
                "-m",
                "4755",
                fs,
                g.to_str().unwrap()
            ]));
            assert!(
                !g.exists() || std::fs::metadata(&g).unwrap().permissions().mode() & 0o6000 == 0
            );
            assert!(confined(&[
                "mkdir",
                "-m",
                "0750",
                dir.path().join("d").to_str().unwrap()
            ]));
        }
    }
}
