//! Values of every type reach clients exactly as Postgres prints them under Electric's
//! display settings, the same from the snapshot as from the replication stream, and the
//! `electric-schema` header describes each column as Electric does.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_postgres::{Client, SimpleQueryMessage};

use volt_stack::actors::publication_manager::PublicationMsg;
use volt_storage::ShapeDbOp;

use crate::support::{DEADLINE, Follower, TestVolt, eventually, fetch};

/// The table and its rows, shared with the JS suite (tests/js/test/types.test.js).
const EVERY_TYPE: &str = include_str!("../fixtures/every_type.sql");

/// Electric's session settings (`lib/electric/postgres.ex`), set here independently of
/// volt's own copy so that a wrong setting in volt shows up as a value difference.
const ELECTRIC_SETTINGS: &str = "SET bytea_output = 'hex'; SET DateStyle = 'ISO, DMY'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET IntervalStyle = 'iso_8601'";

/// A row as text: column name → Postgres text output (None for NULL).
type TextRow = BTreeMap<String, Option<String>>;

/// Rows by `id`.
type TextRows = BTreeMap<String, TextRow>;

/// What Electric puts in `electric-schema` for each column of `every_type`, derived by
/// hand from `Electric.Schema` (`type` = pg_type.typname, arrays by element type with
/// `dims`, modifiers decoded from atttypmod).
fn electric_schema() -> Value {
    // Notes: Electric only reads a positive time modifier as a precision, so
    // `timestamp(0)` comes out as a raw `type_mod`; bit types report their modifier even
    // when there is none (`varbit` → -1); enums and domains go by their own name.
    serde_json::from_str(
        r#"{
            "id": {"type": "int4", "pk_index": 0, "not_null": true},
            "i2": {"type": "int2"},
            "i4": {"type": "int4"},
            "i8": {"type": "int8"},
            "f4": {"type": "float4"},
            "f8": {"type": "float8"},
            "num": {"type": "numeric"},
            "num_ps": {"type": "numeric", "precision": 10, "scale": 2},
            "t": {"type": "text"},
            "t_nn": {"type": "text", "not_null": true},
            "vc": {"type": "varchar", "max_length": 12},
            "vc_any": {"type": "varchar"},
            "ch": {"type": "bpchar", "length": 5},
            "ch1": {"type": "bpchar", "length": 1},
            "b": {"type": "bool"},
            "u": {"type": "uuid"},
            "d": {"type": "date"},
            "tm": {"type": "time"},
            "tm3": {"type": "time", "precision": 3},
            "ttz": {"type": "timetz"},
            "ts": {"type": "timestamp"},
            "ts0": {"type": "timestamp", "type_mod": 0},
            "tstz": {"type": "timestamptz"},
            "tstz3": {"type": "timestamptz", "precision": 3},
            "iv": {"type": "interval"},
            "iv_ds": {"type": "interval", "fields": "DAY TO SECOND", "precision": 2},
            "iv_ym": {"type": "interval", "fields": "YEAR TO MONTH"},
            "iv_p": {"type": "interval", "precision": 3},
            "j": {"type": "json"},
            "jb": {"type": "jsonb"},
            "by": {"type": "bytea"},
            "bt": {"type": "bit", "length": 4},
            "vb": {"type": "varbit", "length": -1},
            "vb8": {"type": "varbit", "length": 8},
            "m": {"type": "mood"},
            "pi": {"type": "posint"},
            "st": {"type": "short_text"},
            "ip": {"type": "inet"},
            "net": {"type": "cidr"},
            "mac": {"type": "macaddr"},
            "pt": {"type": "point"},
            "mny": {"type": "money"},
            "r4": {"type": "int4range"},
            "big": {"type": "text"},
            "ai": {"type": "int4", "dims": 1},
            "ai2": {"type": "int4", "dims": 2},
            "at": {"type": "text", "dims": 1},
            "ab": {"type": "bool", "dims": 1},
            "ai8": {"type": "int8", "dims": 1},
            "af8": {"type": "float8", "dims": 1},
            "ajb": {"type": "jsonb", "dims": 1},
            "avc": {"type": "varchar", "dims": 1, "max_length": 3},
            "anum": {"type": "numeric", "dims": 1, "precision": 5, "scale": 1},
            "ats": {"type": "timestamptz", "dims": 1},
            "am": {"type": "mood", "dims": 1},
            "aby": {"type": "bytea", "dims": 1}
        }"#,
    )
    .expect("valid JSON")
}

/// Columns where Electric's snapshot query (`col::text`, `concat` for bpchar) prints
/// something else than the type's output function, which its replication stream and
/// volt's snapshot and stream all use: `bool::text` is `true`/`false` (not `t`/`f`),
/// `inet::text` always shows the netmask. volt keeps the output form so that a row
/// reads the same before and after it changes; the client parses both bool forms.
const ELECTRIC_SNAPSHOT_DIFFERS: &[&str] = &["b", "ip"];

async fn oracle_client(volt: &TestVolt) -> anyhow::Result<Client> {
    let client = volt.db.client().await?;
    client.batch_execute(ELECTRIC_SETTINGS).await?;
    Ok(client)
}

/// Every row of `every_type` as Postgres prints it: the simple-query protocol returns
/// each value in its type's text output form.
async fn pg_rows(client: &Client, select: &str) -> anyhow::Result<TextRows> {
    let mut rows = TextRows::new();
    for msg in client.simple_query(select).await? {
        if let SimpleQueryMessage::Row(r) = msg {
            let mut row = TextRow::new();
            for (i, col) in r.columns().iter().enumerate() {
                row.insert(col.name().to_string(), r.get(i).map(str::to_string));
            }
            let id = row.get("id").cloned().flatten().context("row without id")?;
            rows.insert(id, row);
        }
    }
    Ok(rows)
}

async fn output_text(client: &Client) -> anyhow::Result<TextRows> {
    pg_rows(client, "SELECT * FROM every_type").await
}

/// The text Electric's snapshot query produces for each column (`querying.ex`).
async fn electric_snapshot_text(client: &Client) -> anyhow::Result<TextRows> {
    let cols = columns(client).await?;
    let select: Vec<String> = cols
        .iter()
        .map(|c| {
            format!(
                "CASE WHEN {c} IS NULL THEN NULL::text \
                 WHEN pg_typeof({c}) = 'character'::regtype THEN concat({c}, '') \
                 ELSE {c}::text END AS {c}"
            )
        })
        .collect();
    pg_rows(
        client,
        &format!("SELECT {} FROM every_type", select.join(", ")),
    )
    .await
}

async fn columns(client: &Client) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = 'every_type'::regclass AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A message's `value` (or `old_value`) as text.
fn as_text_row(value: &Value) -> anyhow::Result<TextRow> {
    let obj = value.as_object().context("value is not an object")?;
    obj.iter()
        .map(|(k, v)| match v {
            Value::Null => Ok((k.clone(), None)),
            Value::String(s) => Ok((k.clone(), Some(s.clone()))),
            other => bail!("{k} is {other}: values must be strings or null"),
        })
        .collect()
}

fn short(v: &Option<String>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) if s.chars().count() > 80 => {
            format!(
                "{:?}... ({} chars)",
                s.chars().take(80).collect::<String>(),
                s.len()
            )
        }
        Some(s) => format!("{s:?}"),
    }
}

/// Every column where `got` differs from `want`, readable.
fn differences(got: &TextRow, want: &TextRow) -> Vec<String> {
    let names: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    names
        .into_iter()
        .filter_map(|n| {
            let (g, w) = (got.get(n), want.get(n));
            (g != w).then(|| {
                format!(
                    "{n}: volt sent {}, Postgres prints {}",
                    g.map_or("(absent)".into(), short),
                    w.map_or("(absent)".into(), short)
                )
            })
        })
        .collect()
}

fn assert_same(what: &str, got: &TextRow, want: &TextRow) {
    let diff = differences(got, want);
    assert!(diff.is_empty(), "{what}:\n  {}", diff.join("\n  "));
}

fn id_of(msg: &Value) -> String {
    msg["key"]
        .as_str()
        .and_then(|k| k.rsplit('/').next())
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// The columns whose text differs between two versions of a row, with the old text:
/// what `old_value` must hold for a `replica=full` update.
fn changed(old: &TextRow, new: &TextRow) -> TextRow {
    old.iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test]
async fn schema_header_describes_every_column_as_electric_does() -> anyhow::Result<()> {
    let volt = TestVolt::start("types_schema_header").await?;
    volt.db.execute(EVERY_TYPE).await?;
    let res = fetch(&volt, "table=every_type&offset=-1").await?;
    assert_eq!(res.status, 200, "{}", res.body);
    let got = res.schema.context("no electric-schema header")?;
    let want = electric_schema();
    let (got_map, want_map) = (
        got.as_object().context("header is not an object")?,
        want.as_object().context("expected is not an object")?,
    );
    let wrong: Vec<String> = want_map
        .iter()
        .filter(|(k, v)| got_map.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: volt {:?}, Electric {v}", got_map.get(k)))
        .chain(
            got_map
                .keys()
                .filter(|k| !want_map.contains_key(*k))
                .map(|k| format!("{k}: not a column")),
        )
        .collect();
    assert!(
        wrong.is_empty(),
        "schema differs:\n  {}",
        wrong.join("\n  ")
    );

    // A `columns` selection describes only the selected columns, the same way.
    let res = fetch(&volt, "table=every_type&columns=id,avc,iv_ds&offset=-1").await?;
    assert_eq!(
        res.schema,
        Some(json!({"id": want["id"], "avc": want["avc"], "iv_ds": want["iv_ds"]}))
    );
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn values_of_every_type_match_postgres_text_in_snapshot_and_stream() -> anyhow::Result<()> {
    let volt = TestVolt::start("types_round_trip").await?;
    volt.db.execute(EVERY_TYPE).await?;
    let pg = oracle_client(&volt).await?;
    let initial = output_text(&pg).await?;
    assert_eq!(initial.len(), 7, "fixture rows");

    // The expected values are the output-function text (what pgoutput sends). They equal
    // `col::text`, which Electric's snapshot uses, on every column but these.
    let electric = electric_snapshot_text(&pg).await?;
    let mut differing = BTreeSet::new();
    for (id, row) in &initial {
        for (c, text) in changed(&electric[id], row) {
            eprintln!(
                "row {id}, {c}: Electric's snapshot prints {}, the output function {}",
                short(&text),
                short(&row[&c])
            );
            differing.insert(c);
        }
    }
    assert_eq!(
        differing,
        ELECTRIC_SNAPSHOT_DIFFERS
            .iter()
            .map(|c| c.to_string())
            .collect::<BTreeSet<_>>()
    );

    // Snapshot: every row, every column.
    let mut full = Follower::new("table=every_type&replica=full");
    full.catch_up(&volt).await?;
    let mut default = Follower::new("table=every_type");
    default.catch_up(&volt).await?;
    assert_eq!(full.rows.len(), initial.len());
    for value in full.rows.values() {
        let got = as_text_row(&Value::Object(value.clone()))?;
        let id = got.get("id").cloned().flatten().context("row without id")?;
        assert_same(&format!("snapshot row {id}"), &got, &initial[&id]);
    }

    // Live: copies of every row (inserts), then updates and deletes, one transaction each.
    volt.db
        .execute(
            "BEGIN; \
             CREATE TEMP TABLE copy ON COMMIT DROP AS SELECT * FROM every_type; \
             UPDATE copy SET id = id + 100; \
             INSERT INTO every_type SELECT * FROM copy; \
             COMMIT;",
        )
        .await?;
    let after_insert = output_text(&pg).await?;
    let cols: Vec<String> = columns(&pg)
        .await?
        .into_iter()
        .filter(|c| c != "id")
        .map(|c| format!("\"{c}\""))
        .collect();
    // Row 1 keeps its out-of-line `big` value unchanged (pgoutput sends it as
    // "unchanged"); row 101 takes every value of row 2.
    volt.db
        .execute(&format!(
            "BEGIN; \
             UPDATE every_type SET i2 = 7 WHERE id = 1; \
             UPDATE every_type SET ({c}) = (SELECT {c} FROM every_type WHERE id = 2) WHERE id = 101; \
             COMMIT;",
            c = cols.join(", ")
        ))
        .await?;
    let after_update = output_text(&pg).await?;
    volt.db
        .execute("DELETE FROM every_type WHERE id IN (1, 103)")
        .await?;
    let after_delete = output_text(&pg).await?;

    let expected_changes = initial.len() + 2 + 2;
    full.until(&volt, "every change (replica=full)", |f| {
        f.changes.len() >= expected_changes
    })
    .await?;
    assert_eq!(full.changes.len(), expected_changes);
    for msg in &full.changes {
        let id = id_of(msg);
        let op = msg["headers"]["operation"].as_str().unwrap_or_default();
        let value = as_text_row(&msg["value"])?;
        match op {
            "insert" => assert_same(&format!("insert of {id}"), &value, &after_insert[&id]),
            "update" => {
                assert_same(&format!("update of {id}"), &value, &after_update[&id]);
                let old = as_text_row(&msg["old_value"])?;
                let want = changed(&after_insert[&id], &after_update[&id]);
                assert_same(&format!("old_value of update of {id}"), &old, &want);
            }
            "delete" => assert_same(&format!("delete of {id}"), &value, &after_update[&id]),
            other => bail!("unexpected operation {other}"),
        }
    }
    let mut ops: Vec<String> = full
        .changes
        .iter()
        .filter(|m| m["headers"]["operation"] != "insert")
        .map(|m| {
            format!(
                "{} {}",
                m["headers"]["operation"].as_str().unwrap_or("?"),
                id_of(m)
            )
        })
        .collect();
    // The two deletes come in the order the statement found the rows.
    ops[2..].sort();
    assert_eq!(ops, ["update 1", "update 101", "delete 1", "delete 103"]);

    // replica=default sends only changed columns; merged into the snapshot rows they
    // must still give exactly what Postgres holds (the unchanged TOAST value included).
    default
        .until(&volt, "every change (replica=default)", |f| {
            f.changes.len() >= expected_changes
        })
        .await?;
    assert_eq!(default.rows.len(), after_delete.len());
    for value in default.rows.values() {
        let got = as_text_row(&Value::Object(value.clone()))?;
        let id = got.get("id").cloned().flatten().context("row without id")?;
        assert_same(&format!("materialised row {id}"), &got, &after_delete[&id]);
    }
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn shapes_stored_before_type_modifiers_stay_valid_after_a_restart() -> anyhow::Result<()> {
    let mut volt = TestVolt::start("types_legacy_shapes").await?;
    volt.db
        .execute(
            "CREATE TABLE legacy (id int PRIMARY KEY, name varchar(10), tags varchar(3)[]); \
             INSERT INTO legacy VALUES (1, 'one', '{a}')",
        )
        .await?;
    let mut f = Follower::new("table=legacy");
    f.catch_up(&volt).await?;
    let handle = f.handle.clone();

    // Rewrite the stored definitions the way a volt from before modifiers and element
    // types were recorded wrote them.
    let db = &volt.shared().shape_db;
    let stored = handle.clone().context("no handle")?;
    // The registry is written behind the request that created the shape.
    eventually("the shape is in the registry", || async {
        Ok(db.load_all().await?.iter().any(|(h, _)| *h == stored))
    })
    .await?;
    let mut ops = Vec::new();
    for (handle, definition) in db.load_all().await? {
        let mut def: Value = serde_json::from_str(&definition)?;
        let columns = def["table"]["columns"]
            .as_array_mut()
            .context("stored definition has no columns")?;
        for column in columns {
            let column = column.as_object_mut().context("column is not an object")?;
            column.remove("type_mod").context("type_mod is stored")?;
            column
                .remove("elem_typname")
                .context("elem_typname is stored")?;
        }
        ops.push(ShapeDbOp::Add {
            handle,
            definition: def.to_string(),
        });
    }
    db.apply(&ops).await?;
    volt.restart().await?;

    // The reconciler compares the restored shape with the live table, whose modifiers it
    // now reads: that alone must not count as a schema change.
    let pm = volt
        .shared()
        .publication_manager
        .load_full()
        .context("no publication manager")?;
    pm.call(
        |reply| PublicationMsg::Reconcile(Some(reply)),
        Some(DEADLINE),
    )
    .await?;
    volt.db
        .execute("INSERT INTO legacy VALUES (2, 'two', '{b,c}')")
        .await?;
    f.until(&volt, "the insert after the restart", |f| f.rows.len() == 2)
        .await?;
    assert_eq!(f.refetches, 0, "the stored shape stayed valid");
    assert_eq!(f.handle, handle);

    // A known shape is served from what was stored: its header stays the one its
    // clients already have (they keep the first they saw) until the shape is replaced.
    let res = fetch(&volt, "table=legacy&offset=-1").await?;
    assert_eq!(res.handle, handle);
    assert_eq!(
        res.schema,
        Some(json!({
            "id": {"type": "int4", "pk_index": 0, "not_null": true},
            "name": {"type": "varchar"},
            "tags": {"type": "varchar", "dims": 1},
        }))
    );
    volt.stop().await;
    Ok(())
}
