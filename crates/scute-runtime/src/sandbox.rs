//! A sandbox: state dir, virtio-fs share + virtiofsd, the VM, and a connected
//! agent. Fields drop in declaration order, so dropping a `Sandbox` kills the
//! VM, then virtiofsd, then unmounts and removes the state dir.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use scute_hypervisor::qemu::Qemu;
use scute_hypervisor::{accel, Hypervisor, Nic, RealHost, SharedFs, Vm, VmSpec};
use scute_protocol::{Event, PROTOCOL_VERSION};
use tokio::sync::mpsc;

use crate::client::{AgentClient, Deadlines};
use crate::jail::VmmUid;
use crate::state::{StateDir, StateFile};
use crate::virtiofsd::Virtiofsd;
use crate::{Config, Error};

/// virtio-fs tag the agent mounts.
pub const SHARE_TAG: &str = "scute";

/// Where boot time went, for `scute bench` and logs.
#[derive(Debug, Clone, Default)]
pub struct BootTimings {
    /// State dir, share and virtiofsd ready.
    pub prepare: Duration,
    /// QEMU spawned → agent ready.
    pub vm_to_agent: Duration,
    /// Guest uptime when the agent was ready (kernel + agent boot).
    pub guest_uptime: Duration,
}

pub struct AgentInfo {
    pub kernel_release: String,
    pub agent_version: String,
}

pub struct Sandbox {
    pub id: String,
    pub client: AgentClient,
    pub events: mpsc::Receiver<Event>,
    pub agent: AgentInfo,
    pub timings: BootTimings,
    pub accel_reason: String,
    vm: Box<dyn Vm>,
    _net: Option<crate::network::Wired>,
    _taps: Option<crate::network::Taps>,
    _virtiofsd: Virtiofsd,
    _cgroup: Option<crate::hostcgroup::SandboxCgroup>,
    _vmm_uid: Option<VmmUid>,
    dir: StateDir,
}

/// Fails early, before anything is created, when the host can't run a VM.
pub fn preflight(config: &Config) -> Result<PathBuf, Error> {
    for (what, key, path) in [
        ("kernel", "kernel", config.kernel()),
        ("initramfs", "initrd", config.initrd()),
    ] {
        if !path.is_file() {
            return Err(Error::AssetMissing { what, key, path });
        }
        // The jailed QEMU sees an empty tmpfs there, and would only say
        // it can't open the file.
        if let Some(dir) = (config.vmm_uids > 0)
            .then(|| {
                scute_hypervisor::mountns::HIDDEN
                    .iter()
                    .find(|d| path.starts_with(d))
            })
            .flatten()
        {
            return Err(Error::Config {
                path: crate::config::DEFAULT_PATH.into(),
                message: format!(
                    "{key} = {}: {dir} is hidden from the jailed QEMU; put the guest assets elsewhere (e.g. under /var/lib/scute)",
                    path.display()
                ),
            });
        }
    }
    if !config.qemu_path.is_file() {
        return Err(scute_hypervisor::Error::VmmMissing {
            path: config.qemu_path.clone(),
        }
        .into());
    }
    config.virtiofsd().ok_or(Error::VirtiofsdMissing)
}

impl Sandbox {
    /// Boots a sandbox. `share` runs once the shared dir exists and before
    /// virtiofsd starts (bind mounts made then are visible in the guest).
    pub async fn create<T>(
        config: &Config,
        id: &str,
        netns: Option<&std::path::Path>,
        cgroups_path: Option<&str>,
        share: impl FnOnce(&std::path::Path) -> Result<T, Error>,
    ) -> Result<(Self, T), Error> {
        crate::bundle::validate_id(id)?;
        let virtiofsd_bin = preflight(config)?;
        let net_plan = netns.map(crate::network::plan).transpose()?;
        let decision = accel::decide(config.accel, &RealHost)
            .map_err(scute_hypervisor::Error::KvmUnavailable)?;
        tracing::info!(sandbox_id = id, accel = %decision.accel, reason = %decision.reason, "accelerator chosen");

        let t0 = Instant::now();
        let dir = StateDir::create(&config.state_dir, id)?;
        let vmm_uid = if config.vmm_uids > 0 {
            Some(VmmUid::allocate(
                &config.state_dir,
                id,
                config.vmm_uid_base,
                config.vmm_uids,
            )?)
        } else {
            tracing::warn!(sandbox_id = id, "vmm_uids = 0: QEMU runs as root, unjailed");
            None
        };
        let memory_max = (config.vmm_memory_overhead_mib > 0)
            .then(|| (config.memory_mib as u64 + config.vmm_memory_overhead_mib as u64) << 20);
        let cgroup = match crate::hostcgroup::SandboxCgroup::create(
            std::path::Path::new("/sys/fs/cgroup"),
            &crate::hostcgroup::relative_path(id, cgroups_path),
            memory_max,
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    sandbox_id = id,
                    "the VMM runs without a cgroup of its own: {e}"
                );
                None
            }
        };
        let uid = vmm_uid.as_ref().map(|u| u.uid);
        let vmm_dir = crate::jail::vmm_dir(dir.path(), uid)?;
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).map_err(Error::io("create shared dir"))?;
        crate::state::set_private(&shared)?;
        crate::share::make_shared_mount(&shared)?;
        let shared_out = share(&shared)?;
        let virtiofsd = Virtiofsd::spawn(
            &virtiofsd_bin,
            &shared,
            &vmm_dir.join("virtiofsd.sock"),
            &dir.join("virtiofsd.log"),
            cgroup.as_ref(),
        )?;
        crate::jail::give(&virtiofsd.socket, uid)?;
        let taps = net_plan
            .as_ref()
            .map(|p| crate::network::create_taps(p, uid))
            .transpose()?;
        let prepare = t0.elapsed();

        // Root's, outside the VMM's dir: QEMU only serves the console.
        let console = dir.join("console.log");
        crate::state::private_file(&console).map_err(Error::io("create console.log"))?;
        let spec = VmSpec {
            id: id.to_owned(),
            kernel: config.kernel(),
            initrd: config.initrd(),
            extra_kernel_params: config.kernel_params.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            accel: decision.accel,
            agent_socket: vmm_dir.join("agent.sock"),
            console_socket: vmm_dir.join("console.sock"),
            shared_fs: Some(SharedFs {
                socket: virtiofsd.socket.clone(),
                tag: SHARE_TAG.into(),
            }),
            debug: config.debug,
            netns: net_plan.as_ref().map(|p| p.netns.clone()),
            nics: net_plan
                .iter()
                .flat_map(|p| p.pairs.iter().zip(&p.config.interfaces))
                .map(|((_, tap), iface)| Nic {
                    tap: tap.clone(),
                    mac: iface.mac.clone(),
                })
                .collect(),
            jail: vmm_uid
                .as_ref()
                .map(|u| u.jail(decision.accel == scute_hypervisor::Accel::Kvm, &vmm_dir)),
            cgroup_procs: cgroup
                .iter()
                .flat_map(|c| c.dirs())
                .map(|d| d.join("cgroup.procs"))
                .collect(),
            tcg_tb_size_mib: (config.tcg_tb_size_mib > 0).then_some(config.tcg_tb_size_mib),
            free_page_reporting: config.free_page_reporting,
            // scute's kernel has no ACPI; Debian's boots as it always has.
            acpi: config.kernel.flavor() == crate::config::Flavor::Debian,
        };
        let qemu = Qemu {
            binary: config.qemu_path.clone(),
            log: Some(dir.join("qemu.log")),
        };
        let t_vm = Instant::now();
        let mut vm = qemu.launch(&spec)?;
        // Ends by itself when QEMU closes the console.
        crate::console::spawn(
            spec.console_socket.clone(),
            console.clone(),
            if config.debug {
                crate::console::DEBUG_LIMIT
            } else {
                crate::console::LIMIT
            },
        );
        let net = net_plan.as_ref().map(crate::network::wire).transpose()?;
        dir.write(&StateFile {
            vmm_pid: Some(vm.pid()),
            virtiofsd_pid: Some(virtiofsd.pid()),
            cgroups: cgroup.iter().flat_map(|c| c.dirs()).cloned().collect(),
            ..StateFile::owned_by_me(id)
        })?;
        // The state dir (and the console log in it) goes with the failed
        // sandbox: the error carries the console's last lines itself.
        let boot_err = |message: String| Error::Boot {
            id: id.to_owned(),
            message: format!(
                "{message}{}{}",
                crate::console::tail(&dir.join("qemu.log"), "QEMU's log"),
                crate::console::tail(&console, "the guest console")
            ),
            console: None,
        };
        let (client, mut events) = AgentClient::connect(
            &spec.agent_socket,
            Duration::from_secs(10),
            Deadlines::from_config(config),
        )
        .await?;
        crate::jail::give(&spec.agent_socket, uid)?;
        let deadline = t_vm + Duration::from_secs(config.boot_timeout_secs);
        let ready = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Event::Ready { protocol_version, agent_version, kernel_release, uptime_ms }) => {
                        if protocol_version != PROTOCOL_VERSION {
                            return Err(boot_err(format!(
                                "guest agent speaks protocol {protocol_version}, this host {PROTOCOL_VERSION}: rebuild the assets with `scute assets build`"
                            )));
                        }
                        break (agent_version, kernel_release, uptime_ms);
                    }
                    Some(other) => tracing::warn!(sandbox_id = id, ?other, "event before ready ignored"),
                    None => return Err(boot_err("agent channel closed during boot".into())),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(st) = vm.exited() {
                        return Err(boot_err(format!("VM exited during boot ({st}); see {}", dir.join("qemu.log").display())));
                    }
                    if Instant::now() > deadline {
                        return Err(boot_err(format!(
                            "guest agent not ready after {} s (boot_timeout_secs)", config.boot_timeout_secs
                        )));
                    }
                }
            }
        };
        if let Some(p) = &net_plan {
            // Inside the boot deadline: a guest that hangs here is a boot failure.
            let left = deadline.saturating_duration_since(Instant::now());
            client
                .configure_network(p.config.clone(), left.max(Duration::from_secs(1)))
                .await
                .map_err(|e| boot_err(format!("configure the guest network: {e}")))?;
        }
        let timings = BootTimings {
            prepare,
            vm_to_agent: t_vm.elapsed(),
            guest_uptime: Duration::from_millis(ready.2),
        };
        tracing::info!(sandbox_id = id, ?timings, kernel = %scute_protocol::message::bounded(&ready.1), "sandbox ready");
        Ok((
            Self {
                id: id.to_owned(),
                client,
                events,
                agent: AgentInfo {
                    agent_version: scute_protocol::message::bounded(&ready.0).to_owned(),
                    kernel_release: scute_protocol::message::bounded(&ready.1).to_owned(),
                },
                timings,
                accel_reason: decision.reason,
                vm,
                _net: net,
                _taps: taps,
                _virtiofsd: virtiofsd,
                _cgroup: cgroup,
                _vmm_uid: vmm_uid,
                dir,
            },
            shared_out,
        ))
    }

    /// `Some(description)` if the VM died.
    pub fn vm_exited(&mut self) -> Option<String> {
        self.vm.exited()
    }

    /// Host pids of the VMM and of virtiofsd (children of this process, so
    /// not reused before they are reaped).
    pub fn process_pids(&self) -> (u32, u32) {
        (self.vm.pid(), self._virtiofsd.pid())
    }

    /// `Some(description)` if virtiofsd died: the guest's file I/O then
    /// hangs, so the sandbox is lost.
    pub fn virtiofsd_exited(&mut self) -> Option<String> {
        self._virtiofsd.exited()
    }

    /// Kills the VM now (a hung guest, a dead virtiofsd). The agent channel
    /// closes with it, so every container of the sandbox is reported gone;
    /// the rest is released when the sandbox is dropped.
    pub fn kill_vm(&mut self) {
        self.vm.kill();
    }

    /// Host path of the virtio-fs share (guest `/run/scute/shared`).
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }

    pub fn state_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}
