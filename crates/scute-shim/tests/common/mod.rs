//! Shared by the shim's integration tests: where the binaries are, and a
//! busybox httpd in a CNI network namespace with a published port, as
//! nerdctl runs one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scute_runtime::cni::{Attachment, Network, PortMapping};

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
