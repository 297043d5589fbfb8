//! The container engine the lab drives: containerd through `ctr` (the
//! default), or Docker or Podman through their own CLIs with `--runtime`,
//! so that "runc vs a VM runtime under Docker" is the same lab. Every call
//! is bounded in time and recorded as the command line a reader would type.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::ctr::{display, run_bounded, Ctr, Outcome};
use crate::lab::Known;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Containerd,
    Docker,
    Podman,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Containerd, Kind::Docker, Kind::Podman];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Containerd => "containerd",
            Kind::Docker => "docker",
            Kind::Podman => "podman",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        if s == "ctr" {
            return Ok(Kind::Containerd);
        }
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| format!("unknown engine {s:?}: use containerd, docker or podman"))
    }

    /// The CLI that runs containers.
    pub fn program(self) -> &'static str {
        match self {
            Kind::Containerd => "ctr",
            Kind::Docker => "docker",
            Kind::Podman => "podman",
        }
    }
}

/// A container's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// Loopback only (ctr's default; `--network none`).
    Loopback,
    /// A network namespace the lab attached with CNI (containerd only).
    Netns(PathBuf),
    /// The engine's default bridge network, with `-p 127.0.0.1:HOST:CONTAINER`
    /// when given (Docker and Podman).
    Bridge(Option<(u16, u16)>),
}

/// A host directory bound into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: &'static str,
    pub read_only: bool,
}

/// One container run, as the lab asks for it; [`Engine::run_args`] writes
/// it in the engine's words.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub id: &'a str,
    pub image: &'a str,
    pub cmd: &'a [&'a str],
    /// `-d`: started and left running; else in the foreground, removed
    /// when it exits (`--rm`).
    pub detach: bool,
    pub privileged: bool,
    /// ctr's `--seccomp` (Docker and Podman apply their default profile
    /// unless `--privileged`).
    pub seccomp: bool,
    pub env: Vec<(String, String)>,
    pub binds: Vec<Bind>,
    pub net: Net,
    pub annotations: Vec<(String, String)>,
}

impl<'a> Spec<'a> {
    pub fn new(id: &'a str, image: &'a str, cmd: &'a [&'a str]) -> Self {
        Self {
            id,
            image,
            cmd,
            detach: false,
            privileged: false,
            seccomp: false,
            env: Vec::new(),
            binds: Vec::new(),
            net: Net::Loopback,
            annotations: Vec::new(),
        }
    }
}

/// One engine, addressed as its CLI is by default (containerd: by socket).
#[derive(Debug, Clone)]
pub struct Engine {
    pub kind: Kind,
    pub ctr: Ctr,
    /// scute's config, which Podman hands to scute-runc as a runtime flag
    /// (conmon passes no environment on).
    pub scute_config: Option<PathBuf>,
    /// `--cpus` for every container: a CFS quota of that many CPUs, which
    /// a VM runtime turns into as many vCPUs (rounded up).
    pub cpus: Option<f64>,
}

impl Engine {
    pub fn new(kind: Kind, address: &Path, scute_config: Option<&Path>) -> Self {
        Self {
            kind,
            ctr: Ctr::new(address),
            scute_config: scute_config.map(Path::to_path_buf),
            cpus: None,
        }
    }

    pub fn program(&self) -> &'static str {
        self.kind.program()
    }

    /// The engine's CLI with `args`, stdin closed by the caller.
    fn command(&self, args: &[String]) -> Command {
        match self.kind {
            Kind::Containerd => self.ctr.command(args),
            _ => {
                let mut c = Command::new(self.program());
                c.args(args);
                c
            }
        }
    }

    /// The command bounded by `limit`, its line appended to `log`.
    pub fn run(
        &self,
        args: &[String],
        limit: Duration,
        log: &mut Vec<String>,
    ) -> anyhow::Result<Outcome> {
        crate::ctr::logged(self.program(), self.command(args), args, limit, log)
    }

    /// Not logged: housekeeping.
    pub fn quiet(&self, args: &[&str], limit: Duration) -> anyhow::Result<Outcome> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        run_bounded(&mut self.command(&args), limit)
    }

    pub fn display(&self, args: &[String]) -> String {
        display(self.program(), args)
    }

    /// The server's version, or why it does not answer and what to do.
    pub fn server_version(&self) -> anyhow::Result<String> {
        let (args, start): (&[&str], &str) = match self.kind {
            Kind::Containerd => {
                return self.ctr.server_version().map_err(|e| {
                    anyhow::anyhow!(
                        "{e}\n`make lab` starts one; or point --address at a running containerd"
                    )
                })
            }
            Kind::Docker => (
                &["version", "--format", "{{.Server.Version}}"],
                "start dockerd (`systemctl start docker`, or `dockerd &`), or point DOCKER_HOST at one",
            ),
            Kind::Podman => (&["version", "--format", "{{.Version}}"], "install podman (`make setup`)"),
        };
        let o = match self.quiet(args, Duration::from_secs(30)) {
            Ok(o) => o,
            Err(e) => bail!("{} not usable: {e:#}; {start}", self.program()),
        };
        if !o.ok() {
            bail!(
                "{} does not answer: {}; {start}",
                self.program(),
                o.failure()
            );
        }
        Ok(o.stdout.trim().to_owned())
    }

    /// Whether runtime `k` can run under this engine, or why not and what
    /// to do (containerd: its binaries are on PATH, checked by the caller).
    pub fn runtime_usable(&self, k: &Known) -> Result<(), String> {
        let Some(bin) = k.oci_binary else {
            return match self.kind {
                Kind::Containerd => Ok(()),
                _ => Err(format!(
                    "{} has no runc-compatible command for {} to run",
                    k.name,
                    self.program()
                )),
            };
        };
        match self.kind {
            Kind::Containerd => Ok(()),
            Kind::Docker => {
                let o = self
                    .quiet(
                        &["info", "--format", "{{json .Runtimes}}"],
                        Duration::from_secs(30),
                    )
                    .map_err(|e| e.to_string())?;
                let names: serde_json::Value =
                    serde_json::from_str(o.stdout.trim()).unwrap_or_default();
                if names.get(k.name).is_some() {
                    Ok(())
                } else {
                    let how = if k.name == "scute" {
                        "scute install --docker".to_owned()
                    } else {
                        format!("add {{\"runtimes\": {{\"{}\": {{\"path\": \"{bin}\"}}}}}} to /etc/docker/daemon.json and restart dockerd", k.name)
                    };
                    Err(format!(
                        "dockerd has no runtime named {:?} (docker info lists {}): {how}",
                        k.name,
                        names
                            .as_object()
                            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    ))
                }
            }
            Kind::Podman => crate::measure::which(bin)
                .map(|_| ())
                .ok_or_else(|| format!("{bin} is not on PATH, so podman --runtime cannot find it")),
        }
    }

    /// The arguments that run `spec` under runtime `k`.
    pub fn run_args(&self, k: &Known, spec: &Spec) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        match self.kind {
            Kind::Containerd => {
                push(&[if spec.detach { "-d" } else { "--rm" }]);
                if let Some(c) = self.cpus {
                    push(&["--cpus", &c.to_string()]);
                }
                if spec.seccomp {
                    push(&["--seccomp"]);
                }
                if spec.privileged {
                    push(&["--privileged"]);
                }
                push(&["--runtime", k.runtime_type]);
                if let Some(b) = k.runc_binary {
                    push(&["--runc-binary", b]);
                }
                for (key, v) in &spec.annotations {
                    push(&["--annotation", &format!("{key}={v}")]);
                }
                if let Net::Netns(p) = &spec.net {
                    push(&["--with-ns", &format!("network:{}", p.display())]);
                }
                for (key, v) in &spec.env {
                    push(&["--env", &format!("{key}={v}")]);
                }
                for b in &spec.binds {
                    let mode = if b.read_only { "ro" } else { "rw" };
                    push(&[
                        "--mount",
                        &format!(
                            "type=bind,src={},dst={},options=rbind:{mode}",
                            b.src.display(),
                            b.dst
                        ),
                    ]);
                }
                push(&[spec.image, spec.id]);
            }
            Kind::Docker | Kind::Podman => {
                push(&[if spec.detach { "-d" } else { "--rm" }]);
                push(&["--name", spec.id]);
                if let Some(c) = self.cpus {
                    push(&["--cpus", &c.to_string()]);
                }
                if spec.privileged {
                    push(&["--privileged"]);
                }
                if self.kind == Kind::Docker {
                    push(&["--runtime", k.name]);
                } else {
                    // Podman takes the binary's path; scute-runc gets
                    // scute's config as a runtime flag.
                    let bin = k.oci_binary.unwrap_or(k.name);
                    let path = crate::measure::which(bin)
                        .map_or_else(|| bin.to_owned(), |p| p.display().to_string());
                    push(&["--runtime", &path]);
                    if let (Some(c), "scute") = (&self.scute_config, k.name) {
                        push(&[&format!("--runtime-flag=scute-config={}", c.display())]);
                    }
                    // Podman asks the runtime for its own rlimits (1048576
                    // open files), which hosts without CAP_SYS_RESOURCE for
                    // root refuse; the same for every runtime.
                    push(&[
                        "--ulimit",
                        "nofile=1024:1024",
                        "--ulimit",
                        "nproc=4096:4096",
                    ]);
                    for (key, v) in &spec.annotations {
                        push(&["--annotation", &format!("{key}={v}")]);
                    }
                }
                match &spec.net {
                    Net::Loopback | Net::Netns(_) => push(&["--network", "none"]),
                    Net::Bridge(Some((host, container))) => {
                        push(&["-p", &format!("127.0.0.1:{host}:{container}")])
                    }
                    Net::Bridge(None) => {}
                }
                for (key, v) in &spec.env {
                    push(&["-e", &format!("{key}={v}")]);
                }
                for b in &spec.binds {
                    let mode = if b.read_only { "ro" } else { "rw" };
                    push(&["-v", &format!("{}:{}:{mode}", b.src.display(), b.dst)]);
                }
                push(&[spec.image]);
            }
        }
        a.extend(spec.cmd.iter().map(|s| s.to_string()));
        a
    }

    /// Kills and removes container `id` whatever state it is in.
    pub fn remove(&self, id: &str) {
        let t = Duration::from_secs(60);
        match self.kind {
            Kind::Containerd => self.ctr.remove(id),
            Kind::Docker => {
                let _ = self.quiet(&["rm", "-f", id], t);
            }
            Kind::Podman => {
                let _ = self.quiet(&["rm", "-f", "-t", "0", id], t);
            }
        }
    }

    /// Names (containerd: ids) of every container the engine has.
    pub fn containers(&self) -> Vec<String> {
        let t = Duration::from_secs(30);
        let o = match self.kind {
            Kind::Containerd => self.quiet(&["containers", "ls", "-q"], t),
            _ => self.quiet(&["ps", "-a", "--format", "{{.Names}}"], t),
        };
        o.map(|o| o.stdout.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Makes sure `image` is there: the built-in busybox image is built
    /// and imported (`ctr images import`, `docker load`, `podman load`);
    /// any other is pulled.
    pub fn ensure_image(&self, image: &str, log: &mut Vec<String>) -> anyhow::Result<()> {
        if self.kind == Kind::Containerd {
            return self.ctr.ensure_image(image, log);
        }
        let t = Duration::from_secs(60);
        if self.quiet(&["image", "inspect", image], t)?.ok() {
            return Ok(());
        }
        if image == scute_testkit::image::IMAGE {
            let dir = tempfile::tempdir()?;
            let tar = dir.path().join("busybox.tar");
            scute_testkit::image::docker_image_tar(&tar, image, &["sh"], &[])?;
            let args = [
                "load".to_owned(),
                "-i".to_owned(),
                tar.display().to_string(),
            ];
            let o = self.run(&args, Duration::from_secs(300), log)?;
            if !o.ok() {
                bail!("{} load: {}", self.program(), o.failure());
            }
            // Podman names an archive's short tag localhost/…: tag it as
            // the lab asks for it.
            if self.kind == Kind::Podman && !self.quiet(&["image", "inspect", image], t)?.ok() {
                let short = image.strip_prefix("docker.io/library/").unwrap_or(image);
                let args = [
                    "tag".to_owned(),
                    format!("localhost/{short}"),
                    image.to_owned(),
                ];
                let o = self.run(&args, t, log)?;
                if !o.ok() {
                    bail!("podman tag: {}", o.failure());
                }
            }
        } else {
            let o = self.run(
                &["pull".into(), image.into()],
                Duration::from_secs(600),
                log,
            )?;
            if !o.ok() {
                bail!(
                    "image {image} is not in {} and could not be pulled ({}); load it with `{} load` or use the built-in image",
                    self.program(),
                    o.failure(),
                    self.program()
                );
            }
        }
        Ok(())
    }

    /// What names a running container's rootfs in the host's mount table:
    /// its id (containerd's bundle, a runtime's share) and, for Docker and
    /// Podman, the id they gave the runtime and the overlay they mounted.
    pub fn rootfs_needles(&self, id: &str) -> Vec<String> {
        let mut v = vec![id.to_owned()];
        if self.kind != Kind::Containerd {
            v.extend(self.inspect(id, "{{.Id}}"));
            v.extend(self.inspect(id, "{{.GraphDriver.Data.MergedDir}}"));
        }
        v
    }

    /// scute as this engine knows it: Docker's runtime entry (path and
    /// arguments), Podman's `--runtime` path; None when it doesn't.
    pub fn scute_entry(&self) -> Option<String> {
        match self.kind {
            Kind::Containerd => None,
            Kind::Docker => self
                .quiet(
                    &["info", "--format", "{{json .Runtimes.scute}}"],
                    Duration::from_secs(30),
                )
                .ok()
                .filter(Outcome::ok)
                .map(|o| o.stdout.trim().to_owned())
                .filter(|s| s.starts_with('{'))
                .map(|s| format!("\"scute\": {s}")),
            Kind::Podman => crate::measure::which("scute-runc")
                .map(|p| format!("podman run --runtime {}", p.display())),
        }
    }

    /// The id the engine gave the runtime for container `id` (Docker and
    /// Podman: the long id; containerd: `id` itself).
    pub fn runtime_id(&self, id: &str) -> String {
        match self.kind {
            Kind::Containerd => None,
            _ => self.inspect(id, "{{.Id}}"),
        }
        .unwrap_or_else(|| id.to_owned())
    }

    /// `inspect --format FORMAT ID`, when it says something.
    fn inspect(&self, id: &str, format: &str) -> Option<String> {
        self.quiet(
            &["inspect", "--format", format, id],
            Duration::from_secs(30),
        )
        .ok()
        .filter(Outcome::ok)
        .map(|o| o.stdout.trim().to_owned())
        .filter(|s| !s.is_empty() && s != "<no value>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scute() -> &'static Known {
        crate::lab::known("scute").unwrap()
    }

    #[test]
    fn engines_by_name() {
        assert_eq!(Kind::parse("docker").unwrap(), Kind::Docker);
        assert_eq!(Kind::parse("ctr").unwrap(), Kind::Containerd);
        let e = Kind::parse("lxc").unwrap_err().to_string();
        assert!(e.contains("containerd, docker or podman"), "{e}");
    }

    #[test]
    fn one_spec_in_each_engines_words() {
        let cmd = ["sh", "-c", "true"];
        let mut s = Spec::new("lab-1-x", "img", &cmd);
        s.privileged = true;
        s.env = vec![("A".into(), "b".into())];
        s.binds = vec![Bind {
            src: "/h".into(),
            dst: "/c",
            read_only: true,
        }];
        let ctr = Engine::new(Kind::Containerd, Path::new("/s"), None);
        assert_eq!(
            ctr.display(&ctr.run_args(scute(), &s)),
            "ctr run --rm --privileged --runtime io.containerd.scute.v2 --env A=b \
             --mount type=bind,src=/h,dst=/c,options=rbind:ro img lab-1-x sh -c true"
        );
        let docker = Engine::new(Kind::Docker, Path::new("/s"), None);
        s.detach = true;
        s.net = Net::Bridge(Some((18080, 8080)));
        assert_eq!(
            docker.display(&docker.run_args(scute(), &s)),
            "docker run -d --name lab-1-x --privileged --runtime scute \
             -p 127.0.0.1:18080:8080 -e A=b -v /h:/c:ro img sh -c true"
        );
        let mut podman = Engine::new(Kind::Podman, Path::new("/s"), Some(Path::new("/c.toml")));
        s.net = Net::Loopback;
        let a = podman.display(&podman.run_args(scute(), &s));
        assert!(a.contains("--runtime-flag=scute-config=/c.toml"), "{a}");
        assert!(a.contains("--network none"), "{a}");
        assert!(a.contains("--ulimit nofile=1024:1024"), "{a}");
        // --cpus: the same for every runtime, in each engine's words.
        assert!(!a.contains("--cpus"), "{a}");
        podman.cpus = Some(2.0);
        let a = podman.display(&podman.run_args(scute(), &s));
        assert!(a.contains("--name lab-1-x --cpus 2 "), "{a}");
        let mut ctr = ctr;
        ctr.cpus = Some(0.5);
        let a = ctr.display(&ctr.run_args(scute(), &s));
        assert!(a.starts_with("ctr run -d --cpus 0.5 "), "{a}");
    }

    #[test]
    fn runtimes_without_a_runc_command_are_not_for_docker() {
        let kata = crate::lab::known("kata").unwrap();
        let docker = Engine::new(Kind::Docker, Path::new("/s"), None);
        let e = docker.runtime_usable(kata).unwrap_err();
        assert!(e.contains("no runc-compatible command"), "{e}");
    }
}
