//! Guest network configuration: the host's plan (names, MACs, MTU, IPv4
//! addresses, routes) applied with busybox's `ip`, which the initramfs ships.

use std::io::Read;
use std::process::{Command, Stdio};

use scute_protocol::{AgentError, ErrorCode, NetworkConfig};

use crate::reaper::{Reaper, SPAWN_LOCK};

const BUSYBOX: &str = "/bin/busybox";

/// Runs `busybox ip ARGS`; registered with the reaper (we are PID 1).
fn ip(reaper: &Reaper, args: &[&str]) -> Result<(), String> {
    let guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(BUSYBOX)
        .arg("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {BUSYBOX} ip: {e}"))?;
    let exit = reaper.watch(child.id() as i32);
    drop(guard);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    match exit.blocking_recv() {
        Ok(scute_protocol::ExitStatus::Code(0)) => Ok(()),
        other => Err(format!("ip {}: {:?} {}", args.join(" "), other, err.trim())),
    }
}

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
pub fn configure(reaper: &Reaper, cfg: &NetworkConfig) -> Result<(), AgentError> {
    let fail = |m: String| AgentError::new(ErrorCode::FailedPrecondition, m);
    ip(reaper, &["link", "set", "lo", "up"]).map_err(fail)?;
    for i in &cfg.interfaces {
        let now = i.guest_mac.as_deref().unwrap_or(&i.mac);
        let cur = name_by_mac(now)
            .ok_or_else(|| fail(format!("no guest NIC with MAC {now} (for {})", i.name)))?;
        if now != i.mac {
            ip(reaper, &["link", "set", "dev", &cur, "down"]).map_err(fail)?;
            ip(reaper, &["link", "set", "dev", &cur, "address", &i.mac]).map_err(fail)?;
        }
        if cur != i.name {
            ip(reaper, &["link", "set", "dev", &cur, "down"]).map_err(fail)?;
            ip(reaper, &["link", "set", "dev", &cur, "name", &i.name]).map_err(fail)?;
        }
        let mtu = i.mtu.to_string();
        ip(reaper, &["link", "set", "dev", &i.name, "mtu", &mtu, "up"]).map_err(fail)?;
        for a in &i.addresses {
            ip(reaper, &["addr", "add", a, "dev", &i.name]).map_err(fail)?;
        }
    }
    for r in &cfg.routes {
        let mut args = vec!["route", "add", r.destination.as_str()];
        if let Some(g) = &r.gateway {
            args.extend(["via", g.as_str()]);
        }
        args.extend(["dev", r.device.as_str()]);
        match ip(reaper, &args) {
            Ok(()) => {}
            // The kernel made the on-link route when the address was added.
            Err(e) if e.contains("exists") => {}
            Err(e) => return Err(fail(e)),
        }
    }
    tracing::info!(
        interfaces = cfg.interfaces.len(),
        routes = cfg.routes.len(),
        "network configured"
    );
    Ok(())
}
