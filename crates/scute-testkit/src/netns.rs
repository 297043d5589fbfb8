//! A network namespace shaped as a CNI bridge plugin leaves it: `eth0`, one
//! end of a veth pair whose other end is on the host, with an address, lo up
//! and a default route. For tests and `scute bench churn`; removed on drop.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct CniShaped {
    pub name: String,
    host_if: String,
}

impl CniShaped {
    /// `name` under /run/netns; `host_if` the host end (≤ 15 bytes);
    /// `net` the first three octets of a private /24 ("10.98.3").
    pub fn new(name: &str, host_if: &str, net: &str) -> io::Result<Self> {
        let me = Self {
            name: name.to_owned(),
            host_if: host_if.to_owned(),
        };
        let (host_addr, addr, gw) = (
            format!("{net}.1/24"),
            format!("{net}.2/24"),
            format!("{net}.1"),
        );
        let n = me.name.as_str();
        let h = me.host_if.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", n],
            &[
                "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", n,
            ],
            &["addr", "add", &host_addr, "dev", h],
            &["link", "set", h, "up"],
            &["-n", n, "addr", "add", &addr, "dev", "eth0"],
            &["-n", n, "link", "set", "eth0", "up"],
            &["-n", n, "link", "set", "lo", "up"],
            &["-n", n, "route", "add", "default", "via", &gw],
        ];
        for args in steps {
            let st = Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()?;
            if !st.success() {
                return Err(io::Error::other(format!("ip {} failed", args.join(" "))));
            }
        }
        Ok(me)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// For `ctr run --with-ns`.
    pub fn with_ns(&self) -> String {
        format!("network:{}", self.path().display())
    }

    /// Links other than lo and eth0, and ingress/clsact qdiscs on eth0: what
    /// a sandbox must not leave in the namespace.
    pub fn residue(&self) -> Vec<String> {
        let run = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for l in run(&["ip", "-n", &self.name, "-o", "link"]).lines() {
            let name = l.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name != "lo" && name != "eth0" {
                out.push(format!("link {name} in {}", self.name));
            }
        }
        for l in run(&["tc", "-n", &self.name, "qdisc", "show", "dev", "eth0"]).lines() {
            if l.contains("ingress") || l.contains("clsact") {
                out.push(format!("qdisc on eth0 in {}: {}", self.name, l.trim()));
            }
        }
        out
    }
}

impl Drop for CniShaped {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}
