//! volt's HTTP API: the Shape API (`/v1/shape`), health, and admin endpoints.

mod auth;
mod cors;
mod response;
mod shape_api;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use serde_json::json;
use tokio::sync::watch;
use volt_stack::{ServiceStatus, Shared};

pub use response::json_response;
pub use shape_api::parse_shape_query;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `ELECTRIC_SECRET`; `None` only in insecure mode.
    pub secret: Option<String>,
    /// `ELECTRIC_LONG_POLL_TIMEOUT`.
    pub long_poll_timeout: Duration,
    /// How long a request waits for the stack to become ready.
    pub stack_ready_timeout: Duration,
    /// Turns true when the server is shutting down: parked long-polls answer at once
    /// (as a timeout would) so that shutdown does not wait for them.
    pub shutdown: Option<watch::Receiver<bool>>,
    /// `ELECTRIC_ENABLE_INTEGRATION_TESTING`: allows `DELETE /v1/shape`.
    pub allow_delete: bool,
    /// How long a request for an offset past the shape's end waits for it before a 400.
    pub out_of_bounds_wait: Duration,
    /// How long one SSE response stays open (Electric: 60 s).
    pub sse_duration: Duration,
    /// Silence after which an SSE response sends a keep-alive comment (Electric: 21 s).
    pub sse_keepalive: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            secret: None,
            long_poll_timeout: Duration::from_secs(20),
            stack_ready_timeout: Duration::from_secs(5),
            shutdown: None,
            allow_delete: false,
            out_of_bounds_wait: Duration::from_secs(10),
            sse_duration: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(21),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub config: Arc<HttpConfig>,
}

pub fn router(shared: Arc<Shared>, config: HttpConfig) -> Router {
    let state = AppState {
        shared,
        config: Arc::new(config),
    };
    let guarded = Router::new()
        .route(
            "/v1/shape",
            get(shape_api::get_shape)
                .delete(shape_api::delete_shape)
                .options(cors::preflight),
        )
        .route("/v1/admin/tree", get(admin_tree))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_secret,
        ));
    Router::new()
        .route("/", get(|| async { StatusCode::OK }))
        .route("/v1/health", get(health))
        .merge(guarded)
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not found") })
        .layer(middleware::from_fn(cors::headers))
        .with_state(state)
}

async fn health(State(app): State<AppState>) -> Response {
    if app
        .shared
        .storage_full
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let mut res = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "storage_full", "message": "the storage disk is full"}),
        );
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        );
        return res;
    }
    let status = app.shared.status.status();
    let code = match status {
        ServiceStatus::Active => StatusCode::OK,
        ServiceStatus::Starting => StatusCode::ACCEPTED,
    };
    let mut res = json_response(code, json!({"status": status.as_str()}));
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    res
}

async fn admin_tree(State(app): State<AppState>) -> Response {
    match app.shared.tree() {
        Some(tree) => json_response(StatusCode::OK, json!(tree)),
        None => response::unavailable("the actor tree is not running", 1),
    }
    .into_response()
}
