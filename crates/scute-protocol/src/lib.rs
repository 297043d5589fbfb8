//! The host↔guest protocol of scute: frames, messages and the limits both sides
//! enforce.
//!
//! One byte stream (a virtio-serial port) carries everything between the shim or
//! CLI on the host and `scute-agent` in the guest: request/response pairs matched
//! by id, unsolicited events, and the stdio of any number of processes, each on
//! its own stream id. The guest is untrusted: [`FrameDecoder`] never trusts a
//! length it has not checked against [`limits`], and every message is parsed
//! from a bounded payload.

pub mod frame;
pub mod limits;
pub mod message;

pub use frame::{encode, Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN};
pub use message::{
    AgentError, CgroupStats, CreateContainer, ErrorCode, Event, ExitStatus, Limits, NetInterface,
    NetRoute, NetworkConfig, Reply, Request, Response, StdioSpec, MAX_DNS_MESSAGE,
    PROTOCOL_VERSION,
};
