//! `scute`: parse the command line and dispatch; the work is in scute-runtime.

mod commands;
mod engines;
mod install;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCUTE_GIT_COMMIT"),
    ")"
);

/// What every command's exit status means (docker's and podman's codes
/// where they overlap).
const EXIT_STATUS: &str = "Exit status: 0 done; 1 `check` found a failure (or `cleanup` could not remove something); 2 the command line is wrong; 125 scute itself failed (the message says why); `run`: the container's status, 126 when its command can't be run, 127 when it is not found.";

#[derive(Parser)]
#[command(
    name = "scute",
    version = VERSION,
    about = "VM-isolated containers: each container in its own QEMU microVM",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// Config file (default: $SCUTE_CONFIG, then /etc/scute/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Verbose logs on stderr.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an OCI bundle in a new microVM; exits with the process's status.
    Run(commands::run::Args),
    /// Check that this host can run scute, and explain what is missing.
    Check(commands::check::Args),
    /// A root shell in a sandbox's guest, outside its containers.
    ///
    /// Kata's debug console: busybox `sh` in the guest's own namespaces.
    /// Off unless the config has `debug_shell = true` (for sandboxes
    /// started after that); root only; the shim logs every session.
    Debug(commands::debug::Args),
    /// Print the effective config: every key, defaults filled in.
    ///
    /// Read from --config, else $SCUTE_CONFIG, else
    /// /etc/scute/config.toml (absent: all defaults).
    Config,
    /// List the sandboxes on this host.
    ///
    /// Each with its VM, shim, jail uid, accelerator, size, memory (PSS),
    /// and whether its VM came from the pool.
    #[command(visible_alias = "list")]
    Ps(commands::ps::Args),
    /// Remove what sandboxes whose shim died left behind.
    ///
    /// VMM, virtiofsd, mounts, cgroups, state dir, VMM uid: what
    /// containerd's `shim delete` does when it gets the chance.
    Cleanup,
    /// Guest kernel and initramfs.
    #[command(subcommand)]
    Assets(commands::assets::Cmd),
    /// Benchmarks against runc on this host.
    #[command(subcommand)]
    Bench(commands::bench::Cmd),
    /// The runc-vs-VM lab: setup evidence, the same workload, isolation probes, benchmarks, report.
    Lab(commands::lab::Args),
    /// Install scute into /usr/local and register it with containerd.
    Install(commands::install::Args),
    /// Reverse exactly what `scute install` did.
    Uninstall(commands::install::Args),
    /// Keep VMs booted for new sandboxes (`scute install` starts it).
    ///
    /// Sized by `[pool]` in the config; runs in the foreground until
    /// SIGTERM.
    Pool,
    /// One VM of the pool (started by `scute pool`).
    #[command(hide = true)]
    PoolVm {
        #[arg(long)]
        vm_id: String,
    },
    /// Print a shell completion script.
    ///
    /// bash: `source <(scute completion bash)`, or save it as
    /// /etc/bash_completion.d/scute; zsh: as a `_scute` file on $fpath.
    Completion { shell: clap_complete::Shell },
    /// Versions of scute and every part of a sandbox.
    ///
    /// The shim, guest kernel, agent protocol, QEMU and containerd
    /// (`--version` prints scute's alone).
    Version,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One style for every error: "scute: error: …".
            eprint!("scute: {}", e.render());
            return ExitCode::from(2);
        }
    };
    if matches!(
        cli.command,
        Command::Ps(_)
            | Command::Check(_)
            | Command::Config
            | Command::Version
            | Command::Completion { .. }
    ) {
        // Listings piped into `head` end quietly when it stops reading, as
        // other Unix tools do (Rust ignores SIGPIPE, so println! panics).
        // SAFETY: restoring a signal's default disposition, before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let level = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SCUTE_LOG").unwrap_or_else(|_| {
                format!("scute={level},scute_runtime={level},scute_hypervisor={level}").into()
            }),
        )
        .init();
    let result = match cli.command {
        Command::Run(a) => commands::run::main(cli.config.as_deref(), cli.debug, a),
        Command::Check(a) => commands::check::main(cli.config.as_deref(), a),
        Command::Debug(a) => commands::debug::main(cli.config.as_deref(), a),
        Command::Config => commands::version::config(cli.config.as_deref()),
        Command::Ps(a) => commands::ps::main(cli.config.as_deref(), a),
        Command::Cleanup => commands::check::cleanup(cli.config.as_deref()),
        Command::Install(a) => commands::install::main(cli.config.as_deref(), a, false),
        Command::Uninstall(a) => commands::install::main(cli.config.as_deref(), a, true),
        Command::Assets(c) => commands::assets::main(cli.config.as_deref(), c),
        Command::Lab(a) => commands::lab::main(cli.config.as_deref(), a),
        Command::Bench(c) => commands::bench::main(cli.config.as_deref(), c),
        Command::Pool => commands::pool::main(cli.config.as_deref()),
        Command::PoolVm { vm_id } => commands::pool::member(cli.config.as_deref(), &vm_id),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "scute", &mut std::io::stdout());
            Ok(0)
        }
        Command::Version => commands::version::main(cli.config.as_deref()),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("scute: error: {e:#}");
            ExitCode::from(commands::exit_code_for(&e))
        }
    }
}
