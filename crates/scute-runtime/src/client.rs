//! Host side of the agent channel: multiplexed requests, events and stdio
//! streams over QEMU's unix socket for the virtio-serial port.
//!
//! Everything read here comes from the untrusted guest: frames go through the
//! bounded [`FrameDecoder`], responses to unknown ids and data for unknown
//! streams are dropped, the number of outstanding requests is capped, and any
//! protocol violation closes the channel (failing every pending call).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scute_protocol::limits::{MAX_PENDING_REQUESTS, STDIO_CHUNK, STREAM_WINDOW};
use scute_protocol::{encode, Event, Frame, FrameDecoder, FrameKind, Reply, Request, Response};
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

/// How long the host waits for the agent's answer, per kind of request.
/// Creating a container (libcontainer under emulation) and configuring the
/// network are the slow ones; signals, deletes and queries must be quick,
/// since Kill and Delete of a container depend on them.
pub fn deadline(req: &Request) -> Duration {
    let secs = match req {
        Request::CreateContainer(_) => 60,
        Request::StartContainer { .. } | Request::StartExec { .. } | Request::Exec { .. } => 30,
        Request::ConfigureNetwork(_) => 30,
        Request::Signal { .. } | Request::DeleteContainer { .. } => 10,
        Request::Pause { .. } | Request::Resume { .. } => 10,
        Request::Pids { .. } | Request::Stats { .. } | Request::ResizePty { .. } => 10,
        Request::Ping => 10,
    };
    Duration::from_secs(secs)
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
        Request::ResizePty { .. } => "resize_pty",
        Request::Ping => "ping",
    }
}

/// A chunk of a guest output stream; `None` is end of stream.
pub type StreamChunk = Option<Vec<u8>>;

/// Host end of a guest output stream: the queue and the bytes in it that
/// were not yet consumed (bounded by the window the guest must respect).
struct OutSlot {
    tx: mpsc::UnboundedSender<StreamChunk>,
    in_flight: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    outputs: Mutex<HashMap<u32, OutSlot>>,
    /// Input stream id → bytes the guest lets us send.
    inputs: Mutex<HashMap<u32, Arc<Semaphore>>>,
    closed: Mutex<Option<String>>,
}

/// A guest output stream (a process's stdout or stderr). Each chunk is
/// credited back to the guest when the next one is asked for, i.e. once the
/// consumer has dealt with it: a slow consumer slows that stream only.
pub struct OutputStream {
    pub id: u32,
    rx: mpsc::UnboundedReceiver<StreamChunk>,
    in_flight: Arc<AtomicUsize>,
    client: AgentClient,
    unacked: u32,
}

impl OutputStream {
    /// The next chunk; `None` at end of stream or when the channel closed.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        if self.unacked > 0 {
            let n = std::mem::take(&mut self.unacked);
            self.in_flight.fetch_sub(n as usize, Ordering::AcqRel);
            let _ = self.client.writer.send(Frame::credit(self.id, n)).await;
        }
        let chunk = self.rx.recv().await.flatten()?;
        self.unacked = chunk.len() as u32;
        Some(chunk)
    }
}

#[derive(Clone)]
pub struct AgentClient {
    writer: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
}

impl AgentClient {
    /// Connects to QEMU's socket, waiting up to `timeout` for it to appear.
    /// Returns the client and the stream of guest events.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        let start = tokio::time::Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if start.elapsed() < timeout => {
                    tracing::trace!("agent socket not ready: {e}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    return Err(Error::io(format!("connect {}", path.display()))(e));
                }
            }
        };
        Ok(Self::from_stream(stream))
    }

    fn from_stream(stream: UnixStream) -> (Self, mpsc::Receiver<Event>) {
        let (mut rd, mut wr) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Frame>(256);
        let (etx, erx) = mpsc::channel::<Event>(64);
        let shared = Arc::new(Shared::default());
        tokio::spawn(async move {
            while let Some(f) = wrx.recv().await {
                let Ok(bytes) = encode(&f) else { continue };
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let sh = shared.clone();
        tokio::spawn(async move {
            let why = read_loop(&mut rd, &sh, &etx).await;
            tracing::debug!("agent channel closed: {why}");
            *sh.closed.lock().unwrap() = Some(why);
            sh.pending.lock().unwrap().clear();
            sh.outputs.lock().unwrap().clear();
            for (_, w) in sh.inputs.lock().unwrap().drain() {
                w.close();
            }
        });
        (
            Self {
                writer: wtx,
                shared,
                next_id: Arc::new(AtomicU32::new(1)),
            },
            erx,
        )
    }

    fn closed_error(&self) -> Error {
        let why = self
            .shared
            .closed
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "channel closed".into());
        Error::Protocol(format!("agent connection lost: {why}"))
    }

    /// Sends `req` and waits for its response, at most [`deadline`] for its
    /// kind of request.
    pub async fn call(&self, req: &Request) -> Result<Reply, Error> {
        self.call_within(req, deadline(req)).await
    }

    /// Pings the agent every `every` and resolves, with the reason, once it
    /// has missed `misses` pings in a row (each waited for `every` at
    /// most, so about `every × 2 × misses` of silence). `None` when the
    /// channel closed: the VM is gone and its end is reported elsewhere.
    pub async fn unresponsive(&self, every: Duration, misses: u32) -> Option<String> {
        let mut missed = 0;
        loop {
            tokio::time::sleep(every).await;
            if self.shared.closed.lock().unwrap().is_some() {
                return None;
            }
            match self.call_within(&Request::Ping, every).await {
                Ok(_) => missed = 0,
                Err(Error::Deadline { .. }) => {
                    missed += 1;
                    tracing::warn!("guest agent missed liveness check {missed} of {misses}");
                    if missed >= misses.max(1) {
                        return Some(format!(
                            "the guest agent answered none of {missed} liveness checks in a row ({every:?} each): the guest is hung"
                        ));
                    }
                }
                Err(_) if self.shared.closed.lock().unwrap().is_some() => return None,
                Err(e) => return Some(format!("liveness check failed: {e}")),
            }
        }
    }

    /// Sends `req` and waits at most `within` for its response. Dropping the
    /// future (a cancelled ttrpc call) or running out of time removes the
    /// request from the pending table.
    pub async fn call_within(&self, req: &Request, within: Duration) -> Result<Reply, Error> {
        let payload = serde_json::to_vec(req).map_err(|e| Error::Protocol(e.to_string()))?;
        if payload.len() > scute_protocol::limits::MAX_PAYLOAD {
            return Err(Error::Protocol(format!(
                "request {} is {} bytes, over the {}-byte frame limit",
                op_name(req),
                payload.len(),
                scute_protocol::limits::MAX_PAYLOAD
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            // The closed check and the insert under one lock: the reader
            // clears `pending` under it after setting `closed`.
            let mut p = self.shared.pending.lock().unwrap();
            if self.shared.closed.lock().unwrap().is_some() {
                return Err(self.closed_error());
            }
            if p.len() >= MAX_PENDING_REQUESTS {
                return Err(Error::Protocol(
                    "too many outstanding agent requests".into(),
                ));
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

    /// A new stream the guest writes to (a process's stdout or stderr).
    pub fn open_output(&self) -> OutputStream {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        self.shared.outputs.lock().unwrap().insert(
            id,
            OutSlot {
                tx,
                in_flight: in_flight.clone(),
            },
        );
        OutputStream {
            id,
            rx,
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
            return Err(Error::Protocol(format!(
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

async fn read_loop(
    rd: &mut tokio::net::unix::OwnedReadHalf,
    sh: &Shared,
    events: &mpsc::Sender<Event>,
) -> String {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("bad frame from guest: {e}"),
            };
            if let Err(why) = dispatch(frame, sh, events).await {
                return why;
            }
        }
        match rd.read(&mut buf).await {
            Ok(0) => return "guest closed the channel".into(),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) => return format!("read: {e}"),
        }
    }
}

/// Routes one frame. An error ends the connection.
async fn dispatch(f: Frame, sh: &Shared, events: &mpsc::Sender<Event>) -> Result<(), String> {
    match f.kind {
        FrameKind::Response => {
            let resp: Response = serde_json::from_slice(&f.payload)
                .map_err(|e| format!("malformed response: {e}"))?;
            let waiter = sh.pending.lock().unwrap().remove(&f.stream);
            match waiter {
                Some(w) => {
                    let _ = w.send(resp);
                }
                None => tracing::warn!(id = f.stream, "response to unknown request dropped"),
            }
        }
        FrameKind::Event => {
            let ev: Event =
                serde_json::from_slice(&f.payload).map_err(|e| format!("malformed event: {e}"))?;
            if events.send(ev).await.is_err() {
                tracing::debug!("event dropped: nobody listens");
            }
        }
        FrameKind::Data => {
            let outputs = sh.outputs.lock().unwrap();
            if let Some(slot) = outputs.get(&f.stream) {
                let total =
                    slot.in_flight.fetch_add(f.payload.len(), Ordering::AcqRel) + f.payload.len();
                if total > STREAM_WINDOW {
                    return Err(format!(
                        "stream {} exceeded its flow-control window ({total} bytes in flight)",
                        f.stream
                    ));
                }
                let _ = slot.tx.send(Some(f.payload));
            }
        }
        FrameKind::Close => {
            if let Some(slot) = sh.outputs.lock().unwrap().remove(&f.stream) {
                let _ = slot.tx.send(None);
            }
        }
        FrameKind::Credit => {
            let n = f.credit_bytes().ok_or("malformed credit frame")? as usize;
            if let Some(w) = sh.inputs.lock().unwrap().get(&f.stream) {
                if w.available_permits() + n > STREAM_WINDOW {
                    return Err(format!("stream {} credited beyond its window", f.stream));
                }
                w.add_permits(n);
            }
        }
        FrameKind::Request => return Err("the guest may not send requests".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scute_protocol::{ErrorCode, FrameKind};

    async fn pair() -> (AgentClient, mpsc::Receiver<Event>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, e) = AgentClient::from_stream(a);
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
        assert!(err.to_string().contains("connection lost"), "{err}");
    }

    #[tokio::test]
    async fn guest_request_and_garbage_json_close_the_channel() {
        for bad in [
            encode(&Frame::new(FrameKind::Request, 1, b"{}".to_vec())).unwrap(),
            encode(&Frame::new(FrameKind::Event, 0, b"not json".to_vec())).unwrap(),
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
            assert!(err.to_string().contains("connection lost"), "{err}");
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
        assert!(err.to_string().contains("window"), "{err}");
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
        assert!(err.to_string().contains("frame limit"), "{err}");
        assert_eq!(pending_len(&c), 0);
    }
}
