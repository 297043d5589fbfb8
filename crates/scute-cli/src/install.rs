//! `scute install` / `scute uninstall`: binaries, scute's config, and the
//! runtime entry in containerd's CRI config — edited in place with every other
//! setting and comment kept, idempotent, and recorded so uninstall reverses
//! exactly what install did.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml_edit::{value, DocumentMut, Item, Table};

/// Binaries scute installs.
pub const BINARIES: &[&str] = &["scute", "scute-agent", "containerd-shim-scute-v2"];
pub const RUNTIME_NAME: &str = "scute";
pub const RUNTIME_TYPE: &str = "io.containerd.scute.v2";
/// Pod annotations the CRI plugin passes to scute's sandboxes.
pub const POD_ANNOTATIONS: &str = "io.scute.*";

/// What an install changed, kept for uninstall.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Binaries written (paths).
    pub binaries: Vec<PathBuf>,
    /// scute's config file, if install created it.
    pub scute_config: Option<PathBuf>,
    /// containerd config where install added the runtime entry.
    pub containerd_config: Option<PathBuf>,
    /// Whether install created that file (uninstall then removes it).
    pub containerd_config_created: bool,
}

/// The table path of the CRI runtimes for a config `version`.
fn runtimes_path(version: i64) -> Result<[&'static str; 4]> {
    match version {
        2 => Ok([
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]),
        3 => Ok([
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]),
        v => bail!("containerd config version {v} is not supported (use version 2 or 3)"),
    }
}

fn version_of(doc: &DocumentMut) -> i64 {
    // containerd treats a file without `version` as version 1; an empty
    // (new) file gets version 2, which containerd 1.6/1.7 read.
    doc.get("version").and_then(Item::as_integer).unwrap_or(1)
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
        if existing.contains_key("pod_annotations") {
            return Ok(None);
        }
        // An entry from an older install: add what pods need.
        existing["pod_annotations"] = pod_annotations();
        return Ok(Some(doc.to_string()));
    }
    let mut rt = Table::new();
    rt["runtime_type"] = value(RUNTIME_TYPE);
    rt["pod_annotations"] = pod_annotations();
    t.insert(RUNTIME_NAME, Item::Table(rt));
    Ok(Some(doc.to_string()))
}

/// The pod annotations the CRI plugin passes on to scute: a pod's VM size
/// (`io.scute.vm.memory_mib`, `io.scute.vm.vcpus`).
fn pod_annotations() -> Item {
    let mut a = toml_edit::Array::new();
    a.push(POD_ANNOTATIONS);
    value(a)
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
}

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
        let src = p.source_dir.join(b);
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
            std::fs::write(&p.containerd_config, new)?;
            rec.containerd_config = Some(p.containerd_config.clone());
            rec.containerd_config_created = !existed;
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
        if rec.containerd_config_created {
            msgs.push(format!("remove {}", cfg.display()));
            if !dry_run {
                let _ = std::fs::remove_file(cfg);
            }
        } else if let Ok(old) = std::fs::read_to_string(cfg) {
            if let Some(new) = unregister(&old)? {
                msgs.push(format!(
                    "unregister runtime {RUNTIME_NAME} from {}:\n{}",
                    cfg.display(),
                    diff(&old, &new, &cfg.display().to_string())
                ));
                if !dry_run {
                    std::fs::write(cfg, new)?;
                }
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

fn read_record(p: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn write_record(p: &Path, r: &Record) -> Result<()> {
    std::fs::create_dir_all(p.parent().unwrap_or(Path::new("/")))?;
    std::fs::write(p, serde_json::to_vec_pretty(r)?)?;
    Ok(())
}

/// Whether `text` registers the scute runtime (for `scute check`): an
/// entry named scute of scute's runtime type.
pub fn is_registered(text: &str) -> bool {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return false;
    };
    let Ok(path) = runtimes_path(version_of(&doc)) else {
        return false;
    };
    let mut item: Option<&Item> = Some(doc.as_item());
    for key in path.iter().chain([&RUNTIME_NAME]) {
        item = item.and_then(|i| i.get(key));
    }
    item.and_then(|rt| rt.get("runtime_type"))
        .and_then(Item::as_str)
        == Some(RUNTIME_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(new.contains("pod_annotations = [\"io.scute.*\"]"), "{new}");
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
    fn an_older_entry_gains_pod_annotations_and_counts_as_registered() {
        let old = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.scute]\nruntime_type = \"io.containerd.scute.v2\"\n";
        assert!(is_registered(old));
        let new = register(old).unwrap().expect("pod_annotations added");
        assert!(new.contains("pod_annotations = [\"io.scute.*\"]"), "{new}");
        assert_eq!(register(&new).unwrap(), None);
        assert!(is_registered(&new));
        assert!(!is_registered("version = 2\n"));
    }
}
