//! `ctr` against one containerd, every call bounded in time and recorded
//! (the report lists the exact commands).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What a bounded command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code; None when killed at the time limit or by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout then stderr, for evidence files.
    pub fn combined(&self) -> String {
        let mut s = self.stdout.clone();
        if !self.stderr.is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&self.stderr);
        }
        if self.timed_out {
            s.push_str(&format!(
                "\n(killed after {:.0} s: time limit)\n",
                self.elapsed.as_secs_f64()
            ));
        }
        s
    }

    /// One line saying why it failed (not Docker's closing "Run 'docker
    /// run --help'…" hint).
    pub fn failure(&self) -> String {
        let telling = |l: &&str| !l.trim().is_empty() && !l.starts_with("Run '");
        let tail = self
            .stderr
            .lines()
            .rev()
            .find(telling)
            .or_else(|| self.stdout.lines().rev().find(telling))
            .unwrap_or("")
            .trim();
        match (self.timed_out, self.code) {
            (true, _) => format!("timed out after {:.0} s", self.elapsed.as_secs_f64()),
            (_, Some(c)) => format!("exit {c}: {tail}"),
            (_, None) => format!("killed by a signal: {tail}"),
        }
    }
}

/// Runs `cmd` with stdin closed, killing it at `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    let mut so = child.stdout.take().context("stdout")?;
    let mut se = child.stderr.take().context("stderr")?;
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t.elapsed();
    let stdout = String::from_utf8_lossy(&ro.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&re.join().unwrap_or_default()).into_owned();
    Ok(Outcome {
        code: if timed_out { None } else { status.code() },
        stdout,
        stderr,
        elapsed,
        timed_out,
    })
}

/// `cmd` (`program args`) bounded by `limit`, its line as a reader would
/// type it appended to `log`.
pub fn logged(
    program: &str,
    mut cmd: Command,
    args: &[String],
    limit: Duration,
    log: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    log.push(display(program, args));
    run_bounded(&mut cmd, limit)
}

/// Quotes an argument for display as a shell command.
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

pub fn display(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The server's version in `ctr version`'s output ("Server:" then "Version:").
pub fn server_version_in(ctr_version: &str) -> Option<&str> {
    ctr_version
        .split("Server:")
        .nth(1)?
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(str::trim)
}

/// The root cause in ctr's error when it cannot reach containerd: gRPC
/// nests it ("failed to dial …: connection error: desc = \"transport: …
/// dial unix …: connect: connection refused\""), and only the innermost
/// part helps a reader ("connection refused").
pub fn dial_failure(ctr_stderr: &str) -> String {
    let line = ctr_stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .trim_end_matches('"');
    match line.rfind("connect: ") {
        Some(i) => line[i + "connect: ".len()..].to_owned(),
        None if line.len() > 120 => {
            let cut = line.rfind(": ").map(|i| i + 2).unwrap_or(0);
            line[cut..].to_owned()
        }
        None => line.trim_start_matches("ctr: ").to_owned(),
    }
}

/// A containerd that does not answer, and why.
#[derive(Debug, thiserror::Error)]
#[error("containerd not reachable at {}: {why} (start containerd, or pass --address)", address.display())]
pub struct Unreachable {
    pub address: PathBuf,
    pub why: String,
}

/// One containerd, addressed by socket.
#[derive(Debug, Clone)]
pub struct Ctr {
    pub address: PathBuf,
}

impl Ctr {
    pub fn new(address: impl Into<PathBuf>) -> Self {
        Self {
            address: address.into(),
        }
    }

    /// `ctr --address ADDRESS ARGS`, unbounded: for callers that manage the child.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.address).args(args);
        c
    }

    /// `ctr ARGS` bounded by `limit`; the command line (without --address)
    /// is appended to `log`.
    pub fn run(
        &self,
        args: &[String],
        limit: Duration,
        log: &mut Vec<String>,
    ) -> anyhow::Result<Outcome> {
        logged("ctr", self.command(args), args, limit, log)
    }

    /// Like [`Ctr::run`], not logged (housekeeping: ls, cleanup).
    pub fn quiet(&self, args: &[&str], limit: Duration) -> anyhow::Result<Outcome> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        run_bounded(&mut self.command(&args), limit)
    }

    /// containerd's version, or why it does not answer.
    pub fn server_version(&self) -> Result<String, Unreachable> {
        let unreachable = |why: String| Unreachable {
            address: self.address.clone(),
            why,
        };
        if !self.address.exists() {
            return Err(unreachable("no such socket".into()));
        }
        let o = self
            .quiet(&["version"], Duration::from_secs(10))
            .map_err(|e| unreachable(e.to_string()))?;
        if !o.ok() {
            return Err(unreachable(if o.timed_out {
                o.failure()
            } else {
                dial_failure(&o.stderr)
            }));
        }
        Ok(server_version_in(&o.stdout).unwrap_or("unknown").to_owned())
    }

    /// Kills and removes container `id` whatever state it is in.
    pub fn remove(&self, id: &str) {
        let t = Duration::from_secs(30);
        let _ = self.quiet(&["task", "kill", "-s", "SIGKILL", id], t);
        for _ in 0..100 {
            match self.quiet(&["task", "delete", id], t) {
                Ok(o) if o.ok() || o.stderr.contains("not found") => break,
                Err(_) => break,
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let _ = self.quiet(&["container", "rm", id], t);
    }

    /// Makes sure `image` is in containerd: the built-in busybox image is
    /// built and imported; any other is pulled.
    pub fn ensure_image(&self, image: &str, log: &mut Vec<String>) -> anyhow::Result<()> {
        let have = self.quiet(&["images", "ls", "-q"], Duration::from_secs(30))?;
        if !have.ok() {
            bail!(
                "containerd not reachable at {}: {}",
                self.address.display(),
                have.failure()
            );
        }
        if have.stdout.lines().any(|l| l == image) {
            return Ok(());
        }
        if image == scute_testkit::image::IMAGE {
            let dir = tempfile::tempdir()?;
            let tar = dir.path().join("busybox.tar");
            scute_testkit::image::busybox_image_tar(&tar)?;
            let o = self.run(
                &[
                    "images".into(),
                    "import".into(),
                    tar.to_string_lossy().into_owned(),
                ],
                Duration::from_secs(120),
                log,
            )?;
            if !o.ok() {
                bail!("ctr images import: {}", o.failure());
            }
        } else {
            let o = self.run(
                &["images".into(), "pull".into(), image.into()],
                Duration::from_secs(600),
                log,
            )?;
            if !o.ok() {
                bail!(
                    "image {image} is not in containerd and could not be pulled ({}); \
                     import it with `ctr images import` or use the built-in image",
                    o.failure()
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_failures_name_the_root_cause() {
        let refused = "ctr: failed to dial \"/run/containerd/containerd.sock\": connection error: desc = \"transport: error while dialing: dial unix /run/containerd/containerd.sock: connect: connection refused\"\n";
        assert_eq!(dial_failure(refused), "connection refused");
        assert_eq!(
            dial_failure("ctr: permission denied\n"),
            "permission denied"
        );
        assert_eq!(dial_failure(""), "");
    }

    #[test]
    fn bounded_commands() {
        let o = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.combined(), "out\nerr\n");
        assert_eq!(o.failure(), "exit 3: err");
        let o = run_bounded(
            Command::new("sh").args([
                "-c",
                "echo 'docker: no.' >&2; echo >&2; echo \"Run 'docker run --help'\" >&2; exit 125",
            ]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.failure(), "exit 125: docker: no.");
        let o = run_bounded(Command::new("sleep").arg("10"), Duration::from_millis(200)).unwrap();
        assert!(o.timed_out && o.code.is_none() && !o.ok());
        assert!(o.elapsed < Duration::from_secs(5));
    }

    #[test]
    fn server_version() {
        let out = "Client:\n  Version:  1.6.20~ds1\n\nServer:\n  Version:  1.6.21\n  UUID: x\n";
        assert_eq!(server_version_in(out), Some("1.6.21"));
        assert_eq!(server_version_in("Client:\n  Version: 1\n"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            display("ctr", &["run".into(), "sh -c 'x'".into(), "a=b".into()]),
            "ctr run 'sh -c '\\''x'\\''' a=b"
        );
    }
}
