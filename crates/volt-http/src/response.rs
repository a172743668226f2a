//! Response helpers shared by every route: JSON errors in Electric's shapes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub fn json_response(status: StatusCode, body: Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res
}

/// An error answer: never cached.
pub fn error(status: StatusCode, body: Value) -> Response {
    let mut res = json_response(status, body);
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("surrogate-control", HeaderValue::from_static("no-store"));
    res
}

/// 400 with `{"message":"Invalid request","errors":{param:[msg]}}`.
pub fn invalid_request(param: &str, message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        json!({"message": "Invalid request", "errors": {param: [message]}}),
    )
}

/// 503 with a `retry-after` (seconds), as clients back off on it.
pub fn unavailable(message: &str, retry_after_secs: u32) -> Response {
    let mut res = error(StatusCode::SERVICE_UNAVAILABLE, json!({"message": message}));
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    res
}

pub fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        json!({"message": "Unauthorized - Invalid API secret"}),
    )
}
