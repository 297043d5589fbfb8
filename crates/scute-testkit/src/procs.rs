//! The host's processes by command line: leak checks in the tests, the
//! harness's orphan-shim cleanup, and the lab's memory accounting.

/// Every process as (pid, command line with NULs as spaces).
pub fn processes() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let c = std::fs::read(e.path().join("cmdline")).ok()?;
                    Some((pid, String::from_utf8_lossy(&c).replace('\0', " ")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (pid, command line) of the processes whose command line contains `needle`.
pub fn mentioning(needle: &str) -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|(_, c)| c.contains(needle))
        .collect()
}

/// Host cgroup directories named `name` (a sandbox id) anywhere below
/// `/sys/fs/cgroup`, a few levels deep: what a sandbox must not leave.
pub fn cgroups_named(name: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, name: &str, depth: u32, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            // Not through the v1 symlinks (cpu -> cpu,cpuacct).
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == name {
                out.push(p.clone());
            }
            if depth > 0 {
                walk(&p, name, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(std::path::Path::new("/sys/fs/cgroup"), name, 5, &mut out);
    out
}

/// `pid` and everything below it, parents first (children of any of its
/// threads: a process may fork from a thread other than its main one).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}
