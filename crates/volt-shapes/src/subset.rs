//! Subset snapshots: a one-off query of part of a shape (the client's `requestSnapshot` and
//! `fetchSnapshot`), ordered and paged, answered from a fresh Postgres snapshot.

use std::collections::BTreeMap;

use sqlparser::ast::{Expr, OrderByExpr, OrderBySort, Spanned};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::ident::quote_ident;
use crate::shape::Shape;
use crate::where_clause::{WhereClause, byte_offset};

/// Longer subset clauses are refused before parsing: the parser recurses on them.
const MAX_CLAUSE_BYTES: usize = 16 * 1024;

/// The subset parameters as the request carried them (`subset__*` query parameters or the
/// JSON body of a POST), before validation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SubsetRequest {
    pub where_sql: Option<String>,
    /// `$n` values keyed by their number as written (`"1"`, `"2"`...).
    pub params: BTreeMap<String, String>,
    /// Set when `params` arrived in a form that is not a JSON object of scalars.
    pub params_error: Option<&'static str>,
    pub limit: Option<String>,
    pub offset: Option<String>,
    pub order_by: Option<String>,
}

/// Why a subset request is invalid: reported under `errors.subset.<field>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetError {
    pub field: &'static str,
    pub message: String,
}

impl SubsetError {
    fn new(field: &'static str, message: impl Into<String>) -> SubsetError {
        SubsetError {
            field,
            message: message.into(),
        }
    }
}

/// A validated subset of a shape.
#[derive(Debug, Clone)]
pub struct Subset {
    where_clause: Option<WhereClause>,
    order_by: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl Subset {
    pub fn new(shape: &Shape, req: &SubsetRequest) -> Result<Subset, SubsetError> {
        let limit = match req.limit.as_deref() {
            None => None,
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(n) if n > 0 => Some(n as u64),
                Ok(_) => return Err(SubsetError::new("limit", "must be greater than 0")),
                Err(_) => return Err(SubsetError::new("limit", "is invalid")),
            },
        };
        let offset = match req.offset.as_deref() {
            None => None,
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(n) if n >= 0 => Some(n as u64),
                Ok(_) => {
                    return Err(SubsetError::new(
                        "offset",
                        "must be greater than or equal to 0",
                    ));
                }
                Err(_) => return Err(SubsetError::new("offset", "is invalid")),
            },
        };
        // Without an order, LIMIT and OFFSET pick arbitrary rows, and pages could overlap.
        if (limit.is_some() || offset.is_some()) && req.order_by.is_none() {
            return Err(SubsetError::new(
                "order_by",
                "order_by is required when limit or offset is present",
            ));
        }
        if let Some(p) = req.params_error {
            return Err(SubsetError::new("params", p));
        }
        let params = positional(&req.params).map_err(|m| SubsetError::new("params", m))?;
        let order_by = match req.order_by.as_deref() {
            None => None,
            Some(sql) => {
                Some(order_by_sql(shape, sql).map_err(|m| SubsetError::new("order_by", m))?)
            }
        };
        let where_clause = match req.where_sql.as_deref() {
            None => None,
            Some(sql) if sql.len() > MAX_CLAUSE_BYTES => {
                return Err(SubsetError::new(
                    "where",
                    format!("is too long (at most {MAX_CLAUSE_BYTES} bytes)"),
                ));
            }
            Some(sql) => Some(
                WhereClause::parse_for_subset(sql, &shape.table.columns, &params)
                    .map_err(|e| SubsetError::new("where", e.to_string()))?,
            ),
        };
        Ok(Subset {
            where_clause,
            order_by,
            limit,
            offset,
        })
    }

    /// The query for the subset's rows: the shape's columns and where clause, narrowed by
    /// the subset's where clause, then ordered and paged.
    pub fn sql(&self, shape: &Shape) -> String {
        let extra = self.where_clause.as_ref().map(WhereClause::to_sql);
        let mut sql = shape.snapshot_sql_narrowed(extra.as_deref());
        if let Some(o) = &self.order_by {
            sql.push_str(" ORDER BY ");
            sql.push_str(o);
        }
        if let Some(n) = self.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        if let Some(n) = self.offset {
            sql.push_str(&format!(" OFFSET {n}"));
        }
        sql
    }
}

/// `params` keyed `1..n` in order: the keys must be exactly the numbers 1 to n.
pub fn positional(params: &BTreeMap<String, String>) -> Result<Vec<String>, &'static str> {
    let mut numbered: Vec<(usize, &String)> = Vec::with_capacity(params.len());
    for (k, v) in params {
        let n: usize = k
            .parse()
            .map_err(|_| "Parameters can only use numbers as keys")?;
        numbered.push((n, v));
    }
    numbered.sort_by_key(|(n, _)| *n);
    let mut out = Vec::with_capacity(numbered.len());
    for (i, (n, v)) in numbered.into_iter().enumerate() {
        if n != i + 1 {
            return Err("Parameters must be numbered sequentially, starting from 1");
        }
        out.push(v.clone());
    }
    Ok(out)
}

/// Validate an `ORDER BY` list and render it from what was understood, so nothing but
/// column references, directions and NULLS placement reaches the query.
fn order_by_sql(shape: &Shape, sql: &str) -> Result<String, String> {
    if sql.len() > MAX_CLAUSE_BYTES {
        return Err(format!("is too long (at most {MAX_CLAUSE_BYTES} bytes)"));
    }
    let dialect = PostgreSqlDialect {};
    let syntax = |e: sqlparser::parser::ParserError| format!("Invalid ORDER BY clause: {e}");
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    let items: Vec<OrderByExpr> = parser
        .parse_comma_separated(Parser::parse_order_by_expr)
        .map_err(syntax)?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(format!(
            "At location {}: syntax error at or near \"{}\"",
            byte_offset(sql, next.span.start),
            next.token
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let ident = match &item.expr {
            Expr::Identifier(i) => i,
            other => {
                return Err(format!(
                    "At location {}: only column names can be ordered by, not {other}",
                    byte_offset(sql, other.span().start)
                ));
            }
        };
        let name = if ident.quote_style.is_some() {
            ident.value.clone()
        } else {
            ident.value.to_ascii_lowercase()
        };
        if shape.table.column_index(&name).is_none() {
            return Err(format!(
                "At location {}: unknown reference {}",
                byte_offset(sql, ident.span.start),
                ident
            ));
        }
        if item.with_fill.is_some() {
            return Err("WITH FILL is not supported".into());
        }
        let mut part = quote_ident(&name);
        match &item.options.sort {
            Some(OrderBySort::Asc) => part.push_str(" ASC"),
            Some(OrderBySort::Desc) => part.push_str(" DESC"),
            Some(OrderBySort::Using(_)) => return Err("ORDER BY ... USING is not supported".into()),
            None => {}
        }
        match item.options.nulls_first {
            Some(true) => part.push_str(" NULLS FIRST"),
            Some(false) => part.push_str(" NULLS LAST"),
            None => {}
        }
        out.push(part);
    }
    if out.is_empty() {
        return Err("can't be blank".into());
    }
    Ok(out.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::schema::{TableSchema, test_column};
    use crate::shape::ShapeDef;

    fn shape(where_sql: Option<&str>) -> Shape {
        let col = |name: &str, typname: &str, pk: Option<usize>| test_column(name, typname, 0, pk);
        let table = TableSchema {
            oid: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: vec![
                col("id", "int4", Some(0)),
                col("title", "text", None),
                col("Qty", "int4", None),
            ],
        };
        let def = ShapeDef::from_params(Some("items"), where_sql, vec![], None, None, None)
            .expect("valid definition");
        Shape::new(def, Arc::new(table)).expect("valid shape")
    }

    fn req() -> SubsetRequest {
        SubsetRequest::default()
    }

    #[test]
    fn subset_where_narrows_the_shape_where_inside_parentheses() {
        let s = shape(Some("id = 1 OR id = 2"));
        let sub = Subset::new(
            &s,
            &SubsetRequest {
                where_sql: Some("title = $1".into()),
                params: BTreeMap::from([("1".into(), "a".into())]),
                ..req()
            },
        )
        .unwrap();
        let sql = sub.sql(&s);
        assert!(sql.contains("WHERE (") && sql.contains(") AND ("), "{sql}");
    }

    #[test]
    fn order_by_is_rendered_from_column_names_only() {
        let s = shape(None);
        let sub = Subset::new(
            &s,
            &SubsetRequest {
                order_by: Some("title DESC NULLS LAST, \"Qty\", id asc".into()),
                limit: Some("10".into()),
                offset: Some("5".into()),
                ..req()
            },
        )
        .unwrap();
        let sql = sub.sql(&s);
        assert!(
            sql.ends_with(
                "ORDER BY \"title\" DESC NULLS LAST, \"Qty\", \"id\" ASC LIMIT 10 OFFSET 5"
            ),
            "{sql}"
        );
    }

    #[test]
    fn order_by_rejects_expressions_unknown_columns_and_trailing_sql() {
        let s = shape(None);
        for bad in [
            "id + 1",
            "nope",
            "id; DROP TABLE items",
            "qty",
            "id LIMIT 1",
        ] {
            let err = Subset::new(
                &s,
                &SubsetRequest {
                    order_by: Some(bad.into()),
                    ..req()
                },
            )
            .unwrap_err();
            assert_eq!(err.field, "order_by", "{bad}: {err:?}");
        }
    }

    #[test]
    fn limit_and_offset_need_an_order_and_sane_values() {
        let s = shape(None);
        let err = |r: SubsetRequest| Subset::new(&s, &r).unwrap_err();
        assert_eq!(
            err(SubsetRequest {
                limit: Some("3".into()),
                ..req()
            }),
            SubsetError::new(
                "order_by",
                "order_by is required when limit or offset is present"
            )
        );
        let ordered = |limit: Option<&str>, offset: Option<&str>| SubsetRequest {
            limit: limit.map(Into::into),
            offset: offset.map(Into::into),
            order_by: Some("id".into()),
            ..req()
        };
        assert_eq!(err(ordered(Some("0"), None)).field, "limit");
        assert_eq!(err(ordered(Some("x"), None)).field, "limit");
        assert_eq!(err(ordered(None, Some("-1"))).field, "offset");
        assert!(Subset::new(&s, &ordered(Some("1"), Some("0"))).is_ok());
    }

    #[test]
    fn subset_params_must_be_numbered_from_one() {
        let s = shape(None);
        let e = Subset::new(
            &s,
            &SubsetRequest {
                where_sql: Some("id < $1 AND id > $3".into()),
                params: BTreeMap::from([("1".into(), "10".into()), ("3".into(), "5".into())]),
                ..req()
            },
        )
        .unwrap_err();
        assert_eq!(
            e,
            SubsetError::new(
                "params",
                "Parameters must be numbered sequentially, starting from 1"
            )
        );
    }

    #[test]
    fn bad_subset_where_is_reported_with_its_location() {
        let s = shape(None);
        let e = Subset::new(
            &s,
            &SubsetRequest {
                where_sql: Some("id = 1 AND nope = 2".into()),
                ..req()
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "where");
        assert!(e.message.starts_with("At location 11"), "{}", e.message);
    }
}
