//! The difference engine of a sync: which rows the target lacks, which differ, and which it
//! holds that the source no longer has, per table.
//!
//! It walks both sides with full validation's [`Walker`] (key pages of the source, the same key
//! range of the target, both hashed on the client), and only for the pages whose hashes differ
//! matches rows key by key. Out come the rows to insert and update (whole source rows, with the
//! columns that differ) and the keys to delete, plus what the closing validation compares again
//! ([`Recheck`]: the keys written, and how many rows were found equal). Memory holds the differing rows and one page
//! per side per segment being walked.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::discover::Table;
use crate::error::Result;
use crate::pack::Shape;
use crate::validate::{canonical, key_of, KeyRange, Options, Page, Recheck, RowSide, Walker};
use crate::value::Value;

/// A source row the target holds with other values, and the positions of the columns that differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub row: Vec<Value>,
    pub columns: Vec<usize>,
}

/// What differs in one table, in key order.
#[derive(Debug, Clone, Default)]
pub struct TableDiff {
    pub table: String,
    /// Source rows the target lacks.
    pub inserts: Vec<Vec<Value>>,
    pub updates: Vec<Update>,
    /// Key values of the rows only the target holds.
    pub deletes: Vec<Vec<Value>>,
    /// What the closing validation compares again.
    pub recheck: Recheck,
    /// Source rows compared.
    pub compared: u64,
}

impl TableDiff {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty() && self.deletes.is_empty()
    }

    fn absorb(&mut self, mut part: TableDiff) {
        self.inserts.append(&mut part.inserts);
        self.updates.append(&mut part.updates);
        self.deletes.append(&mut part.deletes);
        self.compared += part.compared;
    }

    /// Records a page whose hashes differ: rows matched by key.
    fn page(&mut self, shape: &Shape, page: Page) {
        self.compared += page.source.len() as u64;
        let by_key: HashMap<Vec<u8>, &Vec<Value>> =
            page.target.iter().map(|r| (key_of(shape, r), r)).collect();
        let mut matched = HashSet::new();
        for row in page.source {
            let key = key_of(shape, row);
            match by_key.get(&key) {
                None => self.inserts.push(row.clone()),
                Some(other) => {
                    let columns = changed_columns(row, other);
                    if !columns.is_empty() {
                        self.updates.push(Update {
                            row: row.clone(),
                            columns,
                        });
                    }
                }
            }
            matched.insert(key);
        }
        // In the target's key order.
        for row in page.target {
            if !matched.contains(&key_of(shape, row)) {
                self.deletes.push(shape.key_values(row));
            }
        }
    }
}

fn canonical_one(v: &Value) -> Vec<u8> {
    canonical(std::slice::from_ref(v))
}

/// Positions whose values differ exactly (type and bits), not by SQL comparison: 1 and 1.0, or
/// TEXT and BLOB of the same bytes, differ.
pub fn changed_columns(source: &[Value], target: &[Value]) -> Vec<usize> {
    source
        .iter()
        .zip(target)
        .enumerate()
        .filter(|(_, (a, b))| canonical_one(a) != canonical_one(b))
        .map(|(i, _)| i)
        .collect()
}

/// Compares one table on both sides. `source_rows`: the source's row count (to choose segments).
pub fn diff_table(
    source: &dyn RowSide,
    target: &dyn RowSide,
    table: &Table,
    shape: &Shape,
    options: Options,
    source_rows: u64,
) -> Result<TableDiff> {
    let walker = Walker::new(source, target, table, shape, options);
    let ranges: Vec<KeyRange> = walker.ranges(source_rows)?;
    let parts = walker.walk_all(&ranges, TableDiff::default, |part, page| {
        if page.equal {
            part.compared += page.source.len() as u64;
        } else {
            part.page(shape, page);
        }
        Ok(())
    })?;
    let mut diff = TableDiff {
        table: table.name.clone(),
        ..TableDiff::default()
    };
    for part in parts {
        diff.absorb(part);
    }
    diff.recheck.equal_rows = diff.compared - (diff.inserts.len() + diff.updates.len()) as u64;
    diff.recheck.keys = diff
        .inserts
        .iter()
        .chain(diff.updates.iter().map(|u| &u.row))
        .map(|r| shape.key_values(r))
        .chain(diff.deletes.iter().cloned())
        .collect();
    Ok(diff)
}

/// What a sync would do to one table: counts and the first keys of each kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TableChanges {
    pub table: String,
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
    pub first_inserts: Vec<String>,
    pub first_updates: Vec<String>,
    pub first_deletes: Vec<String>,
}

/// How many keys of each kind a listing names.
pub const FIRST_KEYS: usize = 10;

impl TableChanges {
    pub fn of(diff: &TableDiff, shape: &Shape) -> TableChanges {
        TableChanges {
            table: diff.table.clone(),
            insert: diff.inserts.len() as u64,
            update: diff.updates.len() as u64,
            delete: diff.deletes.len() as u64,
            first_inserts: diff
                .inserts
                .iter()
                .take(FIRST_KEYS)
                .map(|r| shape.key_text(r))
                .collect(),
            first_updates: diff
                .updates
                .iter()
                .take(FIRST_KEYS)
                .map(|u| shape.key_text(&u.row))
                .collect(),
            first_deletes: diff
                .deletes
                .iter()
                .take(FIRST_KEYS)
                .map(|k| shape.key_text_of(k))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        use crate::discover::{Column, TableKind};
        let t = Table {
            name: "t".into(),
            sql: String::new(),
            kind: TableKind::Rowid {
                rowid_alias: Some("id".into()),
            },
            columns: vec![Column::new("id", "INTEGER", 1), Column::new("v", "", 0)],
            foreign_keys: vec![],
            unique: vec![],
        };
        Shape::new(&t, &[])
    }

    fn row(id: i64, v: &str) -> Vec<Value> {
        vec![Value::Integer(id), Value::Text(v.as_bytes().to_vec())]
    }

    #[test]
    fn a_differing_page_yields_inserts_updates_and_deletes_in_key_order() {
        let shape = shape();
        let source = vec![row(1, "a"), row(2, "b"), row(4, "d"), row(6, "f")];
        let target = vec![
            row(1, "a"),
            row(2, "B"),
            row(3, "c"),
            row(5, "e"),
            row(6, "f"),
        ];
        let mut diff = TableDiff::default();
        diff.page(
            &shape,
            Page {
                source: &source,
                target: &target,
                equal: false,
            },
        );
        assert_eq!(diff.inserts, vec![row(4, "d")]);
        assert_eq!(
            diff.updates,
            vec![Update {
                row: row(2, "b"),
                columns: vec![1]
            }]
        );
        assert_eq!(
            diff.deletes,
            vec![vec![Value::Integer(3)], vec![Value::Integer(5)]]
        );
        assert_eq!(diff.compared, 4);
    }

    #[test]
    fn values_differ_by_type_and_bits_not_by_sql_equality() {
        let a = vec![
            Value::Integer(1),
            Value::Real(0.0),
            Value::Text(b"x".to_vec()),
            Value::Null,
        ];
        let b = vec![
            Value::Real(1.0),
            Value::Real(-0.0),
            Value::Blob(b"x".to_vec()),
            Value::Null,
        ];
        assert_eq!(changed_columns(&a, &b), vec![0, 1, 2]);
        assert!(changed_columns(&a, &a).is_empty());
    }
}
