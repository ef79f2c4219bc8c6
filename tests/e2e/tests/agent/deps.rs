//! The package boundaries these tests exist for: the agent's package does not depend on the
//! CLI's (not even to test), and the crash points reach only test builds.

use serde_json::Value;

/// The workspace's packages from `cargo metadata --no-deps` (their declared dependencies).
fn packages() -> Vec<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    meta["packages"].as_array().expect("packages").clone()
}

/// `(name, kind, features)` of each dependency `package` declares; kind is `normal`, `dev` or
/// `build`.
fn dependencies(package: &str) -> Vec<(String, String, Vec<String>)> {
    let all = packages();
    let p = all.iter().find(|p| p["name"] == package).unwrap_or_else(|| panic!("{package} is not in the workspace"));
    p["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let kind = if d["kind"].is_null() { "normal".to_owned() } else { text(&d["kind"]) };
            let features = d["features"].as_array().map(|f| f.iter().map(text).collect()).unwrap_or_default();
            (text(&d["name"]), kind, features)
        })
        .collect()
}

#[test]
fn the_agent_package_does_not_depend_on_the_cli_package() {
    let deps = dependencies("s3dock-agent");
    // The list is the real one: these must be in it.
    for expected in [("s3dock-engine", "normal"), ("s3dock-testkit", "dev")] {
        assert!(
            deps.iter().any(|(n, k, _)| (n.as_str(), k.as_str()) == expected),
            "{expected:?} missing from s3dock-agent's dependencies: {deps:?}"
        );
    }
    let cli: Vec<_> = deps.iter().filter(|(n, _, _)| n == "s3dock").collect();
    assert!(cli.is_empty(), "s3dock-agent depends on the CLI package (tests belong in s3dock-e2e): {cli:?}");
    // Nor on itself: the crash points are turned on by this package, for test builds only.
    let own: Vec<_> = deps.iter().filter(|(n, _, _)| n == "s3dock-agent").collect();
    assert!(own.is_empty(), "s3dock-agent depends on itself: {own:?}");
}

#[test]
fn only_test_builds_turn_the_crash_points_on() {
    for package in ["s3dock", "s3dock-agent", "s3dock-core", "s3dock-aws", "s3dock-engine", "s3dock-functions"] {
        for (name, kind, features) in dependencies(package) {
            assert!(
                !(name == "s3dock-agent" && features.iter().any(|f| f == "fault-injection")),
                "{package} turns on s3dock-agent/fault-injection ({kind} dependency)"
            );
        }
    }
    let here = dependencies("s3dock-e2e");
    let agent: Vec<_> = here.iter().filter(|(n, _, _)| n == "s3dock-agent").collect();
    assert_eq!(agent.len(), 1, "{here:?}");
    let (_, kind, features) = agent[0];
    assert_eq!(kind, "dev", "the crash points must stay out of normal builds");
    assert_eq!(features, &["fault-injection".to_owned()]);
}
