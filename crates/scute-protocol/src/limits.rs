//! Hard limits of the protocol. A peer that exceeds one is broken or hostile and
//! the connection is dropped.

/// Largest payload of a single frame (1 MiB). Stdio is chunked well below it.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Size of the stdio chunks each side sends (a frame carries at most this).
pub const STDIO_CHUNK: usize = 32 * 1024;

/// Most requests one side may have outstanding at once.
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// Longest string the host accepts from the guest in a field meant for humans
/// (error messages, versions). Longer ones are truncated before use.
pub const MAX_TEXT: usize = 4096;

/// Flow-control window of one stdio stream: bytes a sender may have in flight
/// before the receiver's Credit frames allow more. A peer that sends beyond it
/// is violating the protocol.
pub const STREAM_WINDOW: usize = 1 << 20;
