//! The hypervisor boundary of scute: what a sandbox needs from a VMM, and
//! nothing more.
//!
//! A [`Hypervisor`] turns a [`VmSpec`] into a running [`Vm`]; the `Vm` owns the
//! VMM process and kills it when dropped, so a VM can't outlive the value that
//! started it. [`accel`] decides between KVM and TCG and says why.

pub mod accel;
pub mod boundedlog;
pub mod mountns;
pub mod qemu;
pub mod spawner;

use std::path::PathBuf;

pub use accel::{Accel, AccelChoice, AccelDecision, HostProbe, RealHost};

/// Marks every file descriptor from 3 up close-on-exec, so a process this
/// child execs gets only its stdio. For use between fork and exec (only
/// async-signal-safe calls): the shim inherits descriptors it didn't open
/// without `O_CLOEXEC` (containerd's listening socket for the shim API among
/// them), and a VMM or virtiofsd must not hold those.
pub fn cloexec_from_3() -> std::io::Result<()> {
    // SAFETY: close_range and fcntl take integers and touch only this
    // process's descriptor table.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return Ok(());
        }
        // Before Linux 5.11: one by one, up to the descriptor limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as i32
        } else {
            1024
        };
        for fd in 3..max {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Everything needed to start one sandbox VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sandbox id, for logs and the process title.
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to scute's own kernel parameters.
    pub extra_kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    /// Unix socket QEMU serves the agent's virtio-serial port on.
    pub agent_socket: PathBuf,
    /// Unix socket QEMU serves the guest's serial console on (kernel log,
    /// agent log); the caller reads it.
    pub console_socket: PathBuf,
    /// vhost-user-fs sockets of virtiofsd daemons, each exported to the
    /// guest under its `tag`.
    pub shared_fs: Vec<SharedFs>,
    /// Kernel log level: quiet boot unless debugging.
    pub debug: bool,
    /// QEMU's human monitor on this unix socket (`info jit`, `info
    /// profile`: TCG's own statistics). Only when debugging: the monitor
    /// controls the whole VM.
    pub monitor_socket: Option<PathBuf>,
    /// Network namespace the VMM runs in (its taps live there).
    pub netns: Option<PathBuf>,
    /// virtio-net NICs, each on an existing tap in `netns` (owned by the
    /// jail's uid when there is a jail).
    pub nics: Vec<Nic>,
    /// Credentials the VMM runs with; `None` runs it as the caller (root).
    pub jail: Option<Jail>,
    /// `cgroup.procs` files the VMM moves itself into before it execs (the
    /// sandbox's host cgroup, one per hierarchy).
    pub cgroup_procs: Vec<PathBuf>,
    /// TCG's translation cache in MiB (`-accel tcg,tb-size=`); `None`
    /// leaves QEMU's default. Ignored under KVM.
    pub tcg_tb_size_mib: Option<u32>,
    /// A virtio-balloon with free page reporting: memory the guest frees
    /// goes back to the host.
    pub free_page_reporting: bool,
    /// ACPI tables for the guest. Without them the guest finds its
    /// interrupt controllers in microvm's MP table and its virtio-mmio
    /// devices in the `virtio_mmio.device=` parameters QEMU appends, and
    /// needs no ACPI code (scute's minimal kernel has none).
    pub acpi: bool,
}

/// An unprivileged identity for the VMM: it starts as `uid`/`gid` with only
/// `groups`, so with no capabilities, and cannot regain privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The VMM's own directory: the only place it may write. In its mount
    /// namespace everything else is read-only, and `/run` plus the other
    /// containers' and users' trees are empty.
    pub private_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

#[derive(Debug, Clone)]
pub struct SharedFs {
    pub socket: PathBuf,
    pub tag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VMM binary isn't there.
    #[error("{path} not found: install it (Debian: apt-get install qemu-system-x86) or set qemu_path in the scute config")]
    VmmMissing { path: PathBuf },
    #[error("failed to start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KVM was requested but is not usable here: {0}")]
    KvmUnavailable(#[from] accel::KvmUnusable),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Starts VMs.
pub trait Hypervisor: Send + Sync {
    fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, Error>;
}

/// A running VM. Dropping it kills the VMM and reaps it.
pub trait Vm: Send {
    /// Host pid of the VMM process.
    fn pid(&self) -> u32;
    /// `Some(exit description)` once the VMM has exited.
    fn exited(&mut self) -> Option<String>;
    /// Stops the VM now (the guest keeps no state worth a clean shutdown).
    fn kill(&mut self);
}
