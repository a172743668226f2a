//! The type-checked form of a where clause, shared by the evaluator and the SQL renderer.

use super::like::LikePattern;
use super::types::{CastTarget, SqlType};
use super::value::Value;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    /// The node's result type. Integer, float4/float8 and string operands keep their own
    /// type when the operator's type is a wider member of the same family: their values
    /// are represented the same way, so no conversion (and no cast in SQL) is needed.
    pub ty: SqlType,
    /// Byte offset in the clause, for errors.
    pub loc: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::NotEq => "<>",
            CmpOp::Lt => "<",
            CmpOp::LtEq => "<=",
            CmpOp::Gt => ">",
            CmpOp::GtEq => ">=",
        }
    }

    pub(crate) fn is_equality(self) -> bool {
        matches!(self, CmpOp::Eq | CmpOp::NotEq)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl ArithOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Lower,
    Upper,
}

impl Func {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Func::Lower => "lower",
            Func::Upper => "upper",
        }
    }
}

/// The right-hand side of `IS [NOT] TRUE/FALSE/UNKNOWN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Truth {
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Column {
        index: usize,
        name: String,
    },
    /// A typed constant; None is a typed NULL.
    Const(Option<Value>),
    /// A string literal, NULL or `$n` whose type is not known yet. Never survives compilation.
    Untyped(Option<String>),
    Cast {
        expr: Box<Node>,
        target: CastTarget,
    },
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    IsNull {
        expr: Box<Node>,
        negated: bool,
    },
    IsTruth {
        expr: Box<Node>,
        truth: Truth,
        negated: bool,
    },
    /// `cmp_type` is the type the comparison runs in; it decides e.g. whether trailing
    /// spaces count (`bpchar`).
    Compare {
        op: CmpOp,
        left: Box<Node>,
        right: Box<Node>,
        cmp_type: SqlType,
    },
    Distinct {
        left: Box<Node>,
        right: Box<Node>,
        negated: bool,
        cmp_type: SqlType,
    },
    In {
        expr: Box<Node>,
        list: Vec<Node>,
        negated: bool,
        cmp_type: SqlType,
    },
    Between {
        expr: Box<Node>,
        low: Box<Node>,
        high: Box<Node>,
        negated: bool,
        cmp_type: SqlType,
    },
    Like {
        expr: Box<Node>,
        pattern: Box<Node>,
        escape: Option<Box<Node>>,
        case_insensitive: bool,
        negated: bool,
        /// Precompiled when pattern and escape are constants.
        compiled: Option<LikePattern>,
    },
    Arith {
        op: ArithOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    Neg(Box<Node>),
    Concat {
        left: Box<Node>,
        right: Box<Node>,
    },
    Func {
        func: Func,
        arg: Box<Node>,
    },
}

impl Node {
    pub(crate) fn new(kind: Kind, ty: SqlType, loc: usize) -> Node {
        Node { kind, ty, loc }
    }

    /// Column indexes this node reads, appended to `out`.
    pub(crate) fn collect_columns(&self, out: &mut Vec<usize>) {
        match &self.kind {
            Kind::Column { index, .. } => out.push(*index),
            Kind::Const(_) | Kind::Untyped(_) => {}
            Kind::Cast { expr, .. }
            | Kind::Not(expr)
            | Kind::Neg(expr)
            | Kind::IsNull { expr, .. }
            | Kind::IsTruth { expr, .. }
            | Kind::Func { arg: expr, .. } => expr.collect_columns(out),
            Kind::And(items) | Kind::Or(items) => {
                items.iter().for_each(|n| n.collect_columns(out));
            }
            Kind::Compare { left, right, .. }
            | Kind::Distinct { left, right, .. }
            | Kind::Arith { left, right, .. }
            | Kind::Concat { left, right } => {
                left.collect_columns(out);
                right.collect_columns(out);
            }
            Kind::In { expr, list, .. } => {
                expr.collect_columns(out);
                list.iter().for_each(|n| n.collect_columns(out));
            }
            Kind::Between {
                expr, low, high, ..
            } => {
                expr.collect_columns(out);
                low.collect_columns(out);
                high.collect_columns(out);
            }
            Kind::Like {
                expr,
                pattern,
                escape,
                ..
            } => {
                expr.collect_columns(out);
                pattern.collect_columns(out);
                if let Some(e) = escape {
                    e.collect_columns(out);
                }
            }
        }
    }
}
