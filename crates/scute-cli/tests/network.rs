//! A scute VM wired into a CNI network namespace (real bridge, host-local,
//! portmap plugins): published ports reach the guest, guests reach each other,
//! the guest shows what CNI set up, and teardown leaves no tap or qdisc.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use scute_testkit::cni::{Attachment, Network, PortMapping};
use serde_json::json;

/// Bounded retries (the guest boots under emulation): the body of a 200.
fn get_eventually(addr: &str) -> String {
    scute_testkit::http::get_200_within(addr, "/group", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no HTTP 200 from {addr}"))
}

fn net(n: u32) -> Network {
    Network::bridge(
        &format!("scute-net-{n}"),
        &format!("scute-b{n}"),
        &format!("10.98.{n}.0/24"),
    )
}

fn server_bundle(att: &Attachment) -> TestBundle {
    let mut b = TestBundle::new(&[
        "sh",
        "-c",
        "trap 'exit 0' TERM; httpd -f -p 8080 -h /etc & wait",
    ]);
    set_netns(&mut b, att);
    b
}

fn set_netns(b: &mut TestBundle, att: &Attachment) {
    b.spec["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network", "path": att.netns_path()}
    ]);
}

struct Bg(Child, String);
impl Bg {
    fn scute(b: &TestBundle, id: &str) -> Self {
        b.save();
        let c = scute(&["run", "-b"])
            .arg(b.path())
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Bg(c, id.to_owned())
    }
    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let st = self.0.wait().unwrap();
        assert_eq!(st.code(), Some(0), "server exit");
        assert_no_leaks(&self.1);
    }
}
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(att: &Attachment, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", att.netns_path().display()))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_netns_clean(att: &Attachment) {
    let links = in_ns(att, &["ip", "-o", "link"]);
    assert!(!links.contains("scute-tap"), "tap left: {links}");
    let q = in_ns(att, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!q.contains("ingress"), "qdisc left: {q}");
}

#[test]
fn published_port_reaches_the_guest_and_runc_alike() {
    let n = std::process::id() % 100 + 100;
    let port = 30000 + (std::process::id() % 10000) as u16;
    let att = net(n)
        .attach(
            &format!("pub-{}", std::process::id()),
            &[PortMapping {
                host_port: port,
                container_port: 8080,
            }],
        )
        .unwrap();
    let b = server_bundle(&att);
    let group = std::fs::read_to_string(b.path().join("rootfs/etc/group")).unwrap();

    let srv = Bg::scute(&b, &unique_id("httpd"));
    assert_eq!(get_eventually(&format!("127.0.0.1:{port}")), group);
    srv.stop();
    assert_netns_clean(&att);

    // The same server under runc, same netns, same port.
    let rid = unique_id("runc-httpd");
    let mut runc = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&rid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(get_eventually(&format!("127.0.0.1:{port}")), group);
    let _ = Command::new("runc").args(["kill", &rid, "KILL"]).status();
    let _ = runc.wait();
    let _ = Command::new("runc").args(["delete", "-f", &rid]).status();
    att.detach().expect("CNI DEL");
    let _ = Command::new("ip")
        .args(["link", "del", &format!("scute-b{n}")])
        .status();
}

#[test]
fn guest_network_matches_cni_and_guests_reach_each_other() {
    let n = std::process::id() % 100 + 1;
    let a = net(n)
        .attach(&format!("a-{}", std::process::id()), &[])
        .unwrap();
    let b_att = net(n)
        .attach(&format!("b-{}", std::process::id()), &[])
        .unwrap();
    let ip_a = a.ip().unwrap();
    let server = server_bundle(&a);
    let srv = Bg::scute(&server, &unique_id("srv"));
    get_eventually(&format!("{ip_a}:8080"));

    // Client in the other netns: identity as CNI set it, and the server by IP.
    // (sysfs would show the host's netns: ask iproute2 inside the netns.)
    let link = in_ns(&b_att, &["ip", "-o", "link", "show", "eth0"]);
    let word_after = |k: &str| {
        let mut it = link.split_whitespace();
        it.find(|w| *w == k);
        it.next().unwrap_or_default().to_owned()
    };
    let (mac, mtu) = (word_after("link/ether"), word_after("mtu"));
    assert!(mac.len() == 17 && !mtu.is_empty(), "{link}");
    let ip_b = b_att.ip().unwrap();
    let gw = format!("10.98.{n}.1");
    let mut c = TestBundle::new(&[
        "sh",
        "-c",
        &format!(
            "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -4 -o addr show eth0; ip route; \
             cat /etc/resolv.conf; hostname; \
             for i in $(seq 1 60); do wget -q -O - http://{ip_a}:8080/group && exit 0; sleep 1; done; exit 9"
        ),
    ]);
    set_netns(&mut c, &b_att);
    // What nerdctl/CRI provide: resolv.conf as a bind mount, the hostname field.
    let resolv = format!("nameserver {gw}\nsearch scute.test\n");
    std::fs::write(c.path().join("resolv.conf"), &resolv).unwrap();
    c.spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/resolv.conf", "type": "bind", "source": "resolv.conf", "options": ["rbind", "ro"]
    }));
    c.spec["hostname"] = json!("web-client");
    let out = run(&c, &unique_id("cli"), None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], mac, "{text}");
    assert_eq!(lines[1], mtu, "{text}");
    assert!(lines[2].contains(&format!("{ip_b}/24")), "{text}");
    assert!(
        text.contains(&format!("default via {gw} dev eth0")),
        "{text}"
    );
    assert!(text.contains("root:x:0:"), "server reached by IP: {text}");
    assert_netns_clean(&b_att);
    srv.stop();
    assert_netns_clean(&a);
    a.detach().unwrap();
    b_att.detach().unwrap();
    let _ = Command::new("ip")
        .args(["link", "del", &format!("scute-b{n}")])
        .status();
}

#[test]
fn missing_netns_and_host_network_are_refused() {
    let mut b = TestBundle::new(&["true"]);
    b.spec["linux"]["namespaces"] =
        json!([{"type": "pid"}, {"type": "network", "path": "/run/netns/nope-scute"}]);
    let out = run(&b, &unique_id("nonet"), None);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/run/netns/nope-scute does not exist"),
        "{}",
        stderr(&out)
    );

    b.spec["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}]);
    let out = run(&b, &unique_id("hostnet"), None);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("host's network"), "{}", stderr(&out));
}

#[test]
fn several_interfaces_each_get_a_nic() {
    let n = std::process::id() % 50 + 60;
    let mut att = net(n)
        .attach(&format!("multi-{}", std::process::id()), &[])
        .unwrap();
    // A second network without a default route (one gateway is enough).
    let mut second = Network::bridge(
        &format!("scute-net2-{n}"),
        &format!("scute-d{n}"),
        &format!("10.94.{n}.0/24"),
    );
    second.conflist["plugins"][0]["ipam"]
        .as_object_mut()
        .unwrap()
        .remove("routes");
    second.add_interface(&mut att, "eth1", &[]).unwrap();
    let want: Vec<(String, String)> = ["eth0", "eth1"]
        .iter()
        .map(|i| {
            let link = in_ns(&att, &["ip", "-o", "link", "show", i]);
            let mut it = link.split_whitespace();
            it.find(|w| *w == "link/ether");
            let mac = it.next().unwrap_or_default().to_owned();
            let addr = in_ns(&att, &["ip", "-4", "-o", "addr", "show", i]);
            let ip = addr
                .split_whitespace()
                .nth(3)
                .unwrap_or_default()
                .to_owned();
            (mac, ip)
        })
        .collect();
    let mut c = TestBundle::new(&[
        "sh",
        "-c",
        "for i in eth0 eth1; do cat /sys/class/net/$i/address; ip -4 -o addr show $i; done",
    ]);
    set_netns(&mut c, &att);
    let out = run(&c, &unique_id("multi"), None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for (mac, ip) in &want {
        assert!(
            text.contains(mac) && text.contains(ip.as_str()),
            "{mac} {ip} not in {text}"
        );
    }
    assert!(!in_ns(&att, &["ip", "-o", "link"]).contains("scute-tap"));
    att.detach().unwrap();
    let _ = Command::new("ip")
        .args(["link", "del", &format!("scute-b{n}")])
        .status();
    let _ = Command::new("ip")
        .args(["link", "del", &format!("scute-d{n}")])
        .status();
}
