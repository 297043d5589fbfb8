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

/// The arguments of one of the kit's small commands (after the program
/// name): `-h`/`--help` prints `usage` and exits 0; an option, or fewer than
/// `min` arguments, is refused with `usage` and exit code 2. (An option used
/// to be taken for a path: `scute-make-image --help` wrote a file `--help`.)
pub fn command_args(usage: &str, min: usize) -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: {usage}");
        std::process::exit(0);
    }
    if let Some(opt) = args.iter().find(|a| a.starts_with('-')) {
        eprintln!("unknown option {opt}\nusage: {usage}");
        std::process::exit(2);
    }
    if args.len() < min {
        eprintln!("usage: {usage}");
        std::process::exit(2);
    }
    args
}

/// Writes `<dir>/rootfs` (busybox with the test applets) and
/// `<dir>/config.json` running `args`.
pub fn busybox_bundle(dir: &Path, args: &[&str]) -> io::Result<PathBuf> {
    scute_pool::busybox::bundle(dir, args, APPLETS)
}
