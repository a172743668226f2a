//! Property tests: whatever text arrives as a where clause, parsing, rendering and evaluating
//! return errors rather than panic. (The `fuzz/` targets search the same space for longer.)

use proptest::prelude::*;
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
        enum_labels: None,
    }
}

fn columns() -> Vec<ColumnSchema> {
    vec![
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
        ColumnSchema {
            type_oid: 9001,
            enum_labels: Some(vec!["sad".into(), "ok".into()]),
            ..column("feel", "mood")
        },
    ]
}

/// Pieces of the where-clause language, so random sequences often parse and reach the
/// evaluator instead of stopping at the tokenizer.
const TOKENS: &[&str] = &[
    "id",
    "name",
    "price",
    "score",
    "active",
    "born",
    "created",
    "tags",
    "nums",
    "span",
    "feel",
    "'ok'",
    "'1-2'",
    "'-1-2 3 4:05:06'",
    "AT TIME ZONE",
    "timezone(",
    "'America/New_York'",
    "'CET'",
    "||/",
    "'2150-07-01 02:30'",
    "nope",
    "1",
    "0",
    "-1",
    "2147483647",
    "9223372036854775807",
    "1.5",
    "1e400",
    "'a'",
    "'{1,NULL}'",
    "'{{1},{2}}'",
    "'[0:1]={1,2}'",
    "'1 day'",
    "'P1D'",
    "'2024-01-01'",
    "''",
    "'%'",
    "'\\'",
    "NULL",
    "true",
    "$1",
    "$2",
    "=",
    "<>",
    "<",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "^",
    "|/",
    "@",
    "&",
    "|",
    "#",
    "~",
    "||",
    "@>",
    "<@",
    "&&",
    "AND",
    "OR",
    "NOT",
    "IS",
    "DISTINCT",
    "FROM",
    "IN",
    "BETWEEN",
    "LIKE",
    "ILIKE",
    "ESCAPE",
    "ANY",
    "ALL",
    "ARRAY[",
    "]",
    "[",
    ":",
    "(",
    ")",
    ",",
    "::int4",
    "::int8",
    "::numeric",
    "::text",
    "::int[]",
    "::text[]",
    "::interval",
    "::date",
    "::timestamptz",
    "interval",
    "coalesce(",
    "greatest(",
    "least(",
    "concat(",
    "array_cat(",
    "array_append(",
    "array_prepend(",
    "array_ndims(",
    "justify_days(",
    "int4(",
    "like(",
    "lower(",
    "SELECT",
    "CASE",
];

const VALUES: &[Option<&str>] = &[
    None,
    Some("0"),
    Some("-2147483648"),
    Some("abc"),
    Some(""),
    Some("NaN"),
    Some("t"),
    Some("infinity"),
    Some("{}"),
    Some("{a,\"b c\",NULL}"),
    Some("{{1,2},{3,4}}"),
    Some("[0:1]={5,6}"),
    Some("P1Y-2DT3H"),
    Some("2024-02-29"),
    Some("2024-01-01 12:00:00+00"),
    Some("{"),
];

fn check(sql: &str, row: &[Option<&str>]) {
    let params = ["2".to_string(), "{a}".to_string()];
    if let Ok(clause) = WhereClause::parse(sql, &columns(), &params) {
        let _ = clause.to_sql();
        let _ = clause.eval(row);
        let _ = clause.eval(&[]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn token_sequences_never_panic(
        tokens in prop::collection::vec(prop::sample::select(TOKENS), 1..14),
        row in prop::collection::vec(prop::sample::select(VALUES), 11),
    ) {
        check(&tokens.join(" "), &row);
    }

    #[test]
    fn arbitrary_strings_never_panic(sql in any::<String>()) {
        check(&sql, &[Some("1"); 11]);
    }

    #[test]
    fn arbitrary_column_text_never_panics(
        value in any::<String>(),
        sql in prop::sample::select(&[
            "nums @> '{1}'", "tags[1] = 'a'", "span > '1 day'", "nums[1:2] IS NULL",
            "created + span > born", "price > 1", "array_ndims(nums) = 1",
            "feel = 'ok'", "timezone(name, created) > born", "price ^ id > 1",
            "span * score > span", "(created AT TIME ZONE 'Europe/Paris') > born",
        ][..]),
    ) {
        check(sql, &[Some(value.as_str()); 11]);
    }
}
