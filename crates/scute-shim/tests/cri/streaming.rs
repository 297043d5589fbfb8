//! The client half of CRI streaming (what `kubectl exec -it`, `attach` and
//! `port-forward` reach through kubelet): the URL the runtime service
//! returns, opened as a WebSocket with Kubernetes' channel protocol (each
//! binary message starts with its channel's number).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Exec/attach: the final status (a `metav1.Status` JSON).
pub const ERROR: u8 = 3;
/// Exec/attach: terminal size changes (`{"Width":…,"Height":…}`).
pub const RESIZE: u8 = 4;

pub struct Channels {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// What came on [`ERROR`] (exec and attach only).
    pub status: Option<Vec<u8>>,
}

impl Channels {
    /// Opens `url` (with `query` appended) speaking `protocol` (`""` for
    /// none: port-forward's binary channels).
    pub async fn open(url: &str, query: &str, protocol: &str) -> Channels {
        let url = format!("{}{query}", url.replace("http://", "ws://"));
        let mut req = url.as_str().into_client_request().unwrap();
        if !protocol.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .unwrap_or_else(|_| panic!("open {url}: timed out"))
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
        Channels { ws, status: None }
    }

    pub async fn send(&mut self, channel: u8, data: &[u8]) {
        let mut m = vec![channel];
        m.extend_from_slice(data);
        self.ws.send(Message::Binary(m.into())).await.unwrap();
    }

    /// The next (channel, data) message; `None` when the server closed the
    /// connection or nothing came within `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match m.ok()? {
                Message::Binary(b) if !b.is_empty() => return Some((b[0], b[1..].to_vec())),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// What an exec or attach session ended with: the exit code its status
/// names (0 for `Success`), the whole status when it names none.
pub fn exit_code(status: &[u8]) -> Result<i32, String> {
    let v: serde_json::Value =
        serde_json::from_slice(status).map_err(|e| format!("status {status:?}: {e}"))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    v["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str()?.parse().ok())
        .ok_or_else(|| v.to_string())
}

/// Collects a session's output into `out` until `until` appears in it
/// (false when the session ended or `within` passed first).
pub async fn expect(ch: &mut Channels, out: &mut String, until: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !out.contains(until) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ch.recv(left).await {
            Some((STDOUT | STDERR, d)) => out.push_str(&String::from_utf8_lossy(&d)),
            Some((ERROR, d)) => ch.status = Some(d),
            Some(_) => {}
            None => return false,
        }
    }
    true
}

/// Waits (at most `within`) for the session's final status.
pub async fn status(ch: &mut Channels, within: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + within;
    while ch.status.is_none() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ch.recv(left).await? {
            (ERROR, d) => ch.status = Some(d),
            _ => continue,
        }
    }
    ch.status.take()
}
