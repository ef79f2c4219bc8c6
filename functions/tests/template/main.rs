//! Invariants of the SAM template, `infra/template.yaml`.
//!
//! cfn-lint and `sam validate --lint` (run by `infra/validate.sh`) check that the template is
//! well-formed; this test checks what they cannot know: that the bucket keeps what s3dock
//! promises to keep, that events reach the functions with retries and a dead-letter queue, and
//! that every IAM grant is the one the code needs and no more (the expected grants below name
//! the call in `s3dock-core` each one is for). An IAM change must be made here and in the
//! template together.
//!
//! The template is parsed as plain YAML (it uses the long form of every intrinsic function) and
//! evaluated for concrete parameter values by a small interpreter of the intrinsic functions it
//! uses (`Ref`, `Fn::Sub`, `Fn::GetAtt`, `Fn::Join`, `Fn::Split`, `Fn::Select`, `Fn::If`,
//! `Fn::FindInMap`, conditions); anything else fails the test rather than being skipped.
//!
//! Modules: `interp` (that interpreter), `iam` (statements, and IAM's decision for one request:
//! actions, resources with policy variables such as `${aws:PrincipalTag/s3dock-agent-id}`, and
//! the condition operators the template uses, over every shape of request S3 authorizes as
//! `s3:PutObject`), `checks` (bucket, queues, functions and their roles), `policies` (the
//! managed policies: what each principal may do and, request by request, what it may not),
//! `alarms` (alarms and the delete trail), and `mutations`, which breaks a copy of the template
//! in one way at a time and checks that the matching assertion notices.

mod alarms;
mod checks;
mod iam;
mod interp;
mod mutations;
mod policies;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use alarms::*;
use checks::*;
use iam::*;
use interp::*;
use policies::*;

const TEMPLATE: &str = include_str!("../../../infra/template.yaml");
const CARGO_TOML: &str = include_str!("../../Cargo.toml");
const SETTINGS_RS: &str = include_str!("../../src/settings.rs");

const BUCKET: &str = "acme-images";
const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "111122223333";
const STACK_NAME: &str = "s3dock";

/// Sample keys, relative to the key prefix, one per part of the layout.
const IMAGE_KEY: &str = "images/myapp/202507/myapp-20250721-2118-f7a5a27.tar.gz";
const METADATA_KEY: &str = "images/myapp/202507/myapp-20250721-2118-f7a5a27.json";
const TAG_KEY: &str = "tags/myapp/v1.2.0.json";
/// A tag file as the original tool wrote it (the version as typed, without `v`).
const LEGACY_TAG_KEY: &str = "tags/myapp/1.2.0.json";
const POINTER_KEY: &str = "pointers/myapp/production.json";
const PROBE_KEY: &str = "probe/0123456789abcdef-put";
/// A lease: the hold a tag or promotion takes, and the delete lease of a deleter.
const HOLD_KEY: &str = "leases/myapp/20250721-2118-f7a5a27/hold-0123456789abcdef";
const TOMBSTONE_KEY: &str = "leases/myapp/20250721-2118-f7a5a27/delete";
const AUDIT_KEY: &str = "audit/myapp/202507/20250721-1400-push-f7a5a27-9e107d9d.json";
/// The audit record of a deploy, as the agent writes it.
const DEPLOY_AUDIT_KEY: &str =
    "audit/myapp/202507/20250722-1018-deploy-f7a5a27-production-web-1-5f0c2a9b1d3e4f5a6b7c8d9e0f1a2b3c.json";
const ARCHIVE_KEY: &str = "archive/myapp/202507/myapp-20250721-2118-f7a5a27-archived-on-20250722-1018.tar.gz";
const AGENT_KEY: &str = "agents/myapp/production/web-1.json";
/// Another agent's registration beside it.
const OTHER_AGENT_KEY: &str = "agents/myapp/production/web-2.json";

type Check = Result<(), String>;
type CheckFn = fn(&Value) -> Check;

fn raw_template() -> Value {
    serde_norway::from_str(TEMPLATE).expect("infra/template.yaml parses as YAML")
}

#[test]
fn the_template_keeps_every_invariant() {
    let raw = raw_template();
    let mut failures = Vec::new();
    if let Err(e) = check_long_form(TEMPLATE) {
        failures.push(format!("long form: {e}"));
    }
    for (name, check) in all_checks() {
        if let Err(e) = check(&raw) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "infra/template.yaml breaks invariants:\n  {}", failures.join("\n  "));
}

#[test]
fn glob_matches_like_iam() {
    assert!(glob("images/*", "images/a/b.json"));
    assert!(glob("pointers/*/production.json", "pointers/app/production.json"));
    assert!(!glob("pointers/*/production.json", "pointers/app/staging.json"));
    assert!(glob("*", "audit/x"));
    assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
    assert!(!glob("images/*", "imagesX/a"));
}
