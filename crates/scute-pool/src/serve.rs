//! The pool (`scute pool`): keeps `[pool] size` members booting or ready,
//! one boot at a time, within `[pool] max_idle_mib` of host memory, backs
//! off after failures, and writes its state to `status.json` for `scute
//! check`, `scute ps` and the shims. Unclaimed VMs go with it.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scute_runtime::handover::{dir, shape, status, write_status, Status};
use scute_runtime::procs::{alive, pss_kib};
use scute_runtime::{Config, Error};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// What the pool hears of a member: a line it printed, or its exit.
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

/// The pool's state between events.
struct Pool<'a> {
    config: &'a Config,
    config_path: Option<&'a Path>,
    exe: &'a Path,
    dir: PathBuf,
    members: BTreeMap<String, Member>,
    st: Status,
    failures: VecDeque<String>,
    serial: u64,
    backoff: Duration,
    next_boot: Instant,
    /// The largest PSS a ready VM (QEMU + virtiofsd) was seen with.
    per_vm_kib: u64,
    tx: UnboundedSender<(String, Seen)>,
}

/// Runs the pool until SIGTERM or SIGINT. `exe` is the scute binary the
/// members run (`scute pool-vm`), `config_path` the config they read.
pub async fn serve(config: &Config, config_path: Option<&Path>, exe: &Path) -> Result<(), Error> {
    let d = prepare_dir(config, config_path)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::io("install the SIGTERM handler"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(Error::io("install the SIGINT handler"))?;
    let (tx, mut rx) = unbounded_channel::<(String, Seen)>();
    let mut pool = Pool {
        config,
        config_path,
        exe,
        dir: d,
        members: BTreeMap::new(),
        st: Status {
            pid: std::process::id(),
            size: config.pool.size,
            max_idle_mib: config.pool.max_idle_mib,
            shape: shape(&config.for_pool()),
            ..Status::default()
        },
        failures: VecDeque::new(),
        serial: 0,
        backoff: Duration::ZERO,
        next_boot: Instant::now(),
        per_vm_kib: 0,
        tx,
    };
    eprintln!(
        "scute pool: pid {}, {} ready VM(s) of shape {} in {}",
        pool.st.pid,
        config.pool.size,
        pool.st.shape,
        pool.dir.display()
    );
    loop {
        pool.refill();
        pool.write_status();
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = term.recv() => None,
            _ = int.recv() => None,
            _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
        };
        let Some((vm_id, seen)) = ev else { break };
        match seen {
            Seen::Line(l) => pool.heard(&vm_id, &l),
            Seen::Exited(how) => pool.exited(&vm_id, &how),
        }
    }
    pool.stop().await;
    Ok(())
}

/// Creates the pool's dir (private), refuses a second pool for the same
/// state dir, and removes sockets of members that died with an earlier
/// pool.
fn prepare_dir(config: &Config, config_path: Option<&Path>) -> Result<PathBuf, Error> {
    let d = dir(config);
    for sub in ["", "ready", "claimed"] {
        let p = d.join(sub);
        std::fs::create_dir_all(&p).map_err(Error::io(format!("create {}", p.display())))?;
        scute_runtime::state::set_private(&p)?;
    }
    if let Some(st) = status(config) {
        if st.pid != std::process::id() {
            return Err(Error::Config {
                path: config_path
                    .unwrap_or(Path::new(scute_runtime::config::DEFAULT_PATH))
                    .to_owned(),
                message: format!(
                    "a pool already runs for {} (pid {})",
                    config.state_dir.display(),
                    st.pid
                ),
            });
        }
    }
    for sub in ["ready", "claimed"] {
        for e in std::fs::read_dir(d.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(d)
}

impl Pool<'_> {
    fn count(&self, f: impl Fn(&State) -> bool) -> u32 {
        self.members.values().filter(|m| f(&m.state)).count() as u32
    }

    /// (QEMU, virtiofsd) pids of every ready member.
    fn ready_pids(&self) -> Vec<(u32, u32)> {
        self.members
            .values()
            .filter_map(|m| match m.state {
                State::Ready { pids } => Some(pids),
                _ => None,
            })
            .collect()
    }

    /// Starts one member if the pool is short, none is booting, the idle
    /// memory allows another and no back-off is running; says why not in
    /// the status's note.
    fn refill(&mut self) {
        let ready = self.ready_pids();
        let idle_kib: u64 = ready.iter().map(|(q, v)| pss_kib(*q) + pss_kib(*v)).sum();
        self.st.idle_pss_mib = idle_kib / 1024;
        let booting = self.count(|s| *s == State::Booting);
        let held = ready.len() as u32 + booting;
        let (size, max_idle_mib) = (self.config.pool.size, self.config.pool.max_idle_mib);
        self.st.note = None;
        if held >= size || booting > 0 {
            return;
        }
        if self.per_vm_kib > 0 && idle_kib + self.per_vm_kib > max_idle_mib as u64 * 1024 {
            self.st.note = Some(format!(
                "holding {held} of {size}: another ready VM (~{} MiB) would pass max_idle_mib = {max_idle_mib}",
                self.per_vm_kib / 1024,
            ));
        } else if Instant::now() < self.next_boot {
            let wait = self.next_boot.saturating_duration_since(Instant::now());
            self.st.note = Some(format!(
                "the last boot failed: next try in {} s",
                wait.as_secs()
            ));
        } else {
            self.serial += 1;
            let vm_id = format!("pool-{}-{}", std::process::id(), self.serial);
            match spawn_member(self.exe, self.config_path, &vm_id, self.tx.clone()) {
                Ok(pid) => {
                    let state = State::Booting;
                    let last_failure = None;
                    self.members.insert(
                        vm_id,
                        Member {
                            state,
                            pid,
                            last_failure,
                        },
                    );
                }
                Err(e) => self.failed(format!("start a member: {e}")),
            }
        }
    }

    /// Records a failure and backs off the next boot (1 s doubling to 60 s).
    fn failed(&mut self, what: String) {
        self.failures.push_back(what);
        while self.failures.len() > 5 {
            self.failures.pop_front();
        }
        self.st.failed += 1;
        self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.next_boot = Instant::now() + self.backoff;
    }

    fn write_status(&mut self) {
        self.st.ready = self.count(|s| matches!(s, State::Ready { .. }));
        self.st.booting = self.count(|s| *s == State::Booting);
        self.st.failures = self.failures.iter().cloned().collect();
        write_status(&self.dir, &self.st);
    }

    /// A line from member `vm_id`: `ready PIDS…`, `claimed SANDBOX` or
    /// `failed WHY`.
    fn heard(&mut self, vm_id: &str, line: &str) {
        let Some(m) = self.members.get_mut(vm_id) else {
            return;
        };
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "ready" => {
                let mut it = rest.split(' ').filter_map(|x| x.parse::<u32>().ok());
                let pids = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                m.state = State::Ready { pids };
                self.backoff = Duration::ZERO;
                let kib = pss_kib(pids.0) + pss_kib(pids.1);
                self.per_vm_kib = self.per_vm_kib.max(kib);
                let (total, warm) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                eprintln!("scute pool: {vm_id} ready in {total} ms (of which warm-up {warm} ms)");
            }
            "claimed" => {
                m.state = State::Claimed;
                self.st.handed_out += 1;
                eprintln!("scute pool: {vm_id} handed to sandbox {rest}");
            }
            "failed" => m.last_failure = Some(rest.to_owned()),
            _ => {}
        }
    }

    /// Member `vm_id` exited: clean up what a member killed without its
    /// own cleanup left, and count it as failed unless it was claimed.
    fn exited(&mut self, vm_id: &str, how: &str) {
        let Some(m) = self.members.remove(vm_id) else {
            return;
        };
        let left = self.config.state_dir.join(vm_id);
        if left.exists() {
            eprintln!("scute pool: {vm_id} left its state behind: cleaning it");
            scute_runtime::stale::cleanup(&left);
        }
        scute_runtime::network::remove_pool_netns(vm_id);
        if m.state != State::Claimed {
            let why = m
                .last_failure
                .unwrap_or_else(|| format!("member exited ({how})"));
            eprintln!("scute pool: {vm_id} failed: {why}");
            self.failed(format!("{vm_id}: {why}"));
        }
    }

    /// Stops the unclaimed members (claimed ones belong to their
    /// sandboxes), waits for them (15 s at most), and removes the pool's
    /// files.
    async fn stop(self) {
        eprintln!("scute pool: stopping");
        let mut waiting: Vec<u32> = Vec::new();
        for m in self.members.values().filter(|m| m.state != State::Claimed) {
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
        // A member still stopping keeps its socket, and so the dir.
        let _ = std::fs::remove_file(self.dir.join("status.json"));
        for sub in ["ready", "claimed", ""] {
            let _ = std::fs::remove_dir(self.dir.join(sub));
        }
    }
}

/// Starts `scute pool-vm --vm-id VM_ID` with SIGTERM as its death signal,
/// and a thread that passes its lines and its exit to the pool.
fn spawn_member(
    exe: &Path,
    config_path: Option<&Path>,
    vm_id: &str,
    tx: UnboundedSender<(String, Seen)>,
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
