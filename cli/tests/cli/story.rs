//! The whole life of an app through the binary, on a local store: tag, promote, current,
//! list, history, rollback, cleanup.

use crate::support::*;

const B1: &str = "myapp:20250601-1200-1111111";
const B2: &str = "myapp:20250602-1200-2222222";
const B3: &str = "myapp:20250801-1200-3333333";

#[test]
fn local_store_story() {
    let sb = Sandbox::new();
    sb.seed(&[A1, A2]);

    // --- tag: created, no-op, refused, forced
    let r = sb.s3dock(&["tag", A2, "v1.2.0"]).ok();
    assert_eq!(r.stdout, format!("tagged {A2} as v1.2.0\n"));
    let r = sb.s3dock(&["tag", A2, "1.2.0"]).ok();
    assert!(r.stdout.contains("already points to") && r.stdout.contains("nothing to do"), "{}", r.stdout);
    let before = snapshot(&sb.store);
    sb.s3dock(&["tag", A1, "v1.2.0"]).code(4).stderr_has("immutable").stderr_has("--force");
    assert_eq!(snapshot(&sb.store), before, "a refused tag writes nothing");
    let j = sb.s3dock(&["tag", A1, "v1.2.0", "--force", "--json"]).ok().json();
    assert_eq!(j["change"], "updated");
    assert_eq!(j["previous"], A2);
    assert_eq!(j["key"], "tags/myapp/v1.2.0.json");
    assert!(j["archived_to"].as_str().unwrap().starts_with("archive/myapp/"), "{j}");
    assert_eq!(j["event"]["status"], "recorded", "inline events write the audit: {j}");
    for (image, v) in [(A1, "v1.1.5"), (A2, "v1.10.0"), (A1, "v1.2.0-rc.1")] {
        sb.s3dock(&["tag", image, v]).ok();
    }

    // --- list tags: semver order, human and JSON
    let r = sb.s3dock(&["list", "tags", "myapp"]).ok();
    let versions: Vec<&str> = r.stdout.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(versions, ["v1.1.5", "v1.2.0-rc.1", "v1.2.0", "v1.10.0"], "{}", r.stdout);
    assert!(r.stdout.starts_with("VERSION "), "{}", r.stdout);
    let j = sb.s3dock(&["list", "tags", "myapp", "--json"]).ok().json();
    let tags = j["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 4);
    assert_eq!(tags[2]["version"], "v1.2.0");
    assert_eq!(tags[2]["image"], A1, "moved by --force");
    assert!(tags[2]["tagged_by"].as_str().unwrap().starts_with("tester@"), "{j}");

    // --- promote: direct, via a version, again (no-op)
    sb.s3dock(&["promote", A2, "staging"]).ok().stdout_has(&format!("promoted {A2} to staging (seq 1)"));
    sb.s3dock(&["promote", "myapp", "v1.2.0", "production"])
        .ok()
        .stdout_has(&format!("promoted myapp v1.2.0 ({A1}) to production (seq 1)"));
    let j = sb.s3dock(&["promote", A2, "production", "--json"]).ok().json();
    assert_eq!((j["seq"].as_u64(), j["change"].as_str()), (Some(2), Some("updated")));
    assert_eq!(j["previous"], A1);
    let before = snapshot(&sb.store);
    sb.s3dock(&["promote", A2, "production"]).ok().stdout_has("nothing to do");
    assert_eq!(snapshot(&sb.store), before, "a no-op promotion writes nothing");

    // --- current: exactly the image and a newline
    let r = sb.s3dock(&["current", "myapp", "production"]).ok();
    assert_eq!(r.stdout, format!("{A2}\n"));
    assert_eq!(r.stderr, "", "current prints nothing else");
    let j = sb.s3dock(&["current", "myapp", "production", "--json"]).ok().json();
    assert_eq!(j["image"], A2);
    assert_eq!(j["env"], "production");
    assert_eq!(j["seq"], 2);
    assert_eq!(j["version"], serde_json::Value::Null);
    assert_eq!(j["chain"][0], "pointers/myapp/production.json");

    // --- list apps, images, envs
    assert_eq!(sb.s3dock(&["list", "apps"]).ok().stdout, "myapp\n");
    assert_eq!(sb.s3dock(&["list", "apps", "--json"]).ok().json(), serde_json::json!({"apps": ["myapp"]}));
    let r = sb.s3dock(&["list", "images", "myapp"]).ok();
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    assert!(r.stdout.lines().nth(1).unwrap().starts_with(A2), "newest first: {}", r.stdout);
    let j = sb.s3dock(&["list", "images", "myapp", "--month", "202507", "--json"]).ok().json();
    assert_eq!(j["images"].as_array().unwrap().len(), 2);
    assert_eq!(j["images"][0]["complete"], true);
    let r = sb.s3dock(&["list", "images", "myapp", "--month", "202508"]).ok();
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("no images"), "{}", r.stderr);
    let r = sb.s3dock(&["list", "envs", "myapp"]).ok();
    assert!(r.stdout.starts_with("ENV "), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("production  {A2}")), "{}", r.stdout);
    let j = sb.s3dock(&["list", "envs", "myapp", "--json"]).ok().json();
    let envs = j["envs"].as_array().unwrap();
    assert_eq!(envs.iter().map(|e| e["env"].as_str().unwrap()).collect::<Vec<_>>(), ["production", "staging"]);
    assert_eq!(envs[0]["seq"], 2);
    assert_eq!(envs[0]["error"], serde_json::Value::Null);
    assert!(envs[0]["promoted_by"].as_str().unwrap().starts_with("tester@"));

    // --- rollback: back to the version
    sb.s3dock(&["rollback", "myapp", "production"])
        .ok()
        .stdout_has(&format!("rolled back production to myapp v1.2.0 ({A1}) (seq 3, was {A2})"));
    assert_eq!(sb.s3dock(&["current", "myapp", "production"]).ok().stdout, format!("{A1}\n"));
    sb.s3dock(&["rollback", "myapp", "staging"]).code(3).stderr_has("no previous target");

    // --- history: newest first, filters, limit
    let j = sb.s3dock(&["history", "myapp", "--json"]).ok().json();
    let types: Vec<&str> = j["entries"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"rollback"), "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "tag").count(), 5, "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "promotion").count(), 3, "{types:?}");
    let j = sb.s3dock(&["history", "myapp", "production", "--type", "promotion,rollback", "--json"]).ok().json();
    let entries = j["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{j}");
    assert!(entries.iter().all(|e| e["details"]["environment"] == "production"));
    let j =
        sb.s3dock(&["history", "myapp", "--type", "rollback", "--type", "tag", "--limit", "2", "--json"]).ok().json();
    assert_eq!(j["entries"].as_array().unwrap().len(), 2);
    let r = sb.s3dock(&["history", "myapp", "--type", "promotion"]).ok();
    assert!(r.stdout.starts_with("TIME "), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 4, "{}", r.stdout);
    assert!(r.stdout.contains("staging"), "{}", r.stdout);
    sb.s3dock(&["history", "myapp", "--type", "bogus"]).code(2).stderr_has("possible values");

    // --- cleanup: dry run changes nothing, --yes deletes only the unreferenced
    sb.seed(&[B1, B2, B3]);
    let before = snapshot(&sb.store);
    let r = sb.s3dock(&["cleanup", "myapp", "--keep", "1"]).ok();
    assert!(r.stdout.contains("dry run: nothing was deleted"), "{}", r.stdout);
    assert!(r.stdout.contains("`s3dock cleanup myapp --keep 1 --yes` would delete 2 images"), "{}", r.stdout);
    assert_eq!(snapshot(&sb.store), before, "a dry run deletes nothing");
    let j = sb.s3dock(&["cleanup", "--keep", "1", "--json"]).ok().json();
    assert_eq!((j["dry_run"].as_bool(), j["deleted_count"].as_u64()), (Some(true), Some(2)));
    assert!(j["freed_bytes"].as_u64().unwrap() > 0);
    let r = sb.s3dock(&["cleanup", "myapp", "--keep", "1", "--yes"]).ok();
    assert!(r.stdout.contains("deleted 2 images, freed"), "{}", r.stdout);
    let images = keys_under(&snapshot(&sb.store), "images/");
    for gone in [B1, B2] {
        let stem = gone.replace(':', "-");
        assert!(!images.iter().any(|k| k.contains(&stem)), "{gone} deleted: {images:?}");
    }
    for kept in [A1, A2, B3] {
        let stem = kept.replace(':', "-");
        assert_eq!(images.iter().filter(|k| k.contains(&stem)).count(), 2, "{kept} kept: {images:?}");
    }
    // One record per deleted image, each naming it.
    let j = sb.s3dock(&["history", "myapp", "--type", "cleanup", "--json"]).ok().json();
    let entries = j["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{j}");
    let mut named: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    named.sort();
    assert!(named[0].contains(&B1.replace(':', "-")) || named.iter().any(|n| n.contains(B1)), "{named:?}");
    sb.s3dock(&["cleanup", "myapp", "--keep", "1", "--yes"]).ok().stdout_has("nothing to delete");
}

#[test]
fn without_any_config_the_default_store_under_xdg_data_home_works() {
    let sb = Sandbox::new();
    let r = sb.run(&["list", "apps"]).ok();
    assert_eq!(r.stdout, "");
    let store = sb.data_home().join("s3dock").join("store");
    assert!(r.stderr.contains(&format!("created a new local store at {}", store.display())), "{}", r.stderr);
    assert!(store.is_dir());
    seed_local(&store, &[A1]);
    sb.run(&["tag", A1, "v1.0.0"]).ok();
    sb.run(&["promote", "myapp", "v1.0.0", "production"]).ok();
    assert_eq!(sb.run(&["current", "myapp", "production"]).ok().stdout, format!("{A1}\n"));
    assert!(!sb.config_file().exists(), "nothing writes a config file unasked");
    let j = sb.run(&["config", "show", "--json"]).ok().json();
    assert_eq!(j["store"]["value"], format!("file://{}", store.display()));
    assert_eq!(j["store"]["source"], "default");
    assert_eq!(j["config_file"]["exists"], false);
}

#[test]
fn lambda_mode_writes_no_audit() {
    let sb = Sandbox::new();
    sb.seed(&[A1]);
    sb.write_config(&format!("[profiles.default]\nstore = \"{}\"\nevents = \"lambda\"\n", sb.store.display()));
    let j = sb.run(&["tag", A1, "v1.0.0", "--json"]).ok().json();
    assert_eq!(j["event"], serde_json::Value::Null);
    sb.run(&["promote", A1, "production"]).ok();
    assert!(keys_under(&snapshot(&sb.store), "audit/").is_empty(), "the Lambdas write the audit, not the CLI");
}

#[test]
fn a_failing_audit_write_warns_but_the_change_stands() {
    let sb = Sandbox::new();
    sb.seed(&[A1]);
    // A file where the audit folder should be makes every audit write fail.
    std::fs::write(sb.store.join("audit"), "not a folder").unwrap();
    let r = sb.s3dock(&["tag", A1, "v1.0.0"]).ok();
    assert!(r.stderr.contains("warning: tagging") && r.stderr.contains("audit record failed"), "{}", r.stderr);
    let j = sb.s3dock(&["promote", A1, "production", "--json"]).ok().json();
    assert_eq!(j["event"]["status"], "failed");
    assert!(j["warnings"][0].as_str().unwrap().contains("the change stands"), "{j}");
    assert_eq!(sb.s3dock(&["current", "myapp", "production"]).ok().stdout, format!("{A1}\n"));
}
