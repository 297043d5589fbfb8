//! Guest network configuration: the host's plan (names, MACs, MTU,
//! addresses, routes) applied over rtnetlink (see `netlink`).

use scute_protocol::{AgentError, ErrorCode, NetworkConfig};

use crate::netlink::{self, LinkChange, Netlink};

fn name_by_mac(mac: &str) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|e| {
            let addr = std::fs::read_to_string(e.path().join("address")).ok()?;
            addr.trim()
                .eq_ignore_ascii_case(mac)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// Applies `cfg` (blocking).
pub fn configure(cfg: &NetworkConfig) -> Result<(), AgentError> {
    let fail = |m: String| AgentError::new(ErrorCode::FailedPrecondition, m);
    let mut nl = Netlink::open().map_err(|e| fail(format!("open a netlink socket: {e}")))?;
    let up = LinkChange {
        up: Some(true),
        ..Default::default()
    };
    let down = LinkChange {
        up: Some(false),
        ..Default::default()
    };
    let lo = netlink::link_index("lo").map_err(fail)?;
    nl.set_link(lo, &up)
        .map_err(|e| fail(format!("bring lo up: {e}")))?;
    for i in &cfg.interfaces {
        let now = i.guest_mac.as_deref().unwrap_or(&i.mac);
        let cur = name_by_mac(now)
            .ok_or_else(|| fail(format!("no guest NIC with MAC {now} (for {})", i.name)))?;
        let index = netlink::link_index(&cur).map_err(fail)?;
        let step = |what: &str, e: std::io::Error| fail(format!("{cur}: {what}: {e}"));
        if now != i.mac || cur != i.name {
            // A link is renamed (and is safest re-addressed) while down.
            nl.set_link(index, &down)
                .map_err(|e| step("bring down", e))?;
        }
        if now != i.mac {
            let mac = netlink::parse_mac(&i.mac).map_err(fail)?;
            nl.set_link(
                index,
                &LinkChange {
                    mac: Some(mac),
                    ..Default::default()
                },
            )
            .map_err(|e| step(&format!("set MAC {}", i.mac), e))?;
        }
        if cur != i.name {
            nl.set_link(
                index,
                &LinkChange {
                    name: Some(&i.name),
                    ..Default::default()
                },
            )
            .map_err(|e| step(&format!("rename to {}", i.name), e))?;
        }
        nl.set_link(
            index,
            &LinkChange {
                up: Some(true),
                mtu: Some(i.mtu),
                ..Default::default()
            },
        )
        .map_err(|e| step(&format!("set MTU {} and bring up", i.mtu), e))?;
        for a in &i.addresses {
            let (ip, len) = netlink::parse_cidr(a).map_err(fail)?;
            nl.add_address(index, &ip, len)
                .map_err(|e| step(&format!("add address {a}"), e))?;
        }
    }
    for r in &cfg.routes {
        let oif = netlink::link_index(&r.device).map_err(fail)?;
        let gateway = r
            .gateway
            .as_deref()
            .map(|g| {
                g.parse::<std::net::IpAddr>()
                    .map_err(|e| fail(format!("gateway {g:?}: {e}")))
            })
            .transpose()?;
        let (dst, len) = match r.destination.as_str() {
            "default" => match gateway {
                Some(std::net::IpAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
                _ => (std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
            },
            d => netlink::parse_cidr(d).map_err(fail)?,
        };
        match nl.add_route(&dst, len, gateway.as_ref(), oif) {
            Ok(()) => {}
            // The kernel made the on-link route when the address was added.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(fail(format!(
                    "add route {} via {:?} dev {}: {e}",
                    r.destination, r.gateway, r.device
                )))
            }
        }
    }
    tracing::info!(
        interfaces = cfg.interfaces.len(),
        routes = cfg.routes.len(),
        "network configured"
    );
    Ok(())
}
