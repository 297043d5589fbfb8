//! Isolation probes. Each probe is a piece of busybox shell run inside a
//! container (one container for the ordinary probes, one `--privileged` for
//! the classic escapes); it prints `key=value` lines and raw evidence. The
//! verdict is decided here, on the host, by comparing with the host's own
//! facts — above all the kernel's `boot_id`, which tells whose kernel the
//! container talks to.
//!
//! Nothing here harms the host: under a runtime that shares the host kernel
//! the escapes stop at showing that the door is open (writable, mountable,
//! openable); they write only when the kernel is not the host's, and the host
//! then checks that its own state did not change.

use std::collections::BTreeMap;

use crate::results::{Probe, Verdict};
use Verdict::{Exposed, Isolated, NotApplicable};

/// Facts about the host the verdicts compare against.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub boot_id: String,
    pub kernel: String,
    pub proc_entries: usize,
    pub sys_module_count: usize,
    /// MAC addresses of the host's interfaces (not 00:00:…).
    pub macs: Vec<String>,
    /// Block device holding `/`, e.g. "vda" (None: not a block device).
    pub root_dev: Option<String>,
    /// Whether root on the host itself may open `root_dev` (some sandboxed
    /// hosts deny it to everyone).
    pub root_dev_openable: bool,
    /// md5 of the first 4 KiB of `root_dev`, read by the host.
    pub root_dev_head_md5: Option<String>,
    pub core_pattern: String,
    /// What the core_pattern probe writes into a guest kernel.
    pub marker: String,
}

impl HostFacts {
    /// Environment for the probe containers (`ctr run --env`).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("HOST_BOOT_ID".into(), self.boot_id.clone()),
            (
                "HOST_ROOT_DEV".into(),
                self.root_dev.clone().unwrap_or_default(),
            ),
            ("LAB_MARKER".into(), self.marker.clone()),
        ]
    }
}

/// Whether a probe needs `--privileged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    Default,
    Privileged,
    /// Run on the host, as root, while an ordinary container runs: what a
    /// host user can reach of it.
    Host,
    /// `--privileged`, without volumes (a second mount of the VM's share
    /// tag in the guest would land on a volume's submount): what the guest
    /// can make the host do through its file share.
    Share,
}

/// Where the privileged probe container gets the lab's two scratch volumes
/// (host directories only root can reach, removed after the run).
pub const RO_VOLUME: &str = "/lab-ro";
pub const RW_VOLUME: &str = "/lab-rw";
/// The file in the read-only volume, and what the host wrote into it.
pub const RO_FILE: &str = "target";
pub const RO_ORIGINAL: &str = "lab-original";
/// What the container of the host-side probe writes into its rootfs.
pub const SECRET_FILE: &str = "lab-secret";
/// The file in the host's canary directory, and its content.
pub const CANARY_FILE: &str = "precious";
pub const CANARY_CONTENT: &str = "lab-canary";

pub struct Def {
    pub id: &'static str,
    pub title: &'static str,
    pub set: Set,
    /// Busybox shell printing `key=value` lines (run on the host for
    /// [`Set::Host`]).
    script: &'static str,
    /// Decides the verdict from what the script printed and the host's facts.
    judge: fn(&Seen) -> (Verdict, String),
}

/// Sets `bid` and `own` (1 only when both boot ids are known and differ:
/// anything that writes is gated on it, so an unknown id never writes).
const ID: &str = r#"bid=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null); echo "boot_id=$bid"; own=0; if [ -n "$bid" ] && [ -n "$HOST_BOOT_ID" ] && [ "$bid" != "$HOST_BOOT_ID" ]; then own=1; fi"#;

pub const PROBES: &[Def] = &[
    Def {
        id: "kernel",
        title: "Kernel the container runs on",
        set: Set::Default,
        script: r#"echo "uname_r=$(uname -r)"; echo "proc_version=$(cat /proc/version)"; echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')""#,
        judge: judge_kernel,
    },
    Def {
        id: "dmesg",
        title: "Kernel log (dmesg) readable, and whose",
        set: Set::Default,
        script: DMESG,
        judge: judge_dmesg,
    },
    Def {
        id: "proc",
        title: "/proc entries",
        set: Set::Default,
        script: r#"echo "entries=$(ls /proc | wc -l)"; echo "pids=$(ls /proc | grep -c '^[0-9][0-9]*$')"; echo "meminfo=$(head -n1 /proc/meminfo)""#,
        judge: judge_proc,
    },
    Def {
        id: "processes",
        title: "Host processes visible",
        set: Set::Default,
        script: r#"ps -o pid,user,comm 2>&1 | head -n 30; echo "host_daemons=$(ps -o comm | grep -cE '^(containerd|containerd-shim.*|systemd|sshd|dockerd|kubelet|qemu-system-x86)$')""#,
        judge: judge_processes,
    },
    Def {
        id: "network",
        title: "Network interfaces",
        set: Set::Default,
        script: r#"ip -o link 2>&1; ip -o -4 addr 2>&1; for i in /sys/class/net/*; do d=$(readlink $i/device/driver 2>/dev/null); echo "iface=${i##*/} $(cat $i/address) ${d##*/}"; done"#,
        judge: judge_network,
    },
    Def {
        id: "modules",
        title: "Kernel modules (/sys/module) and loading them",
        set: Set::Default,
        script: MODULES,
        judge: judge_modules,
    },
    Def {
        id: "mounts",
        title: "Mounts",
        set: Set::Default,
        script: r#"echo "count=$(wc -l < /proc/self/mounts)"; cat /proc/self/mounts"#,
        judge: judge_mounts,
    },
    Def {
        id: "devices",
        title: "Device nodes (/dev/kvm, host disks)",
        set: Set::Default,
        script: DEVICES,
        judge: judge_devices,
    },
    Def {
        id: "capabilities",
        title: "Capabilities and seccomp",
        set: Set::Default,
        script: CAPABILITIES,
        judge: judge_capabilities,
    },
    Def {
        id: "privileged-dmesg",
        title: "Kernel log, --privileged",
        set: Set::Privileged,
        script: DMESG,
        judge: judge_dmesg,
    },
    Def {
        id: "privileged-capabilities",
        title: "Capabilities and seccomp, --privileged",
        set: Set::Privileged,
        script: CAPABILITIES,
        judge: judge_capabilities,
    },
    Def {
        id: "privileged-devices",
        title: "Device nodes, --privileged",
        set: Set::Privileged,
        script: DEVICES,
        judge: judge_devices,
    },
    Def {
        id: "escape-core-pattern",
        title: "Escape: write the kernel's core_pattern",
        set: Set::Privileged,
        script: r#"echo "core_pattern=$(cat /proc/sys/kernel/core_pattern 2>&1)"; if [ -w /proc/sys/kernel/core_pattern ]; then echo "writable=yes"; if [ $own = 1 ]; then if echo "|/bin/false $LAB_MARKER" 2>/tmp/e > /proc/sys/kernel/core_pattern; then echo "written=$(cat /proc/sys/kernel/core_pattern)"; else echo "write=failed $(cat /tmp/e)"; fi; fi; else echo "writable=no"; fi"#,
        judge: judge_escape_core_pattern,
    },
    Def {
        id: "escape-host-disk",
        title: "Escape: mount the host's disk",
        set: Set::Privileged,
        script: r#"d=$HOST_ROOT_DEV; echo "dev=$d"; if [ -z "$d" ]; then echo "node=unknown"; elif [ ! -e /dev/$d ]; then echo "node=absent"; elif ! (exec 3</dev/$d) 2>/tmp/e; then echo "node=present"; echo "open=fails $(cat /tmp/e)"; else echo "node=present"; echo "open=ok"; echo "head_md5=$(head -c 4096 /dev/$d | md5sum | cut -d' ' -f1)"; fi"#,
        judge: judge_escape_host_disk,
    },
    Def {
        id: "escape-release-agent",
        title: "Escape: cgroup v1 release_agent",
        set: Set::Privileged,
        // An existing v1 hierarchy is mounted again (nothing new is created
        // in the kernel); a new named one only in a guest kernel; with
        // neither, whether mount(2) is allowed at all.
        script: r#"mkdir -p /tmp/cg; ctrl=$(awk '$2>0 && $4==1 {print $1; exit}' /proc/cgroups 2>/dev/null); o=""; if [ -n "$ctrl" ]; then o=$ctrl; elif [ $own = 1 ]; then o=none,name=scutelab; fi; if [ -z "$o" ]; then echo "hierarchy=none"; if mount -t tmpfs none /tmp/cg 2>/tmp/e; then echo "mount_allowed=yes"; umount /tmp/cg; else echo "mount_allowed=no $(cat /tmp/e)"; fi; elif mount -t cgroup -o $o cgroup /tmp/cg 2>/tmp/e; then echo "hierarchy=$o"; echo "mounted=yes"; if [ -w /tmp/cg/release_agent ]; then echo "writable=yes"; else echo "writable=no"; fi; umount /tmp/cg; else echo "hierarchy=$o"; echo "mounted=no $(cat /tmp/e)"; fi"#,
        judge: judge_escape_release_agent,
    },
    Def {
        id: "escape-ro-volume",
        title: "Escape: write through a read-only volume after remounting it",
        set: Set::Privileged,
        // remount,bind changes the mount's flags only, never a superblock's:
        // under a shared kernel it can't touch the host's filesystem options.
        script: r#"if [ ! -d /lab-ro ]; then echo "volume=absent"; else echo "volume=present"; if mount -o remount,bind,rw /lab-ro 2>/tmp/e; then echo "remount=ok"; else echo "remount=failed $(cat /tmp/e)"; fi; if echo lab-written 2>/tmp/e > /lab-ro/target; then echo "write=ok"; else echo "write=failed $(cat /tmp/e)"; fi; fi"#,
        judge: judge_escape_ro_volume,
    },
    Def {
        id: "escape-volume-nodes",
        title: "Escape: a device node and a setuid-root file on a volume, seen from the host",
        set: Set::Privileged,
        // Into the lab's scratch dir, which only root can reach and which the
        // lab removes: a node or a setuid file that lands there is shown, not
        // usable.
        script: r#"if [ ! -d /lab-rw ]; then echo "volume=absent"; else echo "volume=present"; if mknod /lab-rw/blk b 8 0 2>/tmp/e; then echo "mknod=ok"; else echo "mknod=failed $(cat /tmp/e)"; fi; if cp /bin/sh /lab-rw/suid 2>/tmp/e && chmod 4755 /lab-rw/suid 2>/tmp/e; then echo "setuid=ok"; else echo "setuid=failed $(cat /tmp/e)"; fi; fi"#,
        judge: judge_escape_volume_nodes,
    },
    Def {
        id: "host-read-rootfs",
        title: "An unprivileged host user reads a running container's rootfs",
        set: Set::Host,
        // Every host path of the container's rootfs: mount points naming one
        // of $CID's words (its id: containerd's bundle, a runtime's own
        // share; Docker's and Podman's overlay), and their overlay upper
        // dirs; each tried as nobody.
        script: r#"n=0; for m in $(awk -v ids="$CID" 'BEGIN { k = split(ids, id, " ") } { for (j = 1; j <= k; j++) if (index($5, id[j])) { print $5; for (i = 6; i <= NF; i++) if (split($i, o, "upperdir=") == 2) { split(o[2], u, ","); print u[1] }; break } }' /proc/self/mountinfo | sort -u); do [ -f "$m/lab-secret" ] || continue; n=$((n+1)); if setpriv --reuid=65534 --regid=65534 --clear-groups cat "$m/lab-secret" >/dev/null 2>/tmp/e; then echo "readable=$m"; else echo "denied=$m $(cat /tmp/e)"; fi; done; echo "located=$n""#,
        judge: judge_host_read_rootfs,
    },
    Def {
        id: "escape-share-symlink",
        title:
            "Escape: make the host unmount and delete a host directory through the VM's file share",
        set: Set::Share,
        // The symlink is named after the container's own id, pointing at a
        // host canary dir (a file and a mount in it): the name the host
        // removes when the container goes (Kata's CVE-2020-2024/2026).
        script: r#"mkdir -p /tmp/s; if ! mount -t virtiofs scute /tmp/s 2>/tmp/e; then echo "share=none $(cat /tmp/e)"; else echo "share=mounted"; if ln -s "$LAB_CANARY" "/tmp/s/$LAB_CID" 2>/tmp/e; then echo "planted=yes"; else echo "planted=no $(cat /tmp/e)"; fi; fi"#,
        judge: judge_escape_share_symlink,
    },
    Def {
        id: "escape-share-fill",
        title: "Escape: store 1 GiB on the host's /run through the VM's file share",
        set: Set::Share,
        script: r#"if ! grep -q ' /tmp/s virtiofs' /proc/mounts; then echo "share=none"; else echo "share=mounted"; if dd if=/dev/zero of=/tmp/s/lab-fill bs=1M count=1024 2>/tmp/e; then echo "fill=ok $(wc -c < /tmp/s/lab-fill) bytes"; else echo "fill=failed $(tail -n1 /tmp/e)"; fi; rm -f /tmp/s/lab-fill; fi"#,
        judge: judge_escape_share_fill,
    },
    Def {
        id: "escape-module-load",
        title: "Escape: load a kernel module",
        set: Set::Privileged,
        script: MODULES,
        judge: judge_modules,
    },
];

const DMESG: &str = r#"out=$(dmesg 2>&1); echo "rc=$?"; echo "lines=$(echo "$out" | wc -l)"; echo "$out" | head -n 12"#;

const CAPABILITIES: &str = r#"grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"#;

const MODULES: &str = r#"echo "count=$(ls /sys/module 2>/dev/null | wc -l)"; echo "cap_eff=$(grep CapEff /proc/self/status | cut -f2)"; echo "modules_disabled=$(cat /proc/sys/kernel/modules_disabled 2>&1)"; if [ -e /proc/modules ]; then echo "loadable=yes"; else echo "loadable=no"; fi"#;

const DEVICES: &str = r#"echo "nodes=$(ls /dev | wc -l)"; ls /dev | tr '\n' ' '; echo; for d in kvm $HOST_ROOT_DEV sda nvme0n1 xvda; do [ -e /dev/$d ] || continue; if (exec 3</dev/$d) 2>/tmp/e; then echo "opens=$d"; else echo "fails=$d $(cat /tmp/e)"; fi; done"#;

/// The shell script for one container: every probe of `set`, each behind a
/// `=== probe ID` line, after the kernel identity.
pub fn script(set: Set) -> String {
    let mut s = format!("echo '=== probe _id'; {ID}\n");
    for p in PROBES.iter().filter(|p| p.set == set) {
        s.push_str(&format!(
            "echo '=== probe {}'; {{ {}; }} 2>&1\n",
            p.id, p.script
        ));
    }
    s
}

/// Splits a probe container's output into sections by id.
pub fn sections(output: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for line in output.lines() {
        if let Some(id) = line.strip_prefix("=== probe ") {
            if let Some((k, v)) = cur.take() {
                map.insert(k, v);
            }
            cur = Some((id.trim().to_owned(), String::new()));
        } else if let Some((_, v)) = cur.as_mut() {
            v.push_str(line);
            v.push('\n');
        }
    }
    if let Some((k, v)) = cur {
        map.insert(k, v);
    }
    map
}

/// First `key=value` line's value.
pub fn kv<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

fn has_cap(cap_eff: Option<&str>, bit: u32) -> bool {
    cap_eff
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|v| v & (1 << bit) != 0)
}

const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_ADMIN: u32 = 21;

/// What the verdicts of one container's probes are judged against.
pub struct Context<'a> {
    pub host: &'a HostFacts,
    /// The host's core_pattern read again after the privileged probes.
    pub host_core_pattern_after: Option<String>,
    /// What the host found in the scratch volumes after the privileged
    /// container ran (None: they were not mounted).
    pub volumes: Option<VolumesAfter>,
    /// The share probes' canary dir as the host found it after the
    /// container was removed (None: there was none).
    pub canary: Option<CanaryAfter>,
}

/// The host's canary directory after the share probes' container is gone:
/// `None` when the dir, its file and its mount are all as they were, else
/// what changed.
#[derive(Debug, Clone, Default)]
pub struct CanaryAfter {
    pub changed: Option<String>,
}

impl CanaryAfter {
    /// Checks `dir` (holding [`CANARY_FILE`]) and its mount at `mnt`.
    pub fn observe(dir: &std::path::Path, mnt: &std::path::Path) -> Self {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*mnt.to_string_lossy()));
        let changed = if !dir.is_dir() {
            Some(format!("{} is gone", dir.display()))
        } else if std::fs::read_to_string(dir.join(CANARY_FILE))
            .ok()
            .as_deref()
            != Some(CANARY_CONTENT)
        {
            Some(format!(
                "{} is gone or changed",
                dir.join(CANARY_FILE).display()
            ))
        } else if !mounted {
            Some(format!("the mount at {} was unmounted", mnt.display()))
        } else {
            None
        };
        Self { changed }
    }
}

/// The scratch volumes as the host sees them after the privileged probes.
#[derive(Debug, Clone, Default)]
pub struct VolumesAfter {
    /// The read-only volume's file ([`RO_ORIGINAL`] unless written).
    pub ro_file: String,
    /// A device node on the writable volume, described ("block 8:0").
    pub device_node: Option<String>,
    /// A file with a setuid/setgid bit on the writable volume ("4755 root").
    pub setid_file: Option<String>,
}

impl VolumesAfter {
    /// Reads what the probes left in `rw` and `ro` (host paths).
    pub fn observe(ro: &std::path::Path, rw: &std::path::Path) -> Self {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let node = std::fs::read_dir(rw)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| {
                let m = e.metadata().ok()?;
                let t = m.file_type();
                let kind = if t.is_block_device() {
                    "block"
                } else if t.is_char_device() {
                    "char"
                } else {
                    return None;
                };
                let dev = m.rdev();
                Some(format!(
                    "{} {kind} {}:{} uid {}",
                    e.file_name().to_string_lossy(),
                    libc::major(dev),
                    libc::minor(dev),
                    m.uid()
                ))
            });
        let setid = std::fs::read_dir(rw)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| {
                let m = e.metadata().ok()?;
                (m.is_file() && m.mode() & 0o6000 != 0).then(|| {
                    format!(
                        "{} mode {:o} uid {}",
                        e.file_name().to_string_lossy(),
                        m.mode() & 0o7777,
                        m.uid()
                    )
                })
            });
        Self {
            ro_file: std::fs::read_to_string(ro.join(RO_FILE)).unwrap_or_default(),
            device_node: node,
            setid_file: setid,
        }
    }
}

fn first_lines(s: &str, n: usize) -> String {
    s.lines().take(n).collect::<Vec<_>>().join(" / ")
}

/// The verdict and its reason for probe `id` given its section `text` and
/// the container's boot id.
/// What a judge sees: one probe's section of the output, the container's
/// boot id, and the host's facts.
pub struct Seen<'a> {
    pub text: &'a str,
    pub boot_id: &'a str,
    /// The container's kernel is known and is not the host's.
    pub own_kernel: bool,
    pub cx: &'a Context<'a>,
}

impl Seen<'_> {
    fn whose(&self) -> &'static str {
        if self.own_kernel {
            "its own kernel"
        } else {
            "the host's kernel"
        }
    }
}

/// The verdict and its reason for probe `id` given its section `text` and
/// the container's boot id.
pub fn judge(id: &str, text: &str, boot_id: &str, cx: &Context) -> (Verdict, String) {
    let Some(def) = PROBES.iter().find(|p| p.id == id) else {
        return (Verdict::NotApplicable, format!("unknown probe {id}"));
    };
    let seen = Seen {
        text,
        boot_id,
        own_kernel: !boot_id.is_empty() && boot_id != cx.host.boot_id,
        cx,
    };
    (def.judge)(&seen)
}

/// `kernel`.
fn judge_kernel(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let boot_id = s.boot_id;
    let own_kernel = s.own_kernel;
    let host = s.cx.host;
    let k = kv(text, "uname_r").unwrap_or("?");
    if boot_id.is_empty() {
        (
            NotApplicable,
            "boot_id unreadable: cannot tell whose kernel this is".into(),
        )
    } else if own_kernel {
        (
            Isolated,
            format!(
                "runs its own kernel {k} (boot_id {boot_id}); the host runs {} (boot_id {})",
                host.kernel, host.boot_id
            ),
        )
    } else {
        (Exposed, format!("shares the host's kernel {k} (same boot_id {boot_id}): a kernel exploit from this container is a host compromise"))
    }
}

/// `dmesg`, `privileged-dmesg`.
fn judge_dmesg(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let whose = s.whose();
    let rc = kv(text, "rc").unwrap_or("?");
    let lines = kv(text, "lines").unwrap_or("0");
    let why = text
        .lines()
        .find(|l| l.contains("dmesg"))
        .unwrap_or("")
        .trim();
    if rc != "0" && (why.contains("not permitted") || why.contains("denied")) {
        (
            Isolated,
            format!("the kernel log is denied ({why}); the log refused is {whose}'s"),
        )
    } else if rc != "0" {
        (
            NotApplicable,
            format!("dmesg failed for another reason (exit {rc}: {why})"),
        )
    } else if own_kernel {
        (
            Isolated,
            format!("reads {lines} lines of its own guest kernel's boot log, not the host's"),
        )
    } else {
        (Exposed, format!("reads the host kernel's log ({lines} lines): host boot messages, devices, other tenants' kernel messages"))
    }
}

/// `proc`.
fn judge_proc(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let host = s.cx.host;
    let n = kv(text, "entries").unwrap_or("?");
    let pids = kv(text, "pids").unwrap_or("?");
    if own_kernel {
        (
            Isolated,
            format!(
                "/proc of the guest kernel: {n} entries ({pids} processes) against the host's {}",
                host.proc_entries
            ),
        )
    } else {
        (Exposed, format!("/proc of the host kernel with {n} entries against the host's {}: the PID namespace hides other processes ({pids} visible), but meminfo, cpuinfo and /proc/sys are the host's", host.proc_entries))
    }
}

/// `processes`.
fn judge_processes(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let n: Option<usize> = kv(text, "host_daemons").and_then(|v| v.parse().ok());
    let count = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .count();
    match n {
        Some(n) if n > 0 => (Exposed, format!("{n} host daemon(s) visible in ps")),
        _ if count == 0 => (NotApplicable, "ps listed no process at all".into()),
        _ => (
            Isolated,
            format!("{count} processes visible, none of the host's"),
        ),
    }
}

/// `network`.
fn judge_network(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let host = s.cx.host;
    let ifaces: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("iface="))
        .collect();
    let host_macs: Vec<&str> = ifaces
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| host.macs.iter().any(|h| h == m))
        .collect();
    let names: Vec<String> = ifaces
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.get(2) {
                Some(d) => format!("{} ({d})", f[0]),
                None => f.first().unwrap_or(&"?").to_string(),
            }
        })
        .collect();
    if !host_macs.is_empty() {
        (
            Exposed,
            format!("sees the host's interfaces ({})", host_macs.join(", ")),
        )
    } else {
        (
            Isolated,
            format!("own interfaces only: {}", names.join(", ")),
        )
    }
}

/// `modules`, `escape-module-load`.
fn judge_modules(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let whose = s.whose();
    let host = s.cx.host;
    let count = kv(text, "count").unwrap_or("?");
    let cap = has_cap(kv(text, "cap_eff"), CAP_SYS_MODULE);
    let disabled = kv(text, "modules_disabled") == Some("1");
    let loadable = kv(text, "loadable") == Some("yes");
    if !cap {
        (Isolated, format!("cannot load modules (no CAP_SYS_MODULE); /sys/module lists {count} entries of {whose} (host: {})", host.sys_module_count))
    } else if own_kernel && !loadable {
        (Isolated, "holds CAP_SYS_MODULE, but the guest kernel was built without loadable modules, and a module would run in the guest kernel anyway, not the host's".into())
    } else if !loadable || disabled {
        let why = if disabled {
            "modules_disabled=1"
        } else {
            "no /proc/modules: built without loadable modules"
        };
        (
            NotApplicable,
            format!("holds CAP_SYS_MODULE, but {whose} cannot load modules at all ({why})"),
        )
    } else if own_kernel {
        (Isolated, "holds CAP_SYS_MODULE and the guest kernel loads modules, but a module would run in the guest kernel, not the host's (not attempted)".into())
    } else {
        (Exposed, "holds CAP_SYS_MODULE and the host kernel loads modules: insmod would run code in the host kernel (not attempted)".into())
    }
}

/// `mounts`.
fn judge_mounts(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let host = s.cx.host;
    let n = kv(text, "count").unwrap_or("?");
    let root = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or("");
    let host_paths: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("lowerdir=/")
                || l.contains("upperdir=/")
                || host
                    .root_dev
                    .as_ref()
                    .is_some_and(|d| l.starts_with(&format!("/dev/{d} ")))
        })
        .collect();
    if own_kernel {
        (Isolated, format!("{n} mounts, all in the guest kernel; rootfs: {} (a host directory served by virtiofsd through virtio-fs, not a host mount)", first_lines(root, 1)))
    } else if host_paths.is_empty() {
        (
            Isolated,
            format!(
                "{n} mounts, none of a host filesystem or host path; rootfs: {}",
                first_lines(root, 1)
            ),
        )
    } else {
        (
            Exposed,
            format!(
                "{n} mounts; the host kernel mounts host storage here: {}",
                first_lines(&host_paths.join("\n"), 1)
                    .chars()
                    .take(160)
                    .collect::<String>()
            ),
        )
    }
}

/// `devices`, `privileged-devices`.
fn judge_devices(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let nodes = kv(text, "nodes").unwrap_or("?");
    let opens: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("opens="))
        .collect();
    let fails: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("fails="))
        .collect();
    let names = fails
        .iter()
        .map(|f| f.split_whitespace().next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(", ");
    let err = fails
        .first()
        .and_then(|f| f.split_once(' '))
        .map_or("", |x| x.1.trim());
    if !opens.is_empty() && !own_kernel {
        (
            Exposed,
            format!(
                "opens host devices: {} ({nodes} nodes in /dev)",
                opens.join(", ")
            ),
        )
    } else if !opens.is_empty() {
        (
            Isolated,
            format!(
                "{} open, but they are the guest kernel's devices",
                opens.join(", ")
            ),
        )
    } else if !fails.is_empty() && own_kernel {
        (Isolated, format!("the spec's device nodes ({names}) were created in the guest, but the guest kernel has no device behind them ({err})"))
    } else if !fails.is_empty() {
        (
            Isolated,
            format!("nodes {names} exist but cannot be opened ({err})"),
        )
    } else {
        (
            Isolated,
            format!("no /dev/kvm and no host disk node ({nodes} nodes in /dev)"),
        )
    }
}

/// `capabilities`, `privileged-capabilities`.
fn judge_capabilities(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let admin = has_cap(kv_colon(text, "CapEff"), CAP_SYS_ADMIN);
    let seccomp = kv_colon(text, "Seccomp").unwrap_or("?");
    let filter = if seccomp == "2" {
        "seccomp filter on"
    } else {
        "no seccomp filter"
    };
    if !admin {
        (Isolated, format!("no CAP_SYS_ADMIN, {filter}"))
    } else if own_kernel {
        (
            Isolated,
            format!("CAP_SYS_ADMIN, {filter}, but over the guest kernel only"),
        )
    } else {
        (
            Exposed,
            format!("CAP_SYS_ADMIN and {filter} against the host kernel"),
        )
    }
}

/// `escape-core-pattern`.
fn judge_escape_core_pattern(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let host = s.cx.host;
    let cx = s.cx;
    let writable = kv(text, "writable") == Some("yes");
    let after = cx.host_core_pattern_after.as_deref().unwrap_or("?");
    let changed = after != host.core_pattern;
    if changed {
        (
            Exposed,
            format!(
                "the host's core_pattern changed from '{}' to '{after}' (the lab restored it)",
                host.core_pattern
            ),
        )
    } else if !writable {
        (
            Isolated,
            "core_pattern is read-only in the container".into(),
        )
    } else if !own_kernel {
        (Exposed, "the host kernel's core_pattern is writable: the next crash anywhere on the host would run a program of the container's choosing as root (not written)".into())
    } else {
        match kv(text, "written") {
            Some(w) if w.contains(&host.marker) => (Isolated, format!("wrote '{w}' to core_pattern, which reached only the guest kernel; the host's still reads '{after}'")),
            _ => (Isolated, format!("core_pattern is writable, but it is the guest kernel's (the write did not take: {})", kv(text, "write").unwrap_or("?"))),
        }
    }
}

/// `escape-host-disk`.
fn judge_escape_host_disk(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let host = s.cx.host;
    let dev = kv(text, "dev").unwrap_or("");
    match (kv(text, "node"), kv(text, "open")) {
        (Some("unknown"), _) => (
            NotApplicable,
            "the host's / is not on a block device".into(),
        ),
        (Some("absent"), _) => (Isolated, format!("no /dev/{dev} in the container")),
        (_, Some(o)) if o.starts_with("fails") => {
            let err = o.trim_start_matches("fails").trim();
            if err.contains("No such device") {
                (
                    Isolated,
                    format!(
                        "/dev/{dev} exists but the kernel behind it has no such device ({err})"
                    ),
                )
            } else if !host.root_dev_openable {
                (NotApplicable, format!("this host denies raw access to /dev/{dev} even to its own root, so the escape cannot be shown here ({err})"))
            } else {
                (Isolated, format!("opening /dev/{dev} is denied ({err})"))
            }
        }
        (_, Some("ok")) => {
            let same = kv(text, "head_md5").is_some()
                && kv(text, "head_md5") == host.root_dev_head_md5.as_deref();
            if same && !own_kernel {
                (Exposed, format!("reads the host's disk /dev/{dev} raw (its first 4 KiB are the host's): its filesystem could be mounted and written (not done)"))
            } else if own_kernel {
                (
                    Isolated,
                    format!("/dev/{dev} opens, but it is a device of the guest kernel"),
                )
            } else {
                (
                    Exposed,
                    format!("the host's disk /dev/{dev} opens for reading"),
                )
            }
        }
        _ => (NotApplicable, "no result".into()),
    }
}

/// `escape-release-agent`.
fn judge_escape_release_agent(s: &Seen) -> (Verdict, String) {
    let text = s.text;
    let own_kernel = s.own_kernel;
    let hierarchy = kv(text, "hierarchy").unwrap_or("?");
    let mounted = kv(text, "mounted").unwrap_or("");
    let allowed = kv(text, "mount_allowed").unwrap_or("");
    if hierarchy == "none" {
        if !allowed.starts_with("yes") {
            (
                Isolated,
                format!(
                    "mount(2) is denied ({})",
                    allowed.trim_start_matches("no").trim()
                ),
            )
        } else if own_kernel {
            (
                Isolated,
                "mount(2) is allowed, but in the guest kernel".into(),
            )
        } else {
            (Exposed, "mount(2) is allowed against the host kernel: a new cgroup v1 hierarchy with a writable release_agent could be mounted (not attempted: it would show on the host)".into())
        }
    } else if !mounted.starts_with("yes") {
        (
            Isolated,
            format!(
                "cannot mount the cgroup v1 hierarchy {hierarchy} ({})",
                mounted.trim_start_matches("no").trim()
            ),
        )
    } else if kv(text, "writable") != Some("yes") {
        (
            Isolated,
            format!("mounted the cgroup v1 hierarchy {hierarchy}, but release_agent is read-only"),
        )
    } else if own_kernel {
        (Isolated, format!("mounted the cgroup v1 hierarchy {hierarchy} with a writable release_agent, but in the guest kernel: its agent would run inside the VM"))
    } else {
        (Exposed, format!("mounted the host kernel's cgroup v1 hierarchy {hierarchy} with a writable release_agent: the host kernel would run it as root outside every namespace (not written)"))
    }
}

/// `escape-ro-volume`: judged on the host's copy of the file.
fn judge_escape_ro_volume(s: &Seen) -> (Verdict, String) {
    let Some(v) = &s.cx.volumes else {
        return (
            NotApplicable,
            "the lab did not mount the scratch volumes".into(),
        );
    };
    if kv(s.text, "volume") != Some("present") {
        return (
            NotApplicable,
            "the read-only volume was not in the container".into(),
        );
    }
    let remount = kv(s.text, "remount").unwrap_or("?");
    let write = kv(s.text, "write").unwrap_or("?");
    if v.ro_file.trim() != RO_ORIGINAL {
        (Exposed, format!("remount {remount}; the host's file under the read-only volume now reads '{}': read-only was only the container's view", v.ro_file.trim()))
    } else if write == "ok" {
        (Isolated, format!("remount {remount} and the write succeeded in the container, but the host's file is unchanged"))
    } else {
        (
            Isolated,
            format!(
                "remount {remount}, then the write failed ({}); the host's file is unchanged",
                write.trim_start_matches("failed").trim()
            ),
        )
    }
}

/// `escape-share-symlink`: judged on the host's canary after the container
/// was removed.
fn judge_escape_share_symlink(s: &Seen) -> (Verdict, String) {
    if kv(s.text, "share").is_none_or(|v| v.starts_with("none")) {
        return (
            NotApplicable,
            "no virtio-fs share to mount: the container's files are the host's own directories (nothing is shared through a VM device)".into(),
        );
    }
    let Some(c) = &s.cx.canary else {
        return (NotApplicable, "the lab made no canary directory".into());
    };
    let planted = kv(s.text, "planted").unwrap_or("?");
    match &c.changed {
        Some(what) => (
            Exposed,
            format!("the guest planted a symlink named after its container ({planted}); after the container was removed {what}: the host followed it"),
        ),
        None if planted == "yes" => (
            Isolated,
            "the guest planted a symlink named after its container, but the host's canary directory, its file and its mount are intact after removal".into(),
        ),
        None => (
            Isolated,
            format!(
                "the share's root is read-only to the guest ({}); the host's canary directory, its file and its mount are intact after removal",
                planted.trim_start_matches("no").trim()
            ),
        ),
    }
}

/// `escape-share-fill`: a file the guest writes at its share's root lands
/// in the host's state dir (`/run`, often RAM).
fn judge_escape_share_fill(s: &Seen) -> (Verdict, String) {
    if kv(s.text, "share").is_none_or(|v| v.starts_with("none")) {
        return (
            NotApplicable,
            "no virtio-fs share to mount: the container writes to its own rootfs, bounded by the host's disk as any runc container".into(),
        );
    }
    match kv(s.text, "fill") {
        Some(f) if f.starts_with("ok") => (
            Exposed,
            format!("the guest wrote {} at its share's root, on the host's /run", f.trim_start_matches("ok").trim()),
        ),
        Some(f) => (
            Isolated,
            format!(
                "writing at the share's root fails ({}): the guest stores nothing on the host's /run",
                f.trim_start_matches("failed").trim()
            ),
        ),
        None => (NotApplicable, "the probe did not get that far".into()),
    }
}

/// `escape-volume-nodes`: judged on what the host finds on the volume.
fn judge_escape_volume_nodes(s: &Seen) -> (Verdict, String) {
    let Some(v) = &s.cx.volumes else {
        return (
            NotApplicable,
            "the lab did not mount the scratch volumes".into(),
        );
    };
    if kv(s.text, "volume") != Some("present") {
        return (
            NotApplicable,
            "the writable volume was not in the container".into(),
        );
    }
    let said = |k: &str| kv(s.text, k).unwrap_or("?").to_owned();
    let mut found = Vec::new();
    if let Some(n) = &v.device_node {
        found.push(format!("a device node ({n})"));
    }
    if let Some(f) = &v.setid_file {
        found.push(format!("a set-id file ({f})"));
    }
    if !found.is_empty() {
        (Exposed, format!("the host finds {} on the volume: any host user who reaches that directory could use them (the lab's is root-only and removed)", found.join(" and ")))
    } else {
        (Isolated, format!("mknod {}, setuid {}; the host finds neither a device node nor a set-id file on the volume", said("mknod"), said("setuid")))
    }
}

/// `host-read-rootfs`: run on the host while an ordinary container runs.
fn judge_host_read_rootfs(s: &Seen) -> (Verdict, String) {
    let readable: Vec<&str> = s
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("readable="))
        .collect();
    let located = kv(s.text, "located").unwrap_or("0");
    if !readable.is_empty() {
        (
            Exposed,
            format!(
                "user nobody reads the container's files on the host at {}",
                readable.join(", ")
            ),
        )
    } else if located == "0" {
        (
            NotApplicable,
            "the container's rootfs was not found among the host's mounts".into(),
        )
    } else {
        (
            Isolated,
            format!("the rootfs is at {located} host path(s); user nobody reaches none of them"),
        )
    }
}

fn kv_colon<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// At most `n` lines of `s`, saying how many were left out.
pub fn trim_evidence(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.trim_end().lines().collect();
    if lines.len() <= n {
        return lines.join("\n");
    }
    format!(
        "{}\n… ({} more lines in the raw file)",
        lines[..n].join("\n"),
        lines.len() - n
    )
}

/// Probes of `set` from one container's output.
pub fn evaluate(set: Set, output: &str, cx: &Context, raw: &str) -> Vec<Probe> {
    let secs = sections(output);
    let boot_id = secs
        .get("_id")
        .and_then(|t| kv(t, "boot_id"))
        .unwrap_or("")
        .to_owned();
    PROBES
        .iter()
        .filter(|p| p.set == set)
        .map(|p| {
            let (verdict, reason, evidence) = match secs.get(p.id) {
                Some(text) => {
                    let (v, r) = judge(p.id, text, &boot_id, cx);
                    (v, r, trim_evidence(text, 30))
                }
                None => (
                    Verdict::NotApplicable,
                    "the probe produced no output (the container did not get that far)".into(),
                    String::new(),
                ),
            };
            Probe {
                id: p.id.into(),
                title: p.title.into(),
                privileged: matches!(set, Set::Privileged | Set::Share),
                verdict,
                reason,
                evidence,
                raw: raw.into(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts {
            boot_id: "host-bid".into(),
            kernel: "6.18.0".into(),
            proc_entries: 300,
            sys_module_count: 150,
            macs: vec!["02:fc:00:00:00:01".into()],
            root_dev: Some("vda".into()),
            root_dev_openable: true,
            root_dev_head_md5: Some("abc".into()),
            core_pattern: "core".into(),
            marker: "m-123".into(),
        }
    }

    fn verdicts(set: Set, out: &str, after: &str) -> BTreeMap<String, Verdict> {
        verdicts_v(set, out, after, None)
    }

    fn verdicts_v(
        set: Set,
        out: &str,
        after: &str,
        volumes: Option<VolumesAfter>,
    ) -> BTreeMap<String, Verdict> {
        let h = host();
        let cx = Context {
            host: &h,
            host_core_pattern_after: Some(after.into()),
            volumes,
            canary: None,
        };
        evaluate(set, out, &cx, "raw/x.txt")
            .into_iter()
            .map(|p| (p.id, p.verdict))
            .collect()
    }

    #[test]
    fn host_side_read_of_the_rootfs() {
        let v = verdicts(
            Set::Host,
            "=== probe host-read-rootfs\nreadable=/run/scute/c/shared/c/rootfs\ndenied=/run/containerd/x/rootfs cat: Permission denied\nlocated=2\n",
            "core",
        );
        assert_eq!(v["host-read-rootfs"], Verdict::Exposed);
        let v = verdicts(
            Set::Host,
            "=== probe host-read-rootfs\ndenied=/run/containerd/x/rootfs cat: Permission denied\nlocated=1\n",
            "core",
        );
        assert_eq!(v["host-read-rootfs"], Verdict::Isolated);
        let v = verdicts(Set::Host, "=== probe host-read-rootfs\nlocated=0\n", "core");
        assert_eq!(v["host-read-rootfs"], Verdict::NotApplicable);
    }

    #[test]
    fn share_escapes_are_judged_on_the_hosts_canary() {
        let h = host();
        let judge_with = |out: &str, changed: Option<&str>| {
            let cx = Context {
                host: &h,
                host_core_pattern_after: None,
                volumes: None,
                canary: Some(CanaryAfter {
                    changed: changed.map(str::to_owned),
                }),
            };
            evaluate(Set::Share, out, &cx, "r")
                .into_iter()
                .map(|p| (p.id, p.verdict))
                .collect::<BTreeMap<String, Verdict>>()
        };
        let runc = "=== probe _id\nboot_id=host-bid\n=== probe escape-share-symlink\nshare=none mount: mounting scute on /tmp/s failed: No such device\n=== probe escape-share-fill\nshare=none\n";
        let v = judge_with(runc, None);
        assert_eq!(v["escape-share-symlink"], Verdict::NotApplicable);
        assert_eq!(v["escape-share-fill"], Verdict::NotApplicable);
        let held = "=== probe _id\nboot_id=vm-bid\n=== probe escape-share-symlink\nshare=mounted\nplanted=no ln: /tmp/s/c: Read-only file system\n=== probe escape-share-fill\nshare=mounted\nfill=failed dd: /tmp/s/lab-fill: Read-only file system\n";
        let v = judge_with(held, None);
        assert_eq!(v["escape-share-symlink"], Verdict::Isolated);
        assert_eq!(v["escape-share-fill"], Verdict::Isolated);
        let open = "=== probe _id\nboot_id=vm-bid\n=== probe escape-share-symlink\nshare=mounted\nplanted=yes\n=== probe escape-share-fill\nshare=mounted\nfill=ok 1073741824 bytes\n";
        let v = judge_with(open, Some("/tmp/canary is gone"));
        assert_eq!(v["escape-share-symlink"], Verdict::Exposed);
        assert_eq!(v["escape-share-fill"], Verdict::Exposed);
    }

    #[test]
    fn a_canary_is_checked_file_and_mount() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(CANARY_FILE), CANARY_CONTENT).unwrap();
        // No mount at "mnt": that is what a host that followed would leave.
        let c = CanaryAfter::observe(d.path(), &d.path().join("mnt"));
        assert!(c.changed.unwrap().contains("unmounted"));
        std::fs::write(d.path().join(CANARY_FILE), "x").unwrap();
        let c = CanaryAfter::observe(d.path(), &d.path().join("mnt"));
        assert!(c.changed.unwrap().contains("changed"));
    }

    #[test]
    fn volumes_after_are_read_from_the_host() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (ro, rw) = (d.path().join("ro"), d.path().join("rw"));
        std::fs::create_dir(&ro).unwrap();
        std::fs::create_dir(&rw).unwrap();
        std::fs::write(ro.join(RO_FILE), RO_ORIGINAL).unwrap();
        let clean = VolumesAfter::observe(&ro, &rw);
        assert_eq!(clean.ro_file, RO_ORIGINAL);
        assert!(clean.device_node.is_none() && clean.setid_file.is_none());
        std::fs::write(rw.join("suid"), "x").unwrap();
        std::fs::set_permissions(rw.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let st = std::process::Command::new("mknod")
            .arg(rw.join("blk"))
            .args(["b", "7", "250"])
            .status()
            .unwrap();
        let seen = VolumesAfter::observe(&ro, &rw);
        assert!(seen.setid_file.unwrap().contains("4755"));
        if st.success() {
            assert!(seen.device_node.unwrap().contains("block 7:250"));
        }
    }

    #[test]
    fn script_has_every_probe_of_its_set() {
        let s = script(Set::Privileged);
        for p in PROBES {
            assert_eq!(
                s.contains(&format!("=== probe {}'", p.id)),
                p.set == Set::Privileged
            );
        }
    }

    #[test]
    fn shared_kernel_privileged_is_exposed() {
        let out = "=== probe _id\nboot_id=host-bid\n\
            === probe privileged-dmesg\nrc=0\nlines=900\n[0.0] Linux version\n\
            === probe privileged-capabilities\nCapEff:\t000001ffffffffff\nSeccomp:\t0\n\
            === probe privileged-devices\nnodes=80\nopens=kvm\nopens=vda\n\
            === probe escape-core-pattern\ncore_pattern=core\nwritable=yes\n\
            === probe escape-host-disk\ndev=vda\nnode=present\nopen=ok\nhead_md5=abc\n\
            === probe escape-release-agent\nhierarchy=cpuset\nmounted=yes\nwritable=yes\n\
            === probe escape-module-load\ncount=150\ncap_eff=000001ffffffffff\nmodules_disabled=0\nloadable=yes\n\
            === probe escape-ro-volume\nvolume=present\nremount=ok\nwrite=ok\n\
            === probe escape-volume-nodes\nvolume=present\nmknod=ok\nsetuid=ok\n";
        let landed = VolumesAfter {
            ro_file: "lab-written\n".into(),
            device_node: Some("blk block 8:0 uid 0".into()),
            setid_file: Some("suid mode 4755 uid 0".into()),
        };
        let v = verdicts_v(Set::Privileged, out, "core", Some(landed));
        assert!(v.values().all(|v| *v == Verdict::Exposed), "{v:?}");
    }

    #[test]
    fn guest_kernel_privileged_is_isolated() {
        let out = "=== probe _id\nboot_id=guest-bid\n\
            === probe privileged-dmesg\nrc=0\nlines=300\n\
            === probe privileged-capabilities\nCapEff:\t000001ffffffffff\nSeccomp:\t0\n\
            === probe privileged-devices\nnodes=80\nfails=kvm sh: can't open /dev/kvm: No such device\n\
            === probe escape-core-pattern\ncore_pattern=core\nwritable=yes\nwritten=|/bin/false m-123\n\
            === probe escape-host-disk\ndev=vda\nnode=present\nopen=fails sh: can't open /dev/vda: No such device or address\n\
            === probe escape-release-agent\nhierarchy=none,name=scutelab\nmounted=yes\nwritable=yes\n\
            === probe escape-module-load\ncount=70\ncap_eff=000001ffffffffff\nmodules_disabled=0\nloadable=yes\n\
            === probe escape-ro-volume\nvolume=present\nremount=ok\nwrite=failed sh: can't create /lab-ro/target: Read-only file system\n\
            === probe escape-volume-nodes\nvolume=present\nmknod=failed mknod: /lab-rw/blk: Operation not permitted\nsetuid=failed chmod: /lab-rw/suid: Operation not permitted\n";
        let held = VolumesAfter {
            ro_file: RO_ORIGINAL.into(),
            device_node: None,
            setid_file: None,
        };
        let v = verdicts_v(Set::Privileged, out, "core", Some(held.clone()));
        assert!(v.values().all(|v| *v == Verdict::Isolated), "{v:?}");
        // Without the volumes' host side, nothing is claimed either way.
        let v = verdicts(Set::Privileged, out, "core");
        assert_eq!(v["escape-ro-volume"], Verdict::NotApplicable);
        assert_eq!(v["escape-volume-nodes"], Verdict::NotApplicable);
        // Only the host's view counts: a setuid file on the host is exposed
        // whatever the container said.
        let suid = VolumesAfter {
            setid_file: Some("suid mode 4755 uid 0".into()),
            ..held
        };
        let v = verdicts_v(Set::Privileged, out, "core", Some(suid));
        assert_eq!(v["escape-volume-nodes"], Verdict::Exposed);
        // The write reached the host after all: exposed.
        let v = verdicts(Set::Privileged, out, "|/bin/false m-123");
        assert_eq!(v["escape-core-pattern"], Verdict::Exposed);
    }

    #[test]
    fn what_cannot_be_decided_is_not_applicable() {
        // A host kernel without loadable modules: no module escape to show.
        let out = "=== probe _id\nboot_id=host-bid\n=== probe escape-module-load\ncount=78\n\
            cap_eff=000001ffffffffff\nmodules_disabled=cat: can't open\nloadable=no\n\
            === probe privileged-dmesg\nrc=127\nlines=1\nsh: dmesg: not found\n";
        let v = verdicts(Set::Privileged, out, "core");
        assert_eq!(v["escape-module-load"], Verdict::NotApplicable);
        assert_eq!(v["privileged-dmesg"], Verdict::NotApplicable);
        // A guest kernel without loadable modules (scute's): isolated twice over.
        let guest = out.replace("boot_id=host-bid", "boot_id=guest-bid");
        let v = verdicts(Set::Privileged, &guest, "core");
        assert_eq!(v["escape-module-load"], Verdict::Isolated);
        // A host without v1 hierarchies where mount(2) is allowed: exposed,
        // without creating one.
        let out = "=== probe _id\nboot_id=host-bid\n=== probe escape-release-agent\nhierarchy=none\nmount_allowed=yes\n";
        let v = verdicts(Set::Privileged, out, "core");
        assert_eq!(v["escape-release-agent"], Verdict::Exposed);
    }

    #[test]
    fn writes_are_gated_on_a_known_foreign_boot_id() {
        // The shell gate: `own` is 1 only when both ids are known and differ.
        for (bid, host, want) in [
            ("a", "b", "1"),
            ("a", "a", "0"),
            ("", "b", "0"),
            ("a", "", "0"),
        ] {
            let o = std::process::Command::new("busybox")
                .args([
                    "sh",
                    "-c",
                    &format!("cat() {{ echo '{bid}'; }}; {ID}; echo \"own=$own\""),
                ])
                .env("HOST_BOOT_ID", host)
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout);
            assert_eq!(
                kv(&out, "own"),
                Some(want),
                "bid {bid:?} host {host:?}: {out}"
            );
        }
    }

    #[test]
    fn host_disk_denied_everywhere_is_not_applicable() {
        let out =
            "=== probe _id\nboot_id=host-bid\n=== probe escape-host-disk\ndev=vda\nnode=present\n\
            open=fails sh: can't open /dev/vda: Operation not permitted\n";
        let mut h = host();
        let cx = Context {
            host: &h,
            host_core_pattern_after: None,
            volumes: None,
            canary: None,
        };
        let p = evaluate(Set::Privileged, out, &cx, "r");
        let disk = p.iter().find(|p| p.id == "escape-host-disk").unwrap();
        assert_eq!(disk.verdict, Verdict::Isolated, "{}", disk.reason);
        h.root_dev_openable = false;
        let cx = Context {
            host: &h,
            host_core_pattern_after: None,
            volumes: None,
            canary: None,
        };
        let p = evaluate(Set::Privileged, out, &cx, "r");
        let disk = p.iter().find(|p| p.id == "escape-host-disk").unwrap();
        assert_eq!(disk.verdict, Verdict::NotApplicable, "{}", disk.reason);
    }

    #[test]
    fn default_set() {
        let shared = "=== probe _id\nboot_id=host-bid\n=== probe kernel\nuname_r=6.18.0\n\
            === probe dmesg\nrc=1\nlines=1\ndmesg: klogctl: Operation not permitted\n\
            === probe proc\nentries=70\npids=2\n=== probe processes\nPID USER COMMAND\n 1 root sh\nhost_daemons=0\n\
            === probe network\niface=lo 00:00:00:00:00:00\niface=eth0 aa:bb:cc:dd:ee:ff\n\
            === probe modules\ncount=150\ncap_eff=00000000a80425fb\nmodules_disabled=0\n\
            === probe mounts\ncount=20\noverlay / overlay rw,lowerdir=/var/lib/containerd/x 0 0\n\
            === probe devices\nnodes=15\n\
            === probe capabilities\nCapEff:\t00000000a80425fb\nSeccomp:\t2\n";
        let v = verdicts(Set::Default, shared, "core");
        assert_eq!(v["kernel"], Verdict::Exposed);
        assert_eq!(v["dmesg"], Verdict::Isolated);
        assert_eq!(v["proc"], Verdict::Exposed);
        assert_eq!(v["processes"], Verdict::Isolated);
        assert_eq!(v["network"], Verdict::Isolated);
        assert_eq!(v["modules"], Verdict::Isolated);
        assert_eq!(v["mounts"], Verdict::Exposed);
        assert_eq!(v["devices"], Verdict::Isolated);
        assert_eq!(v["capabilities"], Verdict::Isolated);
        // A section missing from the output is "not applicable", not a pass.
        let v = verdicts(Set::Default, "=== probe _id\nboot_id=x\n", "core");
        assert!(v.values().all(|v| *v == Verdict::NotApplicable));
    }
}
