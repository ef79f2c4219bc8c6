//! The functions stay small: no Docker client, no git.

use std::process::Command;

#[test]
fn links_neither_bollard_nor_git2() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "-p", "s3dock-functions", "-e", "normal", "--prefix", "none", "--manifest-path", manifest])
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let crates: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    // The tree is the real one: these must be in it.
    for expected in ["s3dock-functions", "s3dock-core", "lambda_runtime", "aws-sdk-s3", "aws-sdk-sqs"] {
        assert!(crates.contains(&expected), "{expected} missing from the dependency tree:\n{stdout}");
    }
    for banned in ["bollard", "git2", "libgit2-sys", "s3dock-engine"] {
        assert!(!crates.contains(&banned), "s3dock-functions links {banned}:\n{stdout}");
    }
}
