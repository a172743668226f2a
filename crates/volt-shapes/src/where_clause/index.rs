//! What the filter index needs from a clause: the `column = constant` tests a row must pass
//! for the clause to hold, and a way to turn a row's cell into the same lookup key.

use super::ir::{CmpOp, Kind, Node};
use super::types::SqlType;
use super::value::{self, Value};

/// A value as the equality index hashes it: two values get the same key exactly when the
/// evaluator's comparison in the probe's type calls them equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    Bool(bool),
    Int(i64),
    /// Text compares byte-wise; `bpchar` without its trailing spaces.
    Text(Box<str>),
    Uuid(u128),
    Date(i32),
    /// Microseconds: times of day and timestamps (with or without zone, as the type says).
    Micros(i64),
}

/// How a column's text output becomes an [`IndexKey`]: parsed as the column's type, keyed
/// as the comparison's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Probe {
    parse: SqlType,
    cmp: SqlType,
}

impl Probe {
    /// None when the text does not parse: then the comparison errors, so it is not true.
    pub(crate) fn key(&self, text: &str) -> Option<IndexKey> {
        key_of(self.cmp, &value::parse_input(self.parse, text).ok()?)
    }
}

/// `column = key`, one way for a row to satisfy a clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EqTerm {
    pub column: usize,
    pub probe: Probe,
    pub key: IndexKey,
}

fn key_of(cmp: SqlType, v: &Value) -> Option<IndexKey> {
    Some(match (cmp, v) {
        (SqlType::Bool, Value::Bool(b)) => IndexKey::Bool(*b),
        (SqlType::Int2 | SqlType::Int4 | SqlType::Int8, Value::Int(i)) => IndexKey::Int(*i),
        (SqlType::Bpchar, Value::Text(t)) => IndexKey::Text(t.trim_end_matches(' ').into()),
        (
            SqlType::Text | SqlType::Varchar | SqlType::Name | SqlType::Unknown | SqlType::Other,
            Value::Text(t),
        ) => IndexKey::Text(t.as_str().into()),
        (SqlType::Uuid, Value::Uuid(u)) => IndexKey::Uuid(*u),
        (SqlType::Date, Value::Date(d)) => IndexKey::Date(*d),
        (SqlType::Time, Value::Time(t)) => IndexKey::Micros(*t),
        (SqlType::Timestamp | SqlType::Timestamptz, Value::Timestamp(t)) => IndexKey::Micros(*t),
        // Floats (NaN, -0), numerics (1.0 = 1.00), intervals and arrays have equal values
        // with different representations: such clauses are evaluated one by one.
        _ => return None,
    })
}

/// `column = const` (either way round), as a term.
fn equality(left: &Node, right: &Node, cmp: SqlType) -> Option<EqTerm> {
    let (col, konst) = match (&left.kind, &right.kind) {
        (Kind::Column { .. }, Kind::Const(_)) => (left, right),
        (Kind::Const(_), Kind::Column { .. }) => (right, left),
        _ => return None,
    };
    let (Kind::Column { index, .. }, Kind::Const(Some(v))) = (&col.kind, &konst.kind) else {
        return None;
    };
    Some(EqTerm {
        column: *index,
        probe: Probe { parse: col.ty, cmp },
        key: key_of(cmp, v)?,
    })
}

/// `column [I]LIKE pattern` with a literal in the pattern: the column's text (lowercased
/// by `fold` for ILIKE) contains `needle` on every row the clause is true for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainsTerm {
    pub column: usize,
    pub needle: String,
    /// ILIKE: the text is lowercased as the evaluator does (`c_collation` picks the
    /// rule); LIKE: None, the text as it is.
    pub fold: Option<bool>,
}

/// The lowercase text ILIKE matches against, exactly as the evaluator computes it.
pub(crate) fn fold(text: &str, c_collation: bool) -> String {
    value::change_case(text, false, c_collation)
}

/// A `ContainsTerm` that holds on every row `node` is true for: the clause is such a
/// LIKE, or an AND with one (the longest needle selects the fewest rows). Sound because
/// a LIKE is true only if its pattern matched, and a match puts each run of literal
/// characters of the pattern somewhere in the text.
pub(crate) fn contains_term(node: &Node) -> Option<ContainsTerm> {
    match &node.kind {
        Kind::Like {
            expr,
            negated: false,
            case_insensitive,
            c_collation,
            compiled: Some(pattern),
            ..
        } => {
            // Only text columns: their cell is the text the evaluator matches.
            let Kind::Column { index, .. } = &expr.kind else {
                return None;
            };
            if !matches!(expr.ty, SqlType::Text | SqlType::Varchar) {
                return None;
            }
            Some(ContainsTerm {
                column: *index,
                needle: pattern.longest_literal()?,
                fold: case_insensitive.then_some(*c_collation),
            })
        }
        Kind::And(items) => items
            .iter()
            .filter_map(contains_term)
            .max_by_key(|t| t.needle.len()),
        _ => None,
    }
}

/// Whether `node` is true on exactly the rows on which one of its `branches` holds: an
/// equality, an IN list, or an OR of them (a row whose value has one of the keys needs no
/// evaluation).
pub(crate) fn decided_by_branches(node: &Node) -> bool {
    match &node.kind {
        Kind::Compare { op: CmpOp::Eq, .. } | Kind::In { negated: false, .. } => {
            branches(node).is_some()
        }
        Kind::Or(items) => items.iter().all(decided_by_branches),
        _ => false,
    }
}

/// Terms of which at least one holds for every row on which `node` is true, or None when
/// the clause has no such set (it must then be evaluated for every change).
///
/// Sound because the evaluator's logic is: an AND is true only if every conjunct was
/// evaluated and true; an OR only if one of its operands was; `x IN (c1, c2)` only if x
/// equals one of the constants; `col = c` only if the column's value parsed and compared
/// equal to `c`.
pub(crate) fn branches(node: &Node) -> Option<Vec<EqTerm>> {
    match &node.kind {
        Kind::Compare {
            op: CmpOp::Eq,
            left,
            right,
            cmp_type,
        } => equality(left, right, *cmp_type).map(|t| vec![t]),
        Kind::In {
            expr,
            list,
            negated: false,
            cmp_type,
        } => {
            let mut terms = Vec::with_capacity(list.len());
            for item in list {
                match &item.kind {
                    // NULL items never make IN true.
                    Kind::Const(None) => {}
                    _ => terms.push(equality(expr, item, *cmp_type)?),
                }
            }
            Some(terms)
        }
        // One conjunct is enough: the one with the fewest terms selects the fewest rows.
        Kind::And(items) => items
            .iter()
            .filter_map(branches)
            .min_by_key(|terms| terms.len()),
        Kind::Or(items) => {
            let mut terms = Vec::new();
            for item in items {
                terms.extend(branches(item)?);
            }
            Some(terms)
        }
        _ => None,
    }
}
