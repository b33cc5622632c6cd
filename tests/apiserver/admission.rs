//! ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1) as the apiserver applies
//! them, from the policies and bindings stored in the stand-in (in the tests: those
//! `helm template` renders from the chart), to creates, updates and patches, after RBAC and
//! before the write. Expressions run in a CEL interpreter (the `cel` crate) with the variables
//! `request`, `object`, `oldObject` (null on create) and `variables`.
//!
//! A denial answers as the apiserver does: the failed validation's `reason` (Invalid when it
//! has none) with its HTTP code (Invalid 422, Forbidden 403, Unauthorized 401,
//! RequestEntityTooLarge 413), and the message `<resource>.<group> "<name>" is forbidden:
//! ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied request: <message>`,
//! where the message is the validation's messageExpression, else its message, else
//! `failed expression: <expression>`.
//!
//! Modelled: matchConstraints.resourceRules and excludeResourceRules (groups, versions,
//! resources with subresources and `*`, operations, scope), a binding's own resourceRules,
//! matchConditions (a false one skips the policy; an error one follows failurePolicy),
//! variables, validations, failurePolicy (default Fail), validationActions Deny. Variables are
//! evaluated in order before the validations, not lazily, so a variable that fails fails the
//! policy even if no validation reads it. Not modelled: namespaceSelector and objectSelector,
//! params (a policy with paramKind counts as misconfigured), auditAnnotations, the Warn and
//! Audit actions, the `authorizer` and `namespaceObject` variables, type checking of the
//! expressions against the schemas, and userInfo's uid and groups (always empty).

use std::collections::HashMap;

use serde_json::{json, Value};
use snapback::cluster::mem::{MemStore, Part};

use super::resources::Resource;
use super::Identity;

const POLICY: &str = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";
const BINDING: &str = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding";

/// One write as admission sees it.
pub struct Request<'a> {
    pub who: &'a Identity,
    /// `CREATE` or `UPDATE` (a patch is an update).
    pub operation: &'a str,
    pub resource: &'a Resource,
    /// "" or `status`.
    pub sub: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Why a write was refused, as the Status the stand-in answers with.
#[derive(Debug)]
pub struct Denial {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// The object an update would store, which is what a policy sees as `object`: a write of the
/// status subresource changes only the status, a write of the object keeps the stored status
/// when status is a subresource (as `MemStore::raw_replace` does).
pub fn as_stored(old: &Value, new: &Value, part: Part) -> Value {
    let (mut out, status) = match part {
        Part::Status => (old.clone(), new.get("status")),
        Part::Main { status_apart: true } => (new.clone(), old.get("status")),
        Part::Main {
            status_apart: false,
        } => return new.clone(),
    };
    let status = status.cloned();
    if let Some(m) = out.as_object_mut() {
        match status {
            Some(s) => m.insert("status".into(), s),
            None => m.remove("status"),
        };
    }
    out
}

/// Runs every bound policy that matches the write; the first denial wins.
pub fn admit(
    store: &MemStore,
    req: &Request,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), Denial> {
    let policies = store.raw_list(POLICY, None).0;
    if policies.is_empty() {
        return Ok(());
    }
    // Converted once, and only when some policy matches the write.
    let mut vars = None;
    for binding in store.raw_list(BINDING, None).0 {
        let bspec = &binding["spec"];
        // A binding of a policy that does not exist is ignored, as documented.
        let Some(policy) = policies
            .iter()
            .find(|p| p["metadata"]["name"] == bspec["policyName"])
        else {
            continue;
        };
        let spec = &policy["spec"];
        if !strs(&bspec["validationActions"]).contains(&"Deny".to_string())
            || !matches(&spec["matchConstraints"], req, true)
            || !matches(&bspec["matchResources"], req, false)
        {
            continue;
        }
        // `<plural>.<group>`, or the plural alone for the core group, as the apiserver names it.
        let resource = [req.resource.plural.as_str(), req.resource.group.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(".");
        let denial = |reason: &str, message: String| Denial {
            code: code_of(reason),
            reason: reason.to_string(),
            message: format!(
                "{resource} \"{}\" is forbidden: ValidatingAdmissionPolicy '{}' with binding '{}' \
                 denied request: {message}",
                req.name,
                policy["metadata"]["name"].as_str().unwrap_or_default(),
                binding["metadata"]["name"].as_str().unwrap_or_default(),
            ),
        };
        let fail_closed = spec["failurePolicy"].as_str() != Some("Ignore");
        let (request, object, old) = vars.get_or_insert_with(|| {
            let cel = |v: &Value| cel::to_value(v).expect("JSON converts to CEL");
            (
                cel(&request_of(req)),
                cel(object),
                cel(old.unwrap_or(&Value::Null)),
            )
        });
        match evaluate(spec, request, object, old) {
            Ok(Outcome::Allowed) => {}
            Ok(Outcome::Denied { reason, message }) => return Err(denial(&reason, message)),
            Err(e) if fail_closed => return Err(denial("Invalid", e)),
            Err(_) => {}
        }
    }
    Ok(())
}

enum Outcome {
    Allowed,
    Denied { reason: String, message: String },
}

/// One policy on one request. Err is a failure (a misconfiguration or an expression that does
/// not compile or evaluate), which failurePolicy decides on.
fn evaluate(
    spec: &Value,
    request: &cel::Value,
    object: &cel::Value,
    old: &cel::Value,
) -> Result<Outcome, String> {
    let mut vars: HashMap<String, cel::Value> = HashMap::new();
    let run = |expr: &str, vars: &HashMap<String, cel::Value>| -> Result<cel::Value, String> {
        let program = cel::Program::compile(expr)
            .map_err(|e| format!("compilation failed for expression '{expr}': {e:?}"))?;
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("request", request.clone());
        ctx.add_variable_from_value("object", object.clone());
        ctx.add_variable_from_value("oldObject", old.clone());
        ctx.add_variable_from_value("variables", cel::Value::from(vars.clone()));
        program
            .execute(&ctx)
            .map_err(|e| format!("expression '{expr}' resulted in error: {e}"))
    };
    let truth = |expr: &str, vars: &HashMap<String, cel::Value>| match run(expr, vars)? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!("expression '{expr}' is not a bool: {other:?}")),
    };
    if spec.get("paramKind").is_some() {
        return Err("params are not modelled by the stand-in".into());
    }
    // Every false condition skips the policy, even when another one fails.
    let mut failed = None;
    for c in spec["matchConditions"].as_array().into_iter().flatten() {
        match truth(c["expression"].as_str().unwrap_or_default(), &vars) {
            Ok(true) => {}
            Ok(false) => return Ok(Outcome::Allowed),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    for v in spec["variables"].as_array().into_iter().flatten() {
        let value = run(v["expression"].as_str().unwrap_or_default(), &vars)?;
        vars.insert(v["name"].as_str().unwrap_or_default().to_string(), value);
    }
    for v in spec["validations"].as_array().into_iter().flatten() {
        let expr = v["expression"].as_str().unwrap_or_default();
        if truth(expr, &vars)? {
            continue;
        }
        let from_expression = v["messageExpression"]
            .as_str()
            .and_then(|m| match run(m, &vars) {
                Ok(cel::Value::String(s)) => Some(s.to_string()),
                _ => None,
            });
        let message = from_expression
            .or_else(|| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("failed expression: {expr}"));
        let reason = v["reason"].as_str().unwrap_or("Invalid").to_string();
        return Ok(Outcome::Denied { reason, message });
    }
    Ok(Outcome::Allowed)
}

/// The `request` variable: the AdmissionRequest fields a policy reads. An empty extra is left
/// out (the field is `omitempty` in authentication/v1 UserInfo), so a policy that reads it
/// without `has()` fails here as it may on a real apiserver.
fn request_of(req: &Request) -> Value {
    let r = req.resource;
    let mut user = json!({"username": req.who.username, "uid": "", "groups": []});
    if !req.who.extra.is_empty() {
        user["extra"] = json!(req.who.extra);
    }
    json!({
        "kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "resource": {"group": r.group, "version": r.version, "resource": r.plural},
        "subResource": req.sub,
        "requestKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "requestResource": {"group": r.group, "version": r.version, "resource": r.plural},
        "requestSubResource": req.sub,
        "name": req.name,
        "namespace": req.namespace,
        "operation": req.operation,
        "userInfo": user,
        "dryRun": false,
    })
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// Whether MatchResources select the request: some resourceRule and no excludeResourceRule.
/// Without resourceRules a policy matches nothing (they are required there) and a binding
/// everything its policy matches.
fn matches(m: &Value, req: &Request, rules_required: bool) -> bool {
    let rule_matches = |rule: &Value| {
        let any =
            |field: &str, want: &str| strs(&rule[field]).iter().any(|x| x == "*" || x == want);
        let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
            "Cluster" => !req.resource.namespaced,
            "Namespaced" => req.resource.namespaced,
            _ => true,
        };
        any("apiGroups", &req.resource.group)
            && any("apiVersions", &req.resource.version)
            && any("operations", req.operation)
            && strs(&rule["resources"])
                .iter()
                .any(|x| resource_matches(x, &req.resource.plural, req.sub))
            && scope_ok
    };
    let listed = |field: &str| m[field].as_array().cloned().unwrap_or_default();
    let include = listed("resourceRules");
    let included = if include.is_empty() {
        !rules_required
    } else {
        include.iter().any(rule_matches)
    };
    included && !listed("excludeResourceRules").iter().any(rule_matches)
}

/// `plural` is the resource only, `plural/sub` one subresource, `plural/*` every subresource
/// of it, `*` every resource but no subresource, `*/sub` that subresource of every resource,
/// `*/*` everything.
fn resource_matches(entry: &str, plural: &str, sub: &str) -> bool {
    let (r, s) = entry.split_once('/').unwrap_or((entry, ""));
    (r == "*" || r == plural) && (s == sub || (s == "*" && (r == "*" || !sub.is_empty())))
}

fn code_of(reason: &str) -> u16 {
    match reason {
        "Forbidden" => 403,
        "Unauthorized" => 401,
        "RequestEntityTooLarge" => 413,
        _ => 422,
    }
}
