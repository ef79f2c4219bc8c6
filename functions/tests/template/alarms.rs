//! Alarms that fire, all delivered to one topic, and the opt-in trail of deletes.

use super::*;

/// An alarm that fires on the first datapoint above zero and stays quiet without data.
fn fires_at_once(name: &str, a: &Value) -> Check {
    let p = &a["Properties"];
    let first = matches!(
        (p["ComparisonOperator"].as_str(), scalar(&p["Threshold"]).ok().as_deref()),
        (Some("GreaterThanThreshold"), Some("0")) | (Some("GreaterThanOrEqualToThreshold"), Some("1"))
    );
    if !first || p["EvaluationPeriods"] != 1 {
        return Err(format!("{name}: must fire on the first occurrence (threshold above 0, one evaluation period)"));
    }
    if p["TreatMissingData"] != "notBreaching" {
        return Err(format!("{name}: no data must mean no alarm (TreatMissingData notBreaching)"));
    }
    Ok(())
}

/// The alarm watching `namespace`/`metric` with exactly these dimensions, if any.
fn alarm_on<'s>(
    alarms: &'s BTreeMap<String, Value>,
    namespace: &str,
    metric: &str,
    dims: &[(&str, &Value)],
) -> Option<(&'s String, &'s Value)> {
    alarms.iter().find(|(_, a)| {
        let p = &a["Properties"];
        let have: Vec<(String, Value)> = p["Dimensions"]
            .as_array()
            .map(|d| d.iter().map(|x| (x["Name"].as_str().unwrap_or("").to_owned(), x["Value"].clone())).collect())
            .unwrap_or_default();
        let want: Vec<(String, Value)> = dims.iter().map(|(n, v)| (n.to_string(), (*v).clone())).collect();
        p["Namespace"] == namespace && p["MetricName"] == metric && have == want
    })
}

/// Each function's error log lines, its dead-letter queue and its throttles are alarmed, and
/// every alarm notifies the stack's one alarm topic, which is an output (as are the DLQs' ARNs).
pub(crate) fn check_alarms(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let topics = stack.of_type("AWS::SNS::Topic")?;
        let [topic] = topics.keys().collect::<Vec<_>>()[..] else {
            return Err(format!("expected one alarm topic, found {}", topics.len()));
        };
        let topic_arn = stack.ref_of(topic)?;
        let outputs = stack.eval_some(&raw["Outputs"])?;
        if outputs["AlarmTopicArn"]["Value"] != topic_arn {
            return Err("the alarm topic is not the output AlarmTopicArn".into());
        }
        let alarms = stack.of_type("AWS::CloudWatch::Alarm")?;
        for (name, a) in &alarms {
            if a["Properties"]["AlarmActions"] != json!([topic_arn]) {
                return Err(format!(
                    "{name}: AlarmActions must be the alarm topic, is {}",
                    a["Properties"]["AlarmActions"]
                ));
            }
            fires_at_once(name, a)?;
        }
        let filters = stack.of_type("AWS::Logs::MetricFilter")?;
        let (queues, _) = queues(&stack)?;
        let output_values: Vec<&Value> =
            outputs.as_object().map(|o| o.values().map(|v| &v["Value"]).collect()).unwrap_or_default();
        for f in functions(&stack)? {
            // Error lines: the functions log JSON with "level" (tracing's JSON format).
            let filter = filters.values().find(|m| {
                m["Properties"]["LogGroupName"] == f.log_group.as_str()
                    && m["Properties"]["FilterPattern"] == r#"{ $.level = "ERROR" }"#
            });
            let Some(filter) = filter else {
                return Err(format!("{}: no metric filter counts the error lines of {}", f.name, f.log_group));
            };
            let t = &filter["Properties"]["MetricTransformations"][0];
            let (ns, metric) = (scalar(&t["MetricNamespace"])?, scalar(&t["MetricName"])?);
            if t["MetricValue"] != "1" {
                return Err(format!("{}: the error-line filter must count 1 per line", f.name));
            }
            match alarm_on(&alarms, &ns, &metric, &[]) {
                Some((_, a)) if a["Properties"]["Statistic"] == "Sum" => {}
                _ => return Err(format!("{}: no alarm on its error log lines ({ns}/{metric}, Sum)", f.name)),
            }
            // Throttles.
            let function = stack.ref_of(&f.name)?;
            if alarm_on(&alarms, "AWS/Lambda", "Throttles", &[("FunctionName", &function)]).is_none() {
                return Err(format!("{}: no alarm on its throttles", f.name));
            }
            // Its dead-letter queue: alarmed, and its ARN an output.
            let trigger = f.queue.rsplit(':').next().unwrap_or_default();
            let dlq_arn = queues
                .get(trigger)
                .and_then(|q| q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"].as_str())
                .ok_or_else(|| format!("{}: its queue has no dead-letter queue", f.name))?
                .to_owned();
            let dlq = dlq_arn.rsplit(':').next().unwrap_or_default();
            let depth =
                alarm_on(&alarms, "AWS/SQS", "ApproximateNumberOfMessagesVisible", &[("QueueName", &json!(dlq))]);
            if depth.is_none() {
                return Err(format!("{}: no alarm on the depth of its dead-letter queue {dlq}", f.name));
            }
            if !output_values.contains(&&json!(dlq_arn)) {
                return Err(format!("{}: the ARN of its dead-letter queue {dlq} is no output", f.name));
            }
        }
    }
    Ok(())
}

/// With AuditDeletes, a trail records every object delete under the key prefix into a retained
/// bucket of its own; without it, no trail.
pub(crate) fn check_delete_trail(raw: &Value) -> Check {
    for params in param_sets() {
        let stack = Stack::new(raw, &params)?;
        let trails = stack.of_type("AWS::CloudTrail::Trail")?;
        if !params.audit_deletes {
            if !trails.is_empty() || stack.resources()?.contains_key("DeleteTrailBucket") {
                return Err("a delete trail exists although AuditDeletes is false".into());
            }
            continue;
        }
        let [(name, trail)] = trails.iter().collect::<Vec<_>>()[..] else {
            return Err(format!("AuditDeletes: expected one trail, found {}", trails.len()));
        };
        let p = &trail["Properties"];
        if p["IsLogging"] != true || p["EnableLogFileValidation"] != true {
            return Err(format!("{name}: must be logging, with log file validation"));
        }
        let bucket = stack.resources()?.get("DeleteTrailBucket").cloned().ok_or("no DeleteTrailBucket")?;
        if p["S3BucketName"] != stack.ref_of("DeleteTrailBucket")? || bucket["DeletionPolicy"] != "Retain" {
            return Err(format!("{name}: must log into DeleteTrailBucket, which is retained"));
        }
        let field = |sel: &Value, f: &str, op: &str| -> Vec<String> {
            sel["FieldSelectors"]
                .as_array()
                .and_then(|fs| fs.iter().find(|x| x["Field"] == f))
                .map(|x| strings(&x[op]))
                .unwrap_or_default()
        };
        let objects = stack.object_arn("");
        let covered = p["AdvancedEventSelectors"].as_array().is_some_and(|sels| {
            sels.iter().any(|s| {
                let names = field(s, "eventName", "Equals");
                field(s, "eventCategory", "Equals") == ["Data"]
                    && field(s, "resources.type", "Equals") == ["AWS::S3::Object"]
                    && names.contains(&"DeleteObject".to_owned())
                    && names.contains(&"DeleteObjects".to_owned())
                    && field(s, "resources.ARN", "StartsWith").iter().any(|a| objects.starts_with(a.as_str()))
            })
        });
        if !covered {
            return Err(format!("{name}: no event selector records DeleteObject and DeleteObjects under {objects}"));
        }
    }
    Ok(())
}
