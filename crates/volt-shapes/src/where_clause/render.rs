//! SQL text for the snapshot query, rendered from the typed tree rather than the user's text
//! so that Postgres runs exactly what the evaluator runs: every composite is parenthesised,
//! every constant carries its resolved type, and every conversion the type checker chose is
//! an explicit CAST.

use std::fmt::Write;

use super::ir::{Call, Kind, Node, Sub, Truth};
use super::types::SqlType;
use super::value::{self, Value};

pub(crate) fn render(node: &Node) -> String {
    let mut out = String::new();
    write_node(&mut out, node);
    out
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal that reads the same whether or not `standard_conforming_strings` is on:
/// values with backslashes use the E'' form, where the escaping is explicit.
fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

fn write_const(out: &mut String, ty: SqlType, v: Option<&Value>) {
    // An enum type has no name here: its constants are left untyped, and Postgres reads them
    // as the enum they are compared with (they only ever meet an enum column).
    if let SqlType::Enum(_) = ty {
        match v {
            Some(v) => out.push_str(&quote_literal(&value::output(ty, v))),
            None => out.push_str("NULL"),
        }
        return;
    }
    match v {
        None => {
            let _ = write!(out, "NULL::{}", ty.name());
        }
        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(v) => {
            let _ = write!(
                out,
                "{}::{}",
                quote_literal(&value::output(ty, v)),
                ty.name()
            );
        }
    }
}

/// Postgres would otherwise compare text in the column's collation; "C" is byte order, which
/// is what the evaluator uses. Every operand of an ordering gets it: an explicit collation
/// inside one (GREATEST's "default") must not meet a different explicit one beside it. Equality needs no collation: in deterministic collations it is
/// already byte equality, and adding one would stop Postgres from using an index on the column.
fn write_collated(out: &mut String, node: &Node, ordering: bool, cmp_type: SqlType) {
    write_node(out, node);
    let textual = cmp_type.is_string() || cmp_type.element().is_some_and(SqlType::is_string);
    if ordering && textual {
        out.push_str(" COLLATE \"C\"");
    }
}

fn write_list(out: &mut String, items: &[Node], sep: &str) {
    out.push('(');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        write_node(out, item);
    }
    out.push(')');
}

fn write_node(out: &mut String, node: &Node) {
    match &node.kind {
        Kind::Column { name, .. } => out.push_str(&quote_ident(name)),
        Kind::Const(v) => write_const(out, node.ty, v.as_ref()),
        Kind::Untyped(text) => match text {
            None => out.push_str("NULL"),
            Some(t) => out.push_str(&quote_literal(t)),
        },
        Kind::Cast { expr, target } => {
            out.push_str("CAST(");
            write_node(out, expr);
            let _ = write!(out, " AS {})", target.sql_name());
        }
        Kind::DateAsTimestamp(inner) => write_node(out, inner),
        Kind::Not(inner) => {
            out.push_str("(NOT ");
            write_node(out, inner);
            out.push(')');
        }
        Kind::And(items) => write_list(out, items, " AND "),
        Kind::Or(items) => write_list(out, items, " OR "),
        Kind::IsNull { expr, negated } => {
            out.push('(');
            write_node(out, expr);
            out.push_str(if *negated {
                " IS NOT NULL)"
            } else {
                " IS NULL)"
            });
        }
        Kind::IsTruth {
            expr,
            truth,
            negated,
        } => {
            out.push('(');
            write_node(out, expr);
            out.push_str(if *negated { " IS NOT " } else { " IS " });
            out.push_str(match truth {
                Truth::True => "TRUE)",
                Truth::False => "FALSE)",
                Truth::Unknown => "UNKNOWN)",
            });
        }
        Kind::Compare {
            op,
            left,
            right,
            cmp_type,
        } => {
            out.push('(');
            write_collated(out, left, !op.is_equality(), *cmp_type);
            let _ = write!(out, " {} ", op.sql());
            write_collated(out, right, !op.is_equality(), *cmp_type);
            out.push(')');
        }
        Kind::Distinct {
            left,
            right,
            negated,
            ..
        } => {
            out.push('(');
            write_node(out, left);
            out.push_str(if *negated {
                " IS NOT DISTINCT FROM "
            } else {
                " IS DISTINCT FROM "
            });
            write_node(out, right);
            out.push(')');
        }
        Kind::In {
            expr,
            list,
            negated,
            ..
        } => {
            out.push('(');
            write_node(out, expr);
            out.push_str(if *negated { " NOT IN " } else { " IN " });
            write_list(out, list, ", ");
            out.push(')');
        }
        Kind::Like {
            expr,
            pattern,
            escape,
            case_insensitive,
            negated,
            ..
        } => {
            out.push('(');
            write_node(out, expr);
            out.push_str(match (*negated, *case_insensitive) {
                (false, false) => " LIKE ",
                (true, false) => " NOT LIKE ",
                (false, true) => " ILIKE ",
                (true, true) => " NOT ILIKE ",
            });
            write_node(out, pattern);
            if let Some(e) = escape {
                out.push_str(" ESCAPE ");
                write_node(out, e);
            }
            out.push(')');
        }
        Kind::Arith { op, left, right } => {
            out.push('(');
            write_node(out, left);
            let _ = write!(out, " {} ", op.sql());
            write_node(out, right);
            out.push(')');
        }
        Kind::Neg(inner) => {
            out.push_str("(- ");
            write_node(out, inner);
            out.push(')');
        }
        Kind::Concat { left, right } => {
            out.push('(');
            write_node(out, left);
            out.push_str(" || ");
            write_node(out, right);
            out.push(')');
        }
        Kind::Func { func, arg, .. } => {
            out.push_str(func.sql());
            out.push('(');
            write_node(out, arg);
            out.push(')');
        }
        Kind::Unary { op, arg } => {
            let _ = write!(out, "({} ", op.sql());
            write_node(out, arg);
            out.push(')');
        }
        Kind::Call {
            func,
            args,
            cmp_type,
        } => {
            // GREATEST/LEAST compare in "C", but their result must keep the default collation
            // for what uses it (ILIKE, lower/upper fold letters by the collation).
            let recollate = matches!(func, Call::Greatest | Call::Least) && cmp_type.is_string();
            if recollate {
                out.push('(');
            }
            out.push_str(func.sql());
            out.push('(');
            for (i, arg) in args.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let ordering = matches!(func, Call::Greatest | Call::Least);
                write_collated(out, arg, ordering, *cmp_type);
            }
            out.push(')');
            if recollate {
                out.push_str(" COLLATE \"default\")");
            }
        }
        Kind::AnyAll {
            op,
            left,
            right,
            all,
            cmp_type,
        } => {
            out.push('(');
            write_collated(out, left, !op.is_equality(), *cmp_type);
            let _ = write!(out, " {} {} (", op.sql(), if *all { "ALL" } else { "ANY" });
            write_collated(out, right, !op.is_equality(), *cmp_type);
            out.push_str("))");
        }
        Kind::Contain { op, left, right } => {
            out.push('(');
            write_node(out, left);
            let _ = write!(out, " {} ", op.sql());
            write_node(out, right);
            out.push(')');
        }
        Kind::ArrayCtor(items) => {
            out.push_str("ARRAY[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_node(out, item);
            }
            out.push(']');
        }
        Kind::Subscript { expr, subs, .. } => {
            out.push('(');
            write_node(out, expr);
            out.push(')');
            for sub in subs {
                out.push('[');
                match sub {
                    Sub::Index(i) => write_node(out, i),
                    Sub::Slice(lo, hi) => {
                        if let Some(lo) = lo {
                            write_node(out, lo);
                        }
                        out.push(':');
                        if let Some(hi) = hi {
                            write_node(out, hi);
                        }
                    }
                }
                out.push(']');
            }
        }
    }
}
