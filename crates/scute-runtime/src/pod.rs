//! CRI pods: what containerd's CRI plugin writes into a container's spec
//! (annotations, namespace paths) and what it means in the pod's one VM.
//!
//! A pod is one sandbox. Its sandbox (pause) container boots the VM; every
//! other container of the pod joins that VM. Namespace *paths* name a process
//! of the pod by the pid the shim reported to containerd, which is the VMM's
//! (a host process in the pod's netns, as Kata reports): in the guest they
//! become the pod's sandbox container's namespaces. The network is always
//! the VM's (wired into the pod's netns).

use std::path::PathBuf;

use serde_json::Value;

use crate::{Config, Error};

/// CRI annotations that group containers into one sandbox (one VM).
pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// containerd ≥ 1.7 passes the pod's resources on the sandbox.
pub const ANN_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const ANN_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANN_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// Explicit VM size for a pod (list `io.scute.vm.*` in the runtime's
/// `pod_annotations` so the CRI plugin passes them on).
pub const ANN_VM_MEMORY_MIB: &str = "io.scute.vm.memory_mib";
pub const ANN_VM_VCPUS: &str = "io.scute.vm.vcpus";
/// `off`: the sandbox boots a VM of its own instead of taking a ready one
/// from the pool (`ctr run --annotation io.scute.vm.pool=off`).
pub const ANN_VM_POOL: &str = "io.scute.vm.pool";

/// What a container is to its sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not a CRI container: its own sandbox (`ctr run`, nerdctl).
    Standalone,
    /// A CRI pod's sandbox (pause) container: it boots the pod's VM.
    PodSandbox,
    /// A CRI container that joins the VM of pod `sandbox_id`.
    PodMember { sandbox_id: String },
}

impl Role {
    /// Reads the role from a spec's annotations; the sandbox id is validated
    /// like any id (it names a state dir).
    pub fn of(spec: &Value) -> Result<Self, Error> {
        let get = |k: &str| annotation(spec, k);
        match (get(ANN_CONTAINER_TYPE), get(ANN_SANDBOX_ID)) {
            (Some("sandbox"), _) => Ok(Role::PodSandbox),
            (Some("container"), Some(sb)) => {
                crate::bundle::validate_id(sb).map_err(|_| Error::InvalidSpec {
                    path: PathBuf::from("config.json"),
                    message: format!(
                        "annotation {ANN_SANDBOX_ID} = {sb:?} is not a valid sandbox id"
                    ),
                })?;
                Ok(Role::PodMember {
                    sandbox_id: sb.to_owned(),
                })
            }
            (Some("container"), None) => Err(Error::InvalidSpec {
                path: PathBuf::from("config.json"),
                message: format!("a CRI container without the {ANN_SANDBOX_ID} annotation"),
            }),
            _ => Ok(Role::Standalone),
        }
    }

    pub fn is_cri(&self) -> bool {
        !matches!(self, Role::Standalone)
    }
}

fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// An `io.scute.*` annotation that changes what the operator set (VM size,
/// pool use): a CRI pod's only when `enable_annotations` lists it (a tenant
/// must not size its own VM past its pod's resources), anybody else's
/// always.
pub fn operator_annotation<'a>(spec: &'a Value, key: &str, config: &Config) -> Option<&'a str> {
    let v = annotation(spec, key)?;
    let cri = Role::of(spec).map(|r| r.is_cri()).unwrap_or(true);
    if cri && !config.enable_annotations.iter().any(|k| k == key) {
        tracing::warn!(
            annotation = key,
            "pod annotation ignored: not listed in enable_annotations of the scute config"
        );
        return None;
    }
    Some(v)
}

/// MiB the guest kernel, agent and page cache need beside a container's
/// memory limit.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

/// What a container that has its VM to itself (`ctr run`, nerdctl, Docker
/// and Podman through scute-runc) asks for with its own `--memory` and
/// `--cpus`: (vCPUs, MiB), 0 for what it does not limit. The limits hold
/// inside the guest (its cgroup there); the VM is made big enough to hold
/// them beside the guest's own needs. More vCPUs than `max_vcpus` are
/// capped (the quota still holds); more memory than `max_memory_mib` is
/// refused.
fn own_limits(spec: &Value, config: &Config) -> Result<(u64, u64), Error> {
    let res = spec.pointer("/linux/resources");
    let memory = res
        .and_then(|r| r.pointer("/memory/limit"))
        .and_then(Value::as_i64)
        .filter(|l| *l > 0)
        .map_or(0, |l| (l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB);
    if memory > u64::from(config.max_memory_mib) {
        return Err(Error::InvalidSpec {
            path: PathBuf::from("config.json"),
            message: format!(
                "the container's memory limit needs a VM of {memory} MiB; scute allows at most {} (raise max_memory_mib in the scute config, or lower the limit)",
                config.max_memory_mib
            ),
        });
    }
    let quota = res
        .and_then(|r| r.pointer("/cpu/quota"))
        .and_then(Value::as_i64)
        .filter(|q| *q > 0);
    let period = res
        .and_then(|r| r.pointer("/cpu/period"))
        .and_then(Value::as_u64)
        .filter(|p| *p > 0)
        .unwrap_or(100_000);
    let vcpus = quota.map_or(0, |q| {
        (q as u64).div_ceil(period).min(u64::from(config.max_vcpus))
    });
    Ok((vcpus, memory))
}

/// The VM's size for a sandbox: the pod's resources from containerd (≥ 1.7)
/// added to the configured defaults; for a container outside CRI, the
/// defaults grown to its own limits ([`own_limits`]); explicit scute
/// annotations instead where [`operator_annotation`] honours them.
/// Anything over the configured maximum is refused.
pub fn vm_size(spec: &Value, config: &Config) -> Result<(u32, u32), Error> {
    let num = |k: &str| -> Result<Option<u64>, Error> {
        let v = match k {
            ANN_VM_MEMORY_MIB | ANN_VM_VCPUS => operator_annotation(spec, k, config),
            _ => annotation(spec, k),
        };
        v.map(|v| {
            v.trim().parse::<u64>().map_err(|_| Error::InvalidSpec {
                path: PathBuf::from("config.json"),
                message: format!("annotation {k} = {v:?} is not a whole number"),
            })
        })
        .transpose()
    };
    let mut memory = u64::from(config.memory_mib);
    let mut vcpus = u64::from(config.vcpus);
    if let Some(bytes) = num(ANN_SANDBOX_MEMORY)?.filter(|b| *b > 0) {
        memory += bytes.div_ceil(1 << 20);
    }
    if let (Some(q), Some(p)) = (num(ANN_SANDBOX_CPU_QUOTA)?, num(ANN_SANDBOX_CPU_PERIOD)?) {
        if q > 0 && p > 0 {
            vcpus += q.div_ceil(p);
        }
    }
    memory = num(ANN_VM_MEMORY_MIB)?.unwrap_or(memory);
    vcpus = num(ANN_VM_VCPUS)?.unwrap_or(vcpus);
    // Outside CRI the container's own limits are a floor, also under an
    // explicit size: a VM smaller than its memory limit would run out of
    // memory as a whole before the container hit its limit.
    if matches!(Role::of(spec), Ok(Role::Standalone)) {
        let (v, m) = own_limits(spec, config)?;
        vcpus = vcpus.max(v);
        memory = memory.max(m);
    }
    let over = |what: &str, v: u64, lo: u32, hi: u32, key: &str| {
        Error::InvalidSpec {
        path: PathBuf::from("config.json"),
        message: format!(
            "the pod asks for {what} = {v}; scute allows {lo}..={hi} (raise {key} in the scute config)"
        ),
    }
    };
    if !(64..=u64::from(config.max_memory_mib)).contains(&memory) {
        return Err(over(
            "memory_mib",
            memory,
            64,
            config.max_memory_mib,
            "max_memory_mib",
        ));
    }
    if !(1..=u64::from(config.max_vcpus)).contains(&vcpus) {
        return Err(over("vcpus", vcpus, 1, config.max_vcpus, "max_vcpus"));
    }
    Ok((vcpus as u32, memory as u32))
}

/// Rewrites the spec's namespaces for the guest. `joinable` holds
/// (pid containerd was told, guest pid) of the sandbox's processes whose
/// namespaces a container may join (the pod's containers' init processes,
/// the sandbox container first): a path naming a reported pid becomes the
/// first matching guest process's.
pub fn guest_namespaces(
    spec: &mut Value,
    role: &Role,
    joinable: &[(u32, u32)],
) -> Result<(), Error> {
    let invalid = |message: String| Error::InvalidSpec {
        path: PathBuf::from("config.json"),
        message,
    };
    let Some(nss) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    else {
        return Ok(());
    };
    let kind_of = |ns: &Value| {
        ns.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let has = |nss: &[Value], k: &str| nss.iter().any(|ns| kind_of(ns) == k);
    if !has(nss, "network") {
        let field = if role.is_cri() {
            "hostNetwork: true"
        } else {
            "the host's network (no network namespace)"
        };
        return Err(invalid(format!(
            "the spec asks for {field}: a VM can't share the host's network stack; give the container a network namespace (drop --net-host / hostNetwork)"
        )));
    }
    if role.is_cri() {
        for (k, field) in [("pid", "hostPID"), ("ipc", "hostIPC")] {
            if !has(nss, k) {
                return Err(invalid(format!(
                    "the pod asks for {field}: true, which a VM can't give (its processes are in the guest, not on the host); remove {field} from the pod spec"
                )));
            }
        }
    }
    // A netns with a path is the one the VM was wired into: in the guest the
    // container shares the VM's network. Without a path it gets a fresh one
    // (loopback only).
    nss.retain(|ns| !(kind_of(ns) == "network" && ns.get("path").is_some()));
    for ns in nss.iter_mut() {
        let Some(p) = ns.get("path").and_then(Value::as_str) else {
            continue;
        };
        let kind = kind_of(ns);
        let guest = parse_ns_path(p, &kind)
            .and_then(|pid| joinable.iter().find(|(host, _)| *host == pid))
            .map(|(_, guest)| *guest);
        match guest {
            Some(pid) => {
                ns["path"] = Value::String(format!("/proc/{pid}/ns/{}", proc_ns_name(&kind)));
            }
            _ if joinable.is_empty() => {
                return Err(invalid(format!(
                    "joining the host's {kind} namespace {p} is not possible from inside a VM: remove its \"path\""
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "{kind} namespace {p} is not a namespace of a process of this pod's VM (its processes: {:?}); only the pod's own namespaces can be joined",
                    joinable.iter().map(|(host, _)| host).collect::<Vec<_>>()
                )))
            }
        }
    }
    Ok(())
}

/// `/proc/<pid>/ns/<name>` for namespace type `kind` → pid.
fn parse_ns_path(p: &str, kind: &str) -> Option<u32> {
    let rest = p.strip_prefix("/proc/")?;
    let (pid, name) = rest.split_once("/ns/")?;
    (name == proc_ns_name(kind)).then_some(())?;
    pid.parse().ok()
}

fn proc_ns_name(kind: &str) -> &str {
    match kind {
        "network" => "net",
        "mount" => "mnt",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(ann: Value, nss: Value) -> Value {
        json!({"annotations": ann, "linux": {"namespaces": nss}})
    }

    #[test]
    fn roles_from_cri_annotations() {
        let s = spec(
            json!({ANN_CONTAINER_TYPE: "sandbox", ANN_SANDBOX_ID: "p1"}),
            json!([]),
        );
        assert_eq!(Role::of(&s).unwrap(), Role::PodSandbox);
        let s = spec(
            json!({ANN_CONTAINER_TYPE: "container", ANN_SANDBOX_ID: "p1"}),
            json!([]),
        );
        assert_eq!(
            Role::of(&s).unwrap(),
            Role::PodMember {
                sandbox_id: "p1".into()
            }
        );
        assert_eq!(Role::of(&json!({})).unwrap(), Role::Standalone);
    }

    #[test]
    fn sandbox_id_that_is_a_path_is_refused() {
        for bad in ["/etc", "../x", "a/b", ""] {
            let s = spec(
                json!({ANN_CONTAINER_TYPE: "container", ANN_SANDBOX_ID: bad}),
                json!([]),
            );
            let e = Role::of(&s).unwrap_err().to_string();
            assert!(e.contains(ANN_SANDBOX_ID), "{bad}: {e}");
        }
    }

    #[test]
    fn member_joins_the_pods_ipc_uts_and_pid() {
        let member = Role::PodMember {
            sandbox_id: "p".into(),
        };
        let mut s = spec(
            json!({}),
            json!([
                {"type": "network", "path": "/proc/4242/ns/net"},
                {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                {"type": "uts", "path": "/proc/4242/ns/uts"},
                {"type": "pid", "path": "/proc/4242/ns/pid"},
                {"type": "mount"}
            ]),
        );
        // containerd was told the VMM's pid (4242) for the sandbox container
        // (guest pid 89) and for another member (guest pid 120): the path
        // means the sandbox container's, listed first.
        guest_namespaces(&mut s, &member, &[(4242, 89), (4242, 120)]).unwrap();
        assert_eq!(
            s["linux"]["namespaces"],
            json!([
                {"type": "ipc", "path": "/proc/89/ns/ipc"},
                {"type": "uts", "path": "/proc/89/ns/uts"},
                {"type": "pid", "path": "/proc/89/ns/pid"},
                {"type": "mount"}
            ])
        );
    }

    #[test]
    fn a_pid_outside_the_pod_is_refused() {
        let member = Role::PodMember {
            sandbox_id: "p".into(),
        };
        let mut s = spec(
            json!({}),
            json!([{"type": "network"}, {"type": "pid"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]),
        );
        let e = guest_namespaces(&mut s, &member, &[(4242, 89)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a namespace of a process of this pod"),
            "{e}"
        );
        let mut s = spec(
            json!({}),
            json!([{"type": "network"}, {"type": "pid"}, {"type": "ipc", "path": "/proc/4242/ns/uts"}]),
        );
        assert!(guest_namespaces(&mut s, &member, &[(4242, 89)]).is_err());
        // A guest pid is not a pid containerd was told.
        let mut s = spec(
            json!({}),
            json!([{"type": "network"}, {"type": "pid"}, {"type": "ipc", "path": "/proc/89/ns/ipc"}]),
        );
        assert!(guest_namespaces(&mut s, &member, &[(4242, 89)]).is_err());
    }

    #[test]
    fn host_namespaces_are_refused_by_field_name() {
        let sb = Role::PodSandbox;
        for (nss, field) in [
            (json!([{"type": "pid"}, {"type": "ipc"}]), "hostNetwork"),
            (json!([{"type": "network"}, {"type": "ipc"}]), "hostPID"),
            (json!([{"type": "network"}, {"type": "pid"}]), "hostIPC"),
        ] {
            let mut s = spec(json!({}), nss);
            let e = guest_namespaces(&mut s, &sb, &[]).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn standalone_paths_are_refused_with_reason() {
        let mut s = spec(
            json!({}),
            json!([{"type": "network"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]),
        );
        let e = guest_namespaces(&mut s, &Role::Standalone, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ipc") && e.contains("VM"), "{e}");
    }

    #[test]
    fn vm_size_from_annotations_within_limits() {
        let c = Config::default();
        assert_eq!(vm_size(&json!({}), &c).unwrap(), (c.vcpus, c.memory_mib));
        let s = json!({"annotations": {ANN_VM_MEMORY_MIB: "512", ANN_VM_VCPUS: "2"}});
        assert_eq!(vm_size(&s, &c).unwrap(), (2, 512));
        // A CRI pod's only when the operator enables them.
        let pod = json!({"annotations": {ANN_CONTAINER_TYPE: "sandbox", ANN_VM_MEMORY_MIB: "8192", ANN_VM_VCPUS: "8"}});
        assert_eq!(vm_size(&pod, &c).unwrap(), (c.vcpus, c.memory_mib));
        let open = Config {
            enable_annotations: vec![ANN_VM_MEMORY_MIB.into()],
            ..Config::default()
        };
        assert_eq!(vm_size(&pod, &open).unwrap(), (c.vcpus, 8192));
        let s = json!({"annotations": {ANN_SANDBOX_MEMORY: "134217728", ANN_SANDBOX_CPU_QUOTA: "150000", ANN_SANDBOX_CPU_PERIOD: "100000"}});
        assert_eq!(vm_size(&s, &c).unwrap(), (c.vcpus + 2, c.memory_mib + 128));
        let s = json!({"annotations": {ANN_VM_MEMORY_MIB: "999999"}});
        assert!(vm_size(&s, &c)
            .unwrap_err()
            .to_string()
            .contains("max_memory_mib"));
        let s = json!({"annotations": {ANN_VM_VCPUS: "two"}});
        assert!(vm_size(&s, &c)
            .unwrap_err()
            .to_string()
            .contains("whole number"));
    }

    #[test]
    fn a_containers_own_limits_grow_its_vm_within_the_caps() {
        let c = Config::default();
        let big = json!({"linux": {"resources": {
            "memory": {"limit": 1_i64 << 30}, "cpu": {"quota": 150000, "period": 100000}}}});
        assert_eq!(
            vm_size(&big, &c).unwrap(),
            (2.max(c.vcpus), 1024 + GUEST_OVERHEAD_MIB as u32)
        );
        // Small limits leave the defaults; a quota past max_vcpus is capped.
        let small = json!({"linux": {"resources": {
            "memory": {"limit": 16_i64 << 20}, "cpu": {"quota": 1_000_000_000, "period": 100000}}}});
        assert_eq!(vm_size(&small, &c).unwrap(), (c.max_vcpus, c.memory_mib));
        let huge = json!({"linux": {"resources": {"memory": {"limit": 1_i64 << 50}}}});
        let e = vm_size(&huge, &c).unwrap_err().to_string();
        assert!(
            e.contains("memory limit") && e.contains("max_memory_mib"),
            "{e}"
        );
        // An explicit size below what the limits need is raised to it.
        let asked = json!({"annotations": {ANN_VM_MEMORY_MIB: "256", ANN_VM_VCPUS: "1"},
            "linux": {"resources": {"memory": {"limit": 1_i64 << 30},
            "cpu": {"quota": 200000, "period": 100000}}}});
        assert_eq!(
            vm_size(&asked, &c).unwrap(),
            (2, 1024 + GUEST_OVERHEAD_MIB as u32)
        );
        // A CRI container's own limits are its pod's business: the pod's
        // annotations size the VM.
        let pause = json!({"annotations": {ANN_CONTAINER_TYPE: "sandbox"},
            "linux": {"resources": {"memory": {"limit": 1_i64 << 30}}}});
        assert_eq!(vm_size(&pause, &c).unwrap(), (c.vcpus, c.memory_mib));
    }
}
