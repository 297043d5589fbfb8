//! The guest side of the DNS relay: a UDP listener on a nameserver address
//! that lives on the host side's loopback (Docker's embedded DNS,
//! 127.0.0.11, on user-defined networks), which a VM cannot reach. Each
//! query goes to the host as [`Event::DnsQuery`]; the host's
//! [`Request::DnsAnswer`] goes back to whoever asked.
//!
//! [`Request::DnsAnswer`]: scute_protocol::Request::DnsAnswer

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scute_protocol::{AgentError, ErrorCode, Event, FrameKind, MAX_DNS_MESSAGE};
use tokio::net::UdpSocket;

use crate::channel::Sender;

/// Queries waiting for the host's answer; the oldest go first past this.
const MAX_PENDING: usize = 256;
/// A query the host has not answered by then is forgotten.
const PENDING_FOR: Duration = Duration::from_secs(10);

struct Pending {
    socket: Arc<UdpSocket>,
    from: SocketAddr,
    at: Instant,
}

#[derive(Default)]
pub struct Relay {
    listening: Mutex<HashMap<Ipv4Addr, Arc<UdpSocket>>>,
    pending: Mutex<HashMap<u32, Pending>>,
    next: AtomicU32,
}

impl Relay {
    /// Listens on `address`:53 (once per address) and relays what comes.
    pub async fn listen(self: &Arc<Self>, tx: Sender, address: Ipv4Addr) -> Result<(), AgentError> {
        if !address.is_loopback() {
            return Err(AgentError::new(
                ErrorCode::InvalidArgument,
                format!("dns relay: {address} is not a loopback address"),
            ));
        }
        if self.listening.lock().unwrap().contains_key(&address) {
            return Ok(());
        }
        let socket = UdpSocket::bind((address, 53))
            .await
            .map(Arc::new)
            .map_err(|e| {
                AgentError::new(
                    ErrorCode::Internal,
                    format!("dns relay: bind {address}:53: {e}"),
                )
            })?;
        self.listening
            .lock()
            .unwrap()
            .insert(address, socket.clone());
        tracing::info!(%address, "relaying DNS queries to the host");
        let me = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DNS_MESSAGE + 1];
            loop {
                let (n, from) = match socket.recv_from(&mut buf).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(%address, "dns relay: {e}");
                        continue;
                    }
                };
                // A DNS header is 12 bytes.
                if !(12..=MAX_DNS_MESSAGE).contains(&n) {
                    continue;
                }
                let id = me.next.fetch_add(1, Ordering::Relaxed);
                me.remember(id, socket.clone(), from);
                tx.send_json(
                    FrameKind::Event,
                    0,
                    &Event::DnsQuery {
                        id,
                        query: buf[..n].to_vec(),
                    },
                )
                .await;
            }
        });
        Ok(())
    }

    fn remember(&self, id: u32, socket: Arc<UdpSocket>, from: SocketAddr) {
        let mut p = self.pending.lock().unwrap();
        p.retain(|_, q| q.at.elapsed() < PENDING_FOR);
        if p.len() >= MAX_PENDING {
            if let Some(oldest) = p.iter().min_by_key(|(_, q)| q.at).map(|(k, _)| *k) {
                p.remove(&oldest);
            }
        }
        p.insert(
            id,
            Pending {
                socket,
                from,
                at: Instant::now(),
            },
        );
    }

    /// Sends the host's answer to query `id` back to whoever asked.
    pub fn answer(&self, id: u32, answer: &[u8]) -> Result<(), AgentError> {
        let Some(q) = self.pending.lock().unwrap().remove(&id) else {
            return Err(AgentError::new(
                ErrorCode::NotFound,
                format!(
                    "dns relay: no query {id} waits (answered, or forgotten after {PENDING_FOR:?})"
                ),
            ));
        };
        if answer.len() > MAX_DNS_MESSAGE {
            return Err(AgentError::new(
                ErrorCode::InvalidArgument,
                format!("dns relay: an answer of {} bytes", answer.len()),
            ));
        }
        q.socket
            .try_send_to(answer, q.from)
            .map(|_| ())
            .map_err(|e| AgentError::new(ErrorCode::Internal, format!("dns relay: send: {e}")))
    }
}
