//! Bad input of every kind: a clear message on stderr, the documented exit code, and nothing
//! written to the store.

use crate::support::*;

/// Names no app or environment may have, each with a word the message must contain.
fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        ("a/b".into(), "'/'"),
        ("..".into(), "'..'"),
        ("a..b".into(), "'..'"),
        ("my app".into(), "space"),
        ("MyApp".into(), "uppercase"),
        ("".into(), "empty"),
        ("a".repeat(300), "300 characters"),
        ("appé".into(), "non-ASCII"),
        ("app\n".into(), "control character"),
        ("app\u{7}".into(), "control character"),
        ("app\u{1b}[31m".into(), "control character"),
    ]
}

fn bad_versions() -> Vec<(String, &'static str)> {
    vec![
        ("v1.2.0/x".into(), "'/'"),
        ("..".into(), "not a semantic version"),
        ("1.2.0 ".into(), "' '"),
        ("V1.2.0".into(), "not a semantic version"),
        ("latest".into(), "not a semantic version"),
        ("".into(), "empty"),
        (format!("1.0.0-{}", "a".repeat(300)), "characters long"),
        ("1.2.0é".into(), "'é'"),
        ("1.2.0\n".into(), "'\\n'"),
    ]
}

/// Runs `args`, expecting exit 2 with `needle` in the message, no stdout and no change.
#[track_caller]
fn refused(sb: &Sandbox, args: &[&str], what: &str, needle: &str) {
    let before = snapshot(&sb.store);
    let r = sb.s3dock(args).code(2);
    assert!(
        r.stderr.contains(what) && r.stderr.contains(needle),
        "{args:?}: want {what:?} and {needle:?} in:\n{}",
        r.stderr
    );
    assert_eq!(r.stdout, "", "{args:?}");
    assert!(r.stderr.lines().count() <= 6, "a short message: {}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}'), "control characters are escaped: {:?}", r.stderr);
    assert_eq!(snapshot(&sb.store), before, "{args:?} wrote to the store");
}

#[test]
fn invalid_names_are_refused_before_anything_is_written() {
    let sb = Sandbox::new();
    sb.seed(&[A1, A2]);
    sb.s3dock(&["tag", A2, "v1.2.0"]).ok();
    sb.s3dock(&["promote", A1, "production"]).ok();
    let tag = A1.split_once(':').unwrap().1;
    for (bad, why) in bad_names() {
        refused(&sb, &["tag", &format!("{bad}:{tag}"), "v9.0.0"], "invalid app name", why);
        refused(&sb, &["promote", &bad, "v1.2.0", "production"], "invalid app name", why);
        refused(&sb, &["current", &bad, "production"], "invalid app name", why);
        refused(&sb, &["rollback", &bad, "production"], "invalid app name", why);
        refused(&sb, &["list", "envs", &bad], "invalid app name", why);
        refused(&sb, &["history", &bad], "invalid app name", why);
        refused(&sb, &["cleanup", &bad, "--yes"], "invalid app name", why);
        refused(&sb, &["promote", A2, &bad], "invalid environment name", why);
        refused(&sb, &["promote", "myapp", "v1.2.0", &bad], "invalid environment name", why);
        refused(&sb, &["current", "myapp", &bad], "invalid environment name", why);
        refused(&sb, &["rollback", "myapp", &bad], "invalid environment name", why);
    }
    for (bad, why) in bad_versions() {
        refused(&sb, &["tag", A1, &bad], "invalid version", why);
        refused(&sb, &["promote", "myapp", &bad, "staging"], "invalid version", why);
    }
    refused(&sb, &["tag", "myapp:latest", "v1.0.0"], "invalid image tag", "YYYYMMDD-HHMM-hash7");
    refused(&sb, &["tag", "myapp", "v1.0.0"], "invalid image reference", "APP:TAG");
    refused(&sb, &["promote", "myapp", "production"], "missing an argument", "myapp VERSION ENV");
    refused(&sb, &["list", "images", "myapp", "--month", "2025-07"], "not a month", "YYYYMM");
    refused(&sb, &["cleanup", "--keep", "-1"], "--keep <N>", "invalid digit");
    refused(&sb, &["history", "myapp", "--limit", "-5"], "--limit <N>", "invalid digit");
}

#[test]
fn usage_errors_with_json_are_json() {
    let sb = Sandbox::new();
    let r = sb.s3dock(&["current", "My App", "production", "--json"]).code(2);
    let j = r.json();
    assert_eq!(j["error"]["kind"], "usage");
    assert_eq!(j["error"]["exit_code"], 2);
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.contains("invalid app name") && msg.contains("space") && !msg.contains('\n'), "{msg}");
    assert!(r.stderr.contains("invalid app name"), "the message goes to stderr too: {}", r.stderr);
    let j = sb.s3dock(&["--json", "promote", "myapp", "production"]).code(2).json();
    assert!(j["error"]["message"].as_str().unwrap().contains("missing an argument"), "{j}");
    let j = sb.s3dock(&["--json", "current", "myapp"]).code(2).json();
    assert!(j["error"]["message"].as_str().unwrap().contains("<ENV>"), "{j}");
    let j = sb.s3dock(&["--json", "frobnicate"]).code(2).json();
    assert!(j["error"]["message"].as_str().unwrap().contains("frobnicate"), "{j}");
}

#[test]
fn missing_targets_are_not_found_and_write_nothing() {
    let sb = Sandbox::new();
    sb.seed(&[A1]);
    let before = snapshot(&sb.store);
    sb.s3dock(&["tag", A2, "v1.0.0"]).code(3).stderr_has(&format!("image {A2} is not in")).stderr_has("s3dock push");
    sb.s3dock(&["promote", A2, "production"]).code(3).stderr_has("s3dock push");
    sb.s3dock(&["promote", "myapp", "v3.0.0", "production"])
        .code(3)
        .stderr_has("has no tag v3.0.0")
        .stderr_has("s3dock tag");
    sb.s3dock(&["current", "myapp", "production"]).code(3).stderr_has("no pointer for environment production");
    sb.s3dock(&["rollback", "myapp", "production"]).code(3).stderr_has("nothing to roll back");
    let j = sb.s3dock(&["current", "myapp", "production", "--json"]).code(3).json();
    assert_eq!(j["error"]["kind"], "not_found");
    assert_eq!(j["error"]["exit_code"], 3);
    assert_eq!(snapshot(&sb.store), before);
}

#[test]
fn broken_pointers_are_integrity_errors() {
    let sb = Sandbox::new();
    sb.seed(&[A1, "other:20250720-1045-def5678"]);
    let pointer = |target_type: &str, path: &str| {
        format!(
            r#"{{"target_type":"{target_type}","target_path":"{path}","promoted_at":"2025-07-21T00:00:00Z","promoted_by":"x","git_hash":"","git_time":""}}"#
        )
    };
    put_raw(&sb.store, "pointers/myapp/broken.json", "{\"target_type\": \"image\", ");
    put_raw(
        &sb.store,
        "pointers/myapp/foreign.json",
        &pointer("image", "images/other/202507/other-20250720-1045-def5678.tar.gz"),
    );
    put_raw(&sb.store, "tags/myapp/v1.0.0.json", &pointer("tag", "tags/myapp/v2.0.0.json"));
    put_raw(&sb.store, "tags/myapp/v2.0.0.json", &pointer("tag", "tags/myapp/v1.0.0.json"));
    put_raw(&sb.store, "pointers/myapp/cyclic.json", &pointer("tag", "tags/myapp/v1.0.0.json"));
    put_raw(&sb.store, "pointers/myapp/escape.json", &pointer("image", "../../etc/passwd"));
    let before = snapshot(&sb.store);
    for (env, needle) in [
        ("broken", "not valid s3dock JSON"),
        ("foreign", "belongs to app other"),
        ("cyclic", "pointer cycle"),
        ("escape", "\"..\""),
    ] {
        let r = sb.s3dock(&["current", "myapp", env]).code(5);
        assert!(r.stderr.contains(needle), "{env}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{env}: nothing on stdout");
        assert_eq!(sb.s3dock(&["current", "myapp", env, "--json"]).code(5).json()["error"]["kind"], "integrity");
    }
    // Promoting over a malformed pointer is refused rather than guessed at.
    sb.s3dock(&["promote", A1, "broken"]).code(5);
    // Listing reports each environment's problem and still succeeds.
    let r = sb.s3dock(&["list", "envs", "myapp"]).ok();
    assert_eq!(r.stdout.matches("ERROR: ").count(), 4, "{}", r.stdout);
    assert_eq!(r.stderr.matches("warning: ").count(), 4, "{}", r.stderr);
    let j = sb.s3dock(&["list", "envs", "myapp", "--json"]).ok().json();
    assert!(j["envs"].as_array().unwrap().iter().all(|e| e["error"].is_string() && e["image"].is_null()), "{j}");
    // Cleanup refuses to guess what an unreadable pointer protects.
    sb.s3dock(&["cleanup", "myapp", "--keep", "0", "--yes"]).code(4).stderr_has("refusing to clean up");
    assert_eq!(snapshot(&sb.store), before);
}
