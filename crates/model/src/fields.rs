//! Every field accounted for: an object read from a user (a Service file, an API body) is
//! compared with what Skiff understood of it, so that a field Skiff does not implement is
//! refused by name instead of silently dropped. (Kubernetes ignores unknown fields; Cloud Run
//! refuses them, and a user who sees "deployed" must be able to trust that their config
//! holds.)

use serde_json::Value;

/// Paths (`spec.template.spec.volumes`, `spec.template.spec.containers[0].volumeMounts`) of
/// the fields in `input` that `understood` (the parsed object, serialized again) does not
/// have. A field whose value is null or an empty object, array or string carries nothing and
/// is not reported. Output-only fields ([`OUTPUT_ONLY`]), which a client may send back as it
/// read them, are never reported.
pub fn unknown_fields(input: &Value, understood: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, understood, "", &mut out);
    out.retain(|p| !OUTPUT_ONLY.contains(&p.as_str()));
    out
}

/// Fields the server writes and ignores on input (Kubernetes' output-only object fields).
pub const OUTPUT_ONLY: &[&str] = &["status", "metadata.selfLink", "metadata.managedFields"];

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn walk(input: &Value, understood: &Value, path: &str, out: &mut Vec<String>) {
    match (input, understood) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(w) => walk(v, w, &at, out),
                    None if empty(v) => {}
                    None => out.push(at),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                walk(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `unknown_fields` as one error: `spec.template.spec.volumes: Skiff does not implement this
/// field: remove it`, naming them all.
pub fn refuse_unknown_fields(
    input: &Value,
    understood: &impl serde::Serialize,
) -> Result<(), crate::InvalidInput> {
    let understood = serde_json::to_value(understood).unwrap_or(Value::Null);
    let unknown = unknown_fields(input, &understood);
    match unknown.as_slice() {
        [] => Ok(()),
        [one] => Err(crate::InvalidInput::new(format!(
            "{one}: Skiff does not implement this field: remove it"
        ))),
        many => Err(crate::InvalidInput::new(format!(
            "{}: Skiff does not implement these fields: remove them",
            many.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_lost_in_parsing_are_named() {
        let input = json!({
            "metadata": {"name": "a", "selfLink": "x", "generateName": "g"},
            "spec": {"template": {"spec": {
                "volumes": [{"name": "v", "emptyDir": {"medium": "Memory"}}],
                "containers": [{"image": "i", "ports": [{"containerPort": 1}]},
                               {"image": "j", "volumeMounts": [{"name": "v"}], "tty": null}],
                "nothing": {},
            }}},
            "status": {"url": "u"},
        });
        let understood = json!({
            "metadata": {"name": "a"},
            "spec": {"template": {"spec": {
                "containers": [{"image": "i", "ports": [{"containerPort": 1}]}, {"image": "j"}],
            }}},
        });
        assert_eq!(
            unknown_fields(&input, &understood),
            [
                "metadata.generateName",
                "spec.template.spec.containers[1].volumeMounts",
                "spec.template.spec.volumes",
            ]
        );
        assert!(unknown_fields(&understood, &understood).is_empty());
    }

    #[test]
    fn a_parsed_service_keeps_every_field_it_knows() {
        let input = json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "s", "annotations": {"any/thing": "kept"}},
            "spec": {"template": {"spec": {"containerConcurrency": 0, "containers": [{
                "image": "i", "ports": [{"name": "http1", "containerPort": 8080}],
                "env": [{"name": "A", "value": ""}],
                "startupProbe": {"tcpSocket": {}, "periodSeconds": 1},
            }]}}},
        });
        let svc: crate::Service = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(refuse_unknown_fields(&input, &svc), Ok(()));
        let mut bad = input.clone();
        bad["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["exec"] =
            json!({"command": ["true"]});
        let svc: crate::Service = serde_json::from_value(bad.clone()).unwrap();
        assert_eq!(
            refuse_unknown_fields(&bad, &svc).unwrap_err().to_string(),
            "spec.template.spec.containers[0].startupProbe.exec: Skiff does not implement this field: remove it"
        );
    }
}
