//! The pool's shared ground and the shim's side of the handover: where the
//! pool keeps its state and ready sockets, its status, and how a shim
//! claims a ready VM and adopts it ([`claim`], [`AdoptedVm`]). The pool's
//! own processes, which boot and hand out the VMs, are in the `scute-pool`
//! crate; the VM a member boots and hands over is [`crate::poolvm`].

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scute_hypervisor::Vm;
use serde::{Deserialize, Serialize};

use crate::procs::{alive, pidfd_open};
use crate::Config;

/// The agent's Ready event.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub agent_version: String,
    pub kernel_release: String,
    pub uptime_ms: u64,
}

/// The pool's directory under the state root (not a valid sandbox id, so
/// stale-sandbox cleanup never takes it for one).
pub fn dir(config: &Config) -> PathBuf {
    config.state_dir.join("_pool")
}

/// What makes two VMs interchangeable: everything a boot reads from the
/// config, and the guest assets' identity. A hash, so it fits a file name.
pub fn shape(config: &Config) -> String {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                format!(
                    "{}:{}:{}",
                    m.ino(),
                    m.size(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                )
            })
            .unwrap_or_default()
    };
    let text = serde_json::json!({
        "qemu": config.qemu_path,
        "virtiofsd": config.virtiofsd(),
        "kernel": config.kernel(),
        "kernel_stamp": stamp(&config.kernel()),
        "initrd": config.initrd(),
        "initrd_stamp": stamp(&config.initrd()),
        "vcpus": config.vcpus,
        "memory_mib": config.memory_mib,
        "accel": format!("{:?}", config.accel),
        "kernel_params": config.kernel_params,
        "debug": config.debug,
        "jailed": config.vmm_uids > 0,
        "tb": config.tcg_tb_size_mib,
        "fpr": config.free_page_reporting,
        "overhead": config.vmm_memory_overhead_mib,
    })
    .to_string();
    // FNV-1a: stable across builds, unlike std's hasher.
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

/// What `scute check` shows, written by the pool on every change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub size: u32,
    pub max_idle_mib: u32,
    pub shape: String,
    pub ready: u32,
    pub booting: u32,
    /// VMs handed to sandboxes since the pool started.
    pub handed_out: u64,
    /// Boots that failed since the pool started.
    pub failed: u64,
    /// The latest failures, newest last, with their reasons.
    pub failures: Vec<String>,
    /// Host PSS of the ready VMs (QEMU + virtiofsd), MiB.
    pub idle_pss_mib: u64,
    /// Why the pool holds fewer than `size`, when it does.
    pub note: Option<String>,
}

/// The running pool's status; `None` when no pool runs for this config.
pub fn status(config: &Config) -> Option<Status> {
    let text = std::fs::read_to_string(dir(config).join("status.json")).ok()?;
    let st: Status = serde_json::from_str(&text).ok()?;
    alive(st.pid).then_some(st)
}

/// Why the running pool can't serve a sandbox booted with `config` as it
/// is (no pool, or ready VMs of another shape); `None` when it can.
pub fn cannot_serve(config: &Config) -> Option<String> {
    match status(config) {
        None => Some(format!("no pool runs for {}", config.state_dir.display())),
        Some(st) if st.shape != shape(config) => Some(format!(
            "the pool (pid {}) holds VMs of another shape than this config's (its size, kernel or assets differ): restart it with `scute install`",
            st.pid
        )),
        Some(_) => None,
    }
}

// ---------------------------------------------------------------- claim

#[derive(Debug, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub sandbox_id: String,
    pub shim_pid: u32,
}

/// What a member tells the shim that claimed its VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimReply {
    pub vm_id: String,
    pub vmm_pid: u32,
    pub virtiofsd_pid: u32,
    pub rootfs_virtiofsd_pid: u32,
    /// Host path of the VM's share (guest `/run/scute/shared`).
    pub shared: PathBuf,
    /// The guest console's log, which the member keeps writing.
    pub console: PathBuf,
    pub ready: Ready,
    pub accel_reason: String,
    /// Agent bytes the member read past the Ready event.
    pub leftover: Vec<u8>,
    /// How long ago the VM became ready, ms.
    pub ready_for_ms: u64,
    /// The VM's NIC, on a tap alone in a netns of its own.
    #[serde(default)]
    pub nic: Option<PoolNicInfo>,
}

/// Where a pool VM's NIC is: a claim moves `tap` out of `netns` into the
/// sandbox's, and the guest NIC from `mac` to the pod interface's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolNicInfo {
    pub netns: PathBuf,
    pub tap: String,
    pub mac: String,
}

/// A VM taken from the pool: the agent connection and the VM itself.
pub struct Claimed {
    pub reply: ClaimReply,
    pub agent: UnixStream,
    pub vm: AdoptedVm,
}

/// A pool VM as its sandbox sees it: the member process owns and reaps
/// QEMU; this end watches it through a pidfd and kills it by asking the
/// member (and signalling QEMU directly, so a wedged member can't keep it).
pub struct AdoptedVm {
    conn: Option<UnixStream>,
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Vm for AdoptedVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn exited(&mut self) -> Option<String> {
        let gone = match &self.pidfd {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no timeout.
                unsafe { libc::poll(&mut p, 1, 0) == 1 }
            }
            None => !alive(self.pid),
        };
        gone.then(|| "exited (pool VM)".to_owned())
    }

    fn kill(&mut self) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on our pidfd; no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // The member releases the share, virtiofsd, the uid and its state
        // dir, then answers (or just exits): wait for that, boundedly, so
        // the sandbox's own teardown comes after it.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = conn.write_all(b"kill\n");
        let mut buf = [0u8; 64];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || buf[..n].contains(&b'\n') {
                break;
            }
        }
    }
}

impl Drop for AdoptedVm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why no VM came from the pool (the caller boots one, and logs this).
#[derive(Debug, thiserror::Error)]
pub enum NoClaim {
    #[error("the pool is off ([pool] size = 0)")]
    Off,
    #[error("no pool runs for {0} (start it with `scute pool`)")]
    NotRunning(PathBuf),
    #[error("read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no ready VM of this sandbox's shape ({0} of another shape: its size, kernel or config differs)")]
    OtherShapes(usize),
    #[error("no ready VM ({0} booting)")]
    NoneReady(u32),
}

/// Why a ready VM whose socket was claimed could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum TakeFailed {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the reply carried no agent connection")]
    NoConnection,
    #[error("malformed reply: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Takes a ready VM of this config's shape for sandbox `sandbox_id`.
/// `Err` says why none was taken (for the log); the caller boots cold.
pub fn claim(config: &Config, sandbox_id: &str) -> Result<Claimed, NoClaim> {
    if !config.pool.enabled() {
        return Err(NoClaim::Off);
    }
    let d = dir(config);
    let Some(st) = status(config) else {
        return Err(NoClaim::NotRunning(config.state_dir.clone()));
    };
    let want = shape(config);
    let mut others = 0;
    let ready = d.join("ready");
    let mut entries: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&ready)
        .map_err(|source| NoClaim::Unreadable {
            path: ready.clone(),
            source,
        })?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (shape, rest) = name.split_once('.')?;
            if shape != want {
                others += 1;
                return None;
            }
            let vm_id = rest.strip_suffix(".sock")?.to_owned();
            Some((e.metadata().and_then(|m| m.modified()).ok()?, vm_id))
        })
        .collect();
    // Oldest first: the longest-idle VM goes first.
    entries.sort();
    for (_, vm_id) in entries {
        let from = ready.join(format!("{want}.{vm_id}.sock"));
        let to = d.join("claimed").join(format!("{vm_id}.sock"));
        if std::fs::rename(&from, &to).is_err() {
            continue; // another shim took it
        }
        match take(&to, sandbox_id) {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(sandbox_id, pool_vm = %vm_id, "pool VM could not be taken: {e}");
                let _ = std::fs::remove_file(&to);
            }
        }
    }
    Err(if others > 0 {
        NoClaim::OtherShapes(others)
    } else {
        NoClaim::NoneReady(st.booting)
    })
}

fn take(socket: &Path, sandbox_id: &str) -> Result<Claimed, TakeFailed> {
    let io = |what| move |source| TakeFailed::Io { what, source };
    let mut conn = UnixStream::connect(socket).map_err(io("connect"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|_| conn.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(io("set the claim's timeouts"))?;
    let req = serde_json::to_string(&ClaimRequest {
        sandbox_id: sandbox_id.to_owned(),
        shim_pid: std::process::id(),
    })?;
    conn.write_all(format!("{req}\n").as_bytes())
        .map_err(io("send the claim"))?;
    let (line, fd) = recv_with_fd(&conn).map_err(io("read the reply"))?;
    let fd = fd.ok_or(TakeFailed::NoConnection)?;
    let reply: ClaimReply = serde_json::from_slice(&line)?;
    let _ = conn.set_read_timeout(None);
    Ok(Claimed {
        vm: AdoptedVm {
            conn: Some(conn),
            pid: reply.vmm_pid,
            pidfd: pidfd_open(reply.vmm_pid),
        },
        agent: UnixStream::from(fd),
        reply,
    })
}

/// Most bytes a claim reply may have: it is a few paths and versions.
const MAX_REPLY: usize = 64 * 1024;

/// Reads one newline-ended message and the descriptor sent with it.
fn recv_with_fd(conn: &UnixStream) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let (line, fds) = recv_line_with_fds(conn, 1, MAX_REPLY)?;
    Ok((line, fds.into_iter().next()))
}

/// The most descriptors [`recv_line_with_fds`] takes with one line.
pub const MAX_PASSED_FDS: usize = 4;

/// Reads one newline-ended line (returned without its newline) and the
/// descriptors (SCM_RIGHTS) sent with it, from a blocking socket. More than
/// `max_fds` descriptors (at most [`MAX_PASSED_FDS`]), or more than
/// `max_line` bytes before the newline, is an error; the descriptors
/// received are closed.
pub fn recv_line_with_fds(
    conn: &UnixStream,
    max_fds: usize,
    max_line: usize,
) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut out = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_PASSED_FDS]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(got) = c {
                // SAFETY: received with this message: ours to own.
                fds.extend(
                    got.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > max_fds.min(MAX_PASSED_FDS) {
            return Err(std::io::Error::other("too many descriptors"));
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        out.extend_from_slice(&buf[..n]);
        if let Some(end) = out.iter().position(|&b| b == b'\n') {
            out.truncate(end);
            return Ok((out, fds));
        }
        if out.len() > max_line {
            return Err(std::io::Error::other("message too long"));
        }
    }
}

/// Sends `line` with descriptor `fd` (SCM_RIGHTS): a member hands its
/// VM's agent connection over with the [`ClaimReply`].
pub fn send_with_fd(conn: &UnixStream, line: &[u8], fd: RawFd) -> std::io::Result<()> {
    send_with_fds(conn, line, &[fd])
}

/// Sends `line` with descriptors `fds` (SCM_RIGHTS, with the first byte;
/// none: plain data).
pub fn send_with_fds(conn: &UnixStream, line: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cm: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let iov = [std::io::IoSlice::new(line)];
    let n = sendmsg::<()>(conn.as_raw_fd(), &iov, cm, MsgFlags::empty(), None)
        .map_err(std::io::Error::from)?;
    // The descriptors went with the first byte; the rest is plain data.
    let mut c = conn;
    c.write_all(&line[n..])
}

/// Writes the pool's `status.json` in `d` atomically.
pub fn write_status(d: &Path, st: &Status) {
    let tmp = d.join(".status.json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(st).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, d.join("status.json"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn config(dir: &Path) -> Config {
        Config {
            state_dir: dir.to_owned(),
            ..Config::default()
        }
    }

    #[test]
    fn shape_follows_what_a_boot_reads() {
        let d = tempfile::tempdir().unwrap();
        let a = config(d.path());
        assert_eq!(shape(&a), shape(&a.clone()));
        for b in [
            Config {
                memory_mib: 512,
                ..a.clone()
            },
            Config {
                vcpus: 2,
                ..a.clone()
            },
            Config {
                kernel_params: "quiet".into(),
                ..a.clone()
            },
        ] {
            assert_ne!(shape(&a), shape(&b));
        }
        // A pool of 512 MiB VMs serves sandboxes that ask for 512 MiB.
        let mut big = a.clone();
        big.pool.memory_mib = Some(512);
        let asks = Config {
            memory_mib: 512,
            ..a.clone()
        };
        assert_eq!(shape(&big.for_pool()), shape(&asks));
        assert_ne!(shape(&big.for_pool()), shape(&a));
        assert!(Config::parse("[pool]\nmemory_mib = 9999999\n").is_err());
        // Not the pool's own settings: a resized pool serves the same VMs.
        let mut c = a.clone();
        c.pool.size = 7;
        assert_eq!(shape(&a), shape(&c));
    }

    #[test]
    fn a_pool_of_another_shape_cannot_serve() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        assert!(cannot_serve(&c).unwrap().contains("no pool runs"));
        let pd = dir(&c);
        std::fs::create_dir_all(&pd).unwrap();
        let mut st = Status {
            pid: std::process::id(),
            shape: shape(&c),
            ..Status::default()
        };
        write_status(&pd, &st);
        assert_eq!(cannot_serve(&c), None);
        st.shape = shape(&Config {
            memory_mib: 128,
            ..c.clone()
        });
        write_status(&pd, &st);
        assert!(cannot_serve(&c).unwrap().contains("another shape"));
    }

    #[test]
    fn no_pool_says_why() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(d.path());
        let e = claim(&c, "x").err().unwrap();
        assert!(matches!(e, NoClaim::NotRunning(_)), "{e}");
        assert!(e.to_string().contains("no pool runs"), "{e}");
        c.pool.size = 0;
        let e = claim(&c, "x").err().unwrap();
        assert!(e.to_string().contains("size = 0"), "{e}");
    }

    /// A member's side of one claim, on `listener`: replies with one end of
    /// a socket pair as the agent connection, then answers `kill`.
    fn fake_member(listener: std::os::unix::net::UnixListener) -> std::thread::JoinHandle<bool> {
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut rd = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            rd.read_line(&mut line).unwrap();
            let req: ClaimRequest = serde_json::from_str(&line).unwrap();
            let (mine, theirs) = UnixStream::pair().unwrap();
            let reply = ClaimReply {
                vm_id: "vm1".into(),
                vmm_pid: std::process::id(),
                virtiofsd_pid: std::process::id(),
                rootfs_virtiofsd_pid: std::process::id(),
                shared: "/nonexistent/shared".into(),
                console: "/nonexistent/console.log".into(),
                ready: Ready {
                    agent_version: "t".into(),
                    kernel_release: "k".into(),
                    uptime_ms: 1,
                },
                accel_reason: "test".into(),
                leftover: vec![1, 2, 3],
                ready_for_ms: 0,
                nic: None,
            };
            let text = format!("{}\n", serde_json::to_string(&reply).unwrap());
            send_with_fd(&conn, text.as_bytes(), theirs.as_raw_fd()).unwrap();
            drop(theirs);
            // The agent connection works across the handover.
            let mut m = mine;
            m.write_all(req.sandbox_id.as_bytes()).unwrap();
            line.clear();
            rd.read_line(&mut line).unwrap();
            let killed = line.trim() == "kill";
            let mut c = &conn;
            c.write_all(b"done\n").unwrap();
            killed
        })
    }

    #[test]
    fn a_ready_vm_goes_to_one_claimant_only() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        let pd = dir(&c);
        for sub in ["ready", "claimed"] {
            std::fs::create_dir_all(pd.join(sub)).unwrap();
        }
        write_status(
            &pd,
            &Status {
                pid: std::process::id(),
                size: 1,
                ready: 1,
                ..Status::default()
            },
        );
        let sock = pd.join("ready").join(format!("{}.vm1.sock", shape(&c)));
        let member = fake_member(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        // A socket of another shape is never taken.
        let _other =
            std::os::unix::net::UnixListener::bind(pd.join("ready/0000000000000000.vm2.sock"))
                .unwrap();
        let claimants: Vec<_> = (0..4)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || claim(&c, &format!("sb{i}")))
            })
            .collect();
        let results: Vec<_> = claimants.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(
            won.len(),
            1,
            "{:?}",
            results.iter().map(|r| r.as_ref().err()).collect::<Vec<_>>()
        );
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, NoClaim::OtherShapes(_)), "{e}");
            }
        }
        let mut claimed = results.into_iter().find_map(Result::ok).unwrap();
        assert_eq!(claimed.reply.leftover, [1, 2, 3]);
        let mut got = [0u8; 3];
        claimed.agent.read_exact(&mut got).unwrap();
        assert!(got.starts_with(b"sb"), "{got:?}");
        assert!(!sock.exists(), "the ready socket stays published");
        // Dropping the VM asks the member to kill it, and waits for it.
        claimed.vm.pidfd = None;
        claimed.vm.pid = u32::MAX;
        drop(claimed);
        assert!(member.join().unwrap(), "the member was not told to kill");
    }
}
