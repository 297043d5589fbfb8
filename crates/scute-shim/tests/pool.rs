//! The pool of ready VMs (`scute pool`), through containerd as `ctr` drives
//! it: real containerd, shim, QEMU and virtiofsd. Each test has its own
//! state root, so no other test's sandbox ever takes one of its VMs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use scute_testkit::containerd::Containerd;

mod common;

use common::{bin_dir, text, RUNTIME};

/// A state root, a config using it, containerd, and a pool (not started).
struct Setup {
    state: PathBuf,
    cfg: PathBuf,
    c: Containerd,
    img: &'static str,
    pool: Option<Child>,
    pool_log: PathBuf,
}

impl Setup {
    fn new(name: &str, size: u32) -> Self {
        let root = PathBuf::from(format!("/run/scute-test/{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let state = root.join("state");
        let cfg = root.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{}\"\n[pool]\nsize = {size}\n",
                state.display()
            ),
        )
        .unwrap();
        let cfg_s = cfg.to_string_lossy().into_owned();
        let c = Containerd::start(&bin_dir(), &[("SCUTE_CONFIG", &cfg_s)]).expect("containerd");
        let img = c.import_busybox().expect("import image");
        Self {
            state,
            cfg,
            c,
            img,
            pool: None,
            pool_log: root.join("pool.log"),
        }
    }

    fn start_pool(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pool_log)
            .unwrap();
        let child = Command::new(bin_dir().join("scute"))
            .arg("--config")
            .arg(&self.cfg)
            .arg("pool")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start scute pool");
        self.pool = Some(child);
    }

    fn status(&self) -> Option<serde_json::Value> {
        let t = std::fs::read(self.state.join("_pool/status.json")).ok()?;
        serde_json::from_slice(&t).ok()
    }

    fn count(&self, key: &str) -> u64 {
        self.status().and_then(|s| s[key].as_u64()).unwrap_or(0)
    }

    /// Waits until the pool's status says `key` is at least `n` (it writes
    /// its status after it heard a member, not before a claim returns).
    fn wait_count(&self, key: &str, n: u64) {
        let t = Instant::now();
        while self.count(key) < n {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the pool's {key} never reached {n}: {:?}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` VMs are ready and none boots.
    fn wait_ready(&self, n: u64) {
        let t = Instant::now();
        while !(self.count("ready") == n && self.count("booting") == 0) {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "pool never had {n} ready VMs: {:?}\n{}",
                self.status(),
                std::fs::read_to_string(&self.pool_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.c.ctr(args).stdin(Stdio::null()).output().unwrap()
    }

    fn run_rm(&self, cid: &str, args: &[&str]) -> Output {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, self.img, cid];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    fn run_detached(&self, cid: &str) {
        let out = self.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            self.img,
            cid,
            "sleep",
            "1000",
        ]);
        assert!(out.status.success(), "run -d {cid}: {}", text(&out.stderr));
    }

    /// `ctr run -d` of `sh -c script` as `cid`, its output logged to
    /// `<containerd dir>/<cid>.out` (ctr's `--log-uri file://`).
    fn run_detached_script(&self, cid: &str, script: &str) {
        let uri = format!("file://{}", self.c.dir.join(format!("{cid}.out")).display());
        let out = self.ctr(&[
            "run",
            "-d",
            "--privileged",
            "--log-uri",
            &uri,
            "--runtime",
            RUNTIME,
            self.img,
            cid,
            "sh",
            "-c",
            script,
        ]);
        assert!(out.status.success(), "run -d {cid}: {}", text(&out.stderr));
    }

    fn exec(&self, cid: &str, eid: &str, script: &str) -> String {
        let out = self.ctr(&["task", "exec", "--exec-id", eid, cid, "sh", "-c", script]);
        assert!(out.status.success(), "exec in {cid}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn remove(&self, cid: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "KILL", cid]);
        let t = Instant::now();
        loop {
            let out = self.ctr(&["task", "rm", "-f", cid]);
            if out.status.success() || text(&out.stderr).contains("not found") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "task rm {cid}: {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = self.ctr(&["container", "rm", cid]);
        assert!(
            out.status.success(),
            "container rm {cid}: {}",
            text(&out.stderr)
        );
    }

    /// The VMM pid that sandbox `cid`'s shim recorded.
    fn vmm_pid(&self, cid: &str) -> u32 {
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.state.join(cid).join("state.json")).unwrap(),
        )
        .unwrap();
        st["vmm_pid"].as_u64().unwrap() as u32
    }

    /// (pid, cmdline) of the QEMU processes under this state root.
    fn vms(&self) -> Vec<(u32, String)> {
        self.vm_processes()
            .into_iter()
            .filter(|(_, c)| c.contains("qemu-system"))
            .collect()
    }

    /// (pid, cmdline) of the QEMU and virtiofsd processes under this state root.
    fn vm_processes(&self) -> Vec<(u32, String)> {
        scute_testkit::procs::mentioning(&format!("{}/", self.state.display()))
            .into_iter()
            .filter(|(_, c)| c.contains("qemu-system") || c.contains("virtiofsd"))
            .collect()
    }

    /// Entries of the state root other than the pool's own dir.
    fn sandbox_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.state)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n != "_pool" && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Sandbox ids of the ready VMs' sockets.
    fn ready_vms(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state.join("_pool/ready"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().into_string().ok()?;
                        let (_, rest) = n.split_once('.')?;
                        Some(rest.strip_suffix(".sock")?.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Nothing of sandbox `cid` is left: its VM, state dir, mounts, cgroups.
    fn assert_gone(&self, cid: &str, vmm: u32) {
        let t = Instant::now();
        loop {
            let dir = self.state.join(cid).exists();
            let vm = scute_runtime::procs::alive(vmm);
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let mounted = mounts
                .lines()
                .any(|l| l.contains(&format!("/{cid}/")) || l.contains(&format!("/{cid} ")));
            let cgroups = scute_testkit::procs::cgroups_named(cid);
            if !dir && !vm && !mounted && cgroups.is_empty() {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "left of {cid}: state dir {dir}, VM {vm}, mounted {mounted}, cgroups {cgroups:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // SIGTERM, as a service manager stops it: the pool waits for its
        // members to release their VMs, so the state root can go after.
        if let Some(mut p) = self.pool.take() {
            let _ = Command::new("kill").arg(p.id().to_string()).status();
            let t = Instant::now();
            while p.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        // A failed test keeps its config, pool log and state for a look.
        if !std::thread::panicking() {
            if let Some(root) = self.state.parent() {
                let _ = std::fs::remove_dir_all(root);
            }
        }
    }
}

/// Two containers started while the pool holds two ready VMs: each gets
/// one of them (never the same), with its own rootfs and no network
/// interface but lo; removed, they leave nothing, and the pool refills.
#[test]
fn each_ready_vm_goes_to_one_container() {
    let mut s = Setup::new("pool-once", 2);
    s.start_pool();
    s.wait_ready(2);
    let ready = s.ready_vms();
    let (a, b) = (
        format!("pa-{}", std::process::id()),
        format!("pb-{}", std::process::id()),
    );
    s.run_detached(&a);
    s.run_detached(&b);
    s.wait_count("handed_out", 2);
    assert_eq!(s.count("handed_out"), 2, "{:?}", s.status());
    let (va, vb) = (s.vmm_pid(&a), s.vmm_pid(&b));
    assert_ne!(va, vb, "two containers on one VM");
    // Both VMs are pool VMs: their QEMU runs in a pool member's dir.
    for (cid, pid) in [(&a, va), (&b, vb)] {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmd = text(&cmd);
        assert!(
            ready.iter().any(|vm| cmd.contains(&format!("/{vm}/"))),
            "{cid}'s QEMU is not one of the ready VMs {ready:?}: {cmd}"
        );
    }
    let log = std::fs::read_to_string(&s.pool_log).unwrap();
    assert!(log.contains(&format!("handed to sandbox {a}")), "{log}");
    // Each VM ran scute's warm-up container before it was published, and
    // nothing of that container is left in its share.
    assert!(log.contains("(of which warm-up "), "{log}");
    for vm in &ready {
        let share = s.state.join(vm).join("shared");
        let left: Vec<_> = std::fs::read_dir(&share)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.iter().all(|n| n != "scute-warmup"),
            "warm-up left in {}: {left:?}",
            share.display()
        );
    }
    // Two kernels of their own: neither the host's boot nor each other's.
    let boot_id = "cat /proc/sys/kernel/random/boot_id";
    let (ba, bb) = (s.exec(&a, "b1", boot_id), s.exec(&b, "b2", boot_id));
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(ba != bb && ba != host && bb != host, "{ba} {bb} {host}");
    // Own rootfs, no network but lo.
    s.exec(&a, "e1", "touch /mine-a");
    let seen = s.exec(&b, "e2", "ls /mine-a 2>&1; cat /proc/net/dev");
    assert!(seen.contains("No such file"), "b sees a's rootfs: {seen}");
    let ifaces: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .filter(|n| !n.is_empty() && !n.starts_with("ls") && !n.contains(' '))
        .collect();
    // lo, and the tunnel devices the kernel makes in every namespace: no NIC.
    assert!(
        ifaces.contains(&"lo") && ifaces.iter().all(|n| *n == "lo" || n.starts_with("sit")),
        "{seen}"
    );
    s.remove(&a);
    s.remove(&b);
    s.assert_gone(&a, va);
    s.assert_gone(&b, vb);
    s.wait_ready(2);
    assert_eq!(s.vms().len(), 2, "2 ready VMs: {:?}", s.vm_processes());
}

/// `ctr run --rm ID` again as soon as the last one returned, on pool VMs:
/// the shim answers containerd's Shutdown before it has released its VM,
/// so the next `ctr run` of the same id finds it still answering at the
/// id's socket. The new task must get a shim of its own (it got the old
/// one, which then exited under it: "ttrpc: closed", then "already
/// exists"), and the old one must not take the id's state with it.
#[test]
fn the_same_id_runs_again_right_after_run_rm() {
    let mut s = Setup::new("pool-again", 2);
    s.start_pool();
    s.wait_ready(2);
    let cid = format!("again-{}", std::process::id());
    for round in 0..6 {
        let out = s.run_rm(&cid, &["true"]);
        assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
    }
    assert!(s.count("handed_out") >= 1, "{:?}", s.status());
    s.assert_gone(&cid, 0);
}

/// 50 `ctr run --rm` through a pool of 2 (it refills while they run),
/// then the pool is SIGKILLed with ready VMs and one container on a pool
/// VM: the ready VMs go, the container lives on, the next start boots
/// cold, and once the container is removed nothing is left at all.
#[test]
fn cycles_leave_nothing_and_ready_vms_die_with_the_pool() {
    let mut s = Setup::new("pool-cycles", 2);
    s.start_pool();
    s.wait_ready(2);
    let mut times = Vec::new();
    for i in 0..50 {
        let cid = format!("pc{i}-{}", std::process::id());
        let t = Instant::now();
        let out = s.run_rm(&cid, &["true"]);
        times.push(t.elapsed().as_millis());
        assert!(out.status.success(), "cycle {i}: {}", text(&out.stderr));
    }
    let warm = s.count("handed_out");
    eprintln!("50 cycles: {warm} from the pool, ms: {times:?}");
    assert!(warm >= 2, "the pool handed out {warm} VMs");
    s.wait_ready(2);
    // Every VM accounted for: the 2 ready ones are all that runs, and the
    // only state dirs are theirs.
    let ready = s.ready_vms();
    assert_eq!(ready.len(), 2);
    assert_eq!(s.sandbox_dirs(), ready, "state dirs besides the ready VMs'");
    assert_eq!(s.vms().len(), 2, "{:?}", s.vm_processes());
    let pool_cgroups: Vec<_> = scute_testkit::procs::cgroups_named(&ready[0]);
    assert!(!pool_cgroups.is_empty(), "a ready VM has its own cgroup");

    // A container on a pool VM, then the pool dies.
    let d = format!("pd-{}", std::process::id());
    s.run_detached(&d);
    let vd = s.vmm_pid(&d);
    // The pool has replaced the VM d took: it dies with ready VMs only,
    // none cut short mid-boot.
    s.wait_ready(2);
    let mut pool = s.pool.take().unwrap();
    pool.kill().unwrap();
    pool.wait().unwrap();
    let t = Instant::now();
    loop {
        let left = s.vms();
        let dirs = s.sandbox_dirs();
        // d's VM, and the dirs of d and of its pool VM.
        if left.len() == 1 && dirs.len() == 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "ready VMs outlived the pool: {left:?} {dirs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The ready VMs but the one d took; that one lives on with d.
    let d_cmd = text(&std::fs::read(format!("/proc/{vd}/cmdline")).unwrap());
    for vm in ready
        .iter()
        .filter(|vm| !d_cmd.contains(&format!("/{vm}/")))
    {
        let t = Instant::now();
        loop {
            let left = scute_testkit::procs::cgroups_named(vm);
            if left.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "cgroups of {vm} left: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        scute_runtime::procs::alive(vd),
        "the claimed VM died with the pool"
    );
    assert_eq!(s.exec(&d, "e1", "echo alive").trim(), "alive");
    // No pool: cold boot.
    let out = s.run_rm(&format!("pcold-{}", std::process::id()), &["echo", "cold"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "cold");
    s.remove(&d);
    s.assert_gone(&d, vd);
    let t = Instant::now();
    while !(s.vm_processes().is_empty() && s.sandbox_dirs().is_empty()) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "left: {:?} {:?}",
            s.vm_processes(),
            s.sandbox_dirs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("{}/", s.state.display())),
        "mounts left under the state root"
    );
    for vm in &ready {
        assert!(
            scute_testkit::procs::cgroups_named(vm).is_empty(),
            "cgroups of {vm} left"
        );
    }
}

/// A container in a CNI network namespace (as nerdctl runs one) takes a
/// pool VM: the VM's tap moves into the namespace, the guest NIC gets the
/// CNI interface's address, a published port answers from the guest, and
/// removing it leaves neither the tap nor the redirects behind.
#[test]
fn a_cni_container_takes_a_pool_vm_and_its_network() {
    let mut s = Setup::new("pool-net", 1);
    s.start_pool();
    s.wait_ready(1);
    let cid = format!("pn-{}", std::process::id());
    let n = std::process::id() % 50 + 150;
    let port = 40000 + (std::process::id() % 5000) as u16;
    let net = common::CniHttpd::attach(&cid, "p", 96, n, port);
    let args = net.run_args(RUNTIME, s.img, &cid);
    let out = s.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.wait_count("handed_out", 1);
    assert_eq!(s.count("handed_out"), 1, "{:?}", s.status());
    let addr = s.exec(
        &cid,
        "ip",
        "ip -4 -o addr show eth0; cat /sys/class/net/eth0/address",
    );
    assert!(
        addr.contains(&format!("{}/24", net.att.ip().unwrap())),
        "{addr}"
    );
    // The guest NIC took the veth's MAC (read with ip: /sys is the host's).
    let link = net.in_netns(&["ip", "-o", "link", "show", "eth0"]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_owned();
    assert!(
        addr.contains(&mac),
        "guest MAC is not the veth's {mac}: {addr}"
    );
    net.assert_serves();
    let vm = s.vmm_pid(&cid);
    s.remove(&cid);
    s.assert_gone(&cid, vm);
    net.assert_clean_and_detach();
}

/// A member SIGKILLed with its VM ready (no cleanup of its own): its VM
/// dies with it, the pool cleans what it left (state dir, cgroups, netns),
/// counts the failure and boots a replacement.
#[test]
fn a_killed_member_is_cleaned_up_and_replaced() {
    let mut s = Setup::new("pool-kill", 1);
    s.start_pool();
    s.wait_ready(1);
    let vm = s.ready_vms().pop().unwrap();
    let member = scute_testkit::procs::mentioning(&format!("pool-vm --vm-id {vm}"))
        .into_iter()
        .map(|(p, _)| p)
        .next()
        .expect("member process");
    std::process::Command::new("kill")
        .args(["-9", &member.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    loop {
        let dir = s.state.join(&vm).exists();
        let netns = Path::new("/run/netns").join(format!("scute-{vm}")).exists();
        let cgroups = scute_testkit::procs::cgroups_named(&vm);
        let qemu = s.vms().iter().any(|(_, c)| c.contains(&format!("/{vm}/")));
        if !dir && !netns && cgroups.is_empty() && !qemu {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "left of {vm}: dir {dir}, netns {netns}, cgroups {cgroups:?}, qemu {qemu}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.wait_ready(1);
    assert_ne!(s.ready_vms(), std::slice::from_ref(&vm), "no replacement");
    assert_eq!(s.count("failed"), 1, "{:?}", s.status());
}

/// A pool VM's guest can't steer the host either: a `--privileged`
/// container on a claimed VM plants symlinks named after its own id at
/// its share's root (the share lives in the pool member's dir), aimed at
/// a host canary dir and file; every attempt fails, and after removal the
/// canary is intact and nothing of the sandbox or its VM is left.
#[test]
fn a_pool_vms_guest_cannot_steer_the_hosts_delete() {
    let mut s = Setup::new("pool-steer", 1);
    s.start_pool();
    s.wait_ready(1);
    let canary = common::Canary::new("pool-steer");
    let file = canary.dir.join("precious");
    let cid = format!("ps-{}", std::process::id());
    let script = common::share_escape_script(&cid, &[&canary.dir, &file]);
    s.run_detached_script(&cid, &script);
    let vmm = s.vmm_pid(&cid);
    s.wait_count("handed_out", 1);
    assert_eq!(s.count("handed_out"), 1, "not a pool VM: {:?}", s.status());
    let t = Instant::now();
    loop {
        let ls = text(&s.ctr(&["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.starts_with(&cid) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{ls}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = s.c.dir.join(format!("{cid}.out"));
    common::assert_share_escape_failed(&std::fs::read_to_string(&log).unwrap_or_default());
    s.remove(&cid);
    s.assert_gone(&cid, vmm);
    canary.assert_intact();
}
