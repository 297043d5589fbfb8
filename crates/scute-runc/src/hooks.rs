//! OCI hooks that run on the host, with the container's state on stdin:
//! `prestart` and `createRuntime` once the keeper (and its network
//! namespace) exists and before the VM boots: Docker's libnetwork moves
//! the container's veth into that namespace from its prestart hook;
//! `poststart` after start; `poststop` at delete. `createContainer` and
//! `startContainer` would run inside the container, which is in the guest:
//! they are refused by [`check`].

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Fail;

/// Hooks of `kind` in `spec`.
fn of<'a>(spec: &'a Value, kind: &str) -> &'a [Value] {
    spec.pointer(&format!("/hooks/{kind}"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Refuses hooks that would have to run in the container's namespaces.
pub fn check(spec: &Value) -> Result<(), Fail> {
    for kind in ["createContainer", "startContainer"] {
        if let Some(h) = of(spec, kind).first() {
            return Err(Fail::new(format!(
                "the spec has a {kind} hook ({}): it would run inside the container, which is in the VM's guest where host binaries are not; remove it",
                h.get("path").and_then(Value::as_str).unwrap_or("?")
            )));
        }
    }
    Ok(())
}

/// Runs the hooks of each kind in `kinds`, in order, with `state` on
/// stdin. The first that fails (or outlives its timeout) is the error.
pub fn run(spec: &Value, kinds: &[&str], state: &Value) -> Result<(), Fail> {
    for kind in kinds {
        for h in of(spec, kind) {
            run_one(kind, h, state)?;
        }
    }
    Ok(())
}

fn run_one(kind: &str, hook: &Value, state: &Value) -> Result<(), Fail> {
    let path = hook
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| Fail::new(format!("a {kind} hook has no path")))?;
    let strs = |k: &str| -> Vec<String> {
        hook.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = strs("args");
    let mut cmd = Command::new(path);
    if let Some((first, rest)) = args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for kv in strs("env") {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let timeout = hook
        .get("timeout")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(120));
    let failed = |why: String| Fail::new(format!("{kind} hook {path}: {why}"));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&serde_json::to_vec(state).unwrap_or_default());
    }
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(
                        &mut std::io::Read::take(&mut e, 4096),
                        &mut err,
                    );
                }
                return Err(failed(format!("{st}: {}", err.trim())));
            }
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("still running after {timeout:?}; killed")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_get_the_state_and_their_failure_is_the_error() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("got");
        let spec = serde_json::json!({"hooks": {"prestart": [
            {"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", out.display())]},
        ], "poststart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]},
        ]}});
        let state = serde_json::json!({"id": "c", "pid": 42});
        run(&spec, &["prestart", "createRuntime"], &state).unwrap();
        let got: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got["pid"], 42);
        let e = run(&spec, &["poststart"], &state).unwrap_err().to_string();
        assert!(
            e.contains("poststart hook /bin/sh") && e.contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let spec = serde_json::json!({"hooks": {"poststop": [
            {"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1},
        ]}});
        let e = run(&spec, &["poststop"], &Value::Null).unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
    }

    #[test]
    fn hooks_for_inside_the_container_are_refused() {
        let spec = serde_json::json!({"hooks": {"startContainer": [{"path": "/x"}]}});
        assert!(check(&spec).unwrap_err().to_string().contains("guest"));
        assert!(check(&serde_json::json!({})).is_ok());
    }
}
