//! The domain crate speaks no AWS: the SDK lives in s3dock-aws, behind core's traits.

#[test]
fn links_no_aws_sdk() {
    let crates = s3dock_testkit::normal_dependencies("s3dock-core", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    // The tree is the real one: these must be in it.
    for expected in ["s3dock-core", "tokio", "serde_json"] {
        assert!(crates.iter().any(|c| c == expected), "{expected} missing from the dependency tree: {crates:?}");
    }
    let aws: Vec<&String> =
        crates.iter().filter(|c| ["aws-sdk-", "aws-config", "aws-smithy-"].iter().any(|p| c.starts_with(p))).collect();
    assert!(aws.is_empty(), "s3dock-core links the AWS SDK: {aws:?}");
}
