//! Subset snapshots (`subset__*` parameters or a POST body): rows of a shape read from a
//! fresh Postgres snapshot, ordered and paged, answered as
//! `{"metadata": {...}, "data": [insert messages]}`.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use volt_shapes::{Subset, SubsetRequest};
use volt_stack::ShapeEntry;
use volt_stack::subset::{SubsetQueryError, query_subset};
use volt_storage::{LogOffset, RequestOffset, SnapshotState};

use crate::AppState;
use crate::response::{error, unavailable};
use crate::shape_api::{await_snapshot, set_schema};

/// Body keys that describe the subset (the rest of a POST body are shape parameters).
const SUBSET_KEYS: [&str; 7] = [
    "where",
    "params",
    "limit",
    "offset",
    "order_by",
    "where_expr",
    "order_by_expr",
];

/// Record one `subset__<name>` query parameter.
pub(crate) fn set_query_param(req: &mut SubsetRequest, name: &str, value: String) {
    match name {
        "where" => req.where_sql = Some(value),
        "limit" => req.limit = Some(value),
        "offset" => req.offset = Some(value),
        "order_by" => req.order_by = Some(value),
        // The client sends `subset__params` as one JSON object, so that proxies see a
        // fixed set of parameter names.
        "params" => match serde_json::from_str::<Value>(&value) {
            Ok(Value::Object(map)) => set_params(req, &map),
            Ok(_) => req.params_error = Some("params must be a JSON object"),
            Err(_) => req.params_error = Some("params must be valid JSON"),
        },
        // `where_expr`/`order_by_expr` repeat the SQL forms in structured form; the SQL
        // forms are authoritative.
        _ => {}
    }
}

fn set_params(req: &mut SubsetRequest, map: &Map<String, Value>) {
    for (k, v) in map {
        match scalar(v) {
            Some(s) => {
                req.params.insert(k.clone(), s);
            }
            None => req.params_error = Some("params values must be strings or numbers"),
        }
    }
}

/// A JSON scalar as the string a query parameter would have carried.
pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Split a POST body into shape parameters and subset parameters, as Electric does:
/// a nested `"subset"` object holds the subset and everything else is shape parameters;
/// otherwise the subset keys at the top level are the subset.
pub(crate) fn split_body(
    body: Map<String, Value>,
    subset: &mut Option<SubsetRequest>,
) -> Result<Vec<(String, Value)>, String> {
    let mut shape_params = Vec::new();
    let mut subset_fields: Vec<(String, Value)> = Vec::new();
    if let Some(nested) = body.get("subset") {
        let Value::Object(nested) = nested else {
            return Err("subset must be a JSON object".into());
        };
        subset_fields.extend(nested.iter().map(|(k, v)| (k.clone(), v.clone())));
        shape_params.extend(body.into_iter().filter(|(k, _)| k != "subset"));
    } else {
        for (k, v) in body {
            if SUBSET_KEYS.contains(&k.as_str()) {
                subset_fields.push((k, v));
            } else {
                shape_params.push((k, v));
            }
        }
    }
    if !subset_fields.is_empty() {
        let req = subset.get_or_insert_with(SubsetRequest::default);
        for (k, v) in subset_fields {
            match (k.as_str(), &v) {
                ("params", Value::Object(map)) => set_params(req, map),
                ("params", Value::String(s)) => set_query_param(req, "params", s.clone()),
                ("params", Value::Null) => {}
                ("params", _) => req.params_error = Some("params must be a JSON object"),
                (_, Value::Null) => {}
                (name, value) => match scalar(value) {
                    Some(s) => set_query_param(req, name, s),
                    None if name.ends_with("_expr") => {}
                    None => return Err(format!("subset {name} must be a string or a number")),
                },
            }
        }
    }
    Ok(shape_params)
}

/// Answer a subset request for a shape the request already resolved.
pub(crate) async fn serve(
    app: &AppState,
    entry: &Arc<ShapeEntry>,
    req: &SubsetRequest,
    offset: RequestOffset,
) -> Response {
    let subset = match Subset::new(&entry.shape, req) {
        Ok(s) => s,
        Err(e) => return invalid_subset(e.field, &e.message),
    };
    // The subset must be read after the shape's own snapshot started, so that every
    // change between the two is in the shape's log: a client that joins the subset to
    // the stream (changes_only mode) then misses nothing.
    if let Err(res) =
        await_snapshot(app, entry, |p| !matches!(p.state, SnapshotState::Pending)).await
    {
        return res;
    }
    // Where the client's stream continues after the subset. Never past what the client
    // asked for: changes it skipped would be lost for the rows outside the subset.
    let resume = match offset {
        RequestOffset::BeforeAll => LogOffset::FIRST_CHUNK,
        RequestOffset::Now => entry.log.latest_offset(),
        RequestOffset::At(at) => at,
    };
    let rows = match query_subset(&app.shared, &entry.shape, &subset).await {
        Ok(rows) => rows,
        Err(SubsetQueryError::Rejected(message)) => return invalid_subset("where", &message),
        Err(SubsetQueryError::Unavailable(message)) => {
            tracing::warn!(handle = %entry.handle, %message, "subset query failed");
            return unavailable("Cannot query the database for the subset, please retry", 1);
        }
    };
    let metadata = json!({
        "xmin": rows.snapshot.xmin.to_string(),
        "xmax": rows.snapshot.xmax.to_string(),
        "xip_list": rows.snapshot.xip.iter().map(u64::to_string).collect::<Vec<_>>(),
        "database_lsn": rows.snapshot.wal_lsn.to_string(),
        "snapshot_mark": rows.mark,
    });
    let body = format!(
        "{{\"metadata\":{metadata},\"data\":[{}]}}",
        rows.items.join(",")
    );
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("electric-snapshot", HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(&entry.handle) {
        h.insert("electric-handle", v);
    }
    if let Ok(v) = HeaderValue::from_str(&resume.to_string()) {
        h.insert("electric-offset", v);
    }
    set_schema(&mut res, entry);
    res
}

/// 400 with the subset's errors nested as Electric nests them.
fn invalid_subset(field: &str, message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        json!({"message": "Invalid request", "errors": {"subset": {field: [message]}}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("tests pass objects"),
        }
    }

    #[test]
    fn top_level_subset_keys_form_the_subset_and_the_rest_are_shape_params() {
        let mut subset = None;
        let rest = split_body(
            body(json!({"where": "id > $1", "params": {"1": 5}, "limit": 10,
                        "order_by": "id", "table": "items"})),
            &mut subset,
        )
        .unwrap();
        assert_eq!(rest, vec![("table".to_string(), json!("items"))]);
        let s = subset.unwrap();
        assert_eq!(s.where_sql.as_deref(), Some("id > $1"));
        assert_eq!(s.params.get("1").map(String::as_str), Some("5"));
        assert_eq!(s.limit.as_deref(), Some("10"));
        assert_eq!(s.order_by.as_deref(), Some("id"));
    }

    #[test]
    fn a_nested_subset_leaves_top_level_where_to_the_shape() {
        let mut subset = None;
        let rest = split_body(
            body(json!({"where": "a = 1", "subset": {"where": "b = 2"}})),
            &mut subset,
        )
        .unwrap();
        assert_eq!(rest, vec![("where".to_string(), json!("a = 1"))]);
        assert_eq!(subset.unwrap().where_sql.as_deref(), Some("b = 2"));
    }

    #[test]
    fn a_body_without_subset_keys_is_no_subset() {
        let mut subset = None;
        let rest = split_body(body(json!({"table": "t"})), &mut subset).unwrap();
        assert!(subset.is_none());
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn subset_params_query_parameter_must_be_a_json_object() {
        let mut req = SubsetRequest::default();
        set_query_param(&mut req, "params", "[1]".into());
        assert_eq!(req.params_error, Some("params must be a JSON object"));
        let mut req = SubsetRequest::default();
        set_query_param(&mut req, "params", "{\"1\":\"x\",\"2\":3}".into());
        assert_eq!(req.params.len(), 2);
        assert!(req.params_error.is_none());
    }
}
