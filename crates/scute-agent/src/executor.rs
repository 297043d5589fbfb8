//! The workload executor handed to libcontainer: runc's rules for finding
//! `args[0]`. libcontainer's default refuses any process whose environment
//! has no `PATH`, even with an absolute `args[0]` (a CRI pause image does
//! that); runc runs it, and only a relative name needs `PATH`.

use std::path::{Path, PathBuf};

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

#[derive(Clone)]
pub struct RuncExecutor;

impl Executor for RuncExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        DefaultExecutor {}.exec(spec)
    }

    /// Runs in the container (after pivot_root), before the start signal.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let process = spec.process().as_ref().ok_or_else(|| {
            ExecutorValidationError::ArgValidationError("spec has no process".into())
        })?;
        let arg0 = process
            .args()
            .as_ref()
            .and_then(|a| a.first())
            .ok_or_else(|| {
                ExecutorValidationError::ArgValidationError("spec has no process.args".into())
            })?;
        let env = process.env().clone().unwrap_or_default();
        let found = candidates(arg0, &env)
            .into_iter()
            .find(|c| is_executable(c));
        match found {
            Some(_) => Ok(()),
            None => Err(ExecutorValidationError::ArgValidationError(not_found(arg0))),
        }
    }
}

/// runc's message for an executable that can't be found: a name looked
/// up in `PATH`, or a path that is not there.
pub fn not_found(arg0: &str) -> String {
    if arg0.contains('/') {
        format!("exec: \"{arg0}\": stat {arg0}: no such file or directory")
    } else {
        format!("exec: \"{arg0}\": executable file not found in $PATH")
    }
}

/// Where `arg0` may be: itself when it has a slash, else each directory of the
/// environment's `PATH` (none when `PATH` is unset, as with runc).
pub fn candidates(arg0: &str, env: &[String]) -> Vec<PathBuf> {
    if arg0.contains('/') {
        return vec![PathBuf::from(arg0)];
    }
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .map(|path| {
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join(arg0))
                .collect()
        })
        .unwrap_or_default()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_needs_no_path() {
        assert_eq!(
            candidates("/bin/sleep", &[]),
            vec![PathBuf::from("/bin/sleep")]
        );
    }

    #[test]
    fn relative_without_path_has_no_candidates() {
        assert!(candidates("sleep", &["HOME=/".into()]).is_empty());
    }

    #[test]
    fn relative_searches_path_in_order() {
        let env = vec!["PATH=/usr/bin::/bin".to_string()];
        assert_eq!(
            candidates("sh", &env),
            vec![PathBuf::from("/usr/bin/sh"), PathBuf::from("/bin/sh")]
        );
    }
}
