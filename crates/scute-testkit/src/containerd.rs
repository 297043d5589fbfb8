//! A private containerd for tests and benchmarks: its own config, root, state
//! and socket, with scute's shim on its PATH. Stopped and cleaned when dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    pub dir: PathBuf,
    pub address: PathBuf,
    bin_dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// The CRI plugin's CNI network (bridge) name, removed on drop.
    cri_network: Option<String>,
}

impl Containerd {
    /// Starts containerd with `bin_dir` (holding containerd-shim-scute-v2)
    /// first on its PATH and `env` added to its environment.
    pub fn start(bin_dir: &Path, env: &[(&str, &str)]) -> io::Result<Self> {
        Self::start_with(bin_dir, env, None)
    }

    /// Like [`Containerd::start`] with the CRI plugin on, as a Kubernetes
    /// node runs it: runtime handlers `runc` and `scute` (scute's pod
    /// annotations `io.scute.*` passed on), `cri.sandbox_image` as the pause
    /// image, and a CNI bridge network on `cri.subnet`.
    pub fn start_cri(bin_dir: &Path, env: &[(&str, &str)], cri: &Cri) -> io::Result<Self> {
        Self::start_with(bin_dir, env, Some(cri))
    }

    fn start_with(bin_dir: &Path, env: &[(&str, &str)], cri: Option<&Cri>) -> io::Result<Self> {
        let dir = PathBuf::from(format!(
            "/run/scute-test/ctrd-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let address = dir.join("c.sock");
        let mut config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n",
            d = dir.display()
        );
        if cri.is_none() {
            config.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        }
        config.push_str(&format!(
            "[grpc]\n  address = \"{a}\"\n[ttrpc]\n  address = \"{a}.ttrpc\"\n",
            a = address.display()
        ));
        if let Some(cri) = cri {
            let cni = dir.join("cni");
            std::fs::create_dir_all(&cni)?;
            std::fs::write(cni.join("10-scute-test.conflist"), cri.conflist())?;
            config.push_str(&cri.config_toml(&cni));
        }
        std::fs::write(dir.join("config.toml"), config)?;
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The pool is off unless a test's config has a `[pool]` table: a
        // pool left running on this host by `make lab` must not hand its
        // VMs to tests that watch their own VM's processes. A test's own
        // config file gets the table appended (a test that rewrites it
        // later keeps it itself).
        match env.iter().find(|(k, _)| k == "SCUTE_CONFIG") {
            Some((_, path)) => {
                let text = std::fs::read_to_string(path)?;
                if !text.lines().any(|l| l.trim() == "[pool]") {
                    std::fs::write(path, format!("{text}\n[pool]\nsize = 0\n"))?;
                }
            }
            None => {
                let cfg = dir.join("scute.toml");
                std::fs::write(&cfg, "[pool]\nsize = 0\n")?;
                env.push(("SCUTE_CONFIG".into(), cfg.display().to_string()));
            }
        }
        let mut me = Self {
            dir,
            address,
            bin_dir: bin_dir.to_path_buf(),
            env,
            child: None,
            cri_network: cri.map(|c| c.network.clone()),
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self
                .ctr(&["version"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "containerd did not come up; see {}",
                    self.dir.join("containerd.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGTERM, as systemd would) and starts it again.
    /// Running shims and their tasks are not touched.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix_kill(c.id(), libc_sigterm());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The gRPC socket (CRI clients connect here).
    pub fn socket(&self) -> &Path {
        &self.address
    }

    /// `ctr --address <ours> ARGS`.
    /// The bundle directory containerd makes for task `id` in namespace `ns`.
    pub fn bundle(&self, ns: &str, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(ns)
            .join(id)
    }

    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.address).args(args);
        c
    }

    pub fn ctr_ok(&self, args: &[&str]) -> Output {
        let out = self
            .ctr(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Builds and imports the busybox image; returns its name.
    pub fn import_busybox(&self) -> io::Result<&'static str> {
        let tar = self.dir.join("busybox-oci.tar");
        crate::image::busybox_image_tar(&tar)?;
        let tar = tar.to_string_lossy().into_owned();
        self.ctr_ok(&["images", "import", &tar]);
        Ok(crate::image::IMAGE)
    }
}

/// The CRI plugin's settings for a test containerd.
pub struct Cri {
    /// Name of the CNI network and of its bridge (at most 15 characters).
    pub network: String,
    /// Its subnet, e.g. `10.93.1.0/24`.
    pub subnet: String,
    /// The pause image (already imported into `k8s.io`, or to be).
    pub sandbox_image: String,
}

impl Cri {
    fn conflist(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {"type": "bridge", "bridge": self.network, "isGateway": true, "ipMasq": false,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string()
    }

    fn config_toml(&self, cni_dir: &Path) -> String {
        // This host refuses lowering oom_score_adj, which the CRI plugin
        // does for sandboxes unless restricted.
        format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  # Pod netns under this instance's state dir: a test counts its own only.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.scute]
      runtime_type = "io.containerd.scute.v2"
      pod_annotations = ["io.scute.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            image = self.sandbox_image,
            cni = cni_dir.display()
        )
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn libc_sigterm() -> i32 {
    15
}

fn nix_kill(pid: u32, sig: i32) -> io::Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::other("kill failed"))
    }
}

impl Containerd {
    /// Shims outlive containerd by design; when a test fails before it
    /// deleted its tasks, kill the scute shims of this containerd and run
    /// what containerd runs for a dead shim (`<shim> ... delete` in the
    /// bundle), so one failure does not leave VMs running. The cleanup is
    /// the product's: if it misses something, the leak checks see it.
    fn kill_orphan_shims(&self) {
        let needle = format!("-address {} ", self.address.display());
        for (pid, cmd) in crate::procs::mentioning(&needle) {
            if cmd.contains("containerd-shim-runc-v2") {
                // runc's containers are the shim's children: they go too.
                for p in crate::procs::descendants(pid).into_iter().rev() {
                    let _ = nix_kill(p, 9);
                }
                continue;
            }
            if !cmd.contains("containerd-shim-scute-v2") {
                continue;
            }
            let _ = nix_kill(pid, 9);
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let arg = |k: &str| {
                words
                    .iter()
                    .skip_while(|a| **a != k)
                    .nth(1)
                    .map(|s| s.to_string())
            };
            let (Some(id), Some(ns)) = (arg("-id"), arg("-namespace")) else {
                continue;
            };
            let bundle = self.bundle(&ns, &id);
            let deleted = Command::new(words[0])
                .args(["-namespace", &ns, "-address"])
                .arg(&self.address)
                .args(["-id", &id, "-bundle"])
                .arg(&bundle)
                .arg("delete")
                // As containerd sets them for its shims.
                .env("NAMESPACE", &ns)
                .env("GRPC_ADDRESS", &self.address)
                .env("TTRPC_ADDRESS", format!("{}.ttrpc", self.address.display()))
                .current_dir(if bundle.is_dir() { &bundle } else { &self.dir })
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status();
            if !deleted.is_ok_and(|s| s.success()) {
                eprintln!("harness: `{} delete` for {id} failed", words[0]);
            }
        }
    }
}

/// Lazily unmounts everything mounted at or below `prefix`, deepest first.
fn unmount_under(prefix: &str) {
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(prefix))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        self.kill_orphan_shims();
        // Unmount whatever containerd left (snapshots, bundles), then remove.
        unmount_under(&self.dir.to_string_lossy());
        let _ = std::fs::remove_dir_all(&self.dir);
        // The CNI bridge plugin never deletes its bridge; host-local keeps
        // its leases on disk.
        if let Some(net) = &self.cri_network {
            let _ = Command::new("ip").args(["link", "del", net]).status();
            let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/{net}"));
        }
    }
}
