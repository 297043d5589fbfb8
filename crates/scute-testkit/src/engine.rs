//! Docker and Podman for tests, each private to the test that starts it:
//! a dockerd with its own data and exec roots, socket and bridge, on a
//! private containerd; podman with its own storage, run root and network
//! config. Both know scute-runc as the runtime `scute`; images come from
//! local archives (`docker load`, `podman load`), never a registry.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::containerd::Containerd;

/// The image tests run, loaded into each engine.
pub const IMAGE: &str = "scute-busybox:latest";

static N: AtomicU32 = AtomicU32::new(0);

/// A number unique to this process's engines.
fn next() -> u32 {
    std::process::id() % 1000 * 10 + N.fetch_add(1, Ordering::Relaxed) % 10
}

fn work_dir(kind: &str, n: u32) -> io::Result<PathBuf> {
    let d = PathBuf::from(format!("/var/tmp/scute-test/{kind}-{n}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn run_ok(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Deletes the iptables rules that name `bridge` (dockerd leaves the
/// ones it added for its bridge when it stops).
fn remove_iptables_rules(bridge: &str) {
    for table in ["filter", "nat"] {
        let Ok(o) = Command::new("iptables").args(["-t", table, "-S"]).output() else {
            continue;
        };
        let rules = String::from_utf8_lossy(&o.stdout).into_owned();
        for rule in rules.lines().filter(|l| l.starts_with("-A ")) {
            let words: Vec<&str> = rule.split_whitespace().collect();
            if !words.contains(&bridge) {
                continue;
            }
            let _ = Command::new("iptables")
                .args(["-t", table, "-D"])
                .args(&words[1..])
                .output();
        }
    }
}

/// Writes the busybox image as `docker save` would into `dir` and loads
/// it with `cli` (`docker`'s or `podman`'s).
fn load_busybox(dir: &Path, cli: impl Fn(&[&str]) -> Command) -> io::Result<()> {
    let tar = dir.join("image.tar");
    crate::image::docker_image_tar(&tar, IMAGE, &["sh"], &[8080])?;
    run_ok(&mut cli(&[
        "load",
        "-q",
        "-i",
        tar.to_str().unwrap_or_default(),
    ]))?;
    Ok(())
}

/// A private dockerd on a private containerd.
pub struct Dockerd {
    pub dir: PathBuf,
    /// scute's state dir for this dockerd's containers, when it made the
    /// config.
    pub state_dir: Option<PathBuf>,
    scute_runc: PathBuf,
    pub containerd: Containerd,
    pub bridge: String,
    /// Its bridge's subnet's first three octets.
    pub subnet: String,
    child: Option<Child>,
    args: Vec<String>,
}

impl Dockerd {
    /// Starts dockerd with runtime `scute` = `scute_runc`; `live_restore`
    /// as dockerd's option. `env` goes to containerd (and so to the
    /// runtimes it runs).
    pub fn start(
        bin_dir: &Path,
        scute_runc: &Path,
        live_restore: bool,
        env: &[(&str, &str)],
    ) -> io::Result<Self> {
        let n = next();
        let dir = work_dir("dockerd", n)?;
        // scute's sandboxes in a state dir of this dockerd's own (short:
        // socket paths under it hold 64-character ids), unless the caller
        // gives a config.
        let mut env: Vec<(&str, &str)> = env.to_vec();
        let state_dir = PathBuf::from(format!("/run/sk{n}"));
        let cfg = dir.join("scute.toml");
        let cfg_s = cfg.display().to_string();
        let own_config = !env.iter().any(|(k, _)| *k == "SCUTE_CONFIG");
        if own_config {
            std::fs::write(&cfg, format!("state_dir = \"{}\"\n", state_dir.display()))?;
            env.push(("SCUTE_CONFIG", &cfg_s));
        }
        let containerd = Containerd::start(bin_dir, &env)?;
        let bridge = format!("scute-dk{n}");
        let subnet = format!("172.30.{}", n % 250);
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        run_ok(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]))?;
        run_ok(Command::new("ip").args([
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            &bridge,
        ]))?;
        run_ok(Command::new("ip").args(["link", "set", &bridge, "up"]))?;
        let config = serde_json::json!({
            "runtimes": {"scute": {"path": scute_runc}},
            "live-restore": live_restore,
        });
        std::fs::write(dir.join("daemon.json"), config.to_string())?;
        let d = dir.display();
        let args: Vec<String> = vec![
            format!("--config-file={d}/daemon.json"),
            format!("--data-root={d}/data"),
            format!("--exec-root={d}/exec"),
            format!("--pidfile={d}/docker.pid"),
            format!("--host=unix://{d}/docker.sock"),
            format!("--containerd={}", containerd.address.display()),
            format!("--bridge={bridge}"),
            "--log-level=warn".into(),
        ];
        let mut me = Self {
            dir,
            state_dir: own_config.then_some(state_dir),
            scute_runc: scute_runc.to_path_buf(),
            containerd,
            bridge,
            subnet,
            child: None,
            args,
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> io::Result<()> {
        // dockerds set up iptables chains of the same names as they start:
        // one at a time on this host.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/var/tmp/scute-test/dockerd-start.lock")?;
        lock.lock()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))?;
        self.child = Some(
            Command::new("dockerd")
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .cli(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                return Err(io::Error::other(format!(
                    "dockerd did not come up; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops dockerd (SIGTERM) and starts it again.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The docker CLI (Debian's, the daemon's version) on this daemon.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg(format!("--host=unix://{}/docker.sock", self.dir.display()))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Loads the busybox image ([`IMAGE`]).
    pub fn load_busybox(&self) -> io::Result<()> {
        load_busybox(&self.dir, |a| self.cli(a))
    }

    /// Where dockerd keeps its runtimes' state (runc's `--root`).
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.join("exec/runtime-runc/moby")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self
                .cli(&["rm", "-f", "-v"])
                .args(
                    self.cli(&["ps", "-aq"])
                        .output()
                        .map(|o| {
                            String::from_utf8_lossy(&o.stdout)
                                .split_whitespace()
                                .map(str::to_owned)
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default(),
                )
                .output();
        }
        self.stop();
        // Docker's bundles are containerd's: what is left under this
        // dockerd's runtime root is its own.
        force_delete_below(&self.scute_runc, &self.runtime_root(), Path::new("/"));
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        remove_iptables_rules(&self.bridge);
        // Unmount what dockerd left (overlay mounts, netns files).
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut mine: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|p| Path::new(p).starts_with(&self.dir))
                .collect();
            mine.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in mine {
                let _ = Command::new("umount").args(["-l", p]).output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(d) = &self.state_dir {
            remove_state_dir(d);
        }
    }
}

/// Removes an engine's scute state dir: empty but for the jail's uid
/// records unless something leaked (which the tests report, so a leak
/// stays to be seen).
fn remove_state_dir(d: &Path) {
    let _ = std::fs::remove_file(d.join(".vmm-uids/.lock"));
    let _ = std::fs::remove_dir(d.join(".vmm-uids"));
    let _ = std::fs::remove_dir(d);
}

/// Podman with private storage, run-time files, locks and network
/// config, scute-runc known as `scute`.
pub struct Podman {
    pub dir: PathBuf,
    /// scute's state dir for this podman's containers, in `scute.toml` of
    /// `dir`: conmon doesn't pass its environment on, so a caller gives
    /// scute-runc that config with `--runtime-flag=scute-config=…`.
    pub state_dir: PathBuf,
    /// The network its containers join (a bridge of its own).
    pub network: String,
    scute_runc: PathBuf,
}

impl Podman {
    pub fn new(scute_runc: &Path) -> io::Result<Self> {
        let n = next();
        let dir = work_dir("podman", n)?;
        std::fs::create_dir_all(dir.join("networks"))?;
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nlock_type = \"file\"\ntmp_dir = \"{d}/tmp\"\n[engine.runtimes]\nscute = [\"{}\"]\n[network]\nnetwork_config_dir = \"{d}/networks\"\n",
                scute_runc.display(),
                d = dir.display(),
            ),
        )?;
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n",
                d = dir.display()
            ),
        )?;
        let state_dir = PathBuf::from(format!("/run/sp{n}"));
        std::fs::write(
            dir.join("scute.toml"),
            format!(
                "state_dir = \"{}\"\n[pool]\nsize = 0\n",
                state_dir.display()
            ),
        )?;
        let me = Self {
            state_dir,
            dir,
            network: format!("scute-pm{n}"),
            scute_runc: scute_runc.to_path_buf(),
        };
        run_ok(&mut me.cli(&[
            "network",
            "create",
            "--subnet",
            &format!("172.31.{}.0/24", n % 250),
            &me.network,
        ]))?;
        Ok(me)
    }

    /// The podman CLI on this storage. (This host refuses raising
    /// RLIMIT_NOFILE/NPROC past the caller's hard limits, which podman's
    /// defaults ask of runc: tests pass explicit --ulimit.)
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.envs(self.env()).args(args).stdin(Stdio::null());
        c
    }

    /// Loads the busybox image ([`IMAGE`]).
    pub fn load_busybox(&self) -> io::Result<()> {
        load_busybox(&self.dir, |a| self.cli(a))
    }

    /// The environment that points `podman` at this storage and config:
    /// its own storage, locks, run-time files (podmans on other storage
    /// would otherwise share /run/libpod and one lock segment) and
    /// networks. One way for every caller: with podman 4.3, after a first
    /// use with the equivalent flags (--root, --tmpdir, …), each `podman
    /// run --rm` through this environment took 20 s to return.
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("CONTAINERS_CONF", self.dir.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf")),
        ]
    }

    /// The runtime's state root: podman passes no `--root`, so it is
    /// scute-runc's default.
    pub fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/scute-runc")
    }

    pub fn scute_runc(&self) -> &Path {
        &self.scute_runc
    }
}

/// Deletes (`--force`) every container under `root` whose bundle is below
/// `below`: what an engine that lost track of its containers (a failed
/// test) left running.
fn force_delete_below(scute_runc: &Path, root: &Path, below: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let bundle = std::fs::read(e.path().join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|v| v["bundle"].as_str().map(PathBuf::from));
        if bundle.is_some_and(|b| b.starts_with(below)) {
            let _ = Command::new(scute_runc)
                .arg("--root")
                .arg(root)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .output();
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cli(&["rm", "-a", "-f", "-t", "0"]).output();
        force_delete_below(&self.scute_runc, &self.runtime_root(), &self.dir);
        let _ = self.cli(&["network", "rm", "-f", &self.network]).output();
        let _ = self.cli(&["system", "reset", "-f"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        remove_state_dir(&self.state_dir);
    }
}
