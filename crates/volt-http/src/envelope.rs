//! What every request and response goes through, in one middleware: the request id and
//! its log span, path normalisation, CORS headers and the request metrics. One layer
//! instead of four: each `from_fn` layer boxes and nests the future of the one inside
//! it, and with 1,000 live clients answered per transaction that nesting was a visible
//! share of the CPU (S3 in BENCHMARKS.md).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

pub async fn envelope(mut req: Request, next: Next) -> Response {
    normalize_path(&mut req);
    let id = request_id(&req);
    let origin = req.headers().get(header::ORIGIN).cloned();
    let route = route_label(req.uri().path());
    let shape_api = req.uri().path().starts_with("/v1/shape");
    let method = method_label(req.method());
    // Every log line of the request carries its id, and its shape's handle once known.
    let span = tracing::info_span!(
        "request",
        id = id.to_str().unwrap_or("?"),
        method = %req.method(),
        path = req.uri().path(),
        handle = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let mut res = tracing::Instrument::instrument(next.run(req), span).await;
    crate::cors::add_headers(res.headers_mut(), origin, shape_api);
    res.headers_mut().insert("x-request-id", id);
    let status = status_label(res.status());
    metrics::counter!("volt_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("volt_http_response_head_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// `x-request-id`: the client's own, or a new one.
fn request_id(req: &Request) -> HeaderValue {
    if let Some(id) = req.headers().get("x-request-id").filter(|v| v.len() <= 200) {
        return id.clone();
    }
    HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>()))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/shape" => "/v1/shape",
        "/v1/health" => "/v1/health",
        "/" => "/",
        p if p.starts_with("/v1/admin/") => "/v1/admin",
        _ => "other",
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The status as a label, without formatting one per response for the common ones.
fn status_label(s: StatusCode) -> std::borrow::Cow<'static, str> {
    let fixed = match s.as_u16() {
        200 => "200",
        202 => "202",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        409 => "409",
        500 => "500",
        503 => "503",
        _ => return s.as_str().to_string().into(),
    };
    fixed.into()
}

/// Paths are normalised before routing (and so before auth), as Electric's are:
/// `/v1/shape/`, `/v1//shape` and `/v1/%73hape` are all `/v1/shape`.
fn normalize_path(req: &mut Request) {
    let path = req.uri().path();
    if !needs_normalizing(path) {
        return;
    }
    let normal = normal_path(path);
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

/// Whether `normal_path` could change `path`: most requests need no rebuilt URI.
fn needs_normalizing(path: &str) -> bool {
    !path.starts_with('/')
        || path.contains('%')
        || path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_paths_normalising_would_change_are_rebuilt() {
        for p in ["/v1/shape", "/", "/v1/health", "/v1/admin/tree"] {
            assert!(!needs_normalizing(p), "{p}");
            assert_eq!(normal_path(p), p);
        }
        for p in [
            "/v1/shape/",
            "/v1//shape",
            "/v1/%73hape",
            "",
            "*",
            "/v1%2Fshape",
        ] {
            assert!(needs_normalizing(p), "{p}");
        }
    }

    #[test]
    fn a_generated_request_id_is_sixteen_hex_digits() {
        let id = request_id(&Request::new(axum::body::Body::empty()));
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 16);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()), "{s}");
    }
}
