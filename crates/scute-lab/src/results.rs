//! `results.json`: everything a lab run measured, as data. The report is
//! rendered from this alone, so a results file can be re-rendered anywhere.
//! Schema documented in docs/lab-results.md; bump [`SCHEMA_VERSION`] on any
//! incompatible change.

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    /// `scute --version` of the binary that ran the lab.
    pub scute_version: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// The command line, as typed.
    pub command: String,
    pub options: RunOptions,
    pub host: Host,
    pub setup: Setup,
    pub runtimes: Vec<RuntimeResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    pub runs: usize,
    /// Sections run: setup, workload, isolation, performance.
    pub only: Vec<String>,
    pub image: String,
    pub port: u16,
    pub http_seconds: u32,
    pub http_connections: u32,
    /// Seconds of load before the measured ones (0 in results from before
    /// the warm-up existed).
    #[serde(default)]
    pub http_warmup_seconds: u32,
    /// `--cpus` given to every container, if the lab was asked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub kernel: String,
    pub proc_version: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    /// "kvm" or "tcg": what scute's `accel = auto` picks on this host.
    pub accel: String,
    pub accel_reason: String,
    /// What a sandbox's QEMU gets for that accelerator (`-accel`, `-cpu`,
    /// `-smp`, TCG's kernel parameters).
    #[serde(default)]
    pub accel_settings: String,
    pub proc_entries: usize,
    pub sys_module_count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// What ran the containers: "containerd" (through `ctr`), "docker" or
    /// "podman" (through their CLIs, `--runtime`).
    #[serde(default = "containerd")]
    pub engine: String,
    /// Docker's or Podman's version; containerd's is `containerd_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    pub containerd_address: String,
    /// `ctr version`'s server version; None when containerd did not answer.
    pub containerd_version: Option<String>,
    pub containerd_config: String,
    /// scute's runtime table in containerd's config, as written there.
    pub runtime_entry: Option<String>,
    /// `scute check`, item by item.
    pub check: Vec<CheckItem>,
    pub check_ok: bool,
}

fn containerd() -> String {
    "containerd".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckItem {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeResult {
    pub name: String,
    /// What kind of isolation the runtime gives (from the lab's table of
    /// runtimes, not from its name); `unknown` in reports older than it.
    #[serde(default)]
    pub kind: RuntimeKind,
    /// containerd runtime type, e.g. io.containerd.scute.v2.
    pub runtime_type: String,
    /// The binary that decides availability (shim or OCI runtime), if found.
    pub binary: Option<String>,
    /// First line of `<binary> --version`.
    pub version: Option<String>,
    pub available: bool,
    /// Why it is not available (not installed, smoke run failed, …).
    pub unavailable_reason: Option<String>,
    /// What went wrong in a section; the run went on.
    pub errors: Vec<String>,
    pub smoke: Option<Smoke>,
    pub kernel: Option<String>,
    pub proc_version: Option<String>,
    pub cpu_model: Option<String>,
    /// CPUs the container's kernel has (`/proc/cpuinfo`): the host's under
    /// runc whatever the quota, a VM runtime's vCPUs.
    #[serde(default)]
    pub cpus_seen: Option<u32>,
    pub workload: Option<Workload>,
    /// Start of a container in a fresh VM of its own (for scute: pool off).
    pub startup_ms: Option<Stats>,
    /// scute only, when a pool runs: start with a ready VM from the pool
    /// (each run waits for one first).
    #[serde(default)]
    pub startup_pool_ms: Option<Stats>,
    pub http: Option<Http>,
    pub cpu: Option<Cpu>,
    pub memory_pss_kib: Option<u64>,
    /// comm of every process counted in `memory_pss_kib`.
    pub memory_processes: Vec<String>,
    pub file_io: Option<FileIo>,
    pub probes: Vec<Probe>,
    /// Every command the lab ran for this runtime, in order.
    pub commands: Vec<String>,
}

impl RuntimeResult {
    pub fn probe(&self, id: &str) -> Option<&Probe> {
        self.probes.iter().find(|p| p.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Smoke {
    pub command: String,
    pub exit_code: i32,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub image: String,
    pub host_port: u16,
    pub container_port: u16,
    /// HTTP status of GET / through the published port; None: no answer.
    pub health_status: Option<u16>,
    /// From `ctr run -d` to the first HTTP 200; None: no 200 within 180 s.
    pub ready_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub median: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Http {
    /// Status of the health check GET /.
    pub status: u16,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub connections: u32,
    pub seconds: u32,
    /// Seconds of the same load before these, not counted.
    #[serde(default)]
    pub warmup_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// What was computed, e.g. "md5sum of 32 MiB of zeros".
    pub task: String,
    /// Wall time inside the container (kernel clock, 10 ms resolution).
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileIo {
    pub mib: u64,
    /// Sequential write with fsync, in the container's rootfs.
    pub write_mib_s: f64,
    /// Sequential re-read of the same file (page cache allowed).
    pub read_mib_s: f64,
}

/// How a runtime isolates its containers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    #[default]
    Unknown,
    /// Namespaces and cgroups on the host's kernel (runc, crun, youki).
    SharedKernel,
    /// A VM with a guest kernel of its own (scute, Kata).
    Vm,
    /// A kernel in user space between the container and the host (gVisor).
    UserKernel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The container cannot see or reach the host resource.
    Isolated,
    /// The container sees or reaches the host resource.
    Exposed,
    /// The probe could not decide (e.g. the host has no such resource).
    NotApplicable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Isolated => "isolated",
            Verdict::Exposed => "exposed",
            Verdict::NotApplicable => "not applicable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub id: String,
    pub title: String,
    /// Run in a `--privileged` container.
    pub privileged: bool,
    pub verdict: Verdict,
    /// One sentence: why this verdict, from the evidence.
    pub reason: String,
    /// The captured output the verdict was decided from (trimmed).
    pub evidence: String,
    /// The full output, relative to the report directory.
    pub raw: String,
}
