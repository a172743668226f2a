//! volt's HTTP API: the Shape API (`/v1/shape`), health, and admin endpoints.

mod admin;
pub mod admission;
mod auth;
mod cors;
mod envelope;
mod live_reads;
mod response;
mod shape_api;
mod sse;
mod subset;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
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
    /// `ELECTRIC_ENABLE_INTEGRATION_TESTING`: allows `DELETE /v1/shape` and
    /// `POST /v1/admin/kill`.
    pub allow_delete: bool,
    /// How long a request for an offset past the shape's end waits for it before a 400.
    pub out_of_bounds_wait: Duration,
    /// How long one SSE response stays open (Electric: 60 s).
    pub sse_duration: Duration,
    /// Silence after which an SSE response sends a keep-alive comment (Electric: 21 s).
    pub sse_keepalive: Duration,
    /// `ELECTRIC_MAX_CONCURRENT_REQUESTS`: the admission buckets.
    pub max_concurrent: admission::Limits,
    /// `VOLT_INITIAL_QUEUE` and `VOLT_INITIAL_QUEUE_WAIT`: the waiting room in front of
    /// the `initial` bucket.
    pub initial_queue: admission::Queue,
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
            max_concurrent: admission::Limits::default(),
            initial_queue: admission::Queue::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub config: Arc<HttpConfig>,
    pub admission: Arc<admission::Admission>,
    pub schema_loads: Arc<shape_api::SchemaLoads>,
    pub live_reads: Arc<live_reads::LiveReads>,
}

pub fn router(shared: Arc<Shared>, config: HttpConfig) -> Router {
    let admission = Arc::new(admission::Admission::new(
        config.max_concurrent,
        config.initial_queue,
    ));
    router_with_admission(shared, config, admission)
}

/// `router` with admission counters the caller can read (tests, metrics).
pub fn router_with_admission(
    shared: Arc<Shared>,
    config: HttpConfig,
    admission: Arc<admission::Admission>,
) -> Router {
    let state = AppState {
        shared,
        config: Arc::new(config),
        admission,
        schema_loads: Arc::default(),
        live_reads: Arc::new(live_reads::LiveReads::new(64 * 1024 * 1024, 4096)),
    };
    let mut guarded = Router::new()
        .route(
            "/v1/shape",
            get(shape_api::get_shape)
                .post(shape_api::post_shape)
                .delete(shape_api::delete_shape)
                .options(cors::preflight),
        )
        .route("/v1/admin/tree", get(admin::tree))
        .route("/v1/admin/admission", get(admin::admission))
        .route("/v1/admin/stats", get(admin::stats))
        .route("/admin", get(admin::page));
    if state.config.allow_delete {
        guarded = guarded.route("/v1/admin/kill", post(admin::kill));
    }
    // Without a secret (insecure mode) there is nothing to check: no layer to go through.
    if state.config.secret.is_some() {
        guarded = guarded.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_secret,
        ));
    }
    let routes = Router::new()
        .route("/", get(|| async { StatusCode::OK }))
        .route("/v1/health", get(health))
        .merge(guarded)
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not found") })
        .with_state(state);
    // Outside the router: paths are normalised before routing (and so before auth).
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(envelope::envelope))
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
        ServiceStatus::Starting | ServiceStatus::Waiting => StatusCode::ACCEPTED,
    };
    let mut res = json_response(code, json!({"status": status.as_str()}));
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    res
}
