//! Micro-benchmarks of volt's pure hot paths: where-clause evaluation, filter-index
//! routing, pgoutput decoding and log encoding. `just micro` runs them (criterion prints
//! time per iteration; each iteration here is one evaluation, routing, decode or encode
//! unless its name says otherwise).

use std::hint::black_box;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pg_walstream::{ColumnInfo, LogicalReplicationMessage, LogicalReplicationParser};
use volt_pg::replication::FragmentBuilder;
use volt_shapes::where_clause::WhereClause;
use volt_shapes::{
    Change, ChangeKind, ColumnSchema, Filter, Relation, RelationColumn, Shape, ShapeDef,
    TableSchema, Value,
};
use volt_storage::{LogOffset, ShapeLog};

fn column(name: &str, typname: &str, type_oid: u32, pk: Option<usize>) -> ColumnSchema {
    ColumnSchema {
        name: name.into(),
        type_oid,
        typname: typname.into(),
        not_null: pk.is_some(),
        pk_index: pk,
        dims: 0,
        type_mod: Some(-1),
        elem_typname: None,
        enum_labels: None,
    }
}

/// `items(id int8 pk, owner int8, status text, qty int4, title text)`.
fn table() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        oid: 16384,
        schema: "public".into(),
        name: "items".into(),
        columns: vec![
            column("id", "int8", 20, Some(0)),
            column("owner", "int8", 20, None),
            column("status", "text", 25, None),
            column("qty", "int4", 23, None),
            column("title", "text", 25, None),
        ],
    })
}

fn relation(t: &TableSchema) -> Arc<Relation> {
    Arc::new(Relation {
        oid: t.oid,
        schema: t.schema.clone(),
        name: t.name.clone(),
        columns: t
            .columns
            .iter()
            .map(|c| RelationColumn {
                name: c.name.clone(),
                type_oid: c.type_oid,
                is_key: c.pk_index.is_some(),
            })
            .collect(),
    })
}

fn shape(t: &Arc<TableSchema>, where_sql: &str) -> Arc<Shape> {
    let def = ShapeDef::from_params(Some("items"), Some(where_sql), vec![], None, None, None)
        .expect("valid definition");
    Arc::new(Shape::new(def, t.clone()).expect("valid shape"))
}

const TITLE: &str = "Quarterly report: shipping delays in the northern warehouse";

fn row(owner: i64) -> Vec<Value> {
    vec![
        Value::Text("123456".into()),
        Value::Text(owner.to_string().into()),
        Value::Text("open".into()),
        Value::Text("17".into()),
        Value::Text(TITLE.into()),
    ]
}

fn where_eval(c: &mut Criterion) {
    let t = table();
    let values = ["123456", "4242", "open", "17", TITLE];
    let cells: Vec<Option<&str>> = values.iter().map(|v| Some(*v)).collect();
    let mut g = c.benchmark_group("where_eval");
    for (name, sql) in [
        ("eq_int", "owner = 4242"),
        // S5's target: <= 1 us per ILIKE evaluation.
        ("ilike_contains", "title ILIKE '%WAREHOUSE%'"),
        ("ilike_two_wildcards_miss", "title ILIKE '%ship%zebra%'"),
        (
            "and_eq_in_gt",
            "owner = 4242 AND status IN ('open', 'held') AND qty > 10",
        ),
    ] {
        let w = WhereClause::parse(sql, &t.columns, &[]).expect("valid clause");
        g.bench_function(name, |b| b.iter(|| black_box(w.matches(black_box(&cells)))));
    }
    g.finish();
}

fn filter_routing(c: &mut Criterion) {
    let t = table();
    let rel = relation(&t);
    let mut g = c.benchmark_group("filter_route");
    for (name, eq_shapes, others) in [
        ("10k_eq_20_ilike", 10_000usize, 20usize),
        ("10k_eq_2k_ilike", 10_000, 2_000),
    ] {
        let mut f = Filter::new();
        for i in 0..eq_shapes {
            f.add(i, shape(&t, &format!("owner = {i}")));
        }
        for i in 0..others {
            f.add(
                eq_shapes + i,
                shape(&t, &format!("title ILIKE '%word{i}%'")),
            );
        }
        let insert = Change {
            relation: rel.clone(),
            op: 0,
            kind: ChangeKind::Insert { new: row(4242) },
        };
        let update = Change {
            relation: rel.clone(),
            op: 0,
            kind: ChangeKind::Update {
                old: Some(row(4242)),
                new: row(17),
            },
        };
        let mut out = Vec::new();
        g.bench_function(format!("{name}/insert"), |b| {
            b.iter(|| {
                f.affected(black_box(&insert), &mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("{name}/update"), |b| {
            b.iter(|| {
                f.affected(black_box(&update), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// A pgoutput Insert message as Postgres sends it.
fn insert_message(relation_id: u32, values: &[&str]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(relation_id);
    b.put_u8(b'N');
    b.put_u16(values.len() as u16);
    for v in values {
        b.put_u8(b't');
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b.freeze()
}

fn pgoutput_decode(c: &mut Criterion) {
    let t = table();
    let msg = insert_message(16384, &["123456", "4242", "open", "17", TITLE]);
    let mut g = c.benchmark_group("pgoutput_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("insert_5_columns", |b| {
        let mut parser = LogicalReplicationParser::with_protocol_version(1);
        let mut builder = FragmentBuilder::new(volt_pg::replication::MAX_FRAGMENT_CHANGES);
        builder
            .message(LogicalReplicationMessage::Relation {
                relation_id: 16384,
                namespace: "public".into(),
                relation_name: "items".into(),
                replica_identity: b'f',
                columns: t
                    .columns
                    .iter()
                    .map(|c| {
                        ColumnInfo::new(
                            u8::from(c.pk_index.is_some()),
                            c.name.clone(),
                            c.type_oid,
                            -1,
                        )
                    })
                    .collect(),
            })
            .expect("relation");
        builder.begin(1, 1);
        b.iter(|| {
            let parsed = parser
                .parse_wal_message_bytes(black_box(msg.clone()))
                .expect("valid message");
            black_box(builder.message(parsed.message).expect("decoded"))
        })
    });
    g.finish();
}

fn log_encoding(c: &mut Criterion) {
    let t = table();
    let rel = relation(&t);
    let s = shape(&t, "owner = 4242");
    let insert = Change {
        relation: rel.clone(),
        op: 0,
        kind: ChangeKind::Insert { new: row(4242) },
    };
    let update = Change {
        relation: rel,
        op: 0,
        kind: ChangeKind::Update {
            old: Some(row(4242)),
            new: {
                let mut r = row(4242);
                r[3] = Value::Text("18".into());
                r
            },
        },
    };
    let mut g = c.benchmark_group("log_encode");
    for (name, change) in [("insert", &insert), ("update", &update)] {
        g.bench_function(format!("convert_to_json/{name}"), |b| {
            b.iter(|| {
                let items = s.convert(black_box(change));
                black_box(
                    items
                        .iter()
                        .map(|i| i.to_json(("public", "items"), 7, 123456, true))
                        .collect::<Vec<_>>(),
                )
            })
        });
    }
    // A snapshot row (COPY's values, in the shape's snapshot column order) into its item.
    let all = {
        let def = ShapeDef::from_params(Some("items"), None, vec![], None, None, None)
            .expect("valid definition");
        Shape::new(def, t.clone()).expect("valid shape")
    };
    let encoder = all.snapshot_encoder(None);
    let values = ["123456", "4242", "open", "17", TITLE];
    let by_slot: Vec<Option<&str>> = all
        .snapshot_columns()
        .iter()
        .map(|&c| Some(values[c]))
        .collect();
    let mut out = Vec::with_capacity(64 * 1024);
    g.bench_function("snapshot_encode", |b| {
        b.iter(|| {
            out.clear();
            encoder.encode(&mut out, black_box(by_slot.as_slice()));
            black_box(out.len())
        })
    });
    let line = s.convert(&insert)[0].to_json(("public", "items"), 7, 123456, true);
    const RECORDS: u64 = 1000;
    g.throughput(Throughput::Elements(RECORDS));
    g.bench_function("shape_log_append_1000", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("temp dir");
                let log = ShapeLog::create(dir.path().join("shape"), 10 << 20).expect("log");
                (dir, log)
            },
            |(dir, log)| {
                for i in 0..RECORDS {
                    log.append(LogOffset::new(1000, i * 2), &line, i + 1 == RECORDS)
                        .expect("append");
                }
                (dir, log)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    where_eval,
    filter_routing,
    pgoutput_decode,
    log_encoding
);
criterion_main!(benches);
