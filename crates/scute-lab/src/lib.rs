//! `scute lab`: every runtime containerd can use on this host, side by side.
//!
//! - [`results`]: the schema of `results.json` (documented in docs/lab-results.md);
//! - [`probes`]: the isolation probes (shell run inside each container) and
//!   their verdicts, decided here on the host from the captured output;
//! - [`measure`]: statistics, PSS of process trees, wrk;
//! - [`ctr`]: bounded `ctr` invocations against one containerd;
//! - [`engine`]: the same runs through containerd, Docker or Podman;
//! - [`lab`]: the orchestration (setup, workload, isolation, performance);
//! - [`report`]: report.md and report.html, analysis written from the numbers.

pub mod ctr;
pub mod engine;
pub mod lab;
pub mod measure;
pub mod probes;
pub mod report;
pub mod results;

pub use lab::{run, Options, Section};
pub use results::Results;
