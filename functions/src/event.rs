//! Invocation payloads, parsed leniently.
//!
//! A function is invoked by S3 directly (`{"Records":[{"eventSource":"aws:s3",...}]}`), by
//! SNS (`{"Records":[{"EventSource":"aws:sns","Sns":{"Message":"<s3 event>"}}]}`) or by SQS
//! (`{"Records":[{"eventSource":"aws:sqs","messageId":...,"body":"<notification>"}]}`), where
//! a body is an S3 event, an SNS envelope around one (`{"Type":"Notification","Message":...}`)
//! or the `s3:TestEvent` S3 sends when a notification is configured.
//!
//! Only the fields s3dock uses are read, from `serde_json::Value`, so a record that lacks
//! `userIdentity`, `requestParameters` or `sequencer` (moto sends none of them) still
//! parses; strict deserialization into the full AWS event type would refuse it.

use serde_json::Value;

/// One S3 event record: what s3dock needs of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Record {
    /// `ObjectCreated:Put`, `ObjectRemoved:Delete`... (an `s3:` prefix is dropped).
    pub event_name: String,
    pub bucket: Option<String>,
    /// The key as it arrived: form-URL-encoded.
    pub raw_key: String,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub size: Option<u64>,
    /// `userIdentity.principalId`: who S3 saw writing the object.
    pub principal: Option<String>,
    pub sequencer: Option<String>,
    /// `eventTime`: when S3 saw the write.
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// What one notification (an SQS body, an SNS message) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// S3 event records (normally one).
    Records(Vec<S3Record>),
    /// The `s3:TestEvent` S3 sends when notifications are configured: nothing to do.
    TestEvent { bucket: Option<String> },
}

/// How a function was invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// SQS: one item per message; each body parsed on its own so one malformed body does not
    /// spoil the batch.
    Sqs(Vec<SqsItem>),
    /// S3 or SNS directly (or a notification passed by hand): the records to handle.
    Direct(Vec<DirectItem>),
}

/// One SQS message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsItem {
    /// What `batchItemFailures` names; `None` only in a hand-made payload.
    pub message_id: Option<String>,
    pub body: Result<Notification, String>,
}

/// One record of a direct invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectItem {
    S3(S3Record),
    TestEvent {
        bucket: Option<String>,
    },
    /// A record that could not be used, and why.
    Unusable(String),
}

/// Parses an invocation payload. `Err` only when it is no event s3dock knows at all.
pub fn parse_payload(v: &Value) -> Result<Payload, String> {
    let Some(records) = v.get("Records") else {
        // No record list: a notification passed by hand (a test event, an SNS envelope).
        return match parse_notification(v) {
            Ok(Notification::Records(rs)) => Ok(Payload::Direct(rs.into_iter().map(DirectItem::S3).collect())),
            Ok(Notification::TestEvent { bucket }) => Ok(Payload::Direct(vec![DirectItem::TestEvent { bucket }])),
            Err(e) => Err(e),
        };
    };
    let Some(records) = records.as_array() else {
        return Err("\"Records\" is not a list".into());
    };
    if !records.is_empty() && records.iter().all(|r| source_of(r) == Some("aws:sqs")) {
        return Ok(Payload::Sqs(records.iter().map(parse_sqs_record).collect()));
    }
    if records.iter().any(|r| source_of(r) == Some("aws:sqs")) {
        return Err("SQS records mixed with records of another source".into());
    }
    let mut items = Vec::new();
    for r in records {
        match source_of(r) {
            Some("aws:s3") | None => match parse_s3_record(r) {
                Ok(rec) => items.push(DirectItem::S3(rec)),
                Err(e) => items.push(DirectItem::Unusable(e)),
            },
            Some("aws:sns") => match r.pointer("/Sns/Message").and_then(Value::as_str) {
                Some(msg) => match parse_body(msg) {
                    Ok(Notification::Records(rs)) => items.extend(rs.into_iter().map(DirectItem::S3)),
                    Ok(Notification::TestEvent { bucket }) => items.push(DirectItem::TestEvent { bucket }),
                    Err(e) => items.push(DirectItem::Unusable(format!("SNS message: {e}"))),
                },
                None => items.push(DirectItem::Unusable("an SNS record without Sns.Message".into())),
            },
            other => items.push(DirectItem::Unusable(format!(
                "a record from {}, not from S3, SNS or SQS",
                other.unwrap_or("an unknown source")
            ))),
        }
    }
    Ok(Payload::Direct(items))
}

/// `eventSource` (S3, SQS) or `EventSource` (SNS).
fn source_of(r: &Value) -> Option<&str> {
    r.get("eventSource").or_else(|| r.get("EventSource")).and_then(Value::as_str)
}

fn parse_sqs_record(r: &Value) -> SqsItem {
    let message_id = r.get("messageId").and_then(Value::as_str).map(str::to_owned);
    let body = match r.get("body").and_then(Value::as_str) {
        Some(b) => parse_body(b),
        None => Err("the SQS record has no body".into()),
    };
    SqsItem { message_id, body }
}

/// Parses a message body (SQS) or message (SNS) as a notification.
pub fn parse_body(body: &str) -> Result<Notification, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    parse_notification(&v)
}

/// A notification: S3 event records, an SNS envelope around one, or an `s3:TestEvent`.
pub fn parse_notification(v: &Value) -> Result<Notification, String> {
    parse_notification_at(v, 0)
}

fn parse_notification_at(v: &Value, depth: u8) -> Result<Notification, String> {
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Notification::TestEvent { bucket: v.get("Bucket").and_then(Value::as_str).map(str::to_owned) });
    }
    if v.get("Type").and_then(Value::as_str) == Some("Notification") {
        // SNS -> SQS without raw delivery: the S3 event is a JSON string in `Message`. One
        // level only: S3 -> SNS -> SQS is the deepest nesting there is.
        if depth > 0 {
            return Err("an SNS envelope inside an SNS envelope".into());
        }
        let msg = v.get("Message").and_then(Value::as_str).ok_or("an SNS envelope without a Message string")?;
        let inner: Value = serde_json::from_str(msg).map_err(|e| format!("the SNS Message is not JSON ({e})"))?;
        return parse_notification_at(&inner, depth + 1);
    }
    let Some(records) = v.get("Records").and_then(Value::as_array) else {
        return Err("neither S3 event records, an SNS envelope nor an s3:TestEvent".into());
    };
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        match source_of(r) {
            Some("aws:s3") | None => out.push(parse_s3_record(r).map_err(|e| format!("record {i}: {e}"))?),
            Some(other) => return Err(format!("record {i} comes from {other}, not from S3")),
        }
    }
    Ok(Notification::Records(out))
}

/// One S3 record, reading only what s3dock uses.
pub fn parse_s3_record(r: &Value) -> Result<S3Record, String> {
    let s = |p: &str| r.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let raw_key = s("/s3/object/key").ok_or("the record has no s3.object.key")?;
    let size = r.pointer("/s3/object/size").and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
    let event_name = s("/eventName").unwrap_or_default();
    Ok(S3Record {
        event_name: event_name.strip_prefix("s3:").map(str::to_owned).unwrap_or(event_name),
        bucket: s("/s3/bucket/name"),
        raw_key,
        etag: s("/s3/object/eTag"),
        version_id: s("/s3/object/versionId"),
        size,
        principal: s("/userIdentity/principalId"),
        sequencer: s("/s3/object/sequencer"),
        event_time: s("/eventTime")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s3(key: &str) -> Value {
        json!({"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":key,"size":"7"}}})
    }

    #[test]
    fn lenient_records_and_sizes() {
        let Payload::Direct(items) = parse_payload(&json!({"Records":[s3("a"), s3("b")]})).unwrap() else { panic!() };
        assert_eq!(items.len(), 2);
        let DirectItem::S3(r) = &items[1] else { panic!("{items:?}") };
        assert_eq!((r.raw_key.as_str(), r.size, r.principal.as_deref()), ("b", Some(7), None));
        let rec = parse_s3_record(&json!({"eventName":"s3:ObjectCreated:Copy","s3":{"object":{"key":"k"}}})).unwrap();
        assert_eq!(rec.event_name, "ObjectCreated:Copy");
        assert!(parse_s3_record(&json!({"s3":{"object":{}}})).is_err());
    }

    #[test]
    fn sqs_bodies_are_parsed_one_by_one() {
        let payload = json!({"Records":[
            {"eventSource":"aws:sqs","messageId":"1","body":"{not json"},
            {"eventSource":"aws:sqs","messageId":"2","body":json!({"Records":[s3("k")]}).to_string()},
            {"eventSource":"aws:sqs","messageId":"3","body":json!({"Type":"Notification","Message":json!({"Records":[s3("k")]}).to_string()}).to_string()},
            {"eventSource":"aws:sqs","messageId":"4","body":json!({"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}).to_string()},
            {"eventSource":"aws:sqs","messageId":"5"},
            {"eventSource":"aws:sqs","messageId":"6","body":json!({"Type":"Notification","Message":json!({"Type":"Notification","Message":"{}"}).to_string()}).to_string()},
        ]});
        let Payload::Sqs(items) = parse_payload(&payload).unwrap() else { panic!() };
        assert!(items[0].body.as_ref().unwrap_err().contains("not JSON"));
        assert!(matches!(&items[1].body, Ok(Notification::Records(r)) if r.len() == 1));
        assert!(matches!(&items[2].body, Ok(Notification::Records(r)) if r.len() == 1));
        assert_eq!(items[3].body, Ok(Notification::TestEvent { bucket: Some("b".into()) }));
        assert!(items[4].body.is_err());
        assert!(items[5].body.as_ref().unwrap_err().contains("inside an SNS envelope"));
    }

    #[test]
    fn unknown_payloads_are_refused_or_marked() {
        assert!(parse_payload(&json!({"hello":"world"})).is_err());
        assert!(parse_payload(&json!({"Records":{}})).is_err());
        assert!(parse_payload(&json!({"Records":[{"eventSource":"aws:sqs","body":"{}"}, s3("k")]})).is_err());
        let Payload::Direct(items) = parse_payload(&json!({"Records":[{"eventSource":"aws:dynamodb"}]})).unwrap()
        else {
            panic!()
        };
        assert!(matches!(&items[0], DirectItem::Unusable(why) if why.contains("aws:dynamodb")));
        let sns =
            json!({"Records":[{"EventSource":"aws:sns","Sns":{"Message":json!({"Records":[s3("x")]}).to_string()}}]});
        let Payload::Direct(items) = parse_payload(&sns).unwrap() else { panic!() };
        assert!(matches!(&items[0], DirectItem::S3(r) if r.raw_key == "x"));
    }
}
