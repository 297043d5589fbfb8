//! containerd-shim-scute-v2: parses containerd's shim command line and hands
//! it to the containerd-shim crate. The task service ([`task`]) delegates to
//! the sandbox ([`sandbox`]), which tracks its containers ([`container`])
//! and drives its VM through the traits of [`guest`] (the real ones launched
//! by [`launch`]); `delete` is [`cleanup`].

mod cleanup;
mod container;
mod debugshell;
mod errors;
mod guest;
mod launch;
mod listen;
mod logfmt;
mod portforward;
mod sandbox;
mod service;
mod stdio;
mod task;
mod vmstate;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCUTE_GIT_COMMIT"),
    ")"
);

/// The runtime name containerd knows this shim by.
pub use scute_runtime::RUNTIME_TYPE as RUNTIME_ID;

#[tokio::main]
async fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| a == "--version" || a == "-v" || a == "-version")
    {
        println!("containerd-shim-scute-v2 {VERSION}");
        return;
    }
    logfmt::install();
    let config = containerd_shim::Config {
        // The shim owns its children (QEMU, virtiofsd, loggers) and waits
        // for them itself; a blanket reaper would steal their statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<service::Service>(RUNTIME_ID, Some(config)).await;
}
