//! Messages carried in Request, Response and Event frames (JSON payloads).
//!
//! The version handshake: the agent's first frame is [`Event::Ready`] with its
//! [`PROTOCOL_VERSION`]; the host refuses to go on with a different version.

use serde::{Deserialize, Serialize};

use crate::limits::MAX_TEXT;

/// Bumped on every incompatible change of a message or frame.
pub const PROTOCOL_VERSION: u32 = 5;

/// Host → guest requests. The frame's stream id is the request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create (but don't start) a container from an OCI spec.
    CreateContainer(CreateContainer),
    /// Start a created container's process.
    StartContainer {
        container_id: String,
    },
    /// Send a signal to a container's init process, one of its exec'd
    /// processes, or all its processes.
    Signal {
        container_id: String,
        #[serde(default)]
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Register an additional process (OCI `process` object) to run in a
    /// running container; it starts with [`Request::StartExec`].
    Exec {
        container_id: String,
        exec_id: String,
        process: serde_json::Value,
        stdio: StdioSpec,
    },
    /// Start a registered exec process.
    StartExec {
        container_id: String,
        exec_id: String,
    },
    /// Set the terminal size of a process that has one.
    ResizePty {
        container_id: String,
        #[serde(default)]
        exec_id: Option<String>,
        width: u16,
        height: u16,
    },
    /// Liveness: answered with `Done` at once. The host calls it
    /// periodically; a guest that stops answering is declared dead.
    Ping,
    /// Freeze / thaw every process of a container (cgroup freezer).
    Pause {
        container_id: String,
    },
    Resume {
        container_id: String,
    },
    /// Pids (guest pid namespace of the agent) of the container's processes.
    Pids {
        container_id: String,
    },
    /// cgroup statistics of the container.
    Stats {
        container_id: String,
    },
    /// New cgroup limits for a running container (`runc update`, CRI
    /// UpdateContainerResources); what is None stays as it is.
    Update {
        container_id: String,
        limits: Limits,
    },
    /// Give the guest's NICs the names, addresses, routes and MTU of the
    /// container netns's interfaces (matched by MAC).
    ConfigureNetwork(NetworkConfig),
    /// Open a TCP connection to `127.0.0.1:port` in the guest's network
    /// (the pod's): what CRI PortForward reaches. Its bytes flow as a
    /// process's stdio does: host → guest on `input` (credited), guest →
    /// host on `output` (windowed); a Close on either is that direction's
    /// end (a TCP half-close).
    Connect {
        port: u16,
        input: u32,
        output: u32,
    },
    /// Start the operator's debug shell: a shell in the guest's own
    /// namespaces (outside every container), on a terminal of `width` x
    /// `height`, with the busybox the host put in the share (only when the
    /// host's config enables it). Its exit comes as [`Event::Exited`] for
    /// container [`DEBUG_SHELL`].
    DebugShell {
        stdio: StdioSpec,
        width: u16,
        height: u16,
    },
    /// Answer DNS queries sent to `address` (UDP, port 53) in the guest by
    /// relaying them to the host ([`Event::DnsQuery`]): for a nameserver on
    /// the host side's loopback, as Docker's embedded DNS (127.0.0.11) on
    /// user-defined networks, which the VM cannot reach.
    DnsRelay {
        address: std::net::Ipv4Addr,
    },
    /// The host's answer to [`Event::DnsQuery`] `id`.
    DnsAnswer {
        id: u32,
        answer: Vec<u8>,
    },
    /// Remove a container whose processes have exited (or kill them first
    /// when `force`), with its guest state.
    DeleteContainer {
        container_id: String,
        #[serde(default)]
        force: bool,
    },
}

/// The largest DNS message relayed either way: what a UDP answer may be
/// with EDNS's common buffer size.
pub const MAX_DNS_MESSAGE: usize = 4096;

/// The container id the debug shell's exit is reported under (not a valid
/// container id, so never a container's).
pub const DEBUG_SHELL: &str = "_debug";

/// Where the host puts the debug shell's busybox in the share (a name no
/// container id can take: ids don't start with a dot).
pub const DEBUG_DIR: &str = ".scute-debug";

/// Everything the agent needs to create a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateContainer {
    pub container_id: String,
    /// The OCI runtime spec, with `root.path` and bind-mount sources already
    /// rewritten by the host to paths inside the guest's shared directory.
    pub spec: serde_json::Value,
    pub stdio: StdioSpec,
}

/// Which stream ids carry the process's stdio. `None` means /dev/null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StdioSpec {
    pub stdin: Option<u32>,
    pub stdout: Option<u32>,
    /// Ignored with a terminal: the terminal carries both outputs on `stdout`.
    pub stderr: Option<u32>,
    pub terminal: bool,
}

/// Guest → host answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Err(AgentError),
}

/// Successful results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Created { pid: i32 },
    Done,
    Pids { pids: Vec<i32> },
    Stats(CgroupStats),
}

/// The network the guest should present (IPv4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub interfaces: Vec<NetInterface>,
    pub routes: Vec<NetRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// CIDR notation, e.g. `10.4.0.2/24`.
    pub addresses: Vec<String>,
    /// The MAC the guest NIC has now, when it is not `mac` yet (a VM
    /// booted ahead by the pool): the agent finds the NIC by it and gives
    /// it `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRoute {
    /// `default` or a CIDR.
    pub destination: String,
    pub gateway: Option<String>,
    pub device: String,
}

/// Limits of a container's cgroup (v2) in the guest, as the host asks for
/// them: each `None` leaves the limit as it is; `-1` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `memory.max`, bytes.
    #[serde(default)]
    pub memory_max: Option<i64>,
    /// `memory.low`, bytes (OCI's memory reservation).
    #[serde(default)]
    pub memory_low: Option<i64>,
    /// `cpu.max`: quota per period, microseconds (quota -1: no limit).
    #[serde(default)]
    pub cpu_max: Option<(i64, u64)>,
    /// `cpu.weight`, 1..=10000.
    #[serde(default)]
    pub cpu_weight: Option<u64>,
    /// `pids.max`.
    #[serde(default)]
    pub pids_max: Option<i64>,
}

/// What the agent reads from a container's cgroup (v2) in the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    pub memory_usage_bytes: u64,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub memory_max_usage_bytes: u64,
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
}

/// A failed request: a code the host maps to its own errors, and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The message, cut to [`MAX_TEXT`] bytes: it came from the guest.
    pub fn bounded_message(&self) -> &str {
        bounded(&self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// The process's executable does not exist in the rootfs (exit 127).
    ExecutableNotFound,
    /// The executable exists but can't be run (exit 126).
    PermissionDenied,
    Internal,
}

/// Guest → host notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The agent finished booting the guest and serves requests.
    Ready {
        protocol_version: u32,
        agent_version: String,
        kernel_release: String,
        /// Guest uptime (ms since the kernel started) when the agent was ready.
        uptime_ms: u64,
    },
    /// A DNS query (one UDP datagram, at most [`MAX_DNS_MESSAGE`] bytes)
    /// that a process in the guest sent to a [`Request::DnsRelay`] address.
    DnsQuery { id: u32, query: Vec<u8> },
    /// A container's init process (`exec_id` None) or exec process ended.
    /// Sent after its stdout/stderr were flushed.
    Exited {
        container_id: String,
        #[serde(default)]
        exec_id: Option<String>,
        pid: i32,
        status: ExitStatus,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(c) => c & 0xff,
            Self::Signal(s) => 128 + (s & 0x7f),
        }
    }
}

/// Cuts a guest-provided string to [`MAX_TEXT`] bytes on a char boundary.
pub fn bounded(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape_is_stable() {
        let r = Request::Signal {
            container_id: "c1".into(),
            exec_id: None,
            signal: 15,
            all: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"signal","container_id":"c1","exec_id":null,"signal":15,"all":false}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }

    #[test]
    fn response_roundtrip() {
        for r in [
            Response::Ok(Reply::Created { pid: 12 }),
            Response::Err(AgentError::new(ErrorCode::NotFound, "no such container")),
        ] {
            let s = serde_json::to_vec(&r).unwrap();
            assert_eq!(serde_json::from_slice::<Response>(&s).unwrap(), r);
        }
    }

    #[test]
    fn hostile_json_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"event\":\"exited\"}",
            b"{\"event\":\"ready\",\"protocol_version\":-1}",
            b"[1,2,3]",
            b"\xff\xfe",
        ] {
            assert!(serde_json::from_slice::<Event>(bad).is_err());
        }
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(42).shell_code(), 42);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
        assert_eq!(ExitStatus::Code(256 + 3).shell_code(), 3);
    }

    #[test]
    fn bounded_cuts_on_char_boundary() {
        let s = "é".repeat(MAX_TEXT);
        let b = bounded(&s);
        assert!(b.len() <= MAX_TEXT);
        assert!(b.chars().all(|c| c == 'é'));
    }
}
