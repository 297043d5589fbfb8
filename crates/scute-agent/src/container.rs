//! Containers inside the guest, created and started by youki's libcontainer.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use scute_protocol::{AgentError, ErrorCode, StdioSpec};

use crate::reaper::{Reaper, SPAWN_LOCK};

const BUNDLES: &str = "/run/scute-agent/bundles";
const STATE_ROOT: &str = "/run/scute-agent/state";

/// The agent's ends of a new process's stdio.
pub struct HostSide {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// A created container: libcontainer's handle and what the agent tracks.
pub struct Created {
    pub container: Container,
    pub spawned: Spawned,
}

/// A new process (container init or exec): its pid, exit and stdio.
pub struct Spawned {
    pub pid: i32,
    pub exit: tokio::sync::oneshot::Receiver<scute_protocol::ExitStatus>,
    pub io: HostSide,
    /// The pty master, kept for resizing.
    pub pty: Option<File>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> AgentError {
    AgentError::new(code, msg)
}

/// Creates a container from `spec` (blocking; run it off the async runtime).
pub fn create(
    id: &str,
    spec: &serde_json::Value,
    stdio: StdioSpec,
    reaper: &Reaper,
) -> Result<Created, AgentError> {
    // The host parsed and checked this spec (Bundle::load) before it sent
    // it, and libcontainer decodes it again from config.json: the agent reads
    // only the fields it needs here. A third typed decode of the whole spec
    // cost ~17 ms of each create under TCG.
    let process = spec
        .get("process")
        .filter(|p| p.is_object())
        .ok_or_else(|| err(ErrorCode::InvalidArgument, "spec has no process"))?;
    let args = strings(process.get("args"), "process.args")?;
    let Some(arg0) = args.first() else {
        return Err(err(ErrorCode::InvalidArgument, "spec has no process.args"));
    };
    if spec
        .pointer("/root/path")
        .and_then(serde_json::Value::as_str)
        .is_none()
    {
        return Err(err(ErrorCode::InvalidArgument, "spec has no root"));
    }
    tracing::debug!(container_id = id, "create: spec read");
    // `args[0]` is looked for by libcontainer's init, in the container's
    // own root and mounts (an entrypoint on a volume is found), before it
    // reports ready ([`crate::executor::RuncExecutor::validate`]); its
    // refusal is mapped to ExecutableNotFound below. Looking in the bare
    // rootfs first missed volumes and cost ~5 ms of FUSE lookups.
    let missing = crate::executor::not_found(arg0);

    let bundle = Path::new(BUNDLES).join(id);
    fs::create_dir_all(&bundle).map_err(internal("create bundle dir"))?;
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(spec).map_err(internal("encode spec"))?,
    )
    .map_err(internal("write config.json"))?;

    tracing::debug!(container_id = id, "create: bundle written");
    let result = spawn_with_stdio(id, stdio, reaper, |builder| {
        let c = builder
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| {
                let e = e.to_string();
                if e.contains(&missing) {
                    err(ErrorCode::ExecutableNotFound, missing.clone())
                } else {
                    err(
                        ErrorCode::FailedPrecondition,
                        format!("create container {id}: {e}"),
                    )
                }
            })?;
        let pid = c.pid().map(|p| p.as_raw()).unwrap_or(0);
        Ok((c, pid))
    });
    match result {
        Ok((container, spawned)) => Ok(Created { container, spawned }),
        Err(e) => {
            let _ = fs::remove_dir_all(&bundle);
            Err(e)
        }
    }
}

/// A spec field that is a list of strings (absent or null: empty).
fn strings(v: Option<&serde_json::Value>, what: &str) -> Result<Vec<String>, AgentError> {
    let invalid = |m: &str| {
        err(
            ErrorCode::InvalidArgument,
            format!("invalid OCI spec: {what} {m}"),
        )
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("holds a non-string"))
            })
            .collect(),
        Some(_) => Err(invalid("is not a list")),
    }
}

/// Starts an additional process in a running container (blocking).
pub fn exec(
    id: &str,
    exec_id: &str,
    init_pid: i32,
    process: &serde_json::Value,
    stdio: StdioSpec,
    reaper: &Reaper,
) -> Result<Spawned, AgentError> {
    let parsed: oci_spec::runtime::Process =
        serde_json::from_value(process.clone()).map_err(|e| {
            err(
                ErrorCode::InvalidArgument,
                format!("invalid OCI process: {e}"),
            )
        })?;
    let args = parsed.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(err(ErrorCode::InvalidArgument, "exec process has no args"));
    };
    check_executable(init_pid, arg0, &parsed.env().clone().unwrap_or_default())?;
    let path = Path::new(BUNDLES)
        .join(id)
        .join(format!("exec-{exec_id}.json"));
    fs::write(
        &path,
        serde_json::to_vec(process).map_err(internal("encode process"))?,
    )
    .map_err(internal("write exec process"))?;
    let result = spawn_with_stdio(id, stdio, reaper, |builder| {
        let pid = builder
            .as_tenant()
            .with_process(Some(&path))
            .with_detach(true)
            .build()
            .map_err(|e| {
                err(
                    ErrorCode::FailedPrecondition,
                    format!("exec {exec_id} in {id}: {e}"),
                )
            })?;
        Ok(((), pid.as_raw()))
    });
    let _ = fs::remove_file(&path);
    result.map(|((), s)| s)
}

/// Runs `build` with stdio (pipes or a pty) wired, holding the spawn lock, and
/// registers the new process with the reaper before releasing it.
fn spawn_with_stdio<T>(
    id: &str,
    stdio: StdioSpec,
    reaper: &Reaper,
    build: impl FnOnce(ContainerBuilder) -> Result<(T, i32), AgentError>,
) -> Result<(T, Spawned), AgentError> {
    let (host, child) = make_stdio(stdio)?;
    let console = if stdio.terminal {
        Some(ConsoleSocket::bind()?)
    } else {
        None
    };
    let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_executor(crate::executor::RuncExecutor)
        .with_root_path(STATE_ROOT)
        .map_err(internal("state root"))?;
    if let Some(c) = &console {
        builder = builder.with_console_socket(Some(c.path.clone()));
    }
    if let Some(fd) = child.stdin {
        builder = builder.with_stdin(fd);
    }
    if let Some(fd) = child.stdout {
        builder = builder.with_stdout(fd);
    }
    if let Some(fd) = child.stderr {
        builder = builder.with_stderr(fd);
    }
    let guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let console_thread = console.map(ConsoleSocket::accept_in_background);
    // libcontainer forks with a raw clone3, so no atfork handler runs: a
    // lock another thread of the agent holds at that instant stays held
    // forever in the child. The children log (libcgroups at info) through
    // stderr, whose lock is reentrant: held by this thread across the
    // build, they inherit it as its owner instead of finding it taken by
    // a thread that does not exist in them.
    let stderr = std::io::stderr().lock();
    let built = build(builder);
    drop(stderr);
    let (value, pid) = built?;
    let exit = reaper.watch(pid);
    drop(guard);

    let mut io = host;
    let mut pty = None;
    if let Some(t) = console_thread {
        let master = t
            .join()
            .map_err(|_| err(ErrorCode::Internal, "console thread panicked"))??;
        let out = master.try_clone().map_err(internal("dup pty master"))?;
        pty = Some(master.try_clone().map_err(internal("dup pty master"))?);
        io.stdin = Some(master);
        io.stdout = Some(out);
        io.stderr = None;
    }
    Ok((value, Spawned { pid, exit, io, pty }))
}

/// Sets a pty's window size.
pub fn resize(pty: &File, width: u16, height: u16) -> Result<(), AgentError> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for
    // the duration of the call; the fd is an open pty master.
    let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(internal("resize pty")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The container's cgroup in the guest (the host sets `/scute/<id>`).
fn cgroup_dir(id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/scute").join(id)
}

pub fn pids(id: &str) -> Result<Vec<i32>, AgentError> {
    let text = fs::read_to_string(cgroup_dir(id).join("cgroup.procs"))
        .map_err(|e| err(ErrorCode::NotFound, format!("cgroup of {id}: {e}")))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

pub fn stats(id: &str) -> Result<scute_protocol::CgroupStats, AgentError> {
    let dir = cgroup_dir(id);
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse::<u64>().ok();
    if !dir.exists() {
        return Err(err(ErrorCode::NotFound, format!("no cgroup for {id}")));
    }
    let cpu = read("cpu.stat");
    let cpu_field = |k: &str| {
        cpu.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1000
    };
    Ok(scute_protocol::CgroupStats {
        memory_usage_bytes: num("memory.current").unwrap_or(0),
        memory_limit_bytes: num("memory.max"),
        memory_max_usage_bytes: num("memory.peak").unwrap_or(0),
        cpu_usage_ns: cpu_field("usage_usec "),
        cpu_user_ns: cpu_field("user_usec "),
        cpu_system_ns: cpu_field("system_usec "),
        pids_current: num("pids.current").unwrap_or(0),
        pids_limit: num("pids.max"),
    })
}

/// Writes new limits into the container's cgroup. A memory or CPU limit
/// above what this VM has would bound nothing (the VM does not grow): it
/// is refused, saying so.
pub fn update(id: &str, l: &scute_protocol::Limits) -> Result<(), AgentError> {
    let dir = cgroup_dir(id);
    if !dir.exists() {
        return Err(err(ErrorCode::NotFound, format!("no cgroup for {id}")));
    }
    let vm_bytes = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map(|kib| kib * 1024);
    if let (Some(m), Some(vm)) = (l.memory_max, vm_bytes) {
        if m > vm {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!(
                    "a memory limit of {} MiB is more than this VM's {} MiB, which does not grow: recreate the container with the larger limit",
                    m >> 20,
                    vm >> 20
                ),
            ));
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    if let Some((q, p)) = l.cpu_max {
        if q > 0 && (q as u64).div_ceil(p) > cpus {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!(
                    "a CPU limit of {:.2} CPUs is more than this VM's {cpus}, which does not grow: recreate the container with more CPUs",
                    q as f64 / p as f64
                ),
            ));
        }
    }
    let max = |v: i64| {
        if v < 0 {
            "max".to_owned()
        } else {
            v.to_string()
        }
    };
    let mut writes: Vec<(&str, String)> = Vec::new();
    if let Some(v) = l.memory_low {
        // A reservation of "none" is no protection: 0.
        writes.push(("memory.low", v.max(0).to_string()));
    }
    if let Some(v) = l.memory_max {
        writes.push(("memory.max", max(v)));
    }
    if let Some((q, p)) = l.cpu_max {
        writes.push(("cpu.max", format!("{} {p}", max(q))));
    }
    if let Some(w) = l.cpu_weight {
        writes.push(("cpu.weight", w.clamp(1, 10_000).to_string()));
    }
    if let Some(v) = l.pids_max {
        writes.push(("pids.max", max(v)));
    }
    for (file, value) in writes {
        fs::write(dir.join(file), &value).map_err(|e| {
            err(
                ErrorCode::FailedPrecondition,
                format!("update {id}: write {value:?} to {file}: {e}"),
            )
        })?;
    }
    Ok(())
}

pub fn pause(container: &mut Container) -> Result<(), AgentError> {
    container
        .pause()
        .map_err(|e| err(ErrorCode::FailedPrecondition, format!("pause: {e}")))
}

pub fn resume(container: &mut Container) -> Result<(), AgentError> {
    container
        .resume()
        .map_err(|e| err(ErrorCode::FailedPrecondition, format!("resume: {e}")))
}

/// Starts a created container (blocking).
pub fn start(container: &mut Container) -> Result<(), AgentError> {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    container
        .start()
        .map_err(|e| err(ErrorCode::FailedPrecondition, format!("start: {e}")))
}

/// Sends `signal` to the init process, or to every process of the container.
///
/// `all` goes through the container's cgroup (`cgroup.kill` for SIGKILL,
/// atomic against forks), not libcontainer's `kill`, which freezes and thaws
/// the cgroup around it; containerd sends it to tasks that already stopped
/// (`ctr task rm -f`, every CRI container exit), whose cgroup may be empty.
pub fn signal(id: &str, pid: i32, signal: i32, all: bool) -> Result<(), AgentError> {
    let sig = Signal::try_from(signal).map_err(|_| {
        err(
            ErrorCode::InvalidArgument,
            format!("invalid signal {signal}"),
        )
    })?;
    if all {
        return signal_all(&cgroup_dir(id), sig);
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .map_err(|e| err(ErrorCode::NotFound, format!("signal process {pid}: {e}")))
}

/// Signals every process in `cgroup`; SIGKILL through `cgroup.kill` (atomic
/// against forks). A cgroup that is already gone or empty is done.
fn signal_all(cgroup: &Path, sig: Signal) -> Result<(), AgentError> {
    if sig == Signal::SIGKILL && fs::write(cgroup.join("cgroup.kill"), "1").is_ok() {
        return Ok(());
    }
    let procs = match fs::read_to_string(cgroup.join("cgroup.procs")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(internal("read cgroup.procs")(e)),
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(internal("signal")(e)),
        }
    }
    Ok(())
}

/// Removes libcontainer's state, the cgroup and the bundle (blocking).
pub fn delete(container: &mut Container, force: bool) -> Result<(), AgentError> {
    let id = container.id().to_owned();
    let _ = container.refresh_status();
    container
        .delete(force)
        .map_err(|e| err(ErrorCode::FailedPrecondition, format!("delete {id}: {e}")))?;
    let _ = fs::remove_dir_all(Path::new(BUNDLES).join(&id));
    Ok(())
}

fn internal<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> AgentError {
    move |e| err(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Like runc: the executable must exist in the rootfs (looked up in the
/// spec's PATH when it has no slash; nowhere when PATH is unset), else exit
/// 127 with runc's message.
/// Refuses an exec whose `args[0]` is no executable file as the container's
/// processes see it: in the root and mounts of its init (`init_pid`),
/// every symlink resolved inside that root (`RESOLVE_IN_ROOT`). A missing
/// binary is reported here because libcontainer's tenant path does not
/// return one. An init that is gone leaves the answer to libcontainer.
fn check_executable(init_pid: i32, arg0: &str, env: &[String]) -> Result<(), AgentError> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::PermissionsExt;
    let Ok(root) = File::open(format!("/proc/{init_pid}/root")) else {
        return Ok(());
    };
    for c in crate::executor::candidates(arg0, env) {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        let Ok(fd) = openat2(root.as_raw_fd(), &c, how) else {
            continue;
        };
        // SAFETY: openat2 just returned this descriptor; nothing else owns it.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if f.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(());
        }
    }
    Err(err(
        ErrorCode::ExecutableNotFound,
        crate::executor::not_found(arg0),
    ))
}

struct ChildSide {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

fn make_stdio(spec: StdioSpec) -> Result<(HostSide, ChildSide), AgentError> {
    let null = || -> Result<OwnedFd, AgentError> {
        Ok(File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(internal("open /dev/null"))?
            .into())
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(internal("pipe"));
    let mut host = HostSide {
        stdin: None,
        stdout: None,
        stderr: None,
    };
    if spec.terminal {
        // The pty replaces all three.
        return Ok((
            host,
            ChildSide {
                stdin: None,
                stdout: None,
                stderr: None,
            },
        ));
    }
    let stdin = if spec.stdin.is_some() {
        let (r, w) = pipe()?;
        host.stdin = Some(File::from(w));
        r
    } else {
        null()?
    };
    let stdout = if spec.stdout.is_some() {
        let (r, w) = pipe()?;
        host.stdout = Some(File::from(r));
        w
    } else {
        null()?
    };
    let stderr = if spec.stderr.is_some() {
        let (r, w) = pipe()?;
        host.stderr = Some(File::from(r));
        w
    } else {
        null()?
    };
    Ok((
        host,
        ChildSide {
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
        },
    ))
}

/// The unix socket libcontainer sends the pty master through.
struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Named by a counter, not by ids: Kubernetes' 64-character container
    /// and exec ids would pass a unix socket path's 108 bytes.
    fn bind() -> Result<Self, AgentError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = Path::new("/run/scute-agent/console");
        fs::create_dir_all(dir).map_err(internal("console dir"))?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.sock"));
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(internal("bind console socket"))?;
        Ok(Self { path, listener })
    }

    fn accept_in_background(self) -> std::thread::JoinHandle<Result<File, AgentError>> {
        std::thread::spawn(move || {
            let r = self.receive_master();
            let _ = fs::remove_file(&self.path);
            r
        })
    }

    fn receive_master(&self) -> Result<File, AgentError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd};
        let (stream, _) = self.listener.accept().map_err(internal("accept console"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(internal("console timeout"))?;
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(internal("receive pty master"))?;
        for c in msg.cmsgs().map_err(internal("console cmsg"))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(fd) = fds.first() {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in our
                    // table; we are its only owner.
                    return Ok(unsafe { File::from_raw_fd(*fd) });
                }
            }
        }
        Err(err(ErrorCode::Internal, "no pty master received"))
    }
}

/// Tracks the agent's containers by id.
#[derive(Default)]
pub struct Table {
    pub map: HashMap<String, Tracked>,
}

pub struct Tracked {
    pub container: Container,
    pub pid: i32,
    pub pty: Option<File>,
    /// Registered (not yet started) exec processes.
    pub pending_execs: HashMap<String, (serde_json::Value, StdioSpec)>,
    /// Running or exited exec processes: pid and pty.
    pub execs: HashMap<String, (i32, Option<File>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_string_lists_are_read_and_checked() {
        let spec = json!({"args": ["sh", "-c", "true"], "env": null, "bad": ["a", 1], "obj": {}});
        assert_eq!(
            strings(spec.get("args"), "process.args").unwrap(),
            ["sh", "-c", "true"]
        );
        assert!(strings(spec.get("env"), "process.env").unwrap().is_empty());
        assert!(strings(spec.get("missing"), "process.env")
            .unwrap()
            .is_empty());
        let e = strings(spec.get("bad"), "process.args").unwrap_err();
        assert!(
            e.message.contains("process.args holds a non-string"),
            "{}",
            e.message
        );
        let e = strings(spec.get("obj"), "process.env").unwrap_err();
        assert!(
            e.message.contains("process.env is not a list"),
            "{}",
            e.message
        );
    }
}
