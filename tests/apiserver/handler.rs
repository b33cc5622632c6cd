//! One request: authenticate, route, authorize, maybe fail on purpose, then do it on the store.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use snapback::cluster::mem::Part;
use snapback::cluster::{ApiError, ApiErrorKind};

use super::admission::{self, as_stored};
use super::patch;
use super::rbac::{authorize, Attributes};
use super::resources::{discovery, from_crd, table, Resource};
use super::{Audit, Identity, Shared, ADMIN, ANONYMOUS};

/// An answer before it becomes HTTP: status, JSON body, extra headers.
struct Answer {
    code: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
    drop_connection: bool,
    /// Never answer: a request that hangs until the client gives up.
    hang: bool,
    watch: Option<Box<Watch>>,
}

/// An open watch: changes of one kind after a resourceVersion, as JSON lines.
struct Watch {
    kind: String,
    namespace: Option<String>,
    since: u64,
    selector: String,
    bookmarks: bool,
    /// Objects that exist when the watch starts, sent first as ADDED (no resourceVersion given).
    initial: Vec<Value>,
    until: std::time::Instant,
    api_version: String,
    short_kind: String,
    /// Who watches: the bytes sent are counted for them.
    user: String,
}

fn ok(code: u16, body: Value) -> Answer {
    Answer {
        code,
        body,
        headers: Vec::new(),
        drop_connection: false,
        hang: false,
        watch: None,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Answer {
    ok(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn from_api_error(e: &ApiError) -> Answer {
    let (code, reason) = match e.kind {
        ApiErrorKind::NotFound => (404, "NotFound"),
        ApiErrorKind::AlreadyExists => (409, "AlreadyExists"),
        ApiErrorKind::Conflict => (409, "Conflict"),
        ApiErrorKind::Invalid => (422, "Invalid"),
        ApiErrorKind::Forbidden => (403, "Forbidden"),
        _ => (500, "InternalError"),
    };
    status(code, reason, &e.message)
}

pub async fn serve(sh: std::sync::Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let a = handle(&sh, &parts.method, &path, &query, &parts.headers, &bytes);
    let mut b = Response::builder()
        .status(StatusCode::from_u16(a.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (k, v) in &a.headers {
        b = b.header(*k, v);
    }
    if let Some(w) = a.watch {
        return b.body(Body::from_stream(watch_stream(sh, w))).unwrap();
    }
    if a.hang {
        // The client's timeout drops the connection, and with it this future.
        std::future::pending::<()>().await;
    }
    if a.drop_connection {
        // Headers go out, then the body stream fails: the client sees the connection die.
        let s = futures::stream::iter([
            Ok(Bytes::from_static(b"{\"kind\":")),
            Err(std::io::Error::other(
                "connection dropped by an injected fault",
            )),
        ]);
        return b.body(Body::from_stream(s)).unwrap();
    }
    b.body(Body::from(a.body.to_string())).unwrap()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Where a resource path points.
struct Target {
    resource: Resource,
    namespace: String,
    name: String,
    sub: String,
}

fn route(sh: &Shared, segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => (ns.to_string(), {
            let mut r = vec![*plural];
            r.extend_from_slice(more);
            r
        }),
        other => (String::new(), other.to_vec()),
    };
    let plural = rest.first()?;
    let resources = sh.resources.lock().unwrap();
    let resource = resources
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == *plural)?
        .clone();
    Some(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()).unwrap_or_default(),
        sub: rest.get(2).map(|s| s.to_string()).unwrap_or_default(),
    })
}

fn verb_of(method: &Method, has_name: bool, q: &BTreeMap<String, String>) -> &'static str {
    match *method {
        Method::GET if !has_name && q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            "watch"
        }
        Method::GET if has_name => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// The user a request authenticates as. No credentials at all is `system:anonymous`, as with
/// the apiserver's default `--anonymous-auth` (kubectl sends no token over plain HTTP); a
/// token the stand-in did not issue is refused.
fn user_of(sh: &Shared, headers: &HeaderMap) -> Option<Identity> {
    let Some(h) = headers.get("authorization") else {
        return Some(Identity {
            username: ANONYMOUS.to_string(),
            extra: BTreeMap::new(),
        });
    };
    let token = h.to_str().ok()?.strip_prefix("Bearer ")?;
    sh.tokens.lock().unwrap().get(token.trim()).cloned()
}

fn handle(
    sh: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let Some(who) = user_of(sh, headers) else {
        return status(401, "Unauthorized", "Unauthorized");
    };
    let user = who.username.clone();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs == ["version"] {
        return ok(
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-snapback-standin",
                   "platform": "linux/amd64"}),
        );
    }
    if let Some(d) = discovery(&sh.resources.lock().unwrap(), &segs) {
        return ok(200, d);
    }
    let Some(t) = route(sh, &segs) else {
        return status(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
    };
    let q = query_map(query);
    let verb = verb_of(method, !t.name.is_empty(), &q);
    let resource = if t.sub.is_empty() {
        t.resource.plural.clone()
    } else {
        format!("{}/{}", t.resource.plural, t.sub)
    };
    let attrs = Attributes {
        verb: verb.to_string(),
        group: t.resource.group.clone(),
        resource: resource.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
    };
    let answer = if user == ADMIN {
        None
    } else {
        match authorize(&sh.store, &user, &attrs) {
            Some(g) => {
                sh.used.lock().unwrap().insert(g);
                None
            }
            None => Some(status(
                403,
                "Forbidden",
                &format!(
                    "{resource}.{} \"{}\" is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\"{}",
                    t.resource.group,
                    t.name,
                    t.resource.group,
                    if t.namespace.is_empty() { " at the cluster scope".to_string() } else { format!(" in the namespace \"{}\"", t.namespace) }
                ),
            )),
        }
    };
    let mut answer = answer
        .or_else(|| injected(sh, verb, &resource))
        .unwrap_or_else(|| act(sh, &who, method, &t, &q, headers, body, verb));
    if let Some(w) = answer.watch.as_mut() {
        w.user = user.clone();
    }
    sh.audit.lock().unwrap().push(Audit {
        user,
        verb: verb.to_string(),
        resource,
        namespace: t.namespace,
        name: t.name,
        code: if answer.drop_connection {
            0
        } else {
            answer.code
        },
        at: std::time::Instant::now(),
        bytes: if answer.watch.is_some() {
            0
        } else {
            answer.body.to_string().len()
        },
    });
    answer
}

fn injected(sh: &Shared, verb: &str, resource: &str) -> Option<Answer> {
    let mut faults = sh.faults.lock().unwrap();
    let i = faults.iter().position(|f| {
        f.times > 0
            && (f.verb == "*" || f.verb == verb)
            && (f.resource == "*" || f.resource == resource)
    })?;
    let f = &mut faults[i];
    f.times -= 1;
    let mut a = match f.code {
        0 => {
            let mut a = ok(200, Value::Null);
            a.drop_connection = true;
            a
        }
        1 => {
            let mut a = ok(504, Value::Null);
            a.hang = true;
            a
        }
        403 => status(403, "Forbidden", "injected: forbidden"),
        422 => status(422, "Invalid", "injected: invalid"),
        429 => status(429, "TooManyRequests", "injected: too many requests"),
        409 => status(409, "Conflict", "injected: conflict"),
        c => status(c, "InternalError", "injected: internal error"),
    };
    if let Some(s) = f.retry_after {
        // As the apiserver says it: the header, and the Status's details.
        a.headers.push(("retry-after", s.to_string()));
        a.body["details"] = json!({"retryAfterSeconds": s});
    }
    Some(a)
}

fn parse_body(body: &[u8]) -> Result<Value, Answer> {
    serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_slice::<Value>(body).map_err(|e| e.to_string()))
        .map_err(|e| status(400, "BadRequest", &format!("cannot decode the body: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn act(
    sh: &Shared,
    who: &Identity,
    method: &Method,
    t: &Target,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    verb: &str,
) -> Answer {
    let r = &t.resource;
    let scope_ok = if r.namespaced {
        !t.namespace.is_empty() || verb == "list" || verb == "watch"
    } else {
        t.namespace.is_empty()
    };
    if !scope_ok {
        return status(
            404,
            "NotFound",
            "the resource's scope does not match the path",
        );
    }
    let sub_ok = t.sub.is_empty() || (t.sub == "status" && r.status_subresource);
    if !sub_ok {
        return status(404, "NotFound", &format!("no subresource {}", t.sub));
    }
    let part = if t.sub == "status" {
        Part::Status
    } else {
        Part::Main {
            status_apart: r.status_subresource,
        }
    };
    match verb {
        "watch" => watch(sh, r, t, q),
        "list" => list(sh, r, t, q, headers),
        "get" => match sh.store.raw_get(&r.store_kind(), &t.namespace, &t.name) {
            Some(v) => ok(200, v),
            None => not_found(r, &t.name),
        },
        "create" => {
            let v = match parse_body(body) {
                Ok(v) => v,
                Err(a) => return a,
            };
            match create(sh, who, r, &t.namespace, v) {
                Ok(v) => ok(201, v),
                Err(a) => a,
            }
        }
        "update" => {
            let mut v = match parse_body(body) {
                Ok(v) => v,
                Err(a) => return a,
            };
            if v["metadata"]["name"].as_str() != Some(t.name.as_str()) {
                return status(
                    400,
                    "BadRequest",
                    "the name in the body does not match the URL",
                );
            }
            if r.namespaced {
                v["metadata"]["namespace"] = Value::String(t.namespace.clone());
            }
            // Admission sees the object as it would be stored; a missing one is NotFound below.
            if let Some(old) = sh.store.raw_get(&r.store_kind(), &t.namespace, &t.name) {
                let new = as_stored(&old, &v, part);
                if let Err(a) = admit(sh, who, "UPDATE", r, t, &new, Some(&old)) {
                    return a;
                }
            }
            match sh.store.raw_replace(&r.store_kind(), v, part, r.custom) {
                Ok(v) => {
                    disown(sh, r, t, part, &v);
                    ok(200, v)
                }
                Err(e) => from_api_error(&e),
            }
        }
        "patch" => patch_object(sh, who, r, t, q, headers, body, part),
        "delete" => match sh.store.raw_delete(&r.store_kind(), &t.namespace, &t.name) {
            Ok(Some(v)) => ok(200, v),
            Ok(None) => ok(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                       "details": {"name": t.name, "kind": r.plural}}),
            ),
            Err(e) => from_api_error(&e),
        },
        _ => {
            let _ = method;
            status(405, "MethodNotAllowed", "not supported")
        }
    }
}

fn not_found(r: &Resource, name: &str) -> Answer {
    status(
        404,
        "NotFound",
        &format!("{}.{} \"{name}\" not found", r.plural, r.group),
    )
}

/// The bound admission policies on a write of `t` by `who`, as an answer when they deny it.
fn admit(
    sh: &Shared,
    who: &Identity,
    operation: &str,
    r: &Resource,
    t: &Target,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), Answer> {
    let req = admission::Request {
        who,
        operation,
        resource: r,
        sub: &t.sub,
        namespace: &t.namespace,
        name: &t.name,
    };
    admission::admit(&sh.store, &req, new, old).map_err(|d| status(d.code, &d.reason, &d.message))
}

fn create(
    sh: &Shared,
    who: &Identity,
    r: &Resource,
    ns: &str,
    mut v: Value,
) -> Result<Value, Answer> {
    if r.namespaced {
        match v["metadata"]["namespace"].as_str() {
            Some(n) if n != ns => {
                return Err(status(
                    400,
                    "BadRequest",
                    "the namespace of the object does not match the namespace on the request",
                ))
            }
            _ => v["metadata"]["namespace"] = Value::String(ns.to_string()),
        }
    }
    if v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        if let Some(g) = v["metadata"]["generateName"].as_str() {
            let suffix = &uuid::Uuid::new_v4().simple().to_string()[..5];
            v["metadata"]["name"] = Value::String(format!("{g}{suffix}"));
        }
    }
    v["apiVersion"] = Value::String(r.api_version());
    v["kind"] = Value::String(r.kind.clone());
    let target = Target {
        resource: r.clone(),
        namespace: ns.to_string(),
        name: v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        sub: String::new(),
    };
    admit(sh, who, "CREATE", r, &target, &v, None)?;
    let hooks: Vec<_> = sh
        .create_hooks
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == r.store_kind())
        .map(|(_, h)| h.clone())
        .collect();
    for h in hooks {
        match h(&v) {
            super::OnCreate::Store => {}
            super::OnCreate::Deny(code, reason, message) => {
                return Err(status(code, &reason, &message))
            }
            super::OnCreate::Answer(a) => return Ok(a),
        }
    }
    let stored = sh
        .store
        .raw_create(&r.store_kind(), v, r.status_subresource)
        .map_err(|e| from_api_error(&e))?;
    if r.kind == "CustomResourceDefinition" {
        sh.resources.lock().unwrap().extend(from_crd(&stored));
    }
    Ok(stored)
}

/// Creates as the admin: used by the tests to apply rendered manifests.
pub fn create_as_admin(sh: &Shared, v: Value) -> Result<Value, String> {
    let api_version = v["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = v["kind"].as_str().unwrap_or_default().to_string();
    let r = sh
        .resources
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
        .cloned()
        .ok_or_else(|| format!("the stand-in does not serve {api_version} {kind}"))?;
    let ns = if r.namespaced {
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    let admin = Identity {
        username: ADMIN.to_string(),
        extra: BTreeMap::new(),
    };
    create(sh, &admin, &r, &ns, v).map_err(|a| a.body.to_string())
}

fn selector_matches(v: &Value, sel: &str) -> bool {
    let labels = &v["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(|x| x.as_str());
    sel.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, val)) = term.split_once("!=") {
            get(k.trim()) != Some(val.trim())
        } else if let Some((k, val)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(val.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term.trim()).is_some()
        }
    })
}

fn list(
    sh: &Shared,
    r: &Resource,
    t: &Target,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Answer {
    let ns = (!t.namespace.is_empty()).then_some(t.namespace.as_str());
    let (all, rv) = sh.store.raw_list(&r.store_kind(), ns);
    let sel = q.get("labelSelector").cloned().unwrap_or_default();
    let key = |v: &Value| {
        format!(
            "{}/{}",
            v["metadata"]["namespace"].as_str().unwrap_or_default(),
            v["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    // `continue` is the key of the last item sent: the next page starts after it.
    let after = q.get("continue").cloned().unwrap_or_default();
    let mut items: Vec<Value> = all
        .into_iter()
        .filter(|v| selector_matches(v, &sel))
        .filter(|v| after.is_empty() || key(v) > after)
        .collect();
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut cont = String::new();
    if let Some(l) = limit {
        if items.len() > l {
            items.truncate(l);
            cont = key(items.last().expect("a full page"));
        }
    }
    let wants_table = headers
        .get("accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    if wants_table {
        return ok(200, table(r, &items, rv, jiff::Timestamp::now()));
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if !cont.is_empty() {
        meta["continue"] = Value::String(cont);
    }
    ok(
        200,
        json!({"apiVersion": r.api_version(), "kind": format!("{}List", r.kind),
               "metadata": meta, "items": items}),
    )
}

#[allow(clippy::too_many_arguments)]
fn patch_object(
    sh: &Shared,
    who: &Identity,
    r: &Resource,
    t: &Target,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    part: Part,
) -> Answer {
    let ctype = headers
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    let p = match parse_body(body) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let kind = r.store_kind();
    let apply = ctype == "application/apply-patch+yaml";
    let supported = apply
        || ctype == "application/merge-patch+json"
        || (ctype == "application/strategic-merge-patch+json" && !r.custom);
    if !supported {
        return status(
            415,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/apply-patch+yaml (got {ctype})"),
        );
    }
    // A patch is read, merged and written with the version read: a concurrent write in
    // between is a conflict inside the stand-in, which then simply tries again.
    for _ in 0..10 {
        let live = sh.store.raw_get(&kind, &t.namespace, &t.name);
        let Some(live) = live else {
            if apply && part != Part::Status {
                let mut v = p.clone();
                let mut applied = BTreeMap::new();
                let manager = q.get("fieldManager").cloned().unwrap_or_default();
                applied.insert(manager, p.clone());
                v["metadata"]["name"] = Value::String(t.name.clone());
                return match create(sh, who, r, &t.namespace, v) {
                    Ok(v) => {
                        sh.applied
                            .lock()
                            .unwrap()
                            .insert(object_key(r, t, false), applied);
                        ok(201, v)
                    }
                    Err(a) => a,
                };
            }
            return not_found(r, &t.name);
        };
        let mut new = live.clone();
        if apply {
            let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return status(422, "Invalid", "fieldManager is required for apply patch");
            };
            let force = q.get("force").is_some_and(|f| f == "true");
            let okey = object_key(r, t, part == Part::Status);
            let mut all = sh.applied.lock().unwrap();
            let applied = all.entry(okey).or_default();
            let mut trial = applied.clone();
            if let Err(fields) = patch::apply(&mut new, &p, manager, force, &mut trial) {
                return status(
                    409,
                    "Conflict",
                    &format!(
                        "Apply failed with {} conflicts: {}",
                        fields.len(),
                        fields.join(", ")
                    ),
                );
            }
            *applied = trial;
        } else {
            patch::merge(&mut new, &p);
        }
        let asked_version = p["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        new["metadata"]["resourceVersion"] = match &asked_version {
            Some(v) => Value::String(v.clone()),
            None => live["metadata"]["resourceVersion"].clone(),
        };
        new["metadata"]["name"] = Value::String(t.name.clone());
        if let Err(a) = admit(
            sh,
            who,
            "UPDATE",
            r,
            t,
            &as_stored(&live, &new, part),
            Some(&live),
        ) {
            return a;
        }
        match sh.store.raw_replace(&kind, new, part, false) {
            Ok(v) => {
                if !apply {
                    disown(sh, r, t, part, &v);
                }
                return ok(200, v);
            }
            Err(e) if e.is(ApiErrorKind::Conflict) && asked_version.is_none() => continue,
            Err(e) => return from_api_error(&e),
        }
    }
    status(409, "Conflict", "the object kept changing")
}

fn object_key(r: &Resource, t: &Target, status: bool) -> super::ObjectKey {
    (r.store_kind(), t.namespace.clone(), t.name.clone(), status)
}

fn watch(sh: &Shared, r: &Resource, t: &Target, q: &BTreeMap<String, String>) -> Answer {
    let ns = (!t.namespace.is_empty()).then(|| t.namespace.clone());
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let asked = q.get("resourceVersion").cloned().unwrap_or_default();
    let (initial, since) = if asked.is_empty() || asked == "0" {
        sh.store.raw_list(&r.store_kind(), ns.as_deref())
    } else {
        let Ok(v) = asked.parse::<u64>() else {
            return status(400, "BadRequest", "resourceVersion is not a number");
        };
        (Vec::new(), v)
    };
    let mut a = ok(200, Value::Null);
    a.watch = Some(Box::new(Watch {
        kind: r.store_kind(),
        namespace: ns,
        since,
        selector: q.get("labelSelector").cloned().unwrap_or_default(),
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        initial,
        until: std::time::Instant::now() + std::time::Duration::from_secs(timeout),
        api_version: r.api_version(),
        short_kind: r.kind.clone(),
        user: String::new(),
    }));
    a
}

type Chunk = Result<Bytes, std::io::Error>;

fn line(v: Value) -> Chunk {
    Ok(Bytes::from(format!("{v}\n")))
}

/// Sends one line of a watch and counts its bytes for `user`; false when the client is gone.
async fn send(tx: &tokio::sync::mpsc::Sender<Chunk>, sh: &Shared, user: &str, v: Value) -> bool {
    let chunk = line(v);
    let n = chunk.as_ref().map_or(0, |b| b.len() as u64);
    if tx.send(chunk).await.is_err() {
        return false;
    }
    *sh.streamed
        .lock()
        .unwrap()
        .entry(user.to_string())
        .or_default() += n;
    true
}

/// The lines of a watch: first the initial objects, then every change as it happens (the
/// store is looked at every 50 ms), a BOOKMARK when idle for a second, and one ERROR with a
/// 410 Status when the asked resourceVersion is older than the changes the store keeps.
/// The feeding task ends when the client goes away (the channel closes).
fn watch_stream(
    sh: std::sync::Arc<Shared>,
    mut w: Box<Watch>,
) -> impl futures::Stream<Item = Chunk> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(64);
    tokio::spawn(async move {
        for o in std::mem::take(&mut w.initial) {
            if selector_matches(&o, &w.selector)
                && !send(&tx, &sh, &w.user, json!({"type": "ADDED", "object": o})).await
            {
                return;
            }
        }
        let mut idle = 0;
        while std::time::Instant::now() < w.until && !tx.is_closed() {
            let (changes, newest) =
                match sh
                    .store
                    .raw_changes_since(&w.kind, w.namespace.as_deref(), w.since)
                {
                    Ok(c) => c,
                    Err(msg) => {
                        let st = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": msg, "reason": "Expired", "code": 410});
                        send(&tx, &sh, &w.user, json!({"type": "ERROR", "object": st})).await;
                        return;
                    }
                };
            for c in changes
                .iter()
                .filter(|c| selector_matches(&c.object, &w.selector))
            {
                let ev = json!({"type": c.type_, "object": c.object});
                if !send(&tx, &sh, &w.user, ev).await {
                    return;
                }
            }
            idle = if changes.is_empty() { idle + 1 } else { 0 };
            w.since = newest;
            if w.bookmarks && idle == 20 {
                let b = json!({"type": "BOOKMARK", "object": {
                    "apiVersion": w.api_version, "kind": w.short_kind,
                    "metadata": {"resourceVersion": newest.to_string()}}});
                if !send(&tx, &sh, &w.user, b).await {
                    return;
                }
                idle = 0;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Ownership after an update or merge patch: see `patch::disown_changed`.
fn disown(sh: &Shared, r: &Resource, t: &Target, part: Part, stored: &Value) {
    let mut all = sh.applied.lock().unwrap();
    if let Some(applied) = all.get_mut(&object_key(r, t, part == Part::Status)) {
        patch::disown_changed(applied, stored);
    }
}
