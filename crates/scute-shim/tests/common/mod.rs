//! Shared by the shim's integration tests: where the binaries are, and a
//! busybox httpd in a CNI network namespace with a published port, as
//! nerdctl runs one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scute_testkit::cni::{Attachment, Network, PortMapping};

pub const RUNTIME: &str = "io.containerd.scute.v2";

/// The directory of the built binaries (the shim, `scute`).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_containerd-shim-scute-v2"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A CNI bridge network (its own name, bridge and /24, from `n`) with the
/// netns of container `cid` attached and 127.0.0.1:`port` → 8080.
pub struct CniHttpd {
    pub att: Attachment,
    pub port: u16,
    bridge: String,
}

impl CniHttpd {
    /// `n` picks the bridge `scute-<tag><n>` and the subnet `10.<net>.<n % 256>.0/24`.
    pub fn attach(cid: &str, tag: &str, net: u8, n: u32, port: u16) -> Self {
        let bridge = format!("scute-{tag}{n}");
        let att = Network::bridge(
            &format!("scute-{tag}-{n}"),
            &bridge,
            &format!("10.{net}.{}.0/24", n % 256),
        )
        .attach(
            cid,
            &[PortMapping {
                host_port: port,
                container_port: 8080,
            }],
        )
        .unwrap();
        Self { att, port, bridge }
    }

    /// `ctr run -d` arguments: `cid` in this netns, serving /etc on 8080.
    pub fn run_args(&self, runtime: &str, img: &str, cid: &str) -> Vec<String> {
        let ns = format!("network:{}", self.att.netns_path().display());
        [
            "run",
            "-d",
            "--runtime",
            runtime,
            "--with-ns",
            &ns,
            img,
            cid,
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/etc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `args` run in the netns (as root, on the host).
    pub fn in_netns(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.att.netns_path().display()))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The published port answers from the container (bounded retries).
    pub fn assert_serves(&self) {
        let body = scute_testkit::http::get_200_within(
            &format!("127.0.0.1:{}", self.port),
            "/group",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("no answer on 127.0.0.1:{}", self.port));
        assert!(body.contains("root:x:0:"), "{body}");
    }

    /// After the container is gone: no redirect or tap left in the netns;
    /// then CNI DEL and the bridge removed.
    pub fn assert_clean_and_detach(self) {
        let qdisc = self.in_netns(&["tc", "qdisc", "show", "dev", "eth0"]);
        let links = self.in_netns(&["ip", "-o", "link"]);
        self.att.detach().expect("CNI DEL");
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        assert!(!qdisc.contains("ingress"), "qdisc left: {qdisc}");
        assert!(!links.contains("scute-"), "tap left: {links}");
    }
}

/// A host directory for escapes to aim at: a file and a tmpfs mounted in
/// it. Unmounted and removed when dropped.
pub struct Canary {
    pub dir: PathBuf,
}

impl Canary {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("scute-canary-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        std::fs::write(dir.join("precious"), "keep").unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir.join("mnt"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        std::fs::write(dir.join("mnt/inside"), "keep").unwrap();
        Self { dir }
    }

    /// The dir, its file, its mount and the file in the mount are as made.
    pub fn assert_intact(&self) {
        let read = |p: &str| std::fs::read_to_string(self.dir.join(p)).ok();
        assert_eq!(read("precious").as_deref(), Some("keep"), "canary file");
        assert_eq!(
            read("mnt/inside").as_deref(),
            Some("keep"),
            "canary mount's file"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mounts.contains(&format!("{}/mnt ", self.dir.display())),
            "the canary's mount was unmounted"
        );
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir.join("mnt"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Busybox shell for a `--privileged` container `cid` without volumes (a
/// second mount of the share's tag in the guest would otherwise land on a
/// volume's submount): mounts its VM's share and tries to plant at its
/// root symlinks named after `cid` (the name the host removes) to each of
/// `targets`, a directory and an 8 MiB file. Prints `WROTE …` for each
/// that succeeds, `MOUNTFAIL` if the share can't be mounted, then `DONE`.
pub fn share_escape_script(cid: &str, targets: &[&Path]) -> String {
    let mut s = String::from(
        "mkdir -p /s; mount -t virtiofs scute /s || echo MOUNTFAIL; \
         try() { if \"$@\" 2>/dev/null; then echo \"WROTE $*\"; fi; }; ",
    );
    for (i, t) in targets.iter().enumerate() {
        let name = if i == 0 {
            cid.to_owned()
        } else {
            format!("{cid}.{i}")
        };
        s.push_str(&format!("try ln -s {} /s/{name}; ", t.display()));
    }
    s.push_str(
        "try mkdir /s/dir; \
         try sh -c 'dd if=/dev/zero of=/s/big bs=1M count=8 2>/dev/null && test -s /s/big'; \
         echo DONE",
    );
    s
}

/// The escape script's output shows every attempt failed in the guest.
pub fn assert_share_escape_failed(said: &str) {
    assert!(
        said.contains("DONE") && !said.contains("MOUNTFAIL"),
        "{said}"
    );
    assert!(
        !said.contains("WROTE"),
        "the guest changed its share's root: {said}"
    );
}
