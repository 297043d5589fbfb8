//! Scenario helpers for tests that boot real VMs (QEMU under TCG here,
//! virtiofsd, the built guest assets).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const SCUTE: &str = env!("CARGO_BIN_EXE_scute");

/// A bundle in a temp dir; `spec` can be edited before running.
pub struct TestBundle {
    pub dir: tempfile::TempDir,
    pub spec: Value,
}

impl TestBundle {
    pub fn new(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        scute_testkit::busybox_bundle(dir.path(), args).unwrap();
        let spec = scute_testkit::default_spec(args);
        Self { dir, spec }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn process(&mut self) -> &mut Value {
        &mut self.spec["process"]
    }

    pub fn save(&self) {
        scute_testkit::write_spec(self.dir.path(), &self.spec).unwrap();
    }
}

/// A unique id per test, so parallel tests don't collide.
pub fn unique_id(name: &str) -> String {
    format!("t-{name}-{}", std::process::id())
}

pub fn scute(args: &[&str]) -> Command {
    let mut c = Command::new(SCUTE);
    c.args(args);
    c
}

/// `scute run -b DIR ID` with `stdin` fed, checking for leaks afterwards.
pub fn run(bundle: &TestBundle, id: &str, stdin: Option<&str>) -> Output {
    bundle.save();
    let mut cmd = scute(&["run", "-b"]);
    cmd.arg(bundle.path()).arg(id);
    run_cmd(cmd, id, stdin)
}

pub fn run_cmd(mut cmd: Command, id: &str, stdin: Option<&str>) -> Output {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn scute");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_no_leaks(id);
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// After a run: no VMM, virtiofsd, mount or state dir of sandbox `id` remains.
pub fn assert_no_leaks(id: &str) {
    let state = PathBuf::from("/run/scute").join(id);
    assert!(!state.exists(), "state dir {} left behind", state.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(state.to_str().unwrap()),
        "mounts under {} left behind",
        state.display()
    );
    let left = procs_mentioning(&format!("/run/scute/{id}/"));
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let cgroups = scute_testkit::procs::cgroups_named(id);
    assert!(cgroups.is_empty(), "host cgroups left behind: {cgroups:?}");
}

/// Command lines of processes whose argv mentions `needle`.
pub fn procs_mentioning(needle: &str) -> Vec<String> {
    scute_testkit::procs::mentioning(needle)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// The guest kernel version from the assets manifest.
pub fn guest_kernel() -> String {
    let dir = std::env::var("SCUTE_ASSETS").unwrap_or_else(|_| "/var/lib/scute/assets".into());
    let m: Value = serde_json::from_slice(
        &std::fs::read(Path::new(&dir).join("manifest.json")).expect(
            "guest assets missing: run `make assets` (scute assets build) before the tests",
        ),
    )
    .unwrap();
    m["kernel_version"].as_str().unwrap().to_owned()
}

pub fn host_kernel() -> String {
    String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// A config file in a temp dir with `extra` TOML lines.
pub fn config_with(extra: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(extra.as_bytes()).unwrap();
    f
}
