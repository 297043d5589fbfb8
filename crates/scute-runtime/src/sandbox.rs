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

/// virtio-fs tag the agent mounts at `/run/scute/shared` (volumes).
pub const SHARE_TAG: &str = "scute";
/// virtio-fs tag the agent mounts at `/run/scute/rootfs` (root filesystems).
pub const ROOTFS_TAG: &str = "scute-rootfs";

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
    /// The pool VM this sandbox adopted; `None` if it booted its own.
    pub from_pool: Option<String>,
    vm: Box<dyn Vm>,
    rest: Backing,
    dir: StateDir,
}

/// What a sandbox holds besides its VM, dropped after it.
enum Backing {
    /// Booted by this process: everything is its own.
    Owned(Box<Owned>),
    /// Adopted from the pool: the pool process that booted the VM keeps
    /// virtiofsd, the share, the jail uid and the VM's state dir, and
    /// releases them when the VM is killed (see [`crate::poolvm`]).
    Adopted(Box<Adopted>),
}

/// What a sandbox holds of a VM it adopted (fields drop in this order,
/// after the VM).
struct Adopted {
    virtiofsd_pid: u32,
    rootfs_virtiofsd_pid: u32,
    shared: PathBuf,
    console: PathBuf,
    _net: Option<crate::network::Wired>,
    _taps: Option<crate::network::Taps>,
    /// The VM's move into the sandbox's cgroups, finishing in the
    /// background; joined before the cgroups are removed.
    _moves: Option<JoinOnDrop>,
    _cgroup: Option<crate::hostcgroup::SandboxCgroup>,
}

/// The network a boot gives the VM.
#[derive(Clone, Copy)]
pub(crate) enum Net<'a> {
    /// No NIC.
    None,
    /// One NIC per interface of this netns, wired into it.
    Pod(&'a std::path::Path),
    /// One NIC on a tap alone in a netns of its own (a pool VM).
    Pool,
}

/// A booted VM's processes and resources. Fields drop in this order, after
/// [`Owned`]'s own drop has sent both virtiofsds their SIGKILL (so that
/// their exits overlap).
pub(crate) struct Owned {
    _net: Option<crate::network::Wired>,
    _taps: Option<crate::network::Taps>,
    /// A pool VM's NIC, until a claim moves its tap into a pod.
    pub(crate) pool_nic: Option<crate::network::PoolNic>,
    pub(crate) virtiofsd: Virtiofsd,
    pub(crate) rootfs_virtiofsd: Virtiofsd,
    _cgroup: Option<crate::hostcgroup::SandboxCgroup>,
    _vmm_uid: Option<VmmUid>,
}

pub use crate::handover::Ready;

/// A VM booted up to its agent's Ready event, before anyone talks to it.
pub(crate) struct Booted {
    pub vm: Box<dyn Vm>,
    pub owned: Owned,
    pub dir: StateDir,
    /// The agent connection, read up to and including Ready: what the
    /// decoder holds past it belongs to whoever reads on.
    pub stream: tokio::net::UnixStream,
    pub decoder: scute_protocol::FrameDecoder,
    pub ready: Ready,
    pub timings: BootTimings,
    pub accel_reason: String,
    net_plan: Option<crate::network::Plan>,
    deadline: Instant,
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill_virtiofsds();
    }
}

impl Owned {
    /// Sends both virtiofsds their SIGKILL, without waiting.
    pub(crate) fn kill_virtiofsds(&mut self) {
        self.virtiofsd.kill();
        self.rootfs_virtiofsd.kill();
    }

    /// `Some(description)` once either virtiofsd has exited.
    pub(crate) fn virtiofsds_exited(&mut self) -> Option<String> {
        self.virtiofsd.exited().or_else(|| {
            self.rootfs_virtiofsd
                .exited()
                .map(|s| format!("{s} (root filesystems)"))
        })
    }
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
        let net = netns.map_or(Net::None, Net::Pod);
        let (b, shared_out) = boot(config, id, net, cgroups_path, share).await?;
        let (client, events) =
            AgentClient::from_stream_with(b.stream, b.decoder, Deadlines::from_config(config));
        if let Some(p) = &b.net_plan {
            // Inside the boot deadline: a guest that hangs here is a boot failure.
            let left = b.deadline.saturating_duration_since(Instant::now());
            if let Err(e) = client
                .configure_network(p.config.clone(), left.max(Duration::from_secs(1)))
                .await
            {
                return Err(boot_error(
                    id,
                    b.dir.path(),
                    format!("configure the guest network: {e}"),
                ));
            }
        }
        tracing::info!(sandbox_id = id, timings = ?b.timings, kernel = %b.ready.kernel_release, "sandbox ready");
        Ok((
            Self {
                id: id.to_owned(),
                client,
                events,
                agent: AgentInfo {
                    agent_version: b.ready.agent_version,
                    kernel_release: b.ready.kernel_release,
                },
                timings: b.timings,
                accel_reason: b.accel_reason,
                from_pool: None,
                vm: b.vm,
                rest: Backing::Owned(Box::new(b.owned)),
                dir: b.dir,
            },
            shared_out,
        ))
    }

    /// A sandbox on a VM the pool booted (see [`crate::handover::claim`]): its
    /// processes move into this sandbox's host cgroup, and this process
    /// talks to the agent from here on.
    /// With a `plan` (the sandbox's netns, one interface), the VM's NIC
    /// moves into it and the guest NIC takes the pod interface's MAC,
    /// addresses and routes.
    pub async fn adopt(
        config: &Config,
        id: &str,
        cgroups_path: Option<&str>,
        plan: Option<crate::network::Plan>,
        claimed: crate::handover::Claimed,
    ) -> Result<Self, Error> {
        crate::bundle::validate_id(id)?;
        let t0 = Instant::now();
        let dir = StateDir::create(&config.state_dir, id)?;
        let r = &claimed.reply;
        let cgroup = sandbox_cgroup(config, id, cgroups_path);
        // The VM runs already: it moves into the sandbox's cgroups in the
        // background (the first move waits for an RCU grace period, ~10 ms
        // of every warm start on a cgroup v1 host when it was waited for).
        // Declared after `cgroup`, so dropped (joined) before it on every
        // return, and kept in `Adopted` before its cgroups: no move lands
        // after the cgroups are removed.
        let moves = cgroup.as_ref().map(|c| {
            let procs: Vec<_> = c.dirs().iter().map(|d| d.join("cgroup.procs")).collect();
            let pids = [r.vmm_pid, r.virtiofsd_pid, r.rootfs_virtiofsd_pid];
            let sid = id.to_owned();
            JoinOnDrop(Some(std::thread::spawn(move || {
                for procs in &procs {
                    for pid in pids {
                        let moved = std::fs::write(procs, pid.to_string());
                        // ESRCH: the VM was killed meanwhile.
                        let gone = |e: &std::io::Error| e.raw_os_error() == Some(libc::ESRCH);
                        if let Some(e) = moved.err().filter(|e| !gone(e)) {
                            tracing::warn!(
                                sandbox_id = sid,
                                pid,
                                "move the pool VM into {}: {e}",
                                procs.display()
                            );
                        }
                    }
                }
            })))
        });
        dir.write(&StateFile {
            cgroups: cgroup.iter().flat_map(|c| c.dirs()).cloned().collect(),
            ..StateFile::running(id, r.vmm_pid, r.virtiofsd_pid, r.rootfs_virtiofsd_pid)
        })?;
        let mut dec = scute_protocol::FrameDecoder::new();
        dec.push(&r.leftover);
        let stream = tokio::net::UnixStream::from_std(claimed.agent)
            .map_err(Error::io("register the pool VM's agent connection"))?;
        let (client, events) =
            AgentClient::from_stream_with(stream, dec, Deadlines::from_config(config));
        let mut net = None;
        if let Some(plan) = &plan {
            let Some(nic) = &r.nic else {
                return Err(Error::Host(format!("pool VM {} has no NIC", r.vm_id)));
            };
            net = Some(crate::network::adopt_tap(&nic.netns, &nic.tap, plan)?);
            let mut cfg = plan.config.clone();
            for i in &mut cfg.interfaces {
                i.guest_mac = Some(nic.mac.clone());
            }
            client
                .configure_network(cfg, Duration::from_secs(config.start_timeout_secs))
                .await
                .map_err(|e| Error::Boot {
                    id: id.to_owned(),
                    message: format!("configure the pool VM's network: {e}"),
                    console: None,
                })?;
        }
        let (_net, _taps) = net.unzip();
        let timings = BootTimings {
            prepare: t0.elapsed(),
            vm_to_agent: Duration::ZERO,
            guest_uptime: Duration::from_millis(r.ready.uptime_ms),
        };
        tracing::info!(sandbox_id = id, pool_vm = %r.vm_id, vmm_pid = r.vmm_pid, "sandbox ready: adopted a VM from the pool");
        Ok(Self {
            id: id.to_owned(),
            client,
            events,
            agent: AgentInfo {
                agent_version: r.ready.agent_version.clone(),
                kernel_release: r.ready.kernel_release.clone(),
            },
            timings,
            accel_reason: r.accel_reason.clone(),
            from_pool: Some(r.vm_id.clone()),
            rest: Backing::Adopted(Box::new(Adopted {
                virtiofsd_pid: r.virtiofsd_pid,
                rootfs_virtiofsd_pid: r.rootfs_virtiofsd_pid,
                shared: r.shared.clone(),
                console: r.console.clone(),
                _net,
                _taps,
                _moves: moves,
                _cgroup: cgroup,
            })),
            vm: Box::new(claimed.vm),
            dir,
        })
    }

    /// `Some(description)` if the VM died.
    pub fn vm_exited(&mut self) -> Option<String> {
        self.vm.exited()
    }

    /// Host pids of the VMM and of virtiofsd (children of this process, so
    /// not reused before they are reaped).
    pub fn process_pids(&self) -> (u32, u32) {
        let virtiofsd = match &self.rest {
            Backing::Owned(o) => o.virtiofsd.pid(),
            Backing::Adopted(a) => a.virtiofsd_pid,
        };
        (self.vm.pid(), virtiofsd)
    }

    /// `Some(description)` if virtiofsd died: the guest's file I/O then
    /// hangs, so the sandbox is lost.
    pub fn virtiofsd_exited(&mut self) -> Option<String> {
        match &mut self.rest {
            Backing::Owned(o) => o.virtiofsds_exited(),
            // The pool process reaps them; a pid that names no live process
            // (or a zombie) is an exited one.
            Backing::Adopted(a) => [a.virtiofsd_pid, a.rootfs_virtiofsd_pid]
                .into_iter()
                .find(|p| !crate::procs::alive(*p))
                .map(|p| format!("pid {p} exited")),
        }
    }

    /// Kills the VM now (a hung guest, a dead virtiofsd). The agent channel
    /// closes with it, so every container of the sandbox is reported gone;
    /// the rest is released when the sandbox is dropped.
    pub fn kill_vm(&mut self) {
        self.vm.kill();
    }

    /// Host path of the virtio-fs share (guest `/run/scute/shared`).
    pub fn shared_dir(&self) -> PathBuf {
        match &self.rest {
            Backing::Owned(_) => self.dir.join("shared"),
            Backing::Adopted(a) => a.shared.clone(),
        }
    }

    /// The sandbox's host cgroup dirs (one on cgroup v2, one per controller
    /// on v1); empty when it runs without one.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let cg = match &self.rest {
            Backing::Owned(o) => o._cgroup.as_ref(),
            Backing::Adopted(a) => a._cgroup.as_ref(),
        };
        cg.map(|c| c.dirs().to_vec()).unwrap_or_default()
    }

    pub fn state_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The owner is releasing this sandbox: a create of the same id waits
    /// for its state dir to go (see [`crate::state::StateDir::mark_releasing`]).
    pub fn mark_releasing(&self) {
        self.dir.mark_releasing()
    }

    pub fn console_log(&self) -> PathBuf {
        match &self.rest {
            Backing::Owned(_) => self.dir.join("console.log"),
            Backing::Adopted(a) => a.console.clone(),
        }
    }
}

/// A thread joined when this is dropped.
struct JoinOnDrop(Option<std::thread::JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Boots a VM for sandbox `id` up to its agent's Ready event.
pub(crate) async fn boot<T>(
    config: &Config,
    id: &str,
    net: Net<'_>,
    cgroups_path: Option<&str>,
    share: impl FnOnce(&std::path::Path) -> Result<T, Error>,
) -> Result<(Booted, T), Error> {
    let netns = match net {
        Net::Pod(p) => Some(p),
        Net::None | Net::Pool => None,
    };
    crate::bundle::validate_id(id)?;
    let virtiofsd_bin = preflight(config)?;
    let net_plan = netns.map(crate::network::plan).transpose()?;
    let decision =
        accel::decide(config.accel, &RealHost).map_err(scute_hypervisor::Error::KvmUnavailable)?;
    tracing::info!(sandbox_id = id, accel = %decision.accel, reason = %decision.reason, "accelerator chosen");
    if decision.accel == scute_hypervisor::Accel::Tcg {
        // 20 ms of sleeping, once a process: done while virtiofsd starts.
        std::thread::spawn(scute_hypervisor::qemu::host_tsc_khz);
    }
    let t0 = Instant::now();
    let pool = matches!(net, Net::Pool);
    let req = (config, id, cgroups_path, &virtiofsd_bin);
    let (host, shared_out) = prepare_host(req, net_plan.as_ref(), pool, share)?;
    let prepare = t0.elapsed();
    let spec = vm_spec(config, id, decision.accel, &host, net_plan.as_ref());
    let t_vm = Instant::now();
    let (mut vm, net) = start_vm(config, id, &spec, &host, net_plan.as_ref())?;
    let deadline = t_vm + Duration::from_secs(config.boot_timeout_secs);
    let uid = host.vmm_uid.as_ref().map(|u| u.uid);
    let (stream, ready, decoder) =
        await_agent(config, id, host.dir.path(), &spec, &mut *vm, uid, deadline).await?;
    let timings = BootTimings {
        prepare,
        vm_to_agent: t_vm.elapsed(),
        guest_uptime: Duration::from_millis(ready.uptime_ms),
    };
    page_out_boot_files(vm.pid(), id, &spec);
    let (owned, dir) = host.into_owned(net);
    let accel_reason = decision.reason;
    let booted = Booted {
        vm,
        owned,
        dir,
        stream,
        decoder,
        ready,
        timings,
        accel_reason,
        net_plan,
        deadline,
    };
    Ok((booted, shared_out))
}

/// What the host sets up for a VM before QEMU starts. Fields drop in this
/// order, the reverse of their making.
struct Prepared {
    pool_nic: Option<crate::network::PoolNic>,
    taps: Option<crate::network::Taps>,
    rootfs_virtiofsd: Virtiofsd,
    virtiofsd: Virtiofsd,
    /// The dir the jailed QEMU sees (its sockets).
    vmm_dir: PathBuf,
    cgroup: Option<crate::hostcgroup::SandboxCgroup>,
    vmm_uid: Option<VmmUid>,
    dir: StateDir,
}

impl Prepared {
    /// What the booted VM holds (with the wiring into its netns), and its
    /// state dir.
    fn into_owned(self, net: Option<crate::network::Wired>) -> (Owned, StateDir) {
        let owned = Owned {
            _net: net,
            _taps: self.taps,
            pool_nic: self.pool_nic,
            virtiofsd: self.virtiofsd,
            rootfs_virtiofsd: self.rootfs_virtiofsd,
            _cgroup: self.cgroup,
            _vmm_uid: self.vmm_uid,
        };
        (owned, self.dir)
    }
}

/// The state dir, the jail's uid, the host cgroup, the shares (`share`
/// runs once they exist, before virtiofsd serves them), both virtiofsds,
/// and the taps or the pool's NIC. On an error what was made goes again.
fn prepare_host<T>(
    (config, id, cgroups_path, virtiofsd_bin): (&Config, &str, Option<&str>, &PathBuf),
    net_plan: Option<&crate::network::Plan>,
    pool: bool,
    share: impl FnOnce(&std::path::Path) -> Result<T, Error>,
) -> Result<(Prepared, T), Error> {
    let dir = StateDir::create(&config.state_dir, id)?;
    let vmm_uid = if config.vmm_uids > 0 {
        let (base, n) = (config.vmm_uid_base, config.vmm_uids);
        Some(VmmUid::allocate(&config.state_dir, id, base, n)?)
    } else {
        tracing::warn!(sandbox_id = id, "vmm_uids = 0: QEMU runs as root, unjailed");
        None
    };
    let cgroup = sandbox_cgroup(config, id, cgroups_path);
    let uid = vmm_uid.as_ref().map(|u| u.uid);
    let vmm_dir = crate::jail::vmm_dir(dir.path(), uid)?;
    let shared = crate::share::create_shares(dir.path())?;
    let rootfs = crate::share::rootfs_share(&shared);
    let shared_out = share(&shared)?;
    let spawn = |served: &std::path::Path, name: &str, cache| {
        Virtiofsd::spawn(
            virtiofsd_bin,
            served,
            &vmm_dir.join(format!("{name}.sock")),
            &dir.join(format!("{name}.log")),
            cgroup.as_ref(),
            cache,
        )
    };
    let mut virtiofsd = spawn(&shared, "virtiofsd", crate::virtiofsd::Cache::Auto)?;
    let mut rootfs_virtiofsd = spawn(&rootfs, "virtiofsd-rootfs", crate::virtiofsd::Cache::Always)?;
    for v in [&mut virtiofsd, &mut rootfs_virtiofsd] {
        v.wait_for_socket(Duration::from_secs(10))?;
        crate::jail::give(&v.socket, uid)?;
    }
    let taps = net_plan
        .map(|p| crate::network::create_taps(p, uid))
        .transpose()?;
    let pool_nic = pool
        .then(|| crate::network::pool_nic(id, uid))
        .transpose()?;
    let host = Prepared {
        pool_nic,
        taps,
        rootfs_virtiofsd,
        virtiofsd,
        vmm_dir,
        cgroup,
        vmm_uid,
        dir,
    };
    Ok((host, shared_out))
}

/// The VM QEMU is asked for: kernel and initramfs, size, accelerator,
/// the sockets in the jail's dir, the two shares, the NICs, the jail and
/// the host cgroup.
fn vm_spec(
    config: &Config,
    id: &str,
    accel: scute_hypervisor::Accel,
    host: &Prepared,
    net_plan: Option<&crate::network::Plan>,
) -> VmSpec {
    let fs = |socket: &std::path::Path, tag: &str| SharedFs {
        socket: socket.to_owned(),
        tag: tag.into(),
    };
    let nic = |tap: &String, mac: &String| Nic {
        tap: tap.clone(),
        mac: mac.clone(),
    };
    let plan_nics = net_plan
        .iter()
        .flat_map(|p| p.pairs.iter().zip(&p.config.interfaces))
        .map(|((_, tap), iface)| nic(tap, &iface.mac));
    let kvm = accel == scute_hypervisor::Accel::Kvm;
    VmSpec {
        id: id.to_owned(),
        kernel: config.kernel(),
        initrd: config.initrd(),
        extra_kernel_params: config.kernel_params.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        accel,
        agent_socket: host.vmm_dir.join("agent.sock"),
        console_socket: host.vmm_dir.join("console.sock"),
        shared_fs: vec![
            fs(&host.virtiofsd.socket, SHARE_TAG),
            fs(&host.rootfs_virtiofsd.socket, ROOTFS_TAG),
        ],
        debug: config.debug,
        monitor_socket: config.debug.then(|| host.vmm_dir.join("monitor.sock")),
        netns: net_plan
            .map(|p| p.netns.clone())
            .or_else(|| host.pool_nic.as_ref().map(|n| n.netns.clone())),
        nics: plan_nics
            .chain(host.pool_nic.iter().map(|n| nic(&n.tap, &n.mac)))
            .collect(),
        jail: host.vmm_uid.as_ref().map(|u| u.jail(kvm, &host.vmm_dir)),
        cgroup_procs: host
            .cgroup
            .iter()
            .flat_map(|c| c.dirs())
            .map(|d| d.join("cgroup.procs"))
            .collect(),
        tcg_tb_size_mib: (config.tcg_tb_size_mib > 0).then_some(config.tcg_tb_size_mib),
        free_page_reporting: config.free_page_reporting,
        // scute's kernel has no ACPI; Debian's boots as it always has.
        acpi: config.kernel.flavor() == crate::config::Flavor::Debian,
    }
}

/// Launches QEMU, logs its console, wires the NICs into the netns, and
/// records the sandbox's processes in its state file.
fn start_vm(
    config: &Config,
    id: &str,
    spec: &VmSpec,
    host: &Prepared,
    net_plan: Option<&crate::network::Plan>,
) -> Result<(Box<dyn Vm>, Option<crate::network::Wired>), Error> {
    // Root's, outside the VMM's dir: QEMU only serves the console.
    let console = host.dir.join("console.log");
    crate::state::private_file(&console).map_err(Error::io("create console.log"))?;
    let qemu = Qemu {
        binary: config.qemu_path.clone(),
        log: Some(host.dir.join("qemu.log")),
    };
    let vm = qemu.launch(spec)?;
    let limit = if config.debug {
        crate::console::DEBUG_LIMIT
    } else {
        crate::console::LIMIT
    };
    // Ends by itself when QEMU closes the console.
    crate::console::spawn(spec.console_socket.clone(), console, limit);
    let net = net_plan.map(crate::network::wire).transpose()?;
    let (virtiofsd, rootfs) = (host.virtiofsd.pid(), host.rootfs_virtiofsd.pid());
    host.dir.write(&StateFile {
        cgroups: host.cgroup.iter().flat_map(|c| c.dirs()).cloned().collect(),
        ..StateFile::running(id, vm.pid(), virtiofsd, rootfs)
    })?;
    Ok((vm, net))
}

/// Connects to the agent's port and waits for its Ready event (until
/// `deadline`): the connection, Ready, and the bytes read past it. A
/// failed boot's error carries the console's last lines.
async fn await_agent(
    config: &Config,
    id: &str,
    dir: &std::path::Path,
    spec: &VmSpec,
    vm: &mut dyn Vm,
    uid: Option<u32>,
    deadline: Instant,
) -> Result<(tokio::net::UnixStream, Ready, scute_protocol::FrameDecoder), Error> {
    let mut stream =
        crate::client::connect_stream(&spec.agent_socket, Duration::from_secs(10)).await?;
    crate::jail::give(&spec.agent_socket, uid)?;
    match wait_ready(&mut stream, vm, deadline, config.boot_timeout_secs).await {
        Ok((ready, decoder)) => Ok((stream, ready, decoder)),
        // The state dir (and the console log in it) goes with the failed
        // sandbox: the error carries the console's last lines itself.
        Err(why) => Err(boot_error(id, dir, why.to_string())),
    }
}

/// The guest has read its kernel and initramfs: QEMU's copies go, on a
/// thread of their own (reading QEMU's maps and the madvise take ~6 ms
/// that the container's create need not wait for).
fn page_out_boot_files(qemu_pid: u32, id: &str, spec: &VmSpec) {
    let sandbox_id = id.to_owned();
    let (kernel, initrd) = (spec.kernel.clone(), spec.initrd.clone());
    std::thread::spawn(move || {
        let t_trim = Instant::now();
        match crate::boot_files::page_out(qemu_pid, &[&kernel, &initrd]) {
            Ok(bytes) => tracing::debug!(
                sandbox_id,
                mib = bytes >> 20,
                ms = t_trim.elapsed().as_millis() as u64,
                "paged the kernel and initramfs out of QEMU"
            ),
            Err(e) => tracing::warn!(
                sandbox_id,
                "could not page the kernel and initramfs out of QEMU (they stay resident): {e}"
            ),
        }
    });
}

/// The sandbox's host cgroup (its memory limit is guest RAM plus the VMM's
/// allowance); `None`, logged, where the host won't give one.
fn sandbox_cgroup(
    config: &Config,
    id: &str,
    cgroups_path: Option<&str>,
) -> Option<crate::hostcgroup::SandboxCgroup> {
    let memory_max = (config.vmm_memory_overhead_mib > 0)
        .then(|| (config.memory_mib as u64 + config.vmm_memory_overhead_mib as u64) << 20);
    match crate::hostcgroup::SandboxCgroup::create(
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
    }
}

/// A boot failure, with the last lines of QEMU's log and of the console
/// (the state dir that holds them goes with the failed sandbox).
fn boot_error(id: &str, dir: &std::path::Path, message: String) -> Error {
    Error::Boot {
        id: id.to_owned(),
        message: format!(
            "{message}{}{}",
            crate::console::tail(&dir.join("qemu.log"), "QEMU's log"),
            crate::console::tail(&dir.join("console.log"), "the guest console")
        ),
        console: None,
    }
}

/// Why a booting VM's agent never said Ready.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error("bad frame from the agent during boot: {0}")]
    BadFrame(#[from] scute_protocol::FrameError),
    #[error("agent sent a {0:?} frame before Ready")]
    BeforeReady(scute_protocol::FrameKind),
    #[error("guest agent speaks protocol {0}, this host {PROTOCOL_VERSION}: rebuild the assets with `scute assets build`")]
    Protocol(u32),
    #[error("malformed event from the agent during boot: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("agent channel closed during boot")]
    Closed,
    #[error("read the agent channel during boot: {0}")]
    Read(#[source] std::io::Error),
    #[error("VM exited during boot ({0}); see QEMU's log below")]
    VmExited(String),
    #[error("guest agent not ready after {0} s (boot_timeout_secs)")]
    Timeout(u64),
}

/// Reads the agent's frames up to its Ready event, watching the VM and the
/// deadline. Returns Ready and the decoder with whatever came after it.
async fn wait_ready(
    stream: &mut tokio::net::UnixStream,
    vm: &mut dyn Vm,
    deadline: Instant,
    timeout_secs: u64,
) -> Result<(Ready, scute_protocol::FrameDecoder), NotReady> {
    use tokio::io::AsyncReadExt;
    let mut dec = scute_protocol::FrameDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(f) = dec.next_frame()? {
            if f.kind != scute_protocol::FrameKind::Event {
                return Err(NotReady::BeforeReady(f.kind));
            }
            match serde_json::from_slice::<Event>(&f.payload) {
                Ok(Event::Ready {
                    protocol_version,
                    agent_version,
                    kernel_release,
                    uptime_ms,
                }) => {
                    if protocol_version != PROTOCOL_VERSION {
                        return Err(NotReady::Protocol(protocol_version));
                    }
                    let ready = Ready {
                        agent_version: scute_protocol::message::bounded(&agent_version).to_owned(),
                        kernel_release: scute_protocol::message::bounded(&kernel_release)
                            .to_owned(),
                        uptime_ms,
                    };
                    return Ok((ready, dec));
                }
                Ok(other) => tracing::warn!(?other, "event before ready ignored"),
                Err(e) => return Err(e.into()),
            }
        }
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => return Err(NotReady::Closed),
                Ok(n) => dec.push(&buf[..n]),
                Err(e) => return Err(NotReady::Read(e)),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(st) = vm.exited() {
                    return Err(NotReady::VmExited(st));
                }
                if Instant::now() > deadline {
                    return Err(NotReady::Timeout(timeout_secs));
                }
            }
        }
    }
}
