//! New limits for a running container: OCI's `LinuxResources` (what `runc
//! update --resources` reads and containerd's Update carries) in the
//! guest's cgroup v2 terms.

use scute_protocol::Limits;
use serde_json::Value;

/// The limits in `resources` (an OCI `LinuxResources` object). Zero or
/// absent fields are left as they are, as runc does; what a VM cannot
/// apply (cpusets, block I/O, hugepages, devices, network priorities)
/// is refused with what to do instead.
pub fn from_oci(resources: &Value) -> Result<Limits, String> {
    if !resources.is_object() {
        return Err("resources: expected a JSON object (OCI LinuxResources)".into());
    }
    let int = |p: &str| -> Result<Option<i64>, String> {
        match resources.pointer(p) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
                .map(Some)
                .ok_or_else(|| format!("resources{p}: expected an integer, got {v}")),
        }
    };
    let set = |p: &str| -> Result<Option<i64>, String> {
        Ok(int(p)?.filter(|v| *v != 0).map(|v| v.max(-1)))
    };
    for (p, what) in [
        ("/cpu/cpus", "cpuset"),
        ("/cpu/mems", "cpuset"),
        ("/cpu/realtimeRuntime", "realtime CPU time"),
    ] {
        let given = match resources.pointer(p) {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Number(n)) => n.as_i64() != Some(0),
            _ => false,
        };
        if given {
            return Err(format!(
                "{what} limits are not supported in a scute VM (resources{p}): size the container with --cpus instead"
            ));
        }
    }
    let memory_max = set("/memory/limit")?;
    if memory_max.is_some_and(|m| m != -1 && m < 4 << 20) {
        return Err("resources/memory/limit: at least 4 MiB, or -1 for no limit".into());
    }
    let period = int("/cpu/period")?.filter(|p| *p != 0);
    let quota = set("/cpu/quota")?;
    let cpu_max = match (quota, period) {
        (None, None) => None,
        (q, p) => {
            let p = p.unwrap_or(100_000);
            if !(1_000..=1_000_000).contains(&p) {
                return Err(format!(
                    "resources/cpu/period: {p} µs is outside 1000..=1000000"
                ));
            }
            let q = q.unwrap_or(-1);
            if q != -1 && q < 1_000 {
                return Err(format!("resources/cpu/quota: {q} µs is under 1000"));
            }
            Some((q, p as u64))
        }
    };
    // cgroup v1 shares (2..=262144) to v2 weight (1..=10000), as runc does.
    let cpu_weight = set("/cpu/shares")?
        .filter(|s| *s > 0)
        .map(|s| 1 + ((s.clamp(2, 262_144) as u64 - 2) * 9999) / 262_142);
    Ok(Limits {
        memory_max,
        memory_low: set("/memory/reservation")?,
        cpu_max,
        cpu_weight,
        pids_max: set("/pids/limit")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn docker_update_resources() {
        // What go-runc writes for `docker update --memory 128m --cpus 1.5
        // --pids-limit 50` (zeros for what was not given).
        let r = json!({
            "memory": {"limit": 134217728, "reservation": 0, "swap": 268435456},
            "cpu": {"shares": 0, "quota": 150000, "period": 100000, "cpus": "", "mems": ""},
            "pids": {"limit": 50},
            "blockIO": {}
        });
        let l = from_oci(&r).unwrap();
        assert_eq!(l.memory_max, Some(134_217_728));
        assert_eq!(l.memory_low, None);
        assert_eq!(l.cpu_max, Some((150_000, 100_000)));
        assert_eq!(l.cpu_weight, None);
        assert_eq!(l.pids_max, Some(50));
    }

    #[test]
    fn unlimited_shares_and_defaults() {
        let l = from_oci(&json!({"memory": {"limit": -1}, "cpu": {"shares": 1024, "quota": -1}}))
            .unwrap();
        assert_eq!(l.memory_max, Some(-1));
        assert_eq!(l.cpu_max, Some((-1, 100_000)));
        assert_eq!(l.cpu_weight, Some(39));
        assert_eq!(from_oci(&json!({})).unwrap(), Limits::default());
    }

    #[test]
    fn what_a_vm_cannot_apply_is_refused_with_why() {
        for (r, says) in [
            (json!({"cpu": {"cpus": "0-1"}}), "--cpus"),
            (json!({"memory": {"limit": 1024}}), "4 MiB"),
            (json!({"cpu": {"quota": 10}}), "under 1000"),
            (json!({"cpu": {"period": 5}}), "outside"),
            (json!({"memory": {"limit": "1g"}}), "integer"),
            (json!([]), "object"),
        ] {
            let e = from_oci(&r).unwrap_err();
            assert!(e.contains(says), "{r}: {e}");
        }
    }
}
