//! Logs a guest can make a host process write (QEMU's, virtiofsd's, the
//! serial console's), kept bounded: the writer gets a pipe, a thread copies
//! it into the file and keeps only the newest bytes, so a guest that
//! provokes errors without end can't fill the host's `/run` (RAM).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

/// Bytes kept of a VMM's or virtiofsd's own log.
pub const LIMIT: u64 = 1 << 20;

/// Creates (truncates) `path`, private to its owner, and returns the write
/// end of a pipe whose reader copies into it, at most `limit` bytes, the
/// newest. The copy ends when every write end is closed.
pub fn spawn(path: &Path, limit: u64) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(0)?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("scute-log".into())
        .spawn(move || {
            if let Err(e) = copy_bounded(File::from(r), file, limit) {
                tracing::debug!("log {name}: {e}");
            }
        })?;
    Ok(w)
}

/// Appends everything read from `src` to `dst`; whenever `dst` would pass
/// `limit`, it is cut to its newest `limit / 2` bytes first.
pub fn copy_bounded(mut src: impl Read, mut dst: File, limit: u64) -> std::io::Result<()> {
    let mut size = dst.metadata()?.len();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buf[..n];
        if chunk.len() as u64 > limit / 2 {
            chunk = &chunk[chunk.len() - (limit / 2) as usize..];
        }
        if size + chunk.len() as u64 > limit {
            size = keep_tail(&mut dst, limit / 2)?;
        }
        dst.write_all(chunk)?;
        size += chunk.len() as u64;
    }
}

/// Cuts `f` to its last `keep` bytes; returns the new size.
fn keep_tail(f: &mut File, keep: u64) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let keep = keep.min(len);
    let mut tail = vec![0u8; keep as usize];
    f.seek(SeekFrom::Start(len - keep))?;
    f.read_exact(&mut tail)?;
    f.set_len(0)?;
    // The file is in append mode: writes go to the (new) end.
    f.write_all(&tail)?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_keeps_only_the_newest_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        std::fs::write(&p, b"").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&p)
            .unwrap();
        // 10 MiB of numbered lines through a 64 KiB console.
        let mut input = Vec::new();
        for i in 0..400_000u32 {
            input.extend_from_slice(format!("line {i:08}\n").as_bytes());
        }
        copy_bounded(&input[..], f, 64 << 10).unwrap();
        let kept = std::fs::read(&p).unwrap();
        assert!(kept.len() as u64 <= 64 << 10, "{}", kept.len());
        assert!(kept.ends_with(b"line 00399999\n"));
        assert!(kept.len() > 16 << 10);
    }

    #[test]
    fn a_spawned_log_is_capped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qemu.log");
        let w = spawn(&p, 64 << 10).unwrap();
        let mut w = File::from(w);
        for i in 0..100_000u32 {
            writeln!(w, "qemu-system-x86_64: error {i:08}").unwrap();
        }
        drop(w);
        let t = std::time::Instant::now();
        loop {
            let kept = std::fs::read(&p).unwrap();
            if kept.ends_with(b"error 00099999\n") {
                assert!(kept.len() as u64 <= 64 << 10, "{}", kept.len());
                break;
            }
            assert!(t.elapsed().as_secs() < 10, "the copy never finished");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
