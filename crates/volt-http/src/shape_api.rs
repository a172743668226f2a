//! `GET /v1/shape`: the initial snapshot, then the change log, then live long-polls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use volt_pg::admin;
use volt_shapes::{ParamError, Shape, ShapeDef, SubsetRequest, TableSchema};
use volt_stack::{Condition, ShapeEntry, Shared};
use volt_storage::{LogOffset, RequestOffset, SnapshotProgress, SnapshotState};

use crate::AppState;
use crate::admission::{self, Permit};
use crate::auth::url_params;
use crate::live_reads::LiveBody;
use crate::response::{error, invalid_request, unavailable};
use crate::subset;

/// Per-table gates for loading table metadata on a cold cache.
pub type SchemaLoads = dashmap::DashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// Longer where clauses are refused before parsing: the parser recurses on them.
const MAX_WHERE_BYTES: usize = 16 * 1024;
/// How long a request waits for a snapshot chunk before answering 503.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The request parameters volt reads; everything else is ignored, as Electric does.
#[derive(Debug, Default)]
struct Params {
    table: Option<String>,
    where_sql: Option<String>,
    params: BTreeMap<String, String>,
    columns: Option<String>,
    replica: Option<String>,
    offset: Option<String>,
    handle: Option<String>,
    live: bool,
    live_sse: bool,
    log: Option<String>,
    /// Present when any `subset__*` parameter (or subset key of a POST body) is.
    subset: Option<SubsetRequest>,
    cursor: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Params {
        let mut p = Params::default();
        for (k, v) in url_params(query) {
            p.set(&k, v.into_owned());
        }
        p
    }

    fn set(&mut self, k: &str, v: String) {
        match k {
            "table" => self.table = Some(v),
            "where" => self.where_sql = Some(v),
            "columns" => self.columns = Some(v),
            "replica" => self.replica = Some(v),
            "offset" => self.offset = Some(v),
            "handle" => self.handle = Some(v),
            // Any value but the literal `false` turns live on.
            "live" => self.live = v != "false",
            "cursor" => self.cursor = Some(v),
            "live_sse" | "experimental_live_sse" => self.live_sse = v != "false",
            "log" => self.log = Some(v),
            _ => {
                if let Some(name) = k.strip_prefix("subset__") {
                    subset::set_query_param(
                        self.subset.get_or_insert_with(SubsetRequest::default),
                        name,
                        v,
                    );
                } else if let Some(n) = k.strip_prefix("params[").and_then(|r| r.strip_suffix(']'))
                {
                    self.params.insert(n.to_string(), v);
                }
            }
        }
    }

    /// Merge a POST body (a JSON object) over the query parameters, as Electric does.
    fn merge_body(
        &mut self,
        body: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        for (k, v) in subset::split_body(body, &mut self.subset)? {
            match (k.as_str(), v) {
                ("params", serde_json::Value::Object(map)) => {
                    for (n, value) in map {
                        let value = subset::scalar(&value)
                            .ok_or("params values must be strings or numbers")?;
                        self.params.insert(n, value);
                    }
                }
                (_, serde_json::Value::Null) => {}
                (name, value) => match subset::scalar(&value) {
                    Some(text) => self.set(name, text),
                    None => return Err(format!("{name} must be a string, number or boolean")),
                },
            }
        }
        Ok(())
    }

    /// The shape definition these parameters name, or the 400 that says why not.
    fn shape_def(&self) -> Result<ShapeDef, ParamError> {
        let positional = self
            .positional()
            .map_err(|m| ParamError::new("params", m))?;
        ShapeDef::from_params(
            self.table.as_deref(),
            self.where_sql.as_deref(),
            positional,
            self.columns.as_deref(),
            self.replica.as_deref(),
            self.log.as_deref(),
        )
    }

    /// `params[1]..params[n]` in order; keys must be 1..n.
    fn positional(&self) -> Result<Vec<String>, &'static str> {
        volt_shapes::subset::positional(&self.params)
    }
}

pub async fn get_shape(State(app): State<AppState>, req: axum::extract::Request) -> Response {
    // The request's own header map, moved rather than copied by an extractor.
    let (parts, _) = req.into_parts();
    let p = Params::parse(parts.uri.query().unwrap_or(""));
    let permit = match admit(&app, &p).await {
        Ok(permit) => permit,
        Err(res) => return res,
    };
    shape_request(app, p, parts.headers, permit).await
}

/// Admission before any work beyond parsing the query: one registry lookup of the
/// request's handle decides the bucket.
async fn admit(app: &AppState, p: &Params) -> Result<Permit, Response> {
    let known = p
        .handle
        .as_deref()
        .is_some_and(|h| app.shared.shapes.get(h).is_some());
    let kind = if known {
        admission::Kind::Existing
    } else {
        admission::Kind::Initial
    };
    app.admission
        .acquire(kind, shutting_down(&app.config.shutdown))
        .await
}

/// Resolves once the server starts shutting down (never without a shutdown signal).
pub(crate) fn shutting_down(
    shutdown: &Option<tokio::sync::watch::Receiver<bool>>,
) -> impl std::future::Future<Output = ()> + use<> {
    let mut shutdown = shutdown.clone();
    async move {
        match shutdown.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|s| *s).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Largest POST body read: subset where clauses and parameters, not data.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `POST /v1/shape`: a GET whose JSON body adds (and overrides) parameters, mostly
/// subset snapshots too large for a URL. Never cached.
pub async fn post_shape(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let mut p = Params::parse(query.as_deref().unwrap_or(""));
    let permit = match admit(&app, &p).await {
        Ok(permit) => permit,
        Err(res) => return res,
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"message": format!("The request body is larger than {MAX_BODY_BYTES} bytes")}),
            );
        }
    };
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let merged = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(map)) => p.merge_body(map),
            Ok(_) => Err("the request body must be a JSON object".to_string()),
            Err(e) => Err(format!("the request body is not valid JSON: {e}")),
        };
        if let Err(message) = merged {
            return invalid_request("body", &message);
        }
    }
    let mut res = shape_request(app, p, headers, permit).await;
    if res.status().is_success() {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    res
}

async fn shape_request(
    app: AppState,
    p: Params,
    headers: HeaderMap,
    mut permit: Permit,
) -> Response {
    let res = serve_request(&app, p, headers, &mut permit).await;
    admission::hold(res, permit)
}

async fn serve_request(
    app: &AppState,
    p: Params,
    headers: HeaderMap,
    permit: &mut Permit,
) -> Response {
    let Some(offset_raw) = p.offset.as_deref() else {
        return invalid_request("offset", "can't be blank");
    };
    let Ok(offset) = offset_raw.parse::<RequestOffset>() else {
        return invalid_request("offset", "has invalid format");
    };
    let handle = match offset {
        RequestOffset::BeforeAll | RequestOffset::Now => None,
        RequestOffset::At(_) => match p.handle.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => Some(h.to_string()),
            None => return invalid_request("handle", "can't be blank when offset != -1"),
        },
    };
    if p.live {
        match offset {
            RequestOffset::BeforeAll => {
                return invalid_request("live", "can't be true when offset == -1");
            }
            RequestOffset::Now => {
                return invalid_request("live", "can't be true when offset is 'now'");
            }
            RequestOffset::At(_) => {}
        }
    }
    if let Some(w) = &p.where_sql
        && w.len() > MAX_WHERE_BYTES
    {
        return invalid_request(
            "where",
            &format!("is too long (at most {MAX_WHERE_BYTES} bytes)"),
        );
    }
    // Parts of the protocol volt does not serve yet: a clear 400 beats a silently
    // different answer.
    if p.live_sse && !p.live {
        return invalid_request("live_sse", "can't be true unless live is also true");
    }
    let def = match p.shape_def() {
        Ok(d) => d,
        Err(e) => return invalid_request(e.param, &e.message),
    };

    // Known shape: served from storage with no database work, also while the
    // connection subsystem is reconnecting.
    let entry = app.shared.shapes.by_def(&def);
    let entry = match entry {
        Some(e) => e,
        None => {
            if !app
                .shared
                .status
                .wait_active(app.config.stack_ready_timeout)
                .await
            {
                return unavailable("Timeout waiting for the database connection to be ready", 5);
            }
            let table =
                match table_schema(&app.shared, &app.schema_loads, &def.schema, &def.table).await {
                    Ok(t) => t,
                    Err(resp) => return resp,
                };
            let shape = match Shape::new(def, table) {
                Ok(s) => Arc::new(s),
                Err(e) => return invalid_request(e.param, &e.message),
            };
            match create_shape(&app.shared, shape).await {
                Ok(e) => e,
                Err(resp) => return resp,
            }
        }
    };

    if let Some(h) = &handle
        && *h != entry.handle
    {
        return must_refetch(Some(&entry.handle));
    }
    entry.touch();
    tracing::Span::current().record("handle", entry.handle.as_str());

    // A request that may have created the shape holds an `initial` permit until the
    // shape's snapshot has started: until then it contends for creation and for the
    // snapshot connections, which is what `initial` bounds.
    if permit.kind() == admission::Kind::Initial {
        if let Err(res) =
            await_snapshot(app, &entry, |p| !matches!(p.state, SnapshotState::Pending)).await
        {
            return res;
        }
        permit.try_swap_to_existing();
    }

    if let Some(req) = &p.subset {
        return subset::serve(app, &entry, req, offset).await;
    }
    match offset {
        RequestOffset::BeforeAll => {
            match serve_snapshot(app, &entry, 0, offset_raw, &headers).await {
                Some(res) => res,
                None => {
                    serve_log(
                        app,
                        &entry,
                        LogOffset::SNAPSHOT_END,
                        offset_raw,
                        false,
                        None,
                        &headers,
                    )
                    .await
                }
            }
        }
        RequestOffset::Now => {
            let latest = entry.log.latest_offset();
            let body = format!(
                "[{}]",
                up_to_date(app.shared.last_seen_lsn().max(latest.tx))
            );
            let mut res = ok_response(&entry, latest, body, CacheKind::NonLive);
            set_schema(&mut res, &entry);
            set_flags(&mut res, true, false);
            set_etag(&mut res, &entry, offset_raw, latest, true);
            res
        }
        RequestOffset::At(at) if p.live_sse => {
            if let Some(res) = out_of_bounds(app, &entry, at).await {
                return res;
            }
            entry.touch();
            crate::sse::serve(app, &entry, at, p.cursor.as_deref())
        }
        // Snapshot chunk k was read: the next chunk, or the log after the last one.
        RequestOffset::At(at) if at.tx == 0 && at.op < LogOffset::INF_OP => {
            let next = u32::try_from(at.op + 1).unwrap_or(u32::MAX);
            match serve_snapshot(app, &entry, next, offset_raw, &headers).await {
                Some(res) => res,
                None => {
                    serve_log(
                        app,
                        &entry,
                        at,
                        offset_raw,
                        p.live,
                        p.cursor.as_deref(),
                        &headers,
                    )
                    .await
                }
            }
        }
        RequestOffset::At(at) => {
            serve_log(
                app,
                &entry,
                at,
                offset_raw,
                p.live,
                p.cursor.as_deref(),
                &headers,
            )
            .await
        }
    }
}

/// `DELETE /v1/shape`: by definition, by handle, or both (which must agree).
pub async fn delete_shape(State(app): State<AppState>, RawQuery(query): RawQuery) -> Response {
    if !app.config.allow_delete {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"message": "DELETE not allowed"}),
        );
    }
    let p = Params::parse(query.as_deref().unwrap_or(""));
    let handle = p.handle.clone().filter(|h| !h.is_empty());
    let by_def = if p.table.is_some() {
        let def = match p.shape_def() {
            Ok(d) => d,
            Err(e) => return invalid_request(e.param, &e.message),
        };
        Some(app.shared.shapes.by_def(&def))
    } else {
        None
    };
    let entry = match (by_def, &handle) {
        (None, None) => {
            return invalid_request("handle", "can't be blank when shape definition is missing");
        }
        (None, Some(h)) => app.shared.shapes.get(h),
        (Some(found), None) => found,
        (Some(found), Some(h)) => match found {
            Some(e) if e.handle != *h => {
                return error(
                    StatusCode::BAD_REQUEST,
                    json!({"message": "The specified shape definition and handle do not match. Please ensure the shape definition is correct or omit the shape handle from the request to obtain a new one."}),
                );
            }
            other => other,
        },
    };
    let Some(entry) = entry else {
        return error(
            StatusCode::NOT_FOUND,
            json!({"message": "No existing shape found"}),
        );
    };
    // The shape's files and registry row belong to the instance that writes them.
    if app.shared.is_following() {
        return unavailable(
            "This instance serves stored shapes read-only while another instance holds the replication slot; retry later",
            5,
        );
    }
    volt_stack::shapes::invalidate(&app.shared, &entry.handle);
    let mut res = StatusCode::ACCEPTED.into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

async fn table_schema(
    shared: &Arc<Shared>,
    loads: &SchemaLoads,
    schema: &str,
    name: &str,
) -> Result<Arc<TableSchema>, Response> {
    let key = (schema.to_string(), name.to_string());
    if let Some(t) = shared.schemas.get(&key) {
        return Ok(t.clone());
    }
    // A cold cache under a herd: one request per table asks Postgres, the others wait
    // for its answer (a failed load is not cached; the next waiter tries again).
    let gate = loads.entry(key.clone()).or_default().clone();
    let _loading = gate.lock().await;
    if let Some(t) = shared.schemas.get(&key) {
        return Ok(t.clone());
    }
    let db_down = || {
        unavailable(
            "Cannot connect to the database to verify the shape. Please try again later.",
            1,
        )
    };
    let Some(conn) = shared.admin.load_full() else {
        return Err(db_down());
    };
    match admin::load_table(&conn, schema, name).await {
        Ok(Some(t)) => {
            let t = Arc::new(t);
            shared.schemas.insert(key, t.clone());
            Ok(t)
        }
        Ok(None) => Err(invalid_request(
            "table",
            &format!(
                "Table \"{schema}\".\"{name}\" does not exist. If the table name contains capitals or special characters you must quote it."
            ),
        )),
        Err(e) if e.is_retryable() => Err(db_down()),
        Err(e) => {
            tracing::error!(error = %e, "table inspection failed");
            Err(db_down())
        }
    }
}

async fn create_shape(
    shared: &Arc<Shared>,
    shape: Arc<Shape>,
) -> Result<Arc<ShapeEntry>, Response> {
    if shared
        .storage_full
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(unavailable("The storage disk is full", 10));
    }
    use volt_stack::shapes::CreateError;
    volt_stack::shapes::get_or_create(shared, shape)
        .await
        .map_err(|e| match e {
            CreateError::Overloaded => unavailable(
                "Too many shapes are being created; retry later",
                1 + rand::random::<u32>() % 5,
            ),
            CreateError::Timeout => unavailable("Timed out waiting for the shape to be created", 5),
            // Every request that waited for this creation gets the same answer.
            CreateError::Failed(reason) => {
                tracing::warn!(%reason, "shape creation failed");
                unavailable(
                    &format!("Failed to create shape: {reason}; please retry"),
                    1,
                )
            }
        })
}

/// Snapshot chunk `k` once it is complete; `None` when the snapshot has fewer chunks
/// (the request continues with the change log).
async fn serve_snapshot(
    app: &AppState,
    entry: &Arc<ShapeEntry>,
    k: u32,
    offset_raw: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let progress = match await_snapshot(app, entry, |p| {
        p.chunks_complete > k || matches!(p.state, SnapshotState::Done { .. })
    })
    .await
    {
        Ok(p) => p,
        Err(res) => return Some(res),
    };
    if progress.chunks_complete <= k {
        return None;
    }
    let log = entry.log.clone();
    // A herd reading the same new shape shares one kept body instead of reading and
    // copying the file once per request.
    let body = match log.kept_snapshot_body(k) {
        Some(body) => body,
        None => match tokio::task::spawn_blocking(move || log.read_snapshot_body(k)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => return Some(storage_error(app, entry, &e)),
            Err(_) => {
                return Some(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "Internal server error"}),
                ));
            }
        },
    };
    let offset = LogOffset::new(0, u64::from(k));
    let cache = if k == 0 {
        CacheKind::Initial
    } else {
        CacheKind::NonLive
    };
    let mut res = ok_response(entry, offset, body, cache);
    set_schema(&mut res, entry);
    set_flags(&mut res, false, true);
    set_etag(&mut res, entry, offset_raw, offset, false);
    Some(not_modified_or(res, headers))
}

/// Wait (bounded) until the shape's snapshot progress satisfies `ready`; a failed snapshot
/// is answered at once, as 409 when the shape was removed, else as a retryable 503.
pub(crate) async fn await_snapshot(
    app: &AppState,
    entry: &Arc<ShapeEntry>,
    ready: impl Fn(&SnapshotProgress) -> bool,
) -> Result<SnapshotProgress, Response> {
    let mut progress = entry.log.snapshot_progress();
    let waited = tokio::time::timeout(
        SNAPSHOT_WAIT,
        progress.wait_for(|p| {
            ready(p) || matches!(p.state, SnapshotState::Failed(_) | SnapshotState::Removed)
        }),
    )
    .await
    .map(|r| r.map(|p| p.clone()));
    let progress = match waited {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(unavailable("Failed to create shape, please retry", 1)),
        Err(_) => return Err(unavailable("Timeout waiting for the shape's snapshot", 5)),
    };
    match &progress.state {
        // Removed (DELETE, eviction, a schema change) before its snapshot was done.
        SnapshotState::Removed => {
            return Err(must_refetch(current_handle(app, entry).as_deref()));
        }
        // The snapshot query failed (e.g. the database went away): a new shape can be
        // made, so the client retries rather than refetching.
        SnapshotState::Failed(reason) => {
            tracing::warn!(handle = %entry.handle, %reason, "snapshot failed");
            let mut res = unavailable("Failed to create shape, please retry", 1);
            res.headers_mut().insert(
                "electric-internal-known-error",
                HeaderValue::from_static("true"),
            );
            return Err(res);
        }
        _ => {}
    }
    Ok(progress)
}

pub(crate) fn storage_error(
    app: &AppState,
    entry: &ShapeEntry,
    e: &volt_storage::StorageError,
) -> Response {
    // Removed while we read it: its files are gone, and its clients must refetch.
    if entry.log.is_closed() {
        return must_refetch(current_handle(app, entry).as_deref());
    }
    // Records that fail their checksum will not read any better later: the shape goes,
    // so its clients build it again from Postgres instead of getting errors for good.
    // A follower's files are another instance's to remove.
    if e.is_corrupt() && !entry.log.is_follower() {
        tracing::error!(handle = %entry.handle, error = %e, "the shape's log is unreadable: removing the shape, its clients sync again");
        volt_stack::shapes::invalidate(&app.shared, &entry.handle);
        return must_refetch(current_handle(app, entry).as_deref());
    }
    tracing::error!(handle = %entry.handle, error = %e, "cannot read the shape log");
    if e.is_disk_full() {
        return unavailable("The storage disk is full", 10);
    }
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"message": format!("Unable to retrieve shape log: {e}")}),
    )
}

fn current_handle(app: &AppState, entry: &ShapeEntry) -> Option<String> {
    app.shared
        .shapes
        .by_def(&entry.shape.def)
        .map(|e| e.handle.clone())
}

#[allow(clippy::too_many_arguments)]
async fn serve_log(
    app: &AppState,
    entry: &Arc<ShapeEntry>,
    at: LogOffset,
    offset_raw: &str,
    live: bool,
    cursor: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let log = &entry.log;
    // Snapshot offsets (tx 0) all lead to the start of the change log.
    let from = if at.tx == 0 {
        LogOffset::SNAPSHOT_END
    } else {
        at
    };
    // Subscribe before reading so a commit between the read and the wait is not missed.
    let mut changes = log.subscribe();
    if let Some(res) = out_of_bounds(app, entry, at).await {
        return res;
    }
    let deadline = tokio::time::Instant::now() + app.config.long_poll_timeout;
    loop {
        if log.is_closed() {
            return must_refetch(current_handle(app, entry).as_deref());
        }
        changes.borrow_and_update();
        if log.is_follower() {
            // A shape another instance writes: catch up with it first.
            let (shared, e) = (app.shared.clone(), entry.clone());
            let _ =
                tokio::task::spawn_blocking(move || volt_stack::shapes::follow(&shared, &e)).await;
        }
        // Every client woken by this commit, or catching up from the same offset, asks
        // for the same bytes: one read.
        let latest = log.latest_offset();
        let read = app
            .live_reads
            .get_or_read(&entry.handle, from, latest, || read_body(log.clone(), from))
            .await;
        let read = match read {
            Ok(r) => r,
            Err(ReadFailed::Storage(e)) => return storage_error(app, entry, &e),
            Err(ReadFailed::Panicked) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "Internal server error"}),
                );
            }
        };
        if let Some(read) = read {
            let kind = if live {
                CacheKind::Live
            } else {
                CacheKind::NonLive
            };
            // A body that reaches the end closes with an up-to-date: at the last item's
            // LSN for live requests (so that the whole body depends on the log alone),
            // at the latest LSN seen (raised to the last item's) for others.
            let tail = read.reached_end.then(|| {
                let lsn = if live {
                    read.last.tx
                } else {
                    app.shared.last_seen_lsn().max(read.last.tx)
                };
                up_to_date(lsn)
            });
            let mut res = ok_response(entry, read.last, read.response_body(tail.as_deref()), kind);
            set_flags(&mut res, read.reached_end, true);
            if live {
                set_cursor(&mut res, app, cursor);
            } else {
                set_schema(&mut res, entry);
            }
            set_etag(&mut res, entry, offset_raw, read.last, false);
            return not_modified_or(res, headers);
        }
        // Nothing after the request offset.
        let latest = log.latest_offset();
        let response_offset = if latest > at { latest } else { at };
        if !live {
            let body = format!(
                "[{}]",
                up_to_date(app.shared.last_seen_lsn().max(response_offset.tx))
            );
            let mut res = ok_response(entry, response_offset, body, CacheKind::NonLive);
            set_flags(&mut res, true, true);
            set_schema(&mut res, entry);
            set_etag(&mut res, entry, offset_raw, response_offset, false);
            return not_modified_or(res, headers);
        }
        let woke = tokio::select! {
            r = tokio::time::timeout_at(deadline, changes.changed()) => match r {
                Ok(Ok(())) => Woke::Changed,
                Ok(Err(_)) => Woke::Closed,
                Err(_) => Woke::TimedOut,
            },
            () = shutting_down(&app.config.shutdown) => Woke::ShuttingDown,
        };
        match woke {
            Woke::Changed => continue,
            Woke::Closed => return must_refetch(None),
            // Without a replication stream, "up to date" could be false: changes may be
            // committed that this instance has not seen. The client retries instead.
            // A follower is as up to date as the instance it follows (which streams).
            Woke::TimedOut
                if !app.shared.status.is_set(Condition::ReplicationReady)
                    && !app.shared.is_following() =>
            {
                return unavailable(
                    "Timeout waiting for the replication stream to be ready; retry later",
                    5,
                );
            }
            Woke::TimedOut | Woke::ShuttingDown => {
                let body = format!("[{}]", up_to_date(app.shared.last_seen_lsn()));
                let mut res = ok_response(entry, at, body, CacheKind::Live);
                set_flags(&mut res, true, false);
                set_cursor(&mut res, app, cursor);
                set_etag(&mut res, entry, offset_raw, at, true);
                return res;
            }
        }
    }
}

pub(crate) enum ReadFailed {
    Storage(volt_storage::StorageError),
    Panicked,
}

/// Largest log read done on an async worker instead of the blocking pool.
const INLINE_READ_BYTES: u64 = 64 * 1024;

/// The log after `from` as the shared part of a response body, `None` when nothing
/// follows it.
async fn read_body(
    log: Arc<volt_storage::ShapeLog>,
    from: LogOffset,
) -> Result<Option<Arc<LiveBody>>, ReadFailed> {
    let read = read_log(log, from).await?;
    let Some(last) = read.last else {
        return Ok(None);
    };
    let reached_end = read.reached_end;
    Ok(Some(Arc::new(LiveBody {
        items: bytes::Bytes::from(read.into_array_start()),
        last,
        reached_end,
    })))
}

/// `ShapeLog::read_after`, without blocking an async worker on a large read.
pub(crate) async fn read_log(
    log: Arc<volt_storage::ShapeLog>,
    from: LogOffset,
) -> Result<volt_storage::LogRead, ReadFailed> {
    // What a commit just added is small and in the page cache: read on this thread
    // rather than pay a hand-off to the blocking pool and back (S5 wakes 750 requests,
    // each for its own shape's few KB). Larger reads, decided before any I/O, block a
    // pool thread instead.
    let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log.read_after_within(from, INLINE_READ_BYTES)
    }))
    .map_err(|_| ReadFailed::Panicked)?
    .map_err(ReadFailed::Storage)?;
    match inline {
        Some(read) => Ok(read),
        None => tokio::task::spawn_blocking(move || log.read_after(from))
            .await
            .map_err(|_| ReadFailed::Panicked)?
            .map_err(ReadFailed::Storage),
    }
}

/// An offset past the shape's end may be one this instance has not caught up to yet:
/// wait a while for it, then say the offset is wrong.
async fn out_of_bounds(app: &AppState, entry: &ShapeEntry, at: LogOffset) -> Option<Response> {
    let log = &entry.log;
    if at.tx == 0 || !beyond(at, log.latest_offset()) {
        return None;
    }
    let mut changes = log.subscribe();
    let reached = tokio::time::timeout(
        app.config.out_of_bounds_wait,
        changes.wait_for(|latest| !beyond(at, *latest) || log.is_closed()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    (!reached).then(|| invalid_request("offset", "out of bounds for this shape"))
}

/// Whether `at` lies past `latest`: a later transaction, or a later change of the same
/// one (`<tx>_inf` means the end of `tx`, never past it).
fn beyond(at: LogOffset, latest: LogOffset) -> bool {
    at.tx > latest.tx || (at.tx == latest.tx && at.op != LogOffset::INF_OP && at.op > latest.op)
}

enum Woke {
    Changed,
    Closed,
    TimedOut,
    ShuttingDown,
}

/// The up-to-date control message, as serde_json prints it, written out directly: one
/// is built per response that reaches the end (2.6% of volt's CPU in S3 through a
/// `json!` map).
pub(crate) fn up_to_date(lsn: u64) -> String {
    format!(r#"{{"headers":{{"control":"up-to-date","global_last_seen_lsn":"{lsn}"}}}}"#)
}

#[derive(Clone, Copy)]
pub(crate) enum CacheKind {
    Initial,
    NonLive,
    Live,
}

pub(crate) fn ok_response(
    entry: &ShapeEntry,
    offset: LogOffset,
    body: impl Into<axum::body::Body>,
    cache: CacheKind,
) -> Response {
    let mut res = (StatusCode::OK, body.into()).into_response();
    let h = res.headers_mut();
    // Room for every header a response gets (these, the flags, cursor or schema, etag,
    // CORS, request id), so the map is not grown three times per response.
    h.reserve(16);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&entry.handle) {
        h.insert("electric-handle", v);
    }
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        h.insert("electric-offset", v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(match cache {
            CacheKind::Initial => {
                "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
            }
            CacheKind::NonLive => "public, max-age=60, stale-while-revalidate=300",
            CacheKind::Live => "public, max-age=5, stale-while-revalidate=5",
        }),
    );
    res
}

/// `electric-up-to-date` when the body ends with up-to-date; `electric-has-data` false
/// for responses that carry no change (long-poll timeouts, `offset=now`).
fn set_flags(res: &mut Response, up_to_date: bool, has_data: bool) {
    let h = res.headers_mut();
    if up_to_date {
        h.insert("electric-up-to-date", HeaderValue::from_static(""));
    }
    h.insert(
        "electric-has-data",
        HeaderValue::from_static(if has_data { "true" } else { "false" }),
    );
}

pub(crate) fn set_schema(res: &mut Response, entry: &ShapeEntry) {
    // Raw UTF-8 bytes: column names need not be ASCII.
    match HeaderValue::from_bytes(entry.shape.schema_header().as_bytes()) {
        Ok(v) => {
            res.headers_mut().insert("electric-schema", v);
        }
        Err(e) => {
            tracing::error!(handle = %entry.handle, error = %e, "cannot send the schema header")
        }
    }
}

fn set_etag(
    res: &mut Response,
    entry: &ShapeEntry,
    req_offset: &str,
    resp: LogOffset,
    unique: bool,
) {
    let mut tag = format!("\"{}:{}:{}", entry.handle, req_offset, resp);
    if unique {
        tag.push_str(&format!(":{:016x}", rand::random::<u64>()));
    }
    tag.push('"');
    if let Ok(v) = HeaderValue::from_str(&tag) {
        res.headers_mut().insert(header::ETAG, v);
    }
}

fn not_modified_or(res: Response, req: &HeaderMap) -> Response {
    let Some(etag) = res
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
    else {
        return res;
    };
    let etag = etag.trim_matches('"');
    let matches = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| list.split(',').any(|t| t.trim().trim_matches('"') == etag));
    if !matches {
        return res;
    }
    let mut nm = StatusCode::NOT_MODIFIED.into_response();
    for name in [header::ETAG, header::CACHE_CONTROL] {
        if let Some(v) = res.headers().get(&name) {
            nm.headers_mut().insert(name, v.clone());
        }
    }
    nm
}

/// The live cursor: the next multiple of the long-poll timeout (in seconds since
/// 2024-10-09), pushed past any cursor the client sent so caches never loop.
pub(crate) fn set_cursor(res: &mut Response, app: &AppState, given: Option<&str>) {
    const EPOCH: u64 = 1_728_432_000;
    let t = app.config.long_poll_timeout.as_secs().max(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(EPOCH);
    let s = now.saturating_sub(EPOCH);
    let mut c = s.div_ceil(t) * t;
    if let Some(p) = given.and_then(|g| g.parse::<u64>().ok())
        && c <= p
    {
        c = p.saturating_add(1 + rand::random::<u64>() % 3600);
    }
    res.headers_mut()
        .insert("electric-cursor", HeaderValue::from(c));
}

fn must_refetch(new_handle: Option<&str>) -> Response {
    let mut res = crate::response::json_response(
        StatusCode::CONFLICT,
        json!([{"headers": {"control": "must-refetch"}}]),
    );
    let h = res.headers_mut();
    match new_handle.and_then(|n| HeaderValue::from_str(n).ok()) {
        Some(v) => {
            h.insert("electric-handle", v);
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60, must-revalidate"),
            );
        }
        None => {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=1, must-revalidate"),
            );
        }
    }
    res
}

/// The shape definition a raw `/v1/shape` query string asks for, or the 400 that says why
/// not: the request's parameter parsing alone, without a database (fuzzed in `fuzz/`).
pub fn parse_shape_query(query: &str) -> Result<ShapeDef, ParamError> {
    Params::parse(query).shape_def()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_up_to_date_message_is_what_serde_json_prints() {
        for lsn in [0, 7, u64::MAX] {
            let via_json = json!({"headers": {"control": "up-to-date", "global_last_seen_lsn": lsn.to_string()}})
                .to_string();
            assert_eq!(up_to_date(lsn), via_json);
        }
    }

    fn with_etag(tag: &str) -> Response {
        let mut res = (StatusCode::OK, "[]").into_response();
        res.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(tag).unwrap());
        res
    }

    fn if_none_match(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn if_none_match_with_the_etag_is_not_modified() {
        let tag = "\"h-1:-1:0_0\"";
        for value in [tag, "h-1:-1:0_0", "\"other\", \"h-1:-1:0_0\""] {
            let res = not_modified_or(with_etag(tag), &if_none_match(value));
            assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(res.headers().get(header::ETAG).unwrap(), tag);
        }
        let res = not_modified_or(with_etag(tag), &if_none_match("\"h-1:-1:0_1\""));
        assert_eq!(res.status(), StatusCode::OK);
        let res = not_modified_or(with_etag(tag), &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::OK);
    }
}
