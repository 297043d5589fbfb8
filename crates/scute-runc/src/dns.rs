//! The host side of the DNS relay. Docker gives containers on a
//! user-defined network `nameserver 127.0.0.11`: its embedded DNS, which
//! listens on the loopback of the container's network namespace. A VM in
//! that namespace has its own loopback, so the agent listens there instead
//! and sends each query up; here it is asked from inside the namespace,
//! and the answer goes back down.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Queries asked at once; more are dropped (the guest's resolver retries).
const MAX_IN_FLIGHT: usize = 32;
/// How long a query may wait for the nameserver.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Loopback nameservers in the resolv.conf the spec mounts (IPv4): what
/// only the namespace's own loopback can reach.
pub fn loopback_nameservers(spec: &Value) -> Vec<Ipv4Addr> {
    let Some(src) = spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|m| m.get("destination").and_then(Value::as_str) == Some("/etc/resolv.conf"))
        .and_then(|m| m.get("source").and_then(Value::as_str))
    else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(src).unwrap_or_default();
    nameservers_in(&text)
}

fn nameservers_in(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(Ipv4Addr::is_loopback)
        .take(3)
        .collect()
}

/// Asks `server` in network namespace `netns` the queries it is given.
pub struct Relay {
    queries: std::sync::mpsc::SyncSender<(u32, Vec<u8>)>,
}

impl Relay {
    /// Starts the relay's thread in `netns`, asking `server`:53; answers
    /// come on `answers`.
    pub fn start(
        netns: &Path,
        server: Ipv4Addr,
        answers: tokio::sync::mpsc::Sender<(u32, Vec<u8>)>,
    ) -> std::io::Result<Self> {
        Self::start_to(netns, SocketAddrV4::new(server, 53), answers)
    }

    fn start_to(
        netns: &Path,
        server: SocketAddrV4,
        answers: tokio::sync::mpsc::Sender<(u32, Vec<u8>)>,
    ) -> std::io::Result<Self> {
        let ns = std::fs::File::open(netns)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, Vec<u8>)>(MAX_IN_FLIGHT);
        let (ok_tx, ok_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("dns-relay".into())
            .spawn(move || {
                // Threads started from here are in the namespace too.
                let entered = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET);
                let _ = ok_tx.send(entered.map_err(std::io::Error::from));
                if entered.is_err() {
                    return;
                }
                let in_flight = Arc::new(AtomicUsize::new(0));
                for (id, query) in rx {
                    if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    let (answers, in_flight) = (answers.clone(), in_flight.clone());
                    let _ = std::thread::Builder::new().spawn(move || {
                        match ask(server, &query) {
                            Ok(a) => {
                                let _ = answers.blocking_send((id, a));
                            }
                            Err(e) => tracing::debug!("dns relay: {server}: {e}"),
                        }
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                    });
                }
            })?;
        ok_rx
            .recv()
            .map_err(|_| std::io::Error::other("the relay thread ended"))??;
        Ok(Self { queries: tx })
    }

    /// Hands query `id` to the relay; dropped when too many are asked.
    pub fn ask(&self, id: u32, query: Vec<u8>) {
        if query.len() > scute_protocol::MAX_DNS_MESSAGE {
            return;
        }
        let _ = self.queries.try_send((id, query));
    }
}

fn ask(server: SocketAddrV4, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(ANSWER_WITHIN))?;
    s.connect(server)?;
    s.send(query)?;
    let mut buf = vec![0u8; scute_protocol::MAX_DNS_MESSAGE];
    let n = s.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_nameservers_are_relayed() {
        let rc = "search x\nnameserver 127.0.0.11\nnameserver 10.0.0.2\nnameserver ::1\noptions ndots:0\n";
        assert_eq!(nameservers_in(rc), vec![Ipv4Addr::new(127, 0, 0, 11)]);
        assert!(nameservers_in("nameserver 8.8.8.8\n").is_empty());
        assert!(loopback_nameservers(&serde_json::json!({"mounts": []})).is_empty());
    }

    /// A "nameserver" on 127.0.0.1 of this test's namespace: answers each
    /// datagram with it reversed, unless `silent`; counts what it got.
    fn nameserver(silent: bool) -> (SocketAddrV4, Arc<AtomicUsize>) {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = s.local_addr().unwrap().port();
        let got = Arc::new(AtomicUsize::new(0));
        let seen = got.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 8192];
            while let Ok((n, from)) = s.recv_from(&mut b) {
                seen.fetch_add(1, Ordering::SeqCst);
                if !silent {
                    b[..n].reverse();
                    let _ = s.send_to(&b[..n], from);
                }
            }
        });
        (SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), got)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_query_is_asked_in_the_namespace_and_answered() {
        let (server, _) = nameserver(false);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let r = Relay::start_to(Path::new("/proc/self/ns/net"), server, tx).unwrap();
        r.ask(7, b"query".to_vec());
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got.unwrap(), Some((7, b"yreuq".to_vec())));
    }

    /// What a hostile guest sends: a query past the size bound is never
    /// asked; a flood reaches the nameserver at most MAX_IN_FLIGHT at a
    /// time (the rest are dropped, not queued without end).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_guests_oversized_or_flooding_queries_are_bounded() {
        let (server, got) = nameserver(false);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let r = Relay::start_to(Path::new("/proc/self/ns/net"), server, tx).unwrap();
        r.ask(1, vec![0u8; scute_protocol::MAX_DNS_MESSAGE + 1]);
        r.ask(2, b"small".to_vec());
        let a = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(a.unwrap().map(|(id, _)| id), Some(2));
        assert_eq!(
            got.load(Ordering::SeqCst),
            1,
            "the oversized query was asked"
        );

        let (silent, heard) = nameserver(true);
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        let r = Relay::start_to(Path::new("/proc/self/ns/net"), silent, tx).unwrap();
        // Paced, so that the relay drains its queue: only the in-flight
        // bound holds them back.
        for id in 0..200 {
            r.ask(id, b"flood".to_vec());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = heard.load(Ordering::SeqCst);
        assert!(n > 0 && n <= MAX_IN_FLIGHT, "{n} queries asked at once");
    }
}
