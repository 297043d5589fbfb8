//! The agent's end of the virtio-serial port: find it, read frames, write frames.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use scute_protocol::{encode, Frame, FrameDecoder, FrameKind};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Name of the port the host creates (`virtserialport,name=...`).
pub const PORT_NAME: &str = "scute.agent";

/// Finds the port's device node, waiting for the driver to announce it.
pub async fn find_port() -> Result<PathBuf> {
    for polls in 0..200 {
        if let Ok(dir) = fs::read_dir("/sys/class/virtio-ports") {
            for e in dir.flatten() {
                let name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    let dev = PathBuf::from("/dev").join(e.file_name());
                    if dev.exists() {
                        tracing::debug!(
                            boot_ms = crate::boot::uptime_ms(),
                            port = %dev.display(),
                            polls,
                            "agent port found"
                        );
                        return Ok(dev);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("virtio-serial port {PORT_NAME} not found (is virtio_console loaded?)")
}

pub struct Port {
    fd: AsyncFd<OwnedFd>,
}

impl Port {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let fd: OwnedFd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_RDWR
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(|fd| {
            // SAFETY: open returned a fresh descriptor that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        })
        .with_context(|| format!("open {}", path.display()))?;
        Ok(Self {
            // The OwnedFd moves into the AsyncFd and lives exactly as long as it.
            #[allow(deprecated)]
            fd: AsyncFd::new(fd)?,
        })
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(io::Error::from))
            {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Sends frames to the host. Cloneable; frames are written in send order.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Frame>,
}

impl Sender {
    pub async fn send(&self, frame: Frame) {
        // If the writer is gone the host is gone: nothing useful to do.
        let _ = self.tx.send(frame).await;
    }

    pub async fn send_json<T: serde::Serialize>(&self, kind: FrameKind, stream: u32, msg: &T) {
        match serde_json::to_vec(msg) {
            Ok(payload) => self.send(Frame::new(kind, stream, payload)).await,
            Err(e) => tracing::error!("encode message: {e}"),
        }
    }
}

/// Splits the port into a frame sender (served by a writer task) and a receiver.
pub fn split(port: Port) -> (Sender, Receiver) {
    let port = std::sync::Arc::new(port);
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let writer = port.clone();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            match encode(&frame) {
                Ok(bytes) => {
                    if let Err(e) = writer.write_all(&bytes).await {
                        tracing::error!("write to host: {e}");
                        break;
                    }
                }
                Err(e) => tracing::error!("frame not sent: {e}"),
            }
        }
    });
    (
        Sender { tx },
        Receiver {
            port,
            decoder: FrameDecoder::new(),
            buf: vec![0; 64 * 1024],
        },
    )
}

pub struct Receiver {
    port: std::sync::Arc<Port>,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl Receiver {
    /// Next frame from the host; `None` when the host closed the port.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(Some(f));
            }
            let n = self.port.read(&mut self.buf).await?;
            if n == 0 {
                // No host connected: the port reads EOF until one connects.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}
