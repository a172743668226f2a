//! Live mode over server-sent events (`live=true&live_sse=true`): one `data:` event per
//! message, an up-to-date event after each batch, keep-alive comments in silence, and
//! the stream ends after `sse_duration` (the client reconnects from its offset).

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;
use volt_stack::ShapeEntry;
use volt_storage::LogOffset;

use crate::AppState;
use crate::shape_api::{ReadFailed, read_log, set_cursor, up_to_date};

struct Stream {
    entry: Arc<ShapeEntry>,
    from: LogOffset,
    changes: watch::Receiver<LogOffset>,
    shutdown: Option<watch::Receiver<bool>>,
    deadline: Instant,
    keepalive: std::time::Duration,
    pending: VecDeque<Bytes>,
    /// Data was there when the request came: send it and close, as Electric does.
    first_read: bool,
    done: bool,
}

fn event(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

impl Stream {
    /// Fill `pending` with the next events; false when the stream should end.
    async fn refill(&mut self) -> bool {
        loop {
            if self.done || self.entry.log.is_closed() {
                return false;
            }
            self.changes.borrow_and_update();
            let read = match read_log(self.entry.log.clone(), self.from).await {
                Ok(r) => r,
                Err(ReadFailed::Storage(e)) => {
                    tracing::error!(handle = %self.entry.handle, error = %e, "SSE read failed");
                    return false;
                }
                Err(ReadFailed::Panicked) => return false,
            };
            if let Some(last) = read.last {
                match read.try_items() {
                    Ok(items) => self.pending.extend(items.into_iter().map(event)),
                    Err(e) => {
                        tracing::error!(handle = %self.entry.handle, error = %e, "SSE read found a corrupt record");
                        return false;
                    }
                }
                if read.reached_end {
                    self.pending.push_back(event(&up_to_date(last.tx)));
                }
                self.from = last;
                if self.first_read && read.reached_end {
                    self.done = true;
                }
                self.first_read = false;
                return true;
            }
            self.first_read = false;
            let shutting_down = crate::shape_api::shutting_down(&self.shutdown);
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                () = tokio::time::sleep(self.keepalive) => {
                    self.pending.push_back(Bytes::from_static(b": keep-alive\n\n"));
                    return true;
                }
                () = tokio::time::sleep_until(self.deadline) => return false,
                () = shutting_down => return false,
            }
        }
    }
}

pub fn serve(
    app: &AppState,
    entry: &Arc<ShapeEntry>,
    at: LogOffset,
    cursor: Option<&str>,
) -> Response {
    // Snapshot offsets all lead to the start of the change log.
    let from = if at.tx == 0 {
        LogOffset::SNAPSHOT_END
    } else {
        at
    };
    let up_to_date_now = entry.log.latest_offset() <= from;
    let state = Stream {
        entry: entry.clone(),
        from,
        changes: entry.log.subscribe(),
        shutdown: app.config.shutdown.clone(),
        deadline: Instant::now() + app.config.sse_duration,
        keepalive: app.config.sse_keepalive,
        pending: VecDeque::new(),
        first_read: true,
        done: false,
    };
    let body = futures::stream::unfold(state, |mut s| async move {
        if s.pending.is_empty() && !s.refill().await {
            return None;
        }
        let next = s.pending.pop_front()?;
        Some((Ok::<_, std::convert::Infallible>(next), s))
    });
    let mut res = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=59"),
    );
    // Proxies that buffer responses (nginx) pass events through as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&entry.handle) {
        h.insert("electric-handle", v);
    }
    if let Ok(v) = HeaderValue::from_str(&at.to_string()) {
        h.insert("electric-offset", v);
    }
    if up_to_date_now {
        h.insert("electric-up-to-date", HeaderValue::from_static(""));
    }
    set_cursor(&mut res, app, cursor);
    res
}
