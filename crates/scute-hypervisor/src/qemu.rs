//! QEMU backend: `qemu-system-x86_64 -M microvm`, virtio-mmio devices only.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{Accel, Error, Hypervisor, Vm, VmSpec};

/// Name of the virtio-serial port the agent looks for.
pub const AGENT_PORT_NAME: &str = "scute.agent";

pub struct Qemu {
    pub binary: PathBuf,
    /// File receiving QEMU's own stdout/stderr.
    pub log: Option<PathBuf>,
}

/// Kernel parameters only a TCG guest gets.
const TCG_KERNEL_PARAMS: [&str; 4] = [
    // QEMU's emulated local APIC counts at 1 GHz. TCG offers no TSC
    // deadline timer, so without this scute's kernel (which adds the
    // parameter, assets/kernel/lapic-timer-hz.patch) calibrates the
    // APIC timer against the PIT: ~0.25 s of every boot.
    "lapic_timer_hz=1000000000",
    // A one-vCPU kernel rewrites each of its ~5000 LOCK prefixes
    // through text_poke, and under TCG every poke switches page tables
    // and drops translated code: ~80 ms of every boot, to save a few
    // cycles per atomic operation.
    "noreplace-smp",
    // Freed init memory is filled with a poison byte before it goes
    // back to the allocator. Every store into a page whose code TCG
    // translated takes its slow path: the fill of 708 KiB of init
    // code took ~40 ms of every boot (scute's kernel adds the
    // parameter, assets/kernel/free-init-poison.patch).
    "free_init_poison=off",
    // virtio-net frees sent buffers when it sends the next ones, instead
    // of taking an interrupt for each completion. Under TCG an interrupt
    // is emulated APIC and virtio-mmio MMIO: busybox httpd took 4.2
    // instead of 5.8 network interrupts per request and served ~10 %
    // more (docs/performance.md, fifth round).
    "virtio_net.napi_tx=0",
];

/// `-accel` and `-cpu` as a sandbox's QEMU gets them.
fn accel_and_cpu(accel: Accel, tcg_tb_size_mib: Option<u32>) -> (String, &'static str) {
    match (accel, tcg_tb_size_mib) {
        (Accel::Kvm, _) => ("kvm".to_owned(), "host"),
        // Without ERMS/FSRM the guest's kernel and libc copy and clear
        // memory with unrolled loops instead of `rep movsb`/`stosb`,
        // which TCG runs one byte per iteration: unpacking the
        // initramfs took 116 ms with them and 60 ms without.
        // Without PKU the guest kernel leaves protection keys off, and
        // TCG never has to flush its soft TLB for a PKRU change (on
        // context switches): a Node.js app was ready ~18 % sooner.
        (Accel::Tcg, None) => ("tcg".to_owned(), TCG_CPU),
        (Accel::Tcg, Some(mib)) => (format!("tcg,tb-size={mib}"), TCG_CPU),
    }
}

const TCG_CPU: &str = "max,-erms,-fsrm,-pku";

/// The settings that differ per accelerator, as [`command_line`] passes
/// them: what `scute check` and the lab's report show as in force.
pub fn accel_settings(accel: Accel, tcg_tb_size_mib: Option<u32>, vcpus: u32) -> String {
    let (a, cpu) = accel_and_cpu(accel, tcg_tb_size_mib);
    let mut s = format!("-accel {a} -cpu {cpu} -smp {vcpus}");
    if accel == Accel::Tcg {
        s.push_str(" (kernel: ");
        s.push_str(&TCG_KERNEL_PARAMS.join(" "));
        s.push_str(" tsc_early_khz=<host TSC>)");
    }
    s
}

/// Kernel parameters scute always passes. `tsc_khz` is the host TSC rate:
/// under TCG the guest TSC runs at it, and a microvm has no HPET/PM timer to
/// calibrate against, so without it the guest hangs in timer setup.
fn kernel_params(spec: &VmSpec, tsc_khz: Option<u64>) -> String {
    let mut p = vec![
        "console=ttyS0",
        // A panic resets at once by triple fault, which QEMU (-no-reboot)
        // turns into its exit. The keyboard controller isn't there on
        // microvm, and the kernel's fallback after it (a real-mode jump to
        // the firmware) can restart the guest inside the same QEMU, so a
        // panicked sandbox stayed up silent.
        "reboot=t",
        "panic=-1",
        "rdinit=/init",
        // Skip work that is slow under emulation and useless in a sandbox VM.
        "tsc=reliable",
        "no_timer_check",
        "cryptomgr.notests",
        "random.trust_cpu=on",
        "i8042.noaux",
        "i8042.nopnp",
        "i8042.nokbd",
        "nomodeset",
        "edd=off",
        "pci=off",
        // scute's kernel has the dummy driver built in (for privileged
        // workloads), which adds a dummy0 to the VM's own network: a
        // container sharing it saw an interface runc's doesn't have.
        "dummy.numdummies=0",
    ];
    p.push(if spec.debug { "loglevel=7" } else { "quiet" });
    let mut s = p.join(" ");
    if let (Accel::Tcg, Some(khz)) = (spec.accel, tsc_khz) {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if spec.accel == Accel::Tcg {
        for k in TCG_KERNEL_PARAMS {
            s.push(' ');
            s.push_str(k);
        }
    }
    if !spec.extra_kernel_params.trim().is_empty() {
        s.push(' ');
        s.push_str(spec.extra_kernel_params.trim());
    }
    s
}

/// The full argument list (without the binary). Pure, so it is unit-tested.
pub fn command_line(spec: &VmSpec, tsc_khz: Option<u64>) -> Vec<String> {
    let mem = format!("{}M", spec.memory_mib);
    let machine = format!(
        "microvm,x-option-roms=on,rtc=on,isa-serial=on,memory-backend=mem,acpi={}",
        if spec.acpi { "on" } else { "off" }
    );
    let (accel, cpu) = accel_and_cpu(spec.accel, spec.tcg_tb_size_mib);
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("scute-{},debug-threads=on", spec.id),
        "-machine".into(),
        machine,
        "-accel".into(),
        accel,
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        mem.clone(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        // seccomp: no obsolete syscalls, no setuid/setgid, no fork/exec, no
        // scheduler or affinity changes.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initrd.display().to_string(),
        "-append".into(),
        kernel_params(spec, tsc_khz),
        "-chardev".into(),
        format!(
            "socket,id=console,path={},server=on,wait=off",
            spec.console_socket.display()
        ),
        "-serial".into(),
        "chardev:console".into(),
    ];
    if let Some(m) = &spec.monitor_socket {
        a.extend([
            "-monitor".into(),
            format!("unix:{},server=on,wait=off", m.display()),
        ]);
    }
    a.extend([
        "-device".into(),
        "virtio-serial-device,max_ports=2".into(),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            spec.agent_socket.display()
        ),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
    ]);
    for (i, nic) in spec.nics.iter().enumerate() {
        a.extend([
            "-netdev".into(),
            format!(
                "tap,id=net{i},ifname={},script=no,downscript=no,vhost=off",
                nic.tap
            ),
            "-device".into(),
            format!("virtio-net-device,netdev=net{i},mac={}", nic.mac),
        ]);
    }
    if spec.free_page_reporting {
        a.extend([
            "-device".into(),
            "virtio-balloon-device,free-page-reporting=on".into(),
        ]);
    }
    for (i, fs) in spec.shared_fs.iter().enumerate() {
        a.extend([
            "-chardev".into(),
            format!("socket,id=fs{i},path={}", fs.socket.display()),
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs{i},tag={}", fs.tag),
        ]);
    }
    a
}

impl Hypervisor for Qemu {
    fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, Error> {
        if !is_executable(&self.binary) {
            return Err(Error::VmmMissing {
                path: self.binary.clone(),
            });
        }
        let (out, err) = self.log_stdio()?;
        let mut cmd = Command::new(&self.binary);
        let tsc = match spec.accel {
            Accel::Tcg => host_tsc_khz(),
            Accel::Kvm => None,
        };
        cmd.args(command_line(spec, tsc))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Open until the child has used them.
        let _open = ChildSetup::open(spec)?.arm(&mut cmd);
        let child = crate::spawner::spawn(cmd).map_err(|source| Error::Spawn {
            path: self.binary.clone(),
            source,
        })?;
        tracing::debug!(sandbox_id = %spec.id, pid = child.id(), accel = %spec.accel, "qemu started");
        Ok(Box::new(QemuVm { child: Some(child) }))
    }
}

impl Qemu {
    /// QEMU's stdout and stderr: its log, capped (the guest can make QEMU
    /// print: device errors), or nowhere.
    fn log_stdio(&self) -> Result<(Stdio, Stdio), Error> {
        let Some(p) = &self.log else {
            return Ok((Stdio::null(), Stdio::null()));
        };
        let w =
            crate::boundedlog::spawn(p, crate::boundedlog::LIMIT).map_err(|source| Error::Io {
                what: format!("create {}", p.display()),
                source,
            })?;
        let w2 = w.try_clone().map_err(|source| Error::Io {
            what: "dup log".into(),
            source,
        })?;
        Ok((Stdio::from(w), Stdio::from(w2)))
    }
}

/// What QEMU's child side does before exec, opened in the parent: the
/// netns to join, the cgroups to enter, the mount namespace and the jail.
struct ChildSetup {
    netns: Option<File>,
    cgroups: Vec<File>,
    mounts: Option<crate::mountns::Plan>,
    jail: Option<crate::Jail>,
}

impl ChildSetup {
    fn open(spec: &VmSpec) -> Result<Self, Error> {
        let io = |what: String| move |source| Error::Io { what, source };
        let netns = match &spec.netns {
            Some(p) => {
                Some(File::open(p).map_err(io(format!("open network namespace {}", p.display())))?)
            }
            None => None,
        };
        let mounts = match &spec.jail {
            Some(j) => Some(
                crate::mountns::Plan::new(&j.private_dir).map_err(io(format!(
                    "prepare the VMM's mount namespace ({})",
                    j.private_dir.display()
                )))?,
            ),
            None => None,
        };
        let cgroups = spec
            .cgroup_procs
            .iter()
            .map(|p| {
                let open = std::fs::OpenOptions::new().write(true).open(p);
                open.map_err(io(format!("open {}", p.display())))
            })
            .collect::<Result<Vec<File>, Error>>()?;
        let jail = spec.jail.clone();
        Ok(Self {
            netns,
            cgroups,
            mounts,
            jail,
        })
    }

    /// Makes `cmd`'s child, in this order: move into the sandbox's cgroups
    /// (before QEMU allocates guest RAM), join the container's netns or
    /// make an empty one (needs root), enter a mount namespace of its own
    /// (see `mountns`), drop to the jail's credentials (which clears every
    /// capability), then arm the death signal (a credential change clears
    /// it), check the parent is still the one that forked it, and forbid
    /// regaining privileges. Returns the files that must stay open until
    /// the child is spawned.
    fn arm(self, cmd: &mut Command) -> Vec<File> {
        let netns_fd = self.netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let cgroup_fds: Vec<libc::c_int> = self
            .cgroups
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        let (mounts, jail) = (self.mounts, self.jail);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: write, setns, unshare, setgroups, setgid, setuid, prctl and getppid
        // are async-signal-safe and touch only the child; `groups` and
        // `cgroup_fds` are Vecs allocated before the fork and only read here.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let check = |rc: libc::c_int| {
                    if rc != 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                for fd in &cgroup_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                match netns_fd {
                    Some(fd) => check(libc::setns(fd, libc::CLONE_NEWNET))?,
                    // No NIC to serve: an empty netns of its own, not the
                    // host's (a VMM escape would find no socket to reach).
                    None => check(libc::unshare(libc::CLONE_NEWNET))?,
                }
                if let Some(m) = &mounts {
                    m.enter()?;
                }
                if let Some(j) = &jail {
                    check(libc::setgroups(j.groups.len(), j.groups.as_ptr()))?;
                    check(libc::setresgid(j.gid, j.gid, j.gid))?;
                    check(libc::setresuid(j.uid, j.uid, j.uid))?;
                }
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the shim died while starting the VM"));
                }
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                // QEMU gets its stdio and nothing else of ours.
                crate::cloexec_from_3()
            });
        }
        self.netns.into_iter().chain(self.cgroups).collect()
    }
}

/// The host TSC rate in kHz, measured once per process (20 ms).
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::time::{Duration, Instant};
            // SAFETY: rdtsc has no preconditions on x86_64.
            let (t0, c0) = (Instant::now(), unsafe { core::arch::x86_64::_rdtsc() });
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: as above.
            let c1 = unsafe { core::arch::x86_64::_rdtsc() };
            let ns = t0.elapsed().as_nanos() as u64;
            (ns > 0 && c1 > c0).then(|| (c1 - c0).saturating_mul(1_000_000) / ns)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

struct QemuVm {
    child: Option<Child>,
}

impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            // Someone else reaped it (a subreaper in the embedding process):
            // fall back to whether the pid still names a live process.
            Err(_) => {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
                match stat {
                    Ok(s)
                        if !s
                            .rsplit_once(')')
                            .is_some_and(|x| x.1.trim_start().starts_with('Z')) =>
                    {
                        None
                    }
                    _ => Some("exited (status collected elsewhere)".into()),
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedFs;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            id: "t1".into(),
            kernel: "/a/vmlinuz".into(),
            initrd: "/a/initrd".into(),
            extra_kernel_params: "foo=bar".into(),
            vcpus: 2,
            memory_mib: 256,
            accel,
            agent_socket: "/run/scute/t1/agent.sock".into(),
            console_socket: "/run/scute/t1/vmm/console.sock".into(),
            shared_fs: vec![
                SharedFs {
                    socket: "/run/scute/t1/fs.sock".into(),
                    tag: "scute".into(),
                },
                SharedFs {
                    socket: "/run/scute/t1/fs-rootfs.sock".into(),
                    tag: "scute-rootfs".into(),
                },
            ],
            debug: false,
            monitor_socket: None,
            netns: None,
            jail: None,
            cgroup_procs: Vec::new(),
            tcg_tb_size_mib: Some(64),
            free_page_reporting: true,
            acpi: false,
            nics: vec![crate::Nic {
                tap: "scute-tap0".into(),
                mac: "02:42:0a:00:00:02".into(),
            }],
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn kvm_command_line_uses_kvm_and_host_cpu() {
        let a = command_line(&spec(Accel::Kvm), None);
        let m = after(&a, "-machine")[0];
        assert!(m.starts_with("microvm,"), "{m}");
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert!(m.ends_with(",acpi=off"), "{m}");
        let mut s = spec(Accel::Kvm);
        s.acpi = true;
        assert!(after(&command_line(&s, None), "-machine")[0].ends_with(",acpi=on"));
        assert_eq!(after(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn tcg_command_line_uses_tcg_and_max_cpu() {
        let mut s = spec(Accel::Tcg);
        let a = command_line(&s, Some(2_000_000));
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=64"]);
        assert_eq!(after(&a, "-cpu"), ["max,-erms,-fsrm,-pku"]);
        s.tcg_tb_size_mib = None;
        assert_eq!(after(&command_line(&s, None), "-accel"), ["tcg"]);
    }

    #[test]
    fn memory_is_shared_memfd_of_configured_size() {
        let a = command_line(&spec(Accel::Tcg), Some(2_000_000));
        assert_eq!(after(&a, "-m"), ["256M"]);
        assert!(after(&a, "-object").contains(&"memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(after(&a, "-machine")[0].contains("memory-backend=mem"));
        assert_eq!(after(&a, "-smp"), ["2"]);
    }

    #[test]
    fn devices_agent_port_and_virtiofs() {
        let a = command_line(&spec(Accel::Tcg), Some(2_000_000));
        let devs = after(&a, "-device");
        assert!(devs.contains(&"virtserialport,chardev=agent,name=scute.agent"));
        assert!(devs.contains(&"vhost-user-fs-device,chardev=fs0,tag=scute"));
        assert!(devs.contains(&"vhost-user-fs-device,chardev=fs1,tag=scute-rootfs"));
        assert!(devs.contains(&"virtio-net-device,netdev=net0,mac=02:42:0a:00:00:02"));
        assert!(after(&a, "-netdev")
            .contains(&"tap,id=net0,ifname=scute-tap0,script=no,downscript=no,vhost=off"));
        let chardevs = after(&a, "-chardev");
        assert!(
            chardevs.contains(&"socket,id=agent,path=/run/scute/t1/agent.sock,server=on,wait=off")
        );
        assert!(a.contains(&"-nodefaults".to_string()));
        assert!(devs.contains(&"virtio-balloon-device,free-page-reporting=on"));
        let mut s = spec(Accel::Tcg);
        s.free_page_reporting = false;
        let a = command_line(&s, None);
        assert!(!after(&a, "-device").iter().any(|d| d.contains("balloon")));
    }

    #[test]
    fn tcg_gets_the_host_tsc_rate_kvm_does_not() {
        let a = command_line(&spec(Accel::Tcg), Some(2_000_000));
        assert!(after(&a, "-append")[0].contains("tsc_early_khz=2000000"));
        let a = command_line(&spec(Accel::Kvm), Some(2_000_000));
        assert!(!after(&a, "-append")[0].contains("tsc_early_khz"));
    }

    #[test]
    fn tcg_cpu_has_no_fast_string_ops_kvm_is_the_host() {
        let a = command_line(&spec(Accel::Tcg), None);
        assert_eq!(after(&a, "-cpu")[0], "max,-erms,-fsrm,-pku");
        let a = command_line(&spec(Accel::Kvm), None);
        assert_eq!(after(&a, "-cpu")[0], "host");
    }

    #[test]
    fn tcg_only_kernel_params_stay_off_under_kvm() {
        let a = command_line(&spec(Accel::Tcg), None);
        assert!(after(&a, "-append")[0].contains(" lapic_timer_hz=1000000000"));
        assert!(after(&a, "-append")[0].contains(" noreplace-smp"));
        assert!(after(&a, "-append")[0].contains(" free_init_poison=off"));
        assert!(after(&a, "-append")[0].contains(" virtio_net.napi_tx=0"));
        let a = command_line(&spec(Accel::Kvm), None);
        assert!(!after(&a, "-append")[0].contains("lapic_timer_hz"));
        assert!(!after(&a, "-append")[0].contains("noreplace-smp"));
        assert!(!after(&a, "-append")[0].contains("free_init_poison"));
        assert!(!after(&a, "-append")[0].contains("napi_tx"));
    }

    #[test]
    fn settings_shown_are_the_ones_passed() {
        for accel in [Accel::Tcg, Accel::Kvm] {
            let s = spec(accel);
            let a = command_line(&s, None);
            let shown = accel_settings(accel, s.tcg_tb_size_mib, s.vcpus);
            for flag in ["-accel", "-cpu", "-smp"] {
                let want = format!("{flag} {}", after(&a, flag)[0]);
                assert!(shown.contains(&want), "{shown:?} lacks {want:?}");
            }
            for k in TCG_KERNEL_PARAMS {
                assert_eq!(shown.contains(k), accel == Accel::Tcg, "{shown}");
                assert_eq!(after(&a, "-append")[0].contains(k), accel == Accel::Tcg);
            }
        }
    }

    #[test]
    fn host_tsc_rate_is_plausible() {
        if let Some(khz) = host_tsc_khz() {
            assert!((100_000..20_000_000).contains(&khz), "{khz}");
        }
    }

    #[test]
    fn monitor_only_when_asked() {
        let mut s = spec(Accel::Tcg);
        let a = command_line(&s, None);
        assert!(!a.contains(&"-monitor".to_string()), "{a:?}");
        s.monitor_socket = Some("/run/scute/t1/vmm/monitor.sock".into());
        let a = command_line(&s, None);
        assert_eq!(
            after(&a, "-monitor"),
            ["unix:/run/scute/t1/vmm/monitor.sock,server=on,wait=off"]
        );
    }

    #[test]
    fn kernel_params_quiet_unless_debug_and_extra_appended() {
        let mut s = spec(Accel::Tcg);
        let p = after(&command_line(&s, None), "-append")[0].to_string();
        assert!(p.contains("quiet") && p.ends_with("foo=bar"), "{p}");
        s.debug = true;
        let p = after(&command_line(&s, None), "-append")[0].to_string();
        assert!(p.contains("loglevel=7") && !p.contains("quiet"), "{p}");
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let q = Qemu {
            binary: "/nonexistent/qemu".into(),
            log: None,
        };
        let e = q.launch(&spec(Accel::Tcg)).err().unwrap();
        assert!(
            e.to_string().contains("apt-get install qemu-system-x86"),
            "{e}"
        );
    }
}
