//! `/etc/scute/config.toml`: every key optional, every default documented here.

use std::path::{Path, PathBuf};

use scute_hypervisor::AccelChoice;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Default config file.
pub const DEFAULT_PATH: &str = "/etc/scute/config.toml";
/// Environment variable overriding the config file.
pub const ENV_VAR: &str = "SCUTE_CONFIG";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// QEMU binary. Default `/usr/bin/qemu-system-x86_64`.
    pub qemu_path: PathBuf,
    /// virtiofsd binary. Default: `virtiofsd` found on PATH, then
    /// `/usr/local/bin`, `/root/.cargo/bin`, `/usr/libexec`.
    pub virtiofsd_path: Option<PathBuf>,
    /// Guest assets directory. Default `/var/lib/scute/assets`.
    pub assets_dir: PathBuf,
    /// Guest kernel: `"scute"` (the minimal kernel `scute assets build`
    /// compiles, `<assets_dir>/vmlinux`), `"debian"` (Debian's cloud kernel,
    /// `<assets_dir>/vmlinuz`, with its modules in the initramfs), or the
    /// path of a kernel image. Default `"scute"`.
    pub kernel: KernelChoice,
    /// Guest initramfs. Default the one built for the kernel:
    /// `<assets_dir>/initrd-scute.img` or `<assets_dir>/initrd.img`.
    pub initrd: Option<PathBuf>,
    /// vCPUs per VM. Default 1.
    pub vcpus: u32,
    /// Guest memory in MiB. Default 256.
    pub memory_mib: u32,
    /// Most vCPUs a pod may ask for (annotations). Default 8.
    pub max_vcpus: u32,
    /// Most guest memory a pod may ask for, in MiB (annotations). Default 8192.
    pub max_memory_mib: u32,
    /// `auto` (KVM when usable, else TCG), `kvm` or `tcg`. Default `auto`.
    pub accel: AccelChoice,
    /// Extra guest kernel parameters. Default empty.
    pub kernel_params: String,
    /// Verbose guest kernel log and agent log, kept state on failure. Default false.
    pub debug: bool,
    /// The operator's debug shell (`scute debug SANDBOX`): a shell in each
    /// new sandbox's guest, outside its containers, for root on the host
    /// only, every session logged by the shim. Default false.
    pub debug_shell: bool,
    /// Runtime state root. Default `/run/scute`.
    pub state_dir: PathBuf,
    /// Seconds to wait for the guest agent after starting the VM. Default 60.
    pub boot_timeout_secs: u64,
    /// First uid of the range the VMMs run as (one uid per sandbox, gid the
    /// same). Default 2000000.
    pub vmm_uid_base: u32,
    /// Size of that range: how many sandboxes can run at once. 0 runs QEMU
    /// as root, unjailed (logged, and `scute check` says so). Default 10000.
    pub vmm_uids: u32,
    /// Host memory a sandbox's QEMU and virtiofsd may use beyond guest RAM
    /// (TCG's translation cache, device state, virtiofsd), in MiB: its
    /// cgroup's memory limit is guest RAM plus this. 0: no limit. Default 1024.
    pub vmm_memory_overhead_mib: u32,
    /// Seconds between liveness checks of a sandbox's agent, each waited
    /// for as long; 0 turns them off. Default 10.
    pub liveness_interval_secs: u64,
    /// Missed liveness checks in a row after which the sandbox is declared
    /// dead: its VM is killed and its containers reported exited. Default 3.
    pub liveness_misses: u32,
    /// Seconds the host waits for the agent to create a container
    /// (libcontainer under emulation is slow). Default 60.
    pub create_timeout_secs: u64,
    /// Seconds the host waits for the agent to start a container or an
    /// exec, or to register an exec. Default 30.
    pub start_timeout_secs: u64,
    /// Seconds the host waits for any other agent call: signals, deletes,
    /// pause/resume, pids, stats, pty resizes. Kill and Delete of a hung
    /// guest's container take this long before the VM is killed. Default 10.
    pub call_timeout_secs: u64,
    /// TCG's translation cache per VM, in MiB; 0 leaves QEMU's default
    /// (up to 1 GiB). Not used under KVM. Default 256: a JIT (Node.js)
    /// outgrows 64 at start and is retranslated; an idle VM fills ~40.
    pub tcg_tb_size_mib: u32,
    /// Memory the guest frees goes back to the host (virtio-balloon free
    /// page reporting). Default true.
    pub free_page_reporting: bool,
    /// The `io.scute.*` pod annotations a CRI pod may set (Kata's
    /// `enable_annotations`): `io.scute.vm.memory_mib`, `io.scute.vm.vcpus`,
    /// `io.scute.vm.pool`. A tenant's pod that sets one not listed here
    /// gets the operator's choice (logged); containers not created through
    /// CRI (`ctr`, nerdctl: whoever holds containerd's socket) may always.
    /// containerd must also pass them on (the runtime's `pod_annotations`).
    /// Default empty.
    pub enable_annotations: Vec<String>,
    /// Ready VMs (`scute pool`, started by `scute install`).
    pub pool: PoolConfig,
}

/// `[pool]`: VMs booted ahead of need, handed one each to new sandboxes of
/// the same shape (the rest of this config; no network interface).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Ready VMs to keep; 0 turns the pool off (every sandbox boots its
    /// own VM, and `scute install` starts no pool). Default 2.
    pub size: u32,
    /// Host memory (PSS) the ready VMs may hold in total, in MiB: the pool
    /// keeps fewer than `size` rather than pass it. Default 1024.
    pub max_idle_mib: u32,
    /// vCPUs of the ready VMs. Default: `vcpus` (what a sandbox gets when
    /// its pod asks for nothing else); only sandboxes of this size take them.
    pub vcpus: Option<u32>,
    /// Guest memory of the ready VMs, in MiB. Default: `memory_mib`.
    pub memory_mib: Option<u32>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            size: 2,
            max_idle_mib: 1024,
            vcpus: None,
            memory_mib: None,
        }
    }
}

impl PoolConfig {
    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

/// What is wrong with a config file's text.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// Not TOML, an unknown key, or a value of the wrong kind (toml's
    /// message names the line and the keys it knows).
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{key} = {value} must be between {min} and {max}")]
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: String,
    },
    #[error("max_vcpus = {max_vcpus} and max_memory_mib = {max_memory_mib} must be at least vcpus = {vcpus} and memory_mib = {memory_mib}")]
    MaxBelowDefault {
        max_vcpus: u32,
        max_memory_mib: u32,
        vcpus: u32,
        memory_mib: u32,
    },
    #[error(
        "vmm_uid_base = {base} with vmm_uids = {count}: the range must lie within 1000..4294967294"
    )]
    UidRange { base: u32, count: u32 },
    #[error("{0} must be positive")]
    NotPositive(&'static str),
}

impl Config {
    /// `-accel`, `-cpu`, `-smp` (and TCG's kernel parameters) as a sandbox
    /// of the default size gets them under `accel`.
    pub fn accel_settings(&self, accel: scute_hypervisor::Accel) -> String {
        scute_hypervisor::qemu::accel_settings(
            accel,
            (self.tcg_tb_size_mib > 0).then_some(self.tcg_tb_size_mib),
            self.vcpus,
        )
    }

    /// The config a pool member boots with: this one at the pool's VM size.
    pub fn for_pool(&self) -> Config {
        Config {
            vcpus: self.pool.vcpus.unwrap_or(self.vcpus),
            memory_mib: self.pool.memory_mib.unwrap_or(self.memory_mib),
            ..self.clone()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            qemu_path: "/usr/bin/qemu-system-x86_64".into(),
            virtiofsd_path: None,
            assets_dir: "/var/lib/scute/assets".into(),
            kernel: KernelChoice::Scute,
            initrd: None,
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 8,
            max_memory_mib: 8192,
            accel: AccelChoice::Auto,
            kernel_params: String::new(),
            debug: false,
            debug_shell: false,
            state_dir: "/run/scute".into(),
            boot_timeout_secs: 60,
            vmm_uid_base: 2_000_000,
            vmm_uids: 10_000,
            vmm_memory_overhead_mib: 1024,
            liveness_interval_secs: 10,
            liveness_misses: 3,
            create_timeout_secs: 60,
            start_timeout_secs: 30,
            call_timeout_secs: 10,
            tcg_tb_size_mib: 256,
            free_page_reporting: true,
            enable_annotations: Vec::new(),
            pool: PoolConfig::default(),
        }
    }
}

/// Which guest kernel boots: scute's own, Debian's, or a given image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    Scute,
    Debian,
    Path(PathBuf),
}

impl KernelChoice {
    /// The assets flavor that holds its initramfs (a kernel given by path
    /// is taken to be a distribution kernel, with modules).
    pub fn flavor(&self) -> Flavor {
        match self {
            KernelChoice::Scute => Flavor::Scute,
            KernelChoice::Debian | KernelChoice::Path(_) => Flavor::Debian,
        }
    }
}

impl Serialize for KernelChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KernelChoice::Scute => s.serialize_str("scute"),
            KernelChoice::Debian => s.serialize_str("debian"),
            KernelChoice::Path(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for KernelChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "scute" => Ok(KernelChoice::Scute),
            "debian" => Ok(KernelChoice::Debian),
            p if p.starts_with('/') => Ok(KernelChoice::Path(p.into())),
            other => Err(serde::de::Error::custom(format!(
                "kernel = {other:?}: use \"scute\", \"debian\" or an absolute path"
            ))),
        }
    }
}

/// The two sets of guest assets `scute assets build` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// scute's minimal kernel (vmlinux, PVH) and an initramfs without modules.
    Scute,
    /// Debian's cloud kernel (vmlinuz) and an initramfs with its modules.
    Debian,
}

impl Flavor {
    pub fn kernel_file(self) -> &'static str {
        match self {
            Flavor::Scute => "vmlinux",
            Flavor::Debian => "vmlinuz",
        }
    }

    pub fn initrd_file(self) -> &'static str {
        match self {
            Flavor::Scute => "initrd-scute.img",
            Flavor::Debian => "initrd.img",
        }
    }

    pub fn manifest_file(self) -> &'static str {
        match self {
            Flavor::Scute => "manifest.json",
            Flavor::Debian => "manifest-debian.json",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Scute => "scute",
            Flavor::Debian => "debian",
        }
    }
}

/// `p` with its longest existing prefix canonicalized (the rest may not
/// exist yet).
fn canonical(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

impl Config {
    /// The file [`Config::load`] reads: `explicit`, else `$SCUTE_CONFIG`,
    /// else the default path; and whether it must exist (all but the last).
    pub fn path(explicit: Option<&Path>) -> (PathBuf, bool) {
        match (explicit, std::env::var_os(ENV_VAR)) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (PathBuf::from(p), true),
            (None, None) => (PathBuf::from(DEFAULT_PATH), false),
        }
    }

    /// Loads `explicit`, else `$SCUTE_CONFIG`, else the default path; a missing
    /// default file means all defaults, a missing explicit one is an error.
    pub fn load(explicit: Option<&Path>) -> Result<Self, Error> {
        let (path, required) = Self::path(explicit);
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map_err(|e| Error::Config {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Self::default(),
            Err(e) => {
                return Err(Error::Config {
                    path,
                    message: e.to_string(),
                })
            }
        };
        // Mount points are reported by their canonical path: a state_dir
        // given through a symlink (/var/run/scute) must be compared as /run/scute.
        config.state_dir = canonical(&config.state_dir);
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let c: Self = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), Invalid> {
        let range = |key, value: u32, min: u32, max: u32, of: Option<&'static str>| {
            if (min..=max).contains(&value) {
                return Ok(());
            }
            let max = match of {
                Some(k) => format!("{k} = {max}"),
                None => max.to_string(),
            };
            Err(Invalid::OutOfRange {
                key,
                value: value.into(),
                min: min.into(),
                max,
            })
        };
        range("vcpus", self.vcpus, 1, 64, None)?;
        range("memory_mib", self.memory_mib, 64, 65536, None)?;
        if let Some(v) = self.pool.vcpus {
            range("[pool] vcpus", v, 1, self.max_vcpus, Some("max_vcpus"))?;
        }
        if let Some(m) = self.pool.memory_mib {
            let max = self.max_memory_mib;
            range("[pool] memory_mib", m, 64, max, Some("max_memory_mib"))?;
        }
        if self.max_vcpus < self.vcpus || self.max_memory_mib < self.memory_mib {
            return Err(Invalid::MaxBelowDefault {
                max_vcpus: self.max_vcpus,
                max_memory_mib: self.max_memory_mib,
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
            });
        }
        if (self.vmm_uid_base as u64) + (self.vmm_uids as u64) > u32::MAX as u64 - 1
            || (self.vmm_uids > 0 && self.vmm_uid_base < 1000)
        {
            return Err(Invalid::UidRange {
                base: self.vmm_uid_base,
                count: self.vmm_uids,
            });
        }
        for (key, v) in [
            ("boot_timeout_secs", self.boot_timeout_secs),
            ("create_timeout_secs", self.create_timeout_secs),
            ("start_timeout_secs", self.start_timeout_secs),
            ("call_timeout_secs", self.call_timeout_secs),
        ] {
            if v == 0 {
                return Err(Invalid::NotPositive(key));
            }
        }
        Ok(())
    }

    pub fn kernel(&self) -> PathBuf {
        match &self.kernel {
            KernelChoice::Path(p) => p.clone(),
            k => self.assets_dir.join(k.flavor().kernel_file()),
        }
    }

    pub fn initrd(&self) -> PathBuf {
        self.initrd
            .clone()
            .unwrap_or_else(|| self.assets_dir.join(self.kernel.flavor().initrd_file()))
    }

    /// The virtiofsd binary: configured, else searched.
    pub fn virtiofsd(&self) -> Option<PathBuf> {
        if let Some(p) = &self.virtiofsd_path {
            return Some(p.clone());
        }
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(
            [
                "/usr/local/bin",
                "/root/.cargo/bin",
                "/usr/libexec",
                "/usr/lib/qemu",
            ]
            .map(PathBuf::from),
        );
        dirs.into_iter()
            .map(|d| d.join("virtiofsd"))
            .find(|p| p.is_file())
    }

    /// The config as TOML with every default spelled out (for `scute install`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let c = Config::parse(
            "vcpus = 2\nmemory_mib = 512\naccel = \"tcg\"\nkernel_params = \"a=b\"\ndebug = true\nqemu_path = \"/opt/q\"\n",
        )
        .unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.accel, AccelChoice::Tcg);
        assert_eq!(c.kernel_params, "a=b");
        assert!(c.debug);
        assert_eq!(c.qemu_path, PathBuf::from("/opt/q"));
        assert_eq!(c.kernel(), PathBuf::from("/var/lib/scute/assets/vmlinux"));
        assert_eq!(
            c.initrd(),
            PathBuf::from("/var/lib/scute/assets/initrd-scute.img")
        );
    }

    #[test]
    fn kernel_is_scute_debian_or_a_path() {
        let c = Config::parse("kernel = \"debian\"").unwrap();
        assert_eq!(c.kernel(), PathBuf::from("/var/lib/scute/assets/vmlinuz"));
        assert_eq!(
            c.initrd(),
            PathBuf::from("/var/lib/scute/assets/initrd.img")
        );
        let c = Config::parse("kernel = \"/opt/k\"\ninitrd = \"/opt/i\"").unwrap();
        assert_eq!(c.kernel(), PathBuf::from("/opt/k"));
        assert_eq!(c.initrd(), PathBuf::from("/opt/i"));
        let e = Config::parse("kernel = \"minimal\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"scute\", \"debian\" or an absolute path"),
            "{e}"
        );
        let text = toml::to_string(&Config::default()).unwrap();
        assert!(text.contains("kernel = \"scute\""), "{text}");
    }

    #[test]
    fn unknown_key_and_bad_values_are_errors_that_name_them() {
        let e = Config::parse("vcpu = 2").unwrap_err().to_string();
        assert!(e.contains("vcpu"), "{e}");
        let e = Config::parse("memory_mib = 1").unwrap_err().to_string();
        assert_eq!(e, "memory_mib = 1 must be between 64 and 65536");
        let e = Config::parse("[pool]\nvcpus = 9\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "[pool] vcpus = 9 must be between 1 and max_vcpus = 8");
        let e = Config::parse("accel = \"hyperv\"").unwrap_err().to_string();
        assert!(e.contains("accel") || e.contains("hyperv"), "{e}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/scute.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/scute.toml"));
    }

    #[test]
    fn defaults_roundtrip_through_toml() {
        let c = Config::default();
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn state_dir_through_a_symlink_is_canonical() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("link")).unwrap();
        let want = real.canonicalize().unwrap().join("scute/x");
        assert_eq!(canonical(&d.path().join("link/scute/x")), want);
    }
}
