//! Errors of the runtime library. Each message says what failed and what to do.

use std::path::PathBuf;

use scute_protocol::AgentError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("bundle {0} does not exist: pass the directory that holds config.json and rootfs/")]
    BundleNotFound(PathBuf),
    #[error("{path}: {message}")]
    InvalidSpec { path: PathBuf, message: String },
    #[error("invalid id {0:?}: use 1-64 characters from [A-Za-z0-9_.-], starting with a letter or digit")]
    InvalidId(String),
    #[error("sandbox {id} is already running (pid {pid}): pick another id or stop it first")]
    AlreadyRunning { id: String, pid: i32 },
    #[error("guest {what} {path} not found: run `scute assets build` (or set {key} in the scute config)")]
    AssetMissing {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
    },
    #[error("virtiofsd not found: install it with `cargo install virtiofsd --locked` or set virtiofsd_path in the scute config")]
    VirtiofsdMissing,
    #[error(transparent)]
    Hypervisor(#[from] scute_hypervisor::Error),
    #[error("sandbox {id}: {message}{}", console_hint(.console))]
    Boot {
        id: String,
        message: String,
        console: Option<PathBuf>,
    },
    /// The VM died, hung or lost its agent while a container ran in it.
    #[error("sandbox {id}: the VM was lost while the container ran: {message}{}", console_hint(.console))]
    VmLost {
        id: String,
        message: String,
        console: Option<PathBuf>,
    },
    #[error("guest agent: {0}")]
    Agent(AgentError),
    /// What the guest sent broke the protocol (only for that).
    #[error("guest agent protocol violation: {0}")]
    Protocol(String),
    /// A host tool's output scute could not read (`ip -j`, …).
    #[error("{tool}: unexpected output: {message}")]
    HostTool { tool: &'static str, message: String },
    /// Something on the host side that the pool or the caller should have
    /// ruled out: a bug or a mismatch, not the guest's doing.
    #[error("{0}")]
    Host(String),
    #[error("guest agent connection lost: {0}")]
    ChannelClosed(crate::client::ChannelClosed),
    #[error("guest agent answered {op} with {}: the agent and the runtime disagree; check that both are the same version (`scute check`)", bounded_reply(.reply))]
    UnexpectedReply {
        op: &'static str,
        reply: Box<scute_protocol::Reply>,
    },
    #[error("request {op} is {bytes} bytes, over the agent frame limit ({} bytes): shorten the process spec or its environment", scute_protocol::limits::MAX_PAYLOAD)]
    RequestTooLarge { op: &'static str, bytes: usize },
    #[error(
        "{op}: {limit} agent requests are already outstanding: the guest is overloaded or hung"
    )]
    TooManyPending { op: &'static str, limit: usize },
    #[error("guest agent did not answer {op} within {after:?}: the guest is hung or overloaded")]
    Deadline {
        op: &'static str,
        after: std::time::Duration,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn bounded_reply(reply: &scute_protocol::Reply) -> String {
    let mut s = format!("{reply:?}");
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn console_hint(console: &Option<PathBuf>) -> String {
    match console {
        Some(p) => format!(" (guest console log: {})", p.display()),
        None => String::new(),
    }
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
