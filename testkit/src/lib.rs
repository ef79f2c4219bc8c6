//! Fixtures shared by the workspace's tests (a dev-dependency only, never published): the
//! rule for services a test needs, unique names, an S3 store on a real endpoint, nginx on
//! loopback with an HTTP client and a load loop, seeded images and a recording notifier.
//!
//! The rule: a test that needs a service (LocalStack, moto, Docker, nginx...) skips with a
//! message saying how to start it when it is missing, except in CI (`CI` set), where a
//! missing service fails the test: the suite must really run there.

pub mod images;
pub mod nginx;
pub mod s3;

pub use s3dock_core::testing::{RecordingNotifier, put_raw, seed_image};

use std::process::{Command, Stdio};

/// Whether the tests run in CI, where every service is required.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// What a test does when `what` is missing: panics in CI, else says why it skips and how to
/// get it (`hint`). Returns `None` so callers can write `let Some(x) = ... else { return };`.
pub fn skip_unless_ci<T>(what: &str, hint: &str) -> Option<T> {
    if in_ci() {
        panic!("{what} is required in CI: {hint}");
    }
    eprintln!("skipping: {what} is not available; {hint}");
    None
}

/// Whether the Docker engine answers (`docker version`); the [`skip_unless_ci`] rule when it
/// does not.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || skip_unless_ci::<()>("the Docker engine", "start it, or point DOCKER_HOST at one").is_some()
}

/// The value of the environment variable `var` naming a service (an endpoint URL), or the
/// [`skip_unless_ci`] rule when it is unset or empty.
pub fn required_service(var: &str, what: &str, hint: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ => skip_unless_ci(&format!("{what} ({var})"), hint),
    }
}

/// The crates `package` links in a normal build (`cargo tree -e normal`), one name each, for
/// the tests that keep a crate's dependencies in check; `manifest` is that crate's Cargo.toml.
pub fn normal_dependencies(package: &str, manifest: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none", "--manifest-path", manifest])
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Deterministic bytes that do not repeat with any short period and do not compress (xorshift):
/// a misplaced part or a shifted range cannot compare equal by accident.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `name` made bucket-safe plus a random suffix.
pub fn unique(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(28)
        .collect::<String>()
        .trim_matches('-')
        .to_owned();
    if clean.is_empty() {
        clean.push('x');
    }
    format!("{clean}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Displays an error with its whole source chain.
pub struct DisplayErr<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayErr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}
