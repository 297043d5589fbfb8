//! The guest's serial console, kept bounded: QEMU serves it on a socket, a
//! thread copies it into `console.log` and keeps only the newest bytes, so a
//! guest printing without end can't fill the host's disk (or its /run).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes kept normally, and with `debug = true`.
pub const LIMIT: u64 = 512 << 10;
pub const DEBUG_LIMIT: u64 = 8 << 20;

/// Starts copying the console served on `socket` into `log` (at most
/// `limit` bytes, the newest). The thread ends when QEMU closes the console.
pub fn spawn(socket: PathBuf, log: PathBuf, limit: u64) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("scute-console".into())
        .spawn(move || {
            let Some(stream) = connect(&socket, Duration::from_secs(10)) else {
                tracing::warn!("console socket {} never appeared", socket.display());
                return;
            };
            let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&log)
            else {
                return;
            };
            if let Err(e) = copy_bounded(stream, file, limit) {
                tracing::debug!("console {}: {e}", log.display());
            }
        })
        .expect("spawn console thread")
}

/// A log's last lines, for an error message, under the heading "last
/// lines of {what}": at most 15 lines of at most 160 printable characters
/// each (the console's text comes from the guest). Empty when there is
/// nothing to show.
pub fn tail(log: &Path, what: &str) -> String {
    const LINES: usize = 15;
    const WIDTH: usize = 160;
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.take(8192).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control())
                .take(WIDTH)
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let from = lines.len().saturating_sub(LINES);
    format!("\nlast lines of {what}:\n  {}", lines[from..].join("\n  "))
}

fn connect(socket: &Path, within: Duration) -> Option<UnixStream> {
    let start = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(socket) {
            return Some(s);
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub use scute_hypervisor::boundedlog::copy_bounded;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_short_and_printable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        assert_eq!(tail(&p, "the guest console"), "");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("line {i}\x1b[31m\r\n"));
        }
        text.push_str(&"x".repeat(1000));
        std::fs::write(&p, text).unwrap();
        let t = tail(&p, "the guest console");
        assert!(t.starts_with("\nlast lines of the guest console:"), "{t}");
        let lines: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(lines.len(), 15);
        assert_eq!(lines[0].trim(), "line 86[31m");
        assert_eq!(lines[14].trim().len(), 160);
        assert!(!t.contains('\x1b') && !t.contains('\r'));
    }
}
