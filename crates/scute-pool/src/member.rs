//! A pool member (`scute pool-vm`): boots one VM, warms it up, publishes
//! it in `ready/`, waits for a claim, hands the VM over, and lives as long
//! as the claim. Each step is a function of its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use scute_protocol::{CreateContainer, Event, StdioSpec};
use scute_runtime::handover::{dir, send_with_fd, shape, ClaimRequest};
use scute_runtime::poolvm::PoolVm;
use scute_runtime::{Config, Error};
use tokio::signal::unix::Signal;

/// Lines a member prints for the pool on its stdout.
fn tell(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
            path: scute_runtime::config::DEFAULT_PATH.into(),
            message: "scute pool-vm is started by `scute pool`, not by hand".into(),
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::io("install the SIGTERM handler"))?;
    let t0 = Instant::now();
    let Some((mut vm, warm_ms)) = boot_and_warm_up(config, vm_id, &mut sigterm).await? else {
        return Ok(());
    };
    let timing = (t0, warm_ms);
    let Some((conn, ready_at)) =
        publish_and_wait(config, vm_id, &mut vm, &mut sigterm, timing).await?
    else {
        return Ok(());
    };
    let Some((req, rd)) = hand_over(vm_id, &mut vm, conn, ready_at)? else {
        return Ok(());
    };
    live_with_the_claim(vm, rd, &mut sigterm).await;
    tracing::info!(pool_vm = vm_id, sandbox_id = %req.sandbox_id, "pool VM released");
    Ok(())
}

/// Boots the VM and runs the warm-up container in it (the VM, and the
/// warm-up's ms); None if SIGTERM came first or the warm-up failed (told
/// to the pool).
async fn boot_and_warm_up(
    config: &Config,
    vm_id: &str,
    sigterm: &mut Signal,
) -> Result<Option<(PoolVm, u128)>, Error> {
    let mut vm = tokio::select! {
        r = PoolVm::boot(config, vm_id) => match r {
            Ok(vm) => vm,
            Err(e) => {
                tell(&format!("failed {}", one_line(&e.to_string())));
                return Err(e);
            }
        },
        _ = sigterm.recv() => return Ok(None),
    };
    // Under TCG a guest's first container create translates the whole
    // create path (~330 ms, ~90 ms for the next one): take that hit here,
    // with scute's own busybox, not on a tenant's start.
    let t_warm = Instant::now();
    let work = vm.dir().join("warmup");
    let warm = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(60), warm_up(&mut vm, &work)) => {
            r.unwrap_or_else(|_| Err(Error::Host("the warm-up got no answer within 60 s".into())))
        }
        _ = sigterm.recv() => return Ok(None),
    };
    scute_runtime::share::unshare_container(&vm.shared_dir(), WARMUP_ID);
    scute_runtime::state::remove_tree(&work);
    if let Err(e) = warm {
        tell(&format!(
            "failed warm-up container: {}",
            one_line(&e.to_string())
        ));
        return Ok(None);
    }
    Ok(Some((vm, t_warm.elapsed().as_millis())))
}

/// The warm-up container's id (not a valid containerd id: no clash).
const WARMUP_ID: &str = "scute-warmup";

/// Creates, starts, awaits and deletes one container (busybox `true`) in
/// the fresh VM, then takes the agent connection back from the client,
/// with whatever it read past its last frame, for the claimant.
async fn warm_up(vm: &mut PoolVm, work: &std::path::Path) -> Result<(), Error> {
    crate::busybox::bundle(work, &["true"], &["true"])
        .map_err(Error::io("write the warm-up bundle"))?;
    let bundle = scute_runtime::bundle::Bundle::load(work)?;
    let spec = scute_runtime::share::share_container(&vm.shared_dir(), WARMUP_ID, &bundle, &[])?;
    let (client, mut events) = vm
        .client()
        .ok_or_else(|| Error::Host("the agent connection is held by another client".into()))?;
    let run = async {
        client
            .create_container(CreateContainer {
                container_id: WARMUP_ID.into(),
                spec,
                stdio: StdioSpec::default(),
            })
            .await?;
        client.start_container(WARMUP_ID).await?;
        // `true` may end before or after its start is answered.
        loop {
            match events.recv().await {
                Some(Event::Exited { container_id, .. }) if container_id == WARMUP_ID => break,
                Some(_) => {}
                None => {
                    return Err(client.closed().map_or(
                        Error::Host("agent events ended".into()),
                        Error::ChannelClosed,
                    ))
                }
            }
        }
        client.delete_container(WARMUP_ID, false).await
    };
    let ran = run.await;
    vm.take_back(&client).await?;
    ran
}

/// Publishes the VM's socket in `ready/` and waits for a claim: the
/// connection and when the VM became ready; None if the VM died or
/// SIGTERM came first (the socket is then removed).
async fn publish_and_wait(
    config: &Config,
    vm_id: &str,
    vm: &mut PoolVm,
    sigterm: &mut Signal,
    (t0, warm_ms): (Instant, u128),
) -> Result<Option<(std::os::unix::net::UnixStream, Instant)>, Error> {
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
    announce_ready(vm, vm_id, (t0, warm_ms));
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
                return Ok(None);
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(st) = vm.died() {
                    unpublish("died before it was claimed");
                    tell(&format!("failed the ready VM died: {st}"));
                    return Ok(None);
                }
            }
        }
    };
    drop(listener);
    unpublish("claimed");
    let conn = conn.into_std().map_err(Error::io("claim connection"))?;
    conn.set_nonblocking(false)
        .map_err(Error::io("claim connection"))?;
    Ok(Some((conn, ready_at)))
}

/// Tells the pool the VM is ready: its pids, and the ms it took in all
/// and in its warm-up.
fn announce_ready(vm: &PoolVm, vm_id: &str, (t0, warm_ms): (Instant, u128)) {
    let (vmm, virtiofsd, ms) = (vm.vmm_pid(), vm.virtiofsd_pid(), t0.elapsed().as_millis());
    tell(&format!("ready {vmm} {virtiofsd} {ms} {warm_ms}"));
    let (boot_ms, warm_ms) = (ms as u64, warm_ms as u64);
    tracing::info!(pool_vm = vm_id, boot_ms, warm_ms, "pool VM ready");
}

/// Reads the claim and sends the VM (the reply and the agent connection);
/// the claim and the reader of the claimant's later words, or None if the
/// claim was not valid or could not be answered (told to the pool).
fn hand_over(
    vm_id: &str,
    vm: &mut PoolVm,
    conn: std::os::unix::net::UnixStream,
    ready_at: Instant,
) -> Result<Option<(ClaimRequest, BufReader<std::os::unix::net::UnixStream>)>, Error> {
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
            return Ok(None);
        }
    };
    // From here the VM is the claimant's: it must outlive the pool.
    // SAFETY: prctl on this process only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
    let ready_for_ms = ready_at.elapsed().as_millis() as u64;
    let Some((reply, agent)) = vm.hand_over(vm_id, ready_for_ms) else {
        tell("failed hand the VM over: its agent connection is gone");
        return Ok(None);
    };
    let text = serde_json::to_string(&reply).unwrap_or_default();
    if let Err(e) = send_with_fd(&conn, format!("{text}\n").as_bytes(), agent.as_raw_fd()) {
        tell(&format!("failed hand the VM over: {e}"));
        return Ok(None);
    }
    // The claimant reads the agent from now on.
    drop(agent);
    tracing::info!(pool_vm = vm_id, sandbox_id = %req.sandbox_id, shim_pid = req.shim_pid, "pool VM handed over");
    tell(&format!("claimed {}", req.sandbox_id));
    let _ = conn.set_read_timeout(None);
    Ok(Some((req, rd)))
}

/// Lives as long as the claim: its end closing, `kill` (answered `done`
/// once the VM is released), SIGTERM, or the VM's death.
async fn live_with_the_claim(
    mut vm: PoolVm,
    mut rd: BufReader<std::os::unix::net::UnixStream>,
    sigterm: &mut Signal,
) {
    let conn = rd.get_ref().try_clone();
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
            while vm.vm_exited().is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        } => false,
    };
    vm.kill();
    drop(vm);
    if let (true, Ok(mut c)) = (answer, conn) {
        let _ = c.write_all(b"done\n");
    }
}
