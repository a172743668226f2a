//! `ELECTRIC_SECRET`: required on the Shape API and admin routes, never on health or
//! CORS preflight.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;
use crate::response::unauthorized;

pub async fn require_secret(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(secret) = app.config.secret.as_deref() else {
        return next.run(req).await;
    };
    if req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req.uri().query().and_then(|q| {
        url_params(q)
            .find(|(k, _)| k == "secret" || k == "api_secret")
            .map(|(_, v)| v)
    });
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), secret.as_bytes()) => next.run(req).await,
        _ => unauthorized(),
    }
}

/// The decoded `key=value` pairs of a query string, borrowed from it unless escaped.
pub fn url_params(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// Compare without leaking, through timing, how much of the secret matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
    }
}
