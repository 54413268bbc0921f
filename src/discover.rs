//! Discovery: reads a database's catalog (tables, columns, keys, foreign keys, indexes, views,
//! triggers, virtual tables, `sqlite_sequence`, the planner's statistics in `sqlite_stat1`) into
//! a [`Schema`].
//!
//! It works over any [`Catalog`], so the same code discovers a SQLite file (forward run) and a D1
//! database through its API (rollback run). The `plan` stage turns a `Schema` into a load order.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::value::{quote_ident, Value};

/// Anything that answers read-only catalog queries with rows of values.
pub trait Catalog {
    fn query(&self, sql: &str) -> Result<Vec<Vec<Value>>>;

    /// Several queries' rows; a catalog across a network answers them in as few round trips as
    /// it can.
    fn query_many(&self, sqls: &[String]) -> Result<Vec<Vec<Vec<Value>>>> {
        sqls.iter().map(|sql| self.query(sql)).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TableKind {
    /// A table with a rowid (`rowid_alias` names its INTEGER PRIMARY KEY column, if any).
    Rowid {
        rowid_alias: Option<String>,
    },
    WithoutRowid,
    /// A virtual table of the named module (fts5, rtree, ...).
    Virtual {
        module: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub decl_type: String,
    pub not_null: bool,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub pk: i64,
    /// 0 ordinary, 1 hidden (virtual tables), 2 and 3 generated (virtual, stored).
    pub hidden: i64,
}

impl Column {
    /// An ordinary, nullable column; `pk` is its position in the primary key (0: not in it).
    pub fn new(name: &str, decl_type: &str, pk: i64) -> Column {
        Column {
            name: name.to_string(),
            decl_type: decl_type.to_string(),
            not_null: false,
            pk,
            hidden: 0,
        }
    }

    /// Columns whose values are inserted: not generated, not hidden.
    pub fn is_stored_data(&self) -> bool {
        self.hidden == 0
    }

    /// The column's type affinity, by SQLite's rules (§3.1 of "Datatypes In SQLite").
    pub fn affinity(&self) -> Affinity {
        let t = self.decl_type.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if ["CHAR", "CLOB", "TEXT"].iter().any(|w| t.contains(w)) {
            Affinity::Text
        } else if t.is_empty() || t.contains("BLOB") {
            Affinity::Blob
        } else if ["REAL", "FLOA", "DOUB"].iter().any(|w| t.contains(w)) {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

/// A column's type affinity: the storage class its values most likely have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForeignKey {
    pub parent: String,
    pub columns: Vec<String>,
    /// The parent's columns the key refers to, in the order of `columns`; empty when the key
    /// names none (it then refers to the parent's primary key).
    pub parent_columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub sql: String,
    pub kind: TableKind,
    pub columns: Vec<Column>,
    pub foreign_keys: Vec<ForeignKey>,
    /// The column sets of the table's UNIQUE indexes and constraints (read only for tables
    /// with foreign keys); an expression in an index shows as an empty name.
    pub unique: Vec<Vec<String>>,
}

impl Table {
    /// The columns copied as data, in table order.
    pub fn data_columns(&self) -> Vec<&Column> {
        self.columns.iter().filter(|c| c.is_stored_data()).collect()
    }

    /// The name under which the rowid is selected and inserted, if the table has a rowid that is
    /// not already a column: `rowid`, `_rowid_` or `oid`, whichever no column shadows.
    pub fn hidden_rowid(&self) -> Option<&'static str> {
        match &self.kind {
            TableKind::Rowid {
                rowid_alias: Some(_),
            }
            | TableKind::WithoutRowid => None,
            TableKind::Rowid { rowid_alias: None } | TableKind::Virtual { .. } => {
                ["rowid", "_rowid_", "oid"].into_iter().find(|alias| {
                    !self
                        .columns
                        .iter()
                        .any(|c| c.name.eq_ignore_ascii_case(alias))
                })
            }
        }
    }

    /// The columns that identify a row, in key order, as SQL expressions.
    pub fn key_columns(&self) -> Vec<String> {
        match &self.kind {
            TableKind::Rowid {
                rowid_alias: Some(alias),
            } => vec![quote_ident(alias)],
            TableKind::WithoutRowid => {
                let mut pk: Vec<&Column> = self.columns.iter().filter(|c| c.pk > 0).collect();
                pk.sort_by_key(|c| c.pk);
                pk.iter().map(|c| quote_ident(&c.name)).collect()
            }
            _ => vec![self.hidden_rowid().unwrap_or("rowid").to_string()],
        }
    }

    pub fn is_virtual(&self) -> bool {
        matches!(self.kind, TableKind::Virtual { .. })
    }

    /// For an FTS5 table with external content (`content=<table>`), that table's name. Such an
    /// index is derived from its content table: it is rebuilt there (`'rebuild'`), not copied.
    pub fn external_content(&self) -> Option<String> {
        self.fts5_option("content").filter(|v| !v.is_empty())
    }

    /// An FTS5 table that keeps its content (its own or an external table's), so that
    /// `'rebuild'` can make its index again; a contentless one (`content=''`) cannot.
    pub fn fts5_with_content(&self) -> bool {
        matches!(&self.kind, TableKind::Virtual { module } if module == "fts5")
            && self.fts5_option("content").is_none_or(|v| !v.is_empty())
    }

    /// The value of an FTS5 table's `key=value` option, unquoted.
    fn fts5_option(&self, key: &str) -> Option<String> {
        if !matches!(&self.kind, TableKind::Virtual { module } if module == "fts5") {
            return None;
        }
        let open = self.sql.find('(')?;
        let args = &self.sql[open + 1..self.sql.rfind(')')?];
        split_arguments(args).into_iter().find_map(|arg| {
            let (k, value) = arg.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(key)
                .then(|| unquote(value.trim()))
        })
    }
}

/// An index, view or trigger, created after the data.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaObject {
    pub kind: String,
    pub name: String,
    pub table: String,
    pub sql: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SequenceRow {
    pub rowid: i64,
    pub name: String,
    pub seq: Value,
}

/// A row of `sqlite_stat1`, the planner's statistics (`ANALYZE`, `PRAGMA optimize`): its table,
/// its index (NULL for the table's own row count) and the numbers, kept as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StatRow {
    pub rowid: i64,
    pub tbl: String,
    pub idx: Value,
    pub stat: Value,
}

/// The reason a shadow table (an FTS5 index's `_data`, `_idx`, ...) is skipped.
pub const SHADOW_TABLE: &str = "shadow table of a virtual table";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    /// Tables with data to copy, in catalog order (ordinary and virtual).
    pub tables: Vec<Table>,
    /// Indexes, views and triggers, in catalog order.
    pub objects: Vec<SchemaObject>,
    pub sequence: Vec<SequenceRow>,
    /// The `sqlite_stat1` rows of the tables copied (and of their shadow tables), in rowid order.
    pub stat1: Vec<StatRow>,
    /// Tables left out, with why (internal, D1's own, shadow tables).
    pub skipped: Vec<(String, String)>,
}

impl Schema {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Whether `sqlite_stat1` rows of table `tbl` belong to this schema: `tbl` is one of its
    /// tables, or a shadow table of one of its virtual tables (`<name>_data`, ...).
    pub fn owns_statistics(&self, tbl: &str) -> bool {
        if self.table(tbl).is_some() {
            return true;
        }
        let shadow = self
            .skipped
            .iter()
            .any(|(n, why)| why == SHADOW_TABLE && n.eq_ignore_ascii_case(tbl));
        let lower = tbl.to_lowercase();
        shadow
            && self.tables.iter().any(|t| {
                t.is_virtual() && lower.starts_with(&format!("{}_", t.name.to_lowercase()))
            })
    }

    /// Keeps the `sqlite_stat1` rows whose table this schema holds ([`Schema::owns_statistics`]).
    pub fn retain_owned_statistics(&mut self) {
        let owned: Vec<bool> = self
            .stat1
            .iter()
            .map(|s| self.owns_statistics(&s.tbl))
            .collect();
        let mut owned = owned.into_iter();
        self.stat1.retain(|_| owned.next().unwrap_or(false));
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(b) | Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Null => String::new(),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        Value::Real(r) => *r as i64,
        other => text(other).parse().unwrap_or(0),
    }
}

/// True for names D1 reserves for itself.
pub fn is_d1_internal(name: &str) -> bool {
    name.len() >= 4 && name.as_bytes()[..4].eq_ignore_ascii_case(b"_cf_")
}

/// Reads the whole catalog, in two rounds of queries: the lists of tables and objects, then
/// every table's columns, keys and unique sets (a catalog across a network answers each round
/// in one request, see [`Catalog::query_many`]).
pub fn discover(db: &dyn Catalog) -> Result<Schema> {
    discover_rounds(db, &[], false, Stat1::Listed, false)
}

/// Whether, and when, `sqlite_stat1` is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stat1 {
    Skip,
    /// In the second round, when the lists hold it.
    Listed,
    /// In the first round: a target expected to hold it.
    Expected,
}

/// [`discover`] in one round of queries where the catalog allows it: every table's columns,
/// keys and unique sets are asked for beside the lists (the pragma functions joined to
/// `pragma_table_list`). `sqlite_sequence` and `sqlite_stat1`, when the lists hold them, are
/// left to the caller ([`Later`]), to be read with its next request: asked for in the first
/// round, a missing `sqlite_sequence` failed the round, and `sqlite_stat1` took a round of its
/// own. A catalog that refuses the joined queries takes the rounds of [`discover`] (and reads
/// both itself). A catalog across a network (a rollback's D1) saves a round trip or two.
pub fn discover_at_once(db: &dyn Catalog) -> Result<(Schema, Later)> {
    discover_rounds_leaving(db, &[], false, Stat1::Listed, true, true)
        .or_else(|_| discover(db).map(|schema| (schema, Later::default())))
}

/// What [`discover_at_once`] left to its caller: the queries of `sqlite_sequence` and
/// `sqlite_stat1` that the catalog lists (none when it lists neither), for the caller to send
/// with its next request and hand back to [`Later::fill`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Later {
    pub queries: Vec<String>,
    sequence: bool,
    stat1: bool,
}

impl Later {
    /// Puts the rows of [`Later::queries`] (in their order, read as the catalog reads them) into
    /// `schema`, keeping those of its tables (as [`select_tables`] does).
    pub fn fill(&self, schema: &mut Schema, rows: Vec<Vec<Vec<Value>>>) {
        let mut rows = rows.into_iter();
        if self.sequence {
            fill_sequence(schema, rows.next().unwrap_or_default());
            let tables: Vec<String> = schema.tables.iter().map(|t| t.name.clone()).collect();
            schema
                .sequence
                .retain(|s| tables.iter().any(|t| t.eq_ignore_ascii_case(&s.name)));
        }
        if self.stat1 {
            fill_stat1(schema, rows.next().unwrap_or_default());
        }
    }
}

/// `sqlite_sequence`'s rows (rowid, name, seq) into `schema`.
fn fill_sequence(schema: &mut Schema, rows: Vec<Vec<Value>>) {
    for row in rows {
        schema.sequence.push(SequenceRow {
            rowid: int(&row[0]),
            name: text(&row[1]),
            seq: row[2].clone(),
        });
    }
}

/// `sqlite_stat1`'s rows (rowid, tbl, idx, stat) into `schema`, those of its tables kept.
fn fill_stat1(schema: &mut Schema, rows: Vec<Vec<Value>>) {
    for row in rows {
        schema.stat1.push(StatRow {
            rowid: int(&row[0]),
            tbl: text(&row[1]),
            idx: row[2].clone(),
            stat: row[3].clone(),
        });
    }
    // Rows of D1's own tables, of tables not copied, or left behind by hand, stay behind.
    schema.retain_owned_statistics();
}

/// Every table's columns, foreign keys and unique sets, each row led by the table's name:
/// [`table_queries`] of every table at once. The outer loop's filter keeps SQLite's and D1's
/// own tables (whose pragmas D1 refuses) from the pragma functions.
fn all_tables_queries() -> [String; 3] {
    let filter = "WHERE m.schema = 'main' AND m.type IN ('table', 'virtual') \
        AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_cf\\_%' ESCAPE '\\'";
    [
        format!(
            "SELECT m.name, c.name, c.type, c.\"notnull\", c.pk, c.hidden FROM pragma_table_list AS m \
             JOIN pragma_table_xinfo(m.name) AS c {filter} ORDER BY m.name, c.cid"
        ),
        format!(
            "SELECT m.name, f.id, f.\"table\", f.\"from\", f.\"to\" FROM pragma_table_list AS m \
             JOIN pragma_foreign_key_list(m.name) AS f {filter} ORDER BY m.name, f.id, f.seq"
        ),
        format!(
            "SELECT m.name, il.name, ii.name, il.origin FROM pragma_table_list AS m \
             JOIN pragma_index_list(m.name) AS il JOIN pragma_index_info(il.name) AS ii {filter} \
             AND il.\"unique\" ORDER BY m.name, il.seq, ii.seqno"
        ),
    ]
}

/// Rows led by a table's name, grouped by it (the name taken off).
fn by_table(rows: Vec<Vec<Value>>) -> HashMap<String, Vec<Vec<Value>>> {
    let mut out: HashMap<String, Vec<Vec<Value>>> = HashMap::new();
    for mut row in rows {
        if !row.is_empty() {
            let name = text(&row.remove(0));
            out.entry(name).or_default().push(row);
        }
    }
    out
}

/// [`discover`], asking for the columns, keys and unique sets of the `expected` tables in the
/// first round already (a table that does not exist answers no rows), and for `sqlite_sequence`
/// when `sequence` expects it: when the catalog holds just those (a target validated against
/// its source), one round trip reads it all. A `sqlite_sequence` expected and absent fails that
/// round, which is then asked again without it. With `statistics`, `sqlite_stat1` is read too:
/// in the first round when tables are expected (it is then expected too), else in the second.
pub fn discover_expecting(
    db: &dyn Catalog,
    expected: &[String],
    sequence: bool,
    statistics: bool,
) -> Result<Schema> {
    let stat1 = stat1_of(statistics, expected);
    match discover_rounds(db, expected, sequence, stat1, false) {
        Err(_) if sequence || stat1 == Stat1::Expected => {
            let stat1 = if statistics {
                Stat1::Listed
            } else {
                Stat1::Skip
            };
            discover_rounds(db, expected, false, stat1, false)
        }
        done => done,
    }
}

fn discover_rounds(
    db: &dyn Catalog,
    expected: &[String],
    sequence: bool,
    stat1: Stat1,
    at_once: bool,
) -> Result<Schema> {
    discover_rounds_leaving(db, expected, sequence, stat1, at_once, false).map(|(s, _)| s)
}

/// [`discover_rounds`]; with `leave`, `sqlite_sequence` and `sqlite_stat1` not read in the
/// first round are left to the caller ([`Later`]) rather than read in a second.
fn discover_rounds_leaving(
    db: &dyn Catalog,
    expected: &[String],
    sequence: bool,
    stat1: Stat1,
    at_once: bool,
    leave: bool,
) -> Result<(Schema, Later)> {
    let mut schema = Schema::default();
    let mut later = Later::default();
    let queries = round_queries(expected, sequence, stat1, at_once);
    let expected: Vec<&String> = expected.iter().filter(|n| !is_d1_internal(n)).collect();
    let mut first = db.query_many(&queries)?.into_iter();
    let (list, rows) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let mut early: HashMap<String, [Vec<Vec<Value>>; 3]> = HashMap::new();
    for name in &expected {
        let mut next = || first.next().unwrap_or_default();
        early.insert(name.to_string(), [next(), next(), next()]);
    }
    if at_once {
        let mut next = || by_table(first.next().unwrap_or_default());
        let (mut columns, mut keys, mut uniques) = (next(), next(), next());
        // A table with no foreign keys or unique sets has no rows in those queries.
        for r in &list {
            let name = text(&r[0]);
            if let Some(c) = columns.remove(&name) {
                let k = keys.remove(&name).unwrap_or_default();
                let u = uniques.remove(&name).unwrap_or_default();
                early.insert(name, [c, k, u]);
            }
        }
    }
    let kind_of = |name: &str| {
        list.iter()
            .find(|r| text(&r[0]) == name)
            .map(|r| (text(&r[1]), int(&r[2]) != 0))
    };

    // Tables found, with their kind from the list, before their columns are read.
    let mut found: Vec<(String, String, String, bool)> = Vec::new();
    for row in rows {
        let (kind, name, table, sql) = (text(&row[0]), text(&row[1]), text(&row[2]), text(&row[3]));
        if kind != "table" {
            if sql.is_empty() || is_d1_internal(&table) || table.starts_with("sqlite_") {
                continue; // automatic indexes, and objects of internal tables
            }
            schema.objects.push(SchemaObject {
                kind,
                name,
                table,
                sql,
            });
            continue;
        }
        if name == "sqlite_sequence" {
            continue;
        }
        if name == "sqlite_stat1" {
            continue; // its rows are read below
        }
        if name.starts_with("sqlite_stat") {
            schema.skipped.push((
                name,
                "SQLite's sampled query-planner statistics (ANALYZE in a SQLite built with \
                 SQLITE_ENABLE_STAT4), not copied: D1 has no sqlite_stat4 (sqlite_stat1 is copied)"
                    .into(),
            ));
            continue;
        }
        if name.starts_with("sqlite_") {
            schema.skipped.push((name, "SQLite internal table".into()));
            continue;
        }
        if is_d1_internal(&name) {
            schema.skipped.push((name, "D1's own table".into()));
            continue;
        }
        let (list_type, without_rowid) = kind_of(&name).unwrap_or(("table".into(), false));
        if list_type == "shadow" {
            schema.skipped.push((name, SHADOW_TABLE.into()));
            continue;
        }
        found.push((name, sql, list_type, without_rowid));
    }

    let early_sequence = sequence.then(|| first.next().unwrap_or_default());
    let early_stat1 = (stat1 == Stat1::Expected).then(|| first.next().unwrap_or_default());
    let has_sequence = list.iter().any(|r| text(&r[0]) == "sqlite_sequence");
    let mut second = Vec::new();
    for (name, ..) in found.iter().filter(|f| !early.contains_key(&f.0)) {
        second.extend(table_queries(name));
    }
    if has_sequence && early_sequence.is_none() {
        if leave {
            later.queries.push(SEQUENCE_SQL.to_string());
            later.sequence = true;
        } else {
            second.push(SEQUENCE_SQL.to_string());
        }
    }
    let has_stat1 = early_stat1.is_some()
        || (stat1 == Stat1::Listed && list.iter().any(|r| text(&r[0]) == "sqlite_stat1"));
    if has_stat1 && early_stat1.is_none() {
        if leave {
            later.queries.push(STAT1_SQL.to_string());
            later.stat1 = true;
        } else {
            second.push(STAT1_SQL.to_string());
        }
    }
    let mut answers = if second.is_empty() {
        Vec::new().into_iter()
    } else {
        db.query_many(&second)?.into_iter()
    };
    for (name, sql, list_type, without_rowid) in found {
        let [column_rows, keys, uniques] = match early.remove(&name) {
            Some(answered) => answered,
            None => {
                let mut next = || answers.next().unwrap_or_default();
                [next(), next(), next()]
            }
        };
        let columns = columns(column_rows);
        let kind =
            if list_type == "virtual" || sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL") {
                TableKind::Virtual {
                    module: virtual_module(&sql),
                }
            } else if without_rowid {
                TableKind::WithoutRowid
            } else {
                TableKind::Rowid {
                    rowid_alias: rowid_alias(&columns, &uniques),
                }
            };
        let foreign_keys = if matches!(kind, TableKind::Virtual { .. }) {
            Vec::new()
        } else {
            foreign_keys(keys)
        };
        let unique = if foreign_keys.is_empty() {
            Vec::new()
        } else {
            unique_sets(uniques)
        };
        schema.tables.push(Table {
            name,
            sql,
            kind,
            columns,
            foreign_keys,
            unique,
        });
    }

    if has_sequence && !later.sequence {
        let rows = match early_sequence {
            Some(rows) => rows,
            None => answers.next().unwrap_or_default(),
        };
        fill_sequence(&mut schema, rows);
    }
    if has_stat1 && !later.stat1 {
        let rows = match early_stat1 {
            Some(rows) => rows,
            None => answers.next().unwrap_or_default(),
        };
        fill_stat1(&mut schema, rows);
    }
    Ok((schema, later))
}

/// The first round of [`discover_expecting`]'s queries (same arguments): the table list, the
/// schema, the `expected` tables' columns and keys, `sqlite_sequence` and `sqlite_stat1` when
/// they are expected. A side across a network may send them along with other statements and
/// answer them through [`Answered`].
pub fn first_queries(expected: &[String], sequence: bool, statistics: bool) -> Vec<String> {
    round_queries(expected, sequence, stat1_of(statistics, expected), false)
}

/// When [`discover_expecting`] reads `sqlite_stat1`.
fn stat1_of(statistics: bool, expected: &[String]) -> Stat1 {
    match (statistics, expected.is_empty()) {
        (false, _) => Stat1::Skip,
        (true, true) => Stat1::Listed,
        (true, false) => Stat1::Expected,
    }
}

/// The first round's queries of [`discover_rounds`]: the lists, the expected tables', (at once)
/// every table's, then `sqlite_sequence`'s and an expected `sqlite_stat1`'s.
fn round_queries(expected: &[String], sequence: bool, stat1: Stat1, at_once: bool) -> Vec<String> {
    // PRAGMA table_list tells shadow tables and virtual tables apart (SQLite 3.37+, allowed on D1).
    let mut queries = vec![
        "SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'".to_string(),
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid".to_string(),
    ];
    // D1 refuses the pragmas on its own tables.
    for name in expected.iter().filter(|n| !is_d1_internal(n)) {
        queries.extend(table_queries(name));
    }
    if at_once {
        queries.extend(all_tables_queries());
    }
    if sequence {
        queries.push(SEQUENCE_SQL.to_string());
    }
    if stat1 == Stat1::Expected {
        queries.push(STAT1_SQL.to_string());
    }
    queries
}

/// A catalog whose rows for some queries were read already (sent along with other statements):
/// those queries are answered from them, once; any other goes to `inner`.
pub struct Answered<'a> {
    inner: &'a dyn Catalog,
    /// The queries answered already, and each one's rows; taken by the first `query_many`.
    read: std::sync::Mutex<Option<(Vec<String>, QueryRows)>>,
}

/// Each query's rows.
type QueryRows = Vec<Vec<Vec<Value>>>;

impl<'a> Answered<'a> {
    pub fn new(inner: &'a dyn Catalog, queries: Vec<String>, rows: Vec<Vec<Vec<Value>>>) -> Self {
        Answered {
            inner,
            read: std::sync::Mutex::new(Some((queries, rows))),
        }
    }
}

impl Catalog for Answered<'_> {
    fn query(&self, sql: &str) -> Result<Vec<Vec<Value>>> {
        self.inner.query(sql)
    }

    fn query_many(&self, sqls: &[String]) -> Result<Vec<Vec<Vec<Value>>>> {
        let mut read = self.read.lock().expect("answered lock");
        if read.as_ref().is_some_and(|(queries, _)| queries == sqls) {
            return Ok(read.take().expect("rows read").1);
        }
        drop(read);
        self.inner.query_many(sqls)
    }
}

const SEQUENCE_SQL: &str = "SELECT rowid, name, seq FROM sqlite_sequence ORDER BY rowid";
const STAT1_SQL: &str = "SELECT rowid, tbl, idx, stat FROM sqlite_stat1 ORDER BY rowid";

/// A table's columns, foreign keys and unique sets, in that order.
fn table_queries(table: &str) -> [String; 3] {
    [
        columns_sql(table),
        foreign_keys_sql(table),
        unique_sets_sql(table),
    ]
}

fn columns_sql(table: &str) -> String {
    format!(
        "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo({})",
        crate::value::quote_text(table)
    )
}

fn columns(rows: Vec<Vec<Value>>) -> Vec<Column> {
    rows.iter()
        .map(|r| Column {
            name: text(&r[0]),
            decl_type: text(&r[1]),
            not_null: int(&r[2]) != 0,
            pk: int(&r[3]),
            hidden: int(&r[4]),
        })
        .collect()
}

fn foreign_keys_sql(table: &str) -> String {
    format!(
        "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list({}) ORDER BY id, seq",
        crate::value::quote_text(table)
    )
}

fn foreign_keys(rows: Vec<Vec<Value>>) -> Vec<ForeignKey> {
    let mut out: Vec<(i64, ForeignKey)> = Vec::new();
    for r in rows {
        let id = int(&r[0]);
        let to = (r[3] != Value::Null).then(|| text(&r[3]));
        match out.last_mut() {
            Some((last, fk)) if *last == id => {
                fk.columns.push(text(&r[2]));
                fk.parent_columns.extend(to);
            }
            _ => out.push((
                id,
                ForeignKey {
                    parent: text(&r[1]),
                    columns: vec![text(&r[2])],
                    parent_columns: to.into_iter().collect(),
                },
            )),
        }
    }
    out.into_iter().map(|(_, fk)| fk).collect()
}

/// The column sets of a table's UNIQUE indexes (constraints included).
fn unique_sets_sql(table: &str) -> String {
    format!(
        "SELECT il.name, ii.name, il.origin FROM pragma_index_list({t}) AS il \
         JOIN pragma_index_info(il.name) AS ii WHERE il.\"unique\" ORDER BY il.seq, ii.seqno",
        t = crate::value::quote_text(table)
    )
}

fn unique_sets(rows: Vec<Vec<Value>>) -> Vec<Vec<String>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in rows {
        let (index, column) = (text(&r[0]), text(&r[1]));
        match out.last_mut() {
            Some((last, cols)) if *last == index => cols.push(column),
            _ => out.push((index, vec![column])),
        }
    }
    out.into_iter().map(|(_, cols)| cols).collect()
}

/// The arguments of a module call, split at the commas outside quotes and brackets.
fn split_arguments(args: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quote: Option<char> = None;
    for c in args.chars() {
        match (quote, c) {
            (Some(q), c) if c == q || (q == '[' && c == ']') => quote = None,
            (None, '\'' | '"' | '`' | '[') => quote = Some(c),
            (None, ',') => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        out.last_mut().expect("one argument").push(c);
    }
    out
}

/// A bare, quoted (`'x'`, `"x"`, `` `x` ``) or bracketed name as it is.
fn unquote(text: &str) -> String {
    let mut chars = text.chars();
    match (chars.next(), text.chars().last()) {
        (Some(q @ ('\'' | '"' | '`')), Some(e)) if e == q && text.len() >= 2 => {
            let inner = &text[1..text.len() - 1];
            inner.replace(&format!("{q}{q}"), &q.to_string())
        }
        (Some('['), Some(']')) => text[1..text.len() - 1].to_string(),
        _ => text.to_string(),
    }
}

/// The INTEGER PRIMARY KEY column that is the rowid, if any. `INTEGER PRIMARY KEY DESC` is not
/// one (SQLite's quirk): such a key has an index of its own (origin `pk` in `index_list`, read
/// with the unique sets), and the table a rowid apart from it.
fn rowid_alias(columns: &[Column], unique_indexes: &[Vec<Value>]) -> Option<String> {
    if unique_indexes
        .iter()
        .any(|r| r.get(2).is_some_and(|o| text(o) == "pk"))
    {
        return None;
    }
    let pk: Vec<&Column> = columns.iter().filter(|c| c.pk > 0).collect();
    match pk.as_slice() {
        [only] if only.decl_type.eq_ignore_ascii_case("INTEGER") => Some(only.name.clone()),
        _ => None,
    }
}

/// The module name of `CREATE VIRTUAL TABLE x USING module(...)`.
fn virtual_module(sql: &str) -> String {
    let upper = sql.to_ascii_uppercase();
    upper
        .find(" USING ")
        .map(|at| {
            sql[at + 7..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Keeps only the tables the configuration asks for; an unknown name is an error.
pub fn select_tables(schema: &mut Schema, include: &[String], exclude: &[String]) -> Result<()> {
    for name in include.iter().chain(exclude) {
        if schema.table(name).is_none() {
            return Err(Error::Config(format!(
                "table {name:?} in MIGRATION_TABLES / MIGRATION_EXCLUDE_TABLES is not in the source"
            )));
        }
    }
    let keep = |t: &Table| {
        (include.is_empty() || include.iter().any(|n| n.eq_ignore_ascii_case(&t.name)))
            && !exclude.iter().any(|n| n.eq_ignore_ascii_case(&t.name))
    };
    let dropped: Vec<String> = schema
        .tables
        .iter()
        .filter(|t| !keep(t))
        .map(|t| t.name.clone())
        .collect();
    schema.tables.retain(keep);
    let kept = |name: &str| !dropped.iter().any(|d| d.eq_ignore_ascii_case(name));
    schema
        .objects
        .retain(|o| o.kind == "view" || kept(&o.table));
    schema.sequence.retain(|s| {
        kept(&s.name)
            && schema
                .tables
                .iter()
                .any(|t| t.name.eq_ignore_ascii_case(&s.name))
    });
    schema.retain_owned_statistics();
    for name in dropped {
        schema
            .skipped
            .push((name, "excluded by configuration".into()));
    }
    check_rowids(schema)
}

/// Refuses a selected rowid table whose rowid SQL cannot name: columns called `rowid`, `oid`
/// and `_rowid_` all shadow it, so its rows can be neither read by key nor inserted under the
/// same rowids (the copy would not be exact).
fn check_rowids(schema: &Schema) -> Result<()> {
    let unreachable: Vec<String> = schema
        .tables
        .iter()
        .filter(|t| {
            matches!(t.kind, TableKind::Rowid { rowid_alias: None }) && t.hidden_rowid().is_none()
        })
        .map(|t| {
            format!(
                "table {:?} has columns named rowid, oid and _rowid_, which hide its rowid from SQL: \
                 its rows cannot be read by key or copied under the same rowids; rename one of them \
                 (ALTER TABLE {} RENAME COLUMN ...) or leave the table out (MIGRATION_EXCLUDE_TABLES)",
                t.name,
                quote_ident(&t.name)
            )
        })
        .collect();
    if unreachable.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "nothing was written:\n  {}",
            unreachable.join("\n  ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_name_is_read_from_the_ddl() {
        assert_eq!(
            virtual_module("CREATE VIRTUAL TABLE docs USING fts5(title, body)"),
            "fts5"
        );
        assert_eq!(
            virtual_module("create virtual table r using RTree_i32(id, a, b)"),
            "rtree_i32"
        );
    }

    #[test]
    fn external_content_is_read_from_the_fts5_arguments() {
        let t = |sql: &str| Table {
            name: "f".into(),
            sql: sql.into(),
            kind: TableKind::Virtual {
                module: "fts5".into(),
            },
            columns: vec![],
            foreign_keys: vec![],
            unique: vec![],
        };
        assert_eq!(
            t("CREATE VIRTUAL TABLE f USING fts5(\"a, b\", content='it''s', content_rowid='id')")
                .external_content(),
            Some("it's".to_string())
        );
        assert_eq!(
            t("CREATE VIRTUAL TABLE f USING fts5(a, content = docs)").external_content(),
            Some("docs".to_string())
        );
        assert_eq!(
            t("CREATE VIRTUAL TABLE f USING fts5(a, content='')").external_content(),
            None
        );
        assert_eq!(
            t("CREATE VIRTUAL TABLE f USING fts5(a, b)").external_content(),
            None
        );
    }

    #[test]
    fn d1_internal_names_are_case_insensitive() {
        assert!(is_d1_internal("_cf_KV"));
        assert!(is_d1_internal("_CF_metadata"));
        assert!(!is_d1_internal("cf_table"));
        // Found by the random schemas: a name whose fourth byte is inside a character.
        assert!(!is_d1_internal("ew ünïcödé"));
        assert!(!is_d1_internal("日本"));
    }
}
