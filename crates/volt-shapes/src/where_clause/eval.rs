//! Evaluation of a type-checked clause on one row, with Postgres's three-valued logic.

use std::cmp::Ordering;

use super::WhereError;
use super::array::{self, Array};
use super::datetime;
use super::interval::{self, Interval};
use super::ir::{ArithOp, Call, CmpOp, Func, Kind, Node, Sub, Truth, UnaryOp};
use super::like::{LikePattern, escape_char};
use super::numeric::Numeric;
use super::types::{CastTarget, SqlType};
use super::value::{self, Value, check_float, check_int_range, numeric_op_error};
use super::zone;

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
        Kind::DateAsTimestamp(inner) => Ok(match eval(inner, row)? {
            // Between every finite timestamp and infinity, as `date2timestamp_opt_overflow`.
            Some(Value::Date(d)) => Some(Value::Timestamp(
                datetime::date_to_timestamp(d).unwrap_or(datetime::TS_POS_INF - 1),
            )),
            None => None,
            Some(_) => return Err(internal(node)),
        }),
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
        Kind::Unary { op, arg } => match eval(arg, row)? {
            None => Ok(None),
            Some(v) => unary(node, *op, v).map(Some),
        },
        Kind::Call {
            func,
            args,
            cmp_type,
        } => call(node, *func, args, *cmp_type, row),
        Kind::AnyAll {
            op,
            left,
            right,
            all,
            cmp_type,
        } => any_all(node, *op, left, right, *all, *cmp_type, row),
        Kind::Contain { op, left, right } => {
            let (Some(a), Some(b)) = (eval_array(left, row)?, eval_array(right, row)?) else {
                return Ok(None);
            };
            let elem = left.ty.element().ok_or_else(|| internal(node))?;
            let eq =
                |x: &Value, y: &Value| value::compare(elem, x, y).map(|o| o == Ordering::Equal);
            let found = array::containment(*op, &a, &b, eq).ok_or_else(|| internal(node))?;
            Ok(Some(Value::Bool(found)))
        }
        Kind::ArrayCtor(items) => array_ctor(node, items, row),
        Kind::Subscript { expr, subs, slice } => subscript(node, expr, subs, *slice, row),
    }
}

fn eval_array(node: &Node, row: &[Option<&str>]) -> Result<Option<Array>, WhereError> {
    match eval(node, row)? {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(*a)),
        Some(_) => Err(internal(node)),
    }
}

fn array_value(a: Array) -> Value {
    Value::Array(Box::new(a))
}

fn unary(node: &Node, op: UnaryOp, v: Value) -> Result<Value, WhereError> {
    let out_of_range = || fail(node, format!("{} out of range", node.ty.int_label()));
    Ok(match (op, v) {
        (UnaryOp::Sqrt, Value::Float(f)) => {
            if f < 0.0 {
                return Err(fail(
                    node,
                    "cannot take square root of a negative number".into(),
                ));
            }
            Value::Float(f.sqrt())
        }
        // cbrt() from libm, as Postgres's dcbrt calls it.
        (UnaryOp::Cbrt, Value::Float(f)) => Value::Float(f.cbrt()),
        (UnaryOp::Abs, Value::Int(i)) => {
            let r = i.checked_abs().ok_or_else(out_of_range)?;
            Value::Int(check_int_range(node.ty, r).map_err(|r| fail(node, r))?)
        }
        (UnaryOp::Abs, Value::Float(f)) => Value::Float(f.abs()),
        (UnaryOp::Abs, Value::Numeric(n)) => {
            if n.total_cmp(&Numeric::from_i64(0)) == Ordering::Less {
                Value::Numeric(n.neg())
            } else {
                Value::Numeric(n)
            }
        }
        (UnaryOp::BitNot, Value::Int(i)) => Value::Int(!i),
        _ => return Err(internal(node)),
    })
}

fn call(node: &Node, func: Call, args: &[Node], cmp_type: SqlType, row: &[Option<&str>]) -> Eval {
    match func {
        Call::Coalesce => {
            for arg in args {
                if let Some(v) = eval(arg, row)? {
                    return Ok(Some(v));
                }
            }
            Ok(None)
        }
        Call::Greatest | Call::Least => {
            let mut best: Option<Value> = None;
            for arg in args {
                let Some(v) = eval(arg, row)? else {
                    continue;
                };
                let replace = match &best {
                    None => true,
                    Some(b) => {
                        let ord = compare(node, cmp_type, &v, b)?;
                        if func == Call::Greatest {
                            ord == Ordering::Greater
                        } else {
                            ord == Ordering::Less
                        }
                    }
                };
                if replace {
                    best = Some(v);
                }
            }
            Ok(best)
        }
        Call::Concat => {
            let mut out = String::new();
            for arg in args {
                if let Some(v) = eval(arg, row)? {
                    out.push_str(&value::output(arg.ty, &v));
                }
            }
            Ok(Some(Value::Text(out)))
        }
        Call::ArrayCat => {
            let [l, r] = args else {
                return Err(internal(node));
            };
            Ok(match (eval_array(l, row)?, eval_array(r, row)?) {
                (None, None) => None,
                (Some(a), None) | (None, Some(a)) => Some(array_value(a)),
                (Some(a), Some(b)) => {
                    Some(array_value(array::cat(a, b).map_err(|r| fail(node, r))?))
                }
            })
        }
        Call::ArrayAppend | Call::ArrayPrepend => {
            let [l, r] = args else {
                return Err(internal(node));
            };
            let at_end = func == Call::ArrayAppend;
            let (arr, item) = if at_end {
                (eval_array(l, row)?, eval(r, row)?)
            } else {
                (eval_array(r, row)?, eval(l, row)?)
            };
            let arr = arr.unwrap_or(Array {
                dims: Vec::new(),
                items: Vec::new(),
            });
            array::push(arr, item, at_end)
                .map(|a| Some(array_value(a)))
                .map_err(|r| fail(node, r))
        }
        Call::ArrayNdims => {
            let [arg] = args else {
                return Err(internal(node));
            };
            Ok(eval_array(arg, row)?
                .and_then(|a| array::ndims(&a))
                .map(Value::Int))
        }
        Call::Timezone => {
            let [zone, ts] = args else {
                return Err(internal(node));
            };
            // Both arguments are computed (and can fail) before NULL makes the result NULL.
            let (zone, ts) = (eval(zone, row)?, eval(ts, row)?);
            let (Some(Value::Text(name)), Some(Value::Timestamp(t))) = (zone, ts) else {
                return Ok(None);
            };
            let zone = zone::lookup(&name).map_err(|r| fail(node, r))?;
            let r = if cmp_type == SqlType::Timestamptz {
                zone::to_local(zone, t)
            } else {
                zone::to_utc(zone, t)
            };
            r.map(|t| Some(Value::Timestamp(t)))
                .map_err(|r| fail(node, r))
        }
        Call::JustifyDays | Call::JustifyHours | Call::JustifyInterval => {
            let [arg] = args else {
                return Err(internal(node));
            };
            let Some(Value::Interval(i)) = eval(arg, row)? else {
                return Ok(None);
            };
            let r = match func {
                Call::JustifyDays => interval::justify_days(&i),
                Call::JustifyHours => interval::justify_hours(&i),
                _ => interval::justify_interval(&i),
            };
            r.map(|i| Some(Value::Interval(i)))
                .map_err(|r| fail(node, r))
        }
    }
}

/// `ExecEvalScalarArrayOp`: a NULL array gives NULL, an empty one false (ANY) or true (ALL)
/// even for a NULL left operand; otherwise NULL elements make an undecided result NULL.
fn any_all(
    node: &Node,
    op: CmpOp,
    left: &Node,
    right: &Node,
    all: bool,
    cmp_type: SqlType,
    row: &[Option<&str>],
) -> Eval {
    let needle = eval(left, row)?;
    let Some(arr) = eval_array(right, row)? else {
        return Ok(None);
    };
    if arr.items.is_empty() {
        return Ok(Some(Value::Bool(all)));
    }
    let Some(needle) = needle else {
        return Ok(None);
    };
    let mut saw_null = false;
    for item in &arr.items {
        match item {
            None => saw_null = true,
            Some(v) => {
                let holds = holds(op, compare(node, cmp_type, &needle, v)?);
                if holds != all {
                    return Ok(Some(Value::Bool(holds)));
                }
            }
        }
    }
    Ok((!saw_null).then_some(Value::Bool(all)))
}

fn array_ctor(node: &Node, items: &[Node], row: &[Option<&str>]) -> Eval {
    let nested = items.iter().any(|n| n.ty.is_array());
    if nested {
        let mut subs = Vec::with_capacity(items.len());
        for item in items {
            match eval_array(item, row)? {
                Some(a) => subs.push(a),
                None => {
                    return Err(fail(
                        node,
                        "multidimensional arrays must have array expressions with matching dimensions"
                            .into(),
                    ));
                }
            }
        }
        return array::nest(subs)
            .map(|a| Some(array_value(a)))
            .map_err(|r| fail(node, r));
    }
    let values = items
        .iter()
        .map(|n| eval(n, row))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(array_value(Array {
        dims: vec![(1, values.len())],
        items: values,
    })))
}

fn subscript_value(
    node: &Node,
    sub: &Node,
    row: &[Option<&str>],
) -> Result<Option<i64>, WhereError> {
    match eval(sub, row)? {
        None => Ok(None),
        Some(Value::Int(i)) if i32::try_from(i).is_ok() => Ok(Some(i)),
        Some(Value::Int(_)) => Err(fail(node, "integer out of range".into())),
        Some(_) => Err(internal(node)),
    }
}

fn subscript(node: &Node, expr: &Node, subs: &[Sub], slice: bool, row: &[Option<&str>]) -> Eval {
    let Some(arr) = eval_array(expr, row)? else {
        return Ok(None);
    };
    if !slice {
        let mut at = Vec::with_capacity(subs.len());
        for sub in subs {
            let Sub::Index(i) = sub else {
                return Err(internal(node));
            };
            let Some(i) = subscript_value(node, i, row)? else {
                return Ok(None);
            };
            at.push(i);
        }
        return Ok(array::element(&arr, &at));
    }
    let mut bounds = Vec::with_capacity(subs.len());
    for sub in subs {
        // In a slice, a lone subscript `n` means `1:n`.
        let (lo, hi) = match sub {
            Sub::Index(i) => match subscript_value(node, i, row)? {
                None => return Ok(None),
                Some(i) => (Some(1), Some(i)),
            },
            Sub::Slice(lo, hi) => {
                let bound = |b: &Option<Node>| -> Result<Option<Option<i64>>, WhereError> {
                    match b {
                        None => Ok(Some(None)),
                        Some(n) => Ok(subscript_value(node, n, row)?.map(Some)),
                    }
                };
                let (Some(lo), Some(hi)) = (bound(lo)?, bound(hi)?) else {
                    return Ok(None);
                };
                (lo, hi)
            }
        };
        bounds.push((lo, hi));
    }
    Ok(Some(array_value(array::slice(&arr, &bounds))))
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

/// `x = ANY (ARRAY[...])` over constant items (compilation rewrites the rest of an IN list
/// into comparisons, as Postgres does).
fn in_list(
    node: &Node,
    expr: &Node,
    list: &[Node],
    negated: bool,
    cmp_type: SqlType,
    row: &[Option<&str>],
) -> Eval {
    let needle = eval(expr, row)?;
    let mut saw_null = false;
    for item in list {
        let v = eval(item, row)?;
        match (&needle, v) {
            (Some(n), Some(v)) if compare(node, cmp_type, n, &v)? == Ordering::Equal => {
                return Ok(Some(Value::Bool(!negated)));
            }
            (Some(_), Some(_)) => {}
            _ => saw_null = true,
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
    // A strict operator: every operand is evaluated before a NULL decides.
    let subject = eval_text(expr, row)?;
    let pat = match compiled {
        Some(_) => None,
        None => Some(eval_text(pattern, row)?),
    };
    let esc = match (compiled, escape) {
        (None, Some(e)) => Some(eval_text(e, row)?),
        _ => None,
    };
    let Some(subject) = subject else {
        return Ok(None);
    };
    let built;
    let matcher = match compiled {
        Some(p) => p,
        None => {
            let Some(Some(pat)) = pat else {
                return Ok(None);
            };
            let esc = match (escape, esc) {
                (None, _) => Some('\\'),
                (Some(_), Some(Some(e))) => escape_char(&e).map_err(|r| fail(node, r))?,
                (Some(_), _) => return Ok(None),
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
    if let Some(r) = datetime_arith(node, op, &a, &b) {
        return r;
    }
    match (a, b) {
        (Value::Int(x), Value::Int(y))
            if matches!(op, ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor) =>
        {
            Ok(Value::Int(match op {
                ArithOp::BitAnd => x & y,
                ArithOp::BitOr => x | y,
                _ => x ^ y,
            }))
        }
        (Value::Float(x), Value::Float(y)) if op == ArithOp::Pow => {
            pow(x, y).map(Value::Float).map_err(|r| fail(node, r))
        }
        (Value::Numeric(x), Value::Numeric(y)) if op == ArithOp::Pow => x
            .pow(&y)
            .map(Value::Numeric)
            .map_err(|e| fail(node, numeric_op_error(e))),
        (Value::Int(x), Value::Int(y)) => {
            let r = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Div if y == 0 => return Err(fail(node, "division by zero".into())),
                // Integer division truncates toward zero, as in Postgres.
                ArithOp::Div => x.checked_div(y),
                _ => return Err(internal(node)),
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
                _ => return Err(internal(node)),
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
                _ => return Err(internal(node)),
            };
            r.map(Value::Numeric)
                .map_err(|e| fail(node, numeric_op_error(e)))
        }
        _ => Err(internal(node)),
    }
}

/// `dpow`: Postgres's errors for results that are complex, undefined or out of range.
fn pow(x: f64, y: f64) -> Result<f64, String> {
    if x.is_nan() {
        return Ok(if y == 0.0 { 1.0 } else { f64::NAN });
    }
    if y.is_nan() {
        return Ok(if x == 1.0 { 1.0 } else { f64::NAN });
    }
    if x == 0.0 && y < 0.0 {
        return Err("zero raised to a negative power is undefined".into());
    }
    if x < 0.0 && y.is_finite() && y.fract() != 0.0 {
        return Err(
            "a negative number raised to a non-integer power yields a complex result".into(),
        );
    }
    let r = x.powf(y);
    if r.is_infinite() && x.is_finite() && y.is_finite() {
        return Err("value out of range: overflow".into());
    }
    if r == 0.0 && x != 0.0 && x.is_finite() && y.is_finite() {
        return Err("value out of range: underflow".into());
    }
    Ok(r)
}

const DATE_OUT_OF_RANGE: &str = "date out of range";
const TIMESTAMP_OUT_OF_RANGE: &str = "timestamp out of range";

/// Date, timestamp and interval arithmetic; None when the operands are not of those types.
fn datetime_arith(
    node: &Node,
    op: ArithOp,
    a: &Value,
    b: &Value,
) -> Option<Result<Value, WhereError>> {
    let sub = op == ArithOp::Sub;
    let r = match (a, b) {
        (Value::Date(d), Value::Int(n)) => date_plus_days(*d, if sub { -*n } else { *n }),
        (Value::Int(n), Value::Date(d)) => date_plus_days(*d, *n),
        (Value::Date(x), Value::Date(y)) => {
            if datetime::date_is_infinite(*x) || datetime::date_is_infinite(*y) {
                Err("cannot subtract infinite dates".to_string())
            } else {
                Ok(Value::Int(i64::from(*x) - i64::from(*y)))
            }
        }
        (Value::Timestamp(t), Value::Interval(i)) => {
            // `timestamp_mi_interval` negates each field unchecked (INT_MIN stays INT_MIN).
            let i = if sub {
                Interval {
                    months: i.months.wrapping_neg(),
                    days: i.days.wrapping_neg(),
                    micros: i.micros.wrapping_neg(),
                }
            } else {
                *i
            };
            timestamp_plus(*t, &i)
        }
        (Value::Interval(i), Value::Timestamp(t)) => timestamp_plus(*t, i),
        (Value::Timestamp(x), Value::Timestamp(y)) => timestamp_minus(*x, *y),
        (Value::Interval(x), Value::Interval(y)) => {
            if sub { x.sub(y) } else { x.add(y) }.map(Value::Interval)
        }
        (Value::Interval(i), Value::Float(f)) | (Value::Float(f), Value::Interval(i))
            if matches!(op, ArithOp::Mul | ArithOp::Div) =>
        {
            interval::scale(i, *f, op == ArithOp::Div).map(Value::Interval)
        }
        _ => return None,
    };
    Some(r.map_err(|r| fail(node, r)))
}

fn date_plus_days(d: i32, n: i64) -> Result<Value, String> {
    if datetime::date_is_infinite(d) {
        return Ok(Value::Date(d));
    }
    let r = i64::from(d) + n;
    match i32::try_from(r) {
        Ok(r) if datetime::date_in_range(r) => Ok(Value::Date(r)),
        _ => Err(DATE_OUT_OF_RANGE.into()),
    }
}

/// `timestamp_pl_interval`: months first (clamping the day to the month's length), then days,
/// then the time; infinite timestamps stay infinite.
fn timestamp_plus(t: i64, i: &Interval) -> Result<Value, String> {
    if datetime::timestamp_is_infinite(t) {
        return Ok(Value::Timestamp(t));
    }
    let mut t = t;
    if i.months != 0 {
        let days = t.div_euclid(datetime::USECS_PER_DAY);
        let time = t.rem_euclid(datetime::USECS_PER_DAY);
        let (y, m, d) = datetime::civil_from_days(days);
        let total = y * 12 + (m - 1) + i64::from(i.months);
        let (y, m) = (total.div_euclid(12), total.rem_euclid(12) + 1);
        let d = d.min(datetime::days_in_month(y, m));
        t = datetime::days_from_civil(y, m, d)
            .checked_mul(datetime::USECS_PER_DAY)
            .and_then(|v| v.checked_add(time))
            .ok_or(TIMESTAMP_OUT_OF_RANGE)?;
    }
    let t = i64::from(i.days)
        .checked_mul(datetime::USECS_PER_DAY)
        .and_then(|d| t.checked_add(d))
        .and_then(|v| v.checked_add(i.micros))
        .filter(|v| datetime::timestamp_in_range(*v))
        .ok_or(TIMESTAMP_OUT_OF_RANGE)?;
    Ok(Value::Timestamp(t))
}

/// `timestamp_mi`: the difference in days and time (never months), 24-hour periods as days.
fn timestamp_minus(x: i64, y: i64) -> Result<Value, String> {
    if datetime::timestamp_is_infinite(x) || datetime::timestamp_is_infinite(y) {
        return Err("cannot subtract infinite timestamps".into());
    }
    let micros = x.checked_sub(y).ok_or(interval::OUT_OF_RANGE)?;
    interval::justify_hours(&Interval {
        months: 0,
        days: 0,
        micros,
    })
    .map(Value::Interval)
}
