//! `scute assets build`: the guest kernel and initramfs, in two flavors.
//!
//! - `scute` (the default): scute's own minimal kernel compiled from
//!   Debian's `linux-source-6.1` ([`kernel`]), booted as an
//!   uncompressed PVH `vmlinux`; its initramfs holds no modules.
//! - `debian`: Debian's `linux-image-cloud-amd64` vmlinuz, with the modules
//!   the guest needs (and their dependencies, in load order) in the initramfs.
//!
//! Each initramfs is an uncompressed newc cpio (decompressing costs more
//! than reading under emulation) holding `scute-agent` as `/init` and the
//! shared libraries it links (none when it is linked statically).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use scute_runtime::config::Flavor;
pub use scute_runtime::manifest::{read_manifest, Manifest};

use crate::cpio::CpioWriter;
pub use crate::error::Error;

mod cpio;
mod error;
mod fingerprint;
pub mod kernel;

/// Modules the guest loads (dependencies are added from modules.dep).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "virtiofs",
    "overlay",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];

/// Bumped when the initramfs layout changes, to force a rebuild.
const LAYOUT_VERSION: u32 = 4;

pub struct BuildRequest {
    pub assets_dir: PathBuf,
    pub agent: PathBuf,
    pub flavor: Flavor,
    /// Debian flavor: kernel version (`uname -r` style); default: newest
    /// cloud kernel in /boot.
    pub kernel_version: Option<String>,
    /// Scute flavor: where the kernel source is extracted and built.
    pub cache_dir: PathBuf,
    pub force: bool,
}

/// Where scute's kernel is built, unless told otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/scute";

pub enum Outcome {
    Built(Manifest),
    UpToDate(Manifest),
}

/// Newest `/boot/vmlinuz-*-cloud-amd64`, else newest vmlinuz.
pub fn default_kernel_version() -> Result<String, Error> {
    let mut versions: Vec<String> = fs::read_dir("/boot")
        .map_err(Error::io("read /boot"))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .collect();
    versions.sort_by_key(|v| crate::fingerprint::version_key(v));
    versions
        .iter()
        .rev()
        .find(|v| v.ends_with("-cloud-amd64"))
        .or(versions.last())
        .cloned()
        .ok_or_else(|| {
            Error::Build(
                "no kernel in /boot: install one with `apt-get install linux-image-cloud-amd64`"
                    .into(),
            )
        })
}

fn check_agent(agent: &Path) -> Result<(), Error> {
    if agent.is_file() {
        return Ok(());
    }
    Err(Error::Build(format!(
        "agent binary {} not found: build it with `cargo build --release -p scute-agent` or pass --agent",
        agent.display()
    )))
}

/// Builds the assets of `req.flavor` unless their inputs are unchanged.
/// `progress` gets one line per step.
pub fn build(req: &BuildRequest, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    match req.flavor {
        Flavor::Scute => build_scute(req, progress),
        Flavor::Debian => build_debian(req, progress),
    }
}

fn build_scute(req: &BuildRequest, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    let flavor = Flavor::Scute;
    check_agent(&req.agent)?;
    let tarball = crate::kernel::find_source()?;
    let kernel_inputs = crate::kernel::fingerprint(&tarball, crate::kernel::FRAGMENT)?;
    let libs = shared_libs(&req.agent)?;
    let fingerprint = format!(
        "layout={LAYOUT_VERSION};flavor=scute;kernel={kernel_inputs};{}",
        crate::fingerprint::stat_inputs(std::iter::once(&req.agent).chain(libs.iter()))?
    );
    let inputs = format!("{:016x}", crate::fingerprint::fnv1a(fingerprint.as_bytes()));
    let kernel_out = req.assets_dir.join(flavor.kernel_file());
    let initrd_out = req.assets_dir.join(flavor.initrd_file());
    let old = read_manifest(&req.assets_dir, flavor);
    if !req.force && kernel_out.is_file() && initrd_out.is_file() {
        if let Some(m) = old.as_ref().filter(|m| m.inputs == inputs) {
            return Ok(Outcome::UpToDate(m.clone()));
        }
    }
    fs::create_dir_all(&req.assets_dir)
        .map_err(Error::io(format!("create {}", req.assets_dir.display())))?;
    let tmp_kernel = req.assets_dir.join(".vmlinux.tmp");
    let release = match old
        .as_ref()
        .filter(|m| m.kernel_inputs == kernel_inputs && kernel_out.is_file() && !req.force)
    {
        Some(m) => {
            progress(&format!(
                "kernel {}: source and config unchanged, not rebuilt",
                m.kernel_version
            ));
            fs::copy(&kernel_out, &tmp_kernel).map_err(Error::io("copy kernel"))?;
            m.kernel_version.clone()
        }
        None => {
            let built = crate::kernel::build(
                &tarball,
                crate::kernel::FRAGMENT,
                &req.cache_dir.join("kernel"),
                progress,
            )?;
            // Without its symbol table: QEMU's ELF loader reads and sorts
            // it at every spawn (~10 ms of each start). The kernel cache
            // keeps the full vmlinux for `nm` and profiling.
            crate::kernel::run(
                Command::new("strip")
                    .args(["--strip-all", "-o"])
                    .arg(&tmp_kernel)
                    .arg(&built.vmlinux),
                "strip vmlinux",
            )?;
            built.release
        }
    };
    let built = Built {
        flavor,
        tmp_kernel,
        kernel_version: release,
        libs: &libs,
        modules: &[],
        inputs,
        kernel_inputs,
    };
    built.install(req, progress).map(Outcome::Built)
}

/// A flavor's kernel (copied to `tmp_kernel`) and what its initramfs holds.
struct Built<'a> {
    flavor: Flavor,
    tmp_kernel: PathBuf,
    kernel_version: String,
    libs: &'a [PathBuf],
    modules: &'a [PathBuf],
    inputs: String,
    kernel_inputs: String,
}

impl Built<'_> {
    /// Writes the initramfs, puts it and the kernel in place, records the
    /// manifest.
    fn install(
        self,
        req: &BuildRequest,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Manifest, Error> {
        let f = self.flavor;
        progress(&format!(
            "initramfs: agent {}, {} libraries, {} modules",
            req.agent.display(),
            self.libs.len(),
            self.modules.len()
        ));
        let kernel_out = req.assets_dir.join(f.kernel_file());
        let initrd_out = req.assets_dir.join(f.initrd_file());
        let tmp_initrd = req.assets_dir.join(format!(".{}.tmp", f.initrd_file()));
        write_initramfs(&tmp_initrd, &req.agent, self.libs, self.modules)?;
        fs::rename(&self.tmp_kernel, &kernel_out).map_err(Error::io("install kernel"))?;
        fs::rename(&tmp_initrd, &initrd_out).map_err(Error::io("install initramfs"))?;
        let manifest = Manifest {
            kernel_version: self.kernel_version,
            kernel_bytes: fs::metadata(&kernel_out).map(|m| m.len()).unwrap_or(0),
            initrd_bytes: fs::metadata(&initrd_out).map(|m| m.len()).unwrap_or(0),
            modules: self
                .modules
                .iter()
                .filter_map(|m| m.file_stem()?.to_str().map(str::to_owned))
                .collect(),
            inputs: self.inputs,
            flavor: f.name().into(),
            kernel_inputs: self.kernel_inputs,
        };
        fs::write(
            req.assets_dir.join(f.manifest_file()),
            serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
        )
        .map_err(Error::io("write manifest"))?;
        Ok(manifest)
    }
}

fn build_debian(req: &BuildRequest, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    let flavor = Flavor::Debian;
    let version = match &req.kernel_version {
        Some(v) => v.clone(),
        None => default_kernel_version()?,
    };
    let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{version}"));
    let moddir = PathBuf::from(format!("/lib/modules/{version}"));
    if !vmlinuz.is_file() || !moddir.is_dir() {
        return Err(Error::Build(format!(
            "kernel {version} is not installed ({} / {}): `apt-get install linux-image-cloud-amd64`",
            vmlinuz.display(),
            moddir.display()
        )));
    }
    check_agent(&req.agent)?;
    let libs = shared_libs(&req.agent)?;
    let modules = resolve_modules(&moddir, GUEST_MODULES)?;

    let fingerprint = format!(
        "layout={LAYOUT_VERSION};flavor=debian;kernel={version};{}",
        crate::fingerprint::stat_inputs(
            std::iter::once(&vmlinuz)
                .chain(std::iter::once(&req.agent))
                .chain(libs.iter())
                .chain(modules.iter())
        )?
    );
    let inputs = format!("{:016x}", crate::fingerprint::fnv1a(fingerprint.as_bytes()));
    let kernel_out = req.assets_dir.join(flavor.kernel_file());
    let initrd_out = req.assets_dir.join(flavor.initrd_file());
    if !req.force && kernel_out.is_file() && initrd_out.is_file() {
        if let Some(m) = read_manifest(&req.assets_dir, flavor).filter(|m| m.inputs == inputs) {
            return Ok(Outcome::UpToDate(m));
        }
    }

    fs::create_dir_all(&req.assets_dir)
        .map_err(Error::io(format!("create {}", req.assets_dir.display())))?;
    progress(&format!("kernel {version}: copying {}", vmlinuz.display()));
    let tmp_kernel = req.assets_dir.join(".vmlinuz.tmp");
    fs::copy(&vmlinuz, &tmp_kernel).map_err(Error::io("copy kernel"))?;

    let built = Built {
        flavor,
        tmp_kernel,
        kernel_version: version,
        libs: &libs,
        modules: &modules,
        inputs,
        kernel_inputs: String::new(),
    };
    built.install(req, progress).map(Outcome::Built)
}

/// The shared libraries `ldd` reports for `bin` (absolute paths).
pub fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(Error::io("run ldd (package libc-bin)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `wanted` and their dependencies from modules.dep, dependencies first.
fn resolve_modules(moddir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, Error> {
    let dep_text = fs::read_to_string(moddir.join("modules.dep"))
        .map_err(Error::io(format!("read {}/modules.dep", moddir.display())))?;
    let deps = parse_modules_dep(&dep_text);
    let by_name: HashMap<String, &String> = deps.keys().map(|k| (module_name(k), k)).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for w in wanted {
        let Some(rel) = by_name.get(&w.replace('-', "_")) else {
            // Built into this kernel, or absent: the guest will say if it's needed.
            continue;
        };
        visit(rel, &deps, &mut seen, &mut order);
    }
    Ok(order.into_iter().map(|r| moddir.join(r)).collect())
}

fn visit(
    m: &str,
    deps: &HashMap<String, Vec<String>>,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
    if !seen.insert(m.to_owned()) {
        return;
    }
    for d in deps.get(m).map(Vec::as_slice).unwrap_or_default() {
        visit(d, deps, seen, out);
    }
    out.push(m.to_owned());
}

fn parse_modules_dep(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.trim().to_owned(),
                d.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect()
}

fn module_name(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn write_initramfs(
    out: &Path,
    agent: &Path,
    libs: &[PathBuf],
    modules: &[PathBuf],
) -> Result<(), Error> {
    let file = fs::File::create(out).map_err(Error::io(format!("create {}", out.display())))?;
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    let mut dirs = BTreeSet::new();
    let io = |e: std::io::Error| Error::Io {
        what: "write initramfs".into(),
        source: e,
    };
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "lib"] {
        dirs.insert(d.to_owned());
        w.dir(d, 0o755).map_err(io)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    w.char_dev("dev/null", 0o666, 1, 3).map_err(io)?;
    let read = |p: &Path| fs::read(p).map_err(Error::io(format!("read {}", p.display())));
    w.file("init", 0o755, &read(agent)?).map_err(io)?;
    let mut add = |w: &mut CpioWriter<_>, p: &Path, perm: u32| -> Result<(), Error> {
        let rel = p.to_string_lossy().trim_start_matches('/').to_owned();
        let mut prefix = String::new();
        for comp in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|x| x.1)
            .unwrap_or(&[])
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if dirs.insert(prefix.clone()) {
                w.dir(&prefix, 0o755).map_err(io)?;
            }
        }
        w.file(&rel, perm, &read(p)?).map_err(io)
    };
    for l in libs {
        add(&mut w, l, 0o755)?;
    }
    if !modules.is_empty() {
        let mut list = String::new();
        for m in modules {
            add(&mut w, m, 0o644)?;
            list.push_str(&m.to_string_lossy());
            list.push('\n');
        }
        w.file("lib/modules/scute-modules.txt", 0o644, list.as_bytes())
            .map_err(io)?;
    }
    let mut out = w.finish().map_err(io)?;
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parsed() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(t),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn modules_resolved_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/fs/fuse/fuse.ko\n\
             kernel/fs/fuse/fuse.ko:\nkernel/drivers/virtio/virtio.ko:\nkernel/fs/overlayfs/overlay.ko:\n",
        )
        .unwrap();
        let got = resolve_modules(dir.path(), &["virtiofs", "overlay", "absent"]).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        assert_eq!(names, ["virtio", "fuse", "virtiofs", "overlay"]);
    }

    #[test]
    fn newest_version_sorts_numerically() {
        let mut v = [
            "6.1.0-9-cloud-amd64",
            "6.1.0-56-cloud-amd64",
            "6.1.0-10-cloud-amd64",
        ];
        v.sort_by_key(|a| crate::fingerprint::version_key(a));
        assert_eq!(v.last().unwrap(), &"6.1.0-56-cloud-amd64");
    }
}
