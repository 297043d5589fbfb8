//! `scute-runc`: runc's command line (as containerd's runc shim, used by
//! dockerd, and conmon, used by Podman, call it) over scute VMs: each
//! container in a microVM of its own. The host process runc's callers
//! know as the container's init is its keeper ([`keeper`]); an exec's is
//! its holder ([`exec`]).

mod ctl;
mod dns;
mod exec;
mod hooks;
mod keeper;
mod state;
mod tty;
mod update;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use scute_runtime::bundle::Bundle;
use serde_json::Value;

use crate::ctl::{Reply, Request};
use crate::state::{Saved, Status};

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCUTE_GIT_COMMIT"),
    ")"
);

/// A command's failure: the message runc's callers show.
#[derive(Debug)]
pub struct Fail(String);

impl Fail {
    pub fn new(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<scute_runtime::Error> for Fail {
    fn from(e: scute_runtime::Error) -> Self {
        Self(e.to_string())
    }
}

#[derive(Parser)]
#[command(
    name = "scute-runc",
    version = VERSION,
    about = "runc's command line for scute: each container in its own QEMU microVM (for Docker and Podman)",
    after_help = "Docker: \"runtimes\": {\"scute\": {\"path\": \"/usr/local/bin/scute-runc\"}} in /etc/docker/daemon.json, then docker run --runtime scute. Podman: podman --runtime /usr/local/bin/scute-runc run … (`scute install --docker --podman` writes both)."
)]
struct Cli {
    /// Where container state lives.
    #[arg(long, global = true, default_value = "/run/scute-runc")]
    root: PathBuf,
    /// Log file (the caller reads the last error from it).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Accepted for runc compatibility: the VM's host cgroup is named by
    /// the spec's cgroupsPath either way.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility (scute-runc runs as root).
    #[arg(long, global = true)]
    rootless: Option<String>,
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    /// scute's config (default: $SCUTE_CONFIG, then /etc/scute/config.toml).
    #[arg(long = "scute-config", global = true)]
    scute_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// What every command needs from the global flags.
pub struct Global {
    pub root: PathBuf,
    log: Option<PathBuf>,
    json: bool,
    scute_config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    no_pivot: bool,
    #[arg(long)]
    no_new_keyring: bool,
    #[arg(long)]
    preserve_fds: Option<u32>,
    id: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container (boot its VM); its keeper's pid goes to --pid-file.
    Create(CreateArgs),
    /// Create and start a container, and wait for it (unless --detach).
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
    },
    /// Start a created container's process.
    Start { id: String },
    /// The container's state, as JSON.
    State { id: String },
    /// Send a signal to the container's init (or with --all to every process).
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped (or created, or with --force any) container.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a new process in a running container.
    Exec(Box<exec::Args>),
    /// Host processes that stand for the container's processes.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of the container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// The container's resource use, as runc's events JSON.
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: humantime::Duration,
        id: String,
    },
    /// Change a running container's limits, in its VM (which keeps its
    /// size: a limit above it is refused).
    Update(update::Args),
    /// The containers under --root.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// What this runtime supports, as runc's features JSON.
    Features,
    /// Not supported: a container's state is a VM's.
    Checkpoint {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Not supported: a container's state is a VM's.
    Restore {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

/// Where logs go: `--log`, else stderr. A keeper's stderr is its
/// container's, so without `--log` it logs nowhere.
enum Sink {
    Stderr,
    File(std::fs::File),
    Null,
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match &mut *SINK.lock().unwrap_or_else(|e| e.into_inner()) {
            Sink::Stderr => std::io::stderr().write(b),
            Sink::File(f) => f.write(b),
            Sink::Null => Ok(b.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Points descriptors 0-2 at /dev/null (a keeper's or holder's, once the
/// container has its copies of them).
pub fn null_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
        }
    }
}

/// After the fork, in a keeper or holder: stop logging to the stderr
/// that is now the container's.
pub fn detach_logs() {
    let mut s = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(*s, Sink::Stderr) {
        *s = Sink::Null;
    }
}

fn init_logs(cli: &Cli) {
    if let Some(p) = &cli.log {
        if let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Sink::File(f);
        }
    }
    let level = if cli.debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCUTE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| SinkWriter)
        .with_ansi(false);
    if cli.log_format == LogFormat::Json {
        b.json().init();
    } else {
        b.init();
    }
}

/// An error where runc's callers look: stderr, and the log as runc's
/// `{"level":"error","msg":…}` line (go-runc reads the last one).
pub fn report_error(g: &Global, msg: &str) {
    eprintln!("scute-runc: {msg}");
    if let (Some(p), true) = (&g.log, g.json) {
        let line = serde_json::json!({"level": "error", "msg": msg, "time": state::now_rfc3339()});
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    } else if let Some(p) = &g.log {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "level=error msg={msg:?}");
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli);
    // A keeper's stderr is its container's: a panic goes to the log.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("scute-runc panicked: {info}");
    }));
    let g = Global {
        root: cli.root.clone(),
        log: cli.log.clone(),
        json: cli.log_format == LogFormat::Json,
        scute_config: cli.scute_config.clone(),
    };
    match dispatch(&g, cli.command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            report_error(&g, &e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn dispatch(g: &Global, c: Command) -> Result<i32, Fail> {
    match c {
        Command::Create(a) => create(g, a, false).map(|_| 0),
        Command::Run { create: a, detach } => run(g, a, detach),
        Command::Start { id } => {
            Saved::load(&g.root, &id)?.live_status().startable()?;
            ctl::call(&g.root, &id, &Request::Start).map(|_| 0)
        }
        Command::State { id } => {
            let s = Saved::load(&g.root, &id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&s.oci_state()).unwrap_or_default()
            );
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(&signal)?;
            let s = Saved::load(&g.root, &id)?;
            if matches!(s.live_status(), Status::Stopped | Status::Creating) {
                return Err(Fail::new("container not running".into()));
            }
            ctl::call(&g.root, &id, &Request::Kill { signal: sig, all }).map(|_| 0)
        }
        Command::Delete { force, id } => delete(g, &id, force).map(|_| 0),
        Command::Exec(a) => exec::main(g, *a),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(g, &id, &format, &ps_args).map(|_| 0),
        Command::Pause { id } => {
            let s = Saved::load(&g.root, &id)?;
            if s.live_status() != Status::Running {
                return Err(Fail::new("container not running".into()));
            }
            ctl::call(&g.root, &id, &Request::Pause).map(|_| 0)
        }
        Command::Resume { id } => {
            let s = Saved::load(&g.root, &id)?;
            if s.live_status() != Status::Paused {
                return Err(Fail::new("container not paused".into()));
            }
            ctl::call(&g.root, &id, &Request::Resume).map(|_| 0)
        }
        Command::Events {
            stats,
            interval,
            id,
        } => events(g, &id, stats, interval.into()).map(|_| 0),
        Command::Update(a) => {
            let limits = update::limits(&a)?;
            let s = Saved::load(&g.root, &a.id)?;
            if !matches!(s.live_status(), Status::Running | Status::Paused) {
                return Err(Fail::new("container not running".into()));
            }
            ctl::call(&g.root, &a.id, &Request::Update { limits }).map(|_| 0)
        }
        Command::List { format, quiet } => {
            let all = state::list(&g.root);
            if quiet {
                for s in &all {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                let v: Vec<Value> = all.iter().map(Saved::oci_state).collect();
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
                for s in &all {
                    let st = s.oci_state();
                    println!(
                        "{}\t{}\t{}\t{}\t{}\troot",
                        s.id,
                        st["pid"],
                        s.live_status().as_str(),
                        s.bundle.display(),
                        s.created
                    );
                }
            }
            Ok(0)
        }
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features()).unwrap_or_default());
            Ok(0)
        }
        Command::Checkpoint { .. } | Command::Restore { .. } => Err(Fail::new(
            "checkpoint/restore is not supported: a scute container's state is a whole VM's (guest kernel included), which CRIU cannot save; stop and recreate the container instead".into(),
        )),
    }
}

/// `9`, `KILL`, `SIGKILL`, `sigkill`.
fn parse_signal(s: &str) -> Result<i32, Fail> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| Fail::new(format!("invalid signal {s:?}")))
}

/// Refuses what a VM cannot give, before anything is made.
fn check_spec(bundle: &Bundle) -> Result<Option<PathBuf>, Fail> {
    hooks::check(&bundle.raw)?;
    let nss: Vec<(String, Option<String>)> = bundle
        .raw
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n.get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        n.get("path").and_then(Value::as_str).map(str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let get = |k: &str| nss.iter().find(|(t, _)| t == k);
    for (k, flag) in [("pid", "--pid host"), ("ipc", "--ipc host")] {
        if get(k).is_none() {
            return Err(Fail::new(format!(
                "the container asks for the host's {k} namespace ({flag}): a VM can't give that (its processes are in the guest); drop {flag}"
            )));
        }
    }
    let net = get("network").ok_or_else(|| {
        Fail::new("the container asks for the host's network (--network host): a VM can't share the host's network stack; use a bridge network or --network none".into())
    })?;
    let Some(path) = &net.1 else {
        return Ok(None);
    };
    let ino = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| {
            (
                std::os::unix::fs::MetadataExt::dev(&m),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        })
    };
    let p = PathBuf::from(path);
    if ino(&p).is_none() {
        return Err(Fail::new(format!(
            "network namespace {path} does not exist"
        )));
    }
    // The host's: init's, or the caller's (engines run in the host's).
    if ino(&p) == ino(Path::new("/proc/1/ns/net")) || ino(&p) == ino(Path::new("/proc/self/ns/net"))
    {
        return Err(Fail::new("the container asks for the host's network (--network host): a VM can't share the host's network stack; use a bridge network or --network none".into()));
    }
    if path.starts_with("/proc/") {
        return Err(Fail::new(format!(
            "the container joins another process's network namespace ({path}, --network container:…): each scute container has a VM of its own, which can't share another's network; use a common network instead"
        )));
    }
    Ok(Some(p))
}

/// Creates a container: forks its keeper, which boots the VM and creates
/// the process; the keeper's pid, once it says the container exists.
fn create(g: &Global, a: CreateArgs, own_terminal: bool) -> Result<i32, Fail> {
    scute_runtime::bundle::validate_id(&a.id)?;
    let config = scute_runtime::Config::load(g.scute_config.as_deref())?;
    let bundle = Bundle::load(&a.bundle)?;
    let netns = check_spec(&bundle)?;
    let terminal = bundle.terminal();
    if terminal && a.console_socket.is_none() && !own_terminal {
        return Err(Fail::new(
            "cannot allocate tty if runc will detach without setting console socket".into(),
        ));
    }
    let dir = state::make_dir(&g.root, &a.id)?;
    // Removed again unless the keeper says the container exists.
    struct Undo(Option<PathBuf>);
    impl Drop for Undo {
        fn drop(&mut self) {
            if let Some(d) = self.0.take() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let mut undo = Undo(Some(dir));
    Saved {
        id: a.id.clone(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: state::now_rfc3339(),
        annotations: bundle
            .raw
            .get("annotations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        pid: 0,
        pid_start: None,
        status: Status::Creating,
        exit_code: None,
    }
    .store(&g.root)?;
    let slave = match (&a.console_socket, terminal) {
        (Some(sock), true) => {
            let (master, slave) = tty::open_pty()?;
            tty::send_master(sock, &master, &slave)?;
            Some(slave)
        }
        (None, true) => Some(
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Fail::new(e.to_string()))?,
        ),
        _ => None,
    };
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Fail::new(format!("pipe: {e}")))?;
    // SAFETY: this process runs no other thread: the command line starts
    // none before here (no async runtime).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            detach_logs();
            std::mem::forget(undo);
            let code = keeper::run(keeper::Start {
                root: g.root.clone(),
                id: a.id.clone(),
                bundle,
                config,
                terminal: slave,
                ready: std::fs::File::from(w),
                netns,
            });
            std::process::exit(code);
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            drop(slave);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg.trim() == "ok" {
                if let Some(p) = &a.pid_file {
                    state::write_pid_file(p, child.as_raw())?;
                }
                undo.0 = None;
                return Ok(child.as_raw());
            }
            let _ = nix::sys::wait::waitpid(child, None);
            let why = msg.trim().strip_prefix("error: ").unwrap_or(msg.trim());
            Err(Fail::new(if why.is_empty() {
                format!(
                    "container {}: the keeper exited before the container was created",
                    a.id
                )
            } else {
                why.to_owned()
            }))
        }
        Err(e) => Err(Fail::new(format!("fork: {e}"))),
    }
}

/// runc run: create, start, and unless detached wait for the keeper (our
/// child) and exit with its status.
fn run(g: &Global, a: CreateArgs, detach: bool) -> Result<i32, Fail> {
    let id = a.id.clone();
    let raw = (!detach && tty::is_terminal(&std::io::stdin()))
        .then(scute_runtime::foreground::RawTerminal::enable);
    let keeper = create(g, a, !detach)?;
    ctl::call(&g.root, &id, &Request::Start)?;
    if detach {
        return Ok(0);
    }
    let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(keeper), None);
    drop(raw);
    let code = match st {
        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
        Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 255,
    };
    let _ = delete(g, &id, true);
    Ok(code)
}

fn delete(g: &Global, id: &str, force: bool) -> Result<(), Fail> {
    let s = Saved::load(&g.root, id)?;
    let status = s.live_status();
    match status {
        Status::Stopped => {}
        Status::Created | Status::Creating => {
            let _ = ctl::call(&g.root, id, &Request::Delete);
        }
        _ if force => {
            if status == Status::Paused {
                let _ = ctl::call(&g.root, id, &Request::Resume);
            }
            let _ = ctl::call(
                &g.root,
                id,
                &Request::Kill {
                    signal: libc::SIGKILL,
                    all: true,
                },
            );
        }
        _ => {
            return Err(Fail::new(format!(
                "cannot delete container {id} that is not stopped: {}",
                status.as_str()
            )))
        }
    }
    if status != Status::Stopped {
        // The keeper tears the VM down, then exits.
        let t0 = Instant::now();
        while s.keeper_alive() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if s.keeper_alive() {
            tracing::warn!(
                container_id = id,
                pid = s.pid,
                "the keeper did not exit; killing it"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // A keeper that was killed left its sandbox behind.
    if let Ok(config) = scute_runtime::Config::load(g.scute_config.as_deref()) {
        let sb = config.state_dir.join(id);
        if sb.exists()
            && !scute_runtime::state::StateFile::read(&sb).is_some_and(|f| f.owner_alive())
        {
            scute_runtime::stale::cleanup(&sb);
        }
    }
    if let Some(spec) = std::fs::read(s.bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
    {
        let mut st = s.oci_state();
        st["status"] = Value::String("stopped".into());
        if let Err(e) = hooks::run(&spec, &["poststop"], &st) {
            tracing::warn!(container_id = id, "{e}");
        }
    }
    std::fs::remove_dir_all(state::dir(&g.root, id))
        .map_err(|e| Fail::new(format!("remove the state of {id}: {e}")))
}

fn ps(g: &Global, id: &str, format: &str, ps_args: &[String]) -> Result<(), Fail> {
    let s = Saved::load(&g.root, id)?;
    let pids = if s.live_status() == Status::Stopped {
        Vec::new()
    } else {
        match ctl::call(&g.root, id, &Request::Ps)? {
            Reply::Pids(p) => p,
            other => return Err(Fail::new(format!("the keeper answered {other:?}"))),
        }
    };
    if format == "json" {
        println!("{}", serde_json::to_string(&pids).unwrap_or_default());
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| Fail::new(format!("ps: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Fail::new("couldn't find PID field in ps output".into()))?;
    println!("{header}");
    for l in lines {
        if l.split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| pids.contains(&p))
        {
            println!("{l}");
        }
    }
    Ok(())
}

fn events(g: &Global, id: &str, once: bool, every: Duration) -> Result<(), Fail> {
    loop {
        let s = Saved::load(&g.root, id)?;
        if s.live_status() == Status::Stopped {
            return if once {
                Err(Fail::new("container not running".into()))
            } else {
                Ok(())
            };
        }
        let st = match ctl::call(&g.root, id, &Request::Stats)? {
            Reply::Stats(st) => st,
            other => return Err(Fail::new(format!("the keeper answered {other:?}"))),
        };
        let ev = serde_json::json!({
            "type": "stats",
            "id": id,
            "data": {
                "cpu": {"usage": {"total": st.cpu_usage_ns, "kernel": st.cpu_system_ns, "user": st.cpu_user_ns}},
                "memory": {"usage": {"usage": st.memory_usage_bytes, "max": st.memory_max_usage_bytes,
                    "limit": st.memory_limit_bytes.unwrap_or(u64::MAX)}},
                "pids": {"current": st.pids_current, "limit": st.pids_limit.unwrap_or(0)},
            }
        });
        println!("{ev}");
        if once {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

fn features() -> Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "private", "rprivate", "slave", "rslave", "shared", "rshared"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "cgroup": {"v1": true, "v2": true, "systemd": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.scute.isolation": "microvm",
            "io.scute.version": VERSION
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn the_command_line_parses_as_go_runc_and_conmon_write_it() {
        let c = Cli::try_parse_from([
            "scute-runc",
            "--root",
            "/run/x",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "--console-socket",
            "/tmp/s",
            "--no-pivot",
            "--no-new-keyring",
            "abc",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Create(ref a) if a.id == "abc" && a.no_pivot));
        let c = Cli::try_parse_from([
            "scute-runc",
            "--root=/run/x",
            "--log-format=json",
            "exec",
            "--process",
            "/tmp/p.json",
            "--detach",
            "--pid-file",
            "/tmp/e.pid",
            "abc",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Exec(ref a) if a.detach && a.id == "abc"));
        let c = Cli::try_parse_from(["scute-runc", "exec", "-t", "abc", "sh", "-c", "echo -n x"])
            .unwrap();
        assert!(
            matches!(c.command, Command::Exec(ref a) if a.command == ["sh", "-c", "echo -n x"])
        );
        let c = Cli::try_parse_from(["scute-runc", "kill", "--all", "abc", "9"]).unwrap();
        assert!(matches!(c.command, Command::Kill { all: true, ref signal, .. } if signal == "9"));
        assert!(Cli::try_parse_from(["scute-runc", "frobnicate", "abc"]).is_err());
    }
}
