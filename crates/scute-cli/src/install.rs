//! `scute install` / `scute uninstall`: binaries, scute's config, and the
//! runtime entry in containerd's CRI config — edited in place with every other
//! setting and comment kept, idempotent, and recorded so uninstall reverses
//! exactly what install did.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml_edit::{value, DocumentMut, Item, Table};

/// Binaries scute installs.
pub const BINARIES: &[&str] = &[
    "scute",
    "scute-agent",
    "containerd-shim-scute-v2",
    "scute-runc",
];
pub use scute_runtime::containerd_config::{self, RUNTIME_NAME};
pub use scute_runtime::RUNTIME_TYPE;
/// Pod annotations earlier installs had the CRI plugin pass to scute's
/// sandboxes (every `io.scute.*`): removed from an entry that has exactly
/// that, since a tenant must not size its own VM. An operator who wants
/// them lists them in both `pod_annotations` and scute's
/// `enable_annotations`.
const OLD_POD_ANNOTATIONS: &str = "io.scute.*";

/// The target `make build` builds the guest agent for, static and not
/// position-independent, so that it lands in `target/<AGENT_TARGET>/agent/`.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The `scute-agent` to install and build the initramfs from, for binaries
/// in `dir`: in a cargo tree, the size-optimized static build `make build`
/// leaves in `target/<AGENT_TARGET>/agent/` when it is at least as new as
/// `dir`'s own (under TCG it reaches `main` ~45 ms sooner: no dynamic
/// loader, no relocations, no libraries in the initramfs); otherwise
/// `dir`'s.
pub fn agent_binary(dir: &Path) -> PathBuf {
    let own = dir.join("scute-agent");
    let Some(optimized) = dir
        .parent()
        .map(|t| t.join(AGENT_TARGET).join("agent").join("scute-agent"))
    else {
        return own;
    };
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(&optimized), mtime(&own)) {
        (Some(o), Some(r)) if o >= r => optimized,
        (Some(_), None) => optimized,
        _ => own,
    }
}

/// What an install changed, kept for uninstall.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Binaries written (paths).
    pub binaries: Vec<PathBuf>,
    /// scute's config file, if install created it.
    pub scute_config: Option<PathBuf>,
    /// containerd config where install added the runtime entry.
    pub containerd_config: Option<PathBuf>,
    /// Whether install created that file (uninstall then removes it, if
    /// it is still exactly what install wrote).
    pub containerd_config_created: bool,
    /// SHA-256 of the containerd config as install left it: what uninstall
    /// can prove it wrote.
    #[serde(default)]
    pub containerd_config_sha256: Option<String>,
}

fn runtimes_path(version: i64) -> Result<[&'static str; 4]> {
    containerd_config::runtimes_path(version).ok_or_else(|| {
        anyhow::anyhow!("containerd config version {version} is not supported (use version 2 or 3)")
    })
}

fn version_of(doc: &DocumentMut) -> i64 {
    // An empty (new) file gets version 2 (see register), which containerd
    // 1.6/1.7 read.
    containerd_config::version_of(doc)
}

/// Adds the scute runtime to `text` (a containerd config). Returns the new
/// text, or `None` when it is already registered.
pub fn register(text: &str) -> Result<Option<String>> {
    let mut doc: DocumentMut = text
        .parse()
        .context("containerd config is not valid TOML")?;
    if text.trim().is_empty() {
        doc["version"] = value(2);
    }
    let path = runtimes_path(version_of(&doc))?;
    let mut t: &mut Table = doc.as_table_mut();
    for key in path {
        let entry = t.entry(key).or_insert_with(|| {
            let mut nt = Table::new();
            nt.set_implicit(true);
            Item::Table(nt)
        });
        t = entry
            .as_table_mut()
            .with_context(|| format!("{key} in the containerd config is not a table"))?;
    }
    if let Some(existing) = t.get_mut(RUNTIME_NAME).and_then(Item::as_table_mut) {
        if existing.get("runtime_type").and_then(Item::as_str) != Some(RUNTIME_TYPE) {
            bail!("containerd config already has a runtime named {RUNTIME_NAME:?} of another type: remove it first");
        }
        let ours = existing
            .get("pod_annotations")
            .and_then(Item::as_array)
            .is_some_and(|a| {
                a.len() == 1 && a.get(0).and_then(|v| v.as_str()) == Some(OLD_POD_ANNOTATIONS)
            });
        if !ours {
            return Ok(None);
        }
        // An entry from an older install passed every io.scute.* on.
        existing.remove("pod_annotations");
        return Ok(Some(doc.to_string()));
    }
    let mut rt = Table::new();
    rt["runtime_type"] = value(RUNTIME_TYPE);
    t.insert(RUNTIME_NAME, Item::Table(rt));
    Ok(Some(doc.to_string()))
}

/// Removes the scute runtime entry. `None` when there is none.
pub fn unregister(text: &str) -> Result<Option<String>> {
    let mut doc: DocumentMut = text
        .parse()
        .context("containerd config is not valid TOML")?;
    let Ok(path) = runtimes_path(version_of(&doc)) else {
        return Ok(None);
    };
    let mut t: &mut Table = doc.as_table_mut();
    for key in path {
        match t.get_mut(key).and_then(Item::as_table_mut) {
            Some(next) => t = next,
            None => return Ok(None),
        }
    }
    if t.remove(RUNTIME_NAME).is_none() {
        return Ok(None);
    }
    Ok(Some(doc.to_string()))
}

/// A small line diff: the changed middle between common prefix and suffix.
pub fn diff(old: &str, new: &str, name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let mut out = format!("--- {name}\n+++ {name}\n@@ line {} @@\n", pre + 1);
    for l in &a[pre..a.len() - suf] {
        out.push_str(&format!("-{l}\n"));
    }
    for l in &b[pre..b.len() - suf] {
        out.push_str(&format!("+{l}\n"));
    }
    out
}

pub struct Paths {
    pub prefix: PathBuf,
    pub scute_config: PathBuf,
    pub containerd_config: PathBuf,
    pub record: PathBuf,
    pub source_dir: PathBuf,
    /// How a rewritten containerd config is checked before it is put in place.
    pub validate: Validate,
}

#[derive(Debug)]
pub struct Outcome {
    pub changed: bool,
    pub messages: Vec<String>,
}

/// Installs (or, with `dry_run`, only describes).
pub fn install(p: &Paths, dry_run: bool) -> Result<Outcome> {
    let mut rec: Record = read_record(&p.record).unwrap_or_default();
    let mut msgs = Vec::new();
    let mut changed = false;
    for b in BINARIES {
        let src = if *b == "scute-agent" {
            agent_binary(&p.source_dir)
        } else {
            p.source_dir.join(b)
        };
        let dst = p.prefix.join("bin").join(b);
        if !src.is_file() {
            bail!("{} not found: build with `make build` first", src.display());
        }
        let same = std::fs::read(&dst).ok() == Some(std::fs::read(&src)?);
        if same {
            continue;
        }
        changed = true;
        msgs.push(format!("install {} -> {}", src.display(), dst.display()));
        if !dry_run {
            std::fs::create_dir_all(dst.parent().unwrap_or(Path::new("/")))?;
            let tmp = dst.with_extension("scute-tmp");
            std::fs::copy(&src, &tmp)?;
            std::fs::rename(&tmp, &dst).with_context(|| format!("install {}", dst.display()))?;
            if !rec.binaries.contains(&dst) {
                rec.binaries.push(dst);
            }
        }
    }
    if !p.scute_config.exists() {
        changed = true;
        msgs.push(format!("write {} (defaults)", p.scute_config.display()));
        if !dry_run {
            std::fs::create_dir_all(p.scute_config.parent().unwrap_or(Path::new("/")))?;
            let text = format!(
                "# scute configuration; every key is optional (see `scute --help` and the README).\n{}",
                scute_runtime::Config::default().to_toml()
            );
            std::fs::write(&p.scute_config, text)?;
            rec.scute_config = Some(p.scute_config.clone());
        }
    }
    let config = scute_runtime::Config::load(Some(&p.scute_config)).unwrap_or_default();
    let clash = scute_runtime::jail::uid_range_conflicts(config.vmm_uid_base, config.vmm_uids);
    if config.vmm_uids > 0 && !clash.is_empty() {
        bail!(
            "the VMM uid range {}..{} of {} is already in use ({}): move vmm_uid_base to a free range",
            config.vmm_uid_base,
            config.vmm_uid_base as u64 + config.vmm_uids as u64,
            p.scute_config.display(),
            clash.join("; ")
        );
    }
    let existed = p.containerd_config.exists();
    let old = if existed {
        std::fs::read_to_string(&p.containerd_config)
            .with_context(|| format!("read {}", p.containerd_config.display()))?
    } else {
        String::new()
    };
    if let Some(new) = register(&old).with_context(|| p.containerd_config.display().to_string())? {
        changed = true;
        msgs.push(format!(
            "register runtime {RUNTIME_NAME} ({RUNTIME_TYPE}) in {}:\n{}",
            p.containerd_config.display(),
            diff(&old, &new, &p.containerd_config.display().to_string())
        ));
        if !dry_run {
            std::fs::create_dir_all(p.containerd_config.parent().unwrap_or(Path::new("/")))?;
            if existed {
                let bak = backup_path(&p.containerd_config);
                std::fs::copy(&p.containerd_config, &bak)
                    .with_context(|| format!("back up to {}", bak.display()))?;
                msgs.push(format!("backup {}", bak.display()));
            }
            write_validated(&p.containerd_config, &new, &p.validate)?;
            rec.containerd_config = Some(p.containerd_config.clone());
            rec.containerd_config_created = !existed;
            rec.containerd_config_sha256 = Some(sha256(&new));
        }
    }
    if changed && !dry_run {
        write_record(&p.record, &rec)?;
    }
    Ok(Outcome {
        changed,
        messages: msgs,
    })
}

/// Reverses what the recorded installs did.
pub fn uninstall(p: &Paths, dry_run: bool) -> Result<Outcome> {
    let Some(rec) = read_record(&p.record) else {
        return Ok(Outcome {
            changed: false,
            messages: vec![format!("nothing to undo: {} not found", p.record.display())],
        });
    };
    let mut msgs = Vec::new();
    if let Some(cfg) = &rec.containerd_config {
        let current = std::fs::read_to_string(cfg).ok();
        let untouched = current.as_deref().map(sha256) == rec.containerd_config_sha256;
        if rec.containerd_config_created && untouched {
            msgs.push(format!(
                "remove {} (created by install, unchanged since)",
                cfg.display()
            ));
            if !dry_run {
                let _ = std::fs::remove_file(cfg);
            }
        } else if let Some(old) = current {
            if rec.containerd_config_created {
                msgs.push(format!(
                    "leave {}: install created it, but it was edited since; only scute's entry is removed",
                    cfg.display()
                ));
            }
            match unregister(&old)? {
                Some(new) => {
                    msgs.push(format!(
                        "unregister runtime {RUNTIME_NAME} from {}:\n{}",
                        cfg.display(),
                        diff(&old, &new, &cfg.display().to_string())
                    ));
                    if !dry_run {
                        write_validated(cfg, &new, &p.validate)?;
                    }
                }
                None => msgs.push(format!(
                    "leave {}: it no longer has scute's entry",
                    cfg.display()
                )),
            }
        }
    }
    if let Some(c) = &rec.scute_config {
        msgs.push(format!("remove {}", c.display()));
        if !dry_run {
            let _ = std::fs::remove_file(c);
        }
    }
    for b in &rec.binaries {
        msgs.push(format!("remove {}", b.display()));
        if !dry_run {
            let _ = std::fs::remove_file(b);
        }
    }
    if !dry_run {
        let _ = std::fs::remove_file(&p.record);
    }
    Ok(Outcome {
        changed: true,
        messages: msgs,
    })
}

/// `config.toml` → `config.toml.scute-bak`.
pub fn backup_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(".scute-bak");
    p.with_file_name(name)
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// How a new containerd config is checked before it replaces the old one.
pub enum Validate {
    /// `containerd --config NEW config dump` must succeed.
    Containerd,
    /// No check (tests without containerd).
    None,
}

/// Replaces `path` with `text` so that containerd never sees a half-written
/// or invalid file: a temporary file beside it (same mode and owner), synced,
/// validated, then renamed over it.
fn write_validated(path: &Path, text: &str, validate: &Validate) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".scute-new");
        path.with_file_name(name)
    };
    let meta = std::fs::metadata(path).ok();
    let result = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        let mode = meta.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(0o644);
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(m) = &meta {
            std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid()))?;
        }
        if let Validate::Containerd = validate {
            let out = std::process::Command::new("containerd")
                .arg("--config")
                .arg(&tmp)
                .args(["config", "dump"])
                .output()
                .context("run `containerd config dump` to validate the new config")?;
            if !out.status.success() {
                bail!(
                    "containerd rejects the new config ({}): {}; {} is unchanged",
                    tmp.display(),
                    String::from_utf8_lossy(&out.stderr).trim(),
                    path.display()
                );
            }
        }
        std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn read_record(p: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn write_record(p: &Path, r: &Record) -> Result<()> {
    std::fs::create_dir_all(p.parent().unwrap_or(Path::new("/")))?;
    std::fs::write(p, serde_json::to_vec_pretty(r)?)?;
    Ok(())
}

pub use containerd_config::is_registered;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_of_the_two_agents_is_taken() {
        let t = tempfile::tempdir().unwrap();
        let release = t.path().join("release");
        let agent_dir = t.path().join(AGENT_TARGET).join("agent");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("scute-agent"), "r").unwrap();
        assert_eq!(agent_binary(&release), release.join("scute-agent"));
        std::fs::create_dir_all(&agent_dir).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(agent_dir.join("scute-agent"), "a").unwrap();
        assert_eq!(agent_binary(&release), agent_dir.join("scute-agent"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(release.join("scute-agent"), "r2").unwrap();
        assert_eq!(agent_binary(&release), release.join("scute-agent"));
    }

    const V2: &str = include_str!("../tests/fixtures/containerd-v2.toml");
    const V3: &str = include_str!("../tests/fixtures/containerd-v3.toml");

    #[test]
    fn v2_gets_cri_grpc_runtime_and_keeps_everything_else() {
        let new = register(V2).unwrap().unwrap();
        assert!(
            new.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.scute]"),
            "{new}"
        );
        assert!(new.contains("runtime_type = \"io.containerd.scute.v2\""));
        assert!(!new.contains("io.scute.*"), "{new}");
        // Every original line is still there, in order.
        let mut it = new.lines();
        for l in V2.lines() {
            assert!(it.any(|n| n == l), "lost line {l:?}");
        }
        assert_eq!(register(&new).unwrap(), None, "second run is a no-op");
        assert_eq!(unregister(&new).unwrap().unwrap(), V2);
    }

    #[test]
    fn v3_gets_cri_runtime_plugin_and_keeps_comments() {
        let new = register(V3).unwrap().unwrap();
        assert!(
            new.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.scute]"),
            "{new}"
        );
        assert!(new.contains("# pulls are slow here; keep this"));
        assert!(!new.contains("io.containerd.grpc.v1.cri\".containerd.runtimes.scute"));
        assert_eq!(register(&new).unwrap(), None);
        assert_eq!(unregister(&new).unwrap().unwrap(), V3);
    }

    #[test]
    fn empty_config_becomes_v2_with_the_runtime() {
        let new = register("").unwrap().unwrap();
        assert!(new.starts_with("version = 2"), "{new}");
        assert!(is_registered(&new));
    }

    #[test]
    fn unsupported_version_and_conflicts_are_explained() {
        let e = register("version = 1\n").unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");
        let conflict = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.scute]\nruntime_type = \"io.containerd.runc.v2\"\n";
        assert!(register(conflict)
            .unwrap_err()
            .to_string()
            .contains("another type"));
    }

    #[test]
    fn diff_shows_only_the_change() {
        let d = diff("a\nb\nc\n", "a\nb\nx\nc\n", "f");
        assert!(
            d.contains("+x") && !d.contains("-a") && !d.contains("+a"),
            "{d}"
        );
    }

    #[test]
    fn an_older_entry_loses_its_pass_through_and_counts_as_registered() {
        let old = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.scute]\nruntime_type = \"io.containerd.scute.v2\"\npod_annotations = [\"io.scute.*\"]\n";
        assert!(is_registered(old));
        let new = register(old).unwrap().expect("pod_annotations removed");
        assert!(!new.contains("pod_annotations"), "{new}");
        assert_eq!(register(&new).unwrap(), None);
        assert!(is_registered(&new));
        // An operator's own choice stays.
        let own = format!("{new}pod_annotations = [\"io.scute.vm.memory_mib\"]\n");
        assert_eq!(register(&own).unwrap(), None);
        assert!(!is_registered("version = 2\n"));
    }

    fn paths(dir: &Path) -> Paths {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        for b in BINARIES {
            std::fs::write(src.join(b), b"bin").unwrap();
        }
        Paths {
            prefix: dir.join("prefix"),
            scute_config: dir.join("etc/scute/config.toml"),
            containerd_config: dir.join("etc/containerd/config.toml"),
            record: dir.join("var/install.json"),
            source_dir: src,
            validate: Validate::None,
        }
    }

    #[test]
    fn a_corrupted_config_is_refused_and_left_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        std::fs::create_dir_all(p.containerd_config.parent().unwrap()).unwrap();
        let broken = "version = 2\n[plugins\nnot toml";
        std::fs::write(&p.containerd_config, broken).unwrap();
        assert!(install(&p, false).is_err());
        assert_eq!(
            std::fs::read_to_string(&p.containerd_config).unwrap(),
            broken
        );
        assert!(!backup_path(&p.containerd_config).exists());
    }

    #[test]
    fn install_keeps_a_backup_and_the_files_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        std::fs::create_dir_all(p.containerd_config.parent().unwrap()).unwrap();
        std::fs::write(&p.containerd_config, V2).unwrap();
        std::fs::set_permissions(&p.containerd_config, std::fs::Permissions::from_mode(0o600))
            .unwrap();
        install(&p, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(backup_path(&p.containerd_config)).unwrap(),
            V2
        );
        let mode = std::fs::metadata(&p.containerd_config)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(is_registered(
            &std::fs::read_to_string(&p.containerd_config).unwrap()
        ));
    }

    #[test]
    fn uninstall_leaves_edits_made_after_install() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        // install creates the config …
        install(&p, false).unwrap();
        let written = std::fs::read_to_string(&p.containerd_config).unwrap();
        // … an operator edits it …
        let edited = format!("{written}\n# operator's note\n[debug]\n  level = \"debug\"\n");
        std::fs::write(&p.containerd_config, &edited).unwrap();
        let out = uninstall(&p, false).unwrap();
        // … uninstall keeps the file and the edit, removes only scute's entry.
        let left = std::fs::read_to_string(&p.containerd_config).expect("file kept");
        assert!(
            left.contains("operator's note") && left.contains("level = \"debug\""),
            "{left}"
        );
        assert!(!is_registered(&left));
        assert!(
            out.messages.iter().any(|m| m.contains("edited since")),
            "{:?}",
            out.messages
        );
    }

    #[test]
    fn uninstall_removes_a_created_config_it_can_prove_it_wrote() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        install(&p, false).unwrap();
        uninstall(&p, false).unwrap();
        assert!(!p.containerd_config.exists());
    }

    /// A config that is valid TOML but that containerd rejects is never put
    /// in place (needs containerd, which `make setup` installs).
    #[test]
    fn containerd_validates_before_the_config_is_replaced() {
        if std::process::Command::new("containerd")
            .arg("--version")
            .output()
            .is_err()
        {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let mut p = paths(d.path());
        p.validate = Validate::Containerd;
        std::fs::create_dir_all(p.containerd_config.parent().unwrap()).unwrap();
        let bad = "version = 2\n[grpc]\n  address = 5\n";
        std::fs::write(&p.containerd_config, bad).unwrap();
        let e = install(&p, false).unwrap_err().to_string();
        assert!(e.contains("containerd rejects"), "{e}");
        assert_eq!(std::fs::read_to_string(&p.containerd_config).unwrap(), bad);
        let entries: Vec<_> = std::fs::read_dir(p.containerd_config.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !entries.iter().any(|n| n.ends_with(".scute-new")),
            "{entries:?}"
        );
    }
}
