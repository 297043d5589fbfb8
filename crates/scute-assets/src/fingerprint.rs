//! Fingerprints of build inputs (the guest kernel's source and config, the
//! initramfs's files): what decides whether `scute assets build` rebuilds.

use std::fs;
use std::path::PathBuf;

use crate::Error;

/// The numbers in a version string, for ordering (`6.1.10` after `6.1.9`).
pub(crate) fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `size:mtime` of each input, for fingerprints.
pub(crate) fn stat_inputs<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> Result<String, Error> {
    let mut s = String::new();
    for p in paths {
        let m = fs::metadata(p).map_err(Error::io(format!("stat {}", p.display())))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        s.push_str(&format!("{}:{}:{};", p.display(), m.len(), mtime));
    }
    Ok(s)
}

/// FNV-1a of `data`: a fingerprint, not a defence.
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
