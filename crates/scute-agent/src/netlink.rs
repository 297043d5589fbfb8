//! Just enough rtnetlink for the host's network plan: a link brought up or
//! down, renamed, given a MAC or an MTU; an address or a route added. One
//! acknowledged request at a time on a `NETLINK_ROUTE` socket, in the
//! agent's own process: no `ip` binary to exec (under TCG each exec of one
//! cost 10–30 ms of translation, and a plan takes up to eight).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;
const HDR_LEN: usize = 16;

/// What to change on a link; `None` leaves it as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkChange<'a> {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub name: Option<&'a str>,
}

/// A request being built: header, fixed part, then attributes, each
/// padded to 4 bytes as netlink wants.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16) -> Self {
        let mut b = vec![0u8; HDR_LEN];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg(b)
    }

    fn body(mut self, fixed: &[u8]) -> Self {
        self.0.extend_from_slice(fixed);
        self.pad();
        self
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        self.0
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn link_msg(index: u32, c: &LinkChange) -> Msg {
    // struct ifinfomsg: family, pad, type, index, flags, change
    let mut fixed = [0u8; 16];
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    if let Some(up) = c.up {
        fixed[8..12].copy_from_slice(&(if up { IFF_UP } else { 0 }).to_ne_bytes());
        fixed[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    }
    let mut m = Msg::new(RTM_NEWLINK, 0).body(&fixed);
    if let Some(mac) = &c.mac {
        m = m.attr(IFLA_ADDRESS, mac);
    }
    if let Some(name) = c.name {
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        m = m.attr(IFLA_IFNAME, &z);
    }
    if let Some(mtu) = c.mtu {
        m = m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    m
}

fn addr_msg(index: u32, ip: &IpAddr, prefix: u8) -> Msg {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index
    let mut fixed = [0u8; 8];
    fixed[0] = family(ip);
    fixed[1] = prefix;
    fixed[3] = RT_SCOPE_UNIVERSE;
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    let a = octets(ip);
    Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
        .body(&fixed)
        .attr(IFA_LOCAL, &a)
        .attr(IFA_ADDRESS, &a)
}

fn route_msg(dst: &IpAddr, dst_len: u8, gateway: Option<&IpAddr>, oif: u32) -> Msg {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags
    let mut fixed = [0u8; 12];
    fixed[0] = family(dst);
    fixed[1] = dst_len;
    fixed[4] = RT_TABLE_MAIN;
    fixed[5] = RTPROT_BOOT;
    fixed[6] = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    fixed[7] = RTN_UNICAST;
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL).body(&fixed);
    if dst_len > 0 {
        m = m.attr(RTA_DST, &octets(dst));
    }
    if let Some(g) = gateway {
        m = m.attr(RTA_GATEWAY, &octets(g));
    }
    m.attr(RTA_OIF, &oif.to_ne_bytes())
}

/// The kernel's answer to request `seq` in `buf`: `Some(0)` for an ack,
/// `Some(-errno)` for a refusal, `None` if `buf` doesn't hold it.
fn ack_in(buf: &[u8], seq: u32) -> Option<i32> {
    let mut at = 0;
    while at + HDR_LEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        if len < HDR_LEN || at + len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().ok()?);
        let s = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().ok()?);
        if kind == NLMSG_ERROR && s == seq && len >= HDR_LEN + 4 {
            return Some(i32::from_ne_bytes(
                buf[at + HDR_LEN..at + HDR_LEN + 4].try_into().ok()?,
            ));
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// `10.4.0.2/24`, `fd00::2/64`; a bare address is a host (/32, /128).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|e| format!("address {s:?}: {e}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("address {s:?}: prefix length is not 0..={max}"))?,
        None => max,
    };
    Ok((ip, len))
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .and_then(|p| (p.len() == 2).then(|| u8::from_str_radix(p, 16).ok())?)
            .ok_or_else(|| format!("MAC {s:?} is not six hex bytes"))?;
    }
    if parts.next().is_some() {
        return Err(format!("MAC {s:?} is not six hex bytes"));
    }
    Ok(mac)
}

pub fn link_index(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("link name {name:?}"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no link named {name}")),
        i => Ok(i),
    }
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Sends `m` and waits for its ack; a refusal is its errno.
    fn call(&mut self, m: Msg) -> io::Result<()> {
        self.seq += 1;
        let req = m.finish(self.seq);
        // SAFETY: an all-zero sockaddr_nl is the kernel's address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: req and `to` outlive the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match ack_in(&buf[..n as usize], self.seq) {
                Some(0) => return Ok(()),
                Some(e) => return Err(io::Error::from_raw_os_error(-e)),
                None => continue,
            }
        }
    }

    pub fn set_link(&mut self, index: u32, c: &LinkChange) -> io::Result<()> {
        self.call(link_msg(index, c))
    }

    pub fn add_address(&mut self, index: u32, ip: &IpAddr, prefix: u8) -> io::Result<()> {
        self.call(addr_msg(index, ip, prefix))
    }

    pub fn add_route(
        &mut self,
        dst: &IpAddr,
        dst_len: u8,
        gateway: Option<&IpAddr>,
        oif: u32,
    ) -> io::Result<()> {
        self.call(route_msg(dst, dst_len, gateway, oif))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn a_link_request_carries_its_index_flags_and_padded_attributes() {
        let c = LinkChange {
            up: Some(true),
            mtu: Some(1450),
            name: Some("eth0"),
            ..Default::default()
        };
        let b = link_msg(7, &c).finish(3);
        assert_eq!(u32_at(&b, 0) as usize, b.len());
        assert_eq!(u16_at(&b, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&b, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&b, 8), 3);
        assert_eq!(u32_at(&b, 16 + 4), 7, "ifi_index");
        assert_eq!(u32_at(&b, 16 + 8), IFF_UP, "ifi_flags");
        assert_eq!(u32_at(&b, 16 + 12), IFF_UP, "ifi_change");
        // "eth0\0" is 5 bytes: attribute length 9, padded to 12.
        assert_eq!(u16_at(&b, 32), 9);
        assert_eq!(u16_at(&b, 34), IFLA_IFNAME);
        assert_eq!(&b[36..41], b"eth0\0");
        assert_eq!(u16_at(&b, 44), 8);
        assert_eq!(u16_at(&b, 46), IFLA_MTU);
        assert_eq!(u32_at(&b, 48), 1450);
        assert_eq!(b.len(), 52);
    }

    #[test]
    fn bringing_a_link_down_changes_only_the_up_flag() {
        let down = LinkChange {
            up: Some(false),
            ..Default::default()
        };
        let b = link_msg(2, &down).finish(1);
        assert_eq!((u32_at(&b, 24), u32_at(&b, 28)), (0, IFF_UP));
        let keep = link_msg(2, &LinkChange::default()).finish(1);
        assert_eq!((u32_at(&keep, 24), u32_at(&keep, 28)), (0, 0));
    }

    #[test]
    fn a_default_route_has_no_destination_and_a_gateway_makes_it_universal() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let gw: IpAddr = "10.4.0.1".parse().unwrap();
        let b = route_msg(&any, 0, Some(&gw), 2).finish(1);
        assert_eq!(b[16], libc::AF_INET as u8);
        assert_eq!(b[16 + 6], RT_SCOPE_UNIVERSE);
        assert_eq!(u16_at(&b, 30), RTA_GATEWAY);
        assert_eq!(&b[32..36], &[10, 4, 0, 1]);
        assert_eq!(u16_at(&b, 38), RTA_OIF);
        let net: IpAddr = "10.4.0.0".parse().unwrap();
        let b = route_msg(&net, 24, None, 2).finish(1);
        assert_eq!(b[16 + 6], RT_SCOPE_LINK);
        assert_eq!(u16_at(&b, 30), RTA_DST);
    }

    #[test]
    fn an_address_request_names_family_prefix_and_link() {
        let ip: IpAddr = "fd00::2".parse().unwrap();
        let b = addr_msg(4, &ip, 64).finish(9);
        assert_eq!(
            u16_at(&b, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!((b[16], b[17]), (libc::AF_INET6 as u8, 64));
        assert_eq!(u32_at(&b, 20), 4);
        assert_eq!(u16_at(&b, 24), 20, "IFA_LOCAL carries 16 bytes");
        assert_eq!(b.len(), 24 + 20 + 20);
    }

    #[test]
    fn acks_are_found_by_sequence_and_bad_lengths_are_not_read() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&5u32.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(ack_in(&ack, 5), Some(-17));
        assert_eq!(ack_in(&ack, 6), None);
        let mut short = ack.clone();
        short[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(ack_in(&short, 5), None);
        let mut long = ack.clone();
        long[0..4].copy_from_slice(&400u32.to_ne_bytes());
        assert_eq!(ack_in(&long, 5), None);
        assert_eq!(ack_in(&ack[..10], 5), None);
    }

    /// The requests as the kernel takes them, in a network namespace of
    /// the test thread's own (needs root, as the whole suite does).
    #[test]
    fn the_kernel_takes_the_requests_and_refuses_duplicates() {
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            let mut nl = Netlink::open().unwrap();
            let lo = link_index("lo").unwrap();
            let up = LinkChange {
                up: Some(true),
                mtu: Some(1400),
                ..Default::default()
            };
            nl.set_link(lo, &up).unwrap();
            let (ip, len) = parse_cidr("10.9.0.1/24").unwrap();
            nl.add_address(lo, &ip, len).unwrap();
            let again = nl.add_address(lo, &ip, len).unwrap_err();
            assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
            let (net, len) = parse_cidr("10.10.0.0/16").unwrap();
            let gw: IpAddr = "10.9.0.2".parse().unwrap();
            nl.add_route(&net, len, Some(&gw), lo).unwrap();
            let any: IpAddr = "0.0.0.0".parse().unwrap();
            nl.add_route(&any, 0, Some(&gw), lo).unwrap();
            // Destination, gateway and mask, little-endian hex.
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            assert!(
                routes
                    .lines()
                    .any(|l| l.contains("\t00000A0A\t0200090A\t") && l.contains("\t0000FFFF\t")),
                "{routes}"
            );
            assert!(
                routes.lines().any(|l| l.contains("\t00000000\t0200090A\t")),
                "{routes}"
            );
            let gone = nl.set_link(999_999, &up).unwrap_err();
            assert_eq!(gone.raw_os_error(), Some(libc::ENODEV), "{gone}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn cidrs_and_macs_parse_or_say_why_not() {
        assert_eq!(
            parse_cidr("10.4.0.2/24").unwrap(),
            ("10.4.0.2".parse().unwrap(), 24)
        );
        assert_eq!(parse_cidr("10.4.0.1").unwrap().1, 32);
        assert_eq!(parse_cidr("fd00::1").unwrap().1, 128);
        assert!(parse_cidr("10.4.0.2/33").unwrap_err().contains("prefix"));
        assert!(parse_cidr("default").is_err());
        assert_eq!(
            parse_mac("02:42:ac:11:00:0A").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 0x0a]
        );
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:0a:01",
            "2:42:ac:11:00:0a",
            "zz:42:ac:11:00:0a",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
