//! Runs the standard CNI plugins (Debian's `containernetworking-plugins`:
//! bridge, host-local IPAM, portmap, loopback) for a network namespace of our
//! own, as nerdctl does: ADD in order with `prevResult` chained, DEL in reverse.
//! Used by the tests and by `scute lab`; the real plugin binaries, no
//! re-implementation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use scute_runtime::Error;

pub const PLUGIN_DIR: &str = "/usr/lib/cni";
const CNI_VERSION: &str = "0.4.0";

/// A published port: host 127.0.0.1/0.0.0.0 `host_port` → container `container_port`.
#[derive(Debug, Clone, Copy)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
}

/// A network configuration list.
#[derive(Debug, Clone)]
pub struct Network {
    pub conflist: Value,
    pub plugin_dir: PathBuf,
}

impl Network {
    /// bridge (gateway, masquerade) + host-local on `subnet` + portmap +
    /// firewall. The firewall plugin lets the attachment's traffic through
    /// the host's FORWARD chain: dockerd sets that chain's policy to DROP
    /// when it turns IP forwarding on, and bridged traffic between two
    /// attachments (bridge-nf-call-iptables) was then dropped.
    pub fn bridge(name: &str, bridge: &str, subnet: &str) -> Self {
        Self {
            conflist: json!({
                "cniVersion": CNI_VERSION,
                "name": name,
                "plugins": [
                    {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                     "hairpinMode": true,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                              "routes": [{"dst": "0.0.0.0/0"}],
                              "dataDir": format!("/run/scute-cni/ipam")}},
                    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                    {"type": "firewall"}
                ]
            }),
            plugin_dir: PLUGIN_DIR.into(),
        }
    }

    /// Creates netns `scute-<id>` and runs loopback and every plugin's ADD.
    /// On failure everything done so far is undone.
    pub fn attach(&self, id: &str, ports: &[PortMapping]) -> Result<Attachment, Error> {
        scute_runtime::bundle::validate_id(id)?;
        let ns_name = format!("scute-{id}");
        run_ok(
            Command::new("ip").args(["netns", "add", &ns_name]),
            "ip netns add",
        )?;
        let mut att = Attachment {
            netns: PathBuf::from("/run/netns").join(&ns_name),
            ns_name,
            id: id.to_owned(),
            ifaces: Vec::new(),
            result: Value::Null,
        };
        let lo = json!({"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"});
        self.exec("ADD", &lo, &att, "lo")?;
        self.add_interface(&mut att, "eth0", ports)?;
        att.result = att.ifaces[0].result.clone();
        Ok(att)
    }

    /// Attaches one more interface `ifname` of this network to `att`'s netns.
    pub fn add_interface(
        &self,
        att: &mut Attachment,
        ifname: &str,
        ports: &[PortMapping],
    ) -> Result<(), Error> {
        att.ifaces.push(Iface {
            network: self.clone(),
            ifname: ifname.to_owned(),
            ports: ports.to_vec(),
            added: 0,
            result: Value::Null,
        });
        let idx = att.ifaces.len() - 1;
        let mut prev = Value::Null;
        for plugin in self.plugins() {
            let conf = att.ifaces[idx].plugin_conf(&plugin, &prev);
            prev = self.exec("ADD", &conf, att, ifname)?;
            att.ifaces[idx].added += 1;
        }
        att.ifaces[idx].result = prev;
        Ok(())
    }

    /// Undoes [`Network::attach`] for `id` when the attachment itself is
    /// gone (its process died): DEL of every plugin on `eth0` without a
    /// prevResult, as the CNI spec allows, then the netns is removed.
    pub fn release(&self, id: &str) -> Result<(), Error> {
        scute_runtime::bundle::validate_id(id)?;
        let ns_name = format!("scute-{id}");
        let att = Attachment {
            netns: PathBuf::from("/run/netns").join(&ns_name),
            ns_name,
            id: id.to_owned(),
            ifaces: vec![Iface {
                network: self.clone(),
                ifname: "eth0".into(),
                ports: Vec::new(),
                added: self.plugins().len(),
                result: Value::Null,
            }],
            result: Value::Null,
        };
        att.detach()
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn exec(
        &self,
        cmd: &str,
        conf: &Value,
        att: &Attachment,
        ifname: &str,
    ) -> Result<Value, Error> {
        let ty = conf["type"].as_str().unwrap_or_default();
        let bin = self.plugin_dir.join(ty);
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &att.id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.plugin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::io(format!(
                "run CNI plugin {} (apt-get install containernetworking-plugins)",
                bin.display()
            )))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(Error::io(format!("CNI plugin {ty}")))?;
        if !out.status.success() {
            return Err(Error::Io {
                what: format!(
                    "CNI {cmd} with plugin {ty} for {}: {}{}",
                    att.id,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::Error::other("plugin failed"),
            });
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd.output().map_err(Error::io(what.to_owned()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            what: format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()),
            source: std::io::Error::other("command failed"),
        })
    }
}

/// One CNI interface of an attachment.
#[derive(Debug)]
struct Iface {
    network: Network,
    ifname: String,
    ports: Vec<PortMapping>,
    /// Plugins whose ADD succeeded.
    added: usize,
    result: Value,
}

/// A netns wired by CNI. Dropping it runs DEL (reverse order) and removes the
/// netns; [`Attachment::detach`] does the same and reports errors.
#[derive(Debug)]
pub struct Attachment {
    pub netns: PathBuf,
    pub ns_name: String,
    pub id: String,
    ifaces: Vec<Iface>,
    /// The first interface's result (interfaces, IPs, routes, DNS).
    pub result: Value,
}

impl Iface {
    fn plugin_conf(&self, plugin: &Value, prev: &Value) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.network.conflist["cniVersion"].clone();
        conf["name"] = self.network.conflist["name"].clone();
        if !prev.is_null() {
            conf["prevResult"] = prev.clone();
        }
        if conf["capabilities"]["portMappings"] == json!(true) {
            let pm: Vec<Value> = self
                .ports
                .iter()
                .map(|p| json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": "tcp"}))
                .collect();
            conf["runtimeConfig"] = json!({"portMappings": pm});
        }
        conf
    }
}

impl Attachment {
    /// The container's IPv4 address on `eth0` (without prefix length).
    pub fn ip(&self) -> Option<String> {
        self.result["ips"]
            .as_array()?
            .iter()
            .filter_map(|i| i["address"].as_str())
            .find(|a| a.contains('.'))
            .and_then(|a| a.split('/').next())
            .map(str::to_owned)
    }

    pub fn netns_path(&self) -> &Path {
        &self.netns
    }

    pub fn detach(mut self) -> Result<(), Error> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), Error> {
        let mut first_err = None;
        let ifaces = std::mem::take(&mut self.ifaces);
        for i in ifaces.iter().rev() {
            let plugins = i.network.plugins();
            for plugin in plugins[..i.added].iter().rev() {
                let conf = i.plugin_conf(plugin, &i.result);
                if let Err(e) = i.network.exec("DEL", &conf, self, &i.ifname) {
                    first_err.get_or_insert(e);
                }
            }
        }
        let lo = json!({"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"});
        let _ = Command::new(Path::new(PLUGIN_DIR).join("loopback"))
            .env("CNI_COMMAND", "DEL")
            .env("CNI_CONTAINERID", &self.id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", "lo")
            .env("CNI_PATH", PLUGIN_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                if let Some(mut i) = c.stdin.take() {
                    let _ = i.write_all(lo.to_string().as_bytes());
                }
                c.wait()
            });
        if self.netns.exists() {
            if let Err(e) = run_ok(
                Command::new("ip").args(["netns", "del", &self.ns_name]),
                "ip netns del",
            ) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.netns.exists() {
            if let Err(e) = self.teardown() {
                tracing::warn!(id = %self.id, "CNI teardown: {e}");
            }
        }
    }
}
