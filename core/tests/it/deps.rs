//! The domain crate speaks no AWS: the SDK lives in s3dock-aws, behind core's traits.

use std::process::Command;

#[test]
fn links_no_aws_sdk() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "-p", "s3dock-core", "-e", "normal", "--prefix", "none", "--manifest-path", manifest])
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let crates: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    // The tree is the real one: these must be in it.
    for expected in ["s3dock-core", "tokio", "serde_json"] {
        assert!(crates.contains(&expected), "{expected} missing from the dependency tree:\n{stdout}");
    }
    let aws: Vec<&&str> =
        crates.iter().filter(|c| ["aws-sdk-", "aws-config", "aws-smithy-"].iter().any(|p| c.starts_with(p))).collect();
    assert!(aws.is_empty(), "s3dock-core links the AWS SDK ({aws:?}):\n{stdout}");
}
