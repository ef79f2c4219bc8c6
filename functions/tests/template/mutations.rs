//! Each assertion fails on a template broken in the way it guards against.
use super::*;

fn statements_of<'v>(raw: &'v mut Value, pointer: &str) -> &'v mut Vec<Value> {
    raw.pointer_mut(pointer).and_then(Value::as_array_mut).unwrap_or_else(|| panic!("{pointer} is a list"))
}

fn broken(check: CheckFn, mutate: impl FnOnce(&mut Value)) -> String {
    let mut raw = raw_template();
    check(&raw).expect("the unmodified template passes this check");
    mutate(&mut raw);
    match check(&raw) {
        Ok(()) => panic!("the check did not notice the mutation"),
        Err(e) => e,
    }
}

fn sub(path: &str) -> Value {
    json!({"Fn::Sub": format!("arn:${{AWS::Partition}}:s3:::${{BucketName}}/${{KeyPrefix}}{path}")})
}

#[test]
fn versioning_off() {
    let e = broken(check_bucket, |t| {
        t["Resources"]["Bucket"]["Properties"]["VersioningConfiguration"]["Status"] = json!("Suspended")
    });
    assert!(e.contains("versioning"), "{e}");
}

#[test]
fn public_access_allowed() {
    let e = broken(check_bucket, |t| {
        t["Resources"]["Bucket"]["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] = json!(false)
    });
    assert!(e.contains("RestrictPublicBuckets"), "{e}");
}

#[test]
fn bucket_deleted_with_the_stack() {
    let e = broken(check_bucket, |t| t["Resources"]["Bucket"]["DeletionPolicy"] = json!("Delete"));
    assert!(e.contains("retained"), "{e}");
}

#[test]
fn plain_http_allowed() {
    let e = broken(check_tls_only, |t| {
        t["Resources"]["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"] =
            json!("true")
    });
    assert!(e.contains("SecureTransport"), "{e}");
}

#[test]
fn multipart_uploads_never_aborted() {
    let e = broken(check_lifecycle, |t| {
        statements_of(t, "/Resources/Bucket/Properties/LifecycleConfiguration/Rules")
            .retain(|r| r["AbortIncompleteMultipartUpload"].is_null())
    });
    assert!(e.contains("multipart"), "{e}");
}

#[test]
fn audit_trail_expired() {
    let e = broken(check_lifecycle, |t| {
        statements_of(t, "/Resources/Bucket/Properties/LifecycleConfiguration/Rules").push(json!({
            "Id": "oops", "Status": "Enabled", "Prefix": {"Fn::Sub": "${KeyPrefix}audit/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30}
        }))
    });
    assert!(e.contains("audit"), "{e}");
}

#[test]
fn queue_without_dead_letter_queue() {
    let e = broken(check_queues, |t| {
        t["Resources"]["RecordTagQueue"]["Properties"].as_object_mut().expect("properties").remove("RedrivePolicy");
    });
    assert!(e.contains("RecordTagQueue") && e.contains("RedrivePolicy"), "{e}");
}

#[test]
fn visibility_shorter_than_six_timeouts() {
    let e = broken(check_visibility, |t| {
        t["Resources"]["PromotionFanoutQueue"]["Properties"]["VisibilityTimeout"] = json!(900)
    });
    assert!(e.contains("PromotionFanoutQueue") && e.contains("6 x"), "{e}");
    let e = broken(check_visibility, |t| t["Mappings"]["EventQueue"]["900"]["VisibilityTimeout"] = json!(5000));
    assert!(e.contains("6 x the function timeout 900"), "{e}");
}

#[test]
fn events_without_partial_batch_failures() {
    let e = broken(check_functions, |t| {
        t["Resources"]["VerifyUploadFunction"]["Properties"]["Events"]["ImageMetadataCreated"]["Properties"]["FunctionResponseTypes"] =
            json!([])
    });
    assert!(e.contains("ReportBatchItemFailures"), "{e}");
}

#[test]
fn pusher_writes_the_audit_trail() {
    let e = broken(check_pusher, |t| {
        statements_of(t, "/Resources/PusherPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("audit/*")}))
    });
    assert!(e.contains("audit"), "{e}");
    let e = broken(check_audit_writers, |t| {
        statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": sub("audit/*")}))
    });
    assert!(e.contains("AgentPolicy") && e.contains("s3:DeleteObject"), "{e}");
    let e = broken(check_audit_writers, |t| {
        statements_of(t, "/Resources/PromoterPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("audit/*")}))
    });
    assert!(e.contains("PromoterPolicy"), "{e}");
}

#[test]
fn agent_writes_beyond_its_deploy_records() {
    // PutObject on everything: caught on the registrations of other agents and on images/.
    let e = broken(check_agent, |t| {
        statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("*")}))
    });
    assert!(
        e.contains("AgentPolicy") && e.contains("allows s3:PutObject on agents/myapp/production/web-2.json"),
        "{e}"
    );
    let e = broken(check_agent, |t| {
        statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("images/*")}))
    });
    assert!(e.contains("allows s3:PutObject on images/"), "{e}");
    let e = broken(check_agent, |t| {
        statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:PutObjectAcl", "Resource": sub("audit/*")}))
    });
    assert!(e.contains("may s3:PutObjectAcl audit/"), "{e}");
    let e = broken(check_agent, |t| {
        statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement")
            .retain(|s| s["Sid"] != "AuditDeploys")
    });
    assert!(e.contains("must allow exactly") && e.contains("deploy"), "{e}");
    let e = broken(check_agent, |t| {
        for s in statements_of(t, "/Resources/AgentPolicy/Properties/PolicyDocument/Statement") {
            if s["Sid"] == "AuditDeploys" {
                s.as_object_mut().unwrap().remove("Condition");
            }
        }
    });
    assert!(e.contains("never replace") && e.contains("an unconditional PutObject"), "{e}");
}

fn set_statement(t: &mut Value, pointer: &str, sid: &str, f: impl Fn(&mut Value)) {
    let mut found = false;
    for s in statements_of(t, pointer) {
        if s["Sid"] == sid {
            f(s);
            found = true;
        }
    }
    assert!(found, "no statement {sid} under {pointer}");
}

const AGENT: &str = "/Resources/AgentPolicy/Properties/PolicyDocument/Statement";
const PUSHER: &str = "/Resources/PusherPolicy/Properties/PolicyDocument/Statement";
const MAINTAINER: &str = "/Resources/MaintainerPolicy/Properties/PolicyDocument/Statement";

#[test]
fn agent_writes_another_agents_registration() {
    let e = broken(check_agent, |t| {
        set_statement(t, AGENT, "RegisterItself", |s| s["Resource"] = sub("agents/*"));
    });
    assert!(e.contains("agents/myapp/production/web-2.json"), "{e}");
    // A prefix match instead of the whole file name: web-1 could write web-10's.
    let e = broken(check_agent, |t| {
        set_statement(t, AGENT, "RegisterItself", |s| {
            s["Resource"] = sub("agents/*/*/${!aws:PrincipalTag/s3dock-agent-id}*")
        });
    });
    assert!(e.contains("web-10.json"), "{e}");
}

#[test]
fn agent_changes_a_queue_policy() {
    let e = broken(check_agent, |t| {
        set_statement(t, AGENT, "OwnQueues", |s| {
            s["Action"].as_array_mut().unwrap().push(json!("sqs:SetQueueAttributes"))
        });
    });
    assert!(e.contains("sqs:SetQueueAttributes"), "{e}");
    let e = broken(check_agent, |t| {
        statements_of(t, AGENT).push(json!({"Effect": "Allow", "Action": "sqs:AddPermission",
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}_agent-*"}}))
    });
    assert!(e.contains("sqs:AddPermission"), "{e}");
}

#[test]
fn agent_reaches_other_queues() {
    // Any queue of the stack: another agent's.
    let e = broken(check_agent, |t| {
        set_statement(t, AGENT, "OwnQueues", |s| {
            s["Resource"] = json!({"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}_agent-*"})
        });
    });
    assert!(e.contains("s3dock_agent-web-2"), "{e}");
    // A pattern that reaches past the stack name: another stack's queues.
    let e = broken(check_agent, |t| {
        set_statement(t, AGENT, "OwnQueues", |s| {
            let arn = "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}*_agent-${!aws:PrincipalTag/s3dock-agent-id}";
            s["Resource"] = json!([{"Fn::Sub": arn}, {"Fn::Sub": format!("{arn}-dlq")}])
        });
    });
    assert!(e.contains("s3dock-staging_agent-web-1"), "{e}");
}

#[test]
fn pusher_replaces_images_or_tags() {
    // Without the If-None-Match condition a pusher could overwrite what a pointer names.
    let e = broken(check_pusher, |t| {
        set_statement(t, PUSHER, "CreateImagesAndTags", |s| {
            s.as_object_mut().unwrap().remove("Condition");
        });
    });
    assert!(e.contains("never replace") && e.contains("images/"), "{e}");
    // The part exemption, widened to every request: a plain PutObject replaces.
    let e = broken(check_pusher, |t| {
        set_statement(t, PUSHER, "UploadImageParts", |s| {
            s["Condition"] = json!({"Bool": {"s3:ObjectCreationOperation": ["true", "false"]}})
        });
    });
    assert!(e.contains("an unconditional PutObject"), "{e}");
    // If-Match instead of If-None-Match: a compare-and-swap overwrite, still a replacement.
    let e = broken(check_pusher, |t| {
        set_statement(t, PUSHER, "CreateImagesAndTags", |s| s["Condition"] = json!({"Null": {"s3:if-match": "false"}}));
    });
    assert!(e.contains("If-Match"), "{e}");
    let e = broken(check_pusher, |t| {
        statements_of(t, PUSHER)
            .push(json!({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": sub("images/*")}))
    });
    assert!(e.contains("s3:DeleteObject") && e.contains("images/"), "{e}");
    let e = broken(check_pusher, |t| {
        statements_of(t, PUSHER)
            .push(json!({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": sub("tags/*/1*")}))
    });
    assert!(e.contains("s3:DeleteObject") && e.contains("tags/myapp/1.2.0.json"), "{e}");
}

#[test]
fn pusher_writes_archive_records() {
    let e = broken(check_pusher, |t| {
        statements_of(t, PUSHER).push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("archive/*"),
            "Condition": {"Null": {"s3:if-none-match": "false"}}}))
    });
    assert!(e.contains("archive/"), "{e}");
}

#[test]
fn maintainer_overwrites_archives_or_deletes_versions() {
    let e = broken(check_maintainer, |t| {
        set_statement(t, MAINTAINER, "CreateArchiveAndAuditRecords", |s| {
            s.as_object_mut().unwrap().remove("Condition");
        });
    });
    assert!(e.contains("never replace") && e.contains("archive/"), "{e}");
    let e = broken(check_maintainer, |t| {
        set_statement(t, MAINTAINER, "ReplaceAndDeleteImagesAndTags", |s| {
            s["Action"].as_array_mut().unwrap().push(json!("s3:DeleteObjectVersion"))
        });
    });
    assert!(e.contains("old versions"), "{e}");
    let e = broken(check_maintainer, |t| {
        statements_of(t, MAINTAINER)
            .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("pointers/*")}))
    });
    assert!(e.contains("pointers/"), "{e}");
    let e = broken(check_maintainer, |t| {
        set_statement(t, MAINTAINER, "ReplaceAndDeleteImagesAndTags", |s| s["Action"] = json!("s3:PutObject"));
    });
    assert!(e.contains("cannot delete"), "{e}");
}

#[test]
fn function_overwrites_audit_records() {
    let e = broken(check_audit_writers, |t| {
        set_statement(
            t,
            "/Resources/PromotionFanoutRole/Properties/Policies/0/PolicyDocument/Statement",
            "CreateAuditRecords",
            |s| {
                s.as_object_mut().unwrap().remove("Condition");
            },
        );
    });
    assert!(e.contains("PromotionFanoutRole") && e.contains("an unconditional PutObject"), "{e}");
}

#[test]
fn policy_names_collide_across_regions() {
    let e = broken(check_policy_names, |t| {
        t["Resources"]["AgentPolicy"]["Properties"]["ManagedPolicyName"] = json!({"Fn::Sub": "${AWS::StackName}-agent"})
    });
    assert!(e.contains("AgentPolicy") && e.contains("region"), "{e}");
}

#[test]
fn alarms_miss_a_failure_or_the_topic() {
    let e = broken(check_alarms, |t| {
        t["Resources"].as_object_mut().unwrap().remove("RecordTagErrorLogFilter");
    });
    assert!(e.contains("RecordTagFunction") && e.contains("metric filter"), "{e}");
    let e = broken(check_alarms, |t| {
        t["Resources"].as_object_mut().unwrap().remove("PromotionFanoutErrorLogAlarm");
    });
    assert!(e.contains("PromotionFanoutFunction") && e.contains("error log lines"), "{e}");
    let e = broken(check_alarms, |t| {
        t["Resources"].as_object_mut().unwrap().remove("VerifyUploadThrottleAlarm");
    });
    assert!(e.contains("VerifyUploadFunction") && e.contains("throttles"), "{e}");
    let e = broken(check_alarms, |t| {
        t["Resources"].as_object_mut().unwrap().remove("RecordTagDeadLetterAlarm");
    });
    assert!(e.contains("RecordTagFunction") && e.contains("dead-letter"), "{e}");
    let e = broken(check_alarms, |t| {
        t["Resources"]["VerifyUploadDeadLetterAlarm"]["Properties"].as_object_mut().unwrap().remove("AlarmActions");
    });
    assert!(e.contains("VerifyUploadDeadLetterAlarm") && e.contains("AlarmActions"), "{e}");
    let e = broken(check_alarms, |t| {
        t["Outputs"].as_object_mut().unwrap().remove("PromotionFanoutDeadLetterQueueArn");
    });
    assert!(e.contains("is no output"), "{e}");
    let e = broken(check_alarms, |t| {
        t["Outputs"].as_object_mut().unwrap().remove("AlarmTopicArn");
    });
    assert!(e.contains("AlarmTopicArn"), "{e}");
    let e = broken(check_alarms, |t| t["Resources"]["RecordTagThrottleAlarm"]["Properties"]["Threshold"] = json!(5));
    assert!(e.contains("first occurrence"), "{e}");
}

#[test]
fn delete_trail_misses_bulk_deletes() {
    let e = broken(check_delete_trail, |t| {
        t["Resources"]["DeleteTrail"]["Properties"]["AdvancedEventSelectors"][0]["FieldSelectors"][2]["Equals"] =
            json!(["DeleteObject"])
    });
    assert!(e.contains("DeleteObjects"), "{e}");
}

#[test]
fn pusher_moves_pointers_or_deletes_archives() {
    let e = broken(check_pusher, |t| {
        statements_of(t, "/Resources/PusherPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [sub("pointers/*")]}))
    });
    assert!(e.contains("pointers/"), "{e}");
    let e = broken(check_pusher, |t| {
        statements_of(t, "/Resources/PusherPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": sub("archive/*")}))
    });
    assert!(e.contains("archive/"), "{e}");
}

#[test]
fn promoter_writes_any_pointer() {
    let e = broken(check_promoter, |t| {
        statements_of(t, "/Resources/PromoterPolicy/Properties/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("pointers/*")}))
    });
    assert!(e.contains("unlisted-env"), "{e}");
}

#[test]
fn wildcard_action_or_resource() {
    let e = broken(check_no_wildcards, |t| {
        statements_of(t, "/Resources/RecordTagRole/Properties/Policies/0/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:*", "Resource": sub("tags/*")}))
    });
    assert!(e.contains("wildcard action s3:*"), "{e}");
    let e = broken(check_no_wildcards, |t| {
        for s in statements_of(t, "/Resources/PromotionFanoutRole/Properties/Policies/0/PolicyDocument/Statement") {
            if s["Sid"] == "NotifyAgentQueues" {
                s["Resource"] = json!("*");
            }
        }
    });
    assert!(e.contains("Resource \"*\""), "{e}");
}

#[test]
fn function_role_reaches_another_prefix() {
    let e = broken(check_function_roles, |t| {
        statements_of(t, "/Resources/VerifyUploadRole/Properties/Policies/0/PolicyDocument/Statement")
            .push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("pointers/*")}))
    });
    assert!(e.contains("VerifyUploadRole") && e.contains("pointers/*"), "{e}");
    let e = broken(check_function_roles, |t| {
        for s in statements_of(t, "/Resources/PromotionFanoutRole/Properties/Policies/0/PolicyDocument/Statement") {
            if s["Sid"] == "NotifyAgentQueues" {
                s["Resource"] = json!({"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*"});
            }
        }
    });
    assert!(e.contains("sqs:SendMessage"), "{e}");
}

#[test]
fn notifications_from_any_bucket() {
    let e = broken(check_notifications, |t| {
        let s = &mut t["Resources"]["EventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
        s.as_object_mut().expect("statement").remove("Condition");
    });
    assert!(e.contains("aws:SourceArn"), "{e}");
}

#[test]
fn short_form_intrinsics() {
    check_long_form(TEMPLATE).expect("the template uses the long form");
    let broken = TEMPLATE.replacen("{Fn::Sub: \"${KeyPrefix}archive/\"}", "!Sub \"${KeyPrefix}archive/\"", 1);
    assert_ne!(broken, TEMPLATE);
    assert!(check_long_form(&broken).unwrap_err().contains("short-form"));
}

#[test]
fn policy_suite_check_skipped_without_a_reason() {
    let e = broken(check_policy_suite_skips, |t| {
        t["Resources"]["Bucket"]["Metadata"]["checkov"]["skip"][0]["comment"] = json!("not needed")
    });
    assert!(e.contains("Bucket") && e.contains("CKV_AWS_18"), "{e}");
}
