//! `s3dock status`: the fleet against the pointers, on a local store with registrations
//! written as agents write them.

use crate::support::*;

fn registration(agent: &str, image: &str, image_id: &str, status: &str, message: &str) -> String {
    let heartbeat = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    serde_json::json!({
        "schema_version": 1,
        "agent_id": agent,
        "app_name": "myapp",
        "environment": "production",
        "host": format!("{agent}.example"),
        "last_heartbeat": heartbeat,
        "state": {
            "image": image,
            "image_id": image_id,
            "color": "blue",
            "health": "healthy",
            "status": status,
            "message": message,
        },
    })
    .to_string()
}

/// `s3dock status` compared tag strings (an agent running an older push of the same tag was
/// "converged") and had no message column (why a deploy failed was only in the JSON).
#[test]
fn status_compares_image_ids_and_shows_each_agents_message() {
    let sb = Sandbox::new();
    sb.seed(&[A2]);
    sb.s3dock(&["promote", A2, "production"]).ok();
    // seed_image records this id for every image it writes.
    let id = format!("sha256:{}", "ab".repeat(32));
    put_raw(
        &sb.store,
        "agents/myapp/production/web-1.json",
        &registration("web-1", A2, &id, "converged", "deploy phase: health-check"),
    );
    put_raw(
        &sb.store,
        "agents/myapp/production/web-2.json",
        &registration(
            "web-2",
            A2,
            "sha256:0123",
            "failed",
            "web did not become healthy: GET /health answered HTTP 503",
        ),
    );

    let r = sb.s3dock(&["status", "myapp"]).ok();
    let header = r.stdout.lines().find(|l| l.starts_with("ENV")).expect("a table");
    assert!(header.trim_end().ends_with("MESSAGE"), "{}", r.stdout);
    let row = |agent: &str| r.stdout.lines().find(|l| l.contains(agent)).unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(row("web-1").contains("converged") && row("web-1").contains("deploy phase: health-check"), "{}", r.stdout);
    assert!(row("web-2").contains("behind (myapp:20250721-2118-f7a5a27, other content)"), "{}", r.stdout);
    assert!(row("web-2").contains("did not become healthy"), "{}", r.stdout);

    let j = sb.s3dock(&["status", "myapp", "--json"]).ok().json();
    let agents = j["agents"].as_array().unwrap();
    assert_eq!(agents[0]["converged"], true);
    assert_eq!(agents[1]["converged"], false, "same tag, other content: {j}");
    assert_eq!(agents[1]["image_id"], "sha256:0123");
    assert_eq!(j["environments"][0]["pointer"]["image_id"], id.as_str());
}
