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
    pub pid: i32,
    pub exit: tokio::sync::oneshot::Receiver<scute_protocol::ExitStatus>,
    pub io: HostSide,
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
    let parsed: oci_spec::runtime::Spec = serde_json::from_value(spec.clone())
        .map_err(|e| err(ErrorCode::InvalidArgument, format!("invalid OCI spec: {e}")))?;
    let process = parsed
        .process()
        .as_ref()
        .ok_or_else(|| err(ErrorCode::InvalidArgument, "spec has no process"))?;
    let args = process.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(err(ErrorCode::InvalidArgument, "spec has no process.args"));
    };
    let root = parsed
        .root()
        .as_ref()
        .ok_or_else(|| err(ErrorCode::InvalidArgument, "spec has no root"))?
        .path()
        .clone();
    let env = process.env().clone().unwrap_or_default();
    check_executable(&root, arg0, &env)?;

    let bundle = Path::new(BUNDLES).join(id);
    fs::create_dir_all(&bundle).map_err(internal("create bundle dir"))?;
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(spec).map_err(internal("encode spec"))?,
    )
    .map_err(internal("write config.json"))?;

    let (host, child) = make_stdio(stdio)?;
    let console = if stdio.terminal {
        Some(ConsoleSocket::bind(id)?)
    } else {
        None
    };

    let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
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
    let built = builder
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build();
    let container = match built {
        Ok(c) => c,
        Err(e) => {
            drop(guard);
            let _ = fs::remove_dir_all(&bundle);
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!("create container {id}: {e}"),
            ));
        }
    };
    let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
    let exit = reaper.watch(pid);
    drop(guard);

    let mut io = host;
    if let Some(t) = console_thread {
        let master = t
            .join()
            .map_err(|_| err(ErrorCode::Internal, "console thread panicked"))??;
        let out = master.try_clone().map_err(internal("dup pty master"))?;
        io.stdin = Some(master);
        io.stdout = Some(out);
        io.stderr = None;
    }
    Ok(Created {
        container,
        pid,
        exit,
        io,
    })
}

/// Starts a created container (blocking).
pub fn start(container: &mut Container) -> Result<(), AgentError> {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    container
        .start()
        .map_err(|e| err(ErrorCode::FailedPrecondition, format!("start: {e}")))
}

/// Sends `signal` to the init process, or to every process of the container.
pub fn signal(
    container: &mut Container,
    pid: i32,
    signal: i32,
    all: bool,
) -> Result<(), AgentError> {
    let sig = Signal::try_from(signal).map_err(|_| {
        err(
            ErrorCode::InvalidArgument,
            format!("invalid signal {signal}"),
        )
    })?;
    if all {
        return container
            .kill(sig, true)
            .map_err(|e| err(ErrorCode::FailedPrecondition, format!("kill: {e}")));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .map_err(|e| err(ErrorCode::NotFound, format!("signal process {pid}: {e}")))
}

/// Removes libcontainer's state and the bundle after the process exited.
pub fn delete(container: &mut Container) {
    let id = container.id().to_owned();
    if let Err(e) = container.delete(true) {
        tracing::warn!(container_id = %id, "delete: {e}");
    }
    let _ = fs::remove_dir_all(Path::new(BUNDLES).join(&id));
}

fn internal<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> AgentError {
    move |e| err(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Like runc: the executable must exist in the rootfs (looked up in the
/// spec's PATH when it has no slash), else exit 127 with this message.
fn check_executable(root: &Path, arg0: &str, env: &[String]) -> Result<(), AgentError> {
    let candidates: Vec<PathBuf> = if arg0.contains('/') {
        vec![PathBuf::from(arg0)]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':').map(|d| Path::new(d).join(arg0)).collect()
    };
    for c in &candidates {
        let in_root = root.join(c.strip_prefix("/").unwrap_or(c));
        // Don't follow a final symlink: an absolute target points into the
        // container's root, not the agent's.
        if in_root.symlink_metadata().is_ok() {
            return Ok(());
        }
    }
    Err(err(
        ErrorCode::ExecutableNotFound,
        format!("exec: \"{arg0}\": executable file not found in $PATH"),
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
    fn bind(id: &str) -> Result<Self, AgentError> {
        let dir = Path::new("/run/scute-agent/console");
        fs::create_dir_all(dir).map_err(internal("console dir"))?;
        let path = dir.join(format!("{id}.sock"));
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
}
