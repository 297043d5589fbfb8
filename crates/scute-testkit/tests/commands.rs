//! The kit's small commands take `--help` as a request, not as a path.

use std::process::Command;

#[test]
fn help_and_options_write_no_file() {
    for bin in [
        env!("CARGO_BIN_EXE_scute-make-image"),
        env!("CARGO_BIN_EXE_scute-make-bundle"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let help = Command::new(bin)
            .arg("--help")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(help.status.code(), Some(0), "{bin}");
        assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: "));
        let bad = Command::new(bin)
            .args(["--out", "x"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(2), "{bin}");
        assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown option --out"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{bin} wrote {left:?}");
    }
}
