//! The shim's sandbox: one VM (booted by the first container, the pod's
//! sandbox container under CRI), its agent, and every container and
//! process in it. All task behaviour lives here; [`crate::task`] delegates.
//! The VM's lifecycle is a [`VmState`]; the VM, its agent, the launcher and
//! containerd's event stream are behind the traits of [`crate::guest`], so
//! the unit tests ([`tests`]) run this logic against fakes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::event::Event as ShimEvent;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::util::timestamp;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskDelete, TaskExit};
use containerd_shim_protos::ttrpc::Code;
use scute_protocol::{CreateContainer, Event, ExitStatus};
use scute_runtime::bundle::Bundle;
use scute_runtime::pod::Role;
use scute_runtime::share;

use crate::container::{Container, Process, StdioRequest};
use crate::errors::{map, not_found, status};
use crate::guest::{EventSink, Guest, LaunchRequest, Launcher};
use crate::vmstate::{Running, VmPhase, VmState};

#[cfg(test)]
mod tests;

pub use crate::errors::TResult;

pub struct SandboxState {
    pub namespace: String,
    /// The shim's own id: the sandbox id, which names `/run/scute/<id>`.
    pub sandbox_id: String,
    pub exit: ExitSignal,
    config: Mutex<Option<scute_runtime::Config>>,
    /// containerd's event stream, set once the task service exists.
    pub events: tokio::sync::OnceCell<Arc<dyn EventSink>>,
    /// Where the VM comes from.
    launcher: Box<dyn Launcher>,
    /// The VM's lifecycle; changed only through [`Self::transition`].
    vm: Mutex<VmState>,
    /// Held while the VM is launched or torn down: one change at a time,
    /// and a second Create waits for the first one's VM.
    vm_change: tokio::sync::Mutex<()>,
    containers: Mutex<HashMap<String, Container>>,
    /// Undos of cancelled Creates still running: Shutdown waits for them.
    undos: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Creates in progress.
    creating: std::sync::atomic::AtomicUsize,
}

/// How long a shim left empty by a cancelled Create waits for containerd.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// What a deleted process leaves for containerd.
#[derive(Debug)]
pub struct Deleted {
    pub pid: u32,
    pub exit_code: u32,
    pub exited_at:
        MessageField<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp>,
}

impl SandboxState {
    pub fn new(namespace: &str, sandbox_id: &str) -> Self {
        Self::with_launcher(
            namespace,
            sandbox_id,
            Box::new(crate::launch::QemuLauncher),
            None,
        )
    }

    /// A sandbox whose VMs come from `launcher`, with `config` (None: read
    /// scute's config file on first use).
    pub fn with_launcher(
        namespace: &str,
        sandbox_id: &str,
        launcher: Box<dyn Launcher>,
        config: Option<scute_runtime::Config>,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            exit: ExitSignal::default(),
            config: Mutex::new(config),
            events: tokio::sync::OnceCell::new(),
            launcher,
            vm: Mutex::new(VmState::Empty),
            vm_change: tokio::sync::Mutex::new(()),
            containers: Mutex::new(HashMap::new()),
            undos: Mutex::new(Vec::new()),
            creating: Default::default(),
        }
    }

    /// "sandbox S container C": the prefix of every error and log line.
    pub fn ctx(&self, cid: &str) -> String {
        format!("sandbox {} container {cid}", self.sandbox_id)
    }

    /// The VM's agent.
    pub fn guest(&self) -> TResult<Arc<dyn Guest>> {
        self.vm.lock().unwrap().guest().ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                format!("sandbox {}: the VM is not running", self.sandbox_id),
            )
        })
    }

    /// The VM, running or lost.
    fn running(&self) -> Option<Arc<Running>> {
        self.vm.lock().unwrap().vm().cloned()
    }

    pub fn vm_phase(&self) -> VmPhase {
        self.vm.lock().unwrap().phase()
    }

    /// Moves the VM's lifecycle to `next`; returns the state left. An
    /// invalid transition is a bug in this file: logged, and nothing moves.
    fn transition(&self, next: VmState) -> Option<VmState> {
        match self.vm.lock().unwrap().transition(next) {
            Ok(old) => Some(old),
            Err(e) => {
                tracing::error!(sandbox_id = %self.sandbox_id, "{e}");
                debug_assert!(false, "{e}");
                None
            }
        }
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

    /// Publishes `event` to containerd under its own topic.
    pub async fn send_event(&self, event: impl ShimEvent + 'static) {
        if let Some(sink) = self.events.get() {
            let topic = event.topic();
            if let Err(e) = sink.publish(&self.namespace, Box::new(event)).await {
                tracing::warn!(sandbox_id = %self.sandbox_id, "publish {topic}: {e}");
            }
        }
    }

    /// Runs `f` on container `cid`; NOT_FOUND names the sandbox and container.
    pub fn container<T>(&self, cid: &str, f: impl FnOnce(&mut Container) -> T) -> TResult<T> {
        let mut ctrs = self.containers.lock().unwrap();
        let c = ctrs.get_mut(cid).ok_or_else(|| not_found(self.ctx(cid)))?;
        Ok(f(c))
    }

    /// Runs `f` on process `exec_id` ("" for the init) of container `cid`.
    pub fn process<T>(
        &self,
        cid: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> T,
    ) -> TResult<T> {
        let ctx = self.ctx(cid);
        self.container(cid, |c| {
            c.process_mut(exec_id)
                .map(f)
                .ok_or_else(|| not_found(format!("{ctx} exec {exec_id}")))
        })?
    }

    pub fn is_empty(&self) -> bool {
        self.containers.lock().unwrap().is_empty()
    }

    /// Launches the VM on first use and starts watching it: its agent's
    /// events, its host processes, and (if configured) its liveness.
    async fn ensure_vm(
        self: &Arc<Self>,
        netns: Option<PathBuf>,
        spec: &serde_json::Value,
    ) -> TResult<Arc<dyn Guest>> {
        let _change = self.vm_change.lock().await;
        if let Some(guest) = self.vm.lock().unwrap().guest() {
            return Ok(guest);
        }
        let config = self.config()?;
        let launched = self
            .launcher
            .launch(LaunchRequest {
                sandbox_id: &self.sandbox_id,
                config: &config,
                netns,
                spec,
            })
            .await?;
        let running = Running::new(launched.vm, launched.guest.clone());
        self.transition(VmState::Running(running.clone()));
        tokio::spawn(self.clone().event_loop(launched.events, running.clone()));
        tokio::spawn(self.clone().monitor(running));
        if config.liveness_interval_secs > 0 {
            let (me, guest) = (self.clone(), launched.guest.clone());
            let every = Duration::from_secs(config.liveness_interval_secs);
            let misses = config.liveness_misses;
            tokio::spawn(async move {
                let why = guest.unresponsive(every, misses).await;
                me.kill_vm(&why).await;
            });
        }
        Ok(launched.guest)
    }

    async fn event_loop(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::Receiver<Event>,
        running: Arc<Running>,
    ) {
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
                    me.process_exited(&container_id, &exec_id.unwrap_or_default(), pid, status)
                        .await
                });
            }
        }
        // Lost before the sweep: a process marked running after the sweep
        // finds the VM lost and reports itself ([`Self::lost_meanwhile`]).
        if !self.vm.lock().unwrap().mark_lost(&running) {
            return;
        }
        tracing::warn!(sandbox_id = %self.sandbox_id, "agent event stream ended: the VM is lost");
        // The VM is gone: every process that was running is lost.
        let lost: Vec<(String, String, u32)> = {
            let ctrs = self.containers.lock().unwrap();
            ctrs.iter()
                .flat_map(|(cid, c)| c.live().map(|(e, pid)| (cid.clone(), e, pid)))
                .collect()
        };
        for (cid, eid, pid) in lost {
            self.process_exited(&cid, &eid, pid as i32, ExitStatus::Signal(9))
                .await;
        }
    }

    /// Records the exit of `cid`'s process `exec_id` (guest pid `pid`) and
    /// tells containerd, once, with the pid containerd was told.
    async fn process_exited(&self, cid: &str, exec_id: &str, pid: i32, st: ExitStatus) {
        let Ok((io, logger)) = self.process(cid, exec_id, |p| {
            (std::mem::take(&mut p.io_tasks), p.logger.take())
        }) else {
            return;
        };
        // Let the output reach its destination first (bounded), then stop
        // what is still stuck (a consumer that doesn't read): an aborted
        // pump drops its stream, whose data the client then forgets.
        let mut io = io;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for t in io.iter_mut() {
                let _ = t.await;
            }
        })
        .await;
        for t in &io {
            t.abort();
        }
        if let Some(mut l) = logger {
            tokio::spawn(async move {
                let _ = l.wait().await;
            });
        }
        let code = st.shell_code() as u32;
        let at = timestamp().ok();
        let first = self
            .process(cid, exec_id, |p| {
                if p.status == Status::STOPPED {
                    return None;
                }
                p.status = Status::STOPPED;
                p.exit_code = code;
                p.exited_at = at.clone();
                p.stop_io();
                // Not `send`: with no Wait pending it drops the value, and
                // every later Wait (`ctr task rm -f`, CRI's WithProcessKill)
                // would block forever.
                p.done.send_replace(true);
                Some(p.pid)
            })
            .ok()
            .flatten();
        let Some(reported) = first else {
            return;
        };
        tracing::info!(sandbox_id = %self.sandbox_id, container_id = %cid, exec_id = %exec_id, guest_pid = pid, code, "exited");
        self.send_event(TaskExit {
            container_id: cid.to_owned(),
            id: if exec_id.is_empty() { cid } else { exec_id }.to_owned(),
            pid: reported,
            exit_status: code,
            exited_at: MessageField::from_option(at),
            ..Default::default()
        })
        .await;
    }

    /// Creates container `req.id` in the VM (booting it for a sandbox's
    /// first container); returns the pid containerd is told (the VMM's).
    pub async fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> TResult<u32> {
        let cid = req.id.as_str();
        let ctx = self.ctx(cid);
        scute_runtime::bundle::validate_id(cid).map_err(|e| map(&ctx, e))?;
        if self.containers.lock().unwrap().contains_key(cid) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("{ctx}: already exists"),
            ));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = bundle_dir.join("rootfs");
        self.creating
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut undo = CreateUndo {
            sandbox: self.clone(),
            cid: cid.to_owned(),
            rootfs: rootfs.clone(),
            mounts: 0,
            in_guest: false,
            armed: true,
        };
        let result = async {
            for m in &req.rootfs {
                std::fs::create_dir_all(&rootfs)
                    .map_err(|e| status(Code::INTERNAL, format!("{ctx}: {e}")))?;
                containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs)
                    .await
                    .map_err(|e| status(Code::INTERNAL, format!("{ctx}: mount rootfs: {e}")))?;
                undo.mounts += 1;
            }
            self.create_in_vm(req, &bundle_dir, &mut undo).await
        }
        .await;
        match result {
            Ok((guest_pid, mut proc)) => {
                let pid = self.host_pid(guest_pid);
                proc.pid = pid;
                proc.guest_pid = guest_pid;
                self.containers.lock().unwrap().insert(
                    cid.to_owned(),
                    Container {
                        bundle: bundle_dir,
                        init: proc,
                        execs: Default::default(),
                        rootfs_mounted: undo.mounts > 0,
                    },
                );
                undo.armed = false;
                Ok(pid)
            }
            Err(e) => {
                // Undone before the error reaches containerd, whose next
                // call (Delete, Shutdown) must find nothing left.
                undo.armed = false;
                undo.sandbox
                    .undo_create(&undo.cid, &undo.rootfs, undo.mounts, undo.in_guest)
                    .await;
                Err(e)
            }
        }
    }

    /// Takes back what a Create that did not finish acquired: the
    /// container in the guest, its share, its rootfs mounts, and the VM if
    /// it holds nothing else; then watches for a caller that never comes
    /// back ([`Self::exit_if_orphaned`]).
    async fn undo_create(
        self: &Arc<Self>,
        cid: &str,
        rootfs: &Path,
        mounts: usize,
        in_guest: bool,
    ) {
        if in_guest {
            if let Ok(guest) = self.guest() {
                match guest.delete_container(cid, true).await {
                    // The guest never made it (it refused the create).
                    Err(scute_runtime::Error::Agent(a))
                        if a.code == scute_protocol::ErrorCode::NotFound => {}
                    Err(e) => {
                        tracing::warn!(sandbox_id = %self.sandbox_id, container_id = %cid, "undo create in the guest: {e}")
                    }
                    Ok(()) => {}
                }
            }
        }
        if let Some(r) = self.running() {
            r.with_vm(|vm| vm.unshare(cid));
        }
        for _ in 0..mounts {
            let _ = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
        self.teardown_if_empty().await;
        let why = "no container left after an unfinished create and none asked for";
        tokio::spawn(self.clone().exit_if_orphaned(why));
    }

    async fn create_in_vm(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        bundle_dir: &Path,
        undo: &mut CreateUndo,
    ) -> TResult<(u32, Process)> {
        let cid = &req.id;
        let ctx = self.ctx(cid);
        let t0 = std::time::Instant::now();
        let bundle = Bundle::load(bundle_dir).map_err(|e| map(&ctx, e))?;
        let spec_value = serde_json::to_value(&bundle.spec)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{ctx}: spec: {e}")))?;
        let role = Role::of(&spec_value).map_err(|e| map(&ctx, e))?;
        let guest = match &role {
            Role::PodMember { sandbox_id } => {
                if sandbox_id != &self.sandbox_id {
                    return Err(status(
                        Code::INVALID_ARGUMENT,
                        format!("{ctx}: belongs to pod {sandbox_id}, not to this shim's"),
                    ));
                }
                // A pod member never boots the VM: its sandbox container did.
                self.guest().map_err(|_| {
                    status(
                        Code::FAILED_PRECONDITION,
                        format!("{ctx}: the pod's sandbox container is not running; run the pod sandbox first"),
                    )
                })?
            }
            Role::PodSandbox | Role::Standalone => {
                self.ensure_vm(bundle.network_ns(), &spec_value).await?
            }
        };
        let t_vm = t0.elapsed();
        let joinable = self.joinable();
        let spec = self
            .running()
            .and_then(|r| r.with_vm(|vm| vm.share(cid, &bundle, &joinable)))
            .ok_or_else(|| status(Code::INTERNAL, format!("{ctx}: no sandbox")))?
            .map_err(|e| map(&ctx, e))?;
        let io = (&*req.stdin, &*req.stdout, &*req.stderr);
        let (stdio, proc) = self.wire(&*guest, cid, io, req.terminal).await?;
        // From here the guest may hold the container, answered or not.
        undo.in_guest = true;
        let t_share = t0.elapsed();
        let pid = guest
            .create_container(CreateContainer {
                container_id: cid.clone(),
                spec,
                stdio,
            })
            .await
            .inspect_err(|e| self.log_if_hung(cid, e))
            .map_err(|e| map(&ctx, e))?;
        // Where the create's time went, for the next optimisation.
        tracing::info!(
            sandbox_id = %self.sandbox_id,
            container_id = %cid,
            vm_ms = t_vm.as_millis() as u64,
            share_stdio_ms = (t_share - t_vm).as_millis() as u64,
            guest_create_ms = (t0.elapsed() - t_share).as_millis() as u64,
            "created"
        );
        Ok((pid, proc))
    }

    /// Logs the guest console's last lines when the agent did not answer
    /// in time: where the guest stopped is the one clue to a hang, and the
    /// console goes with the VM.
    fn log_if_hung(&self, cid: &str, e: &scute_runtime::Error) {
        if !matches!(e, scute_runtime::Error::Deadline { .. }) {
            return;
        }
        let log = self
            .running()
            .and_then(|r| r.with_vm(|vm| vm.console_log()));
        if let Some(log) = log.flatten() {
            let tail = scute_runtime::console::tail(&log, "the guest's console");
            tracing::warn!(sandbox_id = %self.sandbox_id, container_id = %cid, "{e}{tail}");
        }
    }

    /// Opens containerd's stdio (stdin, stdout, stderr) for a new process
    /// of container `cid` and wires it to new agent streams.
    async fn wire(
        &self,
        guest: &dyn Guest,
        cid: &str,
        (stdin, stdout, stderr): (&str, &str, &str),
        terminal: bool,
    ) -> TResult<(scute_protocol::StdioSpec, Process)> {
        let namespace = &self.namespace;
        guest
            .wire_stdio(&StdioRequest {
                namespace,
                container_id: cid,
                stdin,
                stdout,
                stderr,
                terminal,
            })
            .await
    }

    /// (reported pid, guest pid) of the pod's live container init
    /// processes, the sandbox container first: the only namespaces a new
    /// container of this sandbox may join. Every process reports the VMM's
    /// pid, so a namespace path naming it means the sandbox container's.
    fn joinable(&self) -> Vec<(u32, u32)> {
        let ctrs = self.containers.lock().unwrap();
        let mut live: Vec<(bool, u32, u32)> = ctrs
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.init.status,
                    Status::CREATED | Status::RUNNING | Status::PAUSED
                )
            })
            .filter(|(_, c)| c.init.guest_pid > 0)
            .map(|(cid, c)| (*cid != self.sandbox_id, c.init.pid, c.init.guest_pid))
            .collect();
        live.sort();
        live.into_iter()
            .map(|(_, host, guest)| (host, guest))
            .collect()
    }

    /// The pid containerd is told for a process whose guest pid is
    /// `guest_pid`: the VMM's, a host process whose namespaces are the
    /// sandbox's (as Kata reports). Without a VM (lost meanwhile) the shim's
    /// own, never a guest pid.
    fn host_pid(&self, guest_pid: u32) -> u32 {
        match self.running().and_then(|r| r.with_vm(|vm| vm.pids().0)) {
            Some(vmm) => vmm,
            None => {
                tracing::debug!(sandbox_id = %self.sandbox_id, guest_pid, "no VM: reporting the shim's pid");
                std::process::id()
            }
        }
    }

    /// Starts a created container or exec; returns its pid.
    pub async fn start(&self, cid: &str, exec_id: &str) -> TResult<u32> {
        let ctx = self.ctx(cid);
        let guest = self.guest()?;
        if exec_id.is_empty() {
            let t0 = std::time::Instant::now();
            guest.start_container(cid).await.map_err(|e| map(&ctx, e))?;
            tracing::info!(sandbox_id = %self.sandbox_id, container_id = %cid, guest_start_ms = t0.elapsed().as_millis() as u64, "started");
            let pid = self.process(cid, "", |p| {
                p.status = Status::RUNNING;
                p.pid
            })?;
            self.lost_meanwhile(cid, "", pid).await;
            return Ok(pid);
        }
        let guest_pid = match guest.start_exec(cid, exec_id).await {
            Ok(pid) => pid,
            Err(e) => {
                // It never ran: release every Wait now (ctr waits before it
                // starts, CRI's delete kills and waits), as runc's shim does,
                // instead of leaving them to their callers' deadlines.
                let _ = self.process(cid, exec_id, |p| {
                    p.status = Status::STOPPED;
                    p.exit_code = 127;
                    p.exited_at = timestamp().ok();
                    p.stop_io();
                    p.done.send_replace(true);
                });
                return Err(map(&format!("{ctx} exec {exec_id}"), e));
            }
        };
        let host_pid = self.host_pid(guest_pid);
        let pid = self.process(cid, exec_id, |p| {
            if p.status == Status::CREATED {
                p.status = Status::RUNNING;
            }
            p.pid = host_pid;
            p.guest_pid = guest_pid;
            p.pid
        })?;
        self.lost_meanwhile(cid, exec_id, guest_pid).await;
        Ok(pid)
    }

    /// A process that started while the VM died (its start answered, then
    /// the channel closed before it was marked running) missed the event
    /// loop's sweep: report it exited now. Reporting twice is harmless.
    async fn lost_meanwhile(&self, cid: &str, exec_id: &str, pid: u32) {
        if self.vm_phase() == VmPhase::Lost {
            self.process_exited(cid, exec_id, pid as i32, ExitStatus::Signal(9))
                .await;
        }
    }

    /// Signals a process, or with `all` every process of the container (which
    /// containerd also sends to a container that already stopped).
    pub async fn kill(&self, cid: &str, exec_id: &str, signal: u32, all: bool) -> TResult<()> {
        let ctx = self.ctx(cid);
        let st = self.process(cid, exec_id, |p| p.status)?;
        if st == Status::STOPPED && !all {
            return Err(not_found(format!("{ctx}: process already finished")));
        }
        let guest = match self.guest() {
            Ok(g) => g,
            // The VM is gone and so is everything the signal was for.
            Err(_) if st == Status::STOPPED => return Ok(()),
            Err(e) => return Err(e),
        };
        let exec = (!exec_id.is_empty()).then_some(exec_id);
        match guest.signal(cid, exec, signal as i32, all).await {
            Ok(_) => Ok(()),
            // A guest that doesn't answer a SIGKILL is hung: the only way
            // to kill its container is to kill the VM.
            Err(e @ scute_runtime::Error::Deadline { .. }) if signal == libc::SIGKILL as u32 => {
                self.kill_vm(&format!("{ctx}: {e}")).await;
                Ok(())
            }
            // Leftovers of a stopped task: with the agent gone there are none.
            Err(_) if st == Status::STOPPED => Ok(()),
            Err(e) => Err(map(&ctx, e)),
        }
    }

    /// Kills the VM: every container of the sandbox is then reported exited
    /// (the agent channel closes and the event loop ends).
    pub async fn kill_vm(&self, why: &str) {
        tracing::error!(sandbox_id = %self.sandbox_id, "killing the VM: {why}");
        if let Some(r) = self.running() {
            r.with_vm(|vm| vm.kill());
        }
    }

    /// Watches what the agent can't report itself: virtiofsd's death (the
    /// guest's file I/O would hang). Ends with the VM. Woken by the pidfds
    /// of QEMU and virtiofsd as they exit, and every second regardless
    /// (kernels without pidfd_open, or a pidfd that could not be made).
    async fn monitor(self: Arc<Self>, running: Arc<Running>) {
        let Some((vmm, virtiofsd)) = running.with_vm(|vm| vm.pids()) else {
            return;
        };
        let (vmm_fd, virtiofsd_fd) = (pidfd(vmm), pidfd(virtiofsd));
        loop {
            tokio::select! {
                _ = exited(vmm_fd.as_ref()) => {}
                _ = exited(virtiofsd_fd.as_ref()) => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            // Torn down (None), or dead: either way this watch is over.
            let dead = running.with_vm(|vm| match vm.vm_exited() {
                Some(_) => None,
                None => Some(vm.virtiofsd_exited()),
            });
            match dead {
                None | Some(None) => return,
                Some(Some(Some(st))) => {
                    self.kill_vm(&format!("virtiofsd exited ({st})")).await;
                    return;
                }
                Some(Some(None)) => {}
            }
            if self.drop_forgotten().await {
                return;
            }
        }
    }

    /// Kills and removes the containers whose bundle is gone. containerd
    /// removes a bundle only after deleting its task, so these are ones it
    /// deleted without this shim: it restarted while their Create ran,
    /// found the shim without the task, cleaned up after it as after a dead
    /// shim, and will never ask for them again. A shim left with nothing
    /// then goes, VM and all (true).
    async fn drop_forgotten(&self) -> bool {
        let forgotten: Vec<String> = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| !c.bundle.exists())
            .map(|(cid, _)| cid.clone())
            .collect();
        if forgotten.is_empty() {
            return false;
        }
        for cid in forgotten {
            let Some(mut c) = self.containers.lock().unwrap().remove(&cid) else {
                continue;
            };
            tracing::warn!(sandbox_id = %self.sandbox_id, container_id = %cid, "containerd removed the bundle of a container it never deleted here: killing and removing it");
            if let Ok(guest) = self.guest() {
                if let Err(e) = guest.delete_container(&cid, true).await {
                    tracing::warn!(sandbox_id = %self.sandbox_id, container_id = %cid, "remove the forgotten container in the guest: {e}");
                }
            }
            self.release_on_host(&cid, &mut c).await;
        }
        self.exit_if_nothing_left("no container left that containerd knows of")
            .await
    }

    /// Adds exec `exec_id` to a running container (started by [`Self::start`]).
    pub async fn exec(&self, req: &api::ExecProcessRequest) -> TResult<()> {
        let (cid, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        let ctx = format!("{} exec {exec_id}", self.ctx(cid));
        scute_runtime::bundle::validate_id(exec_id).map_err(|e| map(&ctx, e))?;
        let exists = self.container(cid, |c| {
            if c.init.status != Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{ctx}: container is not running"),
                ));
            }
            Ok(c.execs.contains_key(exec_id))
        })??;
        if exists {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("{ctx}: already exists"),
            ));
        }
        let mut process: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{ctx}: process spec: {e}")))?;
        share::inherit_rlimits(&mut process);
        let guest = self.guest()?;
        let io = (&*req.stdin, &*req.stdout, &*req.stderr);
        let (stdio, proc) = self.wire(&*guest, cid, io, req.terminal).await?;
        guest
            .exec(cid, exec_id, process, stdio)
            .await
            .map_err(|e| map(&ctx, e))?;
        self.container(cid, |c| c.execs.insert(exec_id.to_owned(), proc))?;
        Ok(())
    }

    /// Removes a finished exec.
    pub fn delete_exec(&self, cid: &str, exec_id: &str) -> TResult<Deleted> {
        let ctx = format!("{} exec {exec_id}", self.ctx(cid));
        self.container(cid, |c| {
            let p = c.execs.get(exec_id).ok_or_else(|| not_found(&ctx))?;
            if p.status == Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{ctx}: is running"),
                ));
            }
            let p = c.execs.remove(exec_id).ok_or_else(|| not_found(&ctx))?;
            Ok(Deleted {
                pid: p.pid,
                exit_code: p.exit_code,
                exited_at: p.exited_at(),
            })
        })?
    }

    /// Removes a stopped (or never started) container: from the guest, the
    /// share and the host. The VM and the pod's other containers stay.
    pub async fn delete_container(&self, cid: &str) -> TResult<Deleted> {
        let ctx = self.ctx(cid);
        let (st, pid) = self.process(cid, "", |p| (p.status, p.pid))?;
        if st == Status::RUNNING || st == Status::PAUSED {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{ctx}: container is running; kill it first"),
            ));
        }
        let t_guest = std::time::Instant::now();
        if let Ok(guest) = self.guest() {
            match guest.delete_container(cid, true).await {
                Ok(_) => {}
                Err(scute_runtime::Error::Agent(a))
                    if a.code == scute_protocol::ErrorCode::NotFound => {}
                Err(e) => {
                    tracing::warn!(sandbox_id = %self.sandbox_id, container_id = %cid, "agent delete: {e}")
                }
            }
        }
        let mut c = self
            .containers
            .lock()
            .unwrap()
            .remove(cid)
            .ok_or_else(|| not_found(&ctx))?;
        if st == Status::CREATED {
            // Never started: it has no exit status of its own.
            c.init.exit_code = ExitStatus::Signal(libc::SIGKILL).shell_code() as u32;
            c.init.exited_at = timestamp().ok();
        }
        let guest_delete_ms = t_guest.elapsed().as_millis();
        self.release_on_host(cid, &mut c).await;
        tracing::info!(sandbox_id = %self.sandbox_id, container_id = %cid, guest_delete_ms, "deleted");
        let deleted = Deleted {
            pid,
            exit_code: c.init.exit_code,
            exited_at: c.init.exited_at(),
        };
        self.send_event(TaskDelete {
            container_id: cid.to_owned(),
            pid,
            exit_status: deleted.exit_code,
            exited_at: deleted.exited_at.clone(),
            ..Default::default()
        })
        .await;
        Ok(deleted)
    }

    /// What a removed container held on the host: its stdio, its share,
    /// its rootfs mount.
    async fn release_on_host(&self, cid: &str, c: &mut Container) {
        c.init.stop_io();
        if let Some(r) = self.running() {
            r.with_vm(|vm| vm.unshare(cid));
        }
        if c.rootfs_mounted {
            let _ = nix::mount::umount2(&c.bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// After a Create that did not finish (cancelled or failed): a shim left
    /// with nothing may have lost its caller for good (containerd restarted:
    /// its connection dropped the call, and the new containerd knows of no
    /// task to delete). Give containerd time to Delete and Shutdown as
    /// usual; if it doesn't and nothing arrived meanwhile, exit, which containerd sees as a dead
    /// shim and cleans up after (`shim delete`).
    async fn exit_if_orphaned(self: Arc<Self>, why: &'static str) {
        tokio::time::sleep(ORPHAN_GRACE).await;
        self.exit_if_nothing_left(why).await;
    }

    /// From the shim's start: a shim that no Create reaches within
    /// [`ORPHAN_GRACE`] lost its caller before it asked (containerd
    /// restarted between starting the shim and creating the task, and the
    /// new containerd knows of no task in it to delete), and exits.
    pub fn watch_for_a_first_create(self: &Arc<Self>) {
        let why = "no container arrived since the shim started";
        tokio::spawn(self.clone().exit_if_orphaned(why));
    }

    /// With no container and no Create under way, stops the VM and ends
    /// the shim (true): no Shutdown will come for it. `why` goes to the log.
    async fn exit_if_nothing_left(&self, why: &str) -> bool {
        let creating = self.creating.load(std::sync::atomic::Ordering::SeqCst);
        if !self.is_empty() || creating > 0 {
            return false;
        }
        tracing::warn!(sandbox_id = %self.sandbox_id, "{why}: the shim exits");
        self.teardown_if_empty().await;
        self.exit.signal();
        true
    }

    /// Waits (at most 30 s) until no Create is under way, then (at most
    /// 30 s) for the undos of cancelled ones. A Create whose caller gave up
    /// ends, and is undone, when ttrpc drops it at its own deadline, which
    /// can come just after containerd's Shutdown.
    pub async fn settle_creates(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while self.creating.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let undos = std::mem::take(&mut *self.undos.lock().unwrap());
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            for u in undos {
                let _ = u.await;
            }
        })
        .await;
    }

    /// Marks the VM as going (before Shutdown answers): a new shim for the
    /// same id, started as soon as containerd has the answer, waits for
    /// this one's teardown instead of finding the id taken.
    pub fn mark_releasing(&self) {
        if let Some(r) = self.running() {
            r.with_vm(|vm| vm.mark_releasing());
        }
    }

    /// Tears the VM down once no container is left in it.
    pub async fn teardown_if_empty(&self) {
        if !self.is_empty() {
            return;
        }
        let _change = self.vm_change.lock().await;
        if self.vm_phase() == VmPhase::Empty {
            return;
        }
        let Some(old) = self.transition(VmState::Empty) else {
            return;
        };
        if let Some(vm) = old.vm().and_then(|r| r.take_vm()) {
            tracing::info!(sandbox_id = %self.sandbox_id, "last container gone: stopping the VM");
            // Drop kills the VM and virtiofsd and removes the state dir.
            let _ = tokio::task::spawn_blocking(move || drop(vm)).await;
        }
    }
}

/// What a Create has acquired so far. A Create whose future is dropped
/// midway (a cancelled ttrpc call: the client's deadline passed, or
/// containerd went away) is undone by a task of its own; a failed one is
/// undone in line before its error is returned.
struct CreateUndo {
    sandbox: Arc<SandboxState>,
    cid: String,
    rootfs: PathBuf,
    /// Rootfs mounts made, unmounted in reverse.
    mounts: usize,
    /// CreateContainer was sent: the guest may hold the container.
    in_guest: bool,
    /// False once the container is committed (or undone in line).
    armed: bool,
}

impl Drop for CreateUndo {
    fn drop(&mut self) {
        self.sandbox
            .creating
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if !self.armed {
            return;
        }
        tracing::warn!(sandbox_id = %self.sandbox.sandbox_id, container_id = %self.cid, "create cancelled: undoing it");
        let (sandbox, cid, rootfs) = (
            self.sandbox.clone(),
            std::mem::take(&mut self.cid),
            std::mem::take(&mut self.rootfs),
        );
        let (mounts, in_guest) = (self.mounts, self.in_guest);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let undos = &self.sandbox.undos;
            let task = rt.spawn(async move {
                sandbox.undo_create(&cid, &rootfs, mounts, in_guest).await;
            });
            undos.lock().unwrap().push(task);
        }
    }
}

/// A pidfd for `pid`, readable once the process exits.
fn pidfd(pid: u32) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let owned = scute_runtime::procs::pidfd_open(pid)?;
    // SAFETY: an OwnedFd keeps its descriptor open and unchanged until the
    // AsyncFd that owns it is dropped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .ok()
}

/// Resolves when the pidfd's process has exited; never without a pidfd.
async fn exited(fd: Option<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>) {
    match fd {
        Some(fd) => {
            let _ = fd.readable().await;
        }
        None => std::future::pending().await,
    }
}
