//! Builds OCI bundles from Debian's `busybox-static` (no registry needed): a
//! rootfs with busybox and its applet links, and a config.json equivalent to
//! `runc spec`'s default, so the same bundle runs under runc and scute.

pub mod cni;
pub mod containerd;
pub mod engine;
pub mod http;
pub mod image;
pub mod netns;
pub mod procs;

use std::io;
use std::path::{Path, PathBuf};

pub use scute_pool::busybox::{default_spec, write_spec, BUSYBOX};

/// Applets linked into the test rootfs.
const APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "cat", "ls", "ps", "id", "env", "pwd", "hostname", "uname",
    "dmesg", "sleep", "kill", "head", "grep", "wc", "readlink", "stat", "mount", "httpd", "wget",
    "ip", "ifconfig", "nc", "dd", "sync", "date", "test", "[", "mknod", "cp", "chmod", "touch",
    "stty", "mkdir",
];

/// Writes `<dir>/rootfs` (busybox with the test applets) and
/// `<dir>/config.json` running `args`.
pub fn busybox_bundle(dir: &Path, args: &[&str]) -> io::Result<PathBuf> {
    scute_pool::busybox::bundle(dir, args, APPLETS)
}
