//! containerd's task service on a scute sandbox: every call becomes agent
//! requests; stdio goes through [`crate::stdio`]; exits come back as agent
//! events and are published to containerd as TaskExit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim::util::timestamp;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use scute_protocol::{CreateContainer, Event, Reply, Request, StdioSpec};
use scute_runtime::bundle::Bundle;
use scute_runtime::client::{pump_input, pump_output, AgentClient};
use scute_runtime::sandbox::Sandbox;
use scute_runtime::share;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::errors::{map, not_found, status};
use crate::service::{Inner, Service};
use crate::stdio;

type TResult<T> = ttrpc::Result<T>;

/// One process: a container's init or an exec.
pub struct Proc {
    pub pid: u32,
    pub status: Status,
    pub exit_code: u32,
    pub exited_at: Option<Timestamp>,
    done: watch::Sender<bool>,
    stdin_stream: Option<u32>,
    stdin_task: Option<JoinHandle<()>>,
    io_tasks: Vec<JoinHandle<()>>,
    logger: Option<tokio::process::Child>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

pub struct Ctr {
    pub bundle: PathBuf,
    pub init: Proc,
    pub execs: std::collections::HashMap<String, Proc>,
    rootfs_mounted: bool,
}

impl Ctr {
    fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

impl Inner {
    fn client(&self) -> TResult<AgentClient> {
        self.client
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "sandbox is not running"))
    }

    fn config(&self) -> TResult<scute_runtime::Config> {
        let mut c = self.config.lock().unwrap();
        if c.is_none() {
            *c = Some(
                scute_runtime::Config::load(None)
                    .map_err(|e| map(&format!("sandbox {}", self.sandbox_id), e))?,
            );
        }
        Ok(c.clone().unwrap_or_default())
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = self.publisher.get() {
            if let Err(e) = p
                .publish(Default::default(), topic, &self.namespace, event)
                .await
            {
                tracing::warn!(sandbox_id = %self.sandbox_id, "publish {topic}: {e}");
            }
        }
    }

    /// Boots the VM on first use and starts the event loop.
    async fn ensure_sandbox(self: &Arc<Self>, netns: Option<PathBuf>) -> TResult<AgentClient> {
        let mut guard = self.sandbox.lock().await;
        if guard.is_none() {
            let config = self.config()?;
            let ctx = format!("sandbox {}", self.sandbox_id);
            let (mut sb, ()) =
                Sandbox::create(&config, &self.sandbox_id, netns.as_deref(), |_| Ok(()))
                    .await
                    .map_err(|e| map(&ctx, e))?;
            let events = std::mem::replace(&mut sb.events, tokio::sync::mpsc::channel(1).1);
            *self.client.lock().unwrap() = Some(sb.client.clone());
            let me = self.clone();
            tokio::spawn(async move { me.event_loop(events).await });
            *guard = Some(sb);
        }
        self.client()
    }

    async fn event_loop(self: Arc<Self>, mut events: tokio::sync::mpsc::Receiver<Event>) {
        while let Some(ev) = events.recv().await {
            if let Event::Exited {
                container_id,
                exec_id,
                pid,
                status,
            } = ev
            {
                let me = self.clone();
                tokio::spawn(async move {
                    me.process_exited(container_id, exec_id.unwrap_or_default(), pid, status)
                        .await
                });
            }
        }
        tracing::warn!(sandbox_id = %self.sandbox_id, "agent event stream ended");
        // The VM is gone: every process that was running is lost.
        let ids: Vec<(String, String, u32)> = {
            let ctrs = self.containers.lock().unwrap();
            ctrs.iter()
                .flat_map(|(cid, c)| {
                    std::iter::once((cid.clone(), String::new(), &c.init))
                        .chain(c.execs.iter().map(|(e, p)| (cid.clone(), e.clone(), p)))
                        .filter(|(_, _, p)| {
                            p.status == Status::RUNNING || p.status == Status::PAUSED
                        })
                        .map(|(c, e, p)| (c, e, p.pid))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (cid, eid, pid) in ids {
            self.process_exited(cid, eid, pid as i32, scute_protocol::ExitStatus::Signal(9))
                .await;
        }
    }

    async fn process_exited(
        &self,
        cid: String,
        exec_id: String,
        pid: i32,
        st: scute_protocol::ExitStatus,
    ) {
        let (io, logger) = {
            let mut ctrs = self.containers.lock().unwrap();
            let Some(p) = ctrs.get_mut(&cid).and_then(|c| c.proc_mut(&exec_id)) else {
                return;
            };
            (std::mem::take(&mut p.io_tasks), p.logger.take())
        };
        // Let the output reach its destination first (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for t in io {
                let _ = t.await;
            }
        })
        .await;
        if let Some(mut l) = logger {
            tokio::spawn(async move {
                let _ = l.wait().await;
            });
        }
        let code = st.shell_code() as u32;
        let at = timestamp().ok();
        {
            let mut ctrs = self.containers.lock().unwrap();
            let Some(p) = ctrs.get_mut(&cid).and_then(|c| c.proc_mut(&exec_id)) else {
                return;
            };
            if p.status == Status::STOPPED {
                return;
            }
            p.status = Status::STOPPED;
            p.exit_code = code;
            p.exited_at = at.clone();
            if let Some(t) = p.stdin_task.take() {
                t.abort();
            }
            let _ = p.done.send(true);
        }
        tracing::info!(sandbox_id = %self.sandbox_id, container_id = %cid, exec_id = %exec_id, pid, code, "exited");
        let id = if exec_id.is_empty() {
            cid.clone()
        } else {
            exec_id
        };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: cid,
                id,
                pid: pid as u32,
                exit_status: code,
                exited_at: MessageField::from_option(at),
                ..Default::default()
            }),
        )
        .await;
    }
}

/// Opens containerd's stdio and wires it to new agent streams.
async fn wire_stdio(
    client: &AgentClient,
    ns: &str,
    cid: &str,
    stdin: &str,
    stdout: &str,
    stderr: &str,
    terminal: bool,
) -> TResult<(StdioSpec, Proc)> {
    let ctx = |e: std::io::Error| {
        status(
            Code::INVALID_ARGUMENT,
            format!("container {cid}: stdio: {e}"),
        )
    };
    let outputs = stdio::open_outputs(stdout, stderr, terminal, cid, ns)
        .await
        .map_err(ctx)?;
    let input = stdio::open_stdin(stdin).map_err(ctx)?;
    let mut io_tasks = Vec::new();
    let mut spec = StdioSpec {
        terminal,
        ..Default::default()
    };
    for (sink, slot) in [
        (outputs.stdout, &mut spec.stdout),
        (outputs.stderr, &mut spec.stderr),
    ] {
        if let Some(sink) = sink {
            let stream = client.open_output();
            *slot = Some(stream.id);
            io_tasks.push(tokio::spawn(pump_output(stream, sink)));
        } else if !terminal || slot.is_none() {
            // Output nobody asked for is discarded in the guest (/dev/null).
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
    let (done, _) = watch::channel(false);
    Ok((
        spec,
        Proc {
            pid: 0,
            status: Status::CREATED,
            exit_code: 0,
            exited_at: None,
            done,
            stdin_stream,
            stdin_task,
            io_tasks,
            logger: outputs.logger,
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            terminal,
        },
    ))
}

fn ts_or_default(t: &Option<Timestamp>) -> MessageField<Timestamp> {
    MessageField::from_option(t.clone())
}

impl Service {
    fn ctx(&self, cid: &str) -> String {
        format!("sandbox {} container {cid}", self.inner.sandbox_id)
    }

    fn with_proc<T>(&self, cid: &str, exec_id: &str, f: impl FnOnce(&mut Proc) -> T) -> TResult<T> {
        let mut ctrs = self.inner.containers.lock().unwrap();
        let c = ctrs
            .get_mut(cid)
            .ok_or_else(|| not_found(format!("container {cid}")))?;
        let p = c
            .proc_mut(exec_id)
            .ok_or_else(|| not_found(format!("exec {exec_id} of {cid}")))?;
        Ok(f(p))
    }

    async fn create_inner(&self, req: &api::CreateTaskRequest) -> TResult<u32> {
        let cid = req.id.clone();
        let ctx = self.ctx(&cid);
        if self.inner.containers.lock().unwrap().contains_key(&cid) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("{ctx}: already exists"),
            ));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = bundle_dir.join("rootfs");
        let mut mounted = false;
        for m in &req.rootfs {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| status(Code::INTERNAL, format!("{ctx}: {e}")))?;
            containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs)
                .await
                .map_err(|e| status(Code::INTERNAL, format!("{ctx}: mount rootfs: {e}")))?;
            mounted = true;
        }
        let result = self.create_in_vm(req, &bundle_dir).await;
        match result {
            Ok((pid, mut proc)) => {
                proc.pid = pid;
                self.inner.containers.lock().unwrap().insert(
                    cid,
                    Ctr {
                        bundle: bundle_dir,
                        init: proc,
                        execs: Default::default(),
                        rootfs_mounted: mounted,
                    },
                );
                Ok(pid)
            }
            Err(e) => {
                if let Ok(sb) = self.inner.sandbox.try_lock() {
                    if let Some(sb) = sb.as_ref() {
                        share::unshare_container(&sb.shared_dir(), &cid);
                    }
                }
                if mounted {
                    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                }
                Err(e)
            }
        }
    }

    async fn create_in_vm(
        &self,
        req: &api::CreateTaskRequest,
        bundle_dir: &Path,
    ) -> TResult<(u32, Proc)> {
        let cid = &req.id;
        let ctx = self.ctx(cid);
        let bundle = Bundle::load(bundle_dir).map_err(|e| map(&ctx, e))?;
        let client = self.inner.ensure_sandbox(bundle.network_ns()).await?;
        let shared = {
            let sb = self.inner.sandbox.lock().await;
            sb.as_ref()
                .map(|s| s.shared_dir())
                .ok_or_else(|| status(Code::INTERNAL, "no sandbox"))?
        };
        let spec = share::share_container(&shared, cid, &bundle).map_err(|e| map(&ctx, e))?;
        let (stdio, proc) = wire_stdio(
            &client,
            &self.inner.namespace,
            cid,
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        )
        .await?;
        let reply = client
            .call(&Request::CreateContainer(CreateContainer {
                container_id: cid.clone(),
                spec,
                stdio,
            }))
            .await
            .map_err(|e| map(&ctx, e))?;
        match reply {
            Reply::Created { pid } => Ok((pid as u32, proc)),
            other => Err(status(
                Code::INTERNAL,
                format!("{ctx}: unexpected reply {other:?}"),
            )),
        }
    }

    async fn teardown_if_empty(&self) {
        if !self.inner.containers.lock().unwrap().is_empty() {
            return;
        }
        *self.inner.client.lock().unwrap() = None;
        let sb = self.inner.sandbox.lock().await.take();
        if let Some(sb) = sb {
            // Drop kills the VM and virtiofsd and removes the state dir.
            let _ = tokio::task::spawn_blocking(move || drop(sb)).await;
        }
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TResult<api::CreateTaskResponse> {
        tracing::info!(sandbox_id = %self.inner.sandbox_id, container_id = %req.id, "create");
        let pid = match self.create_inner(&req).await {
            Ok(pid) => pid,
            Err(e) => {
                self.teardown_if_empty().await;
                return Err(e);
            }
        };
        self.inner
            .publish(
                topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TResult<api::StartResponse> {
        let ctx = self.ctx(&req.id);
        let client = self.inner.client()?;
        let pid = if req.exec_id.is_empty() {
            client
                .call(&Request::StartContainer {
                    container_id: req.id.clone(),
                })
                .await
                .map_err(|e| map(&ctx, e))?;
            self.with_proc(&req.id, "", |p| {
                p.status = Status::RUNNING;
                p.pid
            })?
        } else {
            let reply = client
                .call(&Request::StartExec {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                })
                .await
                .map_err(|e| map(&format!("{ctx} exec {}", req.exec_id), e))?;
            let pid = match reply {
                Reply::Created { pid } => pid as u32,
                _ => 0,
            };
            self.with_proc(&req.id, &req.exec_id, |p| {
                if p.status == Status::CREATED {
                    p.status = Status::RUNNING;
                }
                p.pid = pid;
                pid
            })?
        };
        if req.exec_id.is_empty() {
            self.inner
                .publish(
                    topics::TASK_START_EVENT_TOPIC,
                    Box::new(TaskStart {
                        container_id: req.id.clone(),
                        pid,
                        ..Default::default()
                    }),
                )
                .await;
        } else {
            self.inner
                .publish(
                    topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                    Box::new(TaskExecStarted {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        pid,
                        ..Default::default()
                    }),
                )
                .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TResult<api::StateResponse> {
        let ctrs = self.inner.containers.lock().unwrap();
        let c = ctrs
            .get(&req.id)
            .ok_or_else(|| not_found(format!("container {}", req.id)))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| not_found(format!("exec {}", req.exec_id)))?;
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid,
            status: EnumOrUnknown::new(p.status),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: p.exit_code,
            exited_at: ts_or_default(&p.exited_at),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TResult<api::WaitResponse> {
        let mut rx = self.with_proc(&req.id, &req.exec_id, |p| p.done.subscribe())?;
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.with_proc(&req.id, &req.exec_id, |p| api::WaitResponse {
            exit_status: p.exit_code,
            exited_at: ts_or_default(&p.exited_at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TResult<api::Empty> {
        let ctx = self.ctx(&req.id);
        let st = self.with_proc(&req.id, &req.exec_id, |p| p.status)?;
        if st == Status::STOPPED && !req.all {
            return Err(not_found(format!("{ctx}: process already finished")));
        }
        let client = self.inner.client()?;
        client
            .call(&Request::Signal {
                container_id: req.id.clone(),
                exec_id: (!req.exec_id.is_empty()).then(|| req.exec_id.clone()),
                signal: req.signal as i32,
                all: req.all,
            })
            .await
            .map_err(|e| map(&ctx, e))?;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TResult<api::DeleteResponse> {
        let ctx = self.ctx(&req.id);
        if !req.exec_id.is_empty() {
            let mut ctrs = self.inner.containers.lock().unwrap();
            let c = ctrs
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("container {}", req.id)))?;
            let p = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(format!("exec {}", req.exec_id)))?;
            if p.status == Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{ctx}: exec {} is running", req.exec_id),
                ));
            }
            let p = c
                .execs
                .remove(&req.exec_id)
                .unwrap_or_else(|| unreachable!());
            return Ok(api::DeleteResponse {
                pid: p.pid,
                exit_status: p.exit_code,
                exited_at: ts_or_default(&p.exited_at),
                ..Default::default()
            });
        }
        let (st, pid) = self.with_proc(&req.id, "", |p| (p.status, p.pid))?;
        if st == Status::RUNNING || st == Status::PAUSED {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{ctx}: container is running; kill it first"),
            ));
        }
        if let Ok(client) = self.inner.client() {
            match client
                .call(&Request::DeleteContainer {
                    container_id: req.id.clone(),
                    force: true,
                })
                .await
            {
                Ok(_) => {}
                Err(scute_runtime::Error::Agent(a))
                    if a.code == scute_protocol::ErrorCode::NotFound => {}
                Err(e) => {
                    tracing::warn!(sandbox_id = %self.inner.sandbox_id, container_id = %req.id, "agent delete: {e}")
                }
            }
        }
        let c = self.inner.containers.lock().unwrap().remove(&req.id);
        let Some(mut c) = c else {
            return Err(not_found(format!("container {}", req.id)));
        };
        if st == Status::CREATED {
            // Never started: it has no exit status of its own.
            c.init.exit_code = 128 + libc::SIGKILL as u32;
            c.init.exited_at = timestamp().ok();
        }
        if let Some(t) = c.init.stdin_task.take() {
            t.abort();
        }
        for t in c.init.io_tasks.drain(..) {
            t.abort();
        }
        if let Some(sb) = self.inner.sandbox.lock().await.as_ref() {
            share::unshare_container(&sb.shared_dir(), &req.id);
        }
        if c.rootfs_mounted {
            let _ = nix::mount::umount2(&c.bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        }
        self.inner
            .publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid,
                    exit_status: c.init.exit_code,
                    exited_at: ts_or_default(&c.init.exited_at),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: c.init.exit_code,
            exited_at: ts_or_default(&c.init.exited_at),
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TResult<api::Empty> {
        let ctx = format!("{} exec {}", self.ctx(&req.id), req.exec_id);
        let exists = {
            let ctrs = self.inner.containers.lock().unwrap();
            let c = ctrs
                .get(&req.id)
                .ok_or_else(|| not_found(format!("container {}", req.id)))?;
            if c.init.status != Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{ctx}: container is not running"),
                ));
            }
            c.execs.contains_key(&req.exec_id)
        };
        if exists {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("{ctx}: already exists"),
            ));
        }
        let process: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{ctx}: process spec: {e}")))?;
        let client = self.inner.client()?;
        let (stdio, proc) = wire_stdio(
            &client,
            &self.inner.namespace,
            &req.id,
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        )
        .await?;
        client
            .call(&Request::Exec {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process,
                stdio,
            })
            .await
            .map_err(|e| map(&ctx, e))?;
        if let Some(c) = self.inner.containers.lock().unwrap().get_mut(&req.id) {
            c.execs.insert(req.exec_id.clone(), proc);
        }
        self.inner
            .publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TResult<api::Empty> {
        let client = self.inner.client()?;
        client
            .call(&Request::ResizePty {
                container_id: req.id.clone(),
                exec_id: (!req.exec_id.is_empty()).then(|| req.exec_id.clone()),
                width: req.width.min(u16::MAX as u32) as u16,
                height: req.height.min(u16::MAX as u32) as u16,
            })
            .await
            .map_err(|e| map(&self.ctx(&req.id), e))?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TResult<api::Empty> {
        let (stream, task) = self.with_proc(&req.id, &req.exec_id, |p| {
            (p.stdin_stream.take(), p.stdin_task.take())
        })?;
        if let Some(t) = task {
            t.abort();
        }
        if let Some(s) = stream {
            let client = self.inner.client()?;
            client
                .close_stream(s)
                .await
                .map_err(|e| map(&self.ctx(&req.id), e))?;
        }
        Ok(api::Empty::new())
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TResult<api::PidsResponse> {
        let client = self.inner.client()?;
        let reply = client
            .call(&Request::Pids {
                container_id: req.id.clone(),
            })
            .await
            .map_err(|e| map(&self.ctx(&req.id), e))?;
        let pids = match reply {
            Reply::Pids { pids } => pids,
            _ => Vec::new(),
        };
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TResult<api::StatsResponse> {
        let client = self.inner.client()?;
        let reply = client
            .call(&Request::Stats {
                container_id: req.id.clone(),
            })
            .await
            .map_err(|e| map(&self.ctx(&req.id), e))?;
        let Reply::Stats(s) = reply else {
            return Err(status(Code::INTERNAL, "unexpected stats reply"));
        };
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: s.pids_current,
                limit: s.pids_limit.unwrap_or(0),
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: s.cpu_usage_ns,
                    user: s.cpu_user_ns,
                    kernel: s.cpu_system_ns,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry {
                    usage: s.memory_usage_bytes,
                    limit: s.memory_limit_bytes.unwrap_or(u64::MAX),
                    max: s.memory_max_usage_bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: containerd_shim::protos::protobuf::Message::write_to_bytes(&metrics)
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TResult<api::Empty> {
        let client = self.inner.client()?;
        client
            .call(&Request::Pause {
                container_id: req.id.clone(),
            })
            .await
            .map_err(|e| map(&self.ctx(&req.id), e))?;
        self.with_proc(&req.id, "", |p| p.status = Status::PAUSED)?;
        self.inner
            .publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TResult<api::Empty> {
        let client = self.inner.client()?;
        client
            .call(&Request::Resume {
                container_id: req.id.clone(),
            })
            .await
            .map_err(|e| map(&self.ctx(&req.id), e))?;
        self.with_proc(&req.id, "", |p| p.status = Status::RUNNING)?;
        self.inner
            .publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TResult<api::ConnectResponse> {
        let task_pid = self
            .inner
            .containers
            .lock()
            .unwrap()
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TResult<api::Empty> {
        if !self.inner.containers.lock().unwrap().is_empty() {
            return Ok(api::Empty::new());
        }
        self.teardown_if_empty().await;
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}
