//! Where a sandbox's VM comes from: the pool-or-boot policy ([`place`]) and
//! the real [`Launcher`], which claims a ready VM from `scute pool` or boots
//! one, then attaches what the VM serves on the host (CRI port-forward, the
//! operator's debug shell).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use scute_protocol::Event;
use scute_runtime::bundle::Bundle;
use scute_runtime::network::Plan;
use scute_runtime::pod;
use scute_runtime::sandbox::Sandbox;
use scute_runtime::{share, Error};

use crate::errors::map;
use crate::errors::TResult;
use crate::guest::{LaunchRequest, Launched, Launcher, SandboxVm};

/// Where the VM comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// Claim a ready VM from the pool (a cold boot if none is ready).
    Pool,
    /// Boot a VM of its own.
    Boot(BootReason),
}

/// Why a sandbox boots its own VM instead of taking one from the pool.
#[derive(Debug, PartialEq, Eq)]
pub enum BootReason {
    /// The operator's annotation `io.scute.vm.pool=off`.
    OwnVmAsked,
    /// Its network namespace could not be read.
    NetnsUnreadable(String),
    /// Pool VMs have one NIC; the namespace has this many interfaces.
    Interfaces(usize),
    /// The pool had no VM to give (not running, empty, or refused).
    PoolEmpty(String),
}

impl fmt::Display for BootReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootReason::OwnVmAsked => write!(f, "annotation {}=off", pod::ANN_VM_POOL),
            BootReason::NetnsUnreadable(e) => write!(f, "its network namespace: {e}"),
            BootReason::Interfaces(n) => write!(
                f,
                "pool VMs have one NIC, its network namespace has {n} interfaces"
            ),
            BootReason::PoolEmpty(why) => write!(f, "none from the pool: {why}"),
        }
    }
}

/// The pool-or-boot decision, before asking the pool: `own_vm` is the
/// operator's annotation, `plan` the network namespace's reading (None
/// without a namespace).
pub fn place(own_vm: bool, plan: Option<&Result<Plan, Error>>) -> Placement {
    match plan {
        _ if own_vm => Placement::Boot(BootReason::OwnVmAsked),
        Some(Err(e)) => Placement::Boot(BootReason::NetnsUnreadable(e.to_string())),
        Some(Ok(p)) if p.pairs.len() != 1 => Placement::Boot(BootReason::Interfaces(p.pairs.len())),
        _ => Placement::Pool,
    }
}

/// The launcher of a real shim: QEMU through `scute_runtime::sandbox`.
pub struct QemuLauncher;

#[async_trait]
impl Launcher for QemuLauncher {
    async fn launch(&self, req: LaunchRequest<'_>) -> TResult<Launched> {
        let id = req.sandbox_id;
        let ctx = format!("sandbox {id}");
        let mut config = req.config.clone();
        let (vcpus, memory_mib) = pod::vm_size(req.spec, &config).map_err(|e| map(&ctx, e))?;
        config.vcpus = vcpus;
        config.memory_mib = memory_mib;
        let cgroups_path = req
            .spec
            .pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str());
        let own_vm = pod::operator_annotation(req.spec, pod::ANN_VM_POOL, &config) == Some("off");
        // A pool VM has one NIC: it can take a netns with one interface
        // (read once here, and again by a cold boot if it comes to that).
        let plan = match &req.netns {
            Some(n) if !own_vm => Some(scute_runtime::network::plan(n)),
            _ => None,
        };
        let sb = match claim(&config, id, place(own_vm, plan.as_ref())).await {
            Ok(claimed) => {
                let plan = plan.and_then(Result::ok);
                Sandbox::adopt(&config, id, cgroups_path, plan, claimed).await
            }
            Err(why) => {
                tracing::info!(sandbox_id = %id, vcpus, memory_mib, "booting the sandbox VM ({why})");
                let netns = req.netns.as_deref();
                let booted = Sandbox::create(&config, id, netns, cgroups_path, |_| Ok(())).await;
                booted.map(|(sb, ())| sb)
            }
        }
        .map_err(|e| map(&ctx, e))?;
        Ok(attach(sb, &config, id, req.netns).await)
    }
}

/// A ready VM from the pool if `placement` allows and the pool has one;
/// else why the sandbox boots its own.
async fn claim(
    config: &scute_runtime::Config,
    id: &str,
    placement: Placement,
) -> Result<scute_runtime::handover::Claimed, BootReason> {
    match placement {
        Placement::Boot(why) => Err(why),
        Placement::Pool => {
            let (config, id) = (config.clone(), id.to_owned());
            let claimed =
                tokio::task::spawn_blocking(move || scute_runtime::handover::claim(&config, &id));
            match claimed.await {
                Ok(r) => r.map_err(|e| BootReason::PoolEmpty(e.to_string())),
                Err(e) => Err(BootReason::PoolEmpty(e.to_string())),
            }
        }
    }
}

/// The launched VM with what it serves on the host: CRI port-forward
/// into `netns`, and the operator's debug shell if the config has it. A
/// relay that can't start is logged; the VM runs without it.
async fn attach(
    mut sb: Sandbox,
    config: &scute_runtime::Config,
    id: &str,
    netns: Option<std::path::PathBuf>,
) -> Launched {
    let mut vm = QemuVm {
        forwarder: None,
        debug_shell: None,
        sandbox: None,
    };
    if let Some(ns) = netns {
        match crate::portforward::start(ns, sb.client.clone(), id.to_owned()).await {
            Ok(f) => vm.forwarder = Some(f),
            Err(e) => tracing::warn!(sandbox_id = %id, "port-forward unavailable: {e}"),
        }
    }
    if config.debug_shell {
        let private = share::private_of(&sb.shared_dir());
        let client = sb.client.clone();
        match crate::debugshell::start(sb.state_dir(), &private, client, id.to_owned()) {
            Ok(d) => vm.debug_shell = Some(d),
            Err(e) => tracing::warn!(sandbox_id = %id, "debug shell unavailable: {e}"),
        }
    }
    let events: tokio::sync::mpsc::Receiver<Event> =
        std::mem::replace(&mut sb.events, tokio::sync::mpsc::channel(1).1);
    let guest = Arc::new(sb.client.clone());
    vm.sandbox = Some(sb);
    Launched {
        vm: Box::new(vm),
        guest,
        events,
    }
}

/// A QEMU sandbox and what serves it on the host. Fields drop in order:
/// the relays before the VM they reach.
struct QemuVm {
    forwarder: Option<crate::portforward::Forwarder>,
    debug_shell: Option<crate::debugshell::DebugShell>,
    /// Always set once launched.
    sandbox: Option<Sandbox>,
}

impl QemuVm {
    fn sb(&self) -> &Sandbox {
        self.sandbox
            .as_ref()
            .expect("a launched VM has its sandbox")
    }
    fn sb_mut(&mut self) -> &mut Sandbox {
        self.sandbox
            .as_mut()
            .expect("a launched VM has its sandbox")
    }
}

impl SandboxVm for QemuVm {
    fn pids(&self) -> (u32, u32) {
        self.sb().process_pids()
    }
    fn vm_exited(&mut self) -> Option<String> {
        self.sb_mut().vm_exited()
    }
    fn virtiofsd_exited(&mut self) -> Option<String> {
        self.sb_mut().virtiofsd_exited()
    }
    fn kill(&mut self) {
        self.sb_mut().kill_vm()
    }
    fn share(
        &self,
        cid: &str,
        bundle: &Bundle,
        joinable: &[(u32, u32)],
    ) -> Result<serde_json::Value, Error> {
        share::share_container(&self.sb().shared_dir(), cid, bundle, joinable)
    }
    fn unshare(&self, cid: &str) {
        share::unshare_container(&self.sb().shared_dir(), cid)
    }
    fn console_log(&self) -> Option<std::path::PathBuf> {
        Some(self.sb().console_log())
    }
    fn mark_releasing(&self) {
        self.sb().mark_releasing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize) -> Result<Plan, Error> {
        Ok(Plan {
            pairs: (0..n).map(|_| Default::default()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn the_pool_serves_one_nic_and_no_netns() {
        assert_eq!(place(false, None), Placement::Pool);
        assert_eq!(place(false, Some(&plan(1))), Placement::Pool);
    }

    #[test]
    fn each_reason_to_boot_is_named() {
        assert_eq!(
            place(true, Some(&plan(1))),
            Placement::Boot(BootReason::OwnVmAsked)
        );
        assert_eq!(
            place(false, Some(&plan(2))),
            Placement::Boot(BootReason::Interfaces(2))
        );
        let unreadable = Err(Error::Host("no such netns".into()));
        assert!(matches!(
            place(false, Some(&unreadable)),
            Placement::Boot(BootReason::NetnsUnreadable(e)) if e.contains("no such netns")
        ));
        assert_eq!(
            BootReason::Interfaces(3).to_string(),
            "pool VMs have one NIC, its network namespace has 3 interfaces"
        );
    }
}
