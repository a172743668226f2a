//! Differential test of the where-clause evaluator against Postgres.
//!
//! Random rows go into a real table and random clauses are run two ways: by Postgres (the
//! clause as written and as `to_sql` renders it) and by `WhereClause::eval` on the row's text
//! output, as replication delivers it. For every clause volt accepts, on every row:
//!
//! - Postgres running `to_sql` (what the snapshot query runs) and the evaluator agree:
//!   TRUE, FALSE and NULL exactly; a Postgres error is an evaluator error (so the row is not
//!   in the shape either way);
//! - Postgres gives the same for the clause as written and for `to_sql` (the database is
//!   created with the "C" collation, so the `COLLATE "C"` that `to_sql` adds changes nothing).
//!
//! Clauses volt rejects are only counted: the evaluator supports a subset of Postgres.
//!
//! Needs the cluster `volt-test-cluster` starts (it sets `VOLT_TEST_DATABASE_URL`):
//! `target/debug/volt-test-cluster -- cargo test -p volt-shapes --test where_differential`.
//! `VOLT_WHERE_DIFF_CASES` (default 400 clauses) and `VOLT_WHERE_DIFF_SEED` widen the search.

use std::fmt::Write as _;

use tokio_postgres::{Client, SimpleQueryMessage};
use volt_shapes::ColumnSchema;
use volt_shapes::where_clause::WhereClause;
use volt_test_support::TestDb;

const ROWS: usize = 40;

/// The table's columns: name, SQL type, and values rows draw from (Postgres input syntax).
const COLUMNS: &[(&str, &str, &[&str])] = &[
    (
        "id",
        "int4",
        &["0", "1", "-1", "2", "7", "2147483647", "-2147483648", "100"],
    ),
    ("small", "int2", &["0", "1", "-32768", "32767", "3", "-5"]),
    (
        "big",
        "int8",
        &[
            "0",
            "1",
            "-9223372036854775808",
            "9223372036854775807",
            "42",
            "-3",
        ],
    ),
    (
        "num",
        "numeric",
        &[
            "0",
            "1.5",
            "-2.25",
            "1.10",
            "NaN",
            "100000000000000000000.01",
            "3",
        ],
    ),
    (
        "f8",
        "float8",
        &[
            "0",
            "-0",
            "1.5",
            "0.1",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e308",
            "1e-300",
            "3",
        ],
    ),
    ("f4", "float4", &["0", "1.5", "0.1", "NaN", "3.4e38", "2"]),
    (
        "name",
        "text",
        &[
            "a", "B", "b", "ab", "", "é", "É", "Z", "a%b", "a_b", "a\\b", "ß", " a ", "abc",
        ],
    ),
    ("title", "varchar(5)", &["a", "abc", "B", "", "é"]),
    ("code", "char(3)", &["a", "ab ", "abc", "B"]),
    (
        "uid",
        "uuid",
        &[
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "00000000-0000-0000-0000-000000000000",
        ],
    ),
    (
        "born",
        "date",
        &[
            "2024-02-29",
            "1970-01-01",
            "2000-01-31",
            "infinity",
            "-infinity",
            "0044-03-15 BC",
        ],
    ),
    (
        "at",
        "timestamp",
        &[
            "2024-01-31 12:00:00",
            "1970-01-01 00:00:00",
            "2024-02-29 23:59:59.5",
            "infinity",
            // Daylight-saving gaps and overlaps in New York and Paris, and a year beyond
            // the transitions chrono-tz lists.
            "2024-03-10 02:30:00",
            "2024-11-03 01:30:00",
            "2024-03-31 02:30:00",
            "2024-10-27 02:30:00",
            "2150-07-01 12:00:00",
            "1850-06-01 00:00:00",
        ],
    ),
    (
        "created",
        "timestamptz",
        &[
            "2024-01-31 12:00:00+00",
            "2024-03-01 00:00:00+02",
            "-infinity",
            "2000-01-01 00:00:00+00",
            "2024-03-10 07:30:00+00",
            "2024-11-03 05:30:00+00",
            "2024-11-03 06:30:00+00",
            "2024-10-27 00:30:00+00",
            "2150-01-01 12:00:00+00",
        ],
    ),
    ("active", "bool", &["t", "f"]),
    (
        "tags",
        "text[]",
        &[
            "{}",
            "{a,b}",
            "{a,NULL}",
            "{\"a b\",\"c\\\"d\",\"\"}",
            "{B,é}",
            "{{a,b},{c,d}}",
        ],
    ),
    (
        "nums",
        "int4[]",
        &[
            "{}",
            "{1,2,3}",
            "{1,NULL}",
            "{{1,2},{3,4}}",
            "[0:1]={5,6}",
            "{-2147483648}",
            "{2}",
        ],
    ),
    (
        "span",
        "interval",
        &[
            "1 day",
            "1 mon",
            "30 days",
            "-1 hour",
            "1 year 2 mons 3 days 04:05:06.5",
            "0",
            "1-2",
            "-1-2 3 4:05:06",
            "1 2:03:04",
            "1.5 mons",
        ],
    ),
    ("feel", "mood", &["sad", "ok", "happy"]),
    (
        "zone",
        "text",
        &[
            "UTC",
            "America/New_York",
            "Europe/Paris",
            "australia/sydney",
            "Asia/Kolkata",
        ],
    ),
];

/// Types the table's columns use, created first.
const TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')";

/// xorshift: deterministic, seeded, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// Expression generators by result type, so most clauses type-check.
struct Gen<'a> {
    rng: &'a mut Rng,
}

impl Gen<'_> {
    fn leaf(&mut self, options: &[&str]) -> String {
        self.rng.pick(options).to_string()
    }

    fn int(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "id",
            "small",
            "big",
            "1",
            "0",
            "-1",
            "7",
            "2147483647",
            "-2147483648",
            "9223372036854775807",
            "32767",
            "NULL::int4",
            "$1",
            "array_ndims(nums)",
            "nums[1]",
            "nums[2][1]",
        ];
        if d == 0 || self.rng.chance(3) {
            return self.leaf(LEAVES);
        }
        let (a, b) = (self.int(d - 1), self.int(d - 1));
        match self.rng.below(12) {
            0 => format!("({a} + {b})"),
            1 => format!("({a} - {b})"),
            2 => format!("({a} * {b})"),
            3 => format!("({a} / {b})"),
            4 => format!("(-{a})"),
            5 => format!("({a} {} {b})", self.rng.pick(&["&", "|", "#"])),
            6 => format!("(~ {a})"),
            7 => format!("(@ {a})"),
            8 => format!(
                "{}({a}, {b})",
                self.rng.pick(&["coalesce", "greatest", "least"])
            ),
            9 => format!("({} - {})", self.date(d - 1), self.date(d - 1)),
            10 => format!("int4({})", self.rng.pick(&["'12'", "' 7 '", "num", "f8"])),
            _ => format!("nums[{a}]"),
        }
    }

    fn num(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &["num", "1.5", "0.1", "-2.25", "1e20", "'NaN'::numeric", "3"];
        if d == 0 || self.rng.chance(3) {
            return self.leaf(LEAVES);
        }
        let (a, b) = (self.num(d - 1), self.num(d - 1));
        match self.rng.below(8) {
            6 | 7 => format!(
                "({a} ^ {})",
                // Exponents small enough that nested powers stay within the digits volt
                // computes (MAX_POWER_DIGITS), integer columns included.
                self.rng.pick(&[
                    "2",
                    "3",
                    "-1",
                    "-2",
                    "0",
                    "5",
                    "nums[1]",
                    "array_ndims(nums)",
                    "'NaN'::numeric",
                    "'-Infinity'::numeric",
                    "4.0",
                ])
            ),
            0 => format!("({a} + {})", self.int(d - 1)),
            1 => format!("({a} * {b})"),
            2 => format!("({a} / {b})"),
            3 => format!("(@ {a})"),
            4 => format!("CAST({a} AS numeric(5,1))"),
            _ => format!("({a} - {b})"),
        }
    }

    fn float(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "f8",
            "f4",
            "1.5::float8",
            "'NaN'::float8",
            "'Infinity'::float8",
            "0.1::float4",
            "1e308::float8",
        ];
        if d == 0 || self.rng.chance(3) {
            return self.leaf(LEAVES);
        }
        let (a, b) = (self.float(d - 1), self.float(d - 1));
        match self.rng.below(6) {
            0 => format!("({a} + {b})"),
            1 => format!("({a} * {b})"),
            2 => format!("({a} / {b})"),
            3 => format!(
                "({a} ^ {})",
                self.rng.pick(&["2", "0.5::float8", "-1", "f8"])
            ),
            4 => format!("({} {a})", self.rng.pick(&["|/", "||/", "@", "|/ @"])),
            _ => format!("({a} - {})", self.int(d - 1)),
        }
    }

    fn text(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "name",
            "title",
            "code",
            "'a'",
            "'B'",
            "'é'",
            "''",
            "'ab'",
            "'a%'",
            "'%b'",
            "'a\\_b'",
            "'_'",
            "NULL::text",
            "tags[1]",
            "tags[2][1]",
            "'Z'",
        ];
        if d == 0 || self.rng.chance(3) {
            return self.leaf(LEAVES);
        }
        let a = self.text(d - 1);
        match self.rng.below(7) {
            // The text output of a numeric shows its scale: 2 ^ 2 is 4.0000000000000000.
            6 => format!("CAST({} AS text)", self.num(d - 1)),
            0 => format!("({a} || {})", self.text(d - 1)),
            1 => format!("{}({a})", self.rng.pick(&["lower", "upper"])),
            2 => format!("concat({a}, {}, {})", self.int(d - 1), self.any(d - 1)),
            3 => format!("coalesce({a}, {})", self.text(d - 1)),
            4 => format!(
                "{}({a}, {})",
                self.rng.pick(&["greatest", "least"]),
                self.text(d - 1)
            ),
            _ => format!("CAST({} AS text)", self.any(d - 1)),
        }
    }

    fn date(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "born",
            "'2024-02-29'::date",
            "'infinity'::date",
            "NULL::date",
        ];
        if d == 0 || self.rng.chance(2) {
            return self.leaf(LEAVES);
        }
        match self.rng.below(2) {
            0 => format!("({} + {})", self.date(d - 1), self.int(d - 1)),
            _ => format!("({} - {})", self.date(d - 1), self.int(d - 1)),
        }
    }

    fn ts(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "at",
            "created",
            "'2024-01-31 00:00:00'::timestamp",
            "'2024-02-29 12:00:00+00'::timestamptz",
            "born::timestamp",
        ];
        const ZONES: &[&str] = &[
            "'America/New_York'",
            "'europe/paris'",
            "'UTC'",
            "zone",
            "'Australia/Sydney'",
            "NULL",
        ];
        if d == 0 || self.rng.chance(2) {
            return self.leaf(LEAVES);
        }
        let i = self.interval(d - 1);
        match self.rng.below(5) {
            0 => format!("({} + {i})", self.ts(d - 1)),
            1 => format!("({} - {i})", self.ts(d - 1)),
            2 => format!("timezone({}, {})", self.rng.pick(ZONES), self.ts(d - 1)),
            3 => format!("({} AT TIME ZONE {})", self.ts(d - 1), self.rng.pick(ZONES)),
            _ => format!("({} + {i})", self.date(d - 1)),
        }
    }

    fn interval(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "span",
            "interval '1 day'",
            "interval '1 month'",
            "'-2 hours'::interval",
            "interval '1.5 days'",
            "interval 'P1Y2M'",
            "interval '1-2'",
            "'-1-2 3 4:05:06'::interval",
            "interval '1 2:03:04.5'",
            "interval '2 weeks 1.5 days ago'",
        ];
        const FACTORS: &[&str] = &[
            "2",
            "0.5",
            "-3",
            "1.5::float8",
            "0.1",
            "f8",
            "f4",
            "num",
            "id",
            "1e-7",
            "0",
        ];
        if d == 0 || self.rng.chance(2) {
            return self.leaf(LEAVES);
        }
        match self.rng.below(7) {
            4 => format!("({} * {})", self.interval(d - 1), self.rng.pick(FACTORS)),
            5 => format!("({} * {})", self.rng.pick(FACTORS), self.interval(d - 1)),
            6 => format!("({} / {})", self.interval(d - 1), self.rng.pick(FACTORS)),
            0 => format!("({} - {})", self.ts(d - 1), self.ts(d - 1)),
            1 => format!("({} + {})", self.interval(d - 1), self.interval(d - 1)),
            2 => format!(
                "{}({})",
                self.rng
                    .pick(&["justify_days", "justify_hours", "justify_interval"]),
                self.interval(d - 1)
            ),
            _ => format!("(interval '0' - {})", self.interval(d - 1)),
        }
    }

    fn int_array(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "nums",
            "'{1,2}'::int[]",
            "'{}'::int4[]",
            "'{NULL,2}'::int[]",
            "ARRAY[1, NULL]",
            "'{{1,2},{3,4}}'::int[]",
            "nums[1:2]",
            "nums[2:]",
        ];
        if d == 0 || self.rng.chance(2) {
            return self.leaf(LEAVES);
        }
        let a = self.int_array(d - 1);
        match self.rng.below(5) {
            0 => format!("({a} || {})", self.int_array(d - 1)),
            1 => format!("({a} || {})", self.int(d - 1)),
            2 => format!("array_prepend({}, {a})", self.int(d - 1)),
            3 => format!("ARRAY[{}, {}]", self.int(d - 1), self.int(d - 1)),
            _ => format!("array_cat({a}, {})", self.int_array(d - 1)),
        }
    }

    fn text_array(&mut self, d: u32) -> String {
        const LEAVES: &[&str] = &[
            "tags",
            "'{a,b}'::text[]",
            "'{B,NULL}'::text[]",
            "ARRAY['é', name]",
        ];
        if d == 0 || self.rng.chance(2) {
            return self.leaf(LEAVES);
        }
        format!("({} || {})", self.text_array(d - 1), self.text(d - 1))
    }

    fn any(&mut self, d: u32) -> String {
        match self.rng.below(9) {
            0 => self.int(d),
            1 => self.num(d),
            2 => self.float(d),
            3 => self.text(d),
            4 => self.date(d),
            5 => self.ts(d),
            6 => self.interval(d),
            7 => self.int_array(d),
            _ => self.text_array(d),
        }
    }

    /// Two operands of one comparable type.
    fn pair(&mut self, d: u32) -> (String, String) {
        match self.rng.below(10) {
            0 => (self.int(d), self.int(d)),
            1 => (self.num(d), self.int(d)),
            2 => (self.float(d), self.num(d)),
            3 | 4 => (self.text(d), self.text(d)),
            5 => (self.date(d), self.ts(d)),
            6 => (self.ts(d), self.ts(d)),
            7 => (self.interval(d), self.interval(d)),
            8 => (self.int_array(d), self.int_array(d)),
            _ => (self.text_array(d), self.text_array(d)),
        }
    }

    fn boolean(&mut self, d: u32) -> String {
        if d == 0 {
            return self.leaf(&["active", "true", "NULL::bool", "false"]);
        }
        let e = d - 1;
        match self.rng.below(17) {
            16 => {
                const LABELS: &[&str] = &["'sad'", "'ok'", "'happy'", "NULL", "$2"];
                match self.rng.below(4) {
                    0 => format!(
                        "(feel {} {})",
                        self.rng.pick(&["=", "<>"]),
                        self.rng.pick(LABELS)
                    ),
                    1 => format!(
                        "(feel {}IN ({}, {}))",
                        self.rng.pick(&["", "NOT "]),
                        self.rng.pick(LABELS),
                        self.rng.pick(LABELS)
                    ),
                    2 => format!(
                        "(feel IS {}DISTINCT FROM {})",
                        self.rng.pick(&["", "NOT "]),
                        self.rng.pick(LABELS)
                    ),
                    _ => format!(
                        "(feel::text {} {})",
                        self.rng.pick(&["<", ">=", "="]),
                        self.text(e)
                    ),
                }
            }
            0 => format!(
                "({} {} {})",
                self.boolean(e),
                self.rng.pick(&["AND", "OR"]),
                self.boolean(e)
            ),
            1 => format!("(NOT {})", self.boolean(e)),
            2 => format!("({} IS {}NULL)", self.any(e), self.rng.pick(&["", "NOT "])),
            3 => {
                let (a, b) = self.pair(e);
                format!("({a} {}IN ({b}, {a}))", self.rng.pick(&["", "NOT "]))
            }
            4 => {
                let (a, b) = self.pair(e);
                format!("({a} BETWEEN {b} AND {a})")
            }
            5 => {
                let esc = self.rng.pick(&["", " ESCAPE '#'", " ESCAPE ''"]);
                format!(
                    "({} {} {}{esc})",
                    self.text(e),
                    self.rng.pick(&["LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"]),
                    self.leaf(&[
                        "'a%'", "'%B%'", "'_'", "'a#%b'", "'a\\_b'", "'%é%'", "name", "'%'",
                        "'A_C'"
                    ])
                )
            }
            6 => {
                let (a, b) = self.pair(e);
                format!("({a} IS {}DISTINCT FROM {b})", self.rng.pick(&["", "NOT "]))
            }
            7 => format!(
                "({} IS {}{})",
                self.boolean(e),
                self.rng.pick(&["", "NOT "]),
                self.rng.pick(&["TRUE", "FALSE", "UNKNOWN"])
            ),
            8 => format!(
                "({} {} {}({}))",
                self.int(e),
                self.rng.pick(&["=", "<>", "<", ">="]),
                self.rng.pick(&["ANY", "ALL"]),
                self.int_array(e)
            ),
            9 => format!(
                "({} {} {}({}))",
                self.text(e),
                self.rng.pick(&["=", "<", ">"]),
                self.rng.pick(&["ANY", "ALL"]),
                self.text_array(e)
            ),
            10 => format!(
                "({} {} {})",
                self.int_array(e),
                self.rng.pick(&["@>", "<@", "&&"]),
                self.int_array(e)
            ),
            11 => format!(
                "({} {} {})",
                self.text_array(e),
                self.rng.pick(&["@>", "<@", "&&"]),
                self.text_array(e)
            ),
            12 => format!(
                "{}({}, {})",
                self.rng.pick(&["like", "ilike"]),
                self.text(e),
                self.text(e)
            ),
            13 => format!("coalesce({}, {})", self.boolean(e), self.boolean(e)),
            _ => {
                let (a, b) = self.pair(e);
                format!(
                    "({a} {} {b})",
                    self.rng.pick(&["=", "<>", "<", "<=", ">", ">="])
                )
            }
        }
    }
}

fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One cell of a result: Err is a Postgres error message.
type Outcome = Result<Option<String>, String>;

/// `SELECT (<expr>)` for every row (text output: `t`, `f` or NULL), in key order; a query that fails as a whole is
/// retried row by row so one failing row does not hide the others.
async fn postgres_results(client: &Client, expr: &str) -> Vec<Outcome> {
    let all = format!("SELECT ({expr}) FROM t ORDER BY k");
    match client.simple_query(&all).await {
        Ok(messages) => rows_of(messages).into_iter().map(Ok).collect(),
        Err(_) => {
            let mut out = Vec::with_capacity(ROWS);
            for k in 0..ROWS {
                let one = format!("SELECT ({expr}) FROM t WHERE k = {k}");
                out.push(match client.simple_query(&one).await {
                    Ok(messages) => Ok(rows_of(messages).into_iter().next().flatten()),
                    Err(e) => Err(e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string())),
                });
            }
            out
        }
    }
}

fn rows_of(messages: Vec<SimpleQueryMessage>) -> Vec<Option<String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .collect()
}

fn volt_outcome(r: &Result<Option<bool>, volt_shapes::where_clause::WhereError>) -> String {
    match r {
        Ok(Some(true)) => "t".into(),
        Ok(Some(false)) => "f".into(),
        Ok(None) => "NULL".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn pg_outcome(r: &Outcome) -> String {
    match r {
        Ok(Some(v)) => v.clone(),
        Ok(None) => "NULL".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// Whether the evaluator's result is the one Postgres gave; any error matches any error
/// (messages may differ: Postgres reports the first failure in its own evaluation order).
fn agrees(
    volt: &Result<Option<bool>, volt_shapes::where_clause::WhereError>,
    pg: &Outcome,
) -> bool {
    match (volt, pg) {
        (Err(_), Err(_)) => true,
        (Ok(v), Ok(p)) => {
            let v = v.map(|b| if b { "t" } else { "f" });
            v == p.as_deref()
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluator_agrees_with_postgres_on_random_rows_and_clauses() -> anyhow::Result<()> {
    let cases = env_number("VOLT_WHERE_DIFF_CASES", 400);
    let seed = env_number("VOLT_WHERE_DIFF_SEED", 0x5EED_0FC1_A05E).max(1);
    let db = TestDb::new("where_differential").await?;
    // Recreated with a UTF-8 character type, as production databases have: lower/upper/ILIKE
    // fold non-ASCII letters there, which the evaluator assumes. Ordering stays "C" so the
    // clause as written and to_sql (which adds COLLATE "C") mean the same.
    let (admin, admin_conn) =
        tokio_postgres::connect(db.admin_url(), tokio_postgres::NoTls).await?;
    let admin_task = tokio::spawn(admin_conn);
    let name = db.database_name();
    admin
        .batch_execute(&format!("DROP DATABASE \"{name}\""))
        .await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 \
             ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'"
        ))
        .await?;
    drop(admin);
    let _ = admin_task.await;
    let client = db.client().await?;
    // volt's sessions pin these (volt-pg's conn.rs); the text forms below depend on them.
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, DMY'; \
             SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 1",
        )
        .await?;
    let collation = client
        .query_one(
            "SELECT datcollate FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    let collation: String = collation.get(0);
    assert_eq!(
        collation, "C",
        "the comparison of the written clause with to_sql needs a C database"
    );

    client.batch_execute(TYPES).await?;
    let mut ddl = String::from("CREATE TABLE t (k int PRIMARY KEY");
    for (name, ty, _) in COLUMNS {
        let _ = write!(ddl, ", {name} {ty}");
    }
    ddl.push(')');
    client.batch_execute(&ddl).await?;

    let mut rng = Rng(seed);
    for k in 0..ROWS {
        let mut values = vec![k.to_string()];
        for (_, ty, options) in COLUMNS {
            values.push(if rng.chance(5) {
                "NULL".into()
            } else {
                format!("{}::{ty}", quote_literal(rng.pick(options)))
            });
        }
        client
            .batch_execute(&format!("INSERT INTO t VALUES ({})", values.join(", ")))
            .await?;
    }

    // The rows as replication delivers them: each column's text output.
    let select = COLUMNS
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Vec<Option<String>>> = client
        .simple_query(&format!("SELECT {select} FROM t ORDER BY k"))
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..COLUMNS.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), ROWS);

    let columns: Vec<ColumnSchema> = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8, t.typname::text, a.attndims::int8, \
                    CASE WHEN t.typtype = 'e' THEN ARRAY(SELECT l.enumlabel::text FROM pg_enum l \
                      WHERE l.enumtypid = t.oid ORDER BY l.enumsortorder) END \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = 't'::regclass AND a.attnum > 1 ORDER BY a.attnum",
            &[],
        )
        .await?
        .iter()
        .map(|r| ColumnSchema {
            name: r.get(0),
            type_oid: u32::try_from(r.get::<_, i64>(1)).unwrap_or_default(),
            typname: r.get(2),
            not_null: false,
            pk_index: None,
            dims: usize::try_from(r.get::<_, i64>(3)).unwrap_or_default(),
            type_mod: None,
            elem_typname: None,
            enum_labels: r.get(4),
        })
        .collect();
    assert_eq!(columns.len(), COLUMNS.len());

    let params = vec!["2".to_string(), "ok".to_string()];
    let (mut accepted, mut rejected, mut pg_errors) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for case in 0..cases {
        let depth = 1 + (case % 4) as u32;
        let clause = Gen { rng: &mut rng }.boolean(depth);
        let Ok(w) = WhereClause::parse(&clause, &columns, &params) else {
            rejected += 1;
            continue;
        };
        accepted += 1;
        let rendered = w.to_sql();
        let via_to_sql = postgres_results(&client, &rendered).await;
        // Postgres has no `$1` outside a prepared statement; the rendered SQL inlines it.
        let written =
            postgres_results(&client, &clause.replace("$1", "'2'").replace("$2", "'ok'")).await;
        let mut failed_rows = 0;
        for (k, row) in rows.iter().enumerate() {
            let cells: Vec<Option<&str>> = row.iter().map(|c| c.as_deref()).collect();
            let volt = w.eval(&cells);
            let (pg, pg_written) = (&via_to_sql[k], &written[k]);
            if pg.is_err() {
                pg_errors += 1;
            }
            let same_written = match (pg, pg_written) {
                (Err(_), Err(_)) => true,
                // volt accepts `ilike(a, b)` as Electric does; Postgres has no such function,
                // and to_sql writes the operator instead.
                (_, Err(e)) if e.starts_with("function ilike(") => true,
                (a, b) => a == b,
            };
            if (!agrees(&volt, pg) || !same_written) && failed_rows < 2 {
                failed_rows += 1;
                failures.push(format!(
                    "clause:  {clause}\nto_sql:  {rendered}\nrow {k}: {row:?}\nvolt:    {}\npostgres (to_sql): {}\npostgres (written): {}",
                    volt_outcome(&volt),
                    pg_outcome(pg),
                    pg_outcome(pg_written)
                ));
            }
        }
        if failures.len() >= 10 {
            break;
        }
    }
    println!(
        "seed {seed:#x}: {accepted} clauses accepted, {rejected} rejected by volt, \
         {pg_errors} (row, clause) pairs where Postgres raised an error"
    );
    assert!(
        failures.is_empty(),
        "{} disagreement(s) with Postgres:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        accepted * 2 > cases,
        "too few clauses type-checked: {accepted} of {cases}"
    );
    Ok(())
}
