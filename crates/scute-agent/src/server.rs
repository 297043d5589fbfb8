//! Serves the host: dispatches requests, relays stdio, reports exits.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use scute_protocol::limits::STDIO_CHUNK;
use scute_protocol::{
    AgentError, CreateContainer, ErrorCode, Event, Frame, FrameKind, Reply, Request, Response,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::channel::{self, Sender};
use crate::container::{self, Table, Tracked};
use crate::reaper::Reaper;

struct Agent {
    tx: Sender,
    reaper: Reaper,
    table: Mutex<Table>,
    /// Stdin stream id → writer task of that process's stdin.
    stdin: Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>,
}

pub async fn serve() -> Result<()> {
    let path = channel::find_port().await?;
    let port = channel::Port::open(&path)?;
    let (tx, mut rx) = channel::split(port);
    let agent = Arc::new(Agent {
        tx,
        reaper: Reaper::start(),
        table: Mutex::default(),
        stdin: Mutex::default(),
    });
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    agent
        .tx
        .send_json(
            FrameKind::Event,
            0,
            &Event::Ready {
                protocol_version: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                kernel_release,
                uptime_ms: uptime_ms(),
            },
        )
        .await;
    tracing::info!(port = %path.display(), "agent ready");
    while let Some(frame) = rx.next().await? {
        match frame.kind {
            FrameKind::Request => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    let resp = match serde_json::from_slice::<Request>(&frame.payload) {
                        Ok(req) => handle(&agent, req).await,
                        Err(e) => Response::Err(AgentError::new(
                            ErrorCode::InvalidArgument,
                            format!("malformed request: {e}"),
                        )),
                    };
                    agent
                        .tx
                        .send_json(FrameKind::Response, frame.stream, &resp)
                        .await;
                });
            }
            FrameKind::Data => {
                let w = agent.stdin.lock().unwrap().get(&frame.stream).cloned();
                if let Some(w) = w {
                    let _ = w.send(frame.payload).await;
                }
            }
            FrameKind::Close => {
                agent.stdin.lock().unwrap().remove(&frame.stream);
            }
            other => tracing::warn!(kind = ?other, "unexpected frame from host"),
        }
    }
    Ok(())
}

async fn handle(agent: &Arc<Agent>, req: Request) -> Response {
    let result = match req {
        Request::CreateContainer(c) => create(agent, c).await,
        Request::StartContainer { container_id } => {
            with_container(agent, container_id, |t| container::start(&mut t.container)).await
        }
        Request::Signal {
            container_id,
            signal,
            all,
        } => {
            with_container(agent, container_id, move |t| {
                container::signal(&mut t.container, t.pid, signal, all)
            })
            .await
        }
    };
    match result {
        Ok(r) => Response::Ok(r),
        Err(e) => Response::Err(e),
    }
}

async fn with_container<F>(agent: &Arc<Agent>, id: String, f: F) -> Result<Reply, AgentError>
where
    F: FnOnce(&mut Tracked) -> Result<(), AgentError> + Send + 'static,
{
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        let mut table = agent.table.lock().unwrap();
        let t = table.map.get_mut(&id).ok_or_else(|| {
            AgentError::new(ErrorCode::NotFound, format!("container {id} not found"))
        })?;
        f(t).map(|()| Reply::Done)
    })
    .await
    .unwrap_or_else(|e| Err(AgentError::new(ErrorCode::Internal, e.to_string())))
}

async fn create(agent: &Arc<Agent>, req: CreateContainer) -> Result<Reply, AgentError> {
    let id = req.container_id.clone();
    if agent.table.lock().unwrap().map.contains_key(&id) {
        return Err(AgentError::new(
            ErrorCode::AlreadyExists,
            format!("container {id} already exists"),
        ));
    }
    let reaper = agent.reaper.clone();
    let stdio = req.stdio;
    let created = tokio::task::spawn_blocking(move || {
        container::create(&req.container_id, &req.spec, req.stdio, &reaper)
    })
    .await
    .map_err(|e| AgentError::new(ErrorCode::Internal, e.to_string()))??;
    let pid = created.pid;
    tracing::info!(container_id = %id, pid, "container created");

    let mut pumps = Vec::new();
    if let (Some(out), Some(stream)) = (created.io.stdout, stdio.stdout) {
        pumps.push(tokio::spawn(pump(agent.tx.clone(), out, stream)));
    }
    if let (Some(err), Some(stream)) = (created.io.stderr, stdio.stderr) {
        pumps.push(tokio::spawn(pump(agent.tx.clone(), err, stream)));
    }
    if let (Some(input), Some(stream)) = (created.io.stdin, stdio.stdin) {
        let (wtx, wrx) = mpsc::channel(64);
        agent.stdin.lock().unwrap().insert(stream, wtx);
        tokio::spawn(feed_stdin(input, wrx));
    }
    agent.table.lock().unwrap().map.insert(
        id.clone(),
        Tracked {
            container: created.container,
            pid,
        },
    );

    let agent2 = agent.clone();
    let exit = created.exit;
    tokio::spawn(async move {
        let status = exit.await.unwrap_or(scute_protocol::ExitStatus::Code(255));
        tracing::info!(container_id = %id, pid, ?status, "container process exited");
        // Output written before the exit goes out before the exit event; a
        // daemonised grandchild holding the pipe open can't delay it forever.
        let drain = async {
            for p in pumps {
                let _ = p.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        if let Some(s) = stdio.stdin {
            agent2.stdin.lock().unwrap().remove(&s);
        }
        let tracked = agent2.table.lock().unwrap().map.remove(&id);
        if let Some(mut t) = tracked {
            let _ = tokio::task::spawn_blocking(move || container::delete(&mut t.container)).await;
        }
        agent2
            .tx
            .send_json(
                FrameKind::Event,
                0,
                &Event::Exited {
                    container_id: id,
                    pid,
                    status,
                },
            )
            .await;
    });
    Ok(Reply::Created { pid })
}

async fn pump(tx: Sender, file: File, stream: u32) {
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = vec![0u8; STDIO_CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tx.send(Frame::new(FrameKind::Data, stream, buf[..n].to_vec()))
                    .await
            }
        }
    }
    tx.send(Frame::new(FrameKind::Close, stream, Vec::new()))
        .await;
}

async fn feed_stdin(file: File, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut file = tokio::fs::File::from_std(file);
    while let Some(data) = rx.recv().await {
        if file.write_all(&data).await.is_err() {
            break;
        }
        let _ = file.flush().await;
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}
