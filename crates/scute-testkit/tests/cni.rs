//! The CNI helper with the real plugins: a netns on a bridge with a published
//! port, a real HTTP server in it, reached from the host on 127.0.0.1, and its
//! FORWARD rules; and a clean teardown.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scute_testkit::cni::{Network, PortMapping};

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// stdout of `program args`.
fn stdout_of(program: &str, args: &[&str]) -> String {
    String::from_utf8(Command::new(program).args(args).output().unwrap().stdout).unwrap()
}

#[test]
fn bridge_and_portmap_publish_a_server_in_the_netns() {
    let n = std::process::id() % 200 + 20;
    let id = format!("cni-{}", std::process::id());
    let net = Network::bridge(
        &format!("scute-test-{n}"),
        &format!("scute-t{n}"),
        &format!("10.99.{n}.0/24"),
    );
    let host_port = 20000 + (std::process::id() % 20000) as u16;
    let att = net
        .attach(
            &id,
            &[PortMapping {
                host_port,
                container_port: 8080,
            }],
        )
        .expect("CNI ADD");
    let ip = att.ip().expect("an IPv4 address from host-local");
    assert!(ip.starts_with(&format!("10.99.{n}.")), "{ip}");
    // The firewall plugin lets the address through the FORWARD chain, which
    // dockerd may have set to DROP.
    let from_ip = format!("-s {ip}/32 -j ACCEPT");
    let fw = stdout_of("iptables", &["-S", "CNI-FORWARD"]);
    assert!(fw.contains(&from_ip), "no forward rule for {ip}: {fw}");

    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), format!("hello from {id}\n")).unwrap();
    let _server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &att.ns_name,
                "busybox",
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
            ])
            .arg(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Directly on the bridge, and through the published port on loopback.
    for addr in [format!("{ip}:8080"), format!("127.0.0.1:{host_port}")] {
        let body =
            scute_testkit::http::get_200_within(&addr, "/index.html", Duration::from_secs(10));
        assert_eq!(
            body.as_deref(),
            Some(format!("hello from {id}\n").as_str()),
            "{addr}"
        );
    }

    drop(_server);
    let ns = att.ns_name.clone();
    att.detach().expect("CNI DEL");
    let list = stdout_of("ip", &["netns", "list"]);
    assert!(!list.contains(&ns), "netns left: {list}");
    let nat = stdout_of("iptables", &["-t", "nat", "-S"]);
    assert!(
        !nat.contains(&format!("dport {host_port} ")),
        "portmap rule left: {nat}"
    );
    let fw = stdout_of("iptables", &["-S", "CNI-FORWARD"]);
    assert!(!fw.contains(&from_ip), "forward rule left: {fw}");
    let _ = Command::new("ip")
        .args(["link", "del", &format!("scute-t{n}")])
        .status();
}

#[test]
fn failed_add_leaves_nothing() {
    let id = format!("cnibad-{}", std::process::id());
    let mut net = Network::bridge("scute-bad", "scute-bad0", "not-a-subnet");
    net.plugin_dir = "/usr/lib/cni".into();
    let err = net.attach(&id, &[]).unwrap_err().to_string();
    assert!(err.contains("bridge") && err.contains(&id), "{err}");
    let list = stdout_of("ip", &["netns", "list"]);
    assert!(
        !list.contains(&format!("scute-{id}")),
        "netns left after a failed ADD: {list}"
    );
    let _ = Command::new("ip")
        .args(["link", "del", "scute-bad0"])
        .status();
}
