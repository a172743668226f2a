//! The Postgres types the where-clause evaluator understands and how they mix.

use sqlparser::ast::{
    ArrayElemTypeDef, CharacterLength, DataType, ExactNumberInfo, ObjectNamePart, TimezoneInfo,
    TypeModifier,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Varchar,
    Bpchar,
    Name,
    Uuid,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    /// An untyped string literal, `NULL` or `$n` whose type comes from its context.
    Unknown,
    /// A column of a type the evaluator cannot interpret (json, domains, arrays of enums...):
    /// it can only be tested for NULL or cast to a string type, whose value is Postgres's text
    /// output.
    Other,
    /// An enum type, by its oid: its values are its labels, equal when their text is. Only
    /// equality is offered: the order of labels can change (`ALTER TYPE ... ADD VALUE
    /// BEFORE`) while a shape lives, their text cannot.
    Enum(u32),
    /// An array of a scalar type above. Postgres has one array type per element type whatever
    /// the number of dimensions, so neither does this.
    Array(&'static SqlType),
}

/// A length or precision attached to a cast target, e.g. `varchar(3)` or `numeric(10,2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Typmod {
    None,
    Length(u32),
    Numeric { precision: u32, scale: i32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CastTarget {
    pub ty: SqlType,
    pub typmod: Typmod,
}

impl CastTarget {
    pub(crate) fn plain(ty: SqlType) -> CastTarget {
        CastTarget {
            ty,
            typmod: Typmod::None,
        }
    }

    /// The type as written in SQL, with its modifier.
    pub(crate) fn sql_name(&self) -> String {
        let (base, brackets) = match self.ty {
            SqlType::Array(elem) => (elem.name(), "[]"),
            ty => (ty.name(), ""),
        };
        match self.typmod {
            Typmod::None => self.ty.name().to_string(),
            Typmod::Length(n) => format!("{base}({n}){brackets}"),
            Typmod::Numeric { precision, scale } => {
                format!("numeric({precision},{scale}){brackets}")
            }
        }
    }

    /// The target for each element when this casts to an array type.
    pub(crate) fn element(&self) -> Option<CastTarget> {
        match self.ty {
            SqlType::Array(elem) => Some(CastTarget {
                ty: *elem,
                typmod: self.typmod,
            }),
            _ => None,
        }
    }
}

const MAX_NUMERIC_PRECISION: u64 = 1000;
const MAX_CHAR_LENGTH: u64 = 10_485_760;

impl SqlType {
    /// The evaluator's type for a column, from `pg_type.typname` and its array dimensions.
    pub(crate) fn from_column(typname: &str, dims: usize) -> SqlType {
        // An array type's typname is its element's with a leading underscore.
        if let Some(elem) = typname.strip_prefix('_') {
            return SqlType::from_typname(elem)
                .and_then(SqlType::array_of)
                .unwrap_or(SqlType::Other);
        }
        if dims > 0 {
            return SqlType::Other;
        }
        SqlType::from_typname(typname).unwrap_or(SqlType::Other)
    }

    /// The array type whose elements are of this type; None for types without one here.
    pub(crate) fn array_of(self) -> Option<SqlType> {
        use SqlType::*;
        // Each arm borrows a promoted constant, so the element lives for 'static.
        Some(Array(match self {
            Bool => &Bool,
            Int2 => &Int2,
            Int4 => &Int4,
            Int8 => &Int8,
            Float4 => &Float4,
            Float8 => &Float8,
            Numeric => &Numeric,
            Text => &Text,
            Varchar => &Varchar,
            Bpchar => &Bpchar,
            Name => &Name,
            Uuid => &Uuid,
            Date => &Date,
            Time => &Time,
            Timestamp => &Timestamp,
            Timestamptz => &Timestamptz,
            Interval => &Interval,
            Unknown | Other | Enum(_) | Array(_) => return None,
        }))
    }

    /// The element type of an array type.
    pub(crate) fn element(self) -> Option<SqlType> {
        match self {
            SqlType::Array(elem) => Some(*elem),
            _ => None,
        }
    }

    pub(crate) fn is_array(self) -> bool {
        matches!(self, SqlType::Array(_))
    }

    /// The type a function-style cast such as `int4('1')` names.
    pub(crate) fn from_name(name: &str) -> Option<SqlType> {
        match name {
            "varchar" | "bpchar" | "name" => None,
            other => SqlType::from_typname(other),
        }
    }

    fn from_typname(name: &str) -> Option<SqlType> {
        Some(match name {
            "bool" | "boolean" => SqlType::Bool,
            "int2" | "smallint" => SqlType::Int2,
            "int4" | "int" | "integer" => SqlType::Int4,
            "int8" | "bigint" => SqlType::Int8,
            "float4" | "real" => SqlType::Float4,
            "float8" => SqlType::Float8,
            "numeric" | "decimal" => SqlType::Numeric,
            "text" => SqlType::Text,
            "varchar" => SqlType::Varchar,
            "bpchar" => SqlType::Bpchar,
            "name" => SqlType::Name,
            "uuid" => SqlType::Uuid,
            "date" => SqlType::Date,
            "time" => SqlType::Time,
            "timestamp" => SqlType::Timestamp,
            "timestamptz" => SqlType::Timestamptz,
            "interval" => SqlType::Interval,
            _ => return None,
        })
    }

    /// `pg_type.typname`, used in SQL output and error messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SqlType::Bool => "bool",
            SqlType::Int2 => "int2",
            SqlType::Int4 => "int4",
            SqlType::Int8 => "int8",
            SqlType::Float4 => "float4",
            SqlType::Float8 => "float8",
            SqlType::Numeric => "numeric",
            SqlType::Text => "text",
            SqlType::Varchar => "varchar",
            SqlType::Bpchar => "bpchar",
            SqlType::Name => "name",
            SqlType::Uuid => "uuid",
            SqlType::Date => "date",
            SqlType::Time => "time",
            SqlType::Timestamp => "timestamp",
            SqlType::Timestamptz => "timestamptz",
            SqlType::Interval => "interval",
            SqlType::Unknown => "unknown",
            SqlType::Other => "other",
            SqlType::Enum(_) => "enum",
            SqlType::Array(elem) => match elem {
                SqlType::Bool => "bool[]",
                SqlType::Int2 => "int2[]",
                SqlType::Int4 => "int4[]",
                SqlType::Int8 => "int8[]",
                SqlType::Float4 => "float4[]",
                SqlType::Float8 => "float8[]",
                SqlType::Numeric => "numeric[]",
                SqlType::Text => "text[]",
                SqlType::Varchar => "varchar[]",
                SqlType::Bpchar => "bpchar[]",
                SqlType::Name => "name[]",
                SqlType::Uuid => "uuid[]",
                SqlType::Date => "date[]",
                SqlType::Time => "time[]",
                SqlType::Timestamp => "timestamp[]",
                SqlType::Timestamptz => "timestamptz[]",
                SqlType::Interval => "interval[]",
                _ => "unknown[]",
            },
        }
    }

    pub(crate) fn is_int(self) -> bool {
        matches!(self, SqlType::Int2 | SqlType::Int4 | SqlType::Int8)
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(self, SqlType::Float4 | SqlType::Float8)
    }

    pub(crate) fn is_number(self) -> bool {
        self.is_int() || self.is_float() || self == SqlType::Numeric
    }

    pub(crate) fn is_string(self) -> bool {
        matches!(
            self,
            SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name
        )
    }

    fn is_datetime(self) -> bool {
        matches!(
            self,
            SqlType::Date | SqlType::Timestamp | SqlType::Timestamptz
        )
    }

    fn int_rank(self) -> u8 {
        match self {
            SqlType::Int2 => 0,
            SqlType::Int4 => 1,
            _ => 2,
        }
    }

    fn datetime_rank(self) -> u8 {
        match self {
            SqlType::Date => 0,
            SqlType::Timestamp => 1,
            _ => 2,
        }
    }

    /// Inclusive value range of an integer type.
    pub(crate) fn int_range(self) -> (i64, i64) {
        match self {
            SqlType::Int2 => (i64::from(i16::MIN), i64::from(i16::MAX)),
            SqlType::Int4 => (i64::from(i32::MIN), i64::from(i32::MAX)),
            _ => (i64::MIN, i64::MAX),
        }
    }

    /// Postgres's name for an integer type in range errors (`integer out of range`).
    pub(crate) fn int_label(self) -> &'static str {
        match self {
            SqlType::Int2 => "smallint",
            SqlType::Int4 => "integer",
            _ => "bigint",
        }
    }
}

/// The type both sides of a comparison are brought to, following Postgres's operator
/// resolution for the built-in operators (`int4 = numeric` compares as numeric,
/// `float4 = numeric` as float8, `bpchar = text` as text). None: no operator exists.
pub(crate) fn comparison_type(l: SqlType, r: SqlType) -> Option<SqlType> {
    use SqlType::*;
    match (l, r) {
        (Other, _) | (_, Other) => None,
        (Unknown, Unknown) => Some(Text),
        (Unknown, t) | (t, Unknown) => Some(t),
        (a, b) if a == b => Some(a),
        (a, b) if a.is_int() && b.is_int() => {
            Some(if a.int_rank() >= b.int_rank() { a } else { b })
        }
        (a, b) if a.is_number() && b.is_number() => Some(if a.is_float() || b.is_float() {
            Float8
        } else {
            Numeric
        }),
        (Bpchar, Varchar) | (Varchar, Bpchar) => Some(Bpchar),
        (a, b) if a.is_string() && b.is_string() => Some(Text),
        (a, b) if a.is_datetime() && b.is_datetime() => {
            Some(if a.datetime_rank() >= b.datetime_rank() {
                a
            } else {
                b
            })
        }
        _ => None,
    }
}

/// Postgres's `select_common_type` for a list of values (IN, ARRAY[], COALESCE, GREATEST):
/// numbers widen along their implicit casts (numeric to float4 to float8), and among string
/// types, which all convert to each other implicitly, the first one stays.
pub(crate) fn common_type(l: SqlType, r: SqlType) -> Option<SqlType> {
    use SqlType::*;
    let number_rank = |t: SqlType| match t {
        Int2 => 0,
        Int4 => 1,
        Int8 => 2,
        Numeric => 3,
        Float4 => 4,
        _ => 5,
    };
    match (l, r) {
        (a, b) if a.is_number() && b.is_number() => Some(if number_rank(a) >= number_rank(b) {
            a
        } else {
            b
        }),
        (a, b) if a.is_string() && b.is_string() => Some(a),
        _ => comparison_type(l, r),
    }
}

/// Result type of `+ - * /` on two operands, None if Postgres has no such operator.
pub(crate) fn arithmetic_type(l: SqlType, r: SqlType) -> Option<SqlType> {
    use SqlType::*;
    match (l, r) {
        (Unknown, Unknown) => None,
        (Unknown, t) | (t, Unknown) => t.is_number().then_some(t),
        (Float4, Float4) => Some(Float4),
        (a, b) if a.is_number() && b.is_number() => comparison_type(a, b),
        _ => None,
    }
}

/// Whether an implicit conversion exists (Postgres's `pg_cast` entries marked implicit).
pub(crate) fn implicit_cast_exists(from: SqlType, to: SqlType) -> bool {
    use SqlType::*;
    if from == to || from == Unknown {
        return true;
    }
    match (from, to) {
        // Postgres coerces an array element by element when the elements coerce.
        (Array(a), Array(b)) => implicit_cast_exists(*a, *b),
        (a, b) if a.is_int() && b.is_int() => a.int_rank() <= b.int_rank(),
        (a, Numeric) if a.is_int() => true,
        (a, b) if a.is_number() && b.is_float() => a != Float8,
        (a, b) if a.is_string() && b.is_string() => true,
        (a, b) if a.is_datetime() && b.is_datetime() => a.datetime_rank() <= b.datetime_rank(),
        _ => false,
    }
}

/// Whether `CAST(x AS to)` is accepted for an operand of type `from`.
pub(crate) fn explicit_cast_exists(from: SqlType, to: SqlType) -> bool {
    use SqlType::*;
    if implicit_cast_exists(from, to) || to.is_string() {
        // Every type has an I/O conversion to the string types.
        return to != Unknown && to != Other;
    }
    match (from, to) {
        (Other, _) => false,
        (Array(a), Array(b)) => explicit_cast_exists(*a, *b),
        (a, _) if a.is_string() => to != Other && to != Unknown,
        (a, b) if a.is_number() && b.is_number() => true,
        (Int4, Bool) | (Bool, Int4) => true,
        (Timestamp | Timestamptz, Date | Time) => true,
        (Timestamptz, Timestamp) => true,
        _ => false,
    }
}

fn char_length(len: &Option<CharacterLength>) -> Result<Option<u32>, String> {
    match len {
        None => Ok(None),
        Some(CharacterLength::IntegerLength { length, unit: None })
            if (1..=MAX_CHAR_LENGTH).contains(length) =>
        {
            Ok(u32::try_from(*length).ok())
        }
        Some(other) => Err(format!("invalid type modifier ({other})")),
    }
}

fn numeric_typmod(info: &ExactNumberInfo) -> Result<Typmod, String> {
    let (precision, scale) = match info {
        ExactNumberInfo::None => return Ok(Typmod::None),
        ExactNumberInfo::Precision(p) => (*p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
    };
    if !(1..=MAX_NUMERIC_PRECISION).contains(&precision) {
        return Err(format!(
            "NUMERIC precision {precision} must be between 1 and {MAX_NUMERIC_PRECISION}"
        ));
    }
    if !(-1000..=1000).contains(&scale) {
        return Err(format!(
            "NUMERIC scale {scale} must be between -1000 and 1000"
        ));
    }
    Ok(Typmod::Numeric {
        precision: precision as u32,
        scale: scale as i32,
    })
}

/// The cast target for a type name written in the clause; Err is the reason it is refused.
pub(crate) fn cast_target(dt: &DataType) -> Result<CastTarget, String> {
    use SqlType::*;
    let plain = |ty| Ok(CastTarget::plain(ty));
    let unsupported = || Err(format!("unknown or unsupported type {dt}"));
    match dt {
        DataType::Array(
            ArrayElemTypeDef::SquareBracket(elem, _) | ArrayElemTypeDef::Qualified(elem, _),
        ) => {
            // `int[3]` and `int ARRAY` are all just int[]: Postgres ignores array sizes.
            let elem = cast_target(elem)?;
            match elem.ty.array_of() {
                Some(ty) => Ok(CastTarget {
                    ty,
                    typmod: elem.typmod,
                }),
                None => unsupported(),
            }
        }
        DataType::Interval {
            fields: None,
            precision: None,
        } => plain(Interval),
        DataType::Int2(None) | DataType::SmallInt(None) => plain(Int2),
        DataType::Int4(None) | DataType::Int(None) | DataType::Integer(None) => plain(Int4),
        DataType::Int8(None) | DataType::BigInt(None) => plain(Int8),
        DataType::Float4 | DataType::Real => plain(Float4),
        DataType::Float8 | DataType::DoublePrecision | DataType::Double(ExactNumberInfo::None) => {
            plain(Float8)
        }
        DataType::Float(ExactNumberInfo::None) => plain(Float8),
        DataType::Float(ExactNumberInfo::Precision(p)) => match p {
            1..=24 => plain(Float4),
            25..=53 => plain(Float8),
            _ => Err(format!(
                "precision for type float must be between 1 and 53: {p}"
            )),
        },
        DataType::Numeric(info) | DataType::Decimal(info) | DataType::Dec(info) => Ok(CastTarget {
            ty: Numeric,
            typmod: numeric_typmod(info)?,
        }),
        DataType::Text => plain(Text),
        DataType::Varchar(len) | DataType::CharacterVarying(len) | DataType::CharVarying(len) => {
            Ok(CastTarget {
                ty: Varchar,
                typmod: char_length(len)?.map_or(Typmod::None, Typmod::Length),
            })
        }
        // `char` without a length means char(1) in Postgres.
        DataType::Char(len) | DataType::Character(len) => Ok(CastTarget {
            ty: Bpchar,
            typmod: Typmod::Length(char_length(len)?.unwrap_or(1)),
        }),
        DataType::Bool | DataType::Boolean => plain(Bool),
        DataType::Uuid => plain(Uuid),
        DataType::Date => plain(Date),
        DataType::Time(None, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => plain(Time),
        DataType::Timestamp(None, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            plain(Timestamp)
        }
        DataType::Timestamp(None, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            plain(Timestamptz)
        }
        DataType::Custom(name, modifiers) => {
            let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
                return unsupported();
            };
            let folded = if ident.quote_style.is_some() {
                ident.value.clone()
            } else {
                ident.value.to_ascii_lowercase()
            };
            let ty = match folded.strip_prefix('_') {
                Some(elem) => SqlType::from_typname(elem).and_then(SqlType::array_of),
                None => SqlType::from_typname(&folded),
            };
            let Some(ty) = ty else {
                return unsupported();
            };
            let typmod = match (ty, modifiers.as_slice()) {
                (_, []) => Typmod::None,
                (Varchar | Bpchar, [TypeModifier::Number(n, false)]) => match n.parse::<u64>() {
                    Ok(len) if (1..=MAX_CHAR_LENGTH).contains(&len) => Typmod::Length(len as u32),
                    _ => return Err(format!("invalid type modifier ({n})")),
                },
                _ => return unsupported(),
            };
            Ok(CastTarget { ty, typmod })
        }
        _ => unsupported(),
    }
}
