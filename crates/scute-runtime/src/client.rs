//! Host side of the agent channel: multiplexed requests, events and stdio
//! streams over QEMU's unix socket for the virtio-serial port.
//!
//! Everything read here comes from the untrusted guest: frames go through the
//! bounded [`FrameDecoder`], responses to unknown ids and data for unknown
//! streams are dropped, the number of outstanding requests is capped, and any
//! protocol violation closes the channel (failing every pending call).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scute_protocol::limits::{MAX_PENDING_REQUESTS, STDIO_CHUNK, STREAM_WINDOW};
use scute_protocol::{
    encode, CgroupStats, CreateContainer, Event, Frame, FrameDecoder, FrameKind, NetworkConfig,
    Reply, Request, Response, StdioSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::Error;

type Pending = HashMap<u32, oneshot::Sender<Response>>;

/// Removes its request from the pending table however the call ends.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().unwrap().remove(&self.id);
    }
}

/// How long the host waits for the agent's answer, per kind of request
/// (from the config's `*_timeout_secs`). Creating a container (libcontainer
/// under emulation) is the slow one; signals, deletes and queries must be
/// quick, since Kill and Delete of a container depend on them. Network
/// configuration is bounded by what is left of the boot deadline instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub create: Duration,
    pub start: Duration,
    pub other: Duration,
}

impl Deadlines {
    pub fn from_config(c: &crate::Config) -> Self {
        Self {
            create: Duration::from_secs(c.create_timeout_secs),
            start: Duration::from_secs(c.start_timeout_secs),
            other: Duration::from_secs(c.call_timeout_secs),
        }
    }

    pub fn of(&self, req: &Request) -> Duration {
        match req {
            Request::CreateContainer(_) => self.create,
            Request::StartContainer { .. } | Request::StartExec { .. } | Request::Exec { .. } => {
                self.start
            }
            Request::ConfigureNetwork(_) => self.start,
            Request::Signal { .. }
            | Request::DeleteContainer { .. }
            | Request::Pause { .. }
            | Request::Resume { .. }
            | Request::Pids { .. }
            | Request::Stats { .. }
            | Request::Update { .. }
            | Request::DnsRelay { .. }
            | Request::DnsAnswer { .. }
            | Request::ResizePty { .. }
            | Request::Connect { .. }
            | Request::DebugShell { .. }
            | Request::Ping => self.other,
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::from_config(&crate::Config::default())
    }
}

/// The request's name, for errors and logs.
pub fn op_name(req: &Request) -> &'static str {
    match req {
        Request::CreateContainer(_) => "create_container",
        Request::StartContainer { .. } => "start_container",
        Request::StartExec { .. } => "start_exec",
        Request::Exec { .. } => "exec",
        Request::ConfigureNetwork(_) => "configure_network",
        Request::Signal { .. } => "signal",
        Request::DeleteContainer { .. } => "delete_container",
        Request::Pause { .. } => "pause",
        Request::Resume { .. } => "resume",
        Request::Pids { .. } => "pids",
        Request::Stats { .. } => "stats",
        Request::Update { .. } => "update",
        Request::DnsRelay { .. } => "dns_relay",
        Request::DnsAnswer { .. } => "dns_answer",
        Request::ResizePty { .. } => "resize_pty",
        Request::Connect { .. } => "connect",
        Request::DebugShell { .. } => "debug_shell",
        Request::Ping => "ping",
    }
}

/// Events the host queues before it declares the guest a flood: a guest
/// sends one per process exit, and the shim consumes them as they come.
const MAX_QUEUED_EVENTS: usize = 1024;

/// Chunks one output stream queues before a new one is appended to the
/// last instead: with the byte window, what bounds a stream's memory
/// however small the guest cuts its data.
const MAX_QUEUED_CHUNKS: usize = 256;

/// A guest output stream's queue, bounded in entries
/// ([`MAX_QUEUED_CHUNKS`]) and, through the window, in bytes.
#[derive(Default)]
struct ChunkQueue {
    /// The chunks, and whether the stream has ended.
    state: Mutex<(std::collections::VecDeque<Vec<u8>>, bool)>,
    ready: tokio::sync::Notify,
}

impl ChunkQueue {
    fn push(&self, chunk: Vec<u8>) {
        {
            let mut s = self.state.lock().unwrap();
            if s.1 {
                return;
            }
            let full = s.0.len() >= MAX_QUEUED_CHUNKS;
            match s.0.back_mut() {
                Some(last) if full => last.extend_from_slice(&chunk),
                _ => s.0.push_back(chunk),
            }
        }
        self.ready.notify_one();
    }

    fn end(&self) {
        self.state.lock().unwrap().1 = true;
        self.ready.notify_one();
    }

    /// The next chunk; `None` once the queue is empty and ended.
    async fn pop(&self) -> Option<Vec<u8>> {
        loop {
            {
                let mut s = self.state.lock().unwrap();
                if let Some(c) = s.0.pop_front() {
                    return Some(c);
                }
                if s.1 {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().unwrap().0.len()
    }
}

/// Host end of a guest output stream: the queue and the bytes in it that
/// were not yet consumed (bounded by the window the guest must respect).
/// Dropping it (stream closed, forgotten, or the channel closed) ends the
/// queue.
struct OutSlot {
    queue: Arc<ChunkQueue>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for OutSlot {
    fn drop(&mut self) {
        self.queue.end();
    }
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    outputs: Mutex<HashMap<u32, OutSlot>>,
    /// Input stream id → bytes the guest lets us send.
    inputs: Mutex<HashMap<u32, Arc<Semaphore>>>,
    closed: Mutex<Option<ChannelClosed>>,
    /// Responses to requests nobody waits for (any more), for bounded logs.
    stray_responses: AtomicU64,
}

impl Shared {
    /// Closes the channel once, for `why`: every pending call fails with
    /// it, every output stream ends, every input stream refuses data.
    fn close(&self, why: ChannelClosed) {
        {
            let mut closed = self.closed.lock().unwrap();
            if closed.is_some() {
                return;
            }
            tracing::debug!("agent channel closed: {why}");
            *closed = Some(why);
        }
        self.pending.lock().unwrap().clear();
        self.outputs.lock().unwrap().clear();
        for (_, w) in self.inputs.lock().unwrap().drain() {
            w.close();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.lock().unwrap().is_some()
    }
}

/// Why the agent channel closed. Every call pending then, and every call
/// after, fails with [`Error::ChannelClosed`] and this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelClosed {
    #[error("bad frame from the guest: {0}")]
    BadFrame(String),
    #[error("malformed {what} from the guest: {detail}")]
    MalformedJson { what: &'static str, detail: String },
    #[error("stream {stream} exceeded its flow-control window ({bytes} bytes in flight)")]
    WindowExceeded { stream: u32, bytes: usize },
    #[error("stream {stream} was credited beyond its flow-control window")]
    CreditBeyondWindow { stream: u32 },
    #[error("stream {stream} got an empty data frame (only a close ends a stream)")]
    EmptyData { stream: u32 },
    #[error("the guest sent a request; only the host may")]
    GuestRequest,
    #[error("the guest sent {queued} events nobody consumed")]
    EventFlood { queued: usize },
    #[error("the guest closed the channel")]
    Eof,
    #[error("read from the guest: {0}")]
    ReadError(String),
    #[error("the guest agent answered none of {missed} liveness checks in a row ({every:?} each): the guest is hung")]
    Deadline { missed: u32, every: Duration },
    #[error("the connection was handed to another client")]
    Detached,
}

/// A guest output stream (a process's stdout or stderr). Each chunk is
/// credited back to the guest when the next one is asked for, i.e. once the
/// consumer has dealt with it: a slow consumer slows that stream only.
pub struct OutputStream {
    pub id: u32,
    queue: Arc<ChunkQueue>,
    in_flight: Arc<AtomicUsize>,
    client: AgentClient,
    unacked: u32,
}

impl Drop for OutputStream {
    /// Data the guest still sends for it is dropped, not queued.
    fn drop(&mut self) {
        self.client.shared.outputs.lock().unwrap().remove(&self.id);
    }
}

impl OutputStream {
    /// The next chunk; `None` at end of stream or when the channel closed.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        if self.unacked > 0 {
            let n = std::mem::take(&mut self.unacked);
            self.in_flight.fetch_sub(n as usize, Ordering::AcqRel);
            let _ = self.client.writer.send(Frame::credit(self.id, n)).await;
        }
        let chunk = self.queue.pop().await?;
        self.unacked = chunk.len() as u32;
        Some(chunk)
    }
}

#[derive(Clone)]
pub struct AgentClient {
    writer: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
    deadlines: Deadlines,
    /// Stops the reader and the writer and gives their halves back.
    tasks: Arc<Mutex<Option<Tasks>>>,
}

/// The connection's two tasks, which give their halves back when stopped.
struct Tasks {
    stop: tokio::sync::watch::Sender<bool>,
    reader: tokio::task::JoinHandle<Option<(tokio::net::unix::OwnedReadHalf, FrameDecoder)>>,
    writer: tokio::task::JoinHandle<tokio::net::unix::OwnedWriteHalf>,
}

impl AgentClient {
    /// Connects to QEMU's socket, waiting up to `timeout` for it to appear.
    /// Returns the client and the stream of guest events.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
        deadlines: Deadlines,
    ) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        let stream = connect_stream(path, timeout).await?;
        Ok(Self::from_stream(stream, deadlines))
    }

    fn from_stream(stream: UnixStream, deadlines: Deadlines) -> (Self, mpsc::Receiver<Event>) {
        Self::from_stream_with(stream, FrameDecoder::new(), deadlines)
    }

    /// A client on a stream whose first bytes were already read into `dec`
    /// (the boot's wait for the agent's Ready event, here or in the pool
    /// process that handed the connection over).
    pub fn from_stream_with(
        stream: UnixStream,
        dec: FrameDecoder,
        deadlines: Deadlines,
    ) -> (Self, mpsc::Receiver<Event>) {
        let (rd, mut wr) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Frame>(256);
        let (etx, erx) = mpsc::channel::<Event>(MAX_QUEUED_EVENTS);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared::default());
        let mut stop_writer = stopped.clone();
        let writer = tokio::spawn(async move {
            loop {
                // Frames already queued go out before a stop.
                let f = tokio::select! {
                    biased;
                    f = wrx.recv() => f,
                    _ = stop_writer.changed() => None,
                };
                let Some(f) = f else { return wr };
                let Ok(bytes) = encode(&f) else { continue };
                if wr.write_all(&bytes).await.is_err() {
                    return wr;
                }
            }
        });
        let sh = shared.clone();
        let reader = tokio::spawn(async move {
            let (why, back) = read_loop(rd, dec, &sh, &etx, stopped).await;
            sh.close(why);
            back
        });
        (
            Self {
                writer: wtx,
                shared,
                next_id: Arc::new(AtomicU32::new(1)),
                deadlines,
                tasks: Arc::new(Mutex::new(Some(Tasks {
                    stop,
                    reader,
                    writer,
                }))),
            },
            erx,
        )
    }

    /// Stops this client (and its clones) at a frame boundary and gives the
    /// connection back with the bytes read past the last frame, for another
    /// client to take over (a pool VM's warm-up, before the VM is handed to
    /// a shim). Every later call fails with [`ChannelClosed::Detached`].
    pub async fn detach(&self) -> Result<(UnixStream, FrameDecoder), Error> {
        let tasks = self.tasks.lock().unwrap().take();
        let Some(t) = tasks else {
            return Err(Error::ChannelClosed(ChannelClosed::Detached));
        };
        let _ = t.stop.send(true);
        let wr = t
            .writer
            .await
            .map_err(|e| Error::Host(format!("agent connection writer: {e}")))?;
        let back = t
            .reader
            .await
            .map_err(|e| Error::Host(format!("agent connection reader: {e}")))?;
        let Some((rd, dec)) = back else {
            return Err(self.closed_error());
        };
        let stream = rd
            .reunite(wr)
            .map_err(|e| Error::Host(format!("agent connection: {e}")))?;
        Ok((stream, dec))
    }

    fn closed_error(&self) -> Error {
        let why = self.shared.closed.lock().unwrap().clone();
        // A send that failed before the reader recorded why: the channel
        // is going down because the guest's end went away.
        Error::ChannelClosed(why.unwrap_or(ChannelClosed::Eof))
    }

    /// Why the channel closed, once it has.
    pub fn closed(&self) -> Option<ChannelClosed> {
        self.shared.closed.lock().unwrap().clone()
    }

    /// Sends `req` and waits for its response, at most its [`Deadlines`].
    async fn call(&self, req: &Request) -> Result<Reply, Error> {
        self.call_within(req, self.deadlines.of(req)).await
    }

    /// Pings the agent every `every` and resolves once it has missed
    /// `misses` pings in a row (each waited for `every` at most, so about
    /// `every × 2 × misses` of silence): the channel is then closed with
    /// [`ChannelClosed::Deadline`], failing every pending call at once, and
    /// that reason is returned. `None` when the channel closed otherwise:
    /// the VM is gone and its end is reported elsewhere.
    pub async fn unresponsive(&self, every: Duration, misses: u32) -> Option<ChannelClosed> {
        let mut missed = 0;
        loop {
            tokio::time::sleep(every).await;
            if self.shared.is_closed() {
                return None;
            }
            match self
                .call_within(&Request::Ping, every)
                .await
                .and_then(|r| done("ping", r))
            {
                Ok(()) => missed = 0,
                Err(Error::Deadline { .. }) => {
                    missed += 1;
                    tracing::warn!("guest agent missed liveness check {missed} of {misses}");
                    if missed >= misses.max(1) {
                        let why = ChannelClosed::Deadline { missed, every };
                        self.shared.close(why.clone());
                        return Some(why);
                    }
                }
                Err(_) if self.shared.is_closed() => return None,
                Err(e) => {
                    // An agent that answers a ping with an error or a
                    // wrong reply is not one to keep talking to.
                    tracing::warn!("liveness check failed: {e}");
                    let why = ChannelClosed::BadFrame(format!("liveness check: {e}"));
                    self.shared.close(why.clone());
                    return Some(why);
                }
            }
        }
    }

    /// Sends `req` and waits at most `within` for its response. Dropping the
    /// future (a cancelled ttrpc call) or running out of time removes the
    /// request from the pending table.
    async fn call_within(&self, req: &Request, within: Duration) -> Result<Reply, Error> {
        let payload = serde_json::to_vec(req)
            .map_err(|e| Error::Host(format!("encode {}: {e}", op_name(req))))?;
        if payload.len() > scute_protocol::limits::MAX_PAYLOAD {
            return Err(Error::RequestTooLarge {
                op: op_name(req),
                bytes: payload.len(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            // The closed check and the insert under one lock: the reader
            // clears `pending` under it after setting `closed`.
            let mut p = self.shared.pending.lock().unwrap();
            if self.shared.is_closed() {
                return Err(self.closed_error());
            }
            if p.len() >= MAX_PENDING_REQUESTS {
                return Err(Error::TooManyPending {
                    op: op_name(req),
                    limit: MAX_PENDING_REQUESTS,
                });
            }
            p.insert(id, tx);
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            id,
        };
        let exchange = async {
            if self
                .writer
                .send(Frame::new(FrameKind::Request, id, payload))
                .await
                .is_err()
            {
                return Err(self.closed_error());
            }
            rx.await.map_err(|_| self.closed_error())
        };
        let resp = match tokio::time::timeout(within, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Deadline {
                    op: op_name(req),
                    after: within,
                })
            }
        };
        match resp {
            Response::Ok(r) => Ok(r),
            Response::Err(e) => Err(Error::Agent(scute_protocol::AgentError::new(
                e.code,
                e.bounded_message(),
            ))),
        }
    }

    /// Creates (without starting) a container; its init's pid in the guest.
    pub async fn create_container(&self, c: CreateContainer) -> Result<u32, Error> {
        created(
            "create_container",
            self.call(&Request::CreateContainer(c)).await?,
        )
    }

    /// Starts a created container's init.
    pub async fn start_container(&self, container_id: &str) -> Result<(), Error> {
        let req = Request::StartContainer {
            container_id: container_id.to_owned(),
        };
        done("start_container", self.call(&req).await?)
    }

    /// Registers an exec (an OCI `process`) in a running container.
    pub async fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        process: serde_json::Value,
        stdio: StdioSpec,
    ) -> Result<(), Error> {
        let req = Request::Exec {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            process,
            stdio,
        };
        done("exec", self.call(&req).await?)
    }

    /// Starts a registered exec; its pid in the guest.
    pub async fn start_exec(&self, container_id: &str, exec_id: &str) -> Result<u32, Error> {
        let req = Request::StartExec {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        created("start_exec", self.call(&req).await?)
    }

    /// Signals a container's init (`exec_id` None), an exec, or with `all`
    /// every process of the container.
    pub async fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), Error> {
        let req = Request::Signal {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            signal,
            all,
        };
        done("signal", self.call(&req).await?)
    }

    /// Removes a container from the guest, killing what is left of it
    /// when `force`.
    pub async fn delete_container(&self, container_id: &str, force: bool) -> Result<(), Error> {
        let req = Request::DeleteContainer {
            container_id: container_id.to_owned(),
            force,
        };
        done("delete_container", self.call(&req).await?)
    }

    /// Freezes every process of a container.
    pub async fn pause(&self, container_id: &str) -> Result<(), Error> {
        let req = Request::Pause {
            container_id: container_id.to_owned(),
        };
        done("pause", self.call(&req).await?)
    }

    /// New cgroup limits for a running container.
    pub async fn update(
        &self,
        container_id: &str,
        limits: scute_protocol::Limits,
    ) -> Result<(), Error> {
        let req = Request::Update {
            container_id: container_id.to_owned(),
            limits,
        };
        done("update", self.call(&req).await?)
    }

    /// Has the agent answer DNS queries to `address` in the guest by
    /// relaying them to this host ([`Event::DnsQuery`]).
    pub async fn dns_relay(&self, address: std::net::Ipv4Addr) -> Result<(), Error> {
        done(
            "dns_relay",
            self.call(&Request::DnsRelay { address }).await?,
        )
    }

    /// The answer to the guest's DNS query `id`.
    pub async fn dns_answer(&self, id: u32, answer: Vec<u8>) -> Result<(), Error> {
        done(
            "dns_answer",
            self.call(&Request::DnsAnswer { id, answer }).await?,
        )
    }

    /// Thaws a paused container.
    pub async fn resume(&self, container_id: &str) -> Result<(), Error> {
        let req = Request::Resume {
            container_id: container_id.to_owned(),
        };
        done("resume", self.call(&req).await?)
    }

    /// The guest pids of a container's processes (each checked positive).
    pub async fn pids(&self, container_id: &str) -> Result<Vec<u32>, Error> {
        let req = Request::Pids {
            container_id: container_id.to_owned(),
        };
        match self.call(&req).await? {
            Reply::Pids { pids } if pids.iter().all(|p| *p > 0) => {
                Ok(pids.into_iter().map(|p| p as u32).collect())
            }
            other => Err(unexpected("pids", other)),
        }
    }

    /// A container's cgroup figures.
    pub async fn stats(&self, container_id: &str) -> Result<CgroupStats, Error> {
        let req = Request::Stats {
            container_id: container_id.to_owned(),
        };
        match self.call(&req).await? {
            Reply::Stats(s) => Ok(s),
            other => Err(unexpected("stats", other)),
        }
    }

    /// Sets the terminal size of a process that has one.
    pub async fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        width: u16,
        height: u16,
    ) -> Result<(), Error> {
        let req = Request::ResizePty {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            width,
            height,
        };
        done("resize_pty", self.call(&req).await?)
    }

    /// Opens a TCP connection to `127.0.0.1:port` in the guest and relays
    /// it both ways with `conn` until each direction has ended: what CRI
    /// PortForward needs. Fails (with nothing left open) when the guest
    /// can't connect.
    pub async fn forward<S>(&self, port: u16, conn: S) -> Result<(), Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let output = self.open_output();
        let input = self.open_input();
        let req = Request::Connect {
            port,
            input,
            output: output.id,
        };
        if let Err(e) = self.call(&req).await.and_then(|r| done("connect", r)) {
            self.shared.inputs.lock().unwrap().remove(&input);
            return Err(e);
        }
        self.relay(input, output, conn).await;
        Ok(())
    }

    /// Runs the operator's debug shell in the guest on a terminal of
    /// `width` x `height`, relayed with `conn` until the shell's terminal
    /// closes; its guest pid. Fails when the guest has no shell to run.
    pub async fn debug_shell<S>(
        &self,
        width: u16,
        height: u16,
        conn: S,
        started: impl FnOnce(u32),
    ) -> Result<(), Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let output = self.open_output();
        let input = self.open_input();
        let req = Request::DebugShell {
            stdio: StdioSpec {
                stdin: Some(input),
                stdout: Some(output.id),
                stderr: None,
                terminal: true,
            },
            width,
            height,
        };
        match self
            .call(&req)
            .await
            .and_then(|r| created("debug_shell", r))
        {
            Ok(pid) => started(pid),
            Err(e) => {
                self.shared.inputs.lock().unwrap().remove(&input);
                return Err(e);
            }
        }
        self.relay(input, output, conn).await;
        Ok(())
    }

    /// Relays `conn` with a guest input and output stream until both
    /// directions have ended.
    async fn relay<S>(&self, input: u32, output: OutputStream, conn: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (rd, mut wr) = tokio::io::split(conn);
        let up = tokio::spawn(pump_input(self.clone(), input, rd));
        // The guest's side ended: half-close ours.
        pump_output(output, &mut wr).await;
        let _ = wr.shutdown().await;
        // A lost channel ends every output: nothing more can go up either,
        // so stop reading the caller's side (it may never close).
        if self.closed().is_some() {
            up.abort();
        }
        let _ = up.await;
    }

    /// Configures the guest's NICs, waiting at most `within` (what is left
    /// of the boot deadline).
    pub async fn configure_network(
        &self,
        config: NetworkConfig,
        within: Duration,
    ) -> Result<(), Error> {
        let req = Request::ConfigureNetwork(config);
        done("configure_network", self.call_within(&req, within).await?)
    }

    /// A new stream the guest writes to (a process's stdout or stderr).
    pub fn open_output(&self) -> OutputStream {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(ChunkQueue::default());
        let in_flight = Arc::new(AtomicUsize::new(0));
        self.shared.outputs.lock().unwrap().insert(
            id,
            OutSlot {
                queue: queue.clone(),
                in_flight: in_flight.clone(),
            },
        );
        OutputStream {
            id,
            queue,
            in_flight,
            client: self.clone(),
            unacked: 0,
        }
    }

    /// A new stream the host writes to (a process's stdin).
    pub fn open_input(&self) -> u32 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared
            .inputs
            .lock()
            .unwrap()
            .insert(id, Arc::new(Semaphore::new(STREAM_WINDOW)));
        id
    }

    /// Sends stdin bytes on `stream`, chunked, within the guest's window: it
    /// waits while the process doesn't read, without blocking anything else.
    pub async fn send_data(&self, stream: u32, data: &[u8]) -> Result<(), Error> {
        let window = self.shared.inputs.lock().unwrap().get(&stream).cloned();
        let Some(window) = window else {
            return Err(Error::Host(format!(
                "stream {stream} is not open for input"
            )));
        };
        for chunk in data.chunks(STDIO_CHUNK) {
            window
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| self.closed_error())?
                .forget();
            self.writer
                .send(Frame::new(FrameKind::Data, stream, chunk.to_vec()))
                .await
                .map_err(|_| self.closed_error())?;
        }
        Ok(())
    }

    /// Closes the guest's end of an input stream (EOF on the process's stdin).
    pub async fn close_stream(&self, stream: u32) -> Result<(), Error> {
        self.shared.inputs.lock().unwrap().remove(&stream);
        self.writer
            .send(Frame::new(FrameKind::Close, stream, Vec::new()))
            .await
            .map_err(|_| self.closed_error())
    }

    /// Forgets an output stream whose data nobody will read any more.
    pub fn drop_output(&self, stream: u32) {
        self.shared.outputs.lock().unwrap().remove(&stream);
    }
}

fn unexpected(op: &'static str, reply: Reply) -> Error {
    Error::UnexpectedReply {
        op,
        reply: Box::new(reply),
    }
}

fn done(op: &'static str, reply: Reply) -> Result<(), Error> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(unexpected(op, other)),
    }
}

/// A `Created` reply's pid, which must be a real one.
fn created(op: &'static str, reply: Reply) -> Result<u32, Error> {
    match reply {
        Reply::Created { pid } if pid > 0 => Ok(pid as u32),
        other => Err(unexpected(op, other)),
    }
}

/// Copies a guest output stream into `sink` until the stream ends. If the sink
/// fails (nobody reads any more) the stream is still drained, so the process
/// writing it isn't stuck on its flow-control window.
pub async fn pump_output<W: tokio::io::AsyncWrite + Unpin>(mut stream: OutputStream, mut sink: W) {
    while let Some(chunk) = stream.next().await {
        if sink.write_all(&chunk).await.is_err() {
            while stream.next().await.is_some() {}
            break;
        }
        let _ = sink.flush().await;
    }
}

/// Copies `src` into the guest input stream `stream`, then closes it (EOF).
pub async fn pump_input<R: tokio::io::AsyncRead + Unpin>(
    client: AgentClient,
    stream: u32,
    mut src: R,
) {
    // Aborted (the process is gone), it forgets the stream all the same.
    struct Forget(AgentClient, u32);
    impl Drop for Forget {
        fn drop(&mut self) {
            self.0.shared.inputs.lock().unwrap().remove(&self.1);
        }
    }
    let _forget = Forget(client.clone(), stream);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.send_data(stream, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = client.close_stream(stream).await;
}

/// Connects to QEMU's agent socket, waiting up to `timeout` for it to appear.
pub async fn connect_stream(path: &Path, timeout: Duration) -> Result<UnixStream, Error> {
    let start = tokio::time::Instant::now();
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() < timeout => {
                tracing::trace!("agent socket not ready: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(Error::io(format!("connect {}", path.display()))(e)),
        }
    }
}

/// Reads and routes frames until the channel ends (why) or `stop` is set
/// (why, and the read half with the bytes past the last whole frame).
async fn read_loop(
    mut rd: tokio::net::unix::OwnedReadHalf,
    mut dec: FrameDecoder,
    sh: &Shared,
    events: &mpsc::Sender<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (
    ChannelClosed,
    Option<(tokio::net::unix::OwnedReadHalf, FrameDecoder)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return (ChannelClosed::BadFrame(e.to_string()), None),
            };
            if let Err(why) = dispatch(frame, sh, events) {
                return (why, None);
            }
        }
        // A read cancelled by the stop has consumed nothing.
        let n = tokio::select! {
            r = rd.read(&mut buf) => r,
            _ = stop.changed() => return (ChannelClosed::Detached, Some((rd, dec))),
        };
        match n {
            Ok(0) => return (ChannelClosed::Eof, None),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) => return (ChannelClosed::ReadError(e.to_string()), None),
        }
    }
}

/// Routes one frame. An error ends the connection. Never waits: a consumer
/// that doesn't keep up must not hold back the responses behind its frame.
fn dispatch(f: Frame, sh: &Shared, events: &mpsc::Sender<Event>) -> Result<(), ChannelClosed> {
    let malformed = |what| {
        move |e: serde_json::Error| ChannelClosed::MalformedJson {
            what,
            detail: e.to_string(),
        }
    };
    match f.kind {
        FrameKind::Response => {
            let resp: Response =
                serde_json::from_slice(&f.payload).map_err(malformed("response"))?;
            let waiter = sh.pending.lock().unwrap().remove(&f.stream);
            match waiter {
                Some(w) => {
                    let _ = w.send(resp);
                }
                None => stray_response(sh, f.stream),
            }
        }
        FrameKind::Event => {
            let ev: Event = serde_json::from_slice(&f.payload).map_err(malformed("event"))?;
            match events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!("event dropped: nobody listens")
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(ChannelClosed::EventFlood {
                        queued: MAX_QUEUED_EVENTS,
                    })
                }
            }
        }
        FrameKind::Data => {
            // It costs the guest a header and the host a queue entry.
            if f.payload.is_empty() {
                return Err(ChannelClosed::EmptyData { stream: f.stream });
            }
            let outputs = sh.outputs.lock().unwrap();
            if let Some(slot) = outputs.get(&f.stream) {
                let total =
                    slot.in_flight.fetch_add(f.payload.len(), Ordering::AcqRel) + f.payload.len();
                if total > STREAM_WINDOW {
                    return Err(ChannelClosed::WindowExceeded {
                        stream: f.stream,
                        bytes: total,
                    });
                }
                slot.queue.push(f.payload);
            }
        }
        FrameKind::Close => {
            // Dropping the slot ends its queue.
            sh.outputs.lock().unwrap().remove(&f.stream);
        }
        FrameKind::Credit => {
            let n = f
                .credit_bytes()
                .ok_or_else(|| ChannelClosed::BadFrame("malformed credit frame".into()))?
                as usize;
            if let Some(w) = sh.inputs.lock().unwrap().get(&f.stream) {
                if w.available_permits() + n > STREAM_WINDOW {
                    return Err(ChannelClosed::CreditBeyondWindow { stream: f.stream });
                }
                w.add_permits(n);
            }
        }
        FrameKind::Request => return Err(ChannelClosed::GuestRequest),
    }
    Ok(())
}

/// A response nobody waits for: one a timed-out or cancelled call gave up
/// on, or a guest answering ids it was never sent. Logged on the 1st,
/// 2nd, 4th, 8th, … occurrence, so a flood can't flood the log.
fn stray_response(sh: &Shared, id: u32) {
    let n = sh.stray_responses.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(
            id,
            total = n,
            "response to a request nobody waits for dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scute_protocol::{ErrorCode, FrameKind};

    async fn pair() -> (AgentClient, mpsc::Receiver<Event>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, e) = AgentClient::from_stream(a, Deadlines::default());
        (c, e, b)
    }

    async fn read_frame(s: &mut UnixStream) -> Frame {
        // One byte at a time: never consume bytes of the next frame.
        let mut dec = FrameDecoder::new();
        let mut buf = [0u8; 1];
        loop {
            if let Some(f) = dec.next_frame().unwrap() {
                return f;
            }
            let n = s.read(&mut buf).await.unwrap();
            dec.push(&buf[..n]);
        }
    }

    fn json_frame<T: serde::Serialize>(kind: FrameKind, id: u32, v: &T) -> Vec<u8> {
        encode(&Frame::new(kind, id, serde_json::to_vec(v).unwrap())).unwrap()
    }

    #[tokio::test]
    async fn concurrent_calls_are_matched_by_id() {
        let (c, _e, mut guest) = pair().await;
        let c2 = c.clone();
        let a = tokio::spawn(async move {
            c.call(&Request::StartContainer {
                container_id: "a".into(),
            })
            .await
        });
        let b = tokio::spawn(async move {
            c2.call(&Request::StartContainer {
                container_id: "b".into(),
            })
            .await
        });
        let f1 = read_frame(&mut guest).await;
        let f2 = read_frame(&mut guest).await;
        // Answer in reverse order, each with a distinguishable reply.
        for (f, pid) in [(&f2, 2), (&f1, 1)] {
            let req: Request = serde_json::from_slice(&f.payload).unwrap();
            let pid = match req {
                Request::StartContainer { container_id } if container_id == "a" => 100 + pid,
                _ => 200 + pid,
            };
            guest
                .write_all(&json_frame(
                    FrameKind::Response,
                    f.stream,
                    &Response::Ok(Reply::Created { pid }),
                ))
                .await
                .unwrap();
        }
        let ra = a.await.unwrap().unwrap();
        let rb = b.await.unwrap().unwrap();
        assert!(matches!(ra, Reply::Created { pid } if pid > 100 && pid < 200));
        assert!(matches!(rb, Reply::Created { pid } if pid > 200));
    }

    #[tokio::test]
    async fn hostile_length_closes_channel_and_fails_pending_calls() {
        let (c, _e, mut guest) = pair().await;
        let call = tokio::spawn(async move {
            c.call(&Request::StartContainer {
                container_id: "x".into(),
            })
            .await
        });
        let _ = read_frame(&mut guest).await;
        guest
            .write_all(&[0x7f, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0, 0, 1])
            .await
            .unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::ChannelClosed(ChannelClosed::BadFrame(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn guest_requests_garbage_json_and_empty_data_close_the_channel() {
        for (bad, why) in [
            (
                encode(&Frame::new(FrameKind::Request, 1, b"{}".to_vec())).unwrap(),
                ChannelClosed::GuestRequest,
            ),
            (
                encode(&Frame::new(FrameKind::Event, 0, b"not json".to_vec())).unwrap(),
                ChannelClosed::MalformedJson {
                    what: "event",
                    detail: "expected ident at line 1 column 2".into(),
                },
            ),
            // Free for the guest, a queue entry for the host: refused.
            (
                encode(&Frame::new(FrameKind::Data, 7, Vec::new())).unwrap(),
                ChannelClosed::EmptyData { stream: 7 },
            ),
        ] {
            let (c, _e, mut guest) = pair().await;
            guest.write_all(&bad).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let err = c
                .call(&Request::StartContainer {
                    container_id: "x".into(),
                })
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::ChannelClosed(w) if *w == why),
                "{err}"
            );
            assert_eq!(c.closed(), Some(why));
        }
    }

    #[tokio::test]
    async fn stream_data_routed_and_unknown_streams_ignored() {
        let (c, _e, mut guest) = pair().await;
        let mut out = c.open_output();
        let id = out.id;
        guest
            .write_all(&encode(&Frame::new(FrameKind::Data, 9999, b"lost".to_vec())).unwrap())
            .await
            .unwrap();
        guest
            .write_all(&encode(&Frame::new(FrameKind::Data, id, b"hello".to_vec())).unwrap())
            .await
            .unwrap();
        guest
            .write_all(&encode(&Frame::new(FrameKind::Close, id, vec![])).unwrap())
            .await
            .unwrap();
        assert_eq!(out.next().await, Some(b"hello".to_vec()));
        assert_eq!(out.next().await, None);
        // The consumed chunk was credited back to the guest.
        let credit = read_frame(&mut guest).await;
        assert_eq!(credit.kind, FrameKind::Credit);
        assert_eq!((credit.stream, credit.credit_bytes()), (id, Some(5)));
    }

    #[tokio::test]
    async fn guest_exceeding_the_window_is_cut_off() {
        let (c, _e, mut guest) = pair().await;
        let out = c.open_output();
        let chunk = vec![0u8; 512 * 1024];
        for _ in 0..3 {
            let f = encode(&Frame::new(FrameKind::Data, out.id, chunk.clone())).unwrap();
            if guest.write_all(&f).await.is_err() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = c
            .call(&Request::StartContainer {
                container_id: "x".into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ChannelClosed(ChannelClosed::WindowExceeded { bytes, .. }) if bytes > STREAM_WINDOW
            ),
            "{err}"
        );
    }

    /// A stalled consumer and a guest cutting its data into 1-byte frames:
    /// the queue holds at most its entry bound, and nothing is lost.
    #[tokio::test]
    async fn tiny_frames_are_merged_past_the_entry_bound() {
        let (c, _e, mut guest) = pair().await;
        let mut out = c.open_output();
        let mut all = Vec::new();
        for i in 0..10_000u32 {
            all.extend(encode(&Frame::new(FrameKind::Data, out.id, vec![i as u8])).unwrap());
        }
        guest.write_all(&all).await.unwrap();
        let t = std::time::Instant::now();
        while out.in_flight.load(Ordering::Acquire) < 10_000 {
            assert!(t.elapsed() < Duration::from_secs(10), "frames not read");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(out.queue.len() <= MAX_QUEUED_CHUNKS, "{}", out.queue.len());
        let mut got = Vec::new();
        while got.len() < 10_000 {
            got.extend(out.next().await.unwrap());
        }
        let want: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn stdin_waits_for_guest_credit() {
        let (c, _e, mut guest) = pair().await;
        let id = c.open_input();
        let c2 = c.clone();
        let big = vec![1u8; STREAM_WINDOW + 10];
        let send = tokio::spawn(async move { c2.send_data(id, &big).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!send.is_finished(), "sent beyond the window without credit");
        guest
            .write_all(&encode(&Frame::credit(id, 64 * 1024)).unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), send)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn forward_relays_both_ways_and_half_closes() {
        let (c, _e, mut guest) = pair().await;
        let (conn, mut user) = tokio::io::duplex(64 * 1024);
        let fwd = tokio::spawn({
            let c = c.clone();
            async move { c.forward(8080, conn).await }
        });
        let req = answer(&mut guest, Response::Ok(Reply::Done)).await;
        let Request::Connect {
            port: 8080,
            input,
            output,
        } = req
        else {
            panic!("not a connect: {req:?}")
        };
        // user → guest, on the input stream; then the user's EOF closes it.
        user.write_all(b"GET /").await.unwrap();
        let f = read_frame(&mut guest).await;
        assert_eq!(
            (f.kind, f.stream, &f.payload[..]),
            (FrameKind::Data, input, &b"GET /"[..])
        );
        let (mut rd, mut wr) = tokio::io::split(user);
        wr.shutdown().await.unwrap();
        let f = read_frame(&mut guest).await;
        assert_eq!((f.kind, f.stream), (FrameKind::Close, input));
        // guest → user, on the output stream; its Close is the user's EOF.
        guest
            .write_all(&encode(&Frame::new(FrameKind::Data, output, b"200 OK".to_vec())).unwrap())
            .await
            .unwrap();
        guest
            .write_all(&encode(&Frame::new(FrameKind::Close, output, Vec::new())).unwrap())
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"200 OK");
        tokio::time::timeout(Duration::from_secs(5), fwd)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(c.shared.inputs.lock().unwrap().is_empty());
        assert!(c.shared.outputs.lock().unwrap().is_empty());
    }

    /// A hostile guest floods a forwarded connection past its window: the
    /// channel is cut, the forward ends (no hang) and the user's side
    /// reads EOF after at most a window's worth.
    #[tokio::test]
    async fn a_guest_flooding_a_forward_is_cut_off() {
        let (c, _e, mut guest) = pair().await;
        let (conn, mut user) = tokio::io::duplex(64 * 1024);
        let fwd = tokio::spawn({
            let c = c.clone();
            async move { c.forward(80, conn).await }
        });
        let Request::Connect { output, .. } = answer(&mut guest, Response::Ok(Reply::Done)).await
        else {
            panic!("not a connect")
        };
        let chunk = vec![7u8; 512 * 1024];
        for _ in 0..3 {
            let f = encode(&Frame::new(FrameKind::Data, output, chunk.clone())).unwrap();
            if guest.write_all(&f).await.is_err() {
                break;
            }
        }
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), user.read_to_end(&mut got))
            .await
            .expect("the user's side ends")
            .unwrap();
        assert!(got.len() <= STREAM_WINDOW, "{} bytes passed", got.len());
        tokio::time::timeout(Duration::from_secs(5), fwd)
            .await
            .expect("the forward ends")
            .unwrap()
            .unwrap();
        assert!(matches!(
            c.closed(),
            Some(ChannelClosed::WindowExceeded { .. })
        ));
    }

    /// A guest answering DebugShell with anything but a real pid gets an
    /// error, and no stream stays open for it.
    #[tokio::test]
    async fn a_debug_shell_without_a_pid_is_refused() {
        let (c, _e, mut guest) = pair().await;
        let (conn, _user) = tokio::io::duplex(1024);
        let shell = tokio::spawn({
            let c = c.clone();
            async move { c.debug_shell(80, 24, conn, |_| panic!("started")).await }
        });
        answer(&mut guest, Response::Ok(Reply::Created { pid: 0 })).await;
        let e = shell.await.unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnexpectedReply {
                    op: "debug_shell",
                    ..
                }
            ),
            "{e}"
        );
        assert!(c.shared.inputs.lock().unwrap().is_empty());
        assert!(c.shared.outputs.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refused_forward_leaves_no_stream() {
        let (c, _e, mut guest) = pair().await;
        let (conn, _user) = tokio::io::duplex(1024);
        let fwd = tokio::spawn({
            let c = c.clone();
            async move { c.forward(9, conn).await }
        });
        let refused =
            scute_protocol::AgentError::new(ErrorCode::FailedPrecondition, "connection refused");
        answer(&mut guest, Response::Err(refused)).await;
        let e = fwd.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(c.shared.inputs.lock().unwrap().is_empty());
        assert!(c.shared.outputs.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn agent_errors_keep_their_code_and_are_bounded() {
        let (c, _e, mut guest) = pair().await;
        let call = tokio::spawn(async move {
            c.call(&Request::StartContainer {
                container_id: "x".into(),
            })
            .await
        });
        let f = read_frame(&mut guest).await;
        let long = "x".repeat(100_000);
        let resp = Response::Err(scute_protocol::AgentError::new(ErrorCode::NotFound, long));
        guest
            .write_all(&json_frame(FrameKind::Response, f.stream, &resp))
            .await
            .unwrap();
        match call.await.unwrap() {
            Err(Error::Agent(e)) => {
                assert_eq!(e.code, ErrorCode::NotFound);
                assert!(e.message.len() <= scute_protocol::limits::MAX_TEXT);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn pending_len(c: &AgentClient) -> usize {
        c.shared.pending.lock().unwrap().len()
    }

    #[tokio::test]
    async fn a_silent_guest_hits_the_deadline_and_leaves_no_pending_entry() {
        let (c, _e, _guest) = pair().await;
        let req = Request::Signal {
            container_id: "x".into(),
            exec_id: None,
            signal: 9,
            all: true,
        };
        let err = c
            .call_within(&req, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Deadline { op: "signal", .. }), "{err}");
        assert_eq!(pending_len(&c), 0);
    }

    #[tokio::test]
    async fn a_cancelled_call_leaves_no_pending_entry() {
        let (c, _e, mut guest) = pair().await;
        let c2 = c.clone();
        let call = tokio::spawn(async move {
            c2.call(&Request::Pids {
                container_id: "x".into(),
            })
            .await
        });
        let _ = read_frame(&mut guest).await;
        assert_eq!(pending_len(&c), 1);
        call.abort();
        let _ = call.await;
        assert_eq!(pending_len(&c), 0, "the dropped call's entry is gone");
    }

    #[tokio::test]
    async fn an_oversized_request_fails_at_once() {
        let (c, _e, _guest) = pair().await;
        let err = c
            .call(&Request::Exec {
                container_id: "x".into(),
                exec_id: "e".into(),
                process: serde_json::json!({"args": ["x".repeat(2 << 20)]}),
                stdio: Default::default(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::RequestTooLarge { op: "exec", bytes } if bytes > 2 << 20),
            "{err}"
        );
        assert_eq!(pending_len(&c), 0);
    }

    /// Reads one request from the fake guest and answers it with `resp`.
    async fn answer(guest: &mut UnixStream, resp: Response) -> Request {
        let f = read_frame(guest).await;
        guest
            .write_all(&json_frame(FrameKind::Response, f.stream, &resp))
            .await
            .unwrap();
        serde_json::from_slice(&f.payload).unwrap()
    }

    #[tokio::test]
    async fn a_detached_connection_keeps_the_bytes_past_the_last_frame() {
        let (c, mut events, mut guest) = pair().await;
        let call = {
            let c = c.clone();
            tokio::spawn(async move { c.start_container("w").await })
        };
        answer(&mut guest, Response::Ok(Reply::Done)).await;
        call.await.unwrap().unwrap();
        // An event, then the first half of the next frame.
        let ev = Event::Exited {
            container_id: "w".into(),
            exec_id: None,
            pid: 7,
            status: scute_protocol::ExitStatus::Code(0),
        };
        guest
            .write_all(&json_frame(FrameKind::Event, 0, &ev))
            .await
            .unwrap();
        assert!(matches!(
            events.recv().await,
            Some(Event::Exited { pid: 7, .. })
        ));
        let next = json_frame(FrameKind::Event, 0, &ev);
        guest.write_all(&next[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (stream, dec) = c.detach().await.unwrap();
        assert_eq!(dec.into_buffered(), next[..5]);
        assert!(matches!(
            c.start_container("w").await,
            Err(Error::ChannelClosed(ChannelClosed::Detached))
        ));
        assert!(c.detach().await.is_err(), "detached once");
        // The next client reads on from there.
        let mut dec = FrameDecoder::new();
        dec.push(&next[..5]);
        let (c2, mut events2) = AgentClient::from_stream_with(stream, dec, Deadlines::default());
        guest.write_all(&next[5..]).await.unwrap();
        assert!(matches!(
            events2.recv().await,
            Some(Event::Exited { pid: 7, .. })
        ));
        drop(c2);
    }

    /// A guest that breaks the protocol before the handover gets no
    /// handover: detach fails with why the channel closed, and no bytes of
    /// its go to the next client.
    #[tokio::test]
    async fn a_hostile_guest_before_detach_hands_nothing_over() {
        for hostile in [
            // A header claiming 4 GiB of payload.
            vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
            // An event frame that is no JSON.
            encode(&Frame::new(FrameKind::Event, 0, b"\xff\xfe{".to_vec())).unwrap(),
        ] {
            let (c, _events, mut guest) = pair().await;
            guest.write_all(&hostile).await.unwrap();
            let t = std::time::Instant::now();
            while c.closed().is_none() && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match c.detach().await {
                Err(Error::ChannelClosed(why)) => {
                    assert_ne!(why, ChannelClosed::Detached, "{why}")
                }
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => panic!("a broken channel was handed over"),
            }
        }
    }

    #[tokio::test]
    async fn typed_calls_check_the_reply_they_get() {
        let (c, _e, mut guest) = pair().await;
        let spec = || CreateContainer {
            container_id: "x".into(),
            spec: serde_json::json!({}),
            stdio: Default::default(),
        };
        let cases: Vec<(Reply, &str)> = vec![
            (Reply::Created { pid: 5 }, "start_container"),
            (Reply::Created { pid: 0 }, "create_container"),
            (Reply::Created { pid: -3 }, "start_exec"),
            (Reply::Pids { pids: vec![7, -1] }, "pids"),
            (Reply::Pids { pids: vec![] }, "stats"),
            (Reply::Done, "create_container"),
        ];
        for (reply, op) in cases {
            let c2 = c.clone();
            let call = tokio::spawn(async move {
                match op {
                    "start_container" => c2.start_container("x").await.map(|_| ()),
                    "create_container" => c2.create_container(spec()).await.map(|_| ()),
                    "start_exec" => c2.start_exec("x", "e").await.map(|_| ()),
                    "pids" => c2.pids("x").await.map(|_| ()),
                    _ => c2.stats("x").await.map(|_| ()),
                }
            });
            answer(&mut guest, Response::Ok(reply.clone())).await;
            match call.await.unwrap() {
                Err(Error::UnexpectedReply { op: o, reply: r }) => {
                    assert_eq!((o, *r), (op, reply));
                }
                other => panic!("{op}: {other:?}"),
            }
        }
        // And the right replies come through typed.
        let c2 = c.clone();
        let call = tokio::spawn(async move { c2.create_container(spec()).await });
        answer(&mut guest, Response::Ok(Reply::Created { pid: 42 })).await;
        assert_eq!(call.await.unwrap().unwrap(), 42);
        let c2 = c.clone();
        let call = tokio::spawn(async move { c2.pids("x").await });
        answer(&mut guest, Response::Ok(Reply::Pids { pids: vec![1, 9] })).await;
        assert_eq!(call.await.unwrap().unwrap(), vec![1, 9]);
    }

    #[tokio::test]
    async fn missed_liveness_checks_close_the_channel_and_fail_pending_calls() {
        let (c, _e, mut guest) = pair().await;
        let c2 = c.clone();
        // A create waits up to 60 s; the hung guest must not make it wait that long.
        let create = tokio::spawn(async move {
            c2.create_container(CreateContainer {
                container_id: "x".into(),
                spec: serde_json::json!({}),
                stdio: Default::default(),
            })
            .await
        });
        let _ = read_frame(&mut guest).await;
        let why = tokio::time::timeout(
            Duration::from_secs(5),
            c.unresponsive(Duration::from_millis(50), 2),
        )
        .await
        .unwrap();
        assert!(
            matches!(why, Some(ChannelClosed::Deadline { missed: 2, .. })),
            "{why:?}"
        );
        let err = tokio::time::timeout(Duration::from_secs(1), create)
            .await
            .expect("the pending create failed at once")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, Error::ChannelClosed(ChannelClosed::Deadline { .. })),
            "{err}"
        );
        // The guest waking up later changes nothing: the reason stays.
        drop(guest);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(c.closed(), Some(ChannelClosed::Deadline { .. })));
    }

    fn exited(n: usize) -> Event {
        Event::Exited {
            container_id: format!("c{n}"),
            exec_id: None,
            pid: 1,
            status: scute_protocol::ExitStatus::Code(0),
        }
    }

    #[tokio::test]
    async fn unread_events_do_not_hold_back_responses() {
        let (c, _events, mut guest) = pair().await;
        let c2 = c.clone();
        let call = tokio::spawn(async move { c2.start_container("x").await });
        let f = read_frame(&mut guest).await;
        for n in 0..100 {
            guest
                .write_all(&json_frame(FrameKind::Event, 0, &exited(n)))
                .await
                .unwrap();
        }
        guest
            .write_all(&json_frame(
                FrameKind::Response,
                f.stream,
                &Response::Ok(Reply::Done),
            ))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the response behind 100 unread events arrived")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_event_flood_closes_the_channel() {
        let (c, _events, mut guest) = pair().await;
        for n in 0..=MAX_QUEUED_EVENTS {
            if guest
                .write_all(&json_frame(FrameKind::Event, 0, &exited(n)))
                .await
                .is_err()
            {
                break;
            }
        }
        // The reader parses every event first: as long as that takes.
        let t = std::time::Instant::now();
        while c.closed().is_none() && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            c.closed(),
            Some(ChannelClosed::EventFlood {
                queued: MAX_QUEUED_EVENTS
            })
        );
    }

    /// Counts what is logged, to bound the log volume a guest can cause.
    struct CountingSubscriber(Arc<AtomicUsize>);

    impl tracing::Subscriber for CountingSubscriber {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            if *e.metadata().level() <= tracing::Level::INFO {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// A fake agent misbehaving in the ways a compromised guest can: it
    /// sends `n` frames made by `frame(i)`, then answers the next request.
    async fn flood_then_answer(
        guest: &mut UnixStream,
        n: u32,
        frame: impl Fn(u32) -> Vec<u8>,
    ) -> Duration {
        let mut batch = Vec::new();
        for i in 0..n {
            batch.extend_from_slice(&frame(i));
            if batch.len() > 256 * 1024 || i + 1 == n {
                guest.write_all(&batch).await.unwrap();
                batch.clear();
            }
        }
        let t = tokio::time::Instant::now();
        answer(guest, Response::Ok(Reply::Done)).await;
        t.elapsed()
    }

    #[tokio::test]
    async fn a_million_stray_responses_stay_within_memory_and_log_bounds() {
        let logged = Arc::new(AtomicUsize::new(0));
        let _sub = tracing::subscriber::set_default(CountingSubscriber(logged.clone()));
        let (c, _e, mut guest) = pair().await;
        let before = rss_kib();
        let done = serde_json::to_vec(&Response::Ok(Reply::Done)).unwrap();
        let c2 = c.clone();
        let flood = tokio::spawn(async move {
            flood_then_answer(&mut guest, 1_000_000, |i| {
                // Ids the host never used (it counts up from 1).
                encode(&Frame::new(FrameKind::Response, 1 << 31 | i, done.clone())).unwrap()
            })
            .await;
            guest
        });
        // Sent after the flood is queued: the flood is read first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.call_within(&Request::Ping, Duration::from_secs(120))
            .await
            .expect("the agent's answer came through the flood");
        let _guest = flood.await.unwrap();
        assert_eq!(c.shared.stray_responses.load(Ordering::Relaxed), 1_000_000);
        assert_eq!(pending_len(&c), 0);
        assert_eq!(c.closed(), None, "stray responses are not a violation");
        // 1, 2, 4, … 2^19: twenty lines for a million responses.
        let lines = logged.load(Ordering::Relaxed);
        assert!(
            (1..=21).contains(&lines),
            "{lines} log lines for 10^6 stray responses"
        );
        let grown = rss_kib().saturating_sub(before);
        assert!(grown < 32 * 1024, "RSS grew {grown} KiB");
    }

    /// 10⁷ zero-length data frames on an open stream whose consumer is
    /// stalled: the first closes the channel, and the host's memory stays
    /// flat however many the guest goes on writing.
    #[tokio::test]
    async fn ten_million_empty_frames_cost_the_host_nothing() {
        let (c, _e, mut guest) = pair().await;
        let _stalled = c.open_output();
        let id = _stalled.id;
        let before = rss_kib();
        let frame = encode(&Frame::new(FrameKind::Data, id, Vec::new())).unwrap();
        let batch: Vec<u8> = frame.repeat(1000);
        let mut sent = 0u64;
        for _ in 0..10_000 {
            match tokio::time::timeout(Duration::from_secs(2), guest.write_all(&batch)).await {
                Ok(Ok(())) => sent += 1000,
                // The host stopped reading (closed, or its buffers full).
                _ => break,
            }
        }
        assert!(sent > 0, "nothing was sent");
        let t = std::time::Instant::now();
        while c.closed().is_none() {
            assert!(t.elapsed() < Duration::from_secs(10), "still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            matches!(c.closed(), Some(ChannelClosed::EmptyData { stream }) if stream == id),
            "{:?}",
            c.closed()
        );
        let grown = rss_kib().saturating_sub(before);
        assert!(
            grown < 16 * 1024,
            "RSS grew {grown} KiB after {sent} frames"
        );
    }

    #[tokio::test]
    async fn a_million_minimal_frames_leave_calls_working() {
        let logged = Arc::new(AtomicUsize::new(0));
        let _sub = tracing::subscriber::set_default(CountingSubscriber(logged.clone()));
        let (c, _e, mut guest) = pair().await;
        let before = rss_kib();
        let c2 = c.clone();
        let call = tokio::spawn(async move {
            c2.call_within(&Request::Ping, Duration::from_secs(120))
                .await
        });
        let flood = flood_then_answer(&mut guest, 1_000_000, |i| {
            // One-byte data frames (13 bytes each) for streams nobody
            // opened (an empty one closes the channel: see below).
            encode(&Frame::new(FrameKind::Data, 1 << 31 | i, vec![0])).unwrap()
        });
        tokio::time::timeout(Duration::from_secs(120), flood)
            .await
            .expect("the flood was read in bounded time");
        call.await.unwrap().unwrap();
        assert!(c.closed().is_none());
        assert_eq!(logged.load(Ordering::Relaxed), 0);
        let grown = rss_kib().saturating_sub(before);
        assert!(grown < 32 * 1024, "RSS grew {grown} KiB");
    }
}
