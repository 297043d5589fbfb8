//! OCI bundles on the host: validation before anything is started, and the
//! rewrite of the spec for the guest.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::Error;

/// Checks a container or sandbox id (also used as a path component).
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_owned()))
    }
}

/// A bundle whose config.json parsed and whose rootfs exists.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    /// config.json as written: what the guest gets (rewritten), so that
    /// oci-spec's defaults for absent fields never creep in.
    pub raw: serde_json::Value,
    /// Absolute host path of the root filesystem.
    pub rootfs: PathBuf,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Self, Error> {
        if !dir.is_dir() {
            return Err(Error::BundleNotFound(dir.to_path_buf()));
        }
        let dir = dir
            .canonicalize()
            .map_err(Error::io(format!("resolve {}", dir.display())))?;
        let path = dir.join("config.json");
        let invalid = |message: String| Error::InvalidSpec {
            path: path.clone(),
            message,
        };
        let text = std::fs::read(&path).map_err(|e| {
            invalid(if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "not found: {} is not an OCI bundle (a config.json and its rootfs); run in the bundle's directory or pass --bundle DIR (`runc spec` writes a config.json)",
                    dir.display()
                )
            } else {
                format!("cannot read: {e}")
            })
        })?;
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let spec: Spec = serde_json::from_value(value.clone())
            .map_err(|e| invalid(format!("not a valid OCI runtime spec: {e}")))?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("has no \"process\": nothing to run".into()))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid(
                "\"process.args\" is missing or empty: set the command to run".into(),
            ));
        }
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid("has no \"root\"".into()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(invalid(format!(
                "root.path {} is not a directory",
                rootfs.display()
            )));
        }
        Ok(Self {
            dir,
            spec,
            raw: value,
            rootfs,
        })
    }

    /// The network namespace the spec names (the one to wire the VM into).
    pub fn network_ns(&self) -> Option<PathBuf> {
        self.spec
            .linux()
            .as_ref()?
            .namespaces()
            .as_ref()?
            .iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
            .path()
            .clone()
    }

    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }
}
