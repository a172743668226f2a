//! CORS: browsers must be allowed to read the `electric-*` headers the client needs.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const EXPOSED: &str = "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after";

/// The CORS headers of every response. `shape`: the Shape API route, which allows
/// more methods.
pub fn add_headers(h: &mut HeaderMap, origin: Option<HeaderValue>, shape: bool) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.unwrap_or_else(|| HeaderValue::from_static("*")),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(if shape {
            "GET, POST, HEAD, DELETE, OPTIONS"
        } else {
            "GET, HEAD"
        }),
    );
    h.insert(
        "electric-server",
        HeaderValue::from_static(concat!("volt/", env!("CARGO_PKG_VERSION"))),
    );
}

pub async fn preflight(req: Request) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        req.headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("if-none-match, traceparent")),
    );
    res
}
