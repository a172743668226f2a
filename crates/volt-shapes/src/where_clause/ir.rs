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
    Like {
        expr: Box<Node>,
        pattern: Box<Node>,
        escape: Option<Box<Node>>,
        case_insensitive: bool,
        negated: bool,
        /// ILIKE folds case ASCII-only under the "C" collation (see `change_case`).
        c_collation: bool,
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
        c_collation: bool,
    },
}

impl Node {
    pub(crate) fn new(kind: Kind, ty: SqlType, loc: usize) -> Node {
        Node { kind, ty, loc }
    }

    /// The operands of this node.
    pub(crate) fn children(&self) -> Vec<&Node> {
        match &self.kind {
            Kind::Column { .. } | Kind::Const(_) | Kind::Untyped(_) => Vec::new(),
            Kind::Cast { expr, .. }
            | Kind::Not(expr)
            | Kind::Neg(expr)
            | Kind::IsNull { expr, .. }
            | Kind::IsTruth { expr, .. }
            | Kind::Func { arg: expr, .. } => vec![expr],
            Kind::And(items) | Kind::Or(items) => items.iter().collect(),
            Kind::Compare { left, right, .. }
            | Kind::Distinct { left, right, .. }
            | Kind::Arith { left, right, .. }
            | Kind::Concat { left, right } => vec![left, right],
            Kind::In { expr, list, .. } => std::iter::once(expr.as_ref()).chain(list).collect(),
            Kind::Like {
                expr,
                pattern,
                escape,
                ..
            } => [
                Some(expr.as_ref()),
                Some(pattern.as_ref()),
                escape.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// Column indexes this node reads, appended to `out`.
    pub(crate) fn collect_columns(&self, out: &mut Vec<usize>) {
        match &self.kind {
            Kind::Column { index, .. } => out.push(*index),
            _ => self
                .children()
                .into_iter()
                .for_each(|c| c.collect_columns(out)),
        }
    }
}
