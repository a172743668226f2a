//! Arbitrary text as a where clause over a fixed table: parsing, rendering and evaluating on
//! a few rows must never panic (errors are fine).

#![no_main]

use libfuzzer_sys::fuzz_target;
use volt_shapes::ColumnSchema;
use volt_shapes::where_clause::WhereClause;

fn column(name: &str, typname: &str) -> ColumnSchema {
    ColumnSchema {
        name: name.to_string(),
        type_oid: 0,
        typname: typname.to_string(),
        not_null: false,
        pk_index: None,
        dims: usize::from(typname.starts_with('_')),
        type_mod: None,
        elem_typname: None,
        enum_labels: (typname == "mood").then(|| vec!["sad".into(), "ok".into()]),
    }
}

const ROWS: &[&[Option<&str>]] = &[
    &[
        Some("1"),
        Some("abc"),
        Some("1.5"),
        Some("2.5"),
        Some("t"),
        Some("2024-02-29"),
        Some("2024-01-01 12:00:00+00"),
        Some("{a,\"b c\",NULL}"),
        Some("{{1,2},{3,4}}"),
        Some("P1DT2H"),
        Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Some("ok"),
    ],
    &[
        None, None, None, None, None, None, None, None, None, None, None, None,
    ],
    &[
        Some("-2147483648"),
        Some(""),
        Some("NaN"),
        Some("-Infinity"),
        Some("f"),
        Some("infinity"),
        Some("-infinity"),
        Some("{}"),
        Some("[0:1]={5,6}"),
        Some("PT0S"),
        Some("00000000-0000-0000-0000-000000000000"),
        Some("sad"),
    ],
];

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let columns = [
        column("id", "int4"),
        column("name", "text"),
        column("price", "numeric"),
        column("score", "float8"),
        column("active", "bool"),
        column("born", "date"),
        column("created", "timestamptz"),
        column("tags", "_text"),
        column("nums", "_int4"),
        column("span", "interval"),
        column("uid", "uuid"),
        column("feel", "mood"),
    ];
    let params = ["1".to_string(), "{a}".to_string()];
    if let Ok(clause) = WhereClause::parse(sql, &columns, &params) {
        let _ = clause.to_sql();
        for row in ROWS {
            let _ = clause.eval(row);
        }
    }
});
