//! scute's own guest kernel: Debian's `linux-source-6.1`, x86-64
//! `tinyconfig` plus the fragment in `assets/kernel/scute-guest.config`,
//! everything built in, the uncompressed `vmlinux` booted through its PVH
//! entry. The build tree is kept in a cache dir, so a changed fragment
//! recompiles only what it touches; an unchanged fingerprint (source
//! tarball + fragment) builds nothing at all.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// The config fragment, compiled into the binary so an installed `scute`
/// builds the same kernel as the repository it came from.
pub const FRAGMENT: &str = include_str!("../../../assets/kernel/scute-guest.config");

/// Patches applied to the source before it is configured, in order (name,
/// text). `lapic-timer-hz.patch` and `free-init-poison.patch` add boot
/// parameters that QEMU's backend passes under TCG: `lapic_timer_hz=`, so
/// the guest skips its APIC timer calibration, and `free_init_poison=off`,
/// so it doesn't fill freed init memory. `virtio-console-rx-bufs.patch`
/// caps the receive buffers of each virtio-serial queue at 64 pages: the
/// driver filled every ring entry, ~8 MiB of every guest's memory.
pub const PATCHES: &[(&str, &str)] = &[
    (
        "lapic-timer-hz.patch",
        include_str!("../../../assets/kernel/lapic-timer-hz.patch"),
    ),
    (
        "free-init-poison.patch",
        include_str!("../../../assets/kernel/free-init-poison.patch"),
    ),
    (
        "virtio-console-rx-bufs.patch",
        include_str!("../../../assets/kernel/virtio-console-rx-bufs.patch"),
    ),
];

/// Where Debian's `linux-source-*` package puts its tarball.
const SOURCE_DIR: &str = "/usr/src";

/// The newest `/usr/src/linux-source-*.tar.xz`.
pub fn find_source() -> Result<PathBuf, Error> {
    find_source_in(Path::new(SOURCE_DIR))
}

fn find_source_in(dir: &Path) -> Result<PathBuf, Error> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| crate::fingerprint::version_key(&p.to_string_lossy()));
    found.pop().ok_or_else(|| {
        Error::Build(format!(
            "no kernel source in {}: `apt-get install linux-source-6.1 build-essential flex bison bc libelf-dev` (or set kernel = \"debian\" in the scute config)",
            dir.display()
        ))
    })
}

/// Fingerprint of what decides the kernel: the source tarball (name, size,
/// mtime), the patches and the fragment's text.
pub fn fingerprint(tarball: &Path, fragment: &str) -> Result<String, Error> {
    let mut text = crate::fingerprint::stat_inputs(std::iter::once(&tarball.to_path_buf()))?;
    for (name, patch) in PATCHES {
        text.push_str(name);
        text.push_str(patch);
    }
    text.push_str(fragment);
    Ok(format!(
        "{:016x}",
        crate::fingerprint::fnv1a(text.as_bytes())
    ))
}

pub struct Built {
    pub vmlinux: PathBuf,
    /// `uname -r` of the guest.
    pub release: String,
}

/// `vmlinux` from `tarball` with `fragment`: the one kept in `cache/` for
/// their fingerprint, else compiled there (and kept for next time).
pub fn build(
    tarball: &Path,
    fragment: &str,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    let fp = fingerprint(tarball, fragment)?;
    let kept = cache.join(format!("vmlinux-{fp}"));
    if let Ok(release) = fs::read_to_string(kept.join("release")) {
        if kept.join("vmlinux").is_file() && !release.trim().is_empty() {
            progress(&format!(
                "kernel {}: built before from the same source and config ({}), not compiled again",
                release.trim(),
                kept.display()
            ));
            return Ok(Built {
                vmlinux: kept.join("vmlinux"),
                release: release.trim().to_owned(),
            });
        }
    }
    let built = compile_tree(tarball, fragment, cache, progress)?;
    // Keep this build only: an older fingerprint's kernel is of no use.
    if let Ok(rd) = fs::read_dir(cache) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("vmlinux-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    fs::create_dir_all(&kept).map_err(Error::io(format!("create {}", kept.display())))?;
    fs::copy(&built.vmlinux, kept.join("vmlinux")).map_err(Error::io("keep vmlinux"))?;
    fs::write(kept.join("release"), &built.release).map_err(Error::io("keep release"))?;
    Ok(Built {
        vmlinux: kept.join("vmlinux"),
        release: built.release,
    })
}

fn compile_tree(
    tarball: &Path,
    fragment: &str,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.xz"))
        .ok_or_else(|| Error::Build(format!("{}: not a .tar.xz", tarball.display())))?
        .to_owned();
    fs::create_dir_all(cache).map_err(Error::io(format!("create {}", cache.display())))?;
    let tree = cache.join(&name);
    let source_id = fingerprint(tarball, "")?;
    let marker = cache.join(".source");
    if fs::read_to_string(&marker).ok().as_deref() != Some(source_id.as_str()) || !tree.is_dir() {
        progress(&format!(
            "kernel: extracting {} into {} (about 20 s)",
            tarball.display(),
            cache.display()
        ));
        let _ = fs::remove_dir_all(&tree);
        run(
            Command::new("tar")
                .arg("-xJf")
                .arg(tarball)
                .arg("-C")
                .arg(cache),
            "extract the kernel source",
        )?;
        for (name, patch) in PATCHES {
            progress(&format!("kernel: applying {name}"));
            let file = cache.join(name);
            fs::write(&file, patch).map_err(Error::io(format!("write {name}")))?;
            run(
                Command::new("patch")
                    .args(["-p1", "--forward", "--batch", "--silent", "-i"])
                    .arg(&file)
                    .current_dir(&tree),
                &format!("apply {name} to the kernel source"),
            )?;
        }
        fs::write(&marker, &source_id).map_err(Error::io("write source marker"))?;
    }

    progress("kernel: configuring (tinyconfig + scute-guest.config)");
    let frag_path = cache.join("scute-guest.config");
    fs::write(&frag_path, fragment).map_err(Error::io("write the config fragment"))?;
    run(make(&tree).arg("tinyconfig"), "make tinyconfig")?;
    run(
        Command::new(tree.join("scripts/kconfig/merge_config.sh"))
            .current_dir(&tree)
            .arg("-m")
            .arg(".config")
            .arg(&frag_path),
        "merge the config fragment",
    )?;
    run(make(&tree).arg("olddefconfig"), "make olddefconfig")?;
    let config = fs::read_to_string(tree.join(".config")).map_err(Error::io("read .config"))?;
    let dropped = missing_options(fragment, &config);
    if !dropped.is_empty() {
        return Err(Error::Build(format!(
            "the kernel config dropped options of scute-guest.config (a dependency is missing or the source is not 6.1): {}",
            dropped.join(", ")
        )));
    }

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let count_file = cache.join(".compiled-files");
    let last: Option<usize> = fs::read_to_string(&count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    progress(&format!(
        "kernel: compiling vmlinux with {jobs} jobs ({})",
        match last {
            Some(n) => format!("{n} files last time"),
            None => "a first build takes about 5 min on 2 cores".into(),
        }
    ));
    let compiled = compile(&tree, jobs, last, progress)?;
    if compiled > 0 {
        let _ = fs::write(&count_file, compiled.to_string());
    }
    let out = make(&tree)
        .args(["-s", "kernelrelease"])
        .output()
        .map_err(Error::io("make kernelrelease"))?;
    let release = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if release.is_empty() {
        return Err(Error::Build("make kernelrelease printed nothing".into()));
    }
    Ok(Built {
        vmlinux: tree.join("vmlinux"),
        release,
    })
}

fn make(tree: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(tree);
    c
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("{what} (is build-essential installed?)")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(Error::Build(format!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(())
}

/// `make vmlinux`, reporting how many files were compiled every 15 s.
/// Returns that count (0 when nothing needed compiling).
fn compile(
    tree: &Path,
    jobs: usize,
    estimate: Option<usize>,
    progress: &mut dyn FnMut(&str),
) -> Result<usize, Error> {
    let mut child = make(tree)
        .arg(format!("-j{jobs}"))
        .arg("vmlinux")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io("run make (apt-get install build-essential)"))?;
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(stderr?).lines().map_while(Result::ok) {
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Some(tail.into_iter().collect::<Vec<_>>().join("\n"))
    });
    let t0 = Instant::now();
    let mut last_report = Instant::now();
    let mut compiled = 0usize;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("CC ") || line.trim_start().starts_with("AS ") {
                compiled += 1;
            }
            if last_report.elapsed() >= Duration::from_secs(15) {
                last_report = Instant::now();
                progress(&match estimate {
                    Some(n) if n > 0 => format!(
                        "kernel: {compiled} of about {n} files compiled ({} s)",
                        t0.elapsed().as_secs()
                    ),
                    _ => format!(
                        "kernel: {compiled} files compiled ({} s)",
                        t0.elapsed().as_secs()
                    ),
                });
            }
        }
    }
    let status = child.wait().map_err(Error::io("wait for make"))?;
    let err = errors.join().ok().flatten().unwrap_or_default();
    if !status.success() {
        return Err(Error::Build(format!(
            "make vmlinux failed ({status}):\n{err}"
        )));
    }
    progress(&format!(
        "kernel: vmlinux built ({compiled} files compiled in {} s)",
        t0.elapsed().as_secs()
    ));
    Ok(compiled)
}

/// Options the fragment sets that the final `.config` doesn't have as set
/// (kconfig silently drops an option whose dependencies are off).
fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    let have: std::collections::HashSet<&str> = config.lines().map(str::trim).collect();
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter(|l| !have.contains(l))
        .map(str::to_owned)
        .chain(
            fragment
                .lines()
                .filter_map(|l| l.trim().strip_prefix("# "))
                .filter_map(|l| l.strip_suffix(" is not set"))
                .filter(|opt| have.contains(format!("{opt}=y").as_str()))
                .map(|opt| format!("{opt} (should be off)")),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_asks_for_what_the_guest_needs() {
        for opt in [
            "CONFIG_PVH=y",
            "CONFIG_VIRTIO_MMIO=y",
            "CONFIG_VIRTIO_CONSOLE=y",
            "CONFIG_VIRTIO_FS=y",
            "CONFIG_OVERLAY_FS=y",
            "CONFIG_VIRTIO_NET=y",
            "CONFIG_VIRTIO_BALLOON=y",
            "CONFIG_CGROUP_BPF=y",
            "CONFIG_SECCOMP_FILTER=y",
            "CONFIG_MAGIC_SYSRQ=y",
        ] {
            assert!(FRAGMENT.lines().any(|l| l == opt), "{opt}");
        }
        assert!(FRAGMENT.contains("# CONFIG_MODULES is not set"));
    }

    #[test]
    fn patches_are_unified_diffs_of_the_tree() {
        assert!(!PATCHES.is_empty());
        for (name, text) in PATCHES {
            assert!(name.ends_with(".patch"), "{name}");
            let mut lines = text.lines();
            let (from, to) = (lines.next().unwrap(), lines.next().unwrap());
            assert!(from.starts_with("--- a/"), "{name}: {from}");
            assert!(to.starts_with("+++ b/"), "{name}: {to}");
            assert!(text.contains("\n@@ "), "{name}: no hunk");
        }
    }

    #[test]
    fn dropped_options_are_named() {
        let frag = "CONFIG_A=y\nCONFIG_B=\"x\"\n# CONFIG_C is not set\n# a comment\n";
        let config = "CONFIG_A=y\nCONFIG_B=\"y\"\nCONFIG_C=y\n";
        assert_eq!(
            missing_options(frag, config),
            ["CONFIG_B=\"x\"", "CONFIG_C (should be off)"]
        );
        assert!(missing_options(frag, "CONFIG_A=y\nCONFIG_B=\"x\"\n").is_empty());
    }

    #[test]
    fn newest_source_is_picked_and_absence_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_source_in(dir.path()).unwrap_err().to_string();
        assert!(err.contains("apt-get install linux-source-6.1"), "{err}");
        for v in ["6.1", "6.10", "5.10"] {
            fs::write(dir.path().join(format!("linux-source-{v}.tar.xz")), "").unwrap();
        }
        fs::write(dir.path().join("linux-config-6.1"), "").unwrap();
        assert_eq!(
            find_source_in(dir.path()).unwrap(),
            dir.path().join("linux-source-6.10.tar.xz")
        );
    }

    #[test]
    fn the_fingerprint_follows_the_fragment_and_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("linux-source-6.1.tar.xz");
        fs::write(&t, "a").unwrap();
        let a = fingerprint(&t, "CONFIG_A=y").unwrap();
        assert_eq!(a, fingerprint(&t, "CONFIG_A=y").unwrap());
        assert_ne!(a, fingerprint(&t, "CONFIG_B=y").unwrap());
        fs::write(&t, "ab").unwrap();
        assert_ne!(a, fingerprint(&t, "CONFIG_A=y").unwrap());
    }
}
