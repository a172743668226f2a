//! Type checking: sqlparser's `Expr` to the typed `Node` tree, following Postgres's rules for
//! literal types, operator resolution and implicit casts closely enough that the snapshot
//! query and the in-process evaluator agree.

use sqlparser::ast::{
    AccessExpr, Array as SqlArray, BinaryOperator, CastKind, DataType, Expr, Function, FunctionArg,
    FunctionArgExpr, FunctionArguments, Ident, InTarget, Interval as SqlInterval, ObjectNamePart,
    Query, SetExpr, Subscript, TypedString, UnaryOperator, Value as SqlValue,
};
use sqlparser::tokenizer::Location;

use super::WhereError;
use super::array::Containment;
use super::eval;
use super::ir::{ArithOp, Call, CmpOp, Func, Kind, Node, Sub, Truth, UnaryOp};
use super::like::{DANGLING_ESCAPE, LikePattern, escape_char};
use super::numeric::Numeric;
use super::types::{
    CastTarget, SqlType, arithmetic_type, cast_target, common_type, comparison_type,
    explicit_cast_exists, implicit_cast_exists,
};
use super::value::{self, Value};
use super::zone;
use crate::schema::ColumnSchema;

/// Nesting allowed below the flattened AND/OR lists. sqlparser bounds parenthesised nesting
/// but builds left-deep trees for chains like `a + b + c + ...`; this bounds those too, so
/// every recursive walk over a `Node` stays shallow.
const MAX_DEPTH: usize = 100;

#[derive(Clone, Copy)]
enum BoolOp {
    And,
    Or,
}

const OVERLOAD: &str = "Could not select an operator overload";

pub(crate) struct Compiler<'a> {
    sql: &'a str,
    columns: &'a [ColumnSchema],
    params: &'a [String],
    depth: usize,
    /// Above zero while compiling operands Postgres's planner never simplifies (those after a
    /// deciding constant in AND/OR, after a non-NULL constant in COALESCE): a constant there
    /// that fails is left for evaluation instead of being an error now.
    lenient: usize,
    /// Whether a literal read as an enum must be one of the labels the schema lists.
    check_labels: bool,
}

impl<'a> Compiler<'a> {
    pub(crate) fn new(
        sql: &'a str,
        columns: &'a [ColumnSchema],
        params: &'a [String],
        check_labels: bool,
    ) -> Self {
        Compiler {
            sql,
            columns,
            params,
            depth: 0,
            lenient: 0,
            check_labels,
        }
    }

    /// Type-check the whole clause, which must be boolean.
    pub(crate) fn compile_root(&mut self, expr: &Expr) -> Result<Node, WhereError> {
        let node = self.expr(expr)?;
        match node.ty {
            SqlType::Bool => Ok(node),
            // A bare literal or parameter is read as a boolean, as Postgres does.
            SqlType::Unknown => self.coerce(node, SqlType::Bool),
            _ => Err(WhereError::new(
                node.loc,
                "WHERE clause must return a boolean",
            )),
        }
    }

    /// Postgres computes constant subexpressions while planning, so one that fails fails the
    /// whole query, even where evaluation would have skipped it; so does the clause here.
    fn fold(&self, node: Node) -> Result<Node, WhereError> {
        match fold_constant(node) {
            (node, None) => Ok(node),
            (node, Some(_)) if self.lenient > 0 => Ok(node),
            (_, Some(e)) => Err(e),
        }
    }

    fn offset(&self, loc: Location) -> usize {
        super::byte_offset(self.sql, loc)
    }

    fn expr(&mut self, e: &Expr) -> Result<Node, WhereError> {
        if self.depth >= MAX_DEPTH {
            return Err(WhereError::new(
                self.offset(start_of(e)),
                "expression is too deeply nested",
            ));
        }
        self.depth += 1;
        let out = self.expr_inner(e);
        self.depth -= 1;
        out.and_then(|n| self.fold(n))
    }

    /// Dispatch only: each construct is handled in its own function so this frame, which
    /// every level of nesting pays for, stays small (debug builds do not share stack slots
    /// between match arms).
    fn expr_inner(&mut self, e: &Expr) -> Result<Node, WhereError> {
        match e {
            Expr::Identifier(ident) => self.column(ident),
            Expr::CompoundIdentifier(parts) => Err(self.compound_identifier(parts)),
            Expr::Nested(inner) => self.expr(inner),
            Expr::Value(v) => self.literal(&v.value, self.offset(v.span.start), false),
            Expr::TypedString(ts) => self.typed_string(ts),
            Expr::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => self.cast_expr(expr, data_type),
            Expr::UnaryOp { op, expr } => self.unary(*op, expr),
            Expr::BinaryOp { left, op, right } => self.binary(e, left, op, right),
            Expr::IsNull(inner) => self.is_null(inner, false),
            Expr::IsNotNull(inner) => self.is_null(inner, true),
            Expr::IsTrue(inner) => self.is_truth(inner, Truth::True, false),
            Expr::IsNotTrue(inner) => self.is_truth(inner, Truth::True, true),
            Expr::IsFalse(inner) => self.is_truth(inner, Truth::False, false),
            Expr::IsNotFalse(inner) => self.is_truth(inner, Truth::False, true),
            Expr::IsUnknown(inner) => self.is_truth(inner, Truth::Unknown, false),
            Expr::IsNotUnknown(inner) => self.is_truth(inner, Truth::Unknown, true),
            Expr::IsDistinctFrom(l, r) => self.distinct(l, r, false),
            Expr::IsNotDistinctFrom(l, r) => self.distinct(l, r, true),
            Expr::In {
                expr,
                target: InTarget::List(list),
                negated,
                global: false,
            } => self.in_list(expr, list, *negated),
            Expr::In {
                target: InTarget::Subquery(q),
                ..
            }
            | Expr::Subquery(q)
            | Expr::Exists { subquery: q, .. } => Err(self.subquery(q)),
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            } => self.any_all(left, compare_op, right, false),
            Expr::AllOp {
                left,
                compare_op,
                right,
            } => self.any_all(left, compare_op, right, true),
            Expr::Array(arr) => self.array_ctor(arr),
            Expr::CompoundFieldAccess { root, access_chain } => {
                self.subscript(e, root, access_chain)
            }
            Expr::Interval(iv) => self.interval_literal(e, iv),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => self.between(expr, low, high, *negated),
            Expr::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            } => self.like(expr, pattern, escape_char.as_deref(), false, *negated),
            Expr::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            } => self.like(expr, pattern, escape_char.as_deref(), true, *negated),
            Expr::Function(f) => self.function(f),
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => self.at_time_zone(timestamp, time_zone),
            other => Err(self.unsupported(other)),
        }
    }

    #[inline(never)]
    fn unsupported(&self, e: &Expr) -> WhereError {
        WhereError::new(
            self.offset(start_of(e)),
            format!("{} is not supported in this context", node_name(e)),
        )
    }

    #[inline(never)]
    fn compound_identifier(&self, parts: &[Ident]) -> WhereError {
        let name = parts.iter().map(fold_ident).collect::<Vec<_>>().join(".");
        let loc = parts.first().map_or(0, |p| self.offset(p.span.start));
        WhereError::new(loc, format!("unknown reference {name}"))
    }

    fn typed_string(&self, ts: &TypedString) -> Result<Node, WhereError> {
        let loc = self.offset(ts.value.span.start);
        let target = cast_target(&ts.data_type).map_err(|r| WhereError::new(loc, r))?;
        let Some(text) = string_literal(&ts.value.value) else {
            return Err(WhereError::new(loc, "typed literal must be a string"));
        };
        let node = Node::new(Kind::Untyped(Some(text)), SqlType::Unknown, loc);
        self.explicit_cast(node, target, loc)
    }

    fn is_null(&mut self, inner: &Expr, negated: bool) -> Result<Node, WhereError> {
        let node = self.expr(inner)?;
        let node = self.settle(node)?;
        let loc = node.loc;
        Ok(Node::new(
            Kind::IsNull {
                expr: Box::new(node),
                negated,
            },
            SqlType::Bool,
            loc,
        ))
    }

    fn distinct(&mut self, l: &Expr, r: &Expr, negated: bool) -> Result<Node, WhereError> {
        let left = self.expr(l)?;
        let right = self.expr(r)?;
        let loc = left.loc;
        let (cmp_type, left, right) = if is_date_vs_timestamp(left.ty, right.ty) {
            let cmp_type =
                comparison_type(left.ty, right.ty).ok_or_else(|| WhereError::new(loc, OVERLOAD))?;
            let left = self.comparison_operand(left, cmp_type)?;
            let right = self.comparison_operand(right, cmp_type)?;
            (cmp_type, left, right)
        } else {
            let (cmp_type, mut ops) = self.unify_with(vec![left, right], loc, comparison_type)?;
            let right = pop(&mut ops, loc)?;
            let left = pop(&mut ops, loc)?;
            (cmp_type, left, right)
        };
        Ok(Node::new(
            Kind::Distinct {
                left: Box::new(left),
                right: Box::new(right),
                negated,
                cmp_type,
            },
            SqlType::Bool,
            loc,
        ))
    }

    /// Postgres's `transformAExprIn`: items without column references, when there are two or
    /// more, become one `x = ANY (ARRAY[...])` in their common type with `x`; every other item
    /// is its own `x = item`, in order, all OR-ed (`<>` and AND for NOT IN). The planner then
    /// folds that list like any other, which decides evaluation order and errors.
    fn in_list(&mut self, expr: &Expr, list: &[Expr], negated: bool) -> Result<Node, WhereError> {
        let needle = self.expr(expr)?;
        let loc = needle.loc;
        let mut items = Vec::with_capacity(list.len());
        for item in list {
            items.push(self.expr(item)?);
        }
        let references_columns = |n: &Node| {
            let mut cols = Vec::new();
            n.collect_columns(&mut cols);
            !cols.is_empty()
        };
        let constant_items = items.iter().filter(|n| !references_columns(n)).count();
        // Too few for an array: every item, in the order written, is compared alone.
        let (consts, vars): (Vec<Node>, Vec<Node>) = if constant_items > 1 {
            items.into_iter().partition(|n| !references_columns(n))
        } else {
            (Vec::new(), items)
        };
        let mut parts = Vec::new();
        if !consts.is_empty() {
            let mut nodes = Vec::with_capacity(consts.len() + 1);
            nodes.push(needle.clone());
            nodes.extend(consts);
            let (cmp_type, mut nodes) = self.unify(nodes, loc)?;
            let list = nodes.split_off(1);
            let expr = pop(&mut nodes, loc)?;
            let node = fold_null_args(Node::new(
                Kind::In {
                    expr: Box::new(expr),
                    list,
                    negated,
                    cmp_type,
                },
                SqlType::Bool,
                loc,
            ));
            parts.push(self.fold(node)?);
        }
        let op = if negated { CmpOp::NotEq } else { CmpOp::Eq };
        for item in vars {
            let cmp = self.make_compare(needle.clone(), op, item)?;
            parts.push(self.fold(cmp)?);
        }
        let which = if negated { BoolOp::And } else { BoolOp::Or };
        Ok(fold_bool_list(parts, which, loc))
    }

    /// Postgres rewrites `x BETWEEN a AND b` to `x >= a AND x <= b` (and NOT BETWEEN to
    /// `x < a OR x > b`), resolving each comparison on its own; so does this.
    fn between(
        &mut self,
        expr: &Expr,
        low: &Expr,
        high: &Expr,
        negated: bool,
    ) -> Result<Node, WhereError> {
        let x = self.expr(expr)?;
        let low = self.expr(low)?;
        let high = self.expr(high)?;
        let loc = x.loc;
        let (op_low, op_high, which) = if negated {
            (CmpOp::Lt, CmpOp::Gt, BoolOp::Or)
        } else {
            (CmpOp::GtEq, CmpOp::LtEq, BoolOp::And)
        };
        let above = self.make_compare(x.clone(), op_low, low)?;
        let above = self.fold(above)?;
        let below = self.make_compare(x, op_high, high)?;
        let below = self.fold(below)?;
        Ok(fold_bool_list(vec![above, below], which, loc))
    }

    fn column(&self, ident: &Ident) -> Result<Node, WhereError> {
        let name = fold_ident(ident);
        let loc = self.offset(ident.span.start);
        let Some(index) = self.columns.iter().position(|c| c.name == name) else {
            return Err(WhereError::new(loc, format!("unknown reference {name}")));
        };
        let col = &self.columns[index];
        let ty = match &col.enum_labels {
            Some(_) if col.dims == 0 => SqlType::Enum(col.type_oid),
            _ => SqlType::from_column(&col.typname, col.dims),
        };
        Ok(Node::new(Kind::Column { index, name }, ty, loc))
    }

    fn literal(&self, v: &SqlValue, loc: usize, negate: bool) -> Result<Node, WhereError> {
        if let SqlValue::Number(text, _) = v {
            let text = if negate {
                format!("-{text}")
            } else {
                text.clone()
            };
            return number_literal(&text, loc);
        }
        if negate {
            return Err(WhereError::new(loc, OVERLOAD));
        }
        match v {
            SqlValue::Boolean(b) => Ok(Node::new(
                Kind::Const(Some(Value::Bool(*b))),
                SqlType::Bool,
                loc,
            )),
            SqlValue::Null => Ok(Node::new(Kind::Untyped(None), SqlType::Unknown, loc)),
            SqlValue::Placeholder(p) => self.param(p, loc),
            other => match string_literal(other) {
                Some(s) => Ok(Node::new(Kind::Untyped(Some(s)), SqlType::Unknown, loc)),
                None => Err(WhereError::new(
                    loc,
                    format!("literal {other} is not supported in this context"),
                )),
            },
        }
    }

    fn param(&self, placeholder: &str, loc: usize) -> Result<Node, WhereError> {
        let n = placeholder
            .strip_prefix('$')
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or_else(|| {
                WhereError::new(
                    loc,
                    format!("parameter {placeholder} is not supported in this context"),
                )
            })?;
        match n.checked_sub(1).and_then(|i| self.params.get(i)) {
            Some(value) => Ok(Node::new(
                Kind::Untyped(Some(value.clone())),
                SqlType::Unknown,
                loc,
            )),
            None => Err(WhereError::new(
                loc,
                format!("parameter ${n} was not provided"),
            )),
        }
    }

    fn cast_expr(&mut self, inner: &Expr, data_type: &DataType) -> Result<Node, WhereError> {
        // `ARRAY[]` has no type of its own; only a cast right on it gives it one.
        if let Expr::Array(SqlArray { elem, named: true }) = inner
            && elem.is_empty()
        {
            let loc = self.offset(start_of(inner));
            let target = cast_target(data_type).map_err(|r| WhereError::new(loc, r))?;
            if target.ty.is_array() {
                let empty = Value::Array(Box::new(super::array::Array {
                    dims: Vec::new(),
                    items: Vec::new(),
                }));
                return Ok(Node::new(Kind::Const(Some(empty)), target.ty, loc));
            }
        }
        let node = self.expr(inner)?;
        let loc = node.loc;
        let target = cast_target(data_type).map_err(|r| WhereError::new(loc, r))?;
        self.explicit_cast(node, target, loc)
    }

    fn type_label(&self, node: &Node) -> String {
        match (&node.kind, node.ty) {
            (Kind::Column { index, .. }, SqlType::Other | SqlType::Enum(_)) => self
                .columns
                .get(*index)
                .map_or_else(|| "unknown".into(), |c| c.typname.clone()),
            (_, ty) => ty.name().to_string(),
        }
    }

    fn explicit_cast(
        &self,
        node: Node,
        target: CastTarget,
        loc: usize,
    ) -> Result<Node, WhereError> {
        if let Kind::Untyped(text) = &node.kind {
            // A literal's text goes straight to the target type's input function.
            let value = match text {
                None => None,
                Some(t) => value::parse_input(target.ty, t)
                    .and_then(|v| value::cast(v, target.ty, target))
                    .map_err(|r| WhereError::new(node.loc, r))?,
            };
            return Ok(Node::new(Kind::Const(value), target.ty, loc));
        }
        if !explicit_cast_exists(node.ty, target.ty) {
            return Err(WhereError::new(
                loc,
                format!(
                    "cannot cast type {} to {}",
                    self.type_label(&node),
                    target.sql_name()
                ),
            ));
        }
        self.make_cast(node, target, loc)
    }

    /// A cast node, folded right away when its operand is a constant.
    fn make_cast(&self, node: Node, target: CastTarget, loc: usize) -> Result<Node, WhereError> {
        // A NULL folds whatever the cast: it is strict, which the planner honours even for
        // the casts it otherwise leaves to execution.
        if let Kind::Const(v) = &node.kind
            && (v.is_none() || !stable_cast(node.ty, target.ty))
        {
            let folded = match v {
                None => None,
                Some(v) => value::cast(v.clone(), node.ty, target)
                    .map_err(|r| WhereError::new(node.loc, r))?,
            };
            return Ok(Node::new(Kind::Const(folded), target.ty, loc));
        }
        Ok(Node::new(
            Kind::Cast {
                expr: Box::new(node),
                target,
            },
            target.ty,
            loc,
        ))
    }

    /// Bring `node` to type `to` the way Postgres applies an implicit cast.
    fn coerce(&self, node: Node, to: SqlType) -> Result<Node, WhereError> {
        let from = node.ty;
        if from == to {
            return Ok(node);
        }
        if let Kind::Untyped(text) = &node.kind {
            if let (SqlType::Enum(oid), Some(t)) = (to, text) {
                self.check_enum_label(oid, t, node.loc)?;
            }
            let value = match text {
                None => None,
                Some(t) => {
                    Some(value::parse_input(to, t).map_err(|r| WhereError::new(node.loc, r))?)
                }
            };
            return Ok(Node::new(Kind::Const(value), to, node.loc));
        }
        if !implicit_cast_exists(from, to) {
            return Err(WhereError::new(node.loc, OVERLOAD));
        }
        // A constant timestamp read as timestamptz keeps its cast: that cast is STABLE, so the
        // planner does not fold what uses it, and neither may this.
        let stable_const = matches!(node.kind, Kind::Const(Some(_))) && stable_cast(from, to);
        if same_representation(from, to) && !stable_const {
            return Ok(node);
        }
        let loc = node.loc;
        self.make_cast(node, CastTarget::plain(to), loc)
    }

    /// A literal read as a value of enum type `oid` must be one of its labels, as `enum_in`
    /// checks; checking here makes a bad label a 400 rather than a failed snapshot query.
    fn check_enum_label(&self, oid: u32, label: &str, loc: usize) -> Result<(), WhereError> {
        let Some(col) = self
            .columns
            .iter()
            .find(|c| c.type_oid == oid && c.enum_labels.is_some())
        else {
            return Err(WhereError::new(loc, OVERLOAD));
        };
        if !self.check_labels || col.enum_labels.iter().flatten().any(|l| l == label) {
            return Ok(());
        }
        Err(WhereError::new(
            loc,
            format!("invalid input value for enum {}: \"{label}\"", col.typname),
        ))
    }

    /// An operand of a comparison operator brought to the type it compares in; a date
    /// compared with a timestamp stays a date for Postgres's cross-type operators.
    fn comparison_operand(&self, node: Node, cmp_type: SqlType) -> Result<Node, WhereError> {
        if node.ty != SqlType::Date
            || !matches!(cmp_type, SqlType::Timestamp | SqlType::Timestamptz)
        {
            return self.coerce(node, cmp_type);
        }
        let loc = node.loc;
        if let Kind::Const(None) = node.kind {
            return Ok(Node::new(Kind::Const(None), cmp_type, loc));
        }
        Ok(Node::new(
            Kind::DateAsTimestamp(Box::new(node)),
            cmp_type,
            loc,
        ))
    }

    /// Untyped literals left where nothing gives them a type become text, as in Postgres.
    fn settle(&self, node: Node) -> Result<Node, WhereError> {
        if node.ty == SqlType::Unknown {
            self.coerce(node, SqlType::Text)
        } else {
            Ok(node)
        }
    }

    fn boolean(&self, node: Node, what: &str) -> Result<Node, WhereError> {
        match node.ty {
            SqlType::Bool => Ok(node),
            SqlType::Unknown => self.coerce(node, SqlType::Bool),
            _ => Err(WhereError::new(
                node.loc,
                format!(
                    "argument of {what} must be type bool, not type {}",
                    self.type_label(&node)
                ),
            )),
        }
    }

    /// Pick the common type of comparison operands (Postgres's `select_common_type`:
    /// untyped literals take the type of the others, or text) and coerce them all to it.
    fn unify(&self, nodes: Vec<Node>, loc: usize) -> Result<(SqlType, Vec<Node>), WhereError> {
        self.unify_with(nodes, loc, common_type)
    }

    /// `unify` with the rule for a pair of types: `common_type` for value lists (IN, ARRAY,
    /// COALESCE, GREATEST), `comparison_type` for an operator's two operands.
    fn unify_with(
        &self,
        nodes: Vec<Node>,
        loc: usize,
        pick: fn(SqlType, SqlType) -> Option<SqlType>,
    ) -> Result<(SqlType, Vec<Node>), WhereError> {
        let mut common: Option<SqlType> = None;
        for n in nodes.iter().filter(|n| n.ty != SqlType::Unknown) {
            common = match common {
                None if n.ty == SqlType::Other => {
                    return Err(WhereError::new(n.loc, OVERLOAD));
                }
                None => Some(n.ty),
                Some(c) => Some(pick(c, n.ty).ok_or_else(|| WhereError::new(loc, OVERLOAD))?),
            };
        }
        let common = common.unwrap_or(SqlType::Text);
        let coerced = nodes
            .into_iter()
            .map(|n| self.coerce(n, common))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((common, coerced))
    }

    fn unary(&mut self, op: UnaryOperator, inner: &Expr) -> Result<Node, WhereError> {
        match op {
            UnaryOperator::Not => {
                let node = self.expr(inner)?;
                let loc = node.loc;
                let node = self.boolean(node, "NOT")?;
                Ok(fold_null_args(Node::new(
                    Kind::Not(Box::new(node)),
                    SqlType::Bool,
                    loc,
                )))
            }
            UnaryOperator::Minus | UnaryOperator::Plus => {
                // Postgres binds a sign tighter than `^` (`-2 ^ 2` is 4); sqlparser the other
                // way round, so the sign moves onto the base.
                if let Expr::BinaryOp {
                    left,
                    op: BinaryOperator::PGExp,
                    right,
                } = inner
                {
                    let signed = Expr::UnaryOp {
                        op,
                        expr: left.clone(),
                    };
                    return self.arith(&signed, ArithOp::Pow, right);
                }
                // Postgres folds a minus sign into a numeric literal, so `-2147483648` is int4.
                if let Expr::Value(v) = inner
                    && matches!(v.value, SqlValue::Number(..))
                {
                    let loc = self.offset(v.span.start).saturating_sub(1);
                    return self.literal(&v.value, loc, op == UnaryOperator::Minus);
                }
                let node = self.expr(inner)?;
                if !node.ty.is_number() {
                    return Err(WhereError::new(node.loc, OVERLOAD));
                }
                if op == UnaryOperator::Plus {
                    return Ok(node);
                }
                let (ty, loc) = (node.ty, node.loc);
                Ok(fold_null_args(Node::new(
                    Kind::Neg(Box::new(node)),
                    ty,
                    loc,
                )))
            }
            UnaryOperator::PGSquareRoot => self.prefix(inner, UnaryOp::Sqrt),
            UnaryOperator::PGCubeRoot => self.prefix(inner, UnaryOp::Cbrt),
            UnaryOperator::PGAbs => self.prefix(inner, UnaryOp::Abs),
            UnaryOperator::BitwiseNot => self.prefix(inner, UnaryOp::BitNot),
            other => Err(WhereError::new(
                self.offset(start_of(inner)),
                format!("unknown or unsupported operator {other}"),
            )),
        }
    }

    /// Flatten a left-deep chain of one boolean operator into a single list, iteratively,
    /// so long `a OR b OR c ...` clauses do not nest.
    fn bool_chain(
        &mut self,
        e: &Expr,
        op: &BinaryOperator,
        which: BoolOp,
    ) -> Result<Node, WhereError> {
        let mut rights = Vec::new();
        let mut cur = e;
        while let Expr::BinaryOp {
            left,
            op: cur_op,
            right,
        } = cur
        {
            if cur_op != op {
                break;
            }
            rights.push(right.as_ref());
            cur = left.as_ref();
        }
        let what = match which {
            BoolOp::And => "AND",
            BoolOp::Or => "OR",
        };
        let mut items = Vec::with_capacity(rights.len() + 1);
        let decisive = matches!(which, BoolOp::Or);
        let lenient_before = self.lenient;
        for operand in std::iter::once(cur).chain(rights.into_iter().rev()) {
            let node = self.expr(operand);
            let node = node.and_then(|n| self.boolean(n, what));
            let node = match node {
                Ok(node) => node,
                Err(e) => {
                    self.lenient = lenient_before;
                    return Err(e);
                }
            };
            // The planner stops simplifying at a deciding constant.
            if matches!(node.kind, Kind::Const(Some(Value::Bool(b))) if b == decisive) {
                self.lenient = lenient_before + 1;
            }
            // Nested lists of the same operator (from parentheses) merge into this one.
            match (node.kind, which) {
                (Kind::And(inner), BoolOp::And) | (Kind::Or(inner), BoolOp::Or) => {
                    items.extend(inner)
                }
                (kind, _) => items.push(Node::new(kind, node.ty, node.loc)),
            }
        }
        self.lenient = lenient_before;
        let loc = items.first().map_or(0, |n| n.loc);
        Ok(fold_bool_list(items, which, loc))
    }

    fn binary(
        &mut self,
        whole: &Expr,
        l: &Expr,
        op: &BinaryOperator,
        r: &Expr,
    ) -> Result<Node, WhereError> {
        match op {
            BinaryOperator::And => self.bool_chain(whole, op, BoolOp::And),
            BinaryOperator::Or => self.bool_chain(whole, op, BoolOp::Or),
            BinaryOperator::Eq => self.compare(l, CmpOp::Eq, r),
            BinaryOperator::NotEq => self.compare(l, CmpOp::NotEq, r),
            BinaryOperator::Lt => self.compare(l, CmpOp::Lt, r),
            BinaryOperator::LtEq => self.compare(l, CmpOp::LtEq, r),
            BinaryOperator::Gt => self.compare(l, CmpOp::Gt, r),
            BinaryOperator::GtEq => self.compare(l, CmpOp::GtEq, r),
            BinaryOperator::Plus => self.arith(l, ArithOp::Add, r),
            BinaryOperator::Minus => self.arith(l, ArithOp::Sub, r),
            BinaryOperator::Multiply => self.arith(l, ArithOp::Mul, r),
            BinaryOperator::Divide => self.arith(l, ArithOp::Div, r),
            BinaryOperator::StringConcat => self.concat(l, r),
            BinaryOperator::AtArrow => self.contain(l, Containment::Contains, r),
            BinaryOperator::ArrowAt => self.contain(l, Containment::ContainedBy, r),
            BinaryOperator::PGOverlap => self.contain(l, Containment::Overlaps, r),
            BinaryOperator::PGExp => self.arith(l, ArithOp::Pow, r),
            BinaryOperator::BitwiseAnd => self.arith(l, ArithOp::BitAnd, r),
            BinaryOperator::BitwiseOr => self.arith(l, ArithOp::BitOr, r),
            BinaryOperator::PGBitwiseXor => self.arith(l, ArithOp::BitXor, r),
            BinaryOperator::PGLikeMatch => self.like(l, r, None, false, false),
            BinaryOperator::PGNotLikeMatch => self.like(l, r, None, false, true),
            BinaryOperator::PGILikeMatch => self.like(l, r, None, true, false),
            BinaryOperator::PGNotILikeMatch => self.like(l, r, None, true, true),
            other => Err(self.unsupported_operator(l, other)),
        }
    }

    #[inline(never)]
    fn unsupported_operator(&mut self, l: &Expr, op: &BinaryOperator) -> WhereError {
        let loc = match self.expr(l) {
            Ok(node) => node.loc,
            Err(e) => return e,
        };
        WhereError::new(loc, format!("unknown or unsupported operator {op}"))
    }

    fn compare(&mut self, l: &Expr, op: CmpOp, r: &Expr) -> Result<Node, WhereError> {
        let left = self.expr(l)?;
        let right = self.expr(r)?;
        self.make_compare(left, op, right)
    }

    fn make_compare(&self, left: Node, op: CmpOp, right: Node) -> Result<Node, WhereError> {
        let loc = left.loc;
        let cmp_type =
            comparison_type(left.ty, right.ty).ok_or_else(|| WhereError::new(loc, OVERLOAD))?;
        if matches!(cmp_type, SqlType::Enum(_)) && !op.is_equality() {
            return Err(enum_order_error(loc));
        }
        let left = self.comparison_operand(left, cmp_type)?;
        let right = self.comparison_operand(right, cmp_type)?;
        Ok(fold_null_args(Node::new(
            Kind::Compare {
                op,
                left: Box::new(left),
                right: Box::new(right),
                cmp_type,
            },
            SqlType::Bool,
            loc,
        )))
    }

    fn arith(&mut self, l: &Expr, op: ArithOp, r: &Expr) -> Result<Node, WhereError> {
        let left = self.expr(l)?;
        let right = self.expr(r)?;
        let loc = left.loc;
        if let Some((lt, rt, ty)) = datetime_arith_types(op, left.ty, right.ty) {
            let left = self.coerce(left, lt)?;
            let right = self.coerce(right, rt)?;
            return Ok(fold_null_args(Node::new(
                Kind::Arith {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                },
                ty,
                loc,
            )));
        }
        let ty = match op {
            ArithOp::Add | ArithOp::Sub | ArithOp::Mul | ArithOp::Div => {
                arithmetic_type(left.ty, right.ty)
            }
            ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor => {
                arithmetic_type(left.ty, right.ty).filter(|t| t.is_int())
            }
            ArithOp::Pow => match arithmetic_type(left.ty, right.ty) {
                Some(SqlType::Numeric) => {
                    return self.numeric_power(left, right, loc);
                }
                Some(_) => Some(SqlType::Float8),
                None => None,
            },
        };
        let ty = ty.ok_or_else(|| WhereError::new(loc, OVERLOAD))?;
        let left = self.coerce(left, ty)?;
        let right = self.coerce(right, ty)?;
        Ok(fold_null_args(Node::new(
            Kind::Arith {
                op,
                left: Box::new(left),
                right: Box::new(right),
            },
            ty,
            loc,
        )))
    }

    /// `numeric ^ numeric`. Postgres computes an integer power by multiplication and any
    /// other through logarithms, which volt does not: the exponent must be an integer column
    /// (int2, int4) or a constant integer.
    fn numeric_power(&self, left: Node, right: Node, loc: usize) -> Result<Node, WhereError> {
        let integer_column = matches!(right.ty, SqlType::Int2 | SqlType::Int4);
        let left = self.coerce(left, SqlType::Numeric)?;
        let right = self.coerce(right, SqlType::Numeric)?;
        let supported = integer_column
            || match &right.kind {
                Kind::Const(None) => true,
                Kind::Const(Some(Value::Numeric(n))) => n.is_int32_or_special(),
                _ => false,
            };
        if !supported {
            return Err(WhereError::new(
                right.loc,
                "numeric ^ is supported with an integer exponent (an int2/int4 value or an \
                 integer constant); cast the operands to float8 for others",
            ));
        }
        Ok(fold_null_args(Node::new(
            Kind::Arith {
                op: ArithOp::Pow,
                left: Box::new(left),
                right: Box::new(right),
            },
            SqlType::Numeric,
            loc,
        )))
    }

    /// Operands of text operators and functions: any string type or untyped literal, as text.
    fn text_operand(&self, node: Node) -> Result<Node, WhereError> {
        if node.ty.is_string() || node.ty == SqlType::Unknown {
            self.coerce(node, SqlType::Text)
        } else {
            Err(WhereError::new(node.loc, OVERLOAD))
        }
    }

    fn concat(&mut self, l: &Expr, r: &Expr) -> Result<Node, WhereError> {
        let left = self.expr(l)?;
        let right = self.expr(r)?;
        let loc = left.loc;
        if left.ty.is_array() || right.ty.is_array() {
            let func = match (left.ty.is_array(), right.ty) {
                (true, SqlType::Unknown) => Call::ArrayCat,
                (_, t) if t.is_array() && (left.ty.is_array() || left.ty == SqlType::Unknown) => {
                    Call::ArrayCat
                }
                (true, _) => Call::ArrayAppend,
                (false, _) => Call::ArrayPrepend,
            };
            return self.array_pair(func, left, right, loc);
        }
        let left = self.text_operand(left)?;
        let right = self.text_operand(right)?;
        Ok(fold_null_args(Node::new(
            Kind::Concat {
                left: Box::new(left),
                right: Box::new(right),
            },
            SqlType::Text,
            loc,
        )))
    }

    fn like(
        &mut self,
        expr: &Expr,
        pattern: &Expr,
        escape: Option<&Expr>,
        case_insensitive: bool,
        negated: bool,
    ) -> Result<Node, WhereError> {
        self.like_with(expr, pattern, escape, case_insensitive, negated, false)
    }

    /// `as_function`: `like(a, b)` takes text, so a bpchar subject loses its padding, unlike
    /// with the operator.
    fn like_with(
        &mut self,
        expr: &Expr,
        pattern: &Expr,
        escape: Option<&Expr>,
        case_insensitive: bool,
        negated: bool,
        as_function: bool,
    ) -> Result<Node, WhereError> {
        let subject = self.expr(expr)?;
        let loc = subject.loc;
        // bpchar keeps its padding here: trailing spaces count in pattern matching.
        let subject = if subject.ty.is_string() && !as_function {
            subject
        } else {
            self.text_operand(subject)?
        };
        let pattern = self.expr(pattern)?;
        let pattern = self.text_operand(pattern)?;
        let escape = match escape {
            Some(e) => {
                let node = self.expr(e)?;
                Some(Box::new(self.text_operand(node)?))
            }
            None => None,
        };
        // An operand of type name brings its "C" collation, which wins over the default.
        let c_collation = c_collated(&subject) || c_collated(&pattern);
        let fold = case_insensitive.then_some(c_collation);
        let compiled = self.precompile_like(&pattern, escape.as_deref(), fold)?;
        Ok(fold_null_args(Node::new(
            Kind::Like {
                expr: Box::new(subject),
                pattern: Box::new(pattern),
                escape,
                case_insensitive,
                negated,
                c_collation,
                compiled,
            },
            SqlType::Bool,
            loc,
        )))
    }

    /// `fold`: Some(c_collation) for ILIKE, whose pattern is matched in lower case.
    fn precompile_like(
        &self,
        pattern: &Node,
        escape: Option<&Node>,
        fold: Option<bool>,
    ) -> Result<Option<LikePattern>, WhereError> {
        let Kind::Const(Some(Value::Text(p))) = &pattern.kind else {
            return Ok(None);
        };
        let esc = match escape.map(|e| &e.kind) {
            None => Some('\\'),
            Some(Kind::Const(Some(Value::Text(e)))) => {
                escape_char(e).map_err(|r| WhereError::new(pattern.loc, r))?
            }
            Some(_) => return Ok(None),
        };
        let p = match fold {
            Some(c_collation) => value::change_case(p, false, c_collation),
            None => p.clone(),
        };
        let compiled = LikePattern::compile(&p, esc);
        // A constant pattern like that can never be useful, so say so now.
        if compiled.has_dangling_escape() {
            return Err(WhereError::new(pattern.loc, DANGLING_ESCAPE));
        }
        Ok(Some(compiled))
    }

    fn is_truth(&mut self, inner: &Expr, truth: Truth, negated: bool) -> Result<Node, WhereError> {
        let node = self.expr(inner)?;
        let loc = node.loc;
        let what = match truth {
            Truth::True => "IS TRUE",
            Truth::False => "IS FALSE",
            Truth::Unknown => "IS UNKNOWN",
        };
        let node = self.boolean(node, what)?;
        Ok(Node::new(
            Kind::IsTruth {
                expr: Box::new(node),
                truth,
                negated,
            },
            SqlType::Bool,
            loc,
        ))
    }

    fn function(&mut self, f: &Function) -> Result<Node, WhereError> {
        let loc = match f.name.0.first() {
            Some(ObjectNamePart::Identifier(i)) => self.offset(i.span.start),
            _ => 0,
        };
        let name = f
            .name
            .0
            .iter()
            .map(|part| match part {
                ObjectNamePart::Identifier(i) => fold_ident(i),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        let args = match &f.args {
            FunctionArguments::List(list)
                if list.duplicate_treatment.is_none() && list.clauses.is_empty() =>
            {
                list.args.as_slice()
            }
            FunctionArguments::None => &[],
            _ => {
                return Err(WhereError::new(
                    loc,
                    format!("unknown or unsupported function {name}"),
                ));
            }
        };
        let decorated = f.filter.is_some()
            || f.over.is_some()
            || !f.within_group.is_empty()
            || f.null_treatment.is_some()
            || !matches!(f.parameters, FunctionArguments::None);
        if !decorated && let Some(node) = self.known_call(&name, args, loc)? {
            return Ok(node);
        }
        let func = match (name.as_str(), args.len()) {
            ("lower", 1) => Some(Func::Lower),
            ("upper", 1) => Some(Func::Upper),
            _ => None,
        };
        let (Some(func), false) = (func, decorated) else {
            return Err(WhereError::new(
                loc,
                format!("unknown or unsupported function {name}/{}", args.len()),
            ));
        };
        let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = args else {
            return Err(WhereError::new(
                loc,
                format!("unknown or unsupported function {name}/{}", args.len()),
            ));
        };
        let arg = self.expr(arg)?;
        let arg = self.text_operand(arg)?;
        Ok(fold_null_args(Node::new(
            Kind::Func {
                func,
                c_collation: c_collated(&arg),
                arg: Box::new(arg),
            },
            SqlType::Text,
            loc,
        )))
    }
}

/// Arrays, subqueries, prefix operators and the functions of more than one argument.
impl Compiler<'_> {
    #[inline(never)]
    fn subquery(&self, q: &Query) -> WhereError {
        let loc = match q.body.as_ref() {
            SetExpr::Select(select) => self.offset(select.select_token.0.span.start),
            _ => 0,
        };
        WhereError::new(loc, "subqueries are not supported yet")
    }

    fn any_all(
        &mut self,
        l: &Expr,
        op: &BinaryOperator,
        r: &Expr,
        all: bool,
    ) -> Result<Node, WhereError> {
        if let Expr::Subquery(q) = r {
            return Err(self.subquery(q));
        }
        let cmp = match op {
            BinaryOperator::Eq => CmpOp::Eq,
            BinaryOperator::NotEq => CmpOp::NotEq,
            BinaryOperator::Lt => CmpOp::Lt,
            BinaryOperator::LtEq => CmpOp::LtEq,
            BinaryOperator::Gt => CmpOp::Gt,
            BinaryOperator::GtEq => CmpOp::GtEq,
            other => return Err(self.unsupported_operator(l, other)),
        };
        let left = self.expr(l)?;
        let right = self.expr(r)?;
        let loc = left.loc;
        let elem = match right.ty {
            SqlType::Array(elem) => *elem,
            // An untyped literal on the right is an array of the left operand's type.
            SqlType::Unknown if left.ty == SqlType::Unknown => SqlType::Text,
            SqlType::Unknown => left.ty,
            _ => {
                return Err(WhereError::new(
                    right.loc,
                    "op ANY/ALL (array) requires array on right side",
                ));
            }
        };
        let cmp_type =
            comparison_type(left.ty, elem).ok_or_else(|| WhereError::new(loc, OVERLOAD))?;
        let array_type = cmp_type
            .array_of()
            .ok_or_else(|| WhereError::new(loc, OVERLOAD))?;
        let left = self.coerce(left, cmp_type)?;
        let right = self.coerce(right, array_type)?;
        Ok(Node::new(
            Kind::AnyAll {
                op: cmp,
                left: Box::new(left),
                right: Box::new(right),
                all,
                cmp_type,
            },
            SqlType::Bool,
            loc,
        ))
    }

    fn contain(&mut self, l: &Expr, op: Containment, r: &Expr) -> Result<Node, WhereError> {
        let left = self.expr(l)?;
        let right = self.expr(r)?;
        let loc = left.loc;
        // anyarray operators: both sides of the same array type, an untyped literal taking it.
        let ty = match (left.ty, right.ty) {
            (a, b) if a.is_array() && (a == b || b == SqlType::Unknown) => a,
            (SqlType::Unknown, b) if b.is_array() => b,
            _ => return Err(WhereError::new(loc, OVERLOAD)),
        };
        let left = self.coerce(left, ty)?;
        let right = self.coerce(right, ty)?;
        Ok(fold_null_args(Node::new(
            Kind::Contain {
                op,
                left: Box::new(left),
                right: Box::new(right),
            },
            SqlType::Bool,
            loc,
        )))
    }

    /// `array_cat`, `array_append`, `array_prepend` (and `||` on arrays): anycompatible
    /// functions, so the element types meet at their common type.
    fn array_pair(
        &self,
        func: Call,
        left: Node,
        right: Node,
        loc: usize,
    ) -> Result<Node, WhereError> {
        let overload = || WhereError::new(loc, OVERLOAD);
        let elem_of = |n: &Node, want_array: bool| match (n.ty, want_array) {
            (SqlType::Unknown, _) => Ok(None),
            (SqlType::Array(e), true) => Ok(Some(*e)),
            (t, false) if !t.is_array() && t != SqlType::Other => Ok(Some(t)),
            _ => Err(overload()),
        };
        let (l_array, r_array) = match func {
            Call::ArrayCat => (true, true),
            Call::ArrayAppend => (true, false),
            _ => (false, true),
        };
        let elem = match (elem_of(&left, l_array)?, elem_of(&right, r_array)?) {
            (Some(a), Some(b)) => comparison_type(a, b).ok_or_else(overload)?,
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => SqlType::Text,
        };
        let array = elem.array_of().ok_or_else(overload)?;
        let target = |is_array: bool| if is_array { array } else { elem };
        let left = self.coerce(left, target(l_array))?;
        let right = self.coerce(right, target(r_array))?;
        Ok(Node::new(
            Kind::Call {
                func,
                args: vec![left, right],
                cmp_type: elem,
            },
            array,
            loc,
        ))
    }

    fn array_ctor(&mut self, arr: &SqlArray) -> Result<Node, WhereError> {
        let loc = arr.elem.first().map_or(0, |e| self.offset(start_of(e)));
        if !arr.named {
            return Err(WhereError::new(
                loc,
                "A_ArrayExpr is not supported in this context",
            ));
        }
        if arr.elem.is_empty() {
            return Err(WhereError::new(loc, "cannot determine type of empty array"));
        }
        let items = arr
            .elem
            .iter()
            .map(|e| self.expr(e))
            .collect::<Result<Vec<_>, _>>()?;
        let nested = items.iter().any(|n| n.ty.is_array());
        let (common, items) = if nested {
            // Sub-arrays: every item must be an array of one type (untyped ones take it).
            let ty = items
                .iter()
                .map(|n| n.ty)
                .find(|t| t.is_array())
                .ok_or_else(|| WhereError::new(loc, OVERLOAD))?;
            let items = items
                .into_iter()
                .map(|n| {
                    if n.ty == ty || n.ty == SqlType::Unknown {
                        self.coerce(n, ty)
                    } else {
                        Err(WhereError::new(n.loc, OVERLOAD))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            (ty, items)
        } else {
            let (elem, items) = self.unify(items, loc)?;
            let ty = elem
                .array_of()
                .ok_or_else(|| WhereError::new(loc, OVERLOAD))?;
            (ty, items)
        };
        Ok(Node::new(Kind::ArrayCtor(items), common, loc))
    }

    fn array_subscript(&mut self, e: &Expr) -> Result<Node, WhereError> {
        let node = self.expr(e)?;
        // Subscripts are int4 (an int8 one is converted as in an assignment, range-checked).
        if node.ty == SqlType::Unknown || matches!(node.ty, SqlType::Int2 | SqlType::Int4) {
            return self.coerce(node, SqlType::Int4);
        }
        if node.ty == SqlType::Int8 {
            let loc = node.loc;
            return self.make_cast(node, CastTarget::plain(SqlType::Int4), loc);
        }
        Err(WhereError::new(
            node.loc,
            "array subscript must have type integer",
        ))
    }

    fn subscript(
        &mut self,
        whole: &Expr,
        root: &Expr,
        chain: &[AccessExpr],
    ) -> Result<Node, WhereError> {
        let base = self.expr(root)?;
        let loc = base.loc;
        let Some(elem) = base.ty.element() else {
            return Err(WhereError::new(
                loc,
                format!(
                    "cannot subscript type {} because it does not support subscripting",
                    self.type_label(&base)
                ),
            ));
        };
        let mut subs = Vec::with_capacity(chain.len());
        let mut slice = false;
        for access in chain {
            match access {
                AccessExpr::Subscript(Subscript::Index { index }) => {
                    subs.push(Sub::Index(self.array_subscript(index)?));
                }
                AccessExpr::Subscript(Subscript::Slice {
                    lower_bound,
                    upper_bound,
                    stride: None,
                }) => {
                    slice = true;
                    let lo = lower_bound
                        .as_ref()
                        .map(|e| self.array_subscript(e))
                        .transpose()?;
                    let hi = upper_bound
                        .as_ref()
                        .map(|e| self.array_subscript(e))
                        .transpose()?;
                    subs.push(Sub::Slice(lo, hi));
                }
                _ => return Err(self.unsupported(whole)),
            }
        }
        if subs.len() > 6 {
            return Err(WhereError::new(
                loc,
                "number of array dimensions (7) exceeds the maximum allowed (6)",
            ));
        }
        let ty = if slice { base.ty } else { elem };
        Ok(Node::new(
            Kind::Subscript {
                expr: Box::new(base),
                subs,
                slice,
            },
            ty,
            loc,
        ))
    }

    fn interval_literal(&self, whole: &Expr, iv: &SqlInterval) -> Result<Node, WhereError> {
        let plain = iv.leading_field.is_none()
            && iv.leading_precision.is_none()
            && iv.last_field.is_none()
            && iv.fractional_seconds_precision.is_none();
        let (true, Expr::Value(v)) = (plain, iv.value.as_ref()) else {
            return Err(self.unsupported(whole));
        };
        let loc = self.offset(v.span.start);
        let Some(text) = string_literal(&v.value) else {
            return Err(self.unsupported(whole));
        };
        let node = Node::new(Kind::Untyped(Some(text)), SqlType::Unknown, loc);
        self.explicit_cast(node, CastTarget::plain(SqlType::Interval), loc)
    }

    /// `timezone(zone, ts)` (also written `ts AT TIME ZONE zone`): a timestamp without zone
    /// becomes the instant the zone's clock shows it, an instant becomes the zone's clock
    /// time. A literal `ts` or a date is read as timestamptz, Postgres's preferred type.
    fn timezone(&self, zone: Node, ts: Node, loc: usize) -> Result<Node, WhereError> {
        let zone = self.text_operand(zone)?;
        match &zone.kind {
            Kind::Const(Some(Value::Text(name))) => {
                zone::lookup(name).map_err(|r| WhereError::new(zone.loc, r))?;
            }
            Kind::Const(_) => {}
            // A zone read from a row could be an abbreviation, which Postgres reads by its
            // own table and volt refuses: the row would be in the snapshot but not in the
            // stream. Constants are checked here instead.
            _ => {
                return Err(WhereError::new(
                    zone.loc,
                    "the time zone must be a constant or a parameter",
                ));
            }
        }
        let (ts, result) = match ts.ty {
            SqlType::Timestamp => (ts, SqlType::Timestamptz),
            SqlType::Timestamptz => (ts, SqlType::Timestamp),
            SqlType::Unknown | SqlType::Date => {
                (self.coerce(ts, SqlType::Timestamptz)?, SqlType::Timestamp)
            }
            _ => return Err(WhereError::new(ts.loc, OVERLOAD)),
        };
        // Strict: the planner folds it to NULL with a NULL argument, leaving the rest unrun.
        if [&zone, &ts]
            .iter()
            .any(|n| matches!(n.kind, Kind::Const(None)))
        {
            return Ok(Node::new(Kind::Const(None), result, loc));
        }
        let input = ts.ty;
        Ok(Node::new(
            Kind::Call {
                func: Call::Timezone,
                args: vec![zone, ts],
                cmp_type: input,
            },
            result,
            loc,
        ))
    }

    fn at_time_zone(&mut self, ts: &Expr, zone: &Expr) -> Result<Node, WhereError> {
        let ts = self.expr(ts)?;
        let zone = self.expr(zone)?;
        let loc = ts.loc;
        self.timezone(zone, ts, loc)
    }

    fn prefix(&mut self, inner: &Expr, op: UnaryOp) -> Result<Node, WhereError> {
        let node = self.expr(inner)?;
        let loc = node.loc;
        let node = match op {
            // Only float8 has these operators; other numbers convert to it.
            UnaryOp::Sqrt | UnaryOp::Cbrt if node.ty.is_number() || node.ty == SqlType::Unknown => {
                self.coerce(node, SqlType::Float8)?
            }
            UnaryOp::Abs if node.ty.is_number() => node,
            UnaryOp::BitNot if node.ty.is_int() => node,
            _ => return Err(WhereError::new(loc, OVERLOAD)),
        };
        let ty = node.ty;
        Ok(fold_null_args(Node::new(
            Kind::Unary {
                op,
                arg: Box::new(node),
            },
            ty,
            loc,
        )))
    }

    /// The functions beyond lower/upper; None if `name` is not one of them.
    fn known_call(
        &mut self,
        name: &str,
        args: &[FunctionArg],
        loc: usize,
    ) -> Result<Option<Node>, WhereError> {
        let arity_error = || {
            WhereError::new(
                loc,
                format!("unknown or unsupported function {name}/{}", args.len()),
            )
        };
        let mut exprs = Vec::with_capacity(args.len());
        for arg in args {
            match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => exprs.push(e),
                _ => return Err(arity_error()),
            }
        }
        let call = match name {
            "coalesce" => Call::Coalesce,
            "greatest" => Call::Greatest,
            "least" => Call::Least,
            "concat" => Call::Concat,
            "array_cat" => Call::ArrayCat,
            "array_append" => Call::ArrayAppend,
            "array_prepend" => Call::ArrayPrepend,
            "array_ndims" => Call::ArrayNdims,
            "justify_days" => Call::JustifyDays,
            "justify_hours" => Call::JustifyHours,
            "justify_interval" => Call::JustifyInterval,
            "timezone" => Call::Timezone,
            "like" | "ilike" => {
                let [subject, pattern] = exprs.as_slice() else {
                    return Err(arity_error());
                };
                return self
                    .like_with(subject, pattern, None, name == "ilike", false, true)
                    .map(Some);
            }
            _ => {
                // `int4('1')` and friends: a function-style cast.
                let Some(ty) = SqlType::from_name(name) else {
                    return Ok(None);
                };
                let [arg] = exprs.as_slice() else {
                    return Err(arity_error());
                };
                let node = self.expr(arg)?;
                return self
                    .explicit_cast(node, CastTarget::plain(ty), loc)
                    .map(Some);
            }
        };
        let lenient_before = self.lenient;
        let mut nodes = Vec::with_capacity(exprs.len());
        for e in &exprs {
            let node = self.expr(e);
            let node = match node {
                Ok(node) => node,
                Err(e) => {
                    self.lenient = lenient_before;
                    return Err(e);
                }
            };
            // The planner drops COALESCE arguments after a non-NULL constant unsimplified.
            if call == Call::Coalesce && matches!(node.kind, Kind::Const(Some(_))) {
                self.lenient = lenient_before + 1;
            }
            nodes.push(node);
        }
        self.lenient = lenient_before;
        let node = match (call, nodes.len()) {
            (Call::Coalesce, 1..) => {
                let (ty, args) = self.unify(nodes, loc)?;
                // As the planner simplifies COALESCE: NULL constants go, and a non-NULL
                // constant ends the list (alone, it is the result).
                let mut kept = Vec::with_capacity(args.len());
                for arg in args {
                    match arg.kind {
                        Kind::Const(None) => {}
                        Kind::Const(Some(_)) => {
                            kept.push(arg);
                            break;
                        }
                        // What is left must still have the list's type in SQL (`small` in
                        // `coalesce(small, NULL::int4)` is int4, where int2 could overflow).
                        _ if arg.ty != ty => {
                            let loc = arg.loc;
                            kept.push(Node::new(
                                Kind::Cast {
                                    expr: Box::new(arg),
                                    target: CastTarget::plain(ty),
                                },
                                ty,
                                loc,
                            ));
                        }
                        _ => kept.push(arg),
                    }
                }
                match kept.len() {
                    0 => Node::new(Kind::Const(None), ty, loc),
                    1 if matches!(kept[0].kind, Kind::Const(_)) => {
                        let only = pop(&mut kept, loc)?;
                        Node::new(only.kind, ty, loc)
                    }
                    _ => Node::new(
                        Kind::Call {
                            func: call,
                            args: kept,
                            cmp_type: ty,
                        },
                        ty,
                        loc,
                    ),
                }
            }
            (Call::Greatest | Call::Least, 1..) => {
                let (ty, args) = self.unify(nodes, loc)?;
                if matches!(ty, SqlType::Enum(_)) {
                    return Err(enum_order_error(loc));
                }
                Node::new(
                    Kind::Call {
                        func: call,
                        args,
                        cmp_type: ty,
                    },
                    ty,
                    loc,
                )
            }
            (Call::Concat, 1..) => {
                let args = nodes
                    .into_iter()
                    .map(|n| self.settle(n))
                    .collect::<Result<Vec<_>, _>>()?;
                Node::new(
                    Kind::Call {
                        func: call,
                        args,
                        cmp_type: SqlType::Text,
                    },
                    SqlType::Text,
                    loc,
                )
            }
            (Call::ArrayCat | Call::ArrayAppend | Call::ArrayPrepend, 2) => {
                let mut nodes = nodes;
                let right = pop(&mut nodes, loc)?;
                let left = pop(&mut nodes, loc)?;
                return self.array_pair(call, left, right, loc).map(Some);
            }
            (Call::ArrayNdims, 1) => {
                let mut nodes = nodes;
                let arg = pop(&mut nodes, loc)?;
                if !arg.ty.is_array() {
                    return Err(WhereError::new(arg.loc, OVERLOAD));
                }
                let ty = arg.ty;
                Node::new(
                    Kind::Call {
                        func: call,
                        args: vec![arg],
                        cmp_type: ty,
                    },
                    SqlType::Int4,
                    loc,
                )
            }
            (Call::JustifyDays | Call::JustifyHours | Call::JustifyInterval, 1) => {
                let mut nodes = nodes;
                let arg = pop(&mut nodes, loc)?;
                let arg = self.coerce(arg, SqlType::Interval)?;
                Node::new(
                    Kind::Call {
                        func: call,
                        args: vec![arg],
                        cmp_type: SqlType::Interval,
                    },
                    SqlType::Interval,
                    loc,
                )
            }
            (Call::Timezone, 2) => {
                let mut nodes = nodes;
                let ts = pop(&mut nodes, loc)?;
                let zone = pop(&mut nodes, loc)?;
                return self.timezone(zone, ts, loc).map(Some);
            }
            _ => return Err(arity_error()),
        };
        Ok(Some(node))
    }
}

fn is_date_vs_timestamp(l: SqlType, r: SqlType) -> bool {
    let ts = |t: SqlType| matches!(t, SqlType::Timestamp | SqlType::Timestamptz);
    (l == SqlType::Date && ts(r)) || (ts(l) && r == SqlType::Date)
}

fn enum_order_error(loc: usize) -> WhereError {
    WhereError::new(
        loc,
        "enum values can only be compared for equality; compare their text (col::text) to order them",
    )
}

/// Whether values of `from` can stand for values of `to` without conversion.
fn same_representation(from: SqlType, to: SqlType) -> bool {
    match (from, to) {
        (SqlType::Array(a), SqlType::Array(b)) => same_representation(*a, *b),
        _ => {
            (from.is_int() && to.is_int())
                || (from == SqlType::Float4 && to == SqlType::Float8)
                || (from.is_string() && to.is_string() && from != SqlType::Bpchar)
                || (from == SqlType::Timestamp && to == SqlType::Timestamptz)
        }
    }
}

/// Operand and result types of `+`/`-` involving dates, timestamps and intervals (the
/// built-in operators, including which ones an untyped literal can select), or None when
/// neither operand is of those types.
fn datetime_arith_types(
    op: ArithOp,
    l: SqlType,
    r: SqlType,
) -> Option<(SqlType, SqlType, SqlType)> {
    use SqlType::*;
    let is_ts = |t: SqlType| matches!(t, Timestamp | Timestamptz);
    let small_int = |t: SqlType| matches!(t, Int2 | Int4);
    Some(match (op, l, r) {
        (ArithOp::Add | ArithOp::Sub, Date, i) if small_int(i) => (Date, Int4, Date),
        (ArithOp::Add, i, Date) if small_int(i) => (Int4, Date, Date),
        (ArithOp::Sub, Date, Date | Unknown) | (ArithOp::Sub, Unknown, Date) => (Date, Date, Int4),
        (ArithOp::Add | ArithOp::Sub, Date, Interval) => (Timestamp, Interval, Timestamp),
        (ArithOp::Add, Interval, Date) => (Interval, Timestamp, Timestamp),
        (ArithOp::Add | ArithOp::Sub, t, Interval) if is_ts(t) => (t, Interval, t),
        (ArithOp::Add, t, Unknown) if is_ts(t) => (t, Interval, t),
        (ArithOp::Add, Interval | Unknown, t) if is_ts(t) => (Interval, t, t),
        (ArithOp::Sub, t, Unknown) | (ArithOp::Sub, Unknown, t) if is_ts(t) => (t, t, Interval),
        (ArithOp::Sub, a, b)
            if matches!(a, Date | Timestamp | Timestamptz)
                && matches!(b, Date | Timestamp | Timestamptz) =>
        {
            let c = comparison_type(a, b)?;
            (c, c, Interval)
        }
        (ArithOp::Add | ArithOp::Sub, Interval, Interval | Unknown)
        | (ArithOp::Add | ArithOp::Sub, Unknown, Interval) => (Interval, Interval, Interval),
        // `interval * float8`, `float8 * interval`, `interval / float8`: other numbers and
        // literals convert to float8.
        (ArithOp::Mul | ArithOp::Div, Interval, n) if n.is_number() || n == Unknown => {
            (Interval, Float8, Interval)
        }
        (ArithOp::Mul, n, Interval) if n.is_number() || n == Unknown => {
            (Float8, Interval, Interval)
        }
        _ => return None,
    })
}

/// Whether a string value carries the "C" collation: values of type name do, and functions,
/// casts and concatenations pass it on from their operands (Postgres's collation derivation,
/// in which an implicit non-default collation beats the default one).
fn c_collated(node: &Node) -> bool {
    match &node.kind {
        Kind::Column { .. } | Kind::Const(_) => node.ty == SqlType::Name,
        Kind::Cast { expr, .. } => {
            node.ty.is_string() && (expr.ty == SqlType::Name || c_collated(expr))
        }
        Kind::Func { c_collation, .. } => *c_collation,
        Kind::Concat { left, right } => c_collated(left) || c_collated(right),
        _ => false,
    }
}

/// Postgres evaluates operators whose operands are all constants when planning; doing the
/// same keeps runtime errors and short-circuits in step with the snapshot query. A node that
/// fails comes back unchanged with the error its evaluation raised.
fn fold_constant(node: Node) -> (Node, Option<WhereError>) {
    if matches!(
        node.kind,
        Kind::Const(_) | Kind::Untyped(_) | Kind::Column { .. }
    ) {
        return (node, None);
    }
    let all_const = node
        .children()
        .iter()
        .all(|c| matches!(c.kind, Kind::Const(_)));
    if !all_const || is_stable(&node) {
        return (node, None);
    }
    match eval::eval(&node, &[]) {
        Ok(v) => (Node::new(Kind::Const(v), node.ty, node.loc), None),
        Err(e) => (node, Some(e)),
    }
}

/// Whether Postgres marks what this node computes STABLE rather than IMMUTABLE (it reads
/// DateStyle, IntervalStyle or TimeZone, or prints arbitrary types): the planner leaves those
/// for execution, so an error in one is a row's error and the AND/OR around it is not
/// simplified at planning. Literals are not concerned: their input runs when parsing.
fn is_stable(node: &Node) -> bool {
    use SqlType::*;
    match &node.kind {
        Kind::Cast { expr, target } => stable_cast(expr.ty, target.ty),
        Kind::Call {
            func: Call::Concat, ..
        } => true,
        // Never folded: its value past the timestamp range has no text form to render.
        Kind::DateAsTimestamp(_) => true,
        Kind::Arith { left, right, .. } => {
            matches!(
                (left.ty, right.ty),
                (Timestamptz, Interval) | (Interval, Timestamptz)
            )
        }
        Kind::Compare { left, right, .. } | Kind::Distinct { left, right, .. } => {
            let (l, r) = (left.ty, right.ty);
            l != r
                && (matches!(
                    (l, r),
                    (Date, Timestamptz)
                        | (Timestamptz, Date)
                        | (Timestamp, Timestamptz)
                        | (Timestamptz, Timestamp)
                ))
        }
        _ => false,
    }
}

/// Casts through a datetime type's text form or an array's, and between the zone-aware and
/// naive datetime types.
fn stable_cast(from: SqlType, to: SqlType) -> bool {
    use SqlType::*;
    let datetime = |t: SqlType| {
        let t = t.element().unwrap_or(t);
        matches!(t, Date | Time | Timestamp | Timestamptz | Interval)
    };
    (from.is_array() && to.is_string())
        || (to.is_array() && from.is_string())
        || (datetime(from) && to.is_string())
        || (from.is_string() && datetime(to))
        || matches!(
            (from, to),
            (Timestamp, Timestamptz) | (Timestamptz, Timestamp | Date | Time) | (Date, Timestamptz)
        )
}

/// Postgres folds a strict operator or function with a NULL constant argument to NULL when
/// planning, so the other arguments (which could fail) are never evaluated; do the same.
fn fold_null_args(node: Node) -> Node {
    let is_null = |n: &Node| matches!(n.kind, Kind::Const(None));
    let null_arg = match &node.kind {
        Kind::Compare { left, right, .. }
        | Kind::Arith { left, right, .. }
        | Kind::Concat { left, right } => is_null(left) || is_null(right),
        Kind::Neg(arg) | Kind::Func { arg, .. } | Kind::Not(arg) | Kind::Unary { arg, .. } => {
            is_null(arg)
        }
        Kind::Contain { left, right, .. } => is_null(left) || is_null(right),
        Kind::In { expr, .. } => is_null(expr),
        Kind::Like {
            expr,
            pattern,
            escape,
            ..
        } => is_null(expr) || is_null(pattern) || escape.as_deref().is_some_and(is_null),
        _ => false,
    };
    if null_arg {
        Node::new(Kind::Const(None), node.ty, node.loc)
    } else {
        node
    }
}

/// Constant operands of AND/OR fold as Postgres folds them: a FALSE makes an AND false (a
/// TRUE an OR true) and TRUE operands of an AND (FALSE of an OR) drop out.
fn fold_bool_list(mut items: Vec<Node>, which: BoolOp, loc: usize) -> Node {
    let decisive = matches!(which, BoolOp::Or);
    let is_const =
        |n: &Node, want: bool| matches!(n.kind, Kind::Const(Some(Value::Bool(b))) if b == want);
    if items.iter().any(|n| is_const(n, decisive)) {
        return Node::new(Kind::Const(Some(Value::Bool(decisive))), SqlType::Bool, loc);
    }
    items.retain(|n| !is_const(n, !decisive));
    match (items.len(), which) {
        (0, _) => Node::new(
            Kind::Const(Some(Value::Bool(!decisive))),
            SqlType::Bool,
            loc,
        ),
        (1, _) => items
            .pop()
            .unwrap_or_else(|| Node::new(Kind::Const(None), SqlType::Bool, loc)),
        (_, BoolOp::And) => Node::new(Kind::And(items), SqlType::Bool, loc),
        (_, BoolOp::Or) => Node::new(Kind::Or(items), SqlType::Bool, loc),
    }
}

fn pop(nodes: &mut Vec<Node>, loc: usize) -> Result<Node, WhereError> {
    nodes
        .pop()
        .ok_or_else(|| WhereError::new(loc, "internal error: missing operand"))
}

/// Postgres folds unquoted identifiers to lower case; quoted ones keep their spelling.
fn fold_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn string_literal(v: &SqlValue) -> Option<String> {
    match v {
        SqlValue::SingleQuotedString(s)
        | SqlValue::EscapedStringLiteral(s)
        | SqlValue::UnicodeStringLiteral(s) => Some(s.clone()),
        SqlValue::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

/// A numeric literal is int4 if it fits, else int8, else numeric; with a point or exponent
/// it is numeric.
fn number_literal(text: &str, loc: usize) -> Result<Node, WhereError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(v) = text.parse::<i64>()
    {
        let ty = if i32::try_from(v).is_ok() {
            SqlType::Int4
        } else {
            SqlType::Int8
        };
        return Ok(Node::new(Kind::Const(Some(Value::Int(v))), ty, loc));
    }
    match Numeric::parse(text) {
        Ok(n) => Ok(Node::new(
            Kind::Const(Some(Value::Numeric(n))),
            SqlType::Numeric,
            loc,
        )),
        Err(_) => Err(WhereError::new(
            loc,
            format!("invalid syntax for type numeric: {text}"),
        )),
    }
}

/// Where an expression starts, found by walking down its left edge without recursion:
/// sqlparser's `Spanned` recurses over the whole subtree, which can be arbitrarily deep
/// for the left-deep chains it builds. Constructs that start with a keyword sqlparser does
/// not keep a position for report 0.
fn start_of(e: &Expr) -> Location {
    let mut cur = e;
    loop {
        cur = match cur {
            Expr::Identifier(i) => return i.span.start,
            Expr::CompoundIdentifier(parts) => {
                return parts
                    .first()
                    .map_or(Location { line: 0, column: 0 }, |p| p.span.start);
            }
            Expr::Value(v) => return v.span.start,
            Expr::TypedString(ts) => return ts.value.span.start,
            Expr::Case { case_token, .. } => return case_token.0.span.start,
            Expr::Function(f) => match f.name.0.first() {
                Some(ObjectNamePart::Identifier(i)) => return i.span.start,
                _ => return Location { line: 0, column: 0 },
            },
            Expr::BinaryOp { left, .. }
            | Expr::IsDistinctFrom(left, _)
            | Expr::IsNotDistinctFrom(left, _)
            | Expr::AnyOp { left, .. }
            | Expr::AllOp { left, .. } => left,
            Expr::Nested(inner)
            | Expr::UnaryOp { expr: inner, .. }
            | Expr::Cast { expr: inner, .. }
            | Expr::Collate { expr: inner, .. }
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner)
            | Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner)
            | Expr::In { expr: inner, .. }
            | Expr::Between { expr: inner, .. }
            | Expr::Like { expr: inner, .. }
            | Expr::ILike { expr: inner, .. }
            | Expr::SimilarTo { expr: inner, .. }
            | Expr::RLike { expr: inner, .. }
            | Expr::JsonAccess { value: inner, .. }
            | Expr::CompoundFieldAccess { root: inner, .. }
            | Expr::AtTimeZone {
                timestamp: inner, ..
            } => inner,
            _ => return Location { line: 0, column: 0 },
        };
    }
}

/// Postgres's parse-node name for constructs outside the supported subset.
fn node_name(e: &Expr) -> &'static str {
    match e {
        Expr::Subquery(_) | Expr::Exists { .. } => "SubLink",
        Expr::In {
            target: InTarget::Subquery(_),
            ..
        } => "SubLink",
        Expr::In { .. } => "IN with this target",
        Expr::Case { .. } => "CaseExpr",
        Expr::Array(_) => "A_ArrayExpr",
        Expr::Collate { .. } => "CollateClause",
        Expr::AnyOp { .. } | Expr::AllOp { .. } => "ANY/ALL (array)",
        Expr::SimilarTo { .. } => "SIMILAR TO",
        Expr::RLike { .. } => "regular expression match",
        Expr::Like { .. } | Expr::ILike { .. } => "LIKE ANY",
        Expr::JsonAccess { .. } => "JSON access",
        Expr::CompoundFieldAccess { .. } => "A_Indirection",
        Expr::Interval(_) => "interval",
        Expr::AtTimeZone { .. } => "AT TIME ZONE",
        Expr::Extract { .. } => "EXTRACT",
        Expr::Substring { .. } => "SUBSTRING",
        Expr::Trim { .. } => "TRIM",
        Expr::Position { .. } => "POSITION",
        Expr::Overlay { .. } => "OVERLAY",
        Expr::Ceil { .. } | Expr::Floor { .. } => "CEIL/FLOOR",
        Expr::Tuple(_) => "RowExpr",
        Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => "A_Star",
        Expr::Cast { .. } => "this form of CAST",
        Expr::IsNormalized { .. } | Expr::IsJson { .. } => "IS NORMALIZED/JSON",
        _ => "this expression",
    }
}
