//! Ready VMs: sandboxes booted before anyone asks for them.
//!
//! Three kinds of process take part:
//! - **the pool** (`scute pool`, [`serve`]) keeps `[pool] size` members
//!   booting or ready, one boot at a time, within `[pool] max_idle_mib` of
//!   host memory, and writes its state to `status.json` for `scute check`;
//! - **a member** (`scute pool-vm`, [`member`]), one per ready VM, boots it
//!   exactly as a shim would (its own state dir, jail uid, cgroup, and a
//!   virtiofsd serving an empty share), publishes a socket in `ready/` and
//!   waits. Its death signal is SIGTERM from the pool, so an unclaimed VM
//!   goes when the pool goes;
//! - **a shim** ([`claim`]) renames a socket of its VM shape from `ready/`
//!   into `claimed/` (a rename succeeds once: no VM goes to two sandboxes),
//!   connects, and receives the agent connection (SCM_RIGHTS) and the VM's
//!   pids and paths. The member then drops its death signal: the VM lives as
//!   long as that connection. When the shim says `kill` or its end closes
//!   (the shim died), the member kills the VM, releases the rest and exits.
//!
//! A member's VM has run no tenant's container before it is claimed (only
//! scute's own warm-up container), and it is claimed once: no tenant
//! inherits another's guest. Each pool VM has one NIC, on a tap alone in a
//! netns of its own (microvm can't hot-plug one later): a sandbox with a
//! one-interface netns (CNI, a pod) gets the tap moved into its netns and
//! the guest NIC re-addressed; one without a netns leaves it unused.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

pub use crate::handover::{
    cannot_serve, claim, dir, shape, status, AdoptedVm, ClaimReply, Claimed, PoolNicInfo, Status,
};
use crate::handover::{send_with_fd, write_status, ClaimRequest};
use crate::procs::{alive, pss_kib};
use crate::{Config, Error};

// ---------------------------------------------------------------- member

/// Lines a member prints for the pool on its stdout.
fn tell(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs one pool member: boots VM `vm_id`, waits to be claimed, hands the
/// VM over, and lives as long as the claim. Ends on SIGTERM (from the
/// pool's death while unclaimed) after releasing everything.
pub async fn member(config: &Config, vm_id: &str) -> Result<(), Error> {
    let config = &config.for_pool();
    // Death signal set between fork and exec by the pool; if the pool was
    // already gone then, nobody will ever claim or stop this member.
    if nix::unistd::getppid().as_raw() == 1 {
        return Err(Error::Config {
            path: crate::config::DEFAULT_PATH.into(),
            message: "scute pool-vm is started by `scute pool`, not by hand".into(),
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::io("install the SIGTERM handler"))?;
    let t0 = Instant::now();
    let boot = crate::sandbox::boot(config, vm_id, crate::sandbox::Net::Pool, None, |_| Ok(()));
    let mut b = tokio::select! {
        r = boot => match r {
            Ok((b, ())) => b,
            Err(e) => {
                tell(&format!("failed {}", one_line(&e.to_string())));
                return Err(e);
            }
        },
        _ = sigterm.recv() => return Ok(()),
    };
    // Under TCG a guest's first container create translates the whole
    // create path (~330 ms, ~90 ms for the next one): take that hit here,
    // with scute's own busybox, not on a tenant's start.
    let t_warm = Instant::now();
    let shared = b.dir.join("shared");
    let work = b.dir.join("warmup");
    let warm = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(60), warm_up(&mut b.stream, &mut b.decoder, &shared, &work)) => {
            r.unwrap_or_else(|_| Err("no answer within 60 s".into()))
        }
        _ = sigterm.recv() => return Ok(()),
    };
    crate::share::unshare_container(&shared, WARMUP_ID);
    crate::state::remove_tree(&work);
    if let Err(e) = warm {
        tell(&format!("failed warm-up container: {}", one_line(&e)));
        return Ok(());
    }
    let warm_ms = t_warm.elapsed().as_millis();
    let d = dir(config);
    let tmp = d.join("ready").join(format!(".{vm_id}.tmp"));
    let published = d
        .join("ready")
        .join(format!("{}.{vm_id}.sock", shape(config)));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        tokio::net::UnixListener::bind(&tmp).map_err(Error::io("bind the member socket"))?;
    std::fs::rename(&tmp, &published).map_err(Error::io("publish the member socket"))?;
    let ready_at = Instant::now();
    tell(&format!(
        "ready {} {} {} {warm_ms}",
        b.vm.pid(),
        b.virtiofsd_pid(),
        t0.elapsed().as_millis()
    ));
    tracing::info!(
        pool_vm = vm_id,
        boot_ms = t0.elapsed().as_millis() as u64,
        warm_ms = warm_ms as u64,
        "pool VM ready"
    );
    let unpublish = |why: &str| {
        let _ = std::fs::remove_file(&published);
        let _ = std::fs::remove_file(d.join("claimed").join(format!("{vm_id}.sock")));
        tracing::info!(pool_vm = vm_id, "{why}");
    };
    // Wait for a claim, the VM's death, or SIGTERM.
    let conn = loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => break s,
                Err(e) => tracing::warn!(pool_vm = vm_id, "accept: {e}"),
            },
            _ = sigterm.recv() => {
                unpublish("stopped before it was claimed");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(st) = b.vm.exited().or_else(|| b.virtiofsd_exited()) {
                    unpublish("died before it was claimed");
                    tell(&format!("failed the ready VM died: {st}"));
                    return Ok(());
                }
            }
        }
    };
    drop(listener);
    unpublish("claimed");
    let conn = conn.into_std().map_err(Error::io("claim connection"))?;
    conn.set_nonblocking(false)
        .map_err(Error::io("claim connection"))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut rd = BufReader::new(conn.try_clone().map_err(Error::io("claim connection"))?);
    let req: ClaimRequest = match rd
        .by_ref()
        .take(4096)
        .read_line(&mut line)
        .ok()
        .and_then(|_| serde_json::from_str(line.trim()).ok())
    {
        Some(r) => r,
        None => {
            tell("failed a claim that sent no valid request");
            return Ok(());
        }
    };
    // From here the VM is the claimant's: it must outlive the pool.
    // SAFETY: prctl on this process only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
    let reply = ClaimReply {
        vm_id: vm_id.to_owned(),
        vmm_pid: b.vm.pid(),
        virtiofsd_pid: b.virtiofsd_pid(),
        rootfs_virtiofsd_pid: b.rootfs_virtiofsd_pid(),
        shared: b.dir.join("shared"),
        console: b.dir.join("console.log"),
        ready: b.ready.clone(),
        accel_reason: b.accel_reason.clone(),
        leftover: std::mem::take(&mut b.decoder).into_buffered(),
        ready_for_ms: ready_at.elapsed().as_millis() as u64,
        nic: b
            .pool_nic()
            .map(|(netns, tap, mac)| PoolNicInfo { netns, tap, mac }),
    };
    let text = serde_json::to_string(&reply).unwrap_or_default();
    let agent = b.stream.as_raw_fd();
    if let Err(e) = send_with_fd(&conn, format!("{text}\n").as_bytes(), agent) {
        tell(&format!("failed hand the VM over: {e}"));
        return Ok(());
    }
    tracing::info!(pool_vm = vm_id, sandbox_id = %req.sandbox_id, shim_pid = req.shim_pid, "pool VM handed over");
    tell(&format!("claimed {}", req.sandbox_id));
    let crate::sandbox::Booted {
        mut vm,
        owned,
        dir,
        stream,
        ..
    } = b;
    // The claimant reads the agent from now on.
    drop(stream);
    // Live as long as the claim: its end closing, `kill`, or SIGTERM.
    let _ = conn.set_read_timeout(None);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<bool>(1);
    std::thread::spawn(move || {
        let mut l = String::new();
        let killed = rd
            .read_line(&mut l)
            .is_ok_and(|n| n > 0 && l.trim() == "kill");
        let _ = done_tx.blocking_send(killed);
    });
    let answer = tokio::select! {
        k = done_rx.recv() => k.unwrap_or(false),
        _ = sigterm.recv() => false,
        _ = async {
            while vm.exited().is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        } => false,
    };
    vm.kill();
    drop(vm);
    drop(owned);
    drop(dir);
    if answer {
        let mut c = &conn;
        let _ = c.write_all(b"done\n");
    }
    tracing::info!(pool_vm = vm_id, sandbox_id = %req.sandbox_id, "pool VM released");
    Ok(())
}

/// The warm-up container's id (not a valid containerd id: no clash).
const WARMUP_ID: &str = "scute-warmup";

/// Creates, starts, awaits and deletes one container (busybox `true`) in
/// the fresh VM, speaking the protocol frame by frame on the agent stream
/// so that nothing past the last answer is read.
async fn warm_up(
    stream: &mut tokio::net::UnixStream,
    dec: &mut scute_protocol::FrameDecoder,
    shared: &Path,
    work: &Path,
) -> Result<(), String> {
    use scute_protocol::{CreateContainer, Frame, FrameKind, Request, Response, StdioSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    crate::busybox::bundle(work, &["true"], &["true"])
        .map_err(|e| format!("busybox bundle: {e}"))?;
    let bundle = crate::bundle::Bundle::load(work).map_err(|e| e.to_string())?;
    let spec = crate::share::share_container(shared, WARMUP_ID, &bundle, &[])
        .map_err(|e| e.to_string())?;
    let mut exited = false;
    let mut buf = vec![0u8; 16 * 1024];
    let requests = [
        Request::CreateContainer(CreateContainer {
            container_id: WARMUP_ID.into(),
            spec,
            stdio: StdioSpec::default(),
        }),
        Request::StartContainer {
            container_id: WARMUP_ID.into(),
        },
        Request::DeleteContainer {
            container_id: WARMUP_ID.into(),
            force: false,
        },
    ];
    for (i, req) in requests.iter().enumerate() {
        let id = i as u32 + 1;
        let delete = matches!(req, Request::DeleteContainer { .. });
        let payload = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        let bytes = scute_protocol::encode(&Frame::new(FrameKind::Request, id, payload))
            .map_err(|e| e.to_string())?;
        let mut answered = false;
        let mut sent = false;
        loop {
            while let Some(f) = dec.next_frame().map_err(|e| e.to_string())? {
                match f.kind {
                    FrameKind::Response if f.stream == id => {
                        match serde_json::from_slice::<Response>(&f.payload)
                            .map_err(|e| e.to_string())?
                        {
                            Response::Ok(_) => answered = true,
                            Response::Err(e) => {
                                return Err(format!(
                                    "{}: {}",
                                    crate::client::op_name(req),
                                    e.message
                                ))
                            }
                        }
                    }
                    FrameKind::Event => {
                        if let Ok(scute_protocol::Event::Exited { container_id, .. }) =
                            serde_json::from_slice(&f.payload)
                        {
                            exited |= container_id == WARMUP_ID;
                        }
                    }
                    _ => {}
                }
            }
            // The delete waits for the exit: `true` may end before or after
            // its start is answered.
            if !sent && (!delete || exited) {
                stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
                sent = true;
            }
            if answered {
                break;
            }
            match stream.read(&mut buf).await {
                Ok(0) => return Err("agent channel closed".into()),
                Ok(n) => dec.push(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------- pool

enum Seen {
    Line(String),
    Exited(String),
}

#[derive(Debug, PartialEq)]
enum State {
    Booting,
    Ready { pids: (u32, u32) },
    Claimed,
}

struct Member {
    state: State,
    pid: u32,
    last_failure: Option<String>,
}

/// Runs the pool until SIGTERM or SIGINT. `exe` is the scute binary the
/// members run (`scute pool-vm`), `config_path` the config they read.
pub async fn serve(config: &Config, config_path: Option<&Path>, exe: &Path) -> Result<(), Error> {
    let d = dir(config);
    for sub in ["", "ready", "claimed"] {
        let p = d.join(sub);
        std::fs::create_dir_all(&p).map_err(Error::io(format!("create {}", p.display())))?;
        crate::state::set_private(&p)?;
    }
    if let Some(st) = status(config) {
        if st.pid != std::process::id() {
            return Err(Error::Config {
                path: config_path
                    .unwrap_or(Path::new(crate::config::DEFAULT_PATH))
                    .to_owned(),
                message: format!(
                    "a pool already runs for {} (pid {})",
                    config.state_dir.display(),
                    st.pid
                ),
            });
        }
    }
    // Sockets of members that died with an earlier pool.
    for sub in ["ready", "claimed"] {
        for e in std::fs::read_dir(d.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::io("install the SIGTERM handler"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(Error::io("install the SIGINT handler"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Seen)>();
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    let mut st = Status {
        pid: std::process::id(),
        size: config.pool.size,
        max_idle_mib: config.pool.max_idle_mib,
        shape: shape(&config.for_pool()),
        ..Status::default()
    };
    let mut failures: VecDeque<String> = VecDeque::new();
    let mut serial = 0u64;
    let mut backoff = Duration::ZERO;
    let mut next_boot = Instant::now();
    let mut per_vm_kib = 0u64;
    eprintln!(
        "scute pool: pid {}, {} ready VM(s) of shape {} in {}",
        st.pid,
        config.pool.size,
        st.shape,
        d.display()
    );
    loop {
        // Refill: one boot at a time, within the idle memory allowance.
        let ready_pids: Vec<(u32, u32)> = members
            .values()
            .filter_map(|m| match m.state {
                State::Ready { pids } => Some(pids),
                _ => None,
            })
            .collect();
        let idle_kib: u64 = ready_pids
            .iter()
            .map(|(q, v)| pss_kib(*q) + pss_kib(*v))
            .sum();
        let booting = members
            .values()
            .filter(|m| m.state == State::Booting)
            .count() as u32;
        let held = ready_pids.len() as u32 + booting;
        let cap_kib = config.pool.max_idle_mib as u64 * 1024;
        st.note = None;
        if held < config.pool.size && booting == 0 {
            if per_vm_kib > 0 && idle_kib + per_vm_kib > cap_kib {
                st.note = Some(format!(
                    "holding {held} of {}: another ready VM (~{} MiB) would pass max_idle_mib = {}",
                    config.pool.size,
                    per_vm_kib / 1024,
                    config.pool.max_idle_mib
                ));
            } else if Instant::now() >= next_boot {
                serial += 1;
                let vm_id = format!("pool-{}-{serial}", std::process::id());
                match spawn_member(exe, config_path, &vm_id, tx.clone()) {
                    Ok(pid) => {
                        members.insert(
                            vm_id,
                            Member {
                                state: State::Booting,
                                pid,
                                last_failure: None,
                            },
                        );
                    }
                    Err(e) => {
                        failures.push_back(format!("start a member: {e}"));
                        st.failed += 1;
                        backoff =
                            (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                        next_boot = Instant::now() + backoff;
                    }
                }
            } else {
                st.note = Some(format!(
                    "the last boot failed: next try in {} s",
                    next_boot
                        .saturating_duration_since(Instant::now())
                        .as_secs()
                ));
            }
        }
        while failures.len() > 5 {
            failures.pop_front();
        }
        st.ready = members
            .values()
            .filter(|m| matches!(m.state, State::Ready { .. }))
            .count() as u32;
        st.booting = members
            .values()
            .filter(|m| m.state == State::Booting)
            .count() as u32;
        st.failures = failures.iter().cloned().collect();
        st.idle_pss_mib = idle_kib / 1024;
        write_status(&d, &st);

        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = term.recv() => None,
            _ = int.recv() => None,
            _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
        };
        let Some((vm_id, seen)) = ev else { break };
        let Some(m) = members.get_mut(&vm_id) else {
            continue;
        };
        match seen {
            Seen::Line(l) => {
                let (word, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
                match word {
                    "ready" => {
                        let mut it = rest.split(' ').filter_map(|x| x.parse::<u32>().ok());
                        let pids = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                        m.state = State::Ready { pids };
                        backoff = Duration::ZERO;
                        let kib = pss_kib(pids.0) + pss_kib(pids.1);
                        per_vm_kib = per_vm_kib.max(kib);
                        let (total, warm) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                        eprintln!(
                            "scute pool: {vm_id} ready in {total} ms (of which warm-up {warm} ms)"
                        );
                    }
                    "claimed" => {
                        m.state = State::Claimed;
                        st.handed_out += 1;
                        eprintln!("scute pool: {vm_id} handed to sandbox {rest}");
                    }
                    "failed" => m.last_failure = Some(rest.to_owned()),
                    _ => {}
                }
            }
            Seen::Exited(how) => {
                let m = members.remove(&vm_id).expect("present");
                // A member that died without its own cleanup (SIGKILL, a
                // crash) left its VM's state dir, cgroups, uid and netns.
                let left = config.state_dir.join(&vm_id);
                if left.exists() {
                    eprintln!("scute pool: {vm_id} left its state behind: cleaning it");
                    crate::stale::cleanup(&left);
                }
                crate::network::remove_pool_netns(&vm_id);
                if m.state != State::Claimed {
                    let why = m
                        .last_failure
                        .unwrap_or_else(|| format!("member exited ({how})"));
                    eprintln!("scute pool: {vm_id} failed: {why}");
                    failures.push_back(format!("{vm_id}: {why}"));
                    st.failed += 1;
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    next_boot = Instant::now() + backoff;
                }
            }
        }
    }
    // Unclaimed VMs go with the pool; claimed ones belong to their sandboxes.
    eprintln!("scute pool: stopping");
    let mut waiting: Vec<u32> = Vec::new();
    for m in members.values().filter(|m| m.state != State::Claimed) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(m.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        waiting.push(m.pid);
    }
    let until = Instant::now() + Duration::from_secs(15);
    while waiting.iter().any(|p| alive(*p)) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing of the pool is left once its members are gone (a member
    // still stopping keeps its socket, and so the dir).
    let _ = std::fs::remove_file(d.join("status.json"));
    for sub in ["ready", "claimed", ""] {
        let _ = std::fs::remove_dir(d.join(sub));
    }
    Ok(())
}

fn spawn_member(
    exe: &Path,
    config_path: Option<&Path>,
    vm_id: &str,
    tx: tokio::sync::mpsc::UnboundedSender<(String, Seen)>,
) -> std::io::Result<u32> {
    let mut cmd = std::process::Command::new(exe);
    if let Some(p) = config_path {
        cmd.arg("--config").arg(p);
    }
    cmd.args(["pool-vm", "--vm-id", vm_id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    // SAFETY: prctl and close_range/fcntl only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            scute_hypervisor::cloexec_from_3()
        });
    }
    let mut child = scute_hypervisor::spawner::spawn(cmd)?;
    let pid = child.id();
    let out = child.stdout.take().expect("piped");
    let id = vm_id.to_owned();
    std::thread::Builder::new()
        .name(format!("member-{vm_id}"))
        .spawn(move || {
            for line in BufReader::new(out).take(1 << 20).lines() {
                let Ok(l) = line else { break };
                let _ = tx.send((id.clone(), Seen::Line(l)));
            }
            let how = child
                .wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            let _ = tx.send((id, Seen::Exited(how)));
        })?;
    Ok(pid)
}
