//! What `scute assets build` writes next to the guest's kernel and
//! initramfs (`manifest.json`, one per flavor), read by `scute check` and
//! `scute version`. The build itself is the `scute-assets` crate.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Flavor;

/// What was built, written next to the assets as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel_version: String,
    pub kernel_bytes: u64,
    pub initrd_bytes: u64,
    pub modules: Vec<String>,
    /// Fingerprint of every input; equal fingerprint = nothing to rebuild.
    pub inputs: String,
    /// `scute` or `debian`.
    #[serde(default)]
    pub flavor: String,
    /// Fingerprint of what decides scute's kernel (source and config
    /// fragment); equal = the kernel is not compiled again.
    #[serde(default)]
    pub kernel_inputs: String,
}

/// The manifest of `flavor`'s assets in `dir`, if they were built.
pub fn read_manifest(dir: &Path, flavor: Flavor) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(dir.join(flavor.manifest_file())).ok()?).ok()
}
