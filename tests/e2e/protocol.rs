//! The Shape API as the official client uses it.

use serde_json::Value;

use crate::support::{Follower, TestVolt, fetch};

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, title text, qty int, done bool, price numeric(10,2));
     INSERT INTO items VALUES (1, 'one', 5, false, 1.50), (2, 'two/2', 20, true, NULL);";

#[tokio::test]
async fn initial_snapshot_has_handle_offset_schema_and_snapshot_end() -> anyhow::Result<()> {
    let volt = TestVolt::start("initial_snapshot").await?;
    volt.db.execute(ITEMS).await?;
    let res = fetch(&volt, "table=items&offset=-1").await?;
    assert_eq!(res.status, 200);
    assert!(res.handle.is_some());
    assert_eq!(res.offset.as_deref(), Some("0_0"));
    assert!(
        !res.up_to_date,
        "the first snapshot chunk is never up to date"
    );
    let items = res.body.as_array().expect("array");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["key"], "\"public\".\"items\"/\"1\"");
    assert_eq!(items[1]["key"], "\"public\".\"items\"/\"2\"");
    assert_eq!(items[0]["value"]["done"], "f");
    assert_eq!(items[0]["value"]["price"], "1.50");
    assert_eq!(items[1]["value"]["price"], Value::Null);
    assert_eq!(items[0]["headers"]["operation"], "insert");
    assert_eq!(
        items[0]["headers"]["relation"],
        serde_json::json!(["public", "items"])
    );
    let end = &items[2]["headers"];
    assert_eq!(end["control"], "snapshot-end");
    assert!(end["xmin"].is_string() && end["xmax"].is_string() && end["xip_list"].is_array());

    let h = res.handle.expect("handle");
    let res = fetch(&volt, &format!("table=items&offset=0_0&handle={h}")).await?;
    assert_eq!(res.status, 200);
    assert!(res.up_to_date);
    assert_eq!(res.offset.as_deref(), Some("0_inf"));
    assert_eq!(res.body[0]["headers"]["control"], "up-to-date");
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn schema_header_describes_types_and_primary_key() -> anyhow::Result<()> {
    let volt = TestVolt::start("schema_header").await?;
    volt.db.execute(ITEMS).await?;
    let res = volt.get("/v1/shape?table=items&offset=-1").await?;
    let schema: Value = serde_json::from_str(res.headers()["electric-schema"].to_str()?)?;
    assert_eq!(
        schema["id"],
        serde_json::json!({"type": "int4", "pk_index": 0, "not_null": true})
    );
    assert_eq!(schema["title"], serde_json::json!({"type": "text"}));
    assert_eq!(schema["done"]["type"], "bool");
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_parameter() -> anyhow::Result<()> {
    let volt = TestVolt::start("bad_requests").await?;
    volt.db.execute(ITEMS).await?;
    let cases = [
        ("table=items", "offset", "can't be blank"),
        ("table=items&offset=abc", "offset", "has invalid format"),
        ("offset=-1", "table", "can't be blank"),
        ("table=nope&offset=-1", "table", "does not exist"),
        ("table=items&offset=5_0", "handle", "can't be blank"),
        ("table=items&offset=-1&live=true", "live", "can't be true"),
        (
            "table=items&offset=-1&where=qty%20%3E",
            "where",
            "At location",
        ),
        (
            "table=items&offset=-1&where=nope%20%3D%201",
            "where",
            "At location",
        ),
        ("table=items&offset=-1&where=qty", "where", "At location"),
        (
            "table=items&offset=-1&columns=title",
            "columns",
            "primary key",
        ),
        (
            "table=items&offset=-1&columns=id,nope",
            "columns",
            "not found",
        ),
        ("table=items&offset=-1&replica=x", "replica", "is invalid"),
    ];
    for (query, param, expected) in cases {
        let res = volt.get(&format!("/v1/shape?{query}")).await?;
        assert_eq!(res.status(), 400, "{query}");
        assert!(
            res.headers()["content-type"]
                .to_str()?
                .starts_with("application/json"),
            "{query}"
        );
        let body: Value = res.json().await?;
        assert_eq!(body["message"], "Invalid request", "{query}");
        let msg = body["errors"][param][0].as_str().unwrap_or_default();
        assert!(msg.contains(expected), "{query}: {body}");
    }
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn stale_handle_gets_409_with_the_current_handle() -> anyhow::Result<()> {
    let volt = TestVolt::start("stale_handle").await?;
    volt.db.execute(ITEMS).await?;
    let first = fetch(&volt, "table=items&offset=-1").await?;
    let res = fetch(&volt, "table=items&offset=0_0&handle=not-a-handle").await?;
    assert_eq!(res.status, 409);
    assert_eq!(res.handle, first.handle);
    assert_eq!(
        res.body,
        serde_json::json!([{"headers": {"control": "must-refetch"}}])
    );
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn live_request_at_the_tip_times_out_with_up_to_date_and_a_cursor() -> anyhow::Result<()> {
    let volt = TestVolt::start("live_timeout").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let h = f.handle.clone().expect("handle");
    let res = volt
        .get(&format!(
            "/v1/shape?table=items&offset={}&handle={h}&live=true",
            f.offset
        ))
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["electric-has-data"], "false");
    assert!(res.headers().contains_key("electric-up-to-date"));
    assert!(!res.headers().contains_key("electric-schema"));
    let cursor: u64 = res.headers()["electric-cursor"].to_str()?.parse()?;
    assert!(cursor > 0);
    assert_eq!(res.headers()["electric-offset"].to_str()?, f.offset);
    let body: Value = res.json().await?;
    assert_eq!(body[0]["headers"]["control"], "up-to-date");
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn secret_guards_the_shape_api_and_admin_but_not_health() -> anyhow::Result<()> {
    let volt = TestVolt::start_with("secret_guard", Some("s3cret")).await?;
    volt.db.execute(ITEMS).await?;
    let status = |p: &'static str| {
        let v = &volt;
        async move { anyhow::Ok(v.get(p).await?.status().as_u16()) }
    };
    assert_eq!(status("/v1/shape?table=items&offset=-1").await?, 401);
    assert_eq!(
        status("/v1/shape?table=items&offset=-1&secret=wrong").await?,
        401
    );
    assert_eq!(
        status("/v1/shape?table=items&offset=-1&secret=s3cret").await?,
        200
    );
    assert_eq!(
        status("/v1/shape?table=items&offset=-1&api_secret=s3cret").await?,
        200
    );
    assert_eq!(status("/v1/admin/tree").await?, 401);
    assert_eq!(status("/v1/admin/tree?secret=s3cret").await?, 200);
    assert_eq!(status("/v1/health").await?, 200);
    let preflight = volt
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/shape", volt.base))
        .send()
        .await?;
    assert_eq!(preflight.status(), 204);
    let body: Value = volt
        .get("/v1/shape?table=items&offset=-1")
        .await?
        .json()
        .await?;
    assert!(body["message"].is_string());
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_offset_past_the_shapes_end_is_a_400_after_a_short_wait() -> anyhow::Result<()> {
    let volt = TestVolt::start("out_of_bounds").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let h = f.handle.clone().unwrap_or_default();
    for live in ["", "&live=true"] {
        let res = volt
            .get(&format!(
                "/v1/shape?table=items&handle={h}&offset=999999999999_0{live}"
            ))
            .await?;
        assert_eq!(res.status(), 400, "{live}");
        let body: Value = res.json().await?;
        assert_eq!(
            body["errors"]["offset"][0], "out of bounds for this shape",
            "{live}"
        );
    }
    // The shape's own end, even written as `<tx>_inf`, is not out of bounds.
    volt.db.execute("INSERT INTO items (id) VALUES (3)").await?;
    f.until(&volt, "the insert", |f| f.changes.len() == 1)
        .await?;
    let lsn = f.changes[0]["headers"]["lsn"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let res = fetch(&volt, &format!("table=items&handle={h}&offset={lsn}_inf")).await?;
    assert_eq!(res.status, 200);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn changes_only_shapes_skip_the_snapshot_rows_but_get_every_later_change()
-> anyhow::Result<()> {
    let volt = TestVolt::start("changes_only").await?;
    volt.db.execute(ITEMS).await?;
    let res = fetch(&volt, "table=items&offset=-1&log=changes_only").await?;
    assert_eq!(res.status, 200);
    let items = res.body.as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "only snapshot-end: {}", res.body);
    assert_eq!(items[0]["headers"]["control"], "snapshot-end");
    let full = fetch(&volt, "table=items&offset=-1").await?;
    assert_ne!(
        full.handle, res.handle,
        "log mode is part of the shape's identity"
    );

    let mut f = Follower::new("table=items&log=changes_only");
    f.catch_up(&volt).await?;
    assert!(f.rows.is_empty());
    volt.db
        .execute("UPDATE items SET qty = 7 WHERE id = 1")
        .await?;
    f.until(&volt, "the update", |f| f.changes.len() == 1)
        .await?;
    assert_eq!(f.changes[0]["headers"]["operation"], "update");
    let res = volt
        .get("/v1/shape?table=items&offset=-1&log=sideways")
        .await?;
    assert_eq!(res.status(), 400);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn sse_sends_changes_as_events_with_up_to_date_keep_alives_and_an_end() -> anyhow::Result<()>
{
    use futures::StreamExt;
    let volt = TestVolt::start("sse").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let h = f.handle.clone().unwrap_or_default();
    let res = volt
        .get("/v1/shape?table=items&offset=-1&live_sse=true")
        .await?;
    assert_eq!(res.status(), 400, "live_sse needs live");

    let res = volt
        .http
        .get(format!(
            "{}/v1/shape?table=items&handle={h}&offset={}&live=true&live_sse=true",
            volt.base, f.offset
        ))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(res.headers().contains_key("electric-cursor"));
    assert_eq!(res.headers()["electric-offset"].to_str()?, f.offset);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let started = std::time::Instant::now();
    let mut inserted = false;
    while let Some(chunk) = tokio::time::timeout(crate::support::DEADLINE, body.next()).await? {
        text.push_str(&String::from_utf8_lossy(&chunk?));
        if !inserted && text.contains(": keep-alive\n\n") {
            volt.db
                .execute("INSERT INTO items (id, title) VALUES (9, 'sse')")
                .await?;
            inserted = true;
        }
    }
    // The stream ended by itself (sse_duration), having carried the insert.
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let insert = events
        .iter()
        .position(|e| e["headers"]["operation"] == "insert")
        .expect("the insert arrived as an event");
    assert_eq!(events[insert]["value"]["title"], "sse");
    assert_eq!(events[insert + 1]["headers"]["control"], "up-to-date");
    assert_eq!(
        events[insert + 1]["headers"]["global_last_seen_lsn"],
        events[insert]["headers"]["lsn"]
    );
    volt.stop().await;
    Ok(())
}
