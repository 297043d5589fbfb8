//! The VM's size for a container that Docker or Podman sizes with
//! `--memory` and `--cpus`: the limit applies inside the guest (the
//! container's cgroup there), and the VM is made big enough to hold it
//! beside the guest's own needs, within the configured maximum.

use serde_json::Value;

use crate::Fail;

/// MiB the guest kernel, agent and page cache need beside a container's
/// memory limit.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

/// (vcpus, memory MiB).
pub fn vm_size(spec: &Value, config: &scute_runtime::Config) -> Result<(u32, u32), Fail> {
    let res = spec.pointer("/linux/resources");
    let limit = res
        .and_then(|r| r.pointer("/memory/limit"))
        .and_then(Value::as_i64)
        .filter(|l| *l > 0);
    let mut memory = u64::from(config.memory_mib);
    if let Some(l) = limit {
        memory = memory.max((l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB);
    }
    if memory > u64::from(config.max_memory_mib) {
        return Err(Fail::new(format!(
            "the container's memory limit needs a VM of {memory} MiB; scute allows at most {} (raise max_memory_mib in the scute config, or lower --memory)",
            config.max_memory_mib
        )));
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
    let mut vcpus = u64::from(config.vcpus);
    if let Some(q) = quota {
        // More vCPUs than the quota can use only costs memory; fewer than
        // it allows is capped at the configured maximum (the quota still
        // holds in the guest).
        vcpus = vcpus
            .max((q as u64).div_ceil(period))
            .min(u64::from(config.max_vcpus));
    }
    Ok((vcpus as u32, memory as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_grow_the_vm_within_the_caps() {
        let config = scute_runtime::Config::default();
        let none = serde_json::json!({});
        assert_eq!(
            vm_size(&none, &config).unwrap(),
            (config.vcpus, config.memory_mib)
        );
        let big = serde_json::json!({"linux": {"resources": {
            "memory": {"limit": 1_i64 << 30}, "cpu": {"quota": 150000, "period": 100000}}}});
        let (v, m) = vm_size(&big, &config).unwrap();
        assert_eq!(m, 1024 + GUEST_OVERHEAD_MIB as u32);
        assert_eq!(v, 2.min(config.max_vcpus).max(config.vcpus));
        let huge = serde_json::json!({"linux": {"resources": {"memory": {"limit": 1_i64 << 50}}}});
        let e = vm_size(&huge, &config).unwrap_err().to_string();
        assert!(e.contains("max_memory_mib"), "{e}");
        let small =
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 64_i64 << 20}}}});
        assert_eq!(
            vm_size(&small, &config).unwrap().1,
            config.memory_mib.max(128)
        );
    }
}
