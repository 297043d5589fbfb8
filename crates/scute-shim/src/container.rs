//! What the shim tracks of one container: its init process, its execs, and
//! the host resources it holds (rootfs mount, stdio pumps and loggers).

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::ttrpc::{self, Code};
use scute_protocol::StdioSpec;
use scute_runtime::client::{pump_input, pump_output, AgentClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::errors::status;
use crate::stdio;

/// One process: a container's init or an exec.
pub struct Process {
    /// What containerd is told: a host process of the sandbox (its VMM),
    /// never a guest pid, which on the host names an unrelated process.
    pub pid: u32,
    /// The process's pid in the guest, for the agent and the namespace
    /// paths of a pod's members.
    pub guest_pid: u32,
    pub status: Status,
    pub exit_code: u32,
    pub exited_at: Option<Timestamp>,
    pub done: watch::Sender<bool>,
    pub stdin_stream: Option<u32>,
    pub stdin_task: Option<JoinHandle<()>>,
    pub io_tasks: Vec<JoinHandle<()>>,
    pub logger: Option<tokio::process::Child>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl Process {
    pub fn is_live(&self) -> bool {
        matches!(self.status, Status::RUNNING | Status::PAUSED)
    }

    pub fn exited_at(&self) -> MessageField<Timestamp> {
        MessageField::from_option(self.exited_at.clone())
    }

    /// Stops relaying its stdio (the process is gone or being deleted).
    pub fn stop_io(&mut self) {
        if let Some(t) = self.stdin_task.take() {
            t.abort();
        }
        for t in self.io_tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop_io();
    }
}

pub struct Container {
    pub bundle: PathBuf,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub rootfs_mounted: bool,
}

impl Container {
    pub fn process_mut(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }

    /// Every process still running or paused: (exec id, guest pid).
    pub fn live(&self) -> impl Iterator<Item = (String, u32)> + '_ {
        std::iter::once((String::new(), &self.init))
            .chain(self.execs.iter().map(|(e, p)| (e.clone(), p)))
            .filter(|(_, p)| p.is_live())
            .map(|(e, p)| (e, p.guest_pid))
    }
}

/// containerd's stdio for a new process, opened and wired to new agent
/// streams.
pub struct StdioRequest<'a> {
    pub namespace: &'a str,
    pub container_id: &'a str,
    pub stdin: &'a str,
    pub stdout: &'a str,
    pub stderr: &'a str,
    pub terminal: bool,
}

impl StdioRequest<'_> {
    pub async fn wire(&self, client: &AgentClient) -> ttrpc::Result<(StdioSpec, Process)> {
        let cid = self.container_id;
        let ctx = |e: std::io::Error| {
            status(
                Code::INVALID_ARGUMENT,
                format!("container {cid}: stdio: {e}"),
            )
        };
        let outputs =
            stdio::open_outputs(self.stdout, self.stderr, self.terminal, cid, self.namespace)
                .await
                .map_err(ctx)?;
        let input = stdio::open_stdin(self.stdin).map_err(ctx)?;
        let mut io_tasks = Vec::new();
        let mut spec = StdioSpec {
            terminal: self.terminal,
            ..Default::default()
        };
        // Output nobody asked for is discarded in the guest (/dev/null).
        for (sink, slot) in [
            (outputs.stdout, &mut spec.stdout),
            (outputs.stderr, &mut spec.stderr),
        ] {
            if let Some(sink) = sink {
                let stream = client.open_output();
                *slot = Some(stream.id);
                io_tasks.push(tokio::spawn(pump_output(stream, sink)));
            }
        }
        let mut stdin_stream = None;
        let mut stdin_task = None;
        if let Some(src) = input {
            let id = client.open_input();
            spec.stdin = Some(id);
            stdin_stream = Some(id);
            stdin_task = Some(tokio::spawn(pump_input(client.clone(), id, src)));
        }
        let mut p = self.process();
        p.stdin_stream = stdin_stream;
        p.stdin_task = stdin_task;
        p.io_tasks = io_tasks;
        p.logger = outputs.logger;
        Ok((spec, p))
    }

    /// The process this request creates, its stdio not wired yet.
    pub fn process(&self) -> Process {
        let (done, _) = watch::channel(false);
        Process {
            pid: 0,
            guest_pid: 0,
            status: Status::CREATED,
            exit_code: 0,
            exited_at: None,
            done,
            stdin_stream: None,
            stdin_task: None,
            io_tasks: Vec::new(),
            logger: None,
            stdin: self.stdin.to_owned(),
            stdout: self.stdout.to_owned(),
            stderr: self.stderr.to_owned(),
            terminal: self.terminal,
        }
    }
}
