//! `scute run`: one bundle in one fresh sandbox, stdio relayed, exit status
//! returned, everything torn down afterwards.

use std::time::{Duration, Instant};

use scute_protocol::{CreateContainer, Event, ExitStatus, StdioSpec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::bundle::Bundle;
use crate::client::{pump_input, pump_output};
use crate::sandbox::{BootTimings, Sandbox};
use crate::share::share_container;
use crate::{Config, Error};

/// The caller's stdio. With a terminal, `stdout` gets the pty and `stderr`
/// is unused.
pub struct RunIo {
    pub stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    pub stdout: Box<dyn AsyncWrite + Unpin + Send>,
    pub stderr: Box<dyn AsyncWrite + Unpin + Send>,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: ExitStatus,
    pub boot: BootTimings,
    /// Create + start requests.
    pub start: Duration,
    /// Process start → exit event.
    pub process: Duration,
    pub kernel_release: String,
}

/// Runs `bundle` as `id`. Signals received on `signals` are forwarded to the
/// process once it runs; before that, the first one aborts the run.
pub async fn run(
    config: &Config,
    id: &str,
    bundle: &Bundle,
    io: RunIo,
    mut signals: mpsc::Receiver<i32>,
) -> Result<RunOutcome, Error> {
    let netns = bundle.network_ns();
    let cgroups_path = bundle
        .raw
        .pointer("/linux/cgroupsPath")
        .and_then(|v| v.as_str());
    let boot = Sandbox::create(config, id, netns.as_deref(), cgroups_path, |shared| {
        share_container(shared, id, bundle, &[])
    });
    let (mut sandbox, spec) = tokio::select! {
        r = boot => r?,
        Some(sig) = signals.recv() => {
            return Err(Error::Boot {
                id: id.to_owned(),
                message: format!("interrupted by signal {sig} during boot"),
                console: None,
            });
        }
    };
    let t_start = Instant::now();
    let copies = create_and_start(&sandbox, id, spec, bundle.terminal(), io).await?;
    let start = t_start.elapsed();
    let t_proc = Instant::now();
    let status = wait_exit(config, &mut sandbox, id, &mut signals).await?;
    let process = t_proc.elapsed();
    // The agent sends stream ends before the exit event; allow the copies to drain.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for c in copies {
            let _ = c.await;
        }
    })
    .await;
    Ok(RunOutcome {
        status,
        boot: sandbox.timings.clone(),
        start,
        process,
        kernel_release: sandbox.agent.kernel_release.clone(),
    })
}

/// Creates container `id` with the caller's stdio wired to agent streams,
/// and starts it; the output copies, to wait for at the end.
async fn create_and_start(
    sandbox: &Sandbox,
    id: &str,
    spec: serde_json::Value,
    terminal: bool,
    io: RunIo,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let client = &sandbox.client;
    let stdout_s = client.open_output();
    let stderr_s = (!terminal).then(|| client.open_output());
    let stdin_id = client.open_input();
    let stdio = StdioSpec {
        stdin: io.stdin.is_some().then_some(stdin_id),
        stdout: Some(stdout_s.id),
        stderr: stderr_s.as_ref().map(|s| s.id),
        terminal,
    };
    let container_id = id.to_owned();
    let pid = client
        .create_container(CreateContainer {
            container_id,
            spec,
            stdio,
        })
        .await?;
    tracing::debug!(sandbox_id = id, container_id = id, pid, "created");
    let mut copies = vec![tokio::spawn(pump_output(stdout_s, io.stdout))];
    if let Some(s) = stderr_s {
        copies.push(tokio::spawn(pump_output(s, io.stderr)));
    }
    if let Some(stdin) = io.stdin {
        tokio::spawn(pump_input(client.clone(), stdin_id, stdin));
    }
    client.start_container(id).await?;
    Ok(copies)
}

/// Waits for container `id`'s exit, forwarding `signals` to it; fails if
/// the VM dies, stops answering its liveness checks (then it is killed),
/// or its agent's connection ends first.
async fn wait_exit(
    config: &Config,
    sandbox: &mut Sandbox,
    id: &str,
    signals: &mut mpsc::Receiver<i32>,
) -> Result<ExitStatus, Error> {
    let client = sandbox.client.clone();
    let liveness = crate::foreground::liveness_lost(&client, config);
    tokio::pin!(liveness);
    let lost = |sandbox: &Sandbox, message: String| Error::VmLost {
        id: id.to_owned(),
        message,
        console: Some(sandbox.console_log()),
    };
    loop {
        tokio::select! {
            why = &mut liveness => {
                sandbox.kill_vm();
                return Err(lost(sandbox, format!("{why}; the VM was killed")));
            }
            ev = sandbox.events.recv() => match ev {
                Some(Event::Exited { container_id, exec_id: None, status, .. }) if container_id == id => return Ok(status),
                Some(other) => tracing::debug!(sandbox_id = id, ?other, "event"),
                None => return Err(lost(sandbox, "the agent's connection ended".into())),
            },
            Some(sig) = signals.recv() => {
                tracing::debug!(sandbox_id = id, sig, "forwarding signal");
                if let Err(e) = client.signal(id, None, sig, false).await {
                    tracing::warn!(sandbox_id = id, "forward signal {sig}: {e}");
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(st) = sandbox.vm_exited() {
                    return Err(lost(sandbox, format!("the VM exited ({st})")));
                }
            }
        }
    }
}
