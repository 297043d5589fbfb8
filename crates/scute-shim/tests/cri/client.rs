//! A CRI client over containerd's socket, calling what kubelet calls, and
//! a test node: a private containerd with the CRI plugin, the pause and test
//! images imported into `k8s.io`, a CNI bridge network of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use scute_testkit::containerd::{Containerd, Cri};
use tonic::transport::{Channel, Endpoint, Uri};

pub const PAUSE_IMAGE: &str = "docker.io/library/scute-pause:test";
pub const NOPATH_IMAGE: &str = "docker.io/library/scute-nopath:test";
pub const IMAGE: &str = scute_testkit::image::IMAGE;

/// `runtime_handler` of a pod: the runc baseline or scute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    Runc,
    Scute,
}

impl Handler {
    pub fn name(self) -> &'static str {
        match self {
            Handler::Runc => "runc",
            Handler::Scute => "scute",
        }
    }
}

pub const CONTAINER_RUNNING: i32 = ContainerState::ContainerRunning as i32;
pub const CONTAINER_EXITED: i32 = ContainerState::ContainerExited as i32;

pub struct Node {
    pub containerd: Containerd,
    pub rt: RuntimeServiceClient<Channel>,
    pub logs: PathBuf,
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_containerd-shim-scute-v2"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Node {
    /// A node whose CNI network `scri<n>` uses `10.93.<n>.0/24`; `n` is
    /// unique per test so tests can run side by side.
    pub async fn new(n: u8) -> Node {
        Self::with_env(n, &[]).await
    }

    /// A node whose containerd (and so its shims) gets `env` too.
    pub async fn with_env(n: u8, env: &[(&str, &str)]) -> Node {
        let cri = Cri {
            network: format!("scri{n}"),
            subnet: format!("10.93.{n}.0/24"),
            sandbox_image: PAUSE_IMAGE.into(),
        };
        let containerd = Containerd::start_cri(&bin_dir(), env, &cri).expect("start containerd");
        import(&containerd, PAUSE_IMAGE, &["/bin/sleep", "2147483647"], &[]);
        import(
            &containerd,
            IMAGE,
            &["sh"],
            &[scute_testkit::image::DEFAULT_PATH],
        );
        import(&containerd, NOPATH_IMAGE, &["/bin/true"], &[]);
        let channel = connect(containerd.socket().to_path_buf())
            .await
            .expect("connect to the CRI socket");
        let logs = containerd.dir.join("pod-logs");
        std::fs::create_dir_all(&logs).unwrap();
        Node {
            rt: RuntimeServiceClient::new(channel),
            containerd,
            logs,
        }
    }
}

/// A test that failed midway leaves pods: stop and remove them through the
/// CRI API, as kubelet would, so their VMs, netns and CNI leases go before
/// containerd does. (A passing test has removed them itself and checked
/// that nothing was left.)
impl Drop for Node {
    fn drop(&mut self) {
        let socket = self.containerd.socket().to_path_buf();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(channel) = connect(socket).await else {
                    return;
                };
                let mut rt = RuntimeServiceClient::new(channel);
                let Ok(pods) = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await else {
                    return;
                };
                for p in pods.into_inner().items {
                    let _ = rt
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: p.id.clone(),
                        })
                        .await;
                    let _ = rt
                        .remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
            });
        })
        .join();
    }
}

/// A gRPC channel over containerd's unix socket.
async fn connect(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

/// Imports `name`: the busybox image with the host's `tools` in it.
pub fn import_with_tools(c: &Containerd, name: &str, tools: &[scute_testkit::image::HostTool]) {
    let file = name.rsplit('/').next().unwrap().replace(':', "-");
    let tar = c.dir.join(format!("{file}.tar"));
    scute_testkit::image::image_tar_with_host_tools(
        &tar,
        name,
        &["sh"],
        &[],
        &[scute_testkit::image::DEFAULT_PATH],
        tools,
    )
    .expect("build image");
    c.ctr_ok(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
}

fn import(c: &Containerd, name: &str, cmd: &[&str], env: &[&str]) {
    let file = name.rsplit('/').next().unwrap().replace(':', "-");
    let tar = c.dir.join(format!("{file}.tar"));
    scute_testkit::image::image_tar_with_env(&tar, name, cmd, &[], env).expect("build image");
    c.ctr_ok(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
}

/// A pod as kubelet describes it: pod network and IPC, a PID namespace per
/// container unless `share_pid`.
pub struct PodSpec {
    pub name: String,
    pub hostname: String,
    pub share_pid: bool,
    pub annotations: HashMap<String, String>,
    /// Namespace options other than kubelet's defaults (host namespaces).
    pub namespaces: Option<NamespaceOption>,
    /// kubelet's cgroup parent for the pod ("" none; a `.slice` name under
    /// the systemd driver).
    pub cgroup_parent: String,
    /// A pod with a privileged container (kubelet marks the sandbox so).
    pub privileged: bool,
}

impl PodSpec {
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.into(),
            hostname: name.into(),
            share_pid: false,
            annotations: HashMap::new(),
            namespaces: None,
            cgroup_parent: String::new(),
            privileged: false,
        }
    }
}

pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

/// What a test container runs and is limited to.
#[derive(Default, Clone)]
pub struct Ctr {
    pub name: String,
    pub attempt: u32,
    pub image: Option<&'static str>,
    pub command: Vec<String>,
    pub memory_limit: i64,
    /// The runtime's default seccomp profile (kubelet's `RuntimeDefault`).
    pub seccomp_default: bool,
    /// `capabilities: drop: [ALL]`.
    pub drop_all_caps: bool,
    /// Volumes (hostPath, as kubelet passes them).
    pub mounts: Vec<Mount>,
    /// `runAsUser`, `runAsGroup`, `supplementalGroups`; `noNewPrivileges`
    /// (`allowPrivilegeEscalation: false`).
    pub run_as: Option<(i64, i64, Vec<i64>)>,
    pub no_new_privs: bool,
    /// A terminal, and stdin kept open (`kubectl run -it`).
    pub tty: bool,
    /// `privileged: true` (its pod must be privileged too).
    pub privileged: bool,
}

impl Ctr {
    pub fn sh(name: &str, script: &str) -> Self {
        Ctr {
            name: name.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }
}

pub fn ns_options(share_pid: bool) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: if share_pid {
            NamespaceMode::Pod as i32
        } else {
            NamespaceMode::Container as i32
        },
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Node {
    pub async fn run_pod(&mut self, h: Handler, spec: &PodSpec) -> Result<Pod, tonic::Status> {
        let log_directory = self.logs.join(&spec.name);
        std::fs::create_dir_all(&log_directory).unwrap();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: format!("uid-{}", spec.name),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: spec.hostname.clone(),
            log_directory: log_directory.display().to_string(),
            annotations: spec.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(
                        spec.namespaces
                            .clone()
                            .unwrap_or_else(|| ns_options(spec.share_pid)),
                    ),
                    privileged: spec.privileged,
                    ..Default::default()
                }),
                cgroup_parent: spec.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: h.name().into(),
            })
            .await?;
        Ok(Pod {
            id: resp.into_inner().pod_sandbox_id,
            config,
        })
    }

    pub async fn create(&mut self, pod: &Pod, c: &Ctr) -> Result<String, tonic::Status> {
        let share_pid = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.pid == NamespaceMode::Pod as i32);
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: c.name.clone(),
                attempt: c.attempt,
            }),
            image: Some(ImageSpec {
                image: c.image.unwrap_or(IMAGE).into(),
                ..Default::default()
            }),
            command: c.command.clone(),
            mounts: c.mounts.clone(),
            tty: c.tty,
            stdin: c.tty,
            log_path: format!("{}_{}.log", c.name, c.attempt),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: c.memory_limit,
                    memory_swap_limit_in_bytes: c.memory_limit,
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(ns_options(share_pid)),
                    seccomp: c.seccomp_default.then(|| SecurityProfile {
                        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                        ..Default::default()
                    }),
                    capabilities: c.drop_all_caps.then(|| Capability {
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    run_as_user: c.run_as.as_ref().map(|r| Int64Value { value: r.0 }),
                    run_as_group: c.run_as.as_ref().map(|r| Int64Value { value: r.1 }),
                    supplemental_groups: c.run_as.as_ref().map(|r| r.2.clone()).unwrap_or_default(),
                    no_new_privs: c.no_new_privs,
                    privileged: c.privileged,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let resp = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await?;
        Ok(resp.into_inner().container_id)
    }

    pub async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    /// Create + start, panicking with the status on failure.
    pub async fn run(&mut self, pod: &Pod, c: &Ctr) -> String {
        let id = self
            .create(pod, c)
            .await
            .unwrap_or_else(|e| panic!("create {}: {e:?}", c.name));
        self.start(&id)
            .await
            .unwrap_or_else(|e| panic!("start {}: {e:?}", c.name));
        id
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("container status")
            .into_inner()
            .status
            .expect("status")
    }

    /// Waits (bounded) until the container is in `state`.
    pub async fn wait_state(&mut self, id: &str, state: i32, within: Duration) -> ContainerStatus {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status(id).await;
            if st.state == state {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} not in state {state} within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub async fn exec(&mut self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        self.try_exec(id, cmd)
            .await
            .unwrap_or_else(|e| panic!("exec {cmd:?} in {id}: {e:?}"))
    }

    /// ExecSync, its error returned.
    pub async fn try_exec(
        &mut self,
        id: &str,
        cmd: &[&str],
    ) -> Result<(i32, String, String), tonic::Status> {
        let r = self
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// UpdateContainerResources with a memory limit (and the same for
    /// memory+swap, as create does).
    pub async fn update_memory(&mut self, id: &str, bytes: i64) -> Result<(), tonic::Status> {
        self.rt
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: bytes,
                    memory_swap_limit_in_bytes: bytes,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn stop(&mut self, id: &str, timeout: i64) {
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("stop {id}: {e:?}"));
    }

    pub async fn remove(&mut self, id: &str) {
        self.rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("remove {id}: {e:?}"));
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does.
    pub async fn remove_pod(&mut self, pod: &Pod) {
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("stop pod {}: {e:?}", pod.id));
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("remove pod {}: {e:?}", pod.id));
    }

    pub async fn pod_ip(&mut self, pod: &Pod) -> String {
        self.rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await
            .expect("pod status")
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .expect("pod ip")
    }

    /// The container's CRI log (what `crictl logs` shows), message parts only.
    pub fn log(&self, pod: &Pod, c: &Ctr) -> String {
        let dir = &pod.config.log_directory;
        let text =
            std::fs::read_to_string(Path::new(dir).join(format!("{}_{}.log", c.name, c.attempt)))
                .unwrap_or_default();
        // "<time> <stream> <P|F> <message>"
        text.lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn counts(&mut self) -> (usize, usize) {
        let pods = self
            .rt
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .len();
        let ctrs = self
            .rt
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .len();
        (pods, ctrs)
    }
}
