//! One file per subcommand.

pub mod assets;
pub mod bench;
pub mod check;
pub mod churn;
pub mod debug;
pub mod install;
pub mod lab;
pub mod pool;
pub mod ps;
pub mod run;
pub mod version;

use scute_protocol::ErrorCode;

/// How a listing command prints.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

use scute_runtime::Error;

/// Exit status for a failure of scute itself, as docker/podman do: 127 when
/// the executable isn't in the rootfs, 126 when it can't be run, 125 else.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::Agent(a)) if a.code == ErrorCode::ExecutableNotFound => 127,
        Some(Error::Agent(a)) if a.code == ErrorCode::PermissionDenied => 126,
        _ => 125,
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Progress of `total` steps on stderr: one line redrawn on a terminal; in
/// a log (CI, a pipe), a whole line per tenth of the run and at the end.
pub struct Progress {
    tty: bool,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            total,
        }
    }

    /// Step `n` (from 1) of the total is under way: `line` says which.
    pub fn step(&self, n: usize, line: &str) {
        if self.tty {
            eprint!("\r{line}\x1b[K");
            if n == self.total {
                eprintln!();
            }
        } else if n == 1 || n == self.total || n.is_multiple_of(self.total.div_ceil(10).max(1)) {
            eprintln!("{line}");
        }
    }
}
