//! The host side of scute: a sandbox is a VM, its guest agent, the virtio-fs
//! share of the container root filesystems and the state dir that ties them
//! together. Used by the CLI (`scute run`) and the containerd shim.

mod beneath;
mod boot_files;
pub mod bundle;
pub mod check;
pub mod client;
pub mod config;
pub mod console;
pub mod containerd_config;
mod error;
pub mod foreground;
pub mod handover;
mod hostcgroup;
pub mod jail;
pub mod limits;
pub mod manifest;
mod mountapi;
pub mod network;
pub mod pod;
pub mod poolvm;
pub mod procs;
pub mod run;
pub mod sandbox;
pub mod share;
pub mod stale;
pub mod state;
mod virtiofsd;

/// The runtime type containerd knows scute by (`ctr run --runtime …`, the
/// CRI handler's `runtime_type`): the shim's binary name follows from it.
pub const RUNTIME_TYPE: &str = "io.containerd.scute.v2";

pub use config::Config;
pub use error::Error;
