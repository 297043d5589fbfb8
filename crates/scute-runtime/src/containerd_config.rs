//! Reading containerd's config (version 2 or 3) for scute's runtime entry:
//! one reader for `scute install` (which edits it), `scute check` and the
//! lab (which show it).

use toml_edit::{DocumentMut, Item};

/// The runtime's name in containerd's CRI config (the RuntimeClass handler).
pub const RUNTIME_NAME: &str = "scute";

/// The table path of the CRI runtimes for a config `version` (2 or 3;
/// `None` for the others, which scute does not edit).
pub fn runtimes_path(version: i64) -> Option<[&'static str; 4]> {
    match version {
        2 => Some([
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]),
        3 => Some([
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]),
        _ => None,
    }
}

/// The config's version: containerd treats a file without `version` as
/// version 1.
pub fn version_of(doc: &DocumentMut) -> i64 {
    doc.get("version").and_then(Item::as_integer).unwrap_or(1)
}

/// scute's runtime table in the config `text`, when it has one.
fn entry(doc: &DocumentMut) -> Option<([&'static str; 4], &Item)> {
    let path = runtimes_path(version_of(doc))?;
    let mut item: Option<&Item> = Some(doc.as_item());
    for key in path.iter().chain([&RUNTIME_NAME]) {
        item = item.and_then(|i| i.get(key));
    }
    item.map(|i| (path, i))
}

/// Whether `text` registers scute: an entry named scute of scute's
/// runtime type.
pub fn is_registered(text: &str) -> bool {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return false;
    };
    entry(&doc)
        .and_then(|(_, rt)| rt.get("runtime_type"))
        .and_then(Item::as_str)
        == Some(crate::RUNTIME_TYPE)
}

/// scute's runtime entry as TOML (its table and subtables, under their
/// full names), for showing where it came from.
pub fn scute_entry(text: &str) -> Option<String> {
    let doc = text.parse::<DocumentMut>().ok()?;
    let (path, item) = entry(&doc)?;
    let mut out = DocumentMut::new();
    let mut t = out.as_table_mut();
    for key in path.iter() {
        let mut sub = toml_edit::Table::new();
        sub.set_implicit(true);
        t = t.entry(key).or_insert(Item::Table(sub)).as_table_mut()?;
    }
    t.insert(RUNTIME_NAME, item.clone());
    Some(out.to_string().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_of_v2_and_v3_and_none() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.scute]\n  runtime_type = \"io.containerd.scute.v2\"\n\n[plugins.x]\n  a = 1\n";
        assert!(is_registered(v2));
        let e = scute_entry(v2).unwrap();
        assert!(
            e.starts_with("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.scute]"),
            "{e}"
        );
        assert!(
            e.contains("runtime_type = \"io.containerd.scute.v2\""),
            "{e}"
        );
        assert!(!e.contains("runc") && !e.contains("a = 1"), "{e}");
        let v3 = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.scute]\nruntime_type = 'io.containerd.scute.v2'\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.scute.options]\nx = 1\n";
        assert!(is_registered(v3));
        let e = scute_entry(v3).unwrap();
        assert!(
            e.contains("runtimes.scute]") && e.contains("runtimes.scute.options]"),
            "{e}"
        );
        assert!(scute_entry("version = 3\n").is_none());
        assert!(!is_registered("version = 2\n"));
        assert!(!is_registered("not toml ["));
    }
}
