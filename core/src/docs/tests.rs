//! Unit tests of `docs`.

use super::*;
use crate::names::EnvName;

/// Exactly what the original Go tool's `json.MarshalIndent` wrote (Go `time.Time` with a
/// local offset and nanoseconds).
const GO_METADATA: &str = r#"{
  "checksum": "9e107d9d372bb6826bd81d3542a419d6",
  "size": 10485760,
  "created_at": "2025-07-21T23:18:42.123456789+02:00",
  "git_hash": "f7a5a27",
  "git_time": "20250721-2118",
  "image_tag": "myapp:20250721-2118-f7a5a27",
  "app_name": "myapp"
}"#;

const GO_TAG: &str = r#"{
  "target_type": "image",
  "target_path": "images/myapp/202507/myapp-20250721-2118-f7a5a27.tar.gz",
  "promoted_at": "2025-07-21T14:30:00.5-07:00",
  "promoted_by": "alice",
  "git_hash": "f7a5a27",
  "git_time": "20250721-2118",
  "source_image": "myapp:20250721-2118-f7a5a27"
}"#;

const GO_POINTER_VIA_TAG: &str = r#"{
  "target_type": "tag",
  "target_path": "tags/myapp/v1.2.0.json",
  "promoted_at": "2025-07-22T10:18:00Z",
  "promoted_by": "bob",
  "git_hash": "f7a5a27",
  "git_time": "20250721-2118",
  "source_image": "myapp:20250721-2118-f7a5a27",
  "source_tag": "v1.2.0"
}"#;

const GO_AUDIT: &str = r#"{
  "event_type": "promotion",
  "timestamp": "2025-07-21T21:18:00.000000001+00:00",
  "user": "bob",
  "app_name": "myapp",
  "git_hash": "f7a5a27",
  "git_time": "20250721-2118",
  "details": {
"environment": "production",
"source": "myapp:20250721-2118-f7a5a27",
"source_type": "image",
"pointer_path": "pointers/myapp/production.json"
  }
}"#;

#[test]
fn reads_documents_of_the_original_tool() {
    let m: ImageMetadata = decode("m.json", GO_METADATA.as_bytes()).unwrap();
    assert_eq!(m.schema_version, None);
    assert_eq!(m.size, 10485760);
    assert_eq!(m.created_at.to_rfc3339(), "2025-07-21T21:18:42.123456789+00:00");
    assert_eq!(m.image_ref().unwrap().to_string(), "myapp:20250721-2118-f7a5a27");
    let t: TagDoc = decode("t.json", GO_TAG.as_bytes()).unwrap();
    assert_eq!(t.target_type, TargetType::Image);
    let p: PointerDoc = decode("p.json", GO_POINTER_VIA_TAG.as_bytes()).unwrap();
    assert_eq!(p.seq(), 0);
    assert_eq!(p.describe_target(), "v1.2.0");
    let a: AuditRecord = decode("a.json", GO_AUDIT.as_bytes()).unwrap();
    assert_eq!(a.environment(), Some("production"));
}

#[test]
fn writes_original_field_names_plus_schema_version() {
    let m: ImageMetadata = decode("m.json", GO_METADATA.as_bytes()).unwrap();
    let mut m2 = m.clone();
    m2.schema_version = Some(SCHEMA_VERSION);
    m2.sha256 = Some("a".repeat(64));
    let json: serde_json::Value = serde_json::from_slice(&encode(&m2)).unwrap();
    for f in
        ["checksum", "size", "created_at", "git_hash", "git_time", "image_tag", "app_name", "sha256", "schema_version"]
    {
        assert!(json.get(f).is_some(), "{f} missing in {json}");
    }
    assert!(json.get("image_id").is_none(), "absent optional fields are omitted");
    let back: ImageMetadata = decode("m.json", &encode(&m2)).unwrap();
    assert_eq!(back, m2);
}

#[test]
fn refuses_future_versions() {
    let future = GO_METADATA.replacen('{', "{\"schema_version\": 7,", 1);
    let e = decode::<ImageMetadata>("images/x.json", future.as_bytes()).unwrap_err();
    assert!(matches!(e, DocError::UnsupportedVersion { found: 7, .. }));
    assert!(e.to_string().contains("upgrade s3dock"), "{e}");
    let weird = GO_METADATA.replacen('{', "{\"schema_version\": \"1\",", 1);
    assert!(matches!(decode::<ImageMetadata>("k", weird.as_bytes()), Err(DocError::Malformed { .. })));
}

#[test]
fn hostile_json_is_an_error_not_a_panic() {
    let deep = "[".repeat(100_000);
    let big = vec![b' '; MAX_DOC_BYTES + 1];
    let bad_checksum = GO_METADATA.replace("9e107d9d372bb6826bd81d3542a419d6", "../../etc/passwd");
    let bad_path = GO_TAG.replace("images/myapp/202507/myapp-20250721-2118-f7a5a27.tar.gz", "../../../etc/shadow");
    let neg_size = GO_METADATA.replace("10485760", "-1");
    let bad_app = GO_METADATA.replace("\"app_name\": \"myapp\"", "\"app_name\": \"../x\"");
    for (input, want) in [
        ("".as_bytes(), "not valid"),
        (b"null", "expected a JSON object"),
        (b"[1,2]", "expected a JSON object"),
        (b"{\"checksum\": 5}", "not valid"),
        (deep.as_bytes(), "not valid"),
        (&big[..], "bytes is more than"),
        (bad_checksum.as_bytes(), "checksum must be 32"),
        (neg_size.as_bytes(), "not valid"),
        (bad_app.as_bytes(), "app_name"),
        (b"\xff\xfe{}", "not valid"),
    ] {
        let e = decode::<ImageMetadata>("k.json", input).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let e = decode::<TagDoc>("t.json", bad_path.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("target_path"), "{e}");
}

#[test]
fn promotion_message_round_trip() {
    let msg = PromotionMessage {
        schema_version: SCHEMA_VERSION,
        kind: "promotion".into(),
        app: AppName::parse("myapp").unwrap(),
        env: EnvName::parse("production").unwrap(),
        image: "myapp:20250721-2118-f7a5a27".into(),
        pointer_seq: 4,
        time: "2025-07-21T21:18:00Z".parse().unwrap(),
    };
    let back: PromotionMessage = decode("msg", &encode(&msg)).unwrap();
    assert_eq!(back, msg);
    let bad = serde_json::to_vec(&serde_json::json!({"schema_version":1,"kind":"promotion","app":"My App","env":"p","image":"x","pointer_seq":1,"time":"2025-07-21T21:18:00Z"})).unwrap();
    assert!(decode::<PromotionMessage>("msg", &bad).is_err());
}
