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
