//! Table metadata as volt needs it to validate and encode shapes.

use serde::{Deserialize, Serialize};

/// One column of the table as Postgres reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    pub type_oid: u32,
    /// `pg_type.typname` of the column's type (`int4`, `text`, `_int4` for an array of
    /// int4, the enum's or the domain's own name for those).
    pub typname: String,
    pub not_null: bool,
    pub pk_index: Option<usize>,
    /// Array dimensions (`attndims`), 0 for scalars.
    pub dims: usize,
    /// `pg_attribute.atttypmod`: -1 when the type takes no modifier or none was given.
    /// `None` in shapes stored before volt recorded it: their header has no modifier keys.
    #[serde(default)]
    pub type_mod: Option<i32>,
    /// `typname` of the array's element type (`pg_type.typelem`), for array columns.
    /// Absent in shapes stored before volt recorded it; `describe` then strips the `_`.
    #[serde(default)]
    pub elem_typname: Option<String>,
    /// The labels of an enum column's type in their sort order; None for other types (and
    /// in shapes stored before volt recorded it). Where clauses compare enum columns with
    /// string literals only when they can check the literal is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enum_labels: Option<Vec<String>>,
}

/// A table and its columns in attribute order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnSchema>,
}

impl TableSchema {
    /// Whether `live`, just read from Postgres, still describes the table this schema was
    /// taken from. Details a stored schema predates (recorded as absent) are not compared:
    /// shapes stored by an older volt stay valid instead of all being refetched at once.
    pub fn still_describes(&self, live: &TableSchema) -> bool {
        self.oid == live.oid
            && self.schema == live.schema
            && self.name == live.name
            && self.columns.len() == live.columns.len()
            && self
                .columns
                .iter()
                .zip(&live.columns)
                .all(|(stored, live)| stored.still_describes(live))
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Primary-key column indexes in key order; every column when the table has no primary key.
    pub fn key_columns(&self) -> Vec<usize> {
        let mut pk: Vec<(usize, usize)> = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.pk_index.map(|p| (p, i)))
            .collect();
        if pk.is_empty() {
            return (0..self.columns.len()).collect();
        }
        pk.sort_unstable();
        pk.into_iter().map(|(_, i)| i).collect()
    }
}

/// The `electric-schema` description of one column, with Electric's key names
/// (`Electric.Schema`): every key but `type` is omitted when it does not apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ColumnDescription {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dims: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pk_index: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_null: bool,
    /// `varchar(n)`: n.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<i32>,
    /// `char(n)`, `bit(n)`, `varbit(n)`: n.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<i32>,
    /// `numeric(p, s)`: p; time types and intervals: fractional-second digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<i32>,
    /// `numeric(p, s)`: s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<i32>,
    /// Interval fields, e.g. `DAY TO SECOND`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<String>,
    /// The raw modifier of a type Electric does not interpret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_mod: Option<i32>,
}

/// Types whose modifier is a fractional-second precision (Electric's `@time_types`:
/// `timetz` plus its known types of the datetime category).
const TIME_TYPES: &[&str] = &["timetz", "date", "time", "timestamp", "timestamptz"];

/// Postgres' interval range bits (`INTERVAL_MASK` in datetime.h), in the order
/// Electric lists them.
const INTERVAL_FIELDS: &[(&str, i32)] = &[
    ("YEAR", 1 << 2),
    ("MONTH", 1 << 1),
    ("DAY", 1 << 3),
    ("HOUR", 1 << 10),
    ("MINUTE", 1 << 11),
    ("SECOND", 1 << 12),
];

/// `INTERVAL_FULL_RANGE`: no fields were given.
const INTERVAL_FULL_RANGE: i32 = 0x7fff;

/// Postgres' varlena header size, added to character and numeric modifiers.
const VARHDRSZ: i32 = 4;

/// A detail recorded in a stored schema must match; one the schema predates (`None`)
/// matches anything.
fn recorded_same<T: PartialEq>(stored: &Option<T>, live: &Option<T>) -> bool {
    stored.is_none() || stored == live
}

impl ColumnSchema {
    fn still_describes(&self, live: &ColumnSchema) -> bool {
        self.name == live.name
            && self.type_oid == live.type_oid
            && self.typname == live.typname
            && self.not_null == live.not_null
            && self.pk_index == live.pk_index
            && self.dims == live.dims
            && recorded_same(&self.type_mod, &live.type_mod)
            && recorded_same(&self.elem_typname, &live.elem_typname)
    }

    pub fn describe(&self) -> ColumnDescription {
        // Electric reports arrays by element type plus `dims`; an array column whose
        // attndims is 0 keeps its array typname and no dims.
        let (type_name, dims) = if self.dims > 0 {
            let elem = match &self.elem_typname {
                Some(e) => e.clone(),
                None => self
                    .typname
                    .strip_prefix('_')
                    .unwrap_or(&self.typname)
                    .to_string(),
            };
            (elem, Some(self.dims))
        } else {
            (self.typname.clone(), None)
        };
        let mut d = ColumnDescription {
            type_name,
            dims,
            pk_index: self.pk_index,
            not_null: self.not_null,
            ..ColumnDescription::default()
        };
        add_modifier(&mut d, self.type_mod.unwrap_or(-1));
        d
    }
}

/// Interpret `atttypmod` the way Electric's `add_modifier` clauses do, in their order
/// (the first that matches wins). An array column's atttypmod is its element's, so
/// `varchar(10)[]` is described like `varchar(10)`.
fn add_modifier(d: &mut ColumnDescription, type_mod: i32) {
    let ty = d.type_name.as_str();
    if type_mod > 0 && matches!(ty, "varchar" | "text") {
        d.max_length = Some(type_mod - VARHDRSZ);
    } else if type_mod > 0 && ty == "bpchar" {
        d.length = Some(type_mod - VARHDRSZ);
    } else if matches!(ty, "bit" | "varbit") {
        // Electric reports the modifier even when there is none (`varbit` → -1).
        d.length = Some(type_mod);
    } else if ty == "interval" && type_mod > -1 {
        // Range bits in the high 16 bits, precision in the low 16 (-1: none given).
        let range = i32::from((type_mod >> 16) as i16);
        let precision = i32::from(type_mod as i16);
        if range != INTERVAL_FULL_RANGE {
            let units: Vec<&str> = INTERVAL_FIELDS
                .iter()
                .filter(|(_, mask)| range & mask != 0)
                .map(|(unit, _)| *unit)
                .collect();
            d.fields = Some(match units.as_slice() {
                [unit] => (*unit).to_string(),
                _ => format!(
                    "{} TO {}",
                    units.first().unwrap_or(&""),
                    units.last().unwrap_or(&"")
                ),
            });
        }
        if precision != -1 {
            d.precision = Some(precision);
        }
    } else if type_mod > 0 && TIME_TYPES.contains(&ty) {
        d.precision = Some(type_mod);
    } else if ty == "numeric" && type_mod > -1 {
        // ((precision << 16) | scale) + VARHDRSZ, both halves read as signed 16 bits.
        let v = type_mod - VARHDRSZ;
        d.precision = Some(i32::from((v >> 16) as i16));
        d.scale = Some(i32::from(v as i16));
    } else if type_mod > -1 {
        // A type whose modifier Electric does not interpret: passed on as is. This also
        // catches `timestamp(0)` (modifier 0 is not > 0) and arrays with attndims 0.
        d.type_mod = Some(type_mod);
    }
}

/// A scalar column for the crate's tests: not null exactly when it is a key column.
#[cfg(test)]
pub(crate) fn test_column(
    name: &str,
    typname: &str,
    type_oid: u32,
    pk_index: Option<usize>,
) -> ColumnSchema {
    ColumnSchema {
        name: name.into(),
        type_oid,
        typname: typname.into(),
        not_null: pk_index.is_some(),
        pk_index,
        dims: 0,
        type_mod: None,
        elem_typname: None,
        enum_labels: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(typname: &str, type_mod: i32, dims: usize) -> ColumnSchema {
        ColumnSchema {
            name: "c".into(),
            type_oid: 0,
            typname: typname.into(),
            not_null: false,
            pk_index: None,
            dims,
            type_mod: Some(type_mod),
            elem_typname: typname.strip_prefix('_').map(str::to_string),
            enum_labels: None,
        }
    }

    fn header(c: &ColumnSchema) -> serde_json::Value {
        serde_json::to_value(c.describe()).unwrap()
    }

    #[test]
    fn character_modifiers_subtract_the_varlena_header() {
        // varchar(255) has atttypmod 259, char(3) 7.
        assert_eq!(
            header(&col("varchar", 259, 0)),
            serde_json::json!({"type": "varchar", "max_length": 255})
        );
        assert_eq!(
            header(&col("bpchar", 7, 0)),
            serde_json::json!({"type": "bpchar", "length": 3})
        );
        assert_eq!(
            header(&col("varchar", -1, 0)),
            serde_json::json!({"type": "varchar"})
        );
        assert_eq!(
            header(&col("text", -1, 0)),
            serde_json::json!({"type": "text"})
        );
    }

    #[test]
    fn bit_types_always_report_their_length_even_without_one() {
        assert_eq!(
            header(&col("bit", 8, 0)),
            serde_json::json!({"type": "bit", "length": 8})
        );
        assert_eq!(
            header(&col("varbit", -1, 0)),
            serde_json::json!({"type": "varbit", "length": -1})
        );
    }

    #[test]
    fn numeric_modifier_splits_into_precision_and_scale() {
        // numeric(10,2): ((10 << 16) | 2) + 4.
        assert_eq!(
            header(&col("numeric", (10 << 16 | 2) + 4, 0)),
            serde_json::json!({"type": "numeric", "precision": 10, "scale": 2})
        );
        assert_eq!(
            header(&col("numeric", -1, 0)),
            serde_json::json!({"type": "numeric"})
        );
    }

    #[test]
    fn interval_modifier_gives_fields_and_precision() {
        let typmod = |range: i32, precision: i32| (range << 16) | (precision & 0xffff);
        let day_to_second = (1 << 3) | (1 << 10) | (1 << 11) | (1 << 12);
        assert_eq!(
            header(&col("interval", typmod(day_to_second, 0xffff), 0)),
            serde_json::json!({"type": "interval", "fields": "DAY TO SECOND"})
        );
        assert_eq!(
            header(&col("interval", typmod(INTERVAL_FULL_RANGE, 3), 0)),
            serde_json::json!({"type": "interval", "precision": 3})
        );
        assert_eq!(
            header(&col("interval", typmod(1 << 12, 2), 0)),
            serde_json::json!({"type": "interval", "fields": "SECOND", "precision": 2})
        );
        assert_eq!(
            header(&col("interval", typmod((1 << 2) | (1 << 1), 0xffff), 0)),
            serde_json::json!({"type": "interval", "fields": "YEAR TO MONTH"})
        );
        assert_eq!(
            header(&col("interval", -1, 0)),
            serde_json::json!({"type": "interval"})
        );
    }

    #[test]
    fn time_precision_zero_is_reported_as_a_raw_type_mod() {
        // Electric only treats a positive modifier as a precision.
        assert_eq!(
            header(&col("timestamptz", 3, 0)),
            serde_json::json!({"type": "timestamptz", "precision": 3})
        );
        assert_eq!(
            header(&col("timetz", 2, 0)),
            serde_json::json!({"type": "timetz", "precision": 2})
        );
        assert_eq!(
            header(&col("timestamp", 0, 0)),
            serde_json::json!({"type": "timestamp", "type_mod": 0})
        );
    }

    #[test]
    fn arrays_are_described_by_element_type_and_modifier() {
        assert_eq!(
            header(&col("_varchar", 14, 1)),
            serde_json::json!({"type": "varchar", "dims": 1, "max_length": 10})
        );
        // attndims 0: the array typname, whose modifier Electric passes on raw.
        assert_eq!(
            header(&col("_varchar", 14, 0)),
            serde_json::json!({"type": "_varchar", "type_mod": 10 + 4})
        );
        // The element name comes from pg_type.typelem, not from stripping a `_`.
        let mut c = col("__weird", -1, 2);
        c.elem_typname = Some("_weird".into());
        assert_eq!(header(&c), serde_json::json!({"type": "_weird", "dims": 2}));
    }

    #[test]
    fn columns_stored_without_modifier_or_element_type_still_load() {
        let stored = r#"{"name":"c","type_oid":1015,"typname":"_varchar","not_null":true,"pk_index":0,"dims":1}"#;
        let c: ColumnSchema = serde_json::from_str(stored).unwrap();
        assert_eq!((c.type_mod, c.elem_typname.as_deref()), (None, None));
        assert_eq!(
            header(&c),
            serde_json::json!({"type": "varchar", "dims": 1, "pk_index": 0, "not_null": true})
        );
    }

    #[test]
    fn a_stored_schema_without_modifiers_still_describes_the_live_table() {
        let table = |columns| TableSchema {
            oid: 7,
            schema: "public".into(),
            name: "t".into(),
            columns,
        };
        let stored: ColumnSchema = serde_json::from_str(
            r#"{"name":"c","type_oid":0,"typname":"_varchar","not_null":false,"pk_index":null,"dims":1}"#,
        )
        .unwrap();
        let live = col("_varchar", 14, 1);
        assert!(table(vec![stored.clone()]).still_describes(&table(vec![live.clone()])));

        // A recorded modifier must match: varchar(10)[] became varchar(20)[].
        let recorded = live.clone();
        let widened = col("_varchar", 24, 1);
        assert!(!table(vec![recorded]).still_describes(&table(vec![widened])));

        // Anything else still counts.
        let mut retyped = live;
        retyped.typname = "_text".into();
        assert!(!table(vec![stored]).still_describes(&table(vec![retyped])));
    }
}
