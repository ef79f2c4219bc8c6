//! `s3dock report --html`: the page is rendered by a real browser (headless Chromium from
//! Debian's packages), screenshotted, and its DOM checked for the fleet rows. Skipped without
//! Chromium, unless CI is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Duration, Utc};
use s3dock_core::docs::{self, AgentRegistration, AgentState, DeployOutcome, SCHEMA_VERSION};
use s3dock_core::names::{AgentId, AppName, EnvName};

use crate::stats::{I2, I3, I4, write_history};
use crate::support::*;

/// The Chromium binary, or `None` (skipped) outside CI.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    s3dock_testkit::skip_unless_ci(
        "Chromium (the report's browser test)",
        "apt-get install chromium; .ci/run installs it",
    )
}

/// Runs headless Chromium with `args` on `page`, bounded in time; stdout.
fn browse(chromium: &Path, home: &Path, args: &[&str], page: &Path) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", home.join("chromium").display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .env("HOME", home)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

fn registration(env: &str, id: &str, image: &str, age: Duration, result: &str) -> AgentRegistration {
    AgentRegistration {
        schema_version: Some(SCHEMA_VERSION),
        agent_id: AgentId::parse(id).unwrap(),
        app_name: AppName::parse("shop").unwrap(),
        environment: EnvName::parse(env).unwrap(),
        queue_url: None,
        host: format!("{id}.example"),
        last_heartbeat: Utc::now() - age,
        state: Some(AgentState {
            image: Some(image.into()),
            color: Some("green".into()),
            health: Some(if result == "succeeded" { "healthy" } else { "unhealthy" }.into()),
            last_deploy: Some(DeployOutcome {
                result: result.into(),
                image: if result == "succeeded" { image.into() } else { I4.into() },
                at: Utc::now() - age,
                message: None,
                duration_ms: Some(12_000),
            }),
            ..AgentState::default()
        }),
        version: None,
    }
}

/// A store with the scripted history, current pointers and three agents, one of them stale.
pub fn fleet_store(sb: &Sandbox) {
    write_history(&sb.store);
    sb.s3dock(&["promote", I3, "production"]).ok();
    sb.s3dock(&["promote", I4, "staging"]).ok();
    for r in [
        registration("production", "a", I3, Duration::seconds(20), "succeeded"),
        registration("production", "b", I3, Duration::hours(5), "succeeded"),
        registration("staging", "s1", I2, Duration::seconds(40), "failed"),
    ] {
        let key = format!("agents/shop/{}/{}.json", r.environment, r.agent_id);
        put_raw(&sb.store, &key, std::str::from_utf8(&docs::encode(&r)).unwrap());
    }
}

/// The `<tr class="agent...">` rows of a DOM: (env, agent, stale).
fn fleet_rows(dom: &str) -> Vec<(String, String, bool)> {
    let attr = |tag: &str, name: &str| {
        let needle = format!("{name}=\"");
        tag.find(&needle)
            .map(|i| tag[i + needle.len()..].split('"').next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    dom.split("<tr ")
        .skip(1)
        .map(|rest| rest.split('>').next().unwrap_or(""))
        .filter(|tag| attr(tag, "class").split(' ').any(|c| c == "agent"))
        .map(|tag| (attr(tag, "data-env"), attr(tag, "data-agent"), attr(tag, "class").contains("stale")))
        .collect()
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let sb = Sandbox::new();
    fleet_store(&sb);
    let page = sb.dir.path().join("fleet report.html");
    let page_s = page.to_str().unwrap();
    let r = sb.s3dock(&["report", "shop", "--html", page_s, "--since", "2025-07-01", "--until", "2025-08-01"]).ok();
    assert!(r.stdout.contains("(1 app, 3 agents, 1 stale)"), "{}", r.stdout);
    let html = std::fs::read_to_string(&page).unwrap();
    let lower = html.to_ascii_lowercase();
    assert!(
        !lower.contains("<script") && !lower.contains("src=\"http") && !lower.contains("href=\"http"),
        "self-contained"
    );
    let j = sb
        .s3dock(&["report", "shop", "--html", page_s, "--since", "2025-07-01", "--until", "2025-08-01", "--json"])
        .ok()
        .json();
    assert_eq!((j["apps"][0]["promotions"].as_u64(), j["apps"][0]["rollbacks"].as_u64()), (Some(5), Some(1)));

    let Some(chromium) = chromium() else { return };
    let home = tempfile::tempdir().unwrap();
    let dom = browse(&chromium, home.path(), &["--dump-dom"], &page);
    assert_eq!(
        fleet_rows(&dom),
        [
            ("production".into(), "a".into(), false),
            ("production".into(), "b".into(), true),
            ("staging".into(), "s1".into(), false)
        ],
        "{dom}"
    );
    assert!(dom.contains("STALE"));
    // The production timeline: promotions 3, 8 and 14, the rollback 11.
    let prod =
        dom.split("<svg class=\"timeline\" data-env=\"production\"").nth(1).unwrap().split("</svg>").next().unwrap();
    assert_eq!(prod.matches("class=\"promo\"").count(), 3, "{prod}");
    assert_eq!(prod.matches("class=\"rollback\"").count(), 1, "{prod}");
    for card in ["frequency", "lead-time", "change-failure", "restore", "phases"] {
        assert!(dom.contains(&format!("id=\"{card}\"")), "{card}");
    }
    assert!(dom.contains("40.0%"), "the change failure rate of `stats`");

    let shot = sb.dir.path().join("report.png");
    browse(&chromium, home.path(), &[&format!("--screenshot={}", shot.display()), "--window-size=1280,1250"], &page);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "{} bytes", png.len());
    if let Ok(dest) = std::env::var("S3DOCK_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, dest).unwrap();
    }
}

#[test]
fn a_report_of_every_app_and_of_an_empty_store() {
    let sb = Sandbox::new();
    let page = sb.dir.path().join("empty.html");
    let r = sb.s3dock(&["report", "--html", page.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("(0 apps, 0 agents, 0 stale)"), "{}", r.stdout);
    assert!(std::fs::read_to_string(&page).unwrap().contains("The store holds no app yet"));
    fleet_store(&sb);
    sb.seed(&[A1]);
    let j = sb.s3dock(&["report", "--html", page.to_str().unwrap(), "--json"]).ok().json();
    let apps: Vec<&str> = j["apps"].as_array().unwrap().iter().map(|a| a["app"].as_str().unwrap()).collect();
    assert_eq!(apps, ["myapp", "shop"]);
    sb.s3dock(&["report", "shop", "--html", "/nonexistent/dir/x.html"]).code(2).stderr_has("cannot write");
}
