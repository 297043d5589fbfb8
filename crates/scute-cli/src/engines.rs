//! `scute install --docker --podman`: scute-runc as a runtime of Docker
//! (`runtimes` in /etc/docker/daemon.json; dockerd reloads it on SIGHUP)
//! and of Podman (`[engine.runtimes]` in /etc/containers/containers.conf,
//! read by every podman command). Uninstall removes an entry only when it
//! still names scute-runc.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The name both engines know the runtime by: `docker run --runtime scute`,
/// `podman --runtime scute`.
pub const NAME: &str = "scute";
pub const DOCKER_CONFIG: &str = "/etc/docker/daemon.json";
pub const PODMAN_CONFIG: &str = "/etc/containers/containers.conf";

/// daemon.json with `runtimes.scute.path = bin`; `None` when it has it.
pub fn docker_register(text: &str, bin: &Path) -> Result<Option<String>> {
    let mut v: Value = if text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(text)
            .context("not valid JSON; fix it first (dockerd would not start with it either)")?
    };
    let obj = v
        .as_object_mut()
        .context("not a JSON object; fix it first")?;
    let rts = obj
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(rts) = rts.as_object_mut() else {
        bail!("\"runtimes\" is not an object; fix it first");
    };
    let want = serde_json::json!({"path": bin});
    match rts.get(NAME) {
        Some(have) if *have == want => return Ok(None),
        Some(have) if !names_scute_runc(have.get("path")) => bail!(
            "\"runtimes\" already has a {NAME:?} entry that is not scute-runc ({have}); rename or remove it first"
        ),
        _ => {}
    }
    rts.insert(NAME.into(), want);
    Ok(Some(serde_json::to_string_pretty(&v)? + "\n"))
}

fn names_scute_runc(p: Option<&Value>) -> bool {
    p.and_then(Value::as_str)
        .is_some_and(|p| Path::new(p).file_name().is_some_and(|f| f == "scute-runc"))
}

/// daemon.json without scute's entry (and without an emptied `runtimes`),
/// when that entry names `bin`: an uninstall from another prefix (a test's,
/// say) leaves the one this prefix didn't write.
pub fn docker_unregister(text: &str, bin: &Path) -> Result<Option<String>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut v: Value = serde_json::from_str(text).context("not valid JSON")?;
    let Some(rts) = v.get_mut("runtimes").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let ours = rts
        .get(NAME)
        .is_some_and(|e| e.get("path").and_then(Value::as_str) == bin.to_str());
    if !ours {
        return Ok(None);
    }
    rts.remove(NAME);
    if rts.is_empty() {
        if let Some(o) = v.as_object_mut() {
            o.remove("runtimes");
        }
    }
    Ok(Some(serde_json::to_string_pretty(&v)? + "\n"))
}

/// containers.conf with `[engine.runtimes] scute = [bin]`.
pub fn podman_register(text: &str, bin: &Path) -> Result<Option<String>> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("not valid TOML; fix it first")?;
    let engine = doc
        .entry("engine")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(engine) = engine.as_table_like_mut() else {
        bail!("[engine] is not a table");
    };
    let rts = engine
        .entry("runtimes")
        .or_insert(toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(rts) = rts.as_table_like_mut() else {
        bail!("[engine.runtimes] is not a table");
    };
    let bin = bin.display().to_string();
    if let Some(have) = rts.get(NAME) {
        let paths: Vec<&str> = have
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if paths == [bin.as_str()] {
            return Ok(None);
        }
        if !paths.iter().all(|p| p.ends_with("/scute-runc")) {
            bail!("[engine.runtimes] already has a {NAME:?} entry that is not scute-runc; rename or remove it first");
        }
    }
    let mut arr = toml_edit::Array::new();
    arr.push(bin);
    rts.insert(NAME, toml_edit::value(arr));
    Ok(Some(doc.to_string()))
}

/// containers.conf without scute's entry, when it names `bin` alone.
pub fn podman_unregister(text: &str, bin: &Path) -> Result<Option<String>> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    let Some(rts) = doc
        .get_mut("engine")
        .and_then(|e| e.get_mut("runtimes"))
        .and_then(|r| r.as_table_like_mut())
    else {
        return Ok(None);
    };
    let ours = rts
        .get(NAME)
        .and_then(|v| v.as_array())
        .is_some_and(|a| a.len() == 1 && a.get(0).and_then(|v| v.as_str()) == bin.to_str());
    if !ours {
        return Ok(None);
    }
    rts.remove(NAME);
    Ok(Some(doc.to_string()))
}

/// Writes `text` to `path` through a temporary file and a rename, keeping
/// the file's mode.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension("scute-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    if let Ok(m) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, m.permissions());
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))
}

/// dockerd's pid when it runs.
pub fn dockerd_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "dockerd").then_some(pid)
}

/// One engine's change: (config path, old text, new text).
pub struct Change {
    pub path: PathBuf,
    pub old: String,
    pub new: String,
}

/// What install (`register`) or uninstall (`!register`) changes in the
/// engines' configs.
pub fn plan(docker: bool, podman: bool, bin: &Path, register: bool) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    type Edit = fn(&str, &Path) -> Result<Option<String>>;
    let docker_edit: Edit = if register {
        docker_register
    } else {
        docker_unregister
    };
    let podman_edit: Edit = if register {
        podman_register
    } else {
        podman_unregister
    };
    for (on, path, edit) in [
        (docker, DOCKER_CONFIG, docker_edit),
        (podman, PODMAN_CONFIG, podman_edit),
    ] {
        if !on {
            continue;
        }
        let path = PathBuf::from(path);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(new) = edit(&old, bin).with_context(|| path.display().to_string())? {
            out.push(Change { path, old, new });
        }
    }
    Ok(out)
}

/// `scute check`'s rows for the engines: whether each is installed, and
/// whether scute-runc is its runtime `scute` (and exists).
pub fn check_rows() -> Vec<(&'static str, std::result::Result<String, String>)> {
    let on_path = |b: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
    };
    let mut rows = Vec::new();
    let docker = if !on_path("dockerd") {
        Ok(
            "not installed (optional: apt-get install docker.io, then `scute install --docker`)"
                .into(),
        )
    } else {
        let text = std::fs::read_to_string(DOCKER_CONFIG).unwrap_or_default();
        let path = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            v.pointer(&format!("/runtimes/{NAME}/path"))?
                .as_str()
                .map(str::to_owned)
        });
        let running = if dockerd_pid().is_some() {
            "dockerd running"
        } else {
            "dockerd not running"
        };
        match path {
            Some(p) if Path::new(&p).is_file() => Ok(format!(
                "runtime {NAME} = {p} in {DOCKER_CONFIG} ({running}): docker run --runtime {NAME} …"
            )),
            Some(p) => Err(format!("{DOCKER_CONFIG} names {p} as runtime {NAME}, which does not exist: run `scute install --docker`")),
            None => Err("installed, but scute is not one of its runtimes: run `scute install --docker`".into()),
        }
    };
    rows.push(("docker", docker));
    let podman = if !on_path("podman") {
        Ok(
            "not installed (optional: apt-get install podman, then `scute install --podman`)"
                .into(),
        )
    } else {
        let text = std::fs::read_to_string(PODMAN_CONFIG).unwrap_or_default();
        let path = text.parse::<toml_edit::DocumentMut>().ok().and_then(|d| {
            d.get("engine")?
                .get("runtimes")?
                .get(NAME)?
                .as_array()?
                .get(0)?
                .as_str()
                .map(str::to_owned)
        });
        match path {
            Some(p) if Path::new(&p).is_file() => Ok(format!(
                "runtime {NAME} = {p} in {PODMAN_CONFIG}: podman --runtime {NAME} run …"
            )),
            Some(p) => Err(format!("{PODMAN_CONFIG} names {p} as runtime {NAME}, which does not exist: run `scute install --podman`")),
            None => Err("installed, but scute is not one of its runtimes: run `scute install --podman`".into()),
        }
    };
    rows.push(("podman", podman));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIN: &str = "/usr/local/bin/scute-runc";

    #[test]
    fn docker_gets_the_runtime_and_keeps_everything_else() {
        let old = r#"{"log-driver": "json-file", "runtimes": {"other": {"path": "/x"}}}"#;
        let new = docker_register(old, Path::new(BIN)).unwrap().unwrap();
        let v: Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["runtimes"]["scute"]["path"], BIN);
        assert_eq!(v["runtimes"]["other"]["path"], "/x");
        assert_eq!(v["log-driver"], "json-file");
        assert!(docker_register(&new, Path::new(BIN)).unwrap().is_none());
        // Another prefix's uninstall leaves it.
        assert!(docker_unregister(&new, Path::new("/tmp/x/bin/scute-runc"))
            .unwrap()
            .is_none());
        let back = docker_unregister(&new, Path::new(BIN)).unwrap().unwrap();
        let v: Value = serde_json::from_str(&back).unwrap();
        assert!(v["runtimes"].get("scute").is_none());
        assert_eq!(v["runtimes"]["other"]["path"], "/x");
        let empty = docker_register("", Path::new(BIN)).unwrap().unwrap();
        assert_eq!(
            docker_unregister(&empty, Path::new(BIN))
                .unwrap()
                .unwrap()
                .trim(),
            "{}"
        );
    }

    #[test]
    fn docker_configs_that_are_not_ours_are_refused_or_left() {
        assert!(docker_register("{not json", Path::new(BIN)).is_err());
        let theirs = r#"{"runtimes": {"scute": {"path": "/opt/other-runtime"}}}"#;
        assert!(docker_register(theirs, Path::new(BIN)).is_err());
        assert!(docker_unregister(theirs, Path::new(BIN)).unwrap().is_none());
    }

    #[test]
    fn podman_gets_the_runtime_and_keeps_comments() {
        let old = "# site settings\n[engine]\ncgroup_manager = \"cgroupfs\"\n";
        let new = podman_register(old, Path::new(BIN)).unwrap().unwrap();
        assert!(new.contains("# site settings") && new.contains("cgroup_manager"));
        let doc: toml_edit::DocumentMut = new.parse().unwrap();
        assert_eq!(
            doc["engine"]["runtimes"]["scute"]
                .as_array()
                .unwrap()
                .get(0)
                .unwrap()
                .as_str(),
            Some(BIN)
        );
        assert!(podman_register(&new, Path::new(BIN)).unwrap().is_none());
        assert!(podman_unregister(&new, Path::new("/tmp/x/bin/scute-runc"))
            .unwrap()
            .is_none());
        let back = podman_unregister(&new, Path::new(BIN)).unwrap().unwrap();
        assert!(!back.contains("scute-runc") && back.contains("cgroup_manager"));
        assert!(podman_register("[engine\n", Path::new(BIN)).is_err());
    }
}
