//! Serves the host: dispatches requests, relays stdio with flow control,
//! reports exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use scute_protocol::limits::{STDIO_CHUNK, STREAM_WINDOW};
use scute_protocol::{
    AgentError, CreateContainer, ErrorCode, Event, ExitStatus, Frame, FrameKind, Reply, Request,
    Response, StdioSpec, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::channel::{self, Sender};
use crate::container::{self, Spawned, Table, Tracked};
use crate::reaper::Reaper;

struct Agent {
    tx: Sender,
    reaper: Reaper,
    table: Mutex<Table>,
    /// Stdin stream id → writer task of that process's stdin.
    stdin: Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>,
    /// Output stream id → bytes the host still lets us send.
    windows: Mutex<HashMap<u32, Arc<Semaphore>>>,
    dns: Arc<crate::dns::Relay>,
}

fn error(code: ErrorCode, msg: impl Into<String>) -> AgentError {
    AgentError::new(code, msg)
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
        windows: Mutex::default(),
        dns: Arc::default(),
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
                uptime_ms: crate::boot::uptime_ms(),
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
                        Ok(req) => match handle(&agent, req).await {
                            Ok(r) => Response::Ok(r),
                            Err(e) => Response::Err(e),
                        },
                        Err(e) => Response::Err(error(
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
                // Never blocks: the host keeps within the stdin window.
                if let Some(w) = agent.stdin.lock().unwrap().get(&frame.stream) {
                    let _ = w.send(frame.payload);
                }
            }
            FrameKind::Close => {
                agent.stdin.lock().unwrap().remove(&frame.stream);
            }
            FrameKind::Credit => {
                let w = agent.windows.lock().unwrap().get(&frame.stream).cloned();
                if let (Some(w), Some(n)) = (w, frame.credit_bytes()) {
                    if w.available_permits() + (n as usize) <= STREAM_WINDOW {
                        w.add_permits(n as usize);
                    }
                }
            }
            other => tracing::warn!(kind = ?other, "unexpected frame from host"),
        }
    }
    Ok(())
}

async fn handle(agent: &Arc<Agent>, req: Request) -> Result<Reply, AgentError> {
    match req {
        Request::CreateContainer(c) => create(agent, c).await,
        Request::StartContainer { container_id } => {
            with_container(agent, container_id, |t| container::start(&mut t.container)).await
        }
        Request::Signal {
            container_id,
            exec_id,
            signal,
            all,
        } => {
            with_container(agent, container_id, move |t| {
                let pid = match &exec_id {
                    None => t.pid,
                    Some(e) => t.execs.get(e).map(|x| x.0).ok_or_else(|| {
                        error(ErrorCode::NotFound, format!("exec {e} not running"))
                    })?,
                };
                container::signal(t.container.id(), pid, signal, all && exec_id.is_none())
            })
            .await
        }
        Request::Exec {
            container_id,
            exec_id,
            process,
            stdio,
        } => {
            with_container(agent, container_id, move |t| {
                if t.execs.contains_key(&exec_id) || t.pending_execs.contains_key(&exec_id) {
                    return Err(error(
                        ErrorCode::AlreadyExists,
                        format!("exec {exec_id} already exists"),
                    ));
                }
                t.pending_execs.insert(exec_id, (process, stdio));
                Ok(())
            })
            .await
        }
        Request::StartExec {
            container_id,
            exec_id,
        } => start_exec(agent, container_id, exec_id).await,
        Request::ResizePty {
            container_id,
            exec_id,
            width,
            height,
        } => {
            with_container(agent, container_id, move |t| {
                let pty = match &exec_id {
                    None => t.pty.as_ref(),
                    Some(e) => t.execs.get(e).and_then(|x| x.1.as_ref()),
                };
                match pty {
                    Some(p) => container::resize(p, width, height),
                    None => Err(error(
                        ErrorCode::FailedPrecondition,
                        "the process has no terminal",
                    )),
                }
            })
            .await
        }
        Request::Ping => Ok(Reply::Done),
        Request::Pause { container_id } => {
            with_container(agent, container_id, |t| container::pause(&mut t.container)).await
        }
        Request::Resume { container_id } => {
            with_container(agent, container_id, |t| container::resume(&mut t.container)).await
        }
        Request::Pids { container_id } => {
            known(agent, &container_id)?;
            container::pids(&container_id).map(|pids| Reply::Pids { pids })
        }
        Request::Stats { container_id } => {
            known(agent, &container_id)?;
            container::stats(&container_id).map(Reply::Stats)
        }
        Request::DnsRelay { address } => agent
            .dns
            .listen(agent.tx.clone(), address)
            .await
            .map(|()| Reply::Done),
        Request::DnsAnswer { id, answer } => agent.dns.answer(id, &answer).map(|()| Reply::Done),
        Request::Update {
            container_id,
            limits,
        } => {
            known(agent, &container_id)?;
            container::update(&container_id, &limits).map(|()| Reply::Done)
        }
        Request::ConfigureNetwork(cfg) => {
            tokio::task::spawn_blocking(move || crate::network::configure(&cfg))
                .await
                .unwrap_or_else(|e| Err(error(ErrorCode::Internal, e.to_string())))
                .map(|()| Reply::Done)
        }
        Request::Connect {
            port,
            input,
            output,
        } => connect(agent, port, input, output).await,
        Request::DebugShell {
            stdio,
            width,
            height,
        } => {
            let spawned = crate::debug::spawn(&agent.reaper, width, height)?;
            let pid = spawned.pid;
            tracing::warn!(pid, "debug shell started (the host operator's)");
            relay(
                agent,
                scute_protocol::message::DEBUG_SHELL.into(),
                Some(format!("shell-{pid}")),
                spawned,
                stdio,
            );
            Ok(Reply::Created { pid })
        }
        Request::DeleteContainer {
            container_id,
            force,
        } => {
            let agent2 = agent.clone();
            tokio::task::spawn_blocking(move || {
                let mut table = agent2.table.lock().unwrap();
                let t = table.map.get_mut(&container_id).ok_or_else(|| {
                    error(
                        ErrorCode::NotFound,
                        format!("container {container_id} not found"),
                    )
                })?;
                container::delete(&mut t.container, force)?;
                table.map.remove(&container_id);
                Ok(Reply::Done)
            })
            .await
            .unwrap_or_else(|e| Err(error(ErrorCode::Internal, e.to_string())))
        }
    }
}

fn known(agent: &Agent, id: &str) -> Result<(), AgentError> {
    if agent.table.lock().unwrap().map.contains_key(id) {
        Ok(())
    } else {
        Err(error(
            ErrorCode::NotFound,
            format!("container {id} not found"),
        ))
    }
}

async fn with_container<F>(agent: &Arc<Agent>, id: String, f: F) -> Result<Reply, AgentError>
where
    F: FnOnce(&mut Tracked) -> Result<(), AgentError> + Send + 'static,
{
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        let mut table = agent.table.lock().unwrap();
        let t = table
            .map
            .get_mut(&id)
            .ok_or_else(|| error(ErrorCode::NotFound, format!("container {id} not found")))?;
        f(t).map(|()| Reply::Done)
    })
    .await
    .unwrap_or_else(|e| Err(error(ErrorCode::Internal, e.to_string())))
}

async fn create(agent: &Arc<Agent>, req: CreateContainer) -> Result<Reply, AgentError> {
    let id = req.container_id.clone();
    tracing::debug!(container_id = %id, "create: request received");
    if agent.table.lock().unwrap().map.contains_key(&id) {
        return Err(error(
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
    .map_err(|e| error(ErrorCode::Internal, e.to_string()))??;
    let pid = created.spawned.pid;
    tracing::info!(container_id = %id, pid, "container created");
    let pty = created
        .spawned
        .pty
        .as_ref()
        .and_then(|p| p.try_clone().ok());
    agent.table.lock().unwrap().map.insert(
        id.clone(),
        Tracked {
            container: created.container,
            pid,
            pty,
            pending_execs: HashMap::new(),
            execs: HashMap::new(),
        },
    );
    relay(agent, id, None, created.spawned, stdio);
    Ok(Reply::Created { pid })
}

async fn start_exec(agent: &Arc<Agent>, id: String, exec_id: String) -> Result<Reply, AgentError> {
    let (process, stdio, init_pid) = {
        let mut table = agent.table.lock().unwrap();
        let t = table
            .map
            .get_mut(&id)
            .ok_or_else(|| error(ErrorCode::NotFound, format!("container {id} not found")))?;
        let (p, s) = t
            .pending_execs
            .remove(&exec_id)
            .ok_or_else(|| error(ErrorCode::NotFound, format!("exec {exec_id} not found")))?;
        (p, s, t.pid)
    };
    let reaper = agent.reaper.clone();
    let (id2, e2) = (id.clone(), exec_id.clone());
    let spawned = tokio::task::spawn_blocking(move || {
        container::exec(&id2, &e2, init_pid, &process, stdio, &reaper)
    })
    .await
    .map_err(|e| error(ErrorCode::Internal, e.to_string()))??;
    let pid = spawned.pid;
    tracing::info!(container_id = %id, exec_id = %exec_id, pid, "exec started");
    if let Some(t) = agent.table.lock().unwrap().map.get_mut(&id) {
        let pty = spawned.pty.as_ref().and_then(|p| p.try_clone().ok());
        t.execs.insert(exec_id.clone(), (pid, pty));
    }
    relay(agent, id, Some(exec_id), spawned, stdio);
    Ok(Reply::Created { pid })
}

/// Wires a new process's stdio to its streams and reports its exit.
fn relay(agent: &Arc<Agent>, id: String, exec_id: Option<String>, sp: Spawned, stdio: StdioSpec) {
    let mut pumps = Vec::new();
    for (file, stream) in [(sp.io.stdout, stdio.stdout), (sp.io.stderr, stdio.stderr)] {
        if let (Some(f), Some(s)) = (file, stream) {
            let window = Arc::new(Semaphore::new(STREAM_WINDOW));
            agent.windows.lock().unwrap().insert(s, window.clone());
            pumps.push(tokio::spawn(pump(
                agent.tx.clone(),
                tokio::fs::File::from_std(f),
                s,
                window,
            )));
        }
    }
    if let (Some(input), Some(stream)) = (sp.io.stdin, stdio.stdin) {
        let (wtx, wrx) = mpsc::unbounded_channel();
        agent.stdin.lock().unwrap().insert(stream, wtx);
        tokio::spawn(feed_stdin(
            agent.tx.clone(),
            tokio::fs::File::from_std(input),
            stream,
            wrx,
        ));
    }
    let agent = agent.clone();
    let pid = sp.pid;
    let exit = sp.exit;
    tokio::spawn(async move {
        let status = exit.await.unwrap_or(ExitStatus::Code(255));
        tracing::info!(container_id = %id, exec_id = ?exec_id, pid, ?status, "process exited");
        // Output written before the exit goes out before the exit event; a
        // daemonised grandchild holding the pipe open can't delay it forever.
        let drain = async {
            for p in pumps {
                let _ = p.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        for s in [stdio.stdout, stdio.stderr].into_iter().flatten() {
            agent.windows.lock().unwrap().remove(&s);
        }
        if let Some(s) = stdio.stdin {
            agent.stdin.lock().unwrap().remove(&s);
        }
        agent
            .tx
            .send_json(
                FrameKind::Event,
                0,
                &Event::Exited {
                    container_id: id,
                    exec_id,
                    pid,
                    status,
                },
            )
            .await;
    });
}

/// Connects to `127.0.0.1:port` in the agent's network namespace, which is
/// the pod's (its containers share the VM's network), and relays the
/// connection on the two streams: each direction ends on its own, as TCP
/// half-closes do.
async fn connect(
    agent: &Arc<Agent>,
    port: u16,
    input: u32,
    output: u32,
) -> Result<Reply, AgentError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let conn =
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(error(
                    ErrorCode::FailedPrecondition,
                    format!("connect to {addr} in the pod: {e}"),
                ))
            }
            Err(_) => {
                return Err(error(
                    ErrorCode::FailedPrecondition,
                    format!("connect to {addr} in the pod: timed out after 5 s"),
                ))
            }
        };
    let _ = conn.set_nodelay(true);
    let (rd, wr) = conn.into_split();
    let window = Arc::new(Semaphore::new(STREAM_WINDOW));
    agent.windows.lock().unwrap().insert(output, window.clone());
    let (wtx, wrx) = mpsc::unbounded_channel();
    agent.stdin.lock().unwrap().insert(input, wtx);
    let agent2 = agent.clone();
    tokio::spawn(async move {
        pump(agent2.tx.clone(), rd, output, window).await;
        agent2.windows.lock().unwrap().remove(&output);
    });
    // Ends (and half-closes the connection) when the host closes `input`.
    tokio::spawn(feed_stdin(agent.tx.clone(), wr, input, wrx));
    Ok(Reply::Done)
}

async fn pump(
    tx: Sender,
    mut file: impl tokio::io::AsyncRead + Unpin,
    stream: u32,
    window: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; STDIO_CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Wait until the host has room for it.
                match window.acquire_many(n as u32).await {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
                tx.send(Frame::new(FrameKind::Data, stream, buf[..n].to_vec()))
                    .await
            }
        }
    }
    tx.send(Frame::new(FrameKind::Close, stream, Vec::new()))
        .await;
}

async fn feed_stdin(
    tx: Sender,
    mut file: impl tokio::io::AsyncWrite + Unpin,
    stream: u32,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(data) = rx.recv().await {
        if file.write_all(&data).await.is_err() {
            break;
        }
        let _ = file.flush().await;
        tx.send(Frame::credit(stream, data.len() as u32)).await;
    }
}
