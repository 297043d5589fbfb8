//! The keeper: the host process that stands for a container's init. Forked
//! by `create`, it is the pid in `--pid-file`; it owns the container's VM
//! (QEMU, virtiofsd, shares, host cgroup), relays the stdio `create` was
//! given (or the terminal), serves the other commands on the control
//! socket, forwards the signals it gets to the init, and exits with the
//! init's status (128+N for signal N) once the VM is torn down. Docker's
//! runc shim and conmon are subreapers: they reap it as they would a
//! container's init.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scute_protocol::{CreateContainer, Event, ExitStatus, StdioSpec};
use scute_runtime::bundle::Bundle;
use scute_runtime::client::{pump_input, pump_output, AgentClient};
use scute_runtime::sandbox::Sandbox;
use scute_runtime::Config;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};

use crate::ctl::{Reply, Request};
use crate::state::{Saved, Status};
use crate::Fail;

/// What `create` hands the keeper across the fork.
pub struct Start {
    pub root: PathBuf,
    pub id: String,
    pub bundle: Bundle,
    pub config: Config,
    /// The pty slave when the container has a terminal.
    pub terminal: Option<OwnedFd>,
    /// Where the keeper says `ok` once the container is created, or why not.
    pub ready: File,
    /// The network namespace to wire the VM into; `None`: a new one, made
    /// here, that the prestart hooks (Docker's libnetwork) populate.
    pub netns: Option<PathBuf>,
}

/// Runs the keeper to the end; the process's exit status.
pub fn run(mut s: Start) -> i32 {
    let _ = nix::unistd::setsid();
    // The container's stdio is relayed from copies; the keeper's own 0-2
    // must not hold the caller's pipes open: go-runc waits for the output
    // of a `create` with a terminal to end.
    let stdio = if s.terminal.is_some() {
        None
    } else {
        match own_stdio() {
            Ok(io) => Some(io),
            Err(e) => return report(&mut s.ready, &s.id, &e.to_string()),
        }
    };
    crate::null_stdio();
    let me = std::process::id();
    let netns = match s.netns.take() {
        Some(p) => p,
        None => {
            // Still one thread: the whole process moves.
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                return report(
                    &mut s.ready,
                    &s.id,
                    &format!("create a network namespace: {e}"),
                );
            }
            PathBuf::from(format!("/proc/{me}/ns/net"))
        }
    };
    let hook_state = serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "id": s.id,
        "status": "creating",
        "pid": me,
        "bundle": s.bundle.dir,
        "annotations": s.bundle.raw.get("annotations").cloned().unwrap_or(Value::Null),
    });
    if let Err(e) = crate::hooks::run(&s.bundle.raw, &["prestart", "createRuntime"], &hook_state) {
        return report(&mut s.ready, &s.id, &e.to_string());
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&mut s.ready, &s.id, &format!("start the keeper: {e}")),
    };
    let code = rt.block_on(keep(s, netns, stdio));
    // Readers of pipes may be blocked in the runtime's threads for good.
    rt.shutdown_background();
    code
}

/// Tells `create` why the container could not be made; the exit status.
fn report(ready: &mut File, id: &str, why: &str) -> i32 {
    tracing::error!(container_id = id, "{why}");
    let _ = writeln!(ready, "error: {why}");
    1
}

/// What the control connections share.
struct Shared {
    root: PathBuf,
    id: String,
    client: AgentClient,
    saved: Mutex<Saved>,
    /// Exits awaited by exec connections, by exec id.
    execs: Mutex<HashMap<String, oneshot::Sender<ExitStatus>>>,
    /// Exec holders alive (host pids), for `ps`.
    holders: Mutex<Vec<u32>>,
    /// A created container deleted before it ran.
    leave: Notify,
    /// Bundle's spec (hooks).
    spec: Value,
    next_exec: std::sync::atomic::AtomicU32,
}

impl Shared {
    fn set_status(&self, st: Status) {
        let mut s = self.saved.lock().unwrap();
        s.status = st;
        if let Err(e) = s.store(&self.root) {
            tracing::warn!(container_id = %self.id, "{e}");
        }
    }

    fn status(&self) -> Status {
        self.saved.lock().unwrap().status
    }
}

async fn keep(mut s: Start, netns: PathBuf, stdio: Option<OwnStdio>) -> i32 {
    let id = s.id.clone();
    let (mut sandbox, mut shared, copies, tty, in_cgroups) =
        match create(&mut s, &netns, stdio).await {
            Ok(v) => v,
            Err(e) => return report(&mut s.ready, &id, &e.to_string()),
        };
    let listener = match listen(&s.root, &id) {
        Ok(l) => l,
        Err(e) => {
            // Out of the cgroups first: their removal kills what is in them.
            drop(in_cgroups);
            drop(sandbox);
            return report(&mut s.ready, &id, &e.to_string());
        }
    };
    let dns = match relay_dns(&shared, &netns, &s.bundle.raw).await {
        Ok(d) => d,
        Err(e) => {
            drop(in_cgroups);
            drop(sandbox);
            return report(&mut s.ready, &id, &e.to_string());
        }
    };
    let _ = writeln!(s.ready, "ok");
    drop(s.ready);
    tracing::info!(container_id = %id, "created");
    let status = serve(&mut sandbox, &mut shared, listener, tty, &s.config, dns).await;
    let code = match status {
        Ok(Some(st)) => {
            // The agent sends stream ends before the exit event.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                for c in copies {
                    let _ = c.await;
                }
            })
            .await;
            st.shell_code()
        }
        Ok(None) => 137,
        Err(e) => {
            tracing::error!(container_id = %id, "{e}");
            137
        }
    };
    {
        let sh = &*shared;
        let mut saved = sh.saved.lock().unwrap();
        saved.status = Status::Stopped;
        saved.exit_code = Some(code);
        let _ = saved.store(&sh.root);
    }
    // Exec holders waiting on exits that will never come learn it now.
    shared.execs.lock().unwrap().clear();
    drop(in_cgroups);
    drop(sandbox);
    let _ = std::fs::remove_file(crate::state::ctl_socket(&s.root, &id));
    tracing::info!(container_id = %id, code, "stopped");
    code
}

type Copies = Vec<tokio::task::JoinHandle<()>>;

/// Boots the VM and creates the container in it (not started).
async fn create(
    s: &mut Start,
    netns: &Path,
    stdio: Option<OwnStdio>,
) -> Result<(Sandbox, Arc<Shared>, Copies, Option<OwnedFd>, InCgroups), Fail> {
    let id = s.id.clone();
    let mut config = s.config.clone();
    let (vcpus, memory) = scute_runtime::pod::vm_size(&s.bundle.raw, &config)?;
    config.vcpus = vcpus;
    config.memory_mib = memory;
    // In the guest the container shares the VM's network: the namespace it
    // was wired into, named by path.
    let mut bundle = s.bundle.clone();
    if let Some(nss) = bundle
        .raw
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    {
        for ns in nss.iter_mut() {
            if ns.get("type").and_then(Value::as_str) == Some("network") {
                ns["path"] = Value::String(netns.display().to_string());
            }
        }
    }
    let cgroups_path = bundle
        .raw
        .pointer("/linux/cgroupsPath")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let declined = scute_runtime::pod::operator_annotation(
        &bundle.raw,
        scute_runtime::pod::ANN_VM_POOL,
        &config,
    ) == Some("off");
    let claimed = if declined {
        Err(format!(
            "annotation {}=off",
            scute_runtime::pod::ANN_VM_POOL
        ))
    } else {
        claim(&config, &id, netns).await
    };
    let (sandbox, spec) = match claimed {
        Ok((claimed, plan)) => {
            let sb = Sandbox::adopt(&config, &id, cgroups_path.as_deref(), plan, claimed).await?;
            let spec = scute_runtime::share::share_container(&sb.shared_dir(), &id, &bundle, &[])?;
            (sb, spec)
        }
        Err(why) => {
            tracing::info!(container_id = %id, vcpus, memory, "booting the container's VM ({why})");
            Sandbox::create(
                &config,
                &id,
                Some(netns),
                cgroups_path.as_deref(),
                |shared| scute_runtime::share::share_container(shared, &id, &bundle, &[]),
            )
            .await?
        }
    };
    // Declared after the sandbox: on an error return it is dropped first,
    // and the keeper is out of the cgroups before the sandbox removes them
    // (killing what is left in them).
    let in_cgroups = InCgroups::join(&id, sandbox.cgroup_dirs());
    let client = sandbox.client.clone();
    let terminal = s.terminal.take();
    let (io, tty) = match terminal {
        Some(slave) => {
            // The size the engine asked for (Podman sets it in the spec);
            // `follow_size` relays it, and every later change.
            let cs = |k: &str| {
                s.bundle
                    .raw
                    .pointer(&format!("/process/consoleSize/{k}"))
                    .and_then(Value::as_u64)
                    .and_then(|v| u16::try_from(v).ok())
            };
            if let (Some(rows), Some(cols)) = (cs("height"), cs("width")) {
                crate::tty::set_size(&slave, cols, rows);
            }
            let r = slave.try_clone().map_err(|e| Fail::new(e.to_string()))?;
            let w = slave.try_clone().map_err(|e| Fail::new(e.to_string()))?;
            (
                Io {
                    stdin: reader(r),
                    stdout: writer(w),
                    stderr: None,
                },
                Some(slave),
            )
        }
        None => {
            let [i, o, e] = stdio.ok_or_else(|| Fail::new("no stdio for the container".into()))?;
            (
                Io {
                    stdin: reader(i),
                    stdout: writer(o),
                    stderr: Some(writer(e)),
                },
                None,
            )
        }
    };
    let copies = create_container(&client, &id, None, spec, io).await?;
    let shared = Arc::new(Shared {
        root: s.root.clone(),
        id: id.clone(),
        client,
        saved: Mutex::new({
            let mut saved = Saved::load(&s.root, &id)?;
            saved.status = Status::Created;
            saved.pid = std::process::id() as i32;
            saved.pid_start = scute_runtime::state::process_start_time(saved.pid);
            saved.store(&s.root)?;
            saved
        }),
        execs: Mutex::new(HashMap::new()),
        holders: Mutex::new(Vec::new()),
        leave: Notify::new(),
        spec: s.bundle.raw.clone(),
        next_exec: 0.into(),
    });
    Ok((sandbox, shared, copies, tty, in_cgroups))
}

/// A ready VM from the pool (`scute pool`) when one fits: a pool VM has
/// one NIC, so the namespace must have one interface (a bridge network;
/// `--network none` has none), and its size must be the pool's. Else why
/// the container boots its own.
async fn claim(
    config: &Config,
    id: &str,
    netns: &Path,
) -> Result<
    (
        scute_runtime::handover::Claimed,
        Option<scute_runtime::network::Plan>,
    ),
    String,
> {
    if config.pool.size == 0 {
        return Err("the pool is off ([pool] size = 0)".into());
    }
    let plan = scute_runtime::network::plan(netns).map_err(|e| e.to_string())?;
    if plan.pairs.len() != 1 {
        return Err(format!(
            "a pool VM has one NIC; the network namespace has {} interfaces",
            plan.pairs.len()
        ));
    }
    let (config, sid) = (config.clone(), id.to_owned());
    match tokio::task::spawn_blocking(move || scute_runtime::handover::claim(&config, &sid)).await {
        Ok(Ok(c)) => Ok((c, Some(plan))),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A process's stdio on the host side.
struct Io {
    stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    stdout: Box<dyn AsyncWrite + Unpin + Send>,
    stderr: Option<Box<dyn AsyncWrite + Unpin + Send>>,
}

type OwnStdio = [OwnedFd; 3];

/// Copies of the stdio this process was given (by `create`'s caller).
fn own_stdio() -> Result<OwnStdio, Fail> {
    let dup = |fd: i32| {
        nix::unistd::dup(fd)
            .map(|fd| {
                // SAFETY: dup returned a new descriptor that nothing else owns.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
            })
            .map_err(|e| Fail::new(format!("the stdio given to create: {e}")))
    };
    Ok([dup(0)?, dup(1)?, dup(2)?])
}

fn is_dev_null(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd.as_raw_fd()).is_ok_and(|st| {
        (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3)
    })
}

/// `None` for /dev/null (the process gets it in the guest too).
fn reader(fd: OwnedFd) -> Option<Box<dyn AsyncRead + Unpin + Send>> {
    (!is_dev_null(&fd)).then(|| {
        Box::new(tokio::fs::File::from_std(File::from(fd))) as Box<dyn AsyncRead + Unpin + Send>
    })
}

fn writer(fd: OwnedFd) -> Box<dyn AsyncWrite + Unpin + Send> {
    Box::new(tokio::fs::File::from_std(File::from(fd)))
}

/// Creates container `id`'s init (`exec` None) or registers exec `exec`
/// with `io` wired to agent streams; the output copies.
async fn create_container(
    client: &AgentClient,
    id: &str,
    exec: Option<(&str, Value)>,
    spec: Value,
    io: Io,
) -> Result<Copies, Fail> {
    let terminal = io.stderr.is_none();
    let stdout_s = client.open_output();
    let stderr_s = (!terminal).then(|| client.open_output());
    let stdin_id = client.open_input();
    let stdio = StdioSpec {
        stdin: io.stdin.is_some().then_some(stdin_id),
        stdout: Some(stdout_s.id),
        stderr: stderr_s.as_ref().map(|s| s.id),
        terminal,
    };
    let made = match exec {
        None => client
            .create_container(CreateContainer {
                container_id: id.to_owned(),
                spec,
                stdio,
            })
            .await
            .map(drop),
        Some((exec_id, process)) => client.exec(id, exec_id, process, stdio).await,
    };
    if let Err(e) = made {
        client.drop_output(stdout_s.id);
        if let Some(s) = &stderr_s {
            client.drop_output(s.id);
        }
        return Err(e.into());
    }
    let mut copies = vec![tokio::spawn(pump_output(stdout_s, io.stdout))];
    if let (Some(s), Some(w)) = (stderr_s, io.stderr) {
        copies.push(tokio::spawn(pump_output(s, w)));
    }
    if let Some(stdin) = io.stdin {
        tokio::spawn(pump_input(client.clone(), stdin_id, stdin));
    }
    Ok(copies)
}

fn listen(root: &Path, id: &str) -> Result<UnixListener, Fail> {
    let p = crate::state::ctl_socket(root, id);
    let _ = std::fs::remove_file(&p);
    let l = crate::state::with_ctl_path(root, id, |short| UnixListener::bind(short))
        .map_err(|e| Fail::new(format!("listen on {}: {e}", p.display())))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

/// The keeper in its VM's cgroups, so that a caller that reads the init's
/// cgroup (the runc shim's stats, `docker stats`) reads the VM's; it
/// leaves them when dropped.
struct InCgroups(Vec<PathBuf>);

impl InCgroups {
    fn join(id: &str, dirs: Vec<PathBuf>) -> Self {
        for d in &dirs {
            if let Err(e) = std::fs::write(d.join("cgroup.procs"), std::process::id().to_string()) {
                tracing::warn!(container_id = id, "join {}: {e}", d.display());
            }
        }
        Self(dirs)
    }
}

impl Drop for InCgroups {
    fn drop(&mut self) {
        leave_cgroups(&self.0);
    }
}

/// Out of the sandbox's cgroups before they are removed: to each
/// hierarchy's root.
fn leave_cgroups(dirs: &[PathBuf]) {
    let base = Path::new("/sys/fs/cgroup");
    for d in dirs {
        let Ok(rel) = d.strip_prefix(base) else {
            continue;
        };
        let root = if base.join("cgroup.procs").exists() {
            base.to_path_buf()
        } else {
            match rel.components().next() {
                Some(c) => base.join(c),
                None => continue,
            }
        };
        let _ = std::fs::write(root.join("cgroup.procs"), std::process::id().to_string());
    }
}

/// The DNS relay and its answers, when the container's resolv.conf names
/// a nameserver on the namespace's loopback (Docker's 127.0.0.11).
type Dns = Option<(
    crate::dns::Relay,
    tokio::sync::mpsc::Receiver<(u32, Vec<u8>)>,
)>;

/// Has the agent relay DNS queries for the loopback nameservers in the
/// spec's resolv.conf, and starts the relay in `netns` that asks them.
async fn relay_dns(shared: &Shared, netns: &Path, spec: &Value) -> Result<Dns, Fail> {
    let servers = crate::dns::loopback_nameservers(spec);
    let Some(first) = servers.first().copied() else {
        return Ok(None);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let relay = crate::dns::Relay::start(netns, first, tx).map_err(|e| {
        Fail::new(format!(
            "container {}: DNS relay in {}: {e}",
            shared.id,
            netns.display()
        ))
    })?;
    for a in servers {
        shared
            .client
            .dns_relay(a)
            .await
            .map_err(|e| Fail::new(format!("container {}: DNS relay for {a}: {e}", shared.id)))?;
    }
    tracing::info!(container_id = %shared.id, nameserver = %first, "relaying the guest's DNS queries");
    Ok(Some((relay, rx)))
}

/// Serves until the init exits (its status), a created container is
/// deleted (`None`), or the VM is lost.
async fn serve(
    sandbox: &mut Sandbox,
    shared: &mut Arc<Shared>,
    listener: UnixListener,
    tty: Option<OwnedFd>,
    config: &Config,
    dns: Dns,
) -> Result<Option<ExitStatus>, Fail> {
    let id = shared.id.clone();
    let client = shared.client.clone();
    let (relay, mut answers) = match dns {
        Some((r, rx)) => (Some(r), rx),
        None => (None, tokio::sync::mpsc::channel(1).1),
    };
    if let Some(t) = tty {
        tokio::spawn(follow_size(client.clone(), id.clone(), None, t));
    }
    let mut sig_rx =
        scute_runtime::foreground::forwarded_signals().map_err(|e| Fail::new(e.to_string()))?;
    let liveness = scute_runtime::foreground::liveness_lost(&client, config);
    tokio::pin!(liveness);
    loop {
        tokio::select! {
            why = &mut liveness => {
                sandbox.kill_vm();
                return Err(Fail::new(format!("container {id}: the VM stopped answering ({why}); it was killed")));
            }
            conn = listener.accept() => {
                if let Ok((conn, _)) = conn {
                    tokio::spawn(handle(shared.clone(), conn));
                }
            }
            ev = sandbox.events.recv() => match ev {
                Some(Event::Exited { container_id, exec_id: None, status, .. }) if container_id == id => {
                    return Ok(Some(status));
                }
                Some(Event::Exited { exec_id: Some(e), status, .. }) => {
                    if let Some(tx) = shared.execs.lock().unwrap().remove(&e) {
                        let _ = tx.send(status);
                    }
                }
                Some(Event::DnsQuery { id: q, query }) => match &relay {
                    Some(r) => r.ask(q, query),
                    None => tracing::debug!(container_id = %id, "a DNS query, and no relay: dropped"),
                },
                Some(other) => tracing::debug!(container_id = %id, ?other, "event"),
                None => return Err(Fail::new(format!("container {id}: the agent's connection ended"))),
            },
            Some((q, answer)) = answers.recv() => {
                let c = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.dns_answer(q, answer).await {
                        tracing::debug!("dns answer {q}: {e}");
                    }
                });
            }
            Some(sig) = sig_rx.recv() => {
                if let Err(e) = client.signal(&id, None, sig, false).await {
                    tracing::warn!(container_id = %id, "forward signal {sig}: {e}");
                }
            }
            _ = shared.leave.notified() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(st) = sandbox.vm_exited() {
                    return Err(Fail::new(format!("container {id}: the VM exited ({st})")));
                }
            }
        }
    }
}

/// Relays the size of the host terminal `fd` to the guest's, as it changes
/// (the caller resizes the master; nothing signals the slave's holder).
async fn follow_size(client: AgentClient, id: String, exec: Option<String>, fd: OwnedFd) {
    let mut last = None;
    loop {
        let now = crate::tty::size(&fd);
        if now.is_some() && now != last {
            let (cols, rows) = now.unwrap_or_default();
            // Refused before the process runs: tried again next round.
            if client
                .resize_pty(&id, exec.as_deref(), cols, rows)
                .await
                .is_ok()
            {
                last = now;
            }
        }
        if client.closed().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn handle(shared: Arc<Shared>, conn: UnixStream) {
    let Ok(std) = conn.into_std() else { return };
    let got = tokio::task::spawn_blocking(move || {
        let _ = std.set_nonblocking(false);
        let _ = std.set_read_timeout(Some(Duration::from_secs(10)));
        let r = crate::ctl::recv_request(&std);
        (std, r)
    })
    .await;
    let Ok((std, got)) = got else { return };
    let (req, fds) = match got {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(container_id = %shared.id, "a bad control request: {e}");
            return;
        }
    };
    let _ = std.set_nonblocking(true);
    let Ok(mut conn) = UnixStream::from_std(std) else {
        return;
    };
    let reply = match req {
        Request::Exec {
            process,
            holder_pid,
        } => return exec(shared, conn, process, holder_pid, fds).await,
        other => answer(&shared, other).await,
    };
    let _ = send(&mut conn, &reply).await;
}

async fn send(conn: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    conn.write_all(&line).await
}

async fn answer(shared: &Shared, req: Request) -> Reply {
    let id = &shared.id;
    let c = &shared.client;
    let r: Result<Reply, Fail> = async {
        match req {
            Request::Start => {
                shared.status().startable()?;
                c.start_container(id).await?;
                shared.set_status(Status::Running);
                let state = shared.saved.lock().unwrap().oci_state();
                let spec = shared.spec.clone();
                let sid = id.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = crate::hooks::run(&spec, &["poststart"], &state) {
                        tracing::warn!(container_id = %sid, "{e}");
                    }
                });
                Ok(Reply::Ok)
            }
            Request::Kill { signal, all } => {
                c.signal(id, None, signal, all).await?;
                Ok(Reply::Ok)
            }
            Request::Pause => {
                c.pause(id).await?;
                shared.set_status(Status::Paused);
                Ok(Reply::Ok)
            }
            Request::Resume => {
                c.resume(id).await?;
                shared.set_status(Status::Running);
                Ok(Reply::Ok)
            }
            Request::Ps => {
                let mut pids = vec![std::process::id()];
                pids.extend(shared.holders.lock().unwrap().iter().copied());
                Ok(Reply::Pids(pids))
            }
            Request::Stats => Ok(Reply::Stats(c.stats(id).await?)),
            Request::Update { limits } => {
                c.update(id, limits).await?;
                Ok(Reply::Ok)
            }
            Request::Delete => {
                if shared.status() != Status::Created {
                    return Err(Fail::new(format!(
                        "cannot delete container {id} that is not stopped: {}",
                        shared.status().as_str()
                    )));
                }
                shared.leave.notify_one();
                Ok(Reply::Ok)
            }
            Request::Exec { .. } | Request::Signal { .. } => {
                Err(Fail::new("not a request on its own".into()))
            }
        }
    }
    .await;
    r.unwrap_or_else(|e| Reply::Error(e.to_string()))
}

/// Runs an exec for its holder: answers `Started`, forwards the holder's
/// signals, answers `Exited` once the process is gone.
async fn exec(
    shared: Arc<Shared>,
    mut conn: UnixStream,
    process: Value,
    holder_pid: u32,
    mut fds: Vec<OwnedFd>,
) {
    let id = shared.id.clone();
    let client = shared.client.clone();
    let n = shared
        .next_exec
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let exec_id = format!("exec-{holder_pid}-{n}");
    let terminal = process
        .get("terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (io, tty) = match (terminal, fds.len()) {
        (true, 1) => {
            let t = fds.remove(0);
            let cs = |k: &str| {
                process
                    .pointer(&format!("/consoleSize/{k}"))
                    .and_then(Value::as_u64)
                    .and_then(|v| u16::try_from(v).ok())
            };
            if let (Some(rows), Some(cols)) = (cs("height"), cs("width")) {
                crate::tty::set_size(&t, cols, rows);
            }
            let (r, w) = match (t.try_clone(), t.try_clone()) {
                (Ok(r), Ok(w)) => (r, w),
                _ => return,
            };
            (
                Io {
                    stdin: reader(r),
                    stdout: writer(w),
                    stderr: None,
                },
                Some(t),
            )
        }
        (false, 3) => {
            let mut it = fds.into_iter();
            let (Some(i), Some(o), Some(e)) = (it.next(), it.next(), it.next()) else {
                return;
            };
            (
                Io {
                    stdin: reader(i),
                    stdout: writer(o),
                    stderr: Some(writer(e)),
                },
                None,
            )
        }
        _ => {
            let _ = send(
                &mut conn,
                &Reply::Error("an exec needs its terminal or its three stdio descriptors".into()),
            )
            .await;
            return;
        }
    };
    if matches!(shared.status(), Status::Stopped | Status::Creating) {
        let _ = send(
            &mut conn,
            &Reply::Error("cannot exec in a stopped container".into()),
        )
        .await;
        return;
    }
    let copies =
        match create_container(&client, &id, Some((&exec_id, process)), Value::Null, io).await {
            Ok(c) => c,
            Err(e) => {
                let _ = send(&mut conn, &Reply::Error(e.to_string())).await;
                return;
            }
        };
    let (tx, mut rx) = oneshot::channel();
    shared.execs.lock().unwrap().insert(exec_id.clone(), tx);
    let pid = match client.start_exec(&id, &exec_id).await {
        Ok(pid) => pid,
        Err(e) => {
            shared.execs.lock().unwrap().remove(&exec_id);
            let _ = send(&mut conn, &Reply::Error(e.to_string())).await;
            return;
        }
    };
    if let Some(t) = tty {
        tokio::spawn(follow_size(
            client.clone(),
            id.clone(),
            Some(exec_id.clone()),
            t,
        ));
    }
    shared.holders.lock().unwrap().push(holder_pid);
    tracing::debug!(container_id = %id, exec_id, pid, "exec started");
    if send(&mut conn, &Reply::Started { pid }).await.is_ok() {
        let (r, w) = conn.into_split();
        let mut lines = tokio::io::BufReader::new(r).lines();
        let mut holder_gone = false;
        let status = loop {
            tokio::select! {
                st = &mut rx => break st.ok(),
                line = lines.next_line(), if !holder_gone => {
                    let sig = match line {
                        Ok(Some(l)) => match serde_json::from_str::<Request>(&l) {
                            Ok(Request::Signal { signal }) => signal,
                            _ => continue,
                        },
                        // The holder is gone: so is what it stood for.
                        _ => { holder_gone = true; libc::SIGKILL }
                    };
                    if let Err(e) = client.signal(&id, Some(&exec_id), sig, false).await {
                        tracing::debug!(container_id = %id, exec_id, "signal {sig}: {e}");
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for c in copies {
                let _ = c.await;
            }
        })
        .await;
        if let Some(st) = status {
            let mut line = serde_json::to_vec(&Reply::Exited {
                code: st.shell_code(),
            })
            .unwrap_or_default();
            line.push(b'\n');
            let mut w = w;
            let _ = w.write_all(&line).await;
        }
    }
    shared.holders.lock().unwrap().retain(|p| *p != holder_pid);
}
