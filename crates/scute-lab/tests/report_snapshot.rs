//! The report rendering, pinned: report.md and report.html rendered from a
//! fixed results.json (a real lab run on the development machine) must match
//! the checked-in snapshots. After an intended change, regenerate them with
//! `SCUTE_UPDATE_SNAPSHOTS=1 cargo test -p scute-lab --test report_snapshot`
//! and review the diff.

use std::path::Path;

use scute_lab::report;
use scute_lab::Results;

fn fixture() -> Results {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap())
        .expect("the fixture matches the results schema")
}

fn check(name: &str, rendered: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("SCUTE_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: set SCUTE_UPDATE_SNAPSHOTS=1", path.display()));
    if want != rendered {
        let line = want
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(rendered.lines().count()));
        panic!(
            "{name} differs from the snapshot at line {}:\n  snapshot: {:?}\n  rendered: {:?}\n\
             (SCUTE_UPDATE_SNAPSHOTS=1 to accept)",
            line + 1,
            want.lines().nth(line),
            rendered.lines().nth(line)
        );
    }
}

#[test]
fn markdown_snapshot() {
    check("report.md", &report::markdown(&fixture()));
}

#[test]
fn html_snapshot() {
    check("report.html", &report::html(&fixture()));
}

#[test]
fn json_round_trip() {
    let r = fixture();
    let again: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(r, again);
}

#[test]
fn analysis_follows_the_numbers() {
    // The analysis quotes the figures it is given: change one and the text changes.
    let mut r = fixture();
    let before = report::analysis(&r).join("\n");
    let scute = r.runtimes.iter_mut().find(|x| x.name == "scute").unwrap();
    let s = scute.startup_ms.as_mut().unwrap();
    s.median = 123456.0;
    let after = report::analysis(&r).join("\n");
    assert_ne!(before, after);
    assert!(after.contains("123456 ms"), "{after}");
    // A runtime with no figures adds no sentence about them.
    let mut r = fixture();
    for rt in &mut r.runtimes {
        rt.http = None;
    }
    let text = report::analysis(&r).join("\n");
    assert!(!text.contains("req/s"), "{text}");
    // A pool start is reported beside the cold one, against runc's start.
    let mut r = fixture();
    assert!(!report::analysis(&r).join("\n").contains("pool"));
    let scute = r.runtimes.iter_mut().find(|x| x.name == "scute").unwrap();
    let mut p = scute.startup_ms.unwrap();
    p.median = 4321.0;
    scute.startup_pool_ms = Some(p);
    let text = report::analysis(&r).join("\n");
    assert!(
        text.contains("pool booted ahead of time") && text.contains("4321 ms"),
        "{text}"
    );
    let md = report::markdown(&r);
    assert!(md.contains("start from a ready VM (pool), median"), "{md}");
}

#[test]
fn html_is_self_contained() {
    let html = report::html(&fixture());
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg"));
    // Attributes and rules that load something; the commands shown as text
    // may contain `--mount type=bind,src=...`.
    for bad in [" src=", " href=", "<link", "@import", "url("] {
        assert!(
            !html.contains(bad),
            "the report must not load anything ({bad})"
        );
    }
}

#[test]
fn analysis_with_three_runtimes() {
    // A third runtime with figures: each topic is still one paragraph with
    // one heading, comparing every runtime with runc.
    let mut r = fixture();
    let mut other = r
        .runtimes
        .iter()
        .find(|x| x.name == "scute")
        .unwrap()
        .clone();
    other.name = "kata".into();
    other.startup_ms.as_mut().unwrap().median = 777.0;
    r.runtimes.retain(|x| x.name != "kata");
    r.runtimes.push(other);
    let paras = report::analysis(&r);
    let startup: Vec<&String> = paras
        .iter()
        .filter(|p| p.contains("Startup overhead"))
        .collect();
    assert_eq!(startup.len(), 1, "{paras:#?}");
    assert_eq!(startup[0].matches("**Startup overhead.**").count(), 1);
    assert!(
        startup[0].contains("kata starts a container in 777 ms"),
        "{}",
        startup[0]
    );
    assert!(
        startup[0].contains("scute starts a container in"),
        "{}",
        startup[0]
    );
}
