//! OCI bundles from the host's static busybox (Debian's `busybox-static`):
//! no registry needed. What the pool's warm-up container runs, and the base
//! of the lab's image and the tests' bundles (`scute-testkit`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub const BUSYBOX: &str = "/bin/busybox";

/// Writes `<dir>/rootfs` (busybox and links to it named `applets`) and
/// `<dir>/config.json` running `args` with `runc spec`'s defaults.
pub fn bundle(dir: &Path, args: &[&str], applets: &[&str]) -> io::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "data"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    let bb = rootfs.join("bin/busybox");
    if !bb.exists() {
        fs::copy(BUSYBOX, &bb)?;
    }
    for a in applets {
        let link = rootfs.join("bin").join(a);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    write_spec(dir, &default_spec(args))?;
    Ok(dir.to_path_buf())
}

pub fn write_spec(dir: &Path, spec: &Value) -> io::Result<()> {
    fs::write(dir.join("config.json"), serde_json::to_vec_pretty(spec)?)
}

/// `runc spec`'s default, with `args` as the process.
pub fn default_spec(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}
