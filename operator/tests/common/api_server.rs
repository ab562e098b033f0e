//! An in-memory Kubernetes API server: enough of the REST surface the
//! controller uses (get, list by label, server-side apply, status apply,
//! delete, events).

use super::*;

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
        ),
    )
        .into_response()
}

fn matches_selector(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|kv| {
        let Some((k, v)) = kv.split_once('=') else {
            return false;
        };
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// The in-memory API server's state. Objects are keyed by
/// `(collection, name)` where the collection is the API path without the
/// namespace (`apis/apps/v1/statefulsets`), all in namespace [`NS`].
#[derive(Default)]
pub struct ApiState {
    pub objects: BTreeMap<(String, String), Value>,
    pub events: Vec<Value>,
    /// Collections that answer 404 as if the API did not exist (old Kubernetes).
    pub missing_apis: BTreeSet<String>,
    /// Every write, in order (`PATCH apis/apps/v1/statefulsets/orders`), for assertions.
    pub writes: Vec<String>,
    next_rv: u64,
}

impl ApiState {
    fn stamp(&mut self, obj: &mut Value, name: &str, fresh: bool) {
        self.next_rv += 1;
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = self.next_rv.to_string().into();
        meta["name"] = name.into();
        meta["namespace"] = NS.into();
        if fresh {
            meta["uid"] = format!("uid-{name}-{:08}", self.next_rv).into();
            meta["generation"] = 1.into();
            meta["creationTimestamp"] = "2026-11-22T00:00:00Z".into();
        }
    }

    pub fn get(&self, coll: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(coll.to_string(), name.to_string()))
    }

    pub fn names(&self, coll: &str) -> Vec<String> {
        self.objects
            .keys()
            .filter(|(c, _)| c == coll)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn put(&mut self, coll: &str, name: &str, mut obj: Value) {
        let fresh = !self.objects.contains_key(&(coll.into(), name.into()));
        if !fresh {
            let old = &self.objects[&(coll.to_string(), name.to_string())];
            obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
            obj["metadata"]["generation"] = old["metadata"]["generation"].clone();
            obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        self.stamp(&mut obj, name, fresh);
        self.objects.insert((coll.into(), name.into()), obj);
    }

    pub fn remove(&mut self, coll: &str, name: &str) -> Option<Value> {
        self.objects.remove(&(coll.to_string(), name.to_string()))
    }

    /// Server-side apply, simplified: the applied object's top-level fields
    /// replace the stored ones (one field manager owns everything here), labels,
    /// annotations and owner references are taken from the applied object, and
    /// the generation moves when the spec changes.
    fn apply(&mut self, coll: &str, name: &str, body: Value, status_only: bool) -> Value {
        let key = (coll.to_string(), name.to_string());
        let mut obj = match self.objects.get(&key) {
            Some(o) => o.clone(),
            None if status_only => return not_found_value(),
            None => {
                let mut o = json!({"metadata": {}});
                self.stamp(&mut o, name, true);
                o
            }
        };
        if status_only {
            obj["status"] = body["status"].clone();
        } else {
            let Value::Object(fields) = &body else {
                return obj;
            };
            for (k, v) in fields {
                if k == "metadata" {
                    for m in ["labels", "annotations", "ownerReferences"] {
                        if !v[m].is_null() {
                            obj["metadata"][m] = v[m].clone();
                        }
                    }
                } else if k != "status" {
                    if k == "spec" && obj.get("spec").is_some_and(|s| s != v) {
                        let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                        obj["metadata"]["generation"] = (g + 1).into();
                    }
                    obj[k] = v.clone();
                }
            }
        }
        self.stamp(&mut obj, name, false);
        self.objects.insert(key, obj.clone());
        obj
    }
}

fn not_found_value() -> Value {
    Value::Null
}

/// Splits `/api/v1/namespaces/shop/pods/orders-0/status` into
/// (`api/v1/pods`, Some(`orders-0`), Some(`status`)).
fn route(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ns_at = parts.iter().position(|p| *p == "namespaces")?;
    if parts.get(ns_at + 1) != Some(&NS) {
        return None;
    }
    let prefix = parts[..ns_at].join("/");
    let coll = format!("{prefix}/{}", parts.get(ns_at + 2)?);
    Some((
        coll,
        parts.get(ns_at + 3).map(|s| s.to_string()),
        parts.get(ns_at + 4).map(|s| s.to_string()),
    ))
}

pub(super) async fn api_handler(
    State(state): State<Arc<Mutex<ApiState>>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some((coll, name, sub)) = route(uri.path()) else {
        return not_found(uri.path());
    };
    let mut st = state.lock().expect("api state");
    if st.missing_apis.iter().any(|m| coll.starts_with(m.as_str())) {
        return not_found(&coll);
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("bad body: {e}")).into_response();
            }
        }
    };
    if method != Method::GET {
        st.writes.push(format!(
            "{method} {coll}/{}{}",
            name.clone().unwrap_or_default(),
            sub.as_ref().map(|s| format!("/{s}")).unwrap_or_default()
        ));
    }
    let kind_list = |coll: &str| {
        let kind = match coll.rsplit('/').next() {
            Some("pods") => "PodList",
            Some("persistentvolumeclaims") => "PersistentVolumeClaimList",
            _ => "List",
        };
        kind.to_string()
    };
    match (method, name) {
        (Method::GET, None) => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((c, _), o)| *c == coll && matches_selector(o, q.get("labelSelector")))
                .map(|(_, o)| o.clone())
                .collect();
            Json(json!({"apiVersion": "v1", "kind": kind_list(&coll),
                        "metadata": {"resourceVersion": st.next_rv.to_string()}, "items": items}))
            .into_response()
        }
        (Method::GET, Some(n)) => match st.get(&coll, &n) {
            Some(o) => Json(o.clone()).into_response(),
            None => not_found(&n),
        },
        (Method::POST, None) if coll.ends_with("/events") => {
            let mut ev = body;
            let n = ev["metadata"]["name"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("ev-{}", st.events.len()));
            ev["metadata"]["name"] = n.into();
            st.events.push(ev.clone());
            (StatusCode::CREATED, Json(ev)).into_response()
        }
        (Method::PATCH, Some(n)) if coll.ends_with("/events") => {
            // A repeated event: the recorder patches its series count.
            let mut ev = body;
            ev["metadata"]["name"] = n.into();
            ev["repeat"] = true.into();
            st.events.push(ev.clone());
            Json(ev).into_response()
        }
        (Method::PATCH, Some(n)) => {
            let obj = st.apply(&coll, &n, body, sub.as_deref() == Some("status"));
            if obj.is_null() {
                not_found(&n)
            } else {
                Json(obj).into_response()
            }
        }
        (Method::DELETE, Some(n)) => match st.remove(&coll, &n) {
            Some(o) => Json(o).into_response(),
            None => not_found(&n),
        },
        (m, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{m} not supported by the fake API server"),
        )
            .into_response(),
    }
}
