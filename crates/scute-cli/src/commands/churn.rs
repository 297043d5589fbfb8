//! `scute bench churn`: many short container lifecycles through containerd,
//! the way users and orchestrators drive a runtime (run --rm; run -d, exec,
//! kill, rm -f; a non-zero exit; a CNI-shaped network namespace), several at
//! once; then a leak check. Every ctr call is bounded in time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use scute_testkit::netns::CniShaped;

/// One ctr call's limit: a cycle step that takes longer has hung.
const STEP_LIMIT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `ctr run --rm IMG ID true`.
    Short,
    /// `ctr run --rm IMG ID sh -c 'exit 3'`: the status comes back.
    ExitCode,
    /// `run -d`, `task exec`, `task kill -s KILL`, `task rm -f`, `c rm`.
    Exec,
    /// `run -d`, then at once `task kill -s KILL` + `task rm -f` (nerdctl rm -f).
    Killed,
    /// `ctr run --rm --with-ns network:NETNS ... true`, NETNS shaped as CNI
    /// leaves it (a veth named eth0 with an address).
    Network,
}

const KINDS: [Kind; 5] = [
    Kind::Short,
    Kind::Exec,
    Kind::Killed,
    Kind::ExitCode,
    Kind::Network,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Short => "run --rm true",
            Kind::ExitCode => "run --rm exit 3",
            Kind::Exec => "run -d, exec, kill, rm",
            Kind::Killed => "run -d, rm -f",
            Kind::Network => "run --rm in a netns",
        }
    }
}

struct Churn<'a> {
    address: &'a Path,
    runtime: &'a str,
    image: &'a str,
    prefix: String,
}

impl Churn<'_> {
    /// Runs ctr with `args`, bounded; Err("step: what went wrong").
    fn ctr(&self, step: &str, args: &[&str]) -> Result<String, String> {
        let o = self.ctr_exit(step, args)?;
        if o.ok() {
            Ok(o.stdout)
        } else {
            Err(format!("{step}: {}", first_line(&o.stderr)))
        }
    }

    /// Runs ctr, bounded; Err only when it hung or could not start.
    fn ctr_exit(&self, step: &str, args: &[&str]) -> Result<scute_lab::ctr::Outcome, String> {
        let mut c = scute_lab::ctr::Ctr::new(self.address).command(args);
        match scute_lab::ctr::run_bounded(&mut c, STEP_LIMIT) {
            Ok(o) if o.timed_out => Err(format!("{step}: no answer in {STEP_LIMIT:?}")),
            Ok(o) => Ok(o),
            Err(e) => Err(format!("{step}: {e}")),
        }
    }

    fn status(&self, id: &str) -> Option<String> {
        let out = self.ctr("task ls", &["task", "ls"]).ok()?;
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
    }

    fn wait_status(&self, id: &str, want: &str) -> Result<(), String> {
        let t = Instant::now();
        while self.status(id).as_deref() != Some(want) {
            if t.elapsed() > STEP_LIMIT {
                return Err(format!("wait {want}: still {:?}", self.status(id)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn cycle(&self, kind: Kind, id: &str, netns: &Path) -> Result<(), String> {
        let rt = ["--runtime", self.runtime];
        match kind {
            Kind::Short => {
                let a = [&["run", "--rm"][..], &rt, &[self.image, id, "true"]].concat();
                self.ctr("run", &a).map(drop)
            }
            Kind::ExitCode => {
                let a = [
                    &["run", "--rm"][..],
                    &rt,
                    &[self.image, id, "sh", "-c", "exit 3"],
                ]
                .concat();
                // ctr exits with the task's status.
                match self.ctr_exit("run", &a)? {
                    o if o.code == Some(3) => Ok(()),
                    o => Err(format!(
                        "run: exit 3 came back as {:?} ({})",
                        o.code,
                        first_line(&o.stderr)
                    )),
                }
            }
            Kind::Exec | Kind::Killed => {
                let a = [&["run", "-d"][..], &rt, &[self.image, id, "sleep", "600"]].concat();
                self.ctr("run -d", &a)?;
                if kind == Kind::Exec {
                    self.wait_status(id, "RUNNING")?;
                    let out = self.ctr(
                        "exec",
                        &["task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo hi"],
                    )?;
                    if out.trim() != "hi" {
                        return Err(format!("exec: said {:?}", out.trim()));
                    }
                }
                self.ctr("kill", &["task", "kill", "-s", "KILL", id])?;
                if kind == Kind::Exec {
                    self.wait_status(id, "STOPPED")?;
                }
                self.ctr("rm -f", &["task", "rm", "-f", id])?;
                self.ctr("c rm", &["container", "rm", id]).map(drop)
            }
            Kind::Network => {
                let ns = format!("network:{}", netns.display());
                let a = [
                    &["run", "--rm"][..],
                    &rt,
                    &["--with-ns", &ns, self.image, id, "true"],
                ]
                .concat();
                self.ctr("run", &a).map(drop)
            }
        }
    }

    /// Best effort removal of what a failed cycle left in containerd.
    fn scrub(&self, id: &str) {
        let _ = self.ctr("scrub", &["task", "rm", "-f", id]);
        let _ = self.ctr("scrub", &["container", "rm", id]);
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// What a finished cycle id must not have left on the host.
fn leaks_of(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (pid, cmd) in scute_testkit::procs::processes() {
        let is_ours = cmd.contains(&format!("-id {id} "))
            || cmd.contains(&format!("/run/scute/{id}/"))
            || cmd.contains(&format!("/{id}/"));
        if is_ours
            && (cmd.contains("containerd-shim")
                || cmd.contains("qemu")
                || cmd.contains("virtiofsd"))
        {
            out.push(format!("process {pid} {}", first_line(&cmd)));
        }
    }
    if Path::new("/run/scute").join(id).exists() {
        out.push(format!("state dir /run/scute/{id}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if m.split('/').any(|c| c == id) {
            out.push(format!("mount {m}"));
        }
    }
    for c in scute_testkit::procs::cgroups_named(id) {
        out.push(format!("cgroup {}", c.display()));
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn main(
    address: &Path,
    runtime: &str,
    cycles: usize,
    concurrency: usize,
) -> anyhow::Result<i32> {
    if cycles == 0 || concurrency == 0 {
        bail!("--cycles and --concurrency must be at least 1");
    }
    let image = scute_testkit::image::IMAGE;
    scute_lab::ctr::Ctr::new(address).ensure_image(image, &mut Vec::new())?;
    let churn = Churn {
        address,
        runtime,
        image,
        prefix: format!("churn-{}", std::process::id()),
    };
    let pid = std::process::id();
    let nets: Vec<CniShaped> = (0..concurrency)
        .map(|w| {
            CniShaped::new(
                &format!("scute-churn-{pid}-{w}"),
                &format!("sch{}w{w}", pid % 100_000),
                &format!("10.98.{w}"),
            )
        })
        .collect::<std::io::Result<_>>()?;
    eprintln!(
        "{cycles} cycles through {runtime}, {concurrency} at a time ({})",
        KINDS.map(Kind::name).join("; ")
    );
    let t0 = Instant::now();
    let (times, failures) = run_cycles(&churn, &nets, cycles);
    let wall = t0.elapsed();
    let leaks = leaks_after(&churn, nets, cycles);
    println!(
        "scute bench churn --cycles {cycles} --concurrency {concurrency} ({runtime}): {:.0} s wall\n",
        wall.as_secs_f64()
    );
    print_table(&times, &failures);
    println!("\nleaks: {}", leaks.len());
    for l in leaks.iter().take(50) {
        println!("- {l}");
    }
    Ok(if failures.is_empty() && leaks.is_empty() {
        0
    } else {
        1
    })
}

/// Milliseconds of each kind's successful cycles.
type Times = BTreeMap<Kind, Vec<f64>>;
/// Each failed cycle: its kind, id, and "step: what happened".
type Failures = Vec<(Kind, String, String)>;

/// Runs `cycles` cycles, one worker per network namespace, the kinds in
/// turn; a failed cycle's leftovers are scrubbed at once.
fn run_cycles(churn: &Churn, nets: &[CniShaped], cycles: usize) -> (Times, Failures) {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let times: Mutex<Times> = Mutex::new(BTreeMap::new());
    let failures: Mutex<Failures> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    let progress = super::Progress::new(cycles);
    std::thread::scope(|s| {
        for net in nets {
            let (next, done, times, failures, progress) =
                (&next, &done, &times, &failures, &progress);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= cycles {
                    break;
                }
                let kind = KINDS[i % KINDS.len()];
                let id = format!("{}-{i}", churn.prefix);
                let t = Instant::now();
                match churn.cycle(kind, &id, &net.path()) {
                    Ok(()) => {
                        let ms = t.elapsed().as_secs_f64() * 1000.0;
                        times.lock().unwrap().entry(kind).or_default().push(ms);
                    }
                    Err(e) => {
                        churn.scrub(&id);
                        failures.lock().unwrap().push((kind, id.clone(), e));
                    }
                }
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let f = failures.lock().unwrap().len();
                let secs = t0.elapsed().as_secs_f64();
                progress.step(n, &format!("{n}/{cycles} cycles, {f} failed, {secs:.0} s"));
            });
        }
    });
    (times.into_inner().unwrap(), failures.into_inner().unwrap())
}

/// What the cycles left: processes, mounts and state of every cycle's
/// id, the workers' namespaces' residue (removed with them), and
/// containers containerd still lists.
fn leaks_after(churn: &Churn, nets: Vec<CniShaped>, cycles: usize) -> Vec<String> {
    // Give teardown a moment: rm returns before the last process is reaped.
    std::thread::sleep(Duration::from_secs(2));
    let mut leaks: Vec<String> = (0..cycles)
        .flat_map(|i| leaks_of(&format!("{}-{i}", churn.prefix)))
        .collect();
    leaks.extend(nets.iter().flat_map(CniShaped::residue));
    let listed = churn
        .ctr("c ls", &["container", "ls", "-q"])
        .unwrap_or_default();
    leaks.extend(
        listed
            .lines()
            .filter(|l| l.starts_with(&churn.prefix))
            .map(|l| format!("containerd still lists container {l}")),
    );
    leaks
}

/// The table of cycles by kind (ok, failed, p50, p99) and the failures.
fn print_table(times: &Times, failures: &Failures) {
    println!("| cycle | ok | failed | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut all = Vec::new();
    for kind in KINDS {
        let mut t = times.get(&kind).cloned().unwrap_or_default();
        t.sort_by(f64::total_cmp);
        all.extend(t.iter().copied());
        let failed = failures.iter().filter(|f| f.0 == kind).count();
        let (p50, p99) = (percentile(&t, 0.5), percentile(&t, 0.99));
        println!(
            "| {} | {} | {failed} | {p50:.0} | {p99:.0} |",
            kind.name(),
            t.len()
        );
    }
    all.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&all, 0.5), percentile(&all, 0.99));
    println!(
        "| all | {} | {} | {p50:.0} | {p99:.0} |",
        all.len(),
        failures.len()
    );
    let mut by_step: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, e) in failures {
        let step = e.split(':').next().unwrap_or("?").to_owned();
        *by_step.entry(step).or_default() += 1;
    }
    if !failures.is_empty() {
        println!("\nfailures by step: {by_step:?}");
        for (kind, id, e) in failures.iter().take(20) {
            println!("- {id} ({}): {e}", kind.name());
        }
    }
}
