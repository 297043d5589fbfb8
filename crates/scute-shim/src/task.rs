//! containerd's task service: each call delegates to the sandbox
//! ([`crate::sandbox::SandboxState`]) and turns the result into containerd's
//! response and events.

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::api;
use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::Code;
use scute_protocol::CgroupStats;

use crate::errors::{map, status};
use crate::sandbox::{Deleted, TResult};
use crate::service::Service;

impl From<Deleted> for api::DeleteResponse {
    fn from(d: Deleted) -> Self {
        api::DeleteResponse {
            pid: d.pid,
            exit_status: d.exit_code,
            exited_at: d.exited_at,
            ..Default::default()
        }
    }
}

impl Service {
    /// Maps an agent error for container `cid` to one naming the sandbox
    /// and the container.
    fn failed<'a>(
        &'a self,
        cid: &'a str,
    ) -> impl FnOnce(scute_runtime::Error) -> containerd_shim_protos::ttrpc::Error + 'a {
        move |e| map(&self.sandbox.ctx(cid), e)
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TResult<api::CreateTaskResponse> {
        tracing::info!(sandbox_id = %self.sandbox.sandbox_id, container_id = %req.id, "create");
        let pid = self.sandbox.create(&req).await?;
        self.sandbox
            .send_event(TaskCreate {
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
            })
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
        let pid = self.sandbox.start(&req.id, &req.exec_id).await?;
        if req.exec_id.is_empty() {
            self.sandbox
                .send_event(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                })
                .await;
        } else {
            self.sandbox
                .send_event(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                })
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
        let bundle = self
            .sandbox
            .container(&req.id, |c| c.bundle.display().to_string())?;
        self.sandbox
            .process(&req.id, &req.exec_id, |p| api::StateResponse {
                id: req.id.clone(),
                bundle,
                pid: p.pid,
                status: EnumOrUnknown::new(p.status),
                stdin: p.stdin.clone(),
                stdout: p.stdout.clone(),
                stderr: p.stderr.clone(),
                terminal: p.terminal,
                exit_status: p.exit_code,
                exited_at: p.exited_at(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TResult<api::WaitResponse> {
        let mut rx = self
            .sandbox
            .process(&req.id, &req.exec_id, |p| p.done.subscribe())?;
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.sandbox
            .process(&req.id, &req.exec_id, |p| api::WaitResponse {
                exit_status: p.exit_code,
                exited_at: p.exited_at(),
                ..Default::default()
            })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TResult<api::Empty> {
        self.sandbox
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TResult<api::DeleteResponse> {
        let deleted = if req.exec_id.is_empty() {
            self.sandbox.delete_container(&req.id).await?
        } else {
            self.sandbox.delete_exec(&req.id, &req.exec_id)?
        };
        Ok(deleted.into())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TResult<api::Empty> {
        self.sandbox.exec(&req).await?;
        self.sandbox
            .send_event(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TResult<api::Empty> {
        let exec = (!req.exec_id.is_empty()).then_some(req.exec_id.as_str());
        let (w, h) = (
            req.width.min(u16::MAX as u32) as u16,
            req.height.min(u16::MAX as u32) as u16,
        );
        self.sandbox
            .guest()?
            .resize_pty(&req.id, exec, w, h)
            .await
            .map_err(self.failed(&req.id))?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TResult<api::Empty> {
        let (stream, task) = self.sandbox.process(&req.id, &req.exec_id, |p| {
            (p.stdin_stream.take(), p.stdin_task.take())
        })?;
        if let Some(t) = task {
            t.abort();
        }
        if let Some(s) = stream {
            self.sandbox
                .guest()?
                .close_stream(s)
                .await
                .map_err(|e| map(&self.sandbox.ctx(&req.id), e))?;
        }
        Ok(api::Empty::new())
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TResult<api::PidsResponse> {
        let pids = self
            .sandbox
            .guest()?
            .pids(&req.id)
            .await
            .map_err(self.failed(&req.id))?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
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
        let s = self
            .sandbox
            .guest()?
            .stats(&req.id)
            .await
            .map_err(self.failed(&req.id))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(metrics(&s)?),
            ..Default::default()
        })
    }

    /// New limits for a running container (CRI UpdateContainerResources):
    /// OCI LinuxResources as JSON, applied to its cgroup in the guest.
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TResult<api::Empty> {
        let bad = |m: String| {
            crate::errors::status(
                containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT,
                format!("{}: update: {m}", self.sandbox.ctx(&req.id)),
            )
        };
        let resources: serde_json::Value = match req.resources.as_ref() {
            Some(any) => serde_json::from_slice(&any.value)
                .map_err(|e| bad(format!("resources ({}): {e}", any.type_url)))?,
            None => return Err(bad("no resources given".into())),
        };
        let limits = scute_runtime::limits::from_oci(&resources).map_err(bad)?;
        self.sandbox
            .guest()?
            .update(&req.id, limits)
            .await
            .map_err(self.failed(&req.id))?;
        Ok(api::Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TResult<api::Empty> {
        self.sandbox
            .guest()?
            .pause(&req.id)
            .await
            .map_err(self.failed(&req.id))?;
        self.sandbox
            .process(&req.id, "", |p| p.status = api::Status::PAUSED)?;
        self.sandbox
            .send_event(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            })
            .await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TResult<api::Empty> {
        self.sandbox
            .guest()?
            .resume(&req.id)
            .await
            .map_err(self.failed(&req.id))?;
        self.sandbox
            .process(&req.id, "", |p| p.status = api::Status::RUNNING)?;
        self.sandbox
            .send_event(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            })
            .await;
        Ok(api::Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TResult<api::ConnectResponse> {
        let task_pid = self.sandbox.container(&req.id, |c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.into(),
            ..Default::default()
        })
    }

    /// containerd asks after every task delete; the shim (and the VM) only
    /// go when the sandbox has no container left. The VM is stopped after
    /// this reply, before the shim exits ([`crate::service::Service`]'s
    /// `wait`): containerd (and `ctr run --rm`, `docker rm`) wait for the
    /// reply, and nothing of theirs needs the VM gone first.
    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TResult<api::Empty> {
        // A cancelled Create is undone (and says so in the log, which
        // containerd stops reading once it has this answer) before the
        // answer goes.
        self.sandbox.settle_creates().await;
        if !self.sandbox.is_empty() {
            return Ok(api::Empty::new());
        }
        // containerd stops reading the shim's log soon after this answer:
        // what the teardown logs later may not reach it.
        tracing::info!(sandbox_id = %self.sandbox.sandbox_id, "no container left: answering Shutdown, then stopping the VM");
        self.sandbox.mark_releasing();
        self.sandbox.exit.signal();
        Ok(api::Empty::new())
    }
}

/// The agent's cgroup figures as containerd's (cgroup v1 schema) metrics.
fn metrics(s: &CgroupStats) -> TResult<Any> {
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
    Ok(Any {
        type_url: "io.containerd.cgroups.v1.Metrics".into(),
        value: containerd_shim::protos::protobuf::Message::write_to_bytes(&metrics)
            .map_err(|e| status(Code::INTERNAL, e.to_string()))?,
        ..Default::default()
    })
}
