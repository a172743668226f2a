//! The type-checked form of a where clause, shared by the evaluator and the SQL renderer.

use super::array::Containment;
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
    Pow,
    BitAnd,
    BitOr,
    BitXor,
}

impl ArithOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Pow => "^",
            ArithOp::BitAnd => "&",
            ArithOp::BitOr => "|",
            ArithOp::BitXor => "#",
        }
    }
}

/// Prefix operators other than minus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnaryOp {
    Sqrt,
    Cbrt,
    Abs,
    BitNot,
}

impl UnaryOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            UnaryOp::Sqrt => "|/",
            UnaryOp::Cbrt => "||/",
            UnaryOp::Abs => "@",
            UnaryOp::BitNot => "~",
        }
    }
}

/// Functions of any number of arguments; none of these is strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Coalesce,
    Greatest,
    Least,
    Concat,
    ArrayCat,
    ArrayAppend,
    ArrayPrepend,
    ArrayNdims,
    JustifyDays,
    JustifyHours,
    JustifyInterval,
    /// `timezone(zone, ts)`; `cmp_type` is the type of `ts`, which decides the direction.
    Timezone,
}

impl Call {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Call::Coalesce => "COALESCE",
            Call::Greatest => "GREATEST",
            Call::Least => "LEAST",
            Call::Concat => "concat",
            Call::ArrayCat => "array_cat",
            Call::ArrayAppend => "array_append",
            Call::ArrayPrepend => "array_prepend",
            Call::ArrayNdims => "array_ndims",
            Call::JustifyDays => "justify_days",
            Call::JustifyHours => "justify_hours",
            Call::JustifyInterval => "justify_interval",
            Call::Timezone => "timezone",
        }
    }
}

/// One bracketed subscript of an array.
#[derive(Debug, Clone)]
pub(crate) enum Sub {
    Index(Node),
    Slice(Option<Node>, Option<Node>),
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
    Unary {
        op: UnaryOp,
        arg: Box<Node>,
    },
    Call {
        func: Call,
        args: Vec<Node>,
        /// The type arguments are compared in (GREATEST/LEAST).
        cmp_type: SqlType,
    },
    /// `left op ANY/ALL (right)`; `cmp_type` is the element type the comparison runs in.
    AnyAll {
        op: CmpOp,
        left: Box<Node>,
        right: Box<Node>,
        all: bool,
        cmp_type: SqlType,
    },
    Contain {
        op: Containment,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// A date operand of a comparison with a timestamp. Postgres compares them with its
    /// cross-type operators, under which a date past the timestamp range is later than every
    /// finite timestamp instead of an error; rendered as the bare date so Postgres picks them.
    DateAsTimestamp(Box<Node>),
    /// `ARRAY[...]`: scalar items, or sub-arrays for a multidimensional array.
    ArrayCtor(Vec<Node>),
    /// `expr[i][j]` (an element) or, if `slice`, `expr[a:b]...` (an array).
    Subscript {
        expr: Box<Node>,
        subs: Vec<Sub>,
        slice: bool,
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
            | Kind::Func { arg: expr, .. }
            | Kind::Unary { arg: expr, .. }
            | Kind::DateAsTimestamp(expr) => vec![expr],
            Kind::Call { args, .. } | Kind::ArrayCtor(args) => args.iter().collect(),
            Kind::AnyAll { left, right, .. } | Kind::Contain { left, right, .. } => {
                vec![left, right]
            }
            Kind::Subscript { expr, subs, .. } => {
                let mut out = vec![expr.as_ref()];
                for sub in subs {
                    match sub {
                        Sub::Index(i) => out.push(i),
                        Sub::Slice(lo, hi) => out.extend(lo.iter().chain(hi.iter())),
                    }
                }
                out
            }
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
