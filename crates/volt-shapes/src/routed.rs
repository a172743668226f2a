//! A change on its way to the shapes it affects. Shapes on the same table with the same
//! columns and replica mode turn a change into the same JSON line (but for two headers),
//! so the first of them renders it and the others copy its bytes: a transaction hitting
//! 750 such shapes is rendered once per change, not 750 times.

use std::sync::{Arc, Mutex};

use crate::change::Change;
use crate::shape::{LogItem, Plan, Replica, Shape, write_head};

/// A change shared by the shapes it goes to, with the lines rendered from it so far.
#[derive(Debug)]
pub struct RoutedChange {
    pub change: Change,
    rendered: Mutex<Vec<Rendering>>,
    /// Goes to one shape only: nothing to share, nothing kept.
    alone: bool,
    /// Every shape it goes to matches its row (the filter routed it exactly): rendered
    /// without evaluating their clauses again.
    known_match: bool,
}

/// One rendering of the change, and who may reuse it.
#[derive(Debug)]
struct Rendering {
    table: Arc<crate::TableSchema>,
    selected: Vec<usize>,
    replica: Replica,
    kind: Kind,
    /// `None`: the change is an update of none of these columns.
    tail: Option<Arc<[u8]>>,
}

/// What a shape made of the change (a where clause can turn an update into an insert or
/// a delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Delete,
    Update,
}

impl RoutedChange {
    pub fn new(change: Change) -> RoutedChange {
        RoutedChange {
            change,
            rendered: Mutex::new(Vec::new()),
            alone: false,
            known_match: false,
        }
    }

    /// The filter says every shape this goes to matches its row (`Filter::affected`).
    pub fn with_known_match(mut self, known: bool) -> RoutedChange {
        self.known_match = known;
        self
    }

    /// A change routed to one shape only: its rendering is not kept for others.
    pub fn for_one_shape(change: Change) -> RoutedChange {
        RoutedChange {
            alone: true,
            ..RoutedChange::new(change)
        }
    }

    /// Drop the renderings kept so far: once every shape routed to has written its
    /// lines, they are only memory (a Consumer still waiting for its snapshot holds its
    /// changes, and renders them again when it applies them).
    pub fn forget_renderings(&self) {
        if let Ok(mut rendered) = self.rendered.lock() {
            *rendered = Vec::new();
        }
    }

    fn find(&self, shape: &Shape, kind: Kind) -> Option<Option<Arc<[u8]>>> {
        let rendered = self.rendered.lock().ok()?;
        rendered
            .iter()
            .find(|r| r.renders_like(shape, kind))
            .map(|r| r.tail.clone())
    }

    fn keep(&self, shape: &Shape, kind: Kind, tail: Option<Arc<[u8]>>) {
        let Ok(mut rendered) = self.rendered.lock() else {
            return;
        };
        // Another shape may have rendered it meanwhile: one copy is enough.
        if !rendered.iter().any(|r| r.renders_like(shape, kind)) {
            rendered.push(Rendering {
                table: shape.table.clone(),
                selected: shape.selected.clone(),
                replica: shape.def.replica,
                kind,
                tail,
            });
        }
    }
}

impl Rendering {
    /// Key and values depend on the table (its name and key columns), the columns
    /// selected and the replica mode, and on nothing else of the shape.
    fn renders_like(&self, shape: &Shape, kind: Kind) -> bool {
        self.kind == kind
            && self.replica == shape.def.replica
            && self.selected == shape.selected
            && (Arc::ptr_eq(&self.table, &shape.table) || *self.table == *shape.table)
    }
}

/// One item of a shape's log as a line: its head written per shape, its tail shared.
#[derive(Debug, Clone)]
pub struct RenderedItem {
    pub op: u64,
    extra: Option<(String, String)>,
    tail: Tail,
}

/// The bytes after an item's head: its own, or shared with the shapes that render the
/// change alike.
#[derive(Debug, Clone)]
enum Tail {
    Own(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Tail {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Tail::Own(bytes) => bytes,
            Tail::Shared(bytes) => bytes,
        }
    }
}

impl RenderedItem {
    fn of(item: &LogItem, relation: (&str, &str), xid: u32, lsn: u64) -> RenderedItem {
        RenderedItem {
            op: item.op,
            extra: item.extra.clone(),
            tail: tail_of(item, relation, xid, lsn),
        }
    }

    /// Append the item's line: the bytes `LogItem::write_json` writes.
    pub fn write_line(&self, out: &mut Vec<u8>, last: bool) {
        write_head(out, self.extra.as_ref(), last);
        out.extend_from_slice(&self.tail);
    }
}

fn tail_of(item: &LogItem, relation: (&str, &str), xid: u32, lsn: u64) -> Tail {
    let mut tail = Vec::with_capacity(256);
    item.write_tail(&mut tail, relation, xid, lsn);
    Tail::Own(tail)
}

impl Shape {
    /// `convert`, as lines of the transaction `xid` committed at `lsn`, reusing what a
    /// shape that renders alike already rendered from the same change.
    pub fn render(&self, routed: &RoutedChange, xid: u32, lsn: u64) -> Vec<RenderedItem> {
        let mut items = Vec::new();
        self.render_into(routed, xid, lsn, &mut items);
        items
    }

    /// `render`, onto the end of `out` (a Vec the caller reuses from change to change).
    pub fn render_into(
        &self,
        routed: &RoutedChange,
        xid: u32,
        lsn: u64,
        out: &mut Vec<RenderedItem>,
    ) {
        let relation = (self.table.schema.as_str(), self.table.name.as_str());
        let op = routed.change.op;
        let plan = self.plan_known(&routed.change, routed.known_match);
        let kind = match &plan {
            Plan::Skip => return,
            // Rare, and its headers name the other key: not shared.
            Plan::KeyChange { old, new } => {
                out.extend(
                    self.key_change_items(op, old, new)
                        .iter()
                        .map(|i| RenderedItem::of(i, relation, xid, lsn)),
                );
                return;
            }
            Plan::Insert(_) => Kind::Insert,
            Plan::Delete(_) => Kind::Delete,
            Plan::Update { .. } => Kind::Update,
        };
        let tail = if routed.alone {
            // Nobody to share it with: kept as written, not copied into an Arc.
            let mut tail = Vec::with_capacity(256);
            self.write_single_tail(&mut tail, op, &plan, relation, xid, lsn)
                .then_some(Tail::Own(tail))
        } else {
            let tail = match routed.find(self, kind) {
                Some(tail) => tail,
                None => {
                    let mut tail = Vec::with_capacity(256);
                    let tail = self
                        .write_single_tail(&mut tail, op, &plan, relation, xid, lsn)
                        .then(|| Arc::from(tail));
                    routed.keep(self, kind, tail.clone());
                    tail
                }
            };
            tail.map(Tail::Shared)
        };
        out.extend(tail.map(|tail| RenderedItem {
            op,
            extra: None,
            tail,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{ChangeKind, Relation, RelationColumn, Value};
    use crate::schema::{TableSchema, test_column};
    use crate::shape::ShapeDef;

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            oid: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: vec![
                test_column("id", "int8", 20, Some(0)),
                test_column("grp", "int8", 20, None),
                test_column("title", "text", 25, None),
            ],
        })
    }

    fn shape(table: &Arc<TableSchema>, columns: Option<&str>, where_sql: Option<&str>) -> Shape {
        shape_with(table, columns, where_sql, None)
    }

    fn shape_with(
        table: &Arc<TableSchema>,
        columns: Option<&str>,
        where_sql: Option<&str>,
        replica: Option<&str>,
    ) -> Shape {
        let def = ShapeDef::from_params(Some("items"), where_sql, vec![], columns, replica, None)
            .expect("valid definition");
        Shape::new(def, table.clone()).expect("valid shape")
    }

    fn row(values: [Option<&str>; 3]) -> Vec<Value> {
        values
            .iter()
            .map(|v| v.map_or(Value::Null, |t| Value::Text(t.into())))
            .collect()
    }

    fn change(kind: ChangeKind) -> RoutedChange {
        let relation = Relation {
            oid: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: ["id", "grp", "title"]
                .iter()
                .map(|n| RelationColumn {
                    name: n.to_string(),
                    type_oid: if *n == "title" { 25 } else { 20 },
                    is_key: *n == "id",
                })
                .collect(),
        };
        RoutedChange::new(Change {
            relation: Arc::new(relation),
            op: 4,
            kind,
        })
    }

    /// Lines as `convert` and `write_json` make them, for every `last`.
    fn converted(shape: &Shape, routed: &RoutedChange, last: bool) -> Vec<Vec<u8>> {
        shape
            .convert(&routed.change)
            .iter()
            .map(|item| {
                let mut line = Vec::new();
                item.write_json(&mut line, ("public", "items"), 9, 77, last);
                line
            })
            .collect()
    }

    fn rendered(shape: &Shape, routed: &RoutedChange, last: bool) -> Vec<Vec<u8>> {
        shape
            .render(routed, 9, 77)
            .iter()
            .map(|item| {
                let mut line = Vec::new();
                item.write_line(&mut line, last);
                line
            })
            .collect()
    }

    #[test]
    fn shapes_that_render_alike_share_one_rendering_byte_identical_to_convert() {
        let table = table();
        let shapes = [
            shape(&table, None, Some("grp = 1")),
            shape(&table, None, Some("grp = 1 AND id > 0")),
            shape(&table, None, None),
            shape(&table, Some("id,title"), None),
            shape(&table, Some("id,title"), Some("title LIKE 'b%'")),
            shape(&table, None, Some("grp = 2")),
            shape_with(&table, None, None, Some("full")),
            shape_with(&table, Some("title,id"), Some("grp = 1"), Some("full")),
            shape_with(&table, Some("id,title,id"), None, None),
        ];
        let kinds = [
            ChangeKind::Insert {
                new: row([Some("1"), Some("1"), Some("a \"quoted\" title")]),
            },
            ChangeKind::Delete {
                old: row([Some("1"), Some("1"), None]),
            },
            // A key with a slash and a quote, values that need escaping.
            ChangeKind::Insert {
                new: row([Some("a/\"b"), Some("1"), Some("tab\tline\nend")]),
            },
            // Moves into `grp = 2`, out of `grp = 1`; a title update for the others.
            ChangeKind::Update {
                old: Some(row([Some("1"), Some("1"), Some("a")])),
                new: row([Some("1"), Some("2"), Some("b")]),
            },
            // A grp-only update: nothing for the `id,title` shapes.
            ChangeKind::Update {
                old: Some(row([Some("1"), Some("1"), Some("a")])),
                new: row([Some("1"), Some("3"), Some("a")]),
            },
            // A key change.
            ChangeKind::Update {
                old: Some(row([Some("1"), Some("1"), Some("a")])),
                new: row([Some("5"), Some("1"), Some("b")]),
            },
        ];
        for kind in kinds {
            let routed = change(kind);
            for last in [false, true] {
                for shape in &shapes {
                    assert_eq!(
                        rendered(shape, &routed, last),
                        converted(shape, &routed, last),
                        "{:?} for {:?}",
                        routed.change.kind,
                        shape.def
                    );
                }
            }
            // One rendering per (columns, what the change is for the shape) at most.
            assert!(routed.rendered.lock().unwrap().len() <= 8);
        }
    }

    #[test]
    fn a_change_for_one_shape_renders_the_same_and_keeps_nothing() {
        let table = table();
        let shape = shape(&table, None, Some("grp = 1"));
        let kind = ChangeKind::Insert {
            new: row([Some("1"), Some("1"), Some("t")]),
        };
        let shared = change(kind.clone());
        let alone = RoutedChange::for_one_shape(change(kind).change);
        assert_eq!(
            rendered(&shape, &alone, true),
            rendered(&shape, &shared, true)
        );
        assert!(alone.rendered.lock().unwrap().is_empty());
        assert_eq!(shared.rendered.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_change_known_to_match_renders_as_when_its_clause_is_evaluated() {
        let table = table();
        let shape = shape(&table, None, Some("grp = 1"));
        for kind in [
            ChangeKind::Insert {
                new: row([Some("1"), Some("1"), Some("t")]),
            },
            ChangeKind::Delete {
                old: row([Some("1"), Some("1"), None]),
            },
        ] {
            let evaluated = change(kind.clone());
            let known = RoutedChange::for_one_shape(change(kind).change).with_known_match(true);
            assert_eq!(
                rendered(&shape, &known, true),
                rendered(&shape, &evaluated, true)
            );
            assert_eq!(rendered(&shape, &known, true).len(), 1);
        }
    }

    #[test]
    fn shapes_with_other_columns_do_not_reuse_a_rendering() {
        let table = table();
        let all = shape(&table, None, None);
        let some = shape(&table, Some("id,title"), None);
        let routed = change(ChangeKind::Insert {
            new: row([Some("1"), Some("1"), Some("t")]),
        });
        let a = rendered(&all, &routed, false);
        let b = rendered(&some, &routed, false);
        assert_ne!(a, b);
        assert_eq!(routed.rendered.lock().unwrap().len(), 2);
        assert_eq!(rendered(&all, &routed, false), a);
        assert_eq!(routed.rendered.lock().unwrap().len(), 2);
        // Forgotten once every shape wrote its lines; rendering again gives the same.
        routed.forget_renderings();
        assert!(routed.rendered.lock().unwrap().is_empty());
        assert_eq!(rendered(&some, &routed, false), b);
    }
}
