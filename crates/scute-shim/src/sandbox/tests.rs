//! [`SandboxState`]'s behaviour against fakes of the VM, its agent and
//! containerd's event stream: ordering, undo on failure and on cancel,
//! exit publication, forgotten containers, the orphan exit. No QEMU; each
//! test runs in milliseconds (the orphan grace on a paused clock).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::event::Event as ShimEvent;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskDelete, TaskExit};
use containerd_shim_protos::ttrpc::Code;
use scute_protocol::{AgentError, CgroupStats, CreateContainer, ErrorCode, Event, ExitStatus};
use scute_runtime::bundle::Bundle;
use scute_runtime::Error;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::container::{Process, StdioRequest};
use crate::guest::{EventSink, Guest, LaunchRequest, Launched, Launcher, SandboxVm};

/// A Create of c1 in a fresh sandbox that the guest refused or that was
/// cancelled, undone: the guest's container, the share, the empty VM.
const UNDONE_C1: [&str; 6] = [
    "launch sb1",
    "share c1",
    "create c1",
    "delete c1",
    "unshare c1",
    "vm dropped",
];

/// The VMM's pid the fake VM reports: what containerd must be told.
const VMM_PID: u32 = 4_000_001;

/// What the fakes saw, in order: "launch", "share c1", "create c1", ….
#[derive(Default)]
struct Journal(Mutex<Vec<String>>);

impl Journal {
    fn add(&self, what: String) {
        self.0.lock().unwrap().push(what);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn has(&self, what: &str) -> bool {
        self.all().iter().any(|w| w == what)
    }
}

#[derive(Default)]
struct FakeGuest {
    journal: Arc<Journal>,
    next_pid: AtomicU32,
    /// CreateContainer is refused with this code.
    refuse_create: Mutex<Option<ErrorCode>>,
    /// CreateContainer never answers.
    hang_create: AtomicBool,
    /// StartExec is refused (a missing binary).
    refuse_exec_start: AtomicBool,
}

#[async_trait]
impl Guest for FakeGuest {
    async fn wire_stdio(
        &self,
        req: &StdioRequest<'_>,
    ) -> TResult<(scute_protocol::StdioSpec, Process)> {
        Ok((Default::default(), req.process()))
    }
    async fn create_container(&self, c: CreateContainer) -> Result<u32, Error> {
        self.journal.add(format!("create {}", c.container_id));
        if self.hang_create.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if let Some(code) = *self.refuse_create.lock().unwrap() {
            return Err(Error::Agent(AgentError::new(code, "refused by the fake")));
        }
        Ok(100 + self.next_pid.fetch_add(1, Ordering::SeqCst))
    }
    async fn start_container(&self, cid: &str) -> Result<(), Error> {
        self.journal.add(format!("start {cid}"));
        Ok(())
    }
    async fn exec(
        &self,
        cid: &str,
        exec_id: &str,
        _process: serde_json::Value,
        _stdio: scute_protocol::StdioSpec,
    ) -> Result<(), Error> {
        self.journal.add(format!("exec {cid} {exec_id}"));
        Ok(())
    }
    async fn start_exec(&self, cid: &str, exec_id: &str) -> Result<u32, Error> {
        self.journal.add(format!("start {cid} {exec_id}"));
        if self.refuse_exec_start.load(Ordering::SeqCst) {
            return Err(Error::Agent(AgentError::new(
                ErrorCode::ExecutableNotFound,
                "exec: \"nosuch\": executable file not found in $PATH",
            )));
        }
        Ok(200 + self.next_pid.fetch_add(1, Ordering::SeqCst))
    }
    async fn signal(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        signal: i32,
        _all: bool,
    ) -> Result<(), Error> {
        self.journal
            .add(format!("signal {cid} {} {signal}", exec_id.unwrap_or("")));
        Ok(())
    }
    async fn delete_container(&self, cid: &str, _force: bool) -> Result<(), Error> {
        self.journal.add(format!("delete {cid}"));
        Ok(())
    }
    async fn pause(&self, _cid: &str) -> Result<(), Error> {
        Ok(())
    }
    async fn resume(&self, _cid: &str) -> Result<(), Error> {
        Ok(())
    }
    async fn pids(&self, _cid: &str) -> Result<Vec<u32>, Error> {
        Ok(vec![1])
    }
    async fn update(&self, cid: &str, _limits: scute_protocol::Limits) -> Result<(), Error> {
        self.journal.add(format!("update {cid}"));
        Ok(())
    }
    async fn stats(&self, _cid: &str) -> Result<CgroupStats, Error> {
        Ok(Default::default())
    }
    async fn resize_pty(&self, _: &str, _: Option<&str>, _: u16, _: u16) -> Result<(), Error> {
        Ok(())
    }
    async fn close_stream(&self, _stream: u32) -> Result<(), Error> {
        Ok(())
    }
    async fn unresponsive(&self, _every: Duration, _misses: u32) -> String {
        std::future::pending().await
    }
}

struct FakeVm {
    journal: Arc<Journal>,
}

impl SandboxVm for FakeVm {
    fn pids(&self) -> (u32, u32) {
        (VMM_PID, VMM_PID + 1)
    }
    fn vm_exited(&mut self) -> Option<String> {
        None
    }
    fn virtiofsd_exited(&mut self) -> Option<String> {
        None
    }
    fn kill(&mut self) {
        self.journal.add("kill".into());
    }
    fn share(
        &self,
        cid: &str,
        bundle: &Bundle,
        _: &[(u32, u32)],
    ) -> Result<serde_json::Value, Error> {
        self.journal.add(format!("share {cid}"));
        Ok(serde_json::to_value(&bundle.spec).unwrap())
    }
    fn unshare(&self, cid: &str) {
        self.journal.add(format!("unshare {cid}"));
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.journal.add("vm dropped".into());
    }
}

#[derive(Default)]
struct FakeLauncher {
    guest: Arc<FakeGuest>,
    journal: Arc<Journal>,
    launches: AtomicUsize,
    /// The agent's event stream of the last launch; dropped = VM lost.
    events: Mutex<Option<mpsc::Sender<Event>>>,
}

#[async_trait]
impl Launcher for Arc<FakeLauncher> {
    async fn launch(&self, req: LaunchRequest<'_>) -> TResult<Launched> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        self.journal.add(format!("launch {}", req.sandbox_id));
        let (tx, rx) = mpsc::channel(16);
        *self.events.lock().unwrap() = Some(tx);
        Ok(Launched {
            vm: Box::new(FakeVm {
                journal: self.journal.clone(),
            }),
            guest: self.guest.clone(),
            events: rx,
        })
    }
}

/// containerd's side of the event stream.
#[derive(Default)]
struct Sink(Mutex<Vec<Box<dyn ShimEvent>>>);

#[async_trait]
impl EventSink for Sink {
    async fn publish(
        &self,
        _ns: &str,
        event: Box<dyn ShimEvent>,
    ) -> Result<(), containerd_shim::Error> {
        self.0.lock().unwrap().push(event);
        Ok(())
    }
}

impl Sink {
    fn exits(&self) -> Vec<TaskExit> {
        self.of::<TaskExit>()
    }
    fn deletes(&self) -> Vec<TaskDelete> {
        self.of::<TaskDelete>()
    }
    fn of<M: containerd_shim::protos::protobuf::MessageFull>(&self) -> Vec<M> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| <dyn MessageDyn>::downcast_ref::<M>(e.as_ref()).cloned())
            .collect()
    }
}

struct Fixture {
    sandbox: Arc<SandboxState>,
    launcher: Arc<FakeLauncher>,
    sink: Arc<Sink>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let journal = Arc::new(Journal::default());
        let launcher = Arc::new(FakeLauncher {
            guest: Arc::new(FakeGuest {
                journal: journal.clone(),
                ..Default::default()
            }),
            journal,
            ..Default::default()
        });
        let config = scute_runtime::Config {
            liveness_interval_secs: 0,
            ..Default::default()
        };
        let sandbox = Arc::new(SandboxState::with_launcher(
            "default",
            "sb1",
            Box::new(launcher.clone()),
            Some(config),
        ));
        let sink = Arc::new(Sink::default());
        let _ = sandbox.events.set(sink.clone());
        Fixture {
            sandbox,
            launcher,
            sink,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn guest(&self) -> &FakeGuest {
        &self.launcher.guest
    }

    fn journal(&self) -> Vec<String> {
        self.launcher.journal.all()
    }

    /// A bundle for container `cid` with `annotations`.
    fn bundle(&self, cid: &str, annotations: serde_json::Value) -> std::path::PathBuf {
        let dir = self.dir.path().join(cid);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sleep", "600"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": annotations,
        });
        std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        dir
    }

    async fn create(&self, cid: &str) -> TResult<u32> {
        self.create_with(cid, json!({})).await
    }

    async fn create_with(&self, cid: &str, annotations: serde_json::Value) -> TResult<u32> {
        let req = api::CreateTaskRequest {
            id: cid.into(),
            bundle: self.bundle(cid, annotations).display().to_string(),
            ..Default::default()
        };
        self.sandbox.create(&req).await
    }

    async fn exited(&self, cid: &str, exec_id: Option<&str>, guest_pid: i32, st: ExitStatus) {
        let tx = self.launcher.events.lock().unwrap().clone().unwrap();
        tx.send(Event::Exited {
            container_id: cid.into(),
            exec_id: exec_id.map(Into::into),
            pid: guest_pid,
            status: st,
        })
        .await
        .unwrap();
    }

    /// Waits (bounded) until `n` TaskExit events were published.
    async fn await_exits(&self, n: usize) -> Vec<TaskExit> {
        for _ in 0..500 {
            let e = self.sink.exits();
            if e.len() >= n {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{n} exits never came: {:?}", self.sink.exits());
    }
}

/// The code and message of a ttrpc status error.
fn rpc(e: &containerd_shim_protos::ttrpc::Error) -> (Code, &str) {
    match e {
        containerd_shim_protos::ttrpc::Error::RpcStatus(s) => (s.code(), s.message()),
        other => panic!("not a status: {other:?}"),
    }
}

fn exec_request(cid: &str, exec_id: &str) -> api::ExecProcessRequest {
    let process = json!({"args": ["nosuch"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let mut req = api::ExecProcessRequest {
        id: cid.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    req.spec = containerd_shim::protos::protobuf::MessageField::some(
        containerd_shim::protos::protobuf::well_known_types::any::Any {
            value: process.to_string().into_bytes(),
            ..Default::default()
        },
    );
    req
}

#[tokio::test]
async fn create_start_exit_delete_in_order_with_the_vmms_pid() {
    let f = Fixture::new();
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Empty);
    let pid = f.create("c1").await.unwrap();
    assert_eq!(
        pid, VMM_PID,
        "containerd is told the VMM's pid, never a guest pid"
    );
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Running);
    assert_eq!(f.sandbox.start("c1", "").await.unwrap(), VMM_PID);
    f.exited("c1", None, 100, ExitStatus::Code(3)).await;
    let exits = f.await_exits(1).await;
    assert_eq!((exits[0].pid, exits[0].exit_status), (VMM_PID, 3));
    assert_eq!(exits[0].id, "c1");
    // A second report of the same exit publishes nothing.
    f.exited("c1", None, 100, ExitStatus::Code(3)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(f.sink.exits().len(), 1);

    let deleted = f.sandbox.delete_container("c1").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_code), (VMM_PID, 3));
    assert_eq!(f.sink.deletes().len(), 1);
    f.sandbox.teardown_if_empty().await;
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Empty);
    assert_eq!(
        f.journal(),
        [
            "launch sb1",
            "share c1",
            "create c1",
            "start c1",
            "delete c1",
            "unshare c1",
            "vm dropped"
        ]
    );
}

/// A guest that sends DNS queries to a shim (it never asked for a relay:
/// only scute-runc's keeper does), big ones and many: the shim asks the
/// guest nothing back, and the container's exit still comes through.
#[tokio::test]
async fn dns_queries_a_guest_sends_the_shim_are_ignored() {
    let f = Fixture::new();
    f.create("c1").await.unwrap();
    f.sandbox.start("c1", "").await.unwrap();
    let tx = f.launcher.events.lock().unwrap().clone().unwrap();
    for id in 0..100 {
        tx.send(Event::DnsQuery {
            id,
            query: vec![0xff; 64 << 10],
        })
        .await
        .unwrap();
    }
    f.exited("c1", None, 100, ExitStatus::Code(0)).await;
    let exits = f.await_exits(1).await;
    assert_eq!((exits[0].id.as_str(), exits[0].exit_status), ("c1", 0));
    assert_eq!(
        f.journal(),
        ["launch sb1", "share c1", "create c1", "start c1"]
    );
}

#[tokio::test]
async fn a_second_container_shares_the_vm_and_a_running_one_is_not_deleted() {
    let f = Fixture::new();
    f.create("c1").await.unwrap();
    f.create("c2").await.unwrap();
    assert_eq!(f.launcher.launches.load(Ordering::SeqCst), 1);
    f.sandbox.start("c1", "").await.unwrap();
    let e = f.sandbox.delete_container("c1").await.unwrap_err();
    assert_eq!(rpc(&e).0, Code::FAILED_PRECONDITION);
    // c2, created and never started, is deleted with SIGKILL's status.
    let d = f.sandbox.delete_container("c2").await.unwrap();
    assert_eq!(d.exit_code, 137);
    f.sandbox.teardown_if_empty().await;
    assert_eq!(
        f.sandbox.vm_phase(),
        VmPhase::Running,
        "c1 still holds the VM"
    );
    let dup = f.create("c1").await.unwrap_err();
    assert_eq!(rpc(&dup).0, Code::ALREADY_EXISTS);
}

#[tokio::test]
async fn a_refused_create_is_undone_before_the_error_returns() {
    let f = Fixture::new();
    *f.guest().refuse_create.lock().unwrap() = Some(ErrorCode::InvalidArgument);
    let e = f.create("c1").await.unwrap_err();
    assert_eq!(rpc(&e).0, Code::INVALID_ARGUMENT, "{e:?}");
    assert!(rpc(&e).1.contains("sandbox sb1 container c1"), "{e:?}");
    // Undone in line: the guest's container, the share, the empty VM.
    assert_eq!(f.journal(), UNDONE_C1);
    assert!(f.sandbox.is_empty());
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Empty);
    // The next Create launches a VM again.
    *f.guest().refuse_create.lock().unwrap() = None;
    f.create("c2").await.unwrap();
    assert_eq!(f.launcher.launches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancelled_create_is_undone_by_a_task_of_its_own() {
    let f = Fixture::new();
    f.guest().hang_create.store(true, Ordering::SeqCst);
    let sandbox = f.sandbox.clone();
    let req = api::CreateTaskRequest {
        id: "c1".into(),
        bundle: f.bundle("c1", json!({})).display().to_string(),
        ..Default::default()
    };
    let create = tokio::spawn(async move { sandbox.create(&req).await });
    for _ in 0..500 {
        if f.launcher.journal.has("create c1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // containerd's deadline passed: ttrpc drops the call's future.
    create.abort();
    let _ = create.await;
    f.sandbox.settle_creates().await;
    assert_eq!(f.journal(), UNDONE_C1);
    assert!(f.sandbox.is_empty());
    assert_eq!(f.sandbox.creating.load(Ordering::SeqCst), 0);
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Empty);
}

#[tokio::test]
async fn a_lost_vm_reports_every_running_process_once() {
    let f = Fixture::new();
    f.create("c1").await.unwrap();
    f.create("c2").await.unwrap();
    f.sandbox.start("c1", "").await.unwrap();
    f.sandbox.exec(&exec_request("c1", "e1")).await.unwrap();
    f.sandbox.start("c1", "e1").await.unwrap();
    // The agent's event stream ends: the VM died.
    drop(f.launcher.events.lock().unwrap().take());
    let exits = f.await_exits(2).await;
    let mut got: Vec<(String, u32, u32)> = exits
        .iter()
        .map(|e| (e.id.clone(), e.pid, e.exit_status))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("c1".into(), VMM_PID, 137), ("e1".into(), VMM_PID, 137)]
    );
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Lost);
    // c2 was created, not running: it is not reported by the sweep, but
    // once started (the guest answered before it died) it reports itself.
    f.sandbox.start("c2", "").await.unwrap();
    let exits = f.await_exits(3).await;
    assert!(exits.iter().any(|e| e.id == "c2" && e.exit_status == 137));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(f.sink.exits().len(), 3, "each process once");
}

#[tokio::test]
async fn a_torn_down_vms_stream_is_no_loss() {
    let f = Fixture::new();
    f.create("c1").await.unwrap();
    f.sandbox.delete_container("c1").await.unwrap();
    f.sandbox.teardown_if_empty().await;
    drop(f.launcher.events.lock().unwrap().take());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Empty);
    // A new VM for a new container starts clean, not lost.
    f.create("c2").await.unwrap();
    f.sandbox.start("c2", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(f.sink.exits().is_empty(), "{:?}", f.sink.exits());
}

#[tokio::test]
async fn an_exec_that_cannot_start_fails_at_once_and_releases_its_waiters() {
    let f = Fixture::new();
    f.create("c1").await.unwrap();
    f.sandbox.start("c1", "").await.unwrap();
    f.guest().refuse_exec_start.store(true, Ordering::SeqCst);
    f.sandbox.exec(&exec_request("c1", "e1")).await.unwrap();
    let mut done = f
        .sandbox
        .process("c1", "e1", |p| p.done.subscribe())
        .unwrap();
    let e = f.sandbox.start("c1", "e1").await.unwrap_err();
    assert!(rpc(&e).1.contains("executable file not found"), "{e:?}");
    assert!(*done.borrow_and_update(), "a Wait on the exec returns");
    let (st, code) = f
        .sandbox
        .process("c1", "e1", |p| (p.status, p.exit_code))
        .unwrap();
    assert_eq!((st, code), (Status::STOPPED, 127));
    let d = f.sandbox.delete_exec("c1", "e1").unwrap();
    assert_eq!(d.exit_code, 127);
}

#[tokio::test]
async fn a_pod_member_never_launches_the_vm() {
    let f = Fixture::new();
    let member = json!({
        scute_runtime::pod::ANN_CONTAINER_TYPE: "container",
        scute_runtime::pod::ANN_SANDBOX_ID: "sb1",
    });
    let e = f.create_with("m1", member.clone()).await.unwrap_err();
    assert_eq!(rpc(&e).0, Code::FAILED_PRECONDITION);
    assert_eq!(f.launcher.launches.load(Ordering::SeqCst), 0);
    let other = json!({
        scute_runtime::pod::ANN_CONTAINER_TYPE: "container",
        scute_runtime::pod::ANN_SANDBOX_ID: "sb2",
    });
    let sandbox = json!({
        scute_runtime::pod::ANN_CONTAINER_TYPE: "sandbox",
        scute_runtime::pod::ANN_SANDBOX_ID: "sb1",
    });
    f.create_with("sb1", sandbox).await.unwrap();
    f.create_with("m1", member).await.unwrap();
    let e = f.create_with("m2", other).await.unwrap_err();
    assert_eq!(rpc(&e).0, Code::INVALID_ARGUMENT);
    assert_eq!(f.launcher.launches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_forgotten_container_is_removed_and_the_shim_exits() {
    let f = Fixture::new();
    f.create("c1").await.unwrap();
    f.sandbox.start("c1", "").await.unwrap();
    assert!(!f.sandbox.drop_forgotten().await, "its bundle is there");
    // containerd restarted during the Create and removed the bundle.
    std::fs::remove_dir_all(f.dir.path().join("c1")).unwrap();
    assert!(f.sandbox.drop_forgotten().await);
    tokio::time::timeout(Duration::from_secs(5), f.sandbox.exit.wait())
        .await
        .expect("the shim exits");
    let j = f.journal();
    assert!(
        j.ends_with(&["delete c1".into(), "unshare c1".into(), "vm dropped".into()]),
        "{j:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shim_orphaned_by_a_failed_create_exits_after_the_grace() {
    let f = Fixture::new();
    *f.guest().refuse_create.lock().unwrap() = Some(ErrorCode::Internal);
    f.create("c1").await.unwrap_err();
    let t0 = tokio::time::Instant::now();
    tokio::time::timeout(ORPHAN_GRACE * 2, f.sandbox.exit.wait())
        .await
        .expect("an orphaned shim exits");
    assert!(t0.elapsed() >= ORPHAN_GRACE - Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_shim_that_got_a_container_meanwhile_stays() {
    let f = Fixture::new();
    *f.guest().refuse_create.lock().unwrap() = Some(ErrorCode::Internal);
    f.create("c1").await.unwrap_err();
    *f.guest().refuse_create.lock().unwrap() = None;
    f.create("c2").await.unwrap();
    let waited = tokio::time::timeout(ORPHAN_GRACE * 2, f.sandbox.exit.wait()).await;
    assert!(waited.is_err(), "the shim exited with a container in it");
    assert_eq!(f.sandbox.vm_phase(), VmPhase::Running);
}

#[tokio::test(start_paused = true)]
async fn a_shim_no_create_reaches_exits_after_the_grace() {
    let f = Fixture::new();
    f.sandbox.watch_for_a_first_create();
    tokio::time::timeout(ORPHAN_GRACE * 2, f.sandbox.exit.wait())
        .await
        .expect("a shim nobody asked for exits");
    assert_eq!(f.launcher.launches.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_shim_whose_first_create_came_stays() {
    let f = Fixture::new();
    f.sandbox.watch_for_a_first_create();
    f.create("c1").await.unwrap();
    let waited = tokio::time::timeout(ORPHAN_GRACE * 2, f.sandbox.exit.wait()).await;
    assert!(waited.is_err(), "the shim exited with a container in it");
}
