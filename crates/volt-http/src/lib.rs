//! volt's HTTP API: the Shape API (`/v1/shape`), health, and admin endpoints.

mod admin;
pub mod admission;
mod auth;
mod chunk_cache;
mod cors;
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
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub config: Arc<HttpConfig>,
    pub admission: Arc<admission::Admission>,
    pub schema_loads: Arc<shape_api::SchemaLoads>,
    pub chunk_cache: Arc<chunk_cache::ChunkCache>,
    pub live_reads: Arc<live_reads::LiveReads>,
}

pub fn router(shared: Arc<Shared>, config: HttpConfig) -> Router {
    let admission = Arc::new(admission::Admission::new(config.max_concurrent));
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
        chunk_cache: Arc::new(chunk_cache::ChunkCache::new(64 * 1024 * 1024)),
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
    let guarded = guarded.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_secret,
    ));
    let routes = Router::new()
        .route("/", get(|| async { StatusCode::OK }))
        .route("/v1/health", get(health))
        .merge(guarded)
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not found") })
        .layer(middleware::from_fn(cors::headers))
        .with_state(state);
    // Paths are normalised before routing (and so before auth), as Electric's are:
    // `/v1/shape/`, `/v1//shape` and `/v1/%73hape` are all `/v1/shape`.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(count_request))
        .layer(middleware::map_request(normalize_path))
        .layer(middleware::from_fn(request_id))
}

/// `volt_http_requests_total{route,method,status}` and the time to the response head.
async fn count_request(req: axum::extract::Request, next: middleware::Next) -> Response {
    let route = match req.uri().path() {
        "/v1/shape" => "/v1/shape",
        "/v1/health" => "/v1/health",
        "/" => "/",
        p if p.starts_with("/v1/admin/") => "/v1/admin",
        _ => "other",
    };
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("volt_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("volt_http_response_head_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

async fn normalize_path(mut req: axum::extract::Request) -> axum::extract::Request {
    let path = req.uri().path();
    let normal = normal_path(path);
    if normal != path {
        let rebuilt = match req.uri().query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        if let Ok(pq) = rebuilt.parse::<axum::http::uri::PathAndQuery>() {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// Percent-decode unreserved characters, collapse repeated slashes, drop a trailing one.
fn normal_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(c) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c))
        {
            decoded.push(c as char);
            i += 3;
            continue;
        }
        decoded.push(bytes[i] as char);
        i += 1;
    }
    let mut out = String::with_capacity(decoded.len());
    for part in decoded.split('/').filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `x-request-id` on every response: the client's own, or a new one.
async fn request_id(req: axum::extract::Request, next: middleware::Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .filter(|v| v.len() <= 200)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>()))
                .unwrap_or(HeaderValue::from_static("unknown"))
        });
    // Every log line of the request carries its id, and its shape's handle once known.
    let span = tracing::info_span!(
        "request",
        id = id.to_str().unwrap_or("?"),
        method = %req.method(),
        path = req.uri().path(),
        handle = tracing::field::Empty,
    );
    let mut res = tracing::Instrument::instrument(next.run(req), span).await;
    res.headers_mut().insert("x-request-id", id);
    res
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

#[cfg(test)]
mod tests {
    use super::normal_path;

    #[test]
    fn path_variants_normalise_to_one_route() {
        for p in [
            "/v1/shape",
            "/v1/shape/",
            "/v1//shape",
            "/v1/%73hape",
            "//v1/shape//",
        ] {
            assert_eq!(normal_path(p), "/v1/shape", "{p}");
        }
        assert_eq!(normal_path("/"), "/");
        assert_eq!(normal_path(""), "/");
        // Only unreserved characters are decoded: an encoded slash stays encoded.
        assert_eq!(normal_path("/v1%2Fshape"), "/v1%2Fshape");
    }
}
