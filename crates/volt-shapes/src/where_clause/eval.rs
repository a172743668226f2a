//! Evaluation of a type-checked clause on one row, with Postgres's three-valued logic.

use std::cmp::Ordering;

use super::WhereError;
use super::ir::{ArithOp, CmpOp, Func, Kind, Node, Truth};
use super::like::{LikePattern, escape_char};
use super::numeric::Numeric;
use super::types::{CastTarget, SqlType};
use super::value::{self, Value, check_float, check_int_range, numeric_op_error};

type Eval = Result<Option<Value>, WhereError>;

fn internal(node: &Node) -> WhereError {
    WhereError::new(
        node.loc,
        "internal error: operand has an unexpected type".to_string(),
    )
}

/// Dispatch only: every level of nesting pays for this frame, so the work is done in
/// per-construct functions (debug builds do not share stack slots between match arms).
pub(crate) fn eval(node: &Node, row: &[Option<&str>]) -> Eval {
    match &node.kind {
        Kind::Column { index, .. } => column(node, *index, row),
        Kind::Const(v) => Ok(v.clone()),
        // Compilation gives every literal a type; an untyped one here would be a bug.
        Kind::Untyped(_) => Err(internal(node)),
        Kind::Cast { expr, target } => cast(node, expr, *target, row),
        Kind::Not(inner) => Ok(eval_bool(inner, row)?.map(|b| Value::Bool(!b))),
        Kind::And(items) => all_or_any(items, false, row),
        Kind::Or(items) => all_or_any(items, true, row),
        Kind::IsNull { expr, negated } => {
            Ok(Some(Value::Bool(eval(expr, row)?.is_none() != *negated)))
        }
        Kind::IsTruth {
            expr,
            truth,
            negated,
        } => is_truth(expr, *truth, *negated, row),
        Kind::Compare {
            op,
            left,
            right,
            cmp_type,
        } => comparison(node, *op, left, right, *cmp_type, row),
        Kind::Distinct {
            left,
            right,
            negated,
            cmp_type,
        } => distinct(node, left, right, *negated, *cmp_type, row),
        Kind::In {
            expr,
            list,
            negated,
            cmp_type,
        } => in_list(node, expr, list, *negated, *cmp_type, row),
        Kind::Like { .. } => like(node, row),
        Kind::Arith { op, left, right } => {
            let (Some(a), Some(b)) = (eval(left, row)?, eval(right, row)?) else {
                return Ok(None);
            };
            arith(node, *op, a, b).map(Some)
        }
        Kind::Neg(inner) => negate(node, inner, row),
        Kind::Concat { left, right } => {
            let (Some(a), Some(b)) = (eval_text(left, row)?, eval_text(right, row)?) else {
                return Ok(None);
            };
            Ok(Some(Value::Text(a + &b)))
        }
        Kind::Func {
            func,
            arg,
            c_collation,
        } => {
            let Some(s) = eval_text(arg, row)? else {
                return Ok(None);
            };
            let upper = *func == Func::Upper;
            Ok(Some(Value::Text(value::change_case(
                &s,
                upper,
                *c_collation,
            ))))
        }
    }
}

fn fail(node: &Node, reason: String) -> WhereError {
    WhereError::new(node.loc, reason)
}

fn column(node: &Node, index: usize, row: &[Option<&str>]) -> Eval {
    let cell = row.get(index).ok_or_else(|| {
        fail(
            node,
            format!(
                "row has {} values but the clause reads column {}",
                row.len(),
                index + 1
            ),
        )
    })?;
    match cell {
        None => Ok(None),
        Some(text) => value::parse_input(node.ty, text)
            .map(Some)
            .map_err(|r| fail(node, r)),
    }
}

fn cast(node: &Node, expr: &Node, target: CastTarget, row: &[Option<&str>]) -> Eval {
    match eval(expr, row)? {
        None => Ok(None),
        Some(v) => value::cast(v, expr.ty, target).map_err(|r| fail(node, r)),
    }
}

/// AND (`stop_on` false) or OR (`stop_on` true): the deciding value wins, else NULL if any
/// operand was NULL.
fn all_or_any(items: &[Node], stop_on: bool, row: &[Option<&str>]) -> Eval {
    let mut saw_null = false;
    for item in items {
        match eval_bool(item, row)? {
            Some(b) if b == stop_on => return Ok(Some(Value::Bool(stop_on))),
            Some(_) => {}
            None => saw_null = true,
        }
    }
    Ok((!saw_null).then_some(Value::Bool(!stop_on)))
}

fn is_truth(expr: &Node, truth: Truth, negated: bool, row: &[Option<&str>]) -> Eval {
    let v = eval_bool(expr, row)?;
    let holds = match truth {
        Truth::True => v == Some(true),
        Truth::False => v == Some(false),
        Truth::Unknown => v.is_none(),
    };
    Ok(Some(Value::Bool(holds != negated)))
}

fn comparison(
    node: &Node,
    op: CmpOp,
    left: &Node,
    right: &Node,
    cmp_type: SqlType,
    row: &[Option<&str>],
) -> Eval {
    let (Some(a), Some(b)) = (eval(left, row)?, eval(right, row)?) else {
        return Ok(None);
    };
    let ord = compare(node, cmp_type, &a, &b)?;
    Ok(Some(Value::Bool(holds(op, ord))))
}

fn distinct(
    node: &Node,
    left: &Node,
    right: &Node,
    negated: bool,
    cmp_type: SqlType,
    row: &[Option<&str>],
) -> Eval {
    let distinct = match (eval(left, row)?, eval(right, row)?) {
        (None, None) => false,
        (Some(a), Some(b)) => compare(node, cmp_type, &a, &b)? != Ordering::Equal,
        _ => true,
    };
    Ok(Some(Value::Bool(distinct != negated)))
}

fn in_list(
    node: &Node,
    expr: &Node,
    list: &[Node],
    negated: bool,
    cmp_type: SqlType,
    row: &[Option<&str>],
) -> Eval {
    let Some(needle) = eval(expr, row)? else {
        return Ok(None);
    };
    let mut saw_null = false;
    for item in list {
        match eval(item, row)? {
            None => saw_null = true,
            Some(v) if compare(node, cmp_type, &needle, &v)? == Ordering::Equal => {
                return Ok(Some(Value::Bool(!negated)));
            }
            Some(_) => {}
        }
    }
    Ok((!saw_null).then_some(Value::Bool(negated)))
}

fn like(node: &Node, row: &[Option<&str>]) -> Eval {
    let Kind::Like {
        expr,
        pattern,
        escape,
        case_insensitive,
        negated,
        c_collation,
        compiled,
    } = &node.kind
    else {
        return Err(internal(node));
    };
    let Some(subject) = eval_text(expr, row)? else {
        return Ok(None);
    };
    let built;
    let matcher = match compiled {
        Some(p) => p,
        None => {
            let Some(pat) = eval_text(pattern, row)? else {
                return Ok(None);
            };
            let esc = match escape {
                None => Some('\\'),
                Some(e) => match eval_text(e, row)? {
                    None => return Ok(None),
                    Some(e) => escape_char(&e).map_err(|r| fail(node, r))?,
                },
            };
            let pat = if *case_insensitive {
                value::change_case(&pat, false, *c_collation)
            } else {
                pat
            };
            built = LikePattern::compile(&pat, esc);
            &built
        }
    };
    let found = if *case_insensitive {
        matcher.matches(&value::change_case(&subject, false, *c_collation))
    } else {
        matcher.matches(&subject)
    }
    .map_err(|r| fail(node, r))?;
    Ok(Some(Value::Bool(found != *negated)))
}

fn negate(node: &Node, inner: &Node, row: &[Option<&str>]) -> Eval {
    Ok(Some(match eval(inner, row)? {
        None => return Ok(None),
        Some(Value::Int(i)) => {
            let r = i
                .checked_neg()
                .ok_or_else(|| fail(node, format!("{} out of range", node.ty.int_label())))?;
            Value::Int(check_int_range(node.ty, r).map_err(|r| fail(node, r))?)
        }
        Some(Value::Float(f)) => Value::Float(-f),
        Some(Value::Numeric(n)) => Value::Numeric(n.neg()),
        Some(_) => return Err(internal(node)),
    }))
}

pub(crate) fn eval_bool(node: &Node, row: &[Option<&str>]) -> Result<Option<bool>, WhereError> {
    match eval(node, row)? {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(internal(node)),
    }
}

fn eval_text(node: &Node, row: &[Option<&str>]) -> Result<Option<String>, WhereError> {
    match eval(node, row)? {
        None => Ok(None),
        Some(Value::Text(s)) => Ok(Some(s)),
        Some(_) => Err(internal(node)),
    }
}

fn compare(node: &Node, ty: SqlType, a: &Value, b: &Value) -> Result<Ordering, WhereError> {
    value::compare(ty, a, b).ok_or_else(|| internal(node))
}

fn holds(op: CmpOp, ord: Ordering) -> bool {
    match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::NotEq => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::LtEq => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::GtEq => ord != Ordering::Less,
    }
}

fn arith(node: &Node, op: ArithOp, a: Value, b: Value) -> Result<Value, WhereError> {
    let ty = node.ty;
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => {
            let r = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Div if y == 0 => return Err(fail(node, "division by zero".into())),
                // Integer division truncates toward zero, as in Postgres.
                ArithOp::Div => x.checked_div(y),
            };
            let r = r.ok_or_else(|| fail(node, format!("{} out of range", ty.int_label())))?;
            Ok(Value::Int(
                check_int_range(ty, r).map_err(|r| fail(node, r))?,
            ))
        }
        (Value::Float(x), Value::Float(y)) => {
            let (x, y) = if ty == SqlType::Float4 {
                (f64::from(x as f32), f64::from(y as f32))
            } else {
                (x, y)
            };
            let finite = x.is_finite() && y.is_finite();
            let r = match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div if y == 0.0 && !x.is_nan() => {
                    return Err(fail(node, "division by zero".into()));
                }
                ArithOp::Div => x / y,
            };
            let r = check_float(ty, r, finite).map_err(|r| fail(node, r))?;
            let underflow = matches!(op, ArithOp::Mul | ArithOp::Div)
                && r == 0.0
                && x != 0.0
                && !(op == ArithOp::Mul && y == 0.0)
                && !y.is_infinite();
            if underflow {
                return Err(fail(node, "value out of range: underflow".into()));
            }
            Ok(Value::Float(r))
        }
        (Value::Numeric(x), Value::Numeric(y)) => {
            let r: Result<Numeric, _> = match op {
                ArithOp::Add => x.add(&y),
                ArithOp::Sub => x.sub(&y),
                ArithOp::Mul => x.mul(&y),
                ArithOp::Div => x.div(&y),
            };
            r.map(Value::Numeric)
                .map_err(|e| fail(node, numeric_op_error(e)))
        }
        _ => Err(internal(node)),
    }
}
