//! The functions stay small: no Docker client, no git.

#[test]
fn links_neither_bollard_nor_git2() {
    let crates =
        s3dock_testkit::normal_dependencies("s3dock-functions", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    // The tree is the real one: these must be in it.
    for expected in ["s3dock-functions", "s3dock-core", "lambda_runtime", "aws-sdk-s3", "aws-sdk-sqs"] {
        assert!(crates.iter().any(|c| c == expected), "{expected} missing from the dependency tree: {crates:?}");
    }
    for banned in ["bollard", "git2", "libgit2-sys", "s3dock-engine"] {
        assert!(!crates.iter().any(|c| c == banned), "s3dock-functions links {banned}: {crates:?}");
    }
}
