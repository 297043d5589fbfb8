//! A pool member's VM: booted exactly as a sandbox's (its own state dir,
//! jail uid, cgroup, a NIC on a tap alone in a netns of its own, virtiofsd
//! serving an empty share), warmed up through an [`AgentClient`], then
//! handed to the shim that claims it ([`PoolVm::hand_over`]). The pool's
//! processes that drive it are in the `scute-pool` crate; the shim's side
//! of the handover is [`crate::handover`].

use std::path::{Path, PathBuf};

use scute_hypervisor::Vm;
use scute_protocol::{Event, FrameDecoder};
use tokio::sync::mpsc;

use crate::client::{AgentClient, Deadlines};
use crate::handover::{ClaimReply, PoolNicInfo};
use crate::sandbox::{boot, Net, Owned, Ready};
use crate::state::StateDir;
use crate::{Config, Error};

/// Fields drop in this order: the VM, its host processes, its state dir.
pub struct PoolVm {
    vm: Box<dyn Vm>,
    owned: Owned,
    dir: StateDir,
    /// The agent connection and the bytes read past the last frame; out
    /// while a warm-up client holds it, gone once handed over.
    agent: Option<(tokio::net::UnixStream, FrameDecoder)>,
    ready: Ready,
    accel_reason: String,
    deadlines: Deadlines,
}

impl PoolVm {
    /// Boots pool VM `vm_id` up to its agent's Ready event.
    pub async fn boot(config: &Config, vm_id: &str) -> Result<Self, Error> {
        let (b, ()) = boot(config, vm_id, Net::Pool, None, |_| Ok(())).await?;
        Ok(Self {
            vm: b.vm,
            owned: b.owned,
            dir: b.dir,
            agent: Some((b.stream, b.decoder)),
            ready: b.ready,
            accel_reason: b.accel_reason,
            deadlines: Deadlines::from_config(config),
        })
    }

    /// The VM's state dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Host path of the virtio-fs share (guest `/run/scute/shared`).
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }

    pub fn vmm_pid(&self) -> u32 {
        self.vm.pid()
    }

    pub fn virtiofsd_pid(&self) -> u32 {
        self.owned.virtiofsd.pid()
    }

    /// A client on the agent connection (and the guest's events), until
    /// [`PoolVm::take_back`]. None if a client already holds it.
    pub fn client(&mut self) -> Option<(AgentClient, mpsc::Receiver<Event>)> {
        let (stream, dec) = self.agent.take()?;
        Some(AgentClient::from_stream_with(stream, dec, self.deadlines))
    }

    /// Takes the connection back from `client` (and its clones), with
    /// whatever it read past its last frame.
    pub async fn take_back(&mut self, client: &AgentClient) -> Result<(), Error> {
        self.agent = Some(client.detach().await?);
        Ok(())
    }

    /// `Some(description)` once the VM or one of its virtiofsds died.
    pub fn died(&mut self) -> Option<String> {
        self.vm.exited().or_else(|| self.owned.virtiofsds_exited())
    }

    /// `Some(description)` once the VM died.
    pub fn vm_exited(&mut self) -> Option<String> {
        self.vm.exited()
    }

    /// What the claimant of this VM is told, and the agent connection that
    /// goes with it (as SCM_RIGHTS, see [`crate::handover::send_with_fd`]);
    /// None if the connection is not here (a warm-up client holds it).
    pub fn hand_over(
        &mut self,
        vm_id: &str,
        ready_for_ms: u64,
    ) -> Option<(ClaimReply, tokio::net::UnixStream)> {
        let (stream, dec) = self.agent.take()?;
        let reply = ClaimReply {
            vm_id: vm_id.to_owned(),
            vmm_pid: self.vm.pid(),
            virtiofsd_pid: self.owned.virtiofsd.pid(),
            rootfs_virtiofsd_pid: self.owned.rootfs_virtiofsd.pid(),
            shared: self.dir.join("shared"),
            console: self.dir.join("console.log"),
            ready: self.ready.clone(),
            accel_reason: self.accel_reason.clone(),
            leftover: dec.into_buffered(),
            ready_for_ms,
            nic: self.owned.pool_nic.as_ref().map(|n| PoolNicInfo {
                netns: n.netns.clone(),
                tap: n.tap.clone(),
                mac: n.mac.clone(),
            }),
        };
        Some((reply, stream))
    }

    /// Kills the VM now; the rest is released when this is dropped.
    pub fn kill(&mut self) {
        // All three die side by side; the VM is waited for here, the
        // virtiofsds when dropped.
        self.owned.kill_virtiofsds();
        self.vm.kill();
    }
}
