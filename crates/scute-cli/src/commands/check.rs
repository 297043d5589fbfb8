//! `scute check`.

use std::path::Path;

use scute_runtime::{check, Config};

pub fn main(config: Option<&Path>) -> anyhow::Result<i32> {
    let config = Config::load(config)?;
    let items = check::run(&config);
    for i in &items {
        println!(
            "{} {:<13} {}",
            if i.ok { "ok  " } else { "FAIL" },
            i.name,
            i.detail
        );
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    if failed == 0 {
        println!("scute can run on this host");
        Ok(0)
    } else {
        println!("scute cannot run on this host: {failed} check(s) failed (see FAIL lines)");
        Ok(1)
    }
}
