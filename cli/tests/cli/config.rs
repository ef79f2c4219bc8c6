//! The config file and profiles through the binary: init, show, list, precedence, errors.

use crate::support::*;

#[test]
fn init_writes_a_working_file_and_refuses_to_overwrite() {
    let sb = Sandbox::new();
    let store = sb.dir.path().join("images");
    let store_arg = store.to_str().unwrap();
    let r = sb.run(&["config", "init", "--store", store_arg]).ok();
    let path = sb.config_file();
    assert!(r.stdout.contains(&format!("wrote {}", path.display())), "{}", r.stdout);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("store = \"file://{}\"", store.display())), "{text}");
    assert!(text.contains("# [profiles.prod]"), "a commented S3 example: {text}");

    // The file works: the store it names is used without --store.
    seed_local(&store, &[A1]);
    sb.run(&["tag", A1, "v1.0.0"]).ok();
    assert!(keys_under(&snapshot(&store), "tags/").contains(&"tags/myapp/v1.0.0.json".to_owned()));

    // Refused without --force (exit 4), file untouched; --force keeps a backup.
    sb.run(&["config", "init", "--events", "lambda"]).code(4).stderr_has("already exists").stderr_has("--force");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let j = sb.run(&["config", "init", "--profile", "dev", "--events", "lambda", "--force", "--json"]).ok().json();
    assert_eq!(j["replaced"], true);
    assert_eq!(j["profile"], "dev");
    assert_eq!(j["events"], "lambda");
    assert_eq!(std::fs::read_to_string(j["backup"].as_str().unwrap()).unwrap(), text);
    let j = sb.run(&["config", "show", "--json"]).ok().json();
    assert_eq!(j["profile"]["value"], "dev");
    assert_eq!(j["profile"]["source"], "file");
    assert_eq!(j["events"]["value"], "lambda");
    let default_store = sb.data_home().join("s3dock").join("store");
    assert_eq!(
        j["store"]["value"],
        format!("file://{}", default_store.display()),
        "no --store: the default local store"
    );
    assert_eq!(j["store"]["source"], "profile");

    // --config elsewhere, and a bad store URL refused.
    let other = sb.dir.path().join("other.toml");
    sb.run(&["--config", other.to_str().unwrap(), "config", "init", "--store", "s3://acme-images/team"]).ok();
    assert!(std::fs::read_to_string(&other).unwrap().contains("store = \"s3://acme-images/team\""));
    sb.run(&["--config", sb.dir.path().join("x.toml").to_str().unwrap(), "config", "init", "--store", "http://nope"])
        .code(2)
        .stderr_has("unsupported store URL scheme");
    assert!(!sb.dir.path().join("x.toml").exists());
}

#[test]
fn show_says_where_each_setting_comes_from() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"default_profile = "dev"
[profiles.dev]
store = "/srv/dev"
[profiles.prod]
store = "s3://acme-images/s3dock"
region = "eu-west-1"
endpoint = "http://127.0.0.1:4566"
path_style = true
aws_profile = "work"
user = "alice"
events = "lambda"
"#,
    );
    let j = sb.run(&["config", "show", "--json"]).ok().json();
    assert_eq!((j["profile"]["value"].as_str(), j["profile"]["source"].as_str()), (Some("dev"), Some("file")));
    assert_eq!(
        (j["store"]["value"].as_str(), j["store"]["source"].as_str()),
        (Some("file:///srv/dev"), Some("profile"))
    );
    assert_eq!(j["user"]["value"].as_str().map(|u| u.starts_with("tester@")), Some(true));
    assert_eq!(j["user"]["source"], "default");
    assert_eq!(j["config_file"]["exists"], true);

    let j =
        sb.run_with(&["config", "show", "--json"], &[("S3DOCK_PROFILE", "prod"), ("S3DOCK_USER", "bot")]).ok().json();
    assert_eq!((j["profile"]["value"].as_str(), j["profile"]["source"].as_str()), (Some("prod"), Some("env")));
    assert_eq!(j["store"]["value"], "s3://acme-images/s3dock");
    assert_eq!(j["endpoint"]["value"], "http://127.0.0.1:4566");
    assert_eq!(j["path_style"]["value"], true);
    assert_eq!(j["user"]["value"], "alice", "the profile's user beats S3DOCK_USER");
    assert_eq!(j["events"]["value"], "lambda");

    let j = sb
        .run_with(
            &["--profile", "dev", "--store", "/flag/store", "config", "show", "--json"],
            &[("S3DOCK_PROFILE", "prod"), ("S3DOCK_STORE", "/env/store")],
        )
        .ok()
        .json();
    assert_eq!((j["profile"]["value"].as_str(), j["profile"]["source"].as_str()), (Some("dev"), Some("flag")));
    assert_eq!(
        (j["store"]["value"].as_str(), j["store"]["source"].as_str()),
        (Some("file:///flag/store"), Some("flag"))
    );
    let j = sb
        .run_with(&["config", "show", "--json"], &[("S3DOCK_STORE", "/env/store"), ("S3DOCK_USER", "bot")])
        .ok()
        .json();
    assert_eq!((j["store"]["value"].as_str(), j["store"]["source"].as_str()), (Some("file:///env/store"), Some("env")));
    assert_eq!((j["user"]["value"].as_str(), j["user"]["source"].as_str()), (Some("bot"), Some("env")));

    // Human: one aligned row per setting, with its origin.
    let r = sb.run_with(&["config", "show"], &[("S3DOCK_PROFILE", "prod")]).ok();
    assert!(r.stdout.starts_with("SETTING "), "{}", r.stdout);
    let store_line = r.stdout.lines().find(|l| l.starts_with("store ")).unwrap();
    assert!(store_line.contains("s3://acme-images/s3dock") && store_line.ends_with("profile prod"), "{store_line}");
    let profile_line = r.stdout.lines().find(|l| l.starts_with("profile ")).unwrap();
    assert!(profile_line.ends_with("env S3DOCK_PROFILE"), "{profile_line}");
}

#[test]
fn list_marks_the_default_and_the_active_profile() {
    let sb = Sandbox::new();
    let r = sb.run(&["config", "list"]).ok();
    assert!(r.stdout.lines().nth(1).unwrap().starts_with("default "), "{}", r.stdout);
    assert!(r.stdout.contains("default, active, built in"), "{}", r.stdout);
    assert!(r.stderr.contains("no config file"), "{}", r.stderr);

    sb.write_config("default_profile = \"dev\"\n[profiles.dev]\nstore = \"/srv/dev\"\n[profiles.prod]\nstore = \"s3://acme-images\"\nevents = \"lambda\"\n");
    let j = sb.run_with(&["config", "list", "--json"], &[("S3DOCK_PROFILE", "prod")]).ok().json();
    assert_eq!(j["default_profile"], "dev");
    assert_eq!(j["active_profile"], "prod");
    let profiles = j["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2);
    assert_eq!(
        (profiles[0]["name"].as_str(), profiles[0]["default"].as_bool(), profiles[0]["active"].as_bool()),
        (Some("dev"), Some(true), Some(false))
    );
    assert_eq!((profiles[1]["name"].as_str(), profiles[1]["active"].as_bool()), (Some("prod"), Some(true)));
    assert_eq!(profiles[1]["events"], "lambda");
    let r = sb.run(&["config", "list"]).ok();
    let dev = r.stdout.lines().find(|l| l.starts_with("dev ")).unwrap();
    assert!(dev.ends_with("default, active"), "{}", r.stdout);
    sb.run(&["--profile", "nope", "config", "list"]).ok().stderr_has("warning: the active profile \"nope\"");
}

#[test]
fn unknown_profiles_and_keys_are_usage_errors() {
    let sb = Sandbox::new();
    sb.seed(&[A1]);
    // With no file, only the built-in profile exists.
    sb.run(&["--profile", "prod", "list", "apps"]).code(2).stderr_has("no config file").stderr_has("config init");
    sb.write_config("[profiles.default]\nstore = \"/tmp/x\"\n[profiles.prod]\nstore = \"s3://acme-images\"\n");
    let before = snapshot(&sb.store);
    let r = sb.s3dock(&["--profile", "staging", "tag", A1, "v1.0.0"]).code(2);
    assert!(
        r.stderr.contains("profile \"staging\" (from flag --profile) is not defined")
            && r.stderr.contains("known profiles: default, prod"),
        "{}",
        r.stderr
    );
    sb.run_with(&["list", "apps"], &[("S3DOCK_PROFILE", "qa")]).code(2).stderr_has("env S3DOCK_PROFILE");
    let j = sb.run(&["--profile", "staging", "config", "show", "--json"]).code(2).json();
    assert_eq!(j["error"]["kind"], "usage");

    sb.write_config("[profiles.default]\nstore = \"/tmp/x\"\nstroe = \"/tmp/y\"\n");
    let r = sb.s3dock(&["tag", A1, "v1.0.0"]).code(2);
    assert!(r.stderr.contains("unknown field `stroe`") && r.stderr.contains("config.toml:3:1"), "{}", r.stderr);
    sb.run(&["config", "list"]).code(2).stderr_has("stroe");
    sb.write_config("[profiles.default]\nevents = \"sometimes\"\n");
    sb.run(&["list", "apps"]).code(2).stderr_has("sometimes");
    sb.write_config("[profiles.default]\nstore = \"s3://acme-images\"\nendpoint = \"localhost:4566\"\n");
    sb.run(&["list", "apps"]).code(2).stderr_has("invalid S3 endpoint");
    // An explicitly named config file that does not exist is a typo, not "no config".
    sb.run(&["--config", "/nonexistent/s3dock.toml", "list", "apps"]).code(2).stderr_has("does not exist");
    assert_eq!(snapshot(&sb.store), before);
}
