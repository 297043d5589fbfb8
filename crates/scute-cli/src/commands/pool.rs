//! `scute pool`: keeps VMs booted for new sandboxes; `scute pool-vm` is one
//! of them (started by the pool, never by hand).

use std::path::Path;

use scute_runtime::Config;

/// Runs the pool in the foreground until SIGTERM or SIGINT.
pub fn main(config_path: Option<&Path>) -> anyhow::Result<i32> {
    let config = Config::load(config_path)?;
    if !config.pool.enabled() {
        anyhow::bail!("[pool] size = 0 in the config: the pool is off");
    }
    scute_runtime::sandbox::preflight(&config)?;
    let exe = std::env::current_exe()?;
    // The explicit path, else $SCUTE_CONFIG: what the members must read.
    let path = config_path
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(scute_runtime::config::ENV_VAR).map(Into::into));
    super::runtime()?.block_on(scute_pool::serve(&config, path.as_deref(), &exe))?;
    Ok(0)
}

/// One pool member: boots a VM and hands it to the sandbox that claims it.
pub fn member(config_path: Option<&Path>, vm_id: &str) -> anyhow::Result<i32> {
    let config = Config::load(config_path)?;
    super::runtime()?.block_on(scute_pool::member(&config, vm_id))?;
    Ok(0)
}
