//! Wiring a VM into a container network namespace, Kata's "tcfilter" model:
//! for each CNI interface (veth) a tap in the same netns, ingress qdiscs with
//! mirred redirects both ways, a virtio-net NIC on the tap with the veth's
//! MAC; the guest interface gets the veth's name, addresses, routes and MTU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use scute_protocol::{NetInterface, NetRoute, NetworkConfig};
use serde_json::Value;

use crate::Error;

/// What the netns looks like, and the taps that go with it.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub netns: PathBuf,
    pub config: NetworkConfig,
    /// (veth name, tap name) pairs.
    pub pairs: Vec<(String, String)>,
}

/// `nsenter --net=NETNS ARGS`.
fn nsenter(netns: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).args(args);
    cmd
}

fn in_netns(netns: &Path, args: &[&str]) -> Result<String, Error> {
    let out = nsenter(netns, args)
        .output()
        .map_err(Error::io(format!("nsenter {}", args.join(" "))))?;
    checked(netns, args, out)
}

/// `in_netns` of a tool in batch mode (`tc -batch -`), one command a line
/// on its stdin: one exec for all of them.
fn in_netns_batch(netns: &Path, tool: &str, lines: &[String]) -> Result<String, Error> {
    use std::io::Write;
    let mut child = nsenter(netns, &[tool, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("nsenter {tool} -batch")))?;
    let script = lines.join("\n") + "\n";
    let wrote = child
        .stdin
        .take()
        .map(|mut i| i.write_all(script.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(Error::io(format!("nsenter {tool} -batch")))?;
    // tc's own complaint first: a failed write is then just its exit.
    let stdout = checked(netns, &[tool, "-batch", &script.replace('\n', "; ")], out)?;
    if let Some(Err(e)) = wrote {
        return Err(Error::io(format!("write {tool}'s batch"))(e));
    }
    Ok(stdout)
}

fn checked(netns: &Path, args: &[&str], out: std::process::Output) -> Result<String, Error> {
    if !out.status.success() {
        return Err(Error::Io {
            what: format!(
                "in netns {}: {}: {}",
                netns.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: std::io::Error::other("command failed"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads interfaces and routes of `netns` (via iproute2's JSON output).
pub fn plan(netns: &Path) -> Result<Plan, Error> {
    if !netns.exists() {
        return Err(Error::InvalidSpec {
            path: PathBuf::from("config.json"),
            message: format!(
                "network namespace {} does not exist: create it (CNI ADD) before starting the container",
                netns.display()
            ),
        });
    }
    let addrs: Value = serde_json::from_str(&in_netns(netns, &["ip", "-j", "addr", "show"])?)
        .map_err(|e| Error::HostTool {
            tool: "ip -j addr",
            message: e.to_string(),
        })?;
    let routes: Value =
        serde_json::from_str(&in_netns(netns, &["ip", "-j", "-4", "route", "show"])?).map_err(
            |e| Error::HostTool {
                tool: "ip -j route",
                message: e.to_string(),
            },
        )?;
    let mut p = Plan {
        netns: netns.to_path_buf(),
        ..Default::default()
    };
    for (i, l) in addrs.as_array().into_iter().flatten().enumerate() {
        let name = l["ifname"].as_str().unwrap_or_default();
        if name == "lo" || l["link_type"].as_str() != Some("ether") || name.starts_with("scute-tap")
        {
            continue;
        }
        let addresses = l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet")
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect();
        p.config.interfaces.push(NetInterface {
            name: name.to_owned(),
            mac: l["address"].as_str().unwrap_or_default().to_owned(),
            mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
            addresses,
            guest_mac: None,
        });
        p.pairs.push((name.to_owned(), format!("scute-tap{i}")));
    }
    let names: Vec<&str> = p
        .config
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    for r in routes.as_array().into_iter().flatten() {
        let dev = r["dev"].as_str().unwrap_or_default();
        if !names.contains(&dev) {
            continue;
        }
        p.config.routes.push(NetRoute {
            destination: r["dst"].as_str().unwrap_or("default").to_owned(),
            gateway: r["gateway"].as_str().map(str::to_owned),
            device: dev.to_owned(),
        });
    }
    Ok(p)
}

/// The redirects, removed when dropped (the taps go away with QEMU).
/// The plan's taps, created in its netns before the VMM starts (owned by
/// the VMM's uid when it is jailed, so it can attach without
/// CAP_NET_ADMIN); deleted when dropped.
#[derive(Debug)]
pub struct Taps {
    netns: PathBuf,
    names: Vec<String>,
}

pub fn create_taps(plan: &Plan, uid: Option<u32>) -> Result<Taps, Error> {
    let mut taps = Taps {
        netns: plan.netns.clone(),
        names: Vec::new(),
    };
    for (_, tap) in &plan.pairs {
        // A sandbox killed before its teardown may have left it.
        let _ = in_netns(&plan.netns, &["ip", "link", "del", tap]);
        let mut args = vec!["ip", "tuntap", "add", "dev", tap, "mode", "tap"];
        let id = uid.map(|u| u.to_string());
        if let Some(u) = &id {
            args.extend(["user", u.as_str(), "group", u.as_str()]);
        }
        in_netns(&plan.netns, &args)?;
        taps.names.push(tap.clone());
    }
    Ok(taps)
}

impl Drop for Taps {
    fn drop(&mut self) {
        if !self.netns.exists() {
            return;
        }
        for t in &self.names {
            let _ = in_netns(&self.netns, &["ip", "link", "del", t]);
        }
    }
}

#[derive(Debug)]
pub struct Wired {
    plan: Plan,
}

/// Sets up the taps (already created by QEMU inside the netns) and the tc
/// redirects. Waits up to 5 s for QEMU to create the taps.
pub fn wire(plan: &Plan) -> Result<Wired, Error> {
    let wired = Wired { plan: plan.clone() };
    let ns = &plan.netns;
    for ((veth, tap), iface) in plan.pairs.iter().zip(&plan.config.interfaces) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while in_netns(ns, &["ip", "link", "show", tap]).is_err() {
            if Instant::now() > deadline {
                return Err(Error::Io {
                    what: format!("tap {tap} did not appear in {}", ns.display()),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mtu = iface.mtu.to_string();
        in_netns(ns, &["ip", "link", "set", tap, "mtu", &mtu, "up"])?;
        let redirects: Vec<String> = [(veth, tap), (tap, veth)]
            .iter()
            .flat_map(|(from, to)| {
                // `replace`: a sandbox killed before its teardown leaves its
                // ingress qdisc on the veth, and `add` would then fail.
                [
                    format!("qdisc replace dev {from} ingress"),
                    format!(
                        "filter add dev {from} parent ffff: protocol all u32 match u8 0 0 \
                         action mirred egress redirect dev {to}"
                    ),
                ]
            })
            .collect();
        in_netns_batch(ns, "tc", &redirects)?;
    }
    Ok(wired)
}

impl Drop for Wired {
    fn drop(&mut self) {
        if !self.plan.netns.exists() {
            return;
        }
        for (veth, _) in &self.plan.pairs {
            let _ = in_netns(
                &self.plan.netns,
                &["tc", "qdisc", "del", "dev", veth, "ingress"],
            );
        }
    }
}

/// A pool VM's NIC: a tap alone in a network namespace of its own (no
/// route anywhere), so the VM boots with the NIC a pod will need. Deleted
/// with its namespace when dropped; a claim moves the tap out first.
#[derive(Debug)]
pub struct PoolNic {
    pub netns: PathBuf,
    pub tap: String,
    pub mac: String,
    _taps: Taps,
}

/// Name of the pool VM's tap (moved into the pod and renamed at a claim).
const POOL_TAP: &str = "scute-pooltap";

/// Creates `/run/netns/scute-<vm_id>` with a tap owned by `uid` and a
/// random locally administered MAC for the guest NIC.
pub fn pool_nic(vm_id: &str, uid: Option<u32>) -> Result<PoolNic, Error> {
    let name = format!("scute-{vm_id}");
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .map_err(Error::io("ip netns add"))?;
    if !out.status.success() {
        return Err(Error::Io {
            what: format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: std::io::Error::other("command failed"),
        });
    }
    let netns = PathBuf::from("/run/netns").join(&name);
    let plan = Plan {
        netns: netns.clone(),
        pairs: vec![(String::new(), POOL_TAP.to_owned())],
        ..Plan::default()
    };
    let taps = match create_taps(&plan, uid) {
        Ok(t) => t,
        Err(e) => {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            return Err(e);
        }
    };
    let mut b = [0u8; 5];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    let mac = format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    );
    Ok(PoolNic {
        netns,
        tap: POOL_TAP.to_owned(),
        mac,
        _taps: taps,
    })
}

impl Drop for PoolNic {
    fn drop(&mut self) {
        remove_netns(&self.netns);
    }
}

/// Deletes pool VM `vm_id`'s netns if its member died without doing so.
pub fn remove_pool_netns(vm_id: &str) {
    remove_netns(&Path::new("/run/netns").join(format!("scute-{vm_id}")));
}

/// What `ip netns del` does, without its fork and exec (a few ms of every
/// pool VM's teardown): detach the namespace's bind mount, remove the file.
/// The namespace itself goes with its last process.
fn remove_netns(path: &Path) {
    if !path.starts_with("/run/netns") {
        return;
    }
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Moves a pool VM's tap (`tap` in `from`) into the plan's netns under the
/// plan's tap name, and wires it: the VM's NIC becomes the pod's. The
/// plan must have exactly one interface. Returns the redirects and the tap,
/// both removed when dropped.
pub fn adopt_tap(from: &Path, tap: &str, plan: &Plan) -> Result<(Wired, Taps), Error> {
    let [(_, name)] = plan.pairs.as_slice() else {
        return Err(Error::Host(format!(
            "a pool VM has one NIC; {} has {} interfaces",
            plan.netns.display(),
            plan.pairs.len()
        )));
    };
    let target = plan.netns.display().to_string();
    in_netns(from, &["ip", "link", "set", "dev", tap, "netns", &target])?;
    let mut taps = Taps {
        netns: plan.netns.clone(),
        names: vec![tap.to_owned()],
    };
    in_netns(
        &plan.netns,
        &["ip", "link", "set", "dev", tap, "name", name],
    )?;
    taps.names = vec![name.clone()];
    Ok((wire(plan)?, taps))
}
