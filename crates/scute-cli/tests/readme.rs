//! The README can't go stale: every `scute …` command in its shell blocks
//! is a command line this `scute` accepts, the read-only ones are run, every
//! `make` target it names exists, and every relative link (with its
//! `#anchor`) leads somewhere.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The lines of the README's ```sh blocks, comments cut off.
fn shell_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("```") {
            inside = l == "```sh";
            continue;
        }
        if inside {
            let cmd = match l.find(" #") {
                Some(i) => &l[..i],
                None => l,
            };
            if !cmd.trim().is_empty() {
                out.push(cmd.trim().to_owned());
            }
        }
    }
    out
}

/// Each `scute …` of a line (also after `&&`).
fn scute_commands(lines: &[String]) -> Vec<Vec<String>> {
    lines
        .iter()
        .flat_map(|l| l.split("&&").map(str::trim))
        .filter_map(|c| c.strip_prefix("scute "))
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn every_scute_command_in_the_readme_parses() {
    let cmds = scute_commands(&shell_lines(&readme()));
    assert!(cmds.len() >= 10, "found only {cmds:?}");
    for c in &cmds {
        // `--help` after the rest: clap refuses an unknown subcommand or
        // flag before it gets to the help.
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.push("--help");
        let out = scute(&args).output().unwrap();
        assert!(
            out.status.success(),
            "README: `scute {}` is not a valid command line: {}",
            c.join(" "),
            stderr(&out)
        );
    }
}

/// The commands that only read are run as the README shows them.
#[test]
fn the_readmes_read_only_commands_run() {
    let cmds = scute_commands(&shell_lines(&readme()));
    let mut ran = 0;
    for c in &cmds {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        let safe = matches!(
            args.as_slice(),
            ["check", ..] | ["ps", ..] | ["config"] | ["version"] | ["install", "--dry-run"]
        );
        if !safe {
            continue;
        }
        let out = scute(&args).output().unwrap();
        let code = out.status.code();
        // check may find a failure (1); everything else must work.
        let fine = code == Some(0) || (args[0] == "check" && code == Some(1));
        assert!(
            fine,
            "README: `scute {}` exited {code:?}: {}{}",
            c.join(" "),
            stdout(&out),
            stderr(&out)
        );
        ran += 1;
    }
    assert!(ran >= 4, "ran only {ran} of {cmds:?}");
}

#[test]
fn every_make_target_in_the_readme_exists() {
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    for l in shell_lines(&readme()) {
        if let Some(t) = l.strip_prefix("make ") {
            let t = t.split_whitespace().next().unwrap();
            assert!(
                makefile.lines().any(|m| m.starts_with(&format!("{t}:"))),
                "README: make {t}: no such target"
            );
        }
    }
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let mut checked = 0;
    for doc in [
        "README.md",
        "docs/security.md",
        "docs/design.md",
        "docs/conformance.md",
    ] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        let base = root().join(doc).parent().unwrap().to_path_buf();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let link = &rest[..end];
            if link.contains("://") || link.starts_with('#') || link.contains(' ') {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = base.join(file);
            assert!(target.exists(), "{doc}: link to {link}: no such file");
            if !anchor.is_empty() {
                let t = std::fs::read_to_string(&target).unwrap();
                let anchors: Vec<String> = t
                    .lines()
                    .filter_map(|l| {
                        l.trim_start_matches('#')
                            .strip_prefix(' ')
                            .filter(|_| l.starts_with('#'))
                    })
                    .map(slug)
                    .collect();
                assert!(
                    anchors.iter().any(|a| a == anchor),
                    "{doc}: link to {link}: no heading with that anchor in {file}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "checked only {checked} links");
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Kubernetes pods (issue: pods through CRI)"),
        "kubernetes-pods-issue-pods-through-cri"
    );
    assert_eq!(
        slug("Threat model: what the guest controls, and the rule at each place the host meets it"),
        "threat-model-what-the-guest-controls-and-the-rule-at-each-place-the-host-meets-it"
    );
}
