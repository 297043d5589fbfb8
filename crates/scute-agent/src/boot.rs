//! Guest boot: modules, root switch, pseudo filesystems, shared directory.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

/// List of module files (absolute paths in the initramfs), in load order.
const MODULE_LIST: &str = "/lib/modules/scute-modules.txt";
/// Where the host's virtio-fs share is mounted in the guest.
pub const SHARED_DIR: &str = "/run/scute/shared";
/// virtio-fs tag the host exports the share under.
pub const SHARED_TAG: &str = "scute";
/// The containers' root filesystems, on a share of their own the guest caches.
pub const ROOTFS_TAG: &str = "scute-rootfs";
pub const ROOTFS_DIR: &str = "/run/scute/rootfs";

/// Loads modules and switches from the initramfs to a tmpfs root (which,
/// unlike the initramfs, containers can `pivot_root` away from). The agent
/// goes on in the new root without exec'ing itself again: its binary there
/// is the same file, bound, and under TCG a second exec and dynamic link
/// cost ~40 ms of every boot.
pub fn stage1() -> Result<()> {
    load_modules()?;
    fs::create_dir_all("/newroot")?;
    mount(
        Some("tmpfs"),
        "/newroot",
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mount tmpfs root")?;
    // Bound, not copied: copying ~12 MiB is slow under emulation, and the
    // initramfs's pages stay in guest RAM either way. Read-only: nothing
    // in the guest may change the agent.
    for entry in ["init", "bin", "lib", "lib64", "usr", "etc"] {
        let src = Path::new("/").join(entry);
        let dst = Path::new("/newroot").join(entry);
        let Ok(meta) = src.symlink_metadata() else {
            continue;
        };
        if meta.file_type().is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
            continue;
        }
        if meta.is_dir() {
            fs::create_dir_all(&dst)?;
        } else {
            fs::File::create(&dst)?;
        }
        bind_read_only(&src, &dst)
            .with_context(|| format!("bind {} into the new root", src.display()))?;
    }
    std::env::set_current_dir("/newroot")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("move root")?;
    nix::unistd::chroot(".").context("chroot to the new root")?;
    std::env::set_current_dir("/")?;
    Ok(())
}

fn bind_read_only(src: &Path, dst: &Path) -> nix::Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(src), dst, None::<&str>, flags, None::<&str>)?;
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
}

fn load_modules() -> Result<()> {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(MODULE_LIST),
    };
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = fs::File::open(path).with_context(|| format!("open module {path}"))?;
        let params = CString::new("")?;
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("load module {path}")),
        }
    }
    Ok(())
}

/// Mounts the cgroup v2 hierarchy with `favordynmods` where the kernel has
/// it (6.0 and later), plainly where it doesn't.
///
/// Every container create moves a process into a new cgroup and writes
/// `cgroup.subtree_control`; both take the cgroup threadgroup lock for
/// writing, which by default waits for an RCU grace period. Under TCG that
/// wait was ~20 ms of each create. `favordynmods` keeps the lock in its slow
/// reader mode instead, so a writer never waits for a grace period; forks and
/// exits pay a little more, which nothing here can measure.
fn mount_cgroup2() -> Result<()> {
    let target = "/sys/fs/cgroup";
    fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
    let flags = nosuid_nodev_noexec();
    mount(
        Some("cgroup2"),
        target,
        Some("cgroup2"),
        flags,
        Some("favordynmods"),
    )
    .or_else(|_| mount(Some("cgroup2"), target, Some("cgroup2"), flags, Some("")))
    .with_context(|| format!("mount cgroup2 on {target}"))
}

/// Mounts what a Linux userland and libcontainer expect, and the share.
pub fn stage2() -> Result<()> {
    let mounts: &[(&str, &str, &str, MsFlags, &str)] = &[
        ("proc", "/proc", "proc", nosuid_nodev_noexec(), ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec(), ""),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            "mode=0755",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            nosuid_nodev_noexec(),
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=0755",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=1777",
        ),
    ];
    for (src, target, fstype, flags, data) in mounts {
        fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
        mount(Some(*src), *target, Some(*fstype), *flags, Some(*data))
            .with_context(|| format!("mount {fstype} on {target}"))?;
    }
    mount_cgroup2()?;
    let _ = symlink("pts/ptmx", "/dev/ptmx.scute")
        .and_then(|_| fs::rename("/dev/ptmx.scute", "/dev/ptmx"));
    let _ = symlink("/proc/self/fd", "/dev/fd");
    // Controllers for the containers' cgroups.
    if let Ok(ctrls) = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        let enable: String = ctrls.split_whitespace().map(|c| format!("+{c} ")).collect();
        let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.trim());
    }
    fs::create_dir_all(SHARED_DIR)?;
    mount(
        Some(SHARED_TAG),
        SHARED_DIR,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .context("mount the virtio-fs share (is virtiofsd running on the host?)")?;
    fs::create_dir_all(ROOTFS_DIR)?;
    mount(
        Some(ROOTFS_TAG),
        ROOTFS_DIR,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .context("mount the root filesystems' virtio-fs share")?;
    let _ = nix::unistd::sethostname("scute");
    // The kernel log is this VM's own boot: let the sandbox's containers read
    // it, as under Kata (the host's log stays out of reach), with kernel
    // pointers hidden from it.
    let _ = fs::write("/proc/sys/kernel/kptr_restrict", "1");
    let _ = fs::write("/proc/sys/kernel/dmesg_restrict", "0");
    Ok(())
}

/// Milliseconds since the guest kernel started (CLOCK_BOOTTIME; unlike
/// /proc/uptime, neither rounded to 10 ms nor in need of /proc).
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

fn nosuid_nodev_noexec() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Powers the VM off. PID 1 must never exit (the kernel would panic).
pub fn halt() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::park();
    }
}
