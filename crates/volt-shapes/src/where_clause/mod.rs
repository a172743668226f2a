//! Shape `where` clauses (protocol section 10): parsed with sqlparser, type-checked against
//! the table's columns, evaluated in-process on replicated rows, and rendered back to SQL for
//! the snapshot query so that both sides select the same rows.

mod array;
mod compile;
mod datetime;
mod eval;
pub(crate) mod index;
mod interval;
mod ir;
mod like;
mod numeric;
mod render;
mod types;
mod value;
mod zone;

#[cfg(test)]
mod tests;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token};

use crate::schema::ColumnSchema;

/// A where clause the client sent, or why it cannot be used. Retrying never helps.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("At location {location}: {reason}")]
pub struct WhereError {
    /// Byte offset in the clause's text; 0 when unknown.
    pub location: usize,
    pub reason: String,
}

impl WhereError {
    pub(crate) fn new(location: usize, reason: impl Into<String>) -> WhereError {
        WhereError {
            location,
            reason: reason.into(),
        }
    }
}

/// A type-checked where clause over one table's columns.
#[derive(Debug, Clone)]
pub struct WhereClause {
    root: ir::Node,
    referenced: Vec<usize>,
}

impl WhereClause {
    /// Parse and type-check `sql` against the table's columns. `params[0]` is `$1`.
    pub fn parse(
        sql: &str,
        columns: &[ColumnSchema],
        params: &[String],
    ) -> Result<WhereClause, WhereError> {
        WhereClause::parse_checking_labels(sql, columns, params, true)
    }

    /// `parse` for a subset's clause, which only ever runs as SQL: a literal compared with an
    /// enum column that is not one of the labels volt knows is left for Postgres to judge
    /// (a label added since the table's schema was read is valid; any other is its error,
    /// a 400), as Electric does.
    pub(crate) fn parse_for_subset(
        sql: &str,
        columns: &[ColumnSchema],
        params: &[String],
    ) -> Result<WhereClause, WhereError> {
        WhereClause::parse_checking_labels(sql, columns, params, false)
    }

    fn parse_checking_labels(
        sql: &str,
        columns: &[ColumnSchema],
        params: &[String],
        check_labels: bool,
    ) -> Result<WhereClause, WhereError> {
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(sql)
            .map_err(|e| parser_error(sql, e))?;
        let expr = parser.parse_expr().map_err(|e| parser_error(sql, e))?;
        // parse_expr stops after the first complete expression; anything left is an error,
        // or `x = 1; DROP TABLE t` would be accepted as `x = 1`.
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(WhereError::new(
                byte_offset(sql, next.span.start),
                format!("syntax error at or near \"{}\"", next.token),
            ));
        }
        let root =
            compile::Compiler::new(sql, columns, params, check_labels).compile_root(&expr)?;
        let mut referenced = Vec::new();
        root.collect_columns(&mut referenced);
        referenced.sort_unstable();
        referenced.dedup();
        Ok(WhereClause { root, referenced })
    }

    /// Evaluate on one row: `row[i]` is the Postgres text output of `columns[i]` (None for
    /// NULL). Some(true)/Some(false)/None (NULL) with three-valued logic; Err for runtime
    /// errors such as integer overflow or division by zero.
    pub fn eval(&self, row: &[Option<&str>]) -> Result<Option<bool>, WhereError> {
        eval::eval_bool(&self.root, row)
    }

    /// True if the row is in the shape; NULL and errors count as not matching, as a row that
    /// fails its WHERE in Postgres is not returned.
    pub fn matches(&self, row: &[Option<&str>]) -> bool {
        matches!(self.eval(row), Ok(Some(true)))
    }

    /// SQL to put after WHERE in the snapshot query: parameters inlined as typed literals,
    /// implicit conversions made explicit, text ordering byte-wise (`COLLATE "C"`).
    pub fn to_sql(&self) -> String {
        render::render(&self.root)
    }

    /// `column = constant` tests of which one holds on every row the clause matches, for
    /// the filter index; None when there is no such set.
    pub(crate) fn equality_branches(&self) -> Option<Vec<index::EqTerm>> {
        index::branches(&self.root)
    }

    /// Whether the clause is true on exactly the rows on which one of its
    /// `equality_branches` holds.
    pub(crate) fn decided_by_equality(&self) -> bool {
        index::decided_by_branches(&self.root)
    }

    /// A substring every row the clause matches contains, for the filter's substring
    /// index; None when the clause implies none.
    pub(crate) fn contains_term(&self) -> Option<index::ContainsTerm> {
        index::contains_term(&self.root)
    }

    /// Indexes into `columns` of the columns the clause reads, ascending.
    pub fn referenced_columns(&self) -> Vec<usize> {
        self.referenced.clone()
    }
}

/// sqlparser reports 1-based lines and character columns; clients get byte offsets.
pub(crate) fn byte_offset(sql: &str, loc: Location) -> usize {
    if loc.line == 0 || loc.column == 0 {
        return 0;
    }
    let Ok(skip_lines) = usize::try_from(loc.line - 1) else {
        return sql.len();
    };
    let line_start = if skip_lines == 0 {
        0
    } else {
        match sql.match_indices('\n').nth(skip_lines - 1) {
            Some((i, _)) => i + 1,
            None => return sql.len(),
        }
    };
    let line = &sql[line_start..];
    usize::try_from(loc.column - 1)
        .ok()
        .and_then(|chars| line.char_indices().nth(chars))
        .map_or(sql.len(), |(i, _)| line_start + i)
}

/// sqlparser appends " at Line: L, Column: C" to its messages; split that off into a location.
fn parser_error(sql: &str, err: ParserError) -> WhereError {
    let message = match err {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => {
            return WhereError::new(0, "expression is too deeply nested");
        }
    };
    let Some((reason, position)) = message.rsplit_once(" at Line: ") else {
        return WhereError::new(0, message);
    };
    let location = position
        .split_once(", Column: ")
        .and_then(|(l, c)| Some((l.parse().ok()?, c.parse().ok()?)))
        .map_or(0, |(line, column)| {
            byte_offset(sql, Location { line, column })
        });
    WhereError::new(location, reason)
}
