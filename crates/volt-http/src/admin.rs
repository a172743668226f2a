//! Admin endpoints: the live actor tree, and (integration testing only) killing actors
//! for chaos tests.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use volt_stack::ActorSelector;

use crate::AppState;
use crate::auth::url_params;
use crate::response::{self, error, invalid_request, json_response};

pub async fn tree(State(app): State<AppState>) -> Response {
    match app.shared.tree() {
        Some(tree) => json_response(StatusCode::OK, json!(tree)),
        None => response::unavailable("the actor tree is not running", 1),
    }
    .into_response()
}

/// `GET /admin`: the live tree page (one HTML file, no build step), polling the admin
/// JSON endpoints with the secret it was opened with.
pub async fn page() -> Response {
    let mut res = (StatusCode::OK, include_str!("assets/admin.html")).into_response();
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    res
}

/// `GET /v1/admin/stats`: service status, shapes, creations, replication position and
/// admission counters, for the admin page.
pub async fn stats(State(app): State<AppState>) -> Response {
    let (creating, failed) = app.shared.creating.counts();
    json_response(
        StatusCode::OK,
        json!({
            "status": app.shared.status.status().as_str(),
            "shapes": app.shared.shapes.len(),
            "creating": creating,
            "failed": failed,
            "processed_lsn": app.shared.last_seen_lsn().to_string(),
            "durable_lsn": app.shared.durability.durable_lsn().to_string(),
            "registry_unwritten": app
                .shared
                .registry_unwritten
                .load(std::sync::atomic::Ordering::Acquire),
            "admission": app.admission.stats(),
            // Bounded caches of response bodies (64 MiB each): what RSS holds for them.
            "cache_bytes": {
                "live_reads": app.live_reads.kept_bytes(),
                "snapshot_chunks": volt_storage::recent_chunks::recent_chunks().kept_bytes(),
            },
        }),
    )
}

/// Admission permits in use and rejects per bucket.
pub async fn admission(State(app): State<AppState>) -> Response {
    json_response(StatusCode::OK, json!(app.admission.stats()))
}

/// `POST /v1/admin/kill?kind=Consumer&shape=<handle>&mode=kill` (or `name=<display name>`,
/// or `path=<name>/<name>/...` from the root). `mode=stop` stops the actor as a shutdown
/// would (its `post_stop` runs); `mode=kill` (the default) ends it at once, as a crash.
/// Either way its supervisor sees it exit and applies its policy.
pub async fn kill(State(app): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let mut name = None;
    let mut path = None;
    let mut kind = None;
    let mut shape = None;
    let mut mode = "kill".to_string();
    for (k, v) in url_params(query.as_deref().unwrap_or("")) {
        let v = v.into_owned();
        match k.as_ref() {
            "name" => name = Some(v),
            "path" => path = Some(v),
            "kind" => kind = Some(v),
            "shape" => shape = Some(v),
            "mode" => mode = v,
            _ => {}
        }
    }
    if mode != "kill" && mode != "stop" {
        return invalid_request("mode", "must be stop or kill");
    }
    let selector = match (name, path, kind) {
        (Some(n), None, None) => ActorSelector::Name(n),
        (None, Some(p), None) => ActorSelector::Path(
            p.split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ),
        (None, None, Some(k)) => ActorSelector::Kind { kind: k, shape },
        _ => {
            return invalid_request("actor", "give exactly one of name, path or kind");
        }
    };
    let Some((cell, name)) = app.shared.select_actor(&selector) else {
        return error(
            StatusCode::NOT_FOUND,
            json!({"message": format!("no live actor matches {selector:?}")}),
        );
    };
    tracing::warn!(actor = %name, %mode, "killing an actor on request (admin API)");
    if mode == "stop" {
        cell.stop(Some("stopped through the admin API".into()));
    } else {
        cell.kill();
    }
    json_response(
        StatusCode::ACCEPTED,
        json!({"name": name, "id": cell.get_id().to_string(), "mode": mode}),
    )
}
