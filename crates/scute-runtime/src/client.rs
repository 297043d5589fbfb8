//! Host side of the agent channel: multiplexed requests, events and stdio
//! streams over QEMU's unix socket for the virtio-serial port.
//!
//! Everything read here comes from the untrusted guest: frames go through the
//! bounded [`FrameDecoder`], responses to unknown ids and data for unknown
//! streams are dropped, the number of outstanding requests is capped, and any
//! protocol violation closes the channel (failing every pending call).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scute_protocol::limits::{MAX_PENDING_REQUESTS, STDIO_CHUNK};
use scute_protocol::{encode, Event, Frame, FrameDecoder, FrameKind, Reply, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

type Pending = HashMap<u32, oneshot::Sender<Response>>;

/// A chunk of a guest output stream; `None` is end of stream.
pub type StreamChunk = Option<Vec<u8>>;

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    streams: Mutex<HashMap<u32, mpsc::Sender<StreamChunk>>>,
    closed: Mutex<Option<String>>,
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
            sh.streams.lock().unwrap().clear();
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

    /// Sends `req` and waits for its response.
    pub async fn call(&self, req: &Request) -> Result<Reply, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            if self.shared.closed.lock().unwrap().is_some() {
                return Err(self.closed_error());
            }
            let mut p = self.shared.pending.lock().unwrap();
            if p.len() >= MAX_PENDING_REQUESTS {
                return Err(Error::Protocol(
                    "too many outstanding agent requests".into(),
                ));
            }
            p.insert(id, tx);
        }
        let payload = serde_json::to_vec(req).map_err(|e| Error::Protocol(e.to_string()))?;
        if self
            .writer
            .send(Frame::new(FrameKind::Request, id, payload))
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        match rx.await {
            Ok(Response::Ok(r)) => Ok(r),
            Ok(Response::Err(e)) => Err(Error::Agent(scute_protocol::AgentError::new(
                e.code,
                e.bounded_message(),
            ))),
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Allocates a stream id. With `output`, guest data for it is delivered to
    /// the returned receiver (bounded: a slow consumer slows the guest down).
    pub fn open_stream(&self, output: bool) -> (u32, Option<mpsc::Receiver<StreamChunk>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if !output {
            return (id, None);
        }
        let (tx, rx) = mpsc::channel(64);
        self.shared.streams.lock().unwrap().insert(id, tx);
        (id, Some(rx))
    }

    /// Sends stdin bytes on `stream`, chunked.
    pub async fn send_data(&self, stream: u32, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(STDIO_CHUNK) {
            self.writer
                .send(Frame::new(FrameKind::Data, stream, chunk.to_vec()))
                .await
                .map_err(|_| self.closed_error())?;
        }
        Ok(())
    }

    /// Closes the guest's end of an input stream (EOF on the process's stdin).
    pub async fn close_stream(&self, stream: u32) -> Result<(), Error> {
        self.writer
            .send(Frame::new(FrameKind::Close, stream, Vec::new()))
            .await
            .map_err(|_| self.closed_error())
    }
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
        FrameKind::Data | FrameKind::Close => {
            let tx = if f.kind == FrameKind::Close {
                sh.streams.lock().unwrap().remove(&f.stream)
            } else {
                sh.streams.lock().unwrap().get(&f.stream).cloned()
            };
            if let Some(tx) = tx {
                let chunk = (f.kind == FrameKind::Data).then_some(f.payload);
                let _ = tx.send(chunk).await;
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
        let (id, rx) = c.open_stream(true);
        let mut rx = rx.unwrap();
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
        assert_eq!(rx.recv().await.unwrap(), Some(b"hello".to_vec()));
        assert_eq!(rx.recv().await.unwrap(), None);
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
}
