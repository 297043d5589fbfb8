//! The seam between the shim's sandbox logic ([`crate::sandbox`]) and what
//! it drives: the guest's agent ([`Guest`]), the VM and its host processes
//! ([`SandboxVm`]), the policy that boots or claims one ([`Launcher`]), and
//! containerd's event stream ([`EventSink`]). The real implementations are
//! here and in [`crate::launch`]; the unit tests of [`crate::sandbox`] put
//! fakes behind the same traits and run without QEMU.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::event::Event as ShimEvent;
use scute_protocol::{CgroupStats, CreateContainer, Event, StdioSpec};
use scute_runtime::bundle::Bundle;
use scute_runtime::client::AgentClient;
use scute_runtime::Error;

use crate::container::{Process, StdioRequest};
use crate::errors::TResult;

/// The guest agent, one typed call per request (what the shim asks of
/// [`AgentClient`]).
#[async_trait]
pub trait Guest: Send + Sync {
    /// Opens containerd's stdio for a new process and wires it to new
    /// agent streams.
    async fn wire_stdio(&self, req: &StdioRequest<'_>) -> TResult<(StdioSpec, Process)>;
    async fn create_container(&self, c: CreateContainer) -> Result<u32, Error>;
    async fn start_container(&self, cid: &str) -> Result<(), Error>;
    async fn exec(
        &self,
        cid: &str,
        exec_id: &str,
        process: serde_json::Value,
        stdio: StdioSpec,
    ) -> Result<(), Error>;
    async fn start_exec(&self, cid: &str, exec_id: &str) -> Result<u32, Error>;
    async fn signal(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), Error>;
    async fn delete_container(&self, cid: &str, force: bool) -> Result<(), Error>;
    async fn pause(&self, cid: &str) -> Result<(), Error>;
    async fn resume(&self, cid: &str) -> Result<(), Error>;
    async fn pids(&self, cid: &str) -> Result<Vec<u32>, Error>;
    async fn stats(&self, cid: &str) -> Result<CgroupStats, Error>;
    async fn update(&self, cid: &str, limits: scute_protocol::Limits) -> Result<(), Error>;
    async fn resize_pty(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        width: u16,
        height: u16,
    ) -> Result<(), Error>;
    async fn close_stream(&self, stream: u32) -> Result<(), Error>;
    /// Resolves with why once the guest stops answering pings (`misses`
    /// in a row, one every `every`); never while it answers.
    async fn unresponsive(&self, every: Duration, misses: u32) -> String;
}

#[async_trait]
impl Guest for AgentClient {
    async fn wire_stdio(&self, req: &StdioRequest<'_>) -> TResult<(StdioSpec, Process)> {
        req.wire(self).await
    }
    async fn create_container(&self, c: CreateContainer) -> Result<u32, Error> {
        AgentClient::create_container(self, c).await
    }
    async fn start_container(&self, cid: &str) -> Result<(), Error> {
        AgentClient::start_container(self, cid).await
    }
    async fn exec(
        &self,
        cid: &str,
        exec_id: &str,
        process: serde_json::Value,
        stdio: StdioSpec,
    ) -> Result<(), Error> {
        AgentClient::exec(self, cid, exec_id, process, stdio).await
    }
    async fn start_exec(&self, cid: &str, exec_id: &str) -> Result<u32, Error> {
        AgentClient::start_exec(self, cid, exec_id).await
    }
    async fn signal(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), Error> {
        AgentClient::signal(self, cid, exec_id, signal, all).await
    }
    async fn delete_container(&self, cid: &str, force: bool) -> Result<(), Error> {
        AgentClient::delete_container(self, cid, force).await
    }
    async fn pause(&self, cid: &str) -> Result<(), Error> {
        AgentClient::pause(self, cid).await
    }
    async fn resume(&self, cid: &str) -> Result<(), Error> {
        AgentClient::resume(self, cid).await
    }
    async fn pids(&self, cid: &str) -> Result<Vec<u32>, Error> {
        AgentClient::pids(self, cid).await
    }
    async fn stats(&self, cid: &str) -> Result<CgroupStats, Error> {
        AgentClient::stats(self, cid).await
    }
    async fn update(&self, cid: &str, limits: scute_protocol::Limits) -> Result<(), Error> {
        AgentClient::update(self, cid, limits).await
    }
    async fn resize_pty(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        width: u16,
        height: u16,
    ) -> Result<(), Error> {
        AgentClient::resize_pty(self, cid, exec_id, width, height).await
    }
    async fn close_stream(&self, stream: u32) -> Result<(), Error> {
        AgentClient::close_stream(self, stream).await
    }
    async fn unresponsive(&self, every: Duration, misses: u32) -> String {
        match AgentClient::unresponsive(self, every, misses).await {
            Some(why) => why.to_string(),
            None => std::future::pending().await,
        }
    }
}

/// The sandbox's VM and the host processes and files that serve it. Dropping
/// it kills the VM and virtiofsd and removes what it holds on the host.
pub trait SandboxVm: Send {
    /// Host pids of the VMM and of virtiofsd.
    fn pids(&self) -> (u32, u32);
    /// `Some(description)` once the VM died.
    fn vm_exited(&mut self) -> Option<String>;
    /// `Some(description)` once virtiofsd died (the guest's file I/O hangs).
    fn virtiofsd_exited(&mut self) -> Option<String>;
    /// Kills the VM now; the agent's channel closes with it.
    fn kill(&mut self);
    /// Shares container `cid`'s bundle with the guest; returns the spec the
    /// guest gets (paths rewritten into the share). `joinable` as in
    /// [`scute_runtime::share::share_container`].
    fn share(
        &self,
        cid: &str,
        bundle: &Bundle,
        joinable: &[(u32, u32)],
    ) -> Result<serde_json::Value, Error>;
    /// Removes what [`SandboxVm::share`] made for `cid`.
    fn unshare(&self, cid: &str);
    /// The guest's console log, if the VM keeps one.
    fn console_log(&self) -> Option<PathBuf> {
        None
    }
    /// Says the VM is about to go: a new sandbox of the same id waits for
    /// it instead of finding the id taken.
    fn mark_releasing(&self) {}
}

/// What the sandbox asks a launcher for: a VM for its first container.
pub struct LaunchRequest<'a> {
    pub sandbox_id: &'a str,
    pub config: &'a scute_runtime::Config,
    /// The network namespace to wire the VM into.
    pub netns: Option<PathBuf>,
    /// The first container's OCI spec (size annotations, cgroups path).
    pub spec: &'a serde_json::Value,
}

/// A VM ready for containers, its agent, and the agent's event stream.
pub struct Launched {
    pub vm: Box<dyn SandboxVm>,
    pub guest: std::sync::Arc<dyn Guest>,
    pub events: tokio::sync::mpsc::Receiver<Event>,
}

/// Boots or claims the VM of a sandbox.
#[async_trait]
pub trait Launcher: Send + Sync {
    async fn launch(&self, req: LaunchRequest<'_>) -> TResult<Launched>;
}

/// containerd's event stream, which task events are published to.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(
        &self,
        namespace: &str,
        event: Box<dyn ShimEvent>,
    ) -> Result<(), containerd_shim::Error>;
}

#[async_trait]
impl EventSink for RemotePublisher {
    async fn publish(
        &self,
        namespace: &str,
        event: Box<dyn ShimEvent>,
    ) -> Result<(), containerd_shim::Error> {
        let topic = event.topic();
        RemotePublisher::publish(self, Default::default(), &topic, namespace, event).await
    }
}
