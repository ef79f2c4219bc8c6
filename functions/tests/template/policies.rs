//! The managed policies for people and machines: what each may do, and above all what each
//! may not, request by request as IAM decides it (conditions and policy variables included).

use super::*;

pub(crate) fn policy_statements(stack: &Stack, policy: &str) -> Result<Vec<Statement>, String> {
    let st: Vec<Statement> = statements(stack)?.into_iter().filter(|s| s.owner == policy).collect();
    if st.is_empty() {
        return Err(format!("no managed policy {policy}"));
    }
    Ok(st)
}

/// Does any statement allow `action` on the object `key` (relative to the prefix) in some
/// request shape? The generous reading, for what must never be possible.
pub(crate) fn may(st: &[Statement], stack: &Stack, action: &str, key: &str) -> bool {
    st.iter().any(|s| s.allows(action, &stack.object_arn(key)))
}

pub(crate) const WRITES: [&str; 5] =
    ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload", "s3:PutObjectAcl"];

/// Every action a statement grants on keys, other than reads.
pub(crate) fn write_actions(st: &[Statement]) -> BTreeSet<String> {
    st.iter()
        .filter(|s| s.allow)
        .flat_map(|s| s.actions.iter().cloned())
        .filter(|a| !a.starts_with("s3:Get") && !a.starts_with("s3:List"))
        .collect()
}

/// The request shapes of `action` on `key` that the policy allows (for agent `agent`, if any).
fn shapes_allowed(
    st: &[Statement],
    stack: &Stack,
    action: &str,
    key: &str,
    agent: Option<&str>,
) -> Result<Vec<&'static str>, String> {
    let base = agent.map(|a| ctx(&[(AGENT_TAG, a)])).unwrap_or_default();
    allowed_shapes(st, action, &stack.object_arn(key), &base)
}

const CREATE: &str = "a PutObject or CompleteMultipartUpload with If-None-Match: *";
const PARTS: &str = "a CreateMultipartUpload, UploadPart or UploadPartCopy";

/// `key` may only be created: PutObject with If-None-Match (and, with `parts`, the parts of a
/// multipart upload) and nothing else, no delete.
fn create_only(st: &[Statement], stack: &Stack, who: &str, key: &str, parts: bool, agent: Option<&str>) -> Check {
    let put = shapes_allowed(st, stack, "s3:PutObject", key, agent)?;
    let want: Vec<&str> = if parts { vec![CREATE, PARTS] } else { vec![CREATE] };
    if put != want {
        return Err(format!(
            "{who} on {key}: allows {put:?}, must allow exactly {want:?} (create only, never replace)"
        ));
    }
    for action in ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl"] {
        if !shapes_allowed(st, stack, action, key, agent)?.is_empty() {
            return Err(format!("{who} may {action} {key}"));
        }
    }
    Ok(())
}

/// No write of any kind, in any request shape, on `key`.
fn no_writes(st: &[Statement], stack: &Stack, who: &str, key: &str, agent: Option<&str>) -> Check {
    for action in write_actions(st).iter().map(String::as_str).chain(WRITES) {
        let allowed = shapes_allowed(st, stack, action, key, agent)?;
        if !allowed.is_empty() {
            return Err(format!("{who} allows {action} on {key}: {allowed:?}"));
        }
    }
    Ok(())
}

/// Pushers create images and tags and can replace nothing: not an image a pointer names, not
/// a tag a pointer follows; they cannot write pointers, audit records, archive copies or
/// registrations, and cannot delete anything.
pub(crate) fn check_pusher(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let st = policy_statements(&stack, "PusherPolicy")?;
        for key in [IMAGE_KEY, METADATA_KEY, TAG_KEY, POINTER_KEY, AUDIT_KEY, ARCHIVE_KEY, AGENT_KEY] {
            if !may(&st, &stack, "s3:GetObject", key) {
                return Err(format!("PusherPolicy cannot read {key}"));
            }
        }
        // push: the archive as one PutObject or a multipart upload, then the metadata.
        create_only(&st, &stack, "PusherPolicy", IMAGE_KEY, true, None)?;
        create_only(&st, &stack, "PusherPolicy", METADATA_KEY, true, None)?;
        create_only(&st, &stack, "PusherPolicy", TAG_KEY, false, None)?;
        create_only(&st, &stack, "PusherPolicy", LEGACY_TAG_KEY, false, None)?;
        if shapes_allowed(&st, &stack, "s3:AbortMultipartUpload", IMAGE_KEY, None)?.is_empty() {
            return Err("PusherPolicy cannot abort a failed upload of an image".into());
        }
        // The probe before conditional writes, and the hold a tag takes on its image.
        scratch(&st, &stack, "PusherPolicy", &[PROBE_KEY, HOLD_KEY])?;
        for key in [POINTER_KEY, AUDIT_KEY, ARCHIVE_KEY, AGENT_KEY] {
            no_writes(&st, &stack, "PusherPolicy", key, None)?;
        }
    }
    Ok(())
}

/// `who` may write and delete each of `keys` (the probe's throw-away objects, leases): their
/// writers create and remove them, and nothing reads them as data.
fn scratch(st: &[Statement], stack: &Stack, who: &str, keys: &[&str]) -> Check {
    for key in keys {
        for action in ["s3:PutObject", "s3:DeleteObject"] {
            if !may(st, stack, action, key) {
                return Err(format!("{who} cannot {action} {key}"));
            }
        }
    }
    Ok(())
}

/// Maintainers replace and delete images and tags (push --force, tag --force, cleanup), copy
/// what they replace into archive/ and record cleanups in audit/, both create-only; they move
/// no pointer, write no registration, and delete no old version.
pub(crate) fn check_maintainer(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let st = policy_statements(&stack, "MaintainerPolicy")?;
        for key in [IMAGE_KEY, METADATA_KEY, TAG_KEY, LEGACY_TAG_KEY] {
            let put = shapes_allowed(&st, &stack, "s3:PutObject", key, None)?;
            if put.len() != put_shapes().len() {
                return Err(format!("MaintainerPolicy cannot replace {key}: only {put:?}"));
            }
            if shapes_allowed(&st, &stack, "s3:DeleteObject", key, None)?.is_empty() {
                return Err(format!("MaintainerPolicy cannot delete {key}"));
            }
            if !shapes_allowed(&st, &stack, "s3:DeleteObjectVersion", key, None)?.is_empty() {
                return Err(format!("MaintainerPolicy may delete old versions of {key} (an administrator's job)"));
            }
        }
        create_only(&st, &stack, "MaintainerPolicy", ARCHIVE_KEY, true, None)?;
        create_only(&st, &stack, "MaintainerPolicy", AUDIT_KEY, false, None)?;
        // The probe, the holds of tag --force, the delete lease of cleanup.
        scratch(&st, &stack, "MaintainerPolicy", &[PROBE_KEY, HOLD_KEY, TOMBSTONE_KEY])?;
        for key in [POINTER_KEY, AGENT_KEY] {
            no_writes(&st, &stack, "MaintainerPolicy", key, None)?;
        }
    }
    Ok(())
}

pub(crate) fn check_promoter(raw: &Value) -> Check {
    let eight = ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"];
    let mut sets = param_sets();
    sets.push(Params::new("x/y/", &eight));
    sets.push(Params::new("", &["production"]));
    for params in sets {
        let stack = Stack::new(raw, &params)?;
        let st = policy_statements(&stack, "PromoterPolicy")?;
        for env in &params.envs {
            if !may(&st, &stack, "s3:PutObject", &format!("pointers/myapp/{env}.json")) {
                return Err(format!("PromoterPolicy cannot write the {env} pointer"));
            }
        }
        scratch(&st, &stack, "PromoterPolicy", &[PROBE_KEY, HOLD_KEY])?;
        for action in write_actions(&st).iter().map(String::as_str).chain(WRITES) {
            for key in [
                "pointers/myapp/unlisted-env.json",
                "pointers/myapp/production.json.bak",
                IMAGE_KEY,
                METADATA_KEY,
                TAG_KEY,
                AUDIT_KEY,
                ARCHIVE_KEY,
                AGENT_KEY,
            ] {
                if may(&st, &stack, action, key) {
                    return Err(format!("PromoterPolicy allows {action} on {key} (environments {:?})", params.envs));
                }
            }
            if action != "s3:PutObject" && may(&st, &stack, action, POINTER_KEY) {
                return Err(format!("PromoterPolicy allows {action} on a pointer"));
            }
        }
    }
    Ok(())
}

/// Agents read what they deploy, write their own registration only, create (never replace)
/// deploy records, and own their two queues; no agent can touch another agent's registration
/// or queues, another stack's queues, or any queue's access policy.
pub(crate) fn check_agent(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let st = policy_statements(&stack, "AgentPolicy")?;
        for key in [IMAGE_KEY, METADATA_KEY, TAG_KEY, POINTER_KEY, AGENT_KEY] {
            if !may(&st, &stack, "s3:GetObject", key) {
                return Err(format!("AgentPolicy cannot read {key}"));
            }
        }
        // Its own registration, under every app and environment it serves: any write shape.
        for key in [AGENT_KEY, "agents/other-app/staging/web-1.json"] {
            if shapes_allowed(&st, &stack, "s3:PutObject", key, Some("web-1"))?.is_empty() {
                return Err(format!("AgentPolicy: agent web-1 cannot write its registration {key}"));
            }
        }
        // Nobody else's, and nothing at all without the tag that names the agent.
        for key in [OTHER_AGENT_KEY, "agents/myapp/production/web-10.json", "agents/myapp/production/xweb-1.json"] {
            no_writes(&st, &stack, "AgentPolicy (agent web-1)", key, Some("web-1"))?;
        }
        no_writes(&st, &stack, "AgentPolicy (no s3dock-agent-id tag)", AGENT_KEY, None)?;
        create_only(&st, &stack, "AgentPolicy", DEPLOY_AUDIT_KEY, false, Some("web-1"))?;
        for key in [IMAGE_KEY, METADATA_KEY, TAG_KEY, POINTER_KEY, PROBE_KEY, ARCHIVE_KEY, HOLD_KEY, TOMBSTONE_KEY] {
            no_writes(&st, &stack, "AgentPolicy", key, Some("web-1"))?;
        }

        // Queues: its own two, by name, through the tag.
        let web1 = ctx(&[(AGENT_TAG, "web-1")]);
        let own = [
            stack.queue_arn(&format!("{STACK_NAME}_agent-web-1")),
            stack.queue_arn(&format!("{STACK_NAME}_agent-web-1-dlq")),
        ];
        let agent_sqs = [
            "sqs:CreateQueue",
            "sqs:GetQueueUrl",
            "sqs:GetQueueAttributes",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
        ];
        for q in &own {
            for a in agent_sqs {
                if !decide(&st, a, q, &web1)? {
                    return Err(format!("AgentPolicy: agent web-1 cannot {a} its queue {q}"));
                }
            }
        }
        let others = [
            // another agent of this stack, one whose id extends this one's, the same agent id in
            // another stack (whose name starts like this one's), the stack's event queues, the
            // old unscoped names, another account.
            stack.queue_arn(&format!("{STACK_NAME}_agent-web-2")),
            stack.queue_arn(&format!("{STACK_NAME}_agent-web-10")),
            stack.queue_arn(&format!("{STACK_NAME}-staging_agent-web-1")),
            stack.queue_arn("VerifyUploadQueue"),
            stack.queue_arn("s3dock-agent-web-1"),
            format!("arn:aws:sqs:{REGION}:999999999999:{STACK_NAME}_agent-web-1"),
        ];
        // Everything SQS authorizes, including what changes a queue policy.
        let every_sqs = [
            &agent_sqs[..],
            &[
                "sqs:SetQueueAttributes",
                "sqs:AddPermission",
                "sqs:RemovePermission",
                "sqs:SendMessage",
                "sqs:DeleteQueue",
                "sqs:PurgeQueue",
                "sqs:TagQueue",
                "sqs:StartMessageMoveTask",
            ],
        ]
        .concat();
        for q in others.iter().chain(&own) {
            for a in &every_sqs {
                let mine = own.contains(q) && agent_sqs.contains(a);
                if !mine && (decide(&st, a, q, &web1)? || st.iter().any(|s| s.allows(a, q))) {
                    return Err(format!("AgentPolicy: agent web-1 may {a} on {q}"));
                }
            }
        }
        for q in &own {
            if decide(&st, "sqs:ReceiveMessage", q, &Context::new())? {
                return Err(format!("AgentPolicy: a principal without the s3dock-agent-id tag may receive from {q}"));
            }
        }
        if st.iter().any(|s| s.actions.iter().any(|a| a.starts_with("sqs:") && !agent_sqs.contains(&a.as_str()))) {
            return Err("AgentPolicy grants SQS actions the agent does not make (set attributes, send, ...)".into());
        }
    }
    Ok(())
}

/// The audit trail is created, never replaced or deleted, by whoever may write it at all: the
/// functions' roles, the agents (their deploys) and maintainers (cleanups). Every grant on
/// audit/ requires If-None-Match, so S3 itself refuses an overwrite.
pub(crate) fn check_audit_writers(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let all = statements(&stack)?;
        let owners: BTreeSet<&str> = all.iter().map(|s| s.owner.as_str()).collect();
        let roles: BTreeSet<String> = functions(&stack)?.into_iter().map(|f| f.role).collect();
        for owner in owners {
            let st: Vec<Statement> = all.iter().filter(|s| s.owner == owner).cloned().collect();
            for key in [AUDIT_KEY, DEPLOY_AUDIT_KEY] {
                let put = shapes_allowed(&st, &stack, "s3:PutObject", key, Some("web-1"))?;
                let writer = roles.contains(owner) || ["AgentPolicy", "MaintainerPolicy"].contains(&owner);
                match (writer, put.as_slice()) {
                    (true, [CREATE]) | (false, []) => {}
                    _ => {
                        return Err(format!(
                            "{owner} on {key}: PutObject as {put:?}; only conditional creates, and only by the functions, agents and maintainers"
                        ));
                    }
                }
                for action in ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl"] {
                    if !shapes_allowed(&st, &stack, action, key, Some("web-1"))?.is_empty() {
                        return Err(format!("{owner} may {action} on audit/"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Managed policy names are account-wide: each carries the stack name and the region, so the
/// same stack in two regions of one account does not collide.
pub(crate) fn check_policy_names(raw: &Value) -> Check {
    let stack = Stack::new(raw, &param_sets()[0])?;
    let policies = stack.of_type("AWS::IAM::ManagedPolicy")?;
    let mut names = BTreeSet::new();
    for (logical, p) in &policies {
        let name =
            scalar(&p["Properties"]["ManagedPolicyName"]).map_err(|_| format!("{logical}: no ManagedPolicyName"))?;
        if !name.contains(STACK_NAME) || !name.contains(REGION) {
            return Err(format!("{logical}: ManagedPolicyName {name} must carry the stack name and the region"));
        }
        if name.len() > 128 || !names.insert(name.clone()) {
            return Err(format!("{logical}: ManagedPolicyName {name} is too long or not unique"));
        }
    }
    Ok(())
}
