//! A bounded HTTP/1.0 GET for tests and benchmarks: one connection, one
//! request, timeouts on connect and read; never a loop of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// GET `path` from `addr`; `(status line, body)`, or `None` on any failure.
pub fn get(addr: &str, path: &str) -> Option<(String, String)> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: scute-test\r\n\r\n").as_bytes())
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// [`get`] until it answers 200, for at most `timeout` (retries every 300 ms).
pub fn get_200_within(addr: &str, path: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((status, body)) = get(addr, path) {
            if status.contains(" 200") {
                return Some(body);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
