//! The SQLite side: opening a source file read-only, answering catalog queries, and reading a
//! table's rows in key order, batch by batch (keyset pagination: `WHERE key > last ORDER BY key`).
//!
//! Feeds `pack` in the forward run and `validate` in both directions.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::discover::Catalog;
use crate::error::{Error, Result};
use crate::pack::Shape;
use crate::value::{quote_ident, Value};

/// How long a reader of the source (and the snapshot's copy) waits for an application's write
/// lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens an existing SQLite file read-only and checks that it is a readable database.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let bad = |message: String| Error::Source {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(bad("no such file (MIGRATION_SQLITE_PATH)".into()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| bad(e.to_string()))?;
    if let Some(left) = unreadable_in_place(path, &conn) {
        return Err(bad(format!(
            "{}; MIGRATION_SNAPSHOT=true (the default) reads a copy of it \
             with its {} instead",
            left.why(),
            left.suffix()
        )));
    }
    // An application's commit on a loaded machine can hold its lock for seconds: wait for it
    // as the snapshot does, rather than refuse a source that is only busy.
    conn.busy_timeout(LOCK_WAIT)
        .map_err(|e| bad(e.to_string()))?;
    // Literals of extreme REALs are written `m*pow(2,e)`, as for D1; this SQLite build lacks pow.
    conn.create_scalar_function(
        "pow",
        2,
        rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC
            | rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |ctx| Ok(ctx.get::<f64>(0)?.powf(ctx.get::<f64>(1)?)),
    )
    .map_err(|e| bad(e.to_string()))?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
            bad("the database is locked by another writer; retry when it is free".into())
        }
        other => bad(format!("not a readable SQLite database: {other}")),
    })?;
    Ok(conn)
}

/// Why SQLite cannot read a source in place through a read-only connection: a file beside it
/// that only a writer could resolve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeftBeside {
    /// WAL mode, a `-wal` file and no `-shm`, in a folder this user cannot write (no `-shm` can
    /// be made): a read-only volume, another user's files.
    WalWithoutShm,
    /// A hot `-journal`: a transaction an application left unfinished (it crashed or was
    /// killed), which must be rolled back before the file can be read.
    HotJournal,
}

impl LeftBeside {
    /// The file beside the source that holds what is missing.
    pub fn suffix(self) -> &'static str {
        match self {
            LeftBeside::WalWithoutShm => "-wal",
            LeftBeside::HotJournal => "-journal",
        }
    }

    fn why(self) -> &'static str {
        match self {
            LeftBeside::WalWithoutShm => {
                "it is in WAL mode with a -wal file but no -shm, in a folder this user cannot \
                 write: SQLite cannot read it in place"
            }
            LeftBeside::HotJournal => {
                "its -journal holds a transaction an application left unfinished (it crashed or \
                 was killed): SQLite must roll it back before the file can be read, and sources \
                 are opened read-only, never changed"
            }
        }
    }
}

/// What keeps `conn` from reading the file at `path` in place, if anything (see [`LeftBeside`]).
/// Nothing can be writing such a file: a writer would hold the `-shm`, or its journal would
/// not be hot.
pub fn unreadable_in_place(path: &Path, conn: &Connection) -> Option<LeftBeside> {
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let failure = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .err()?;
    let rusqlite::Error::SqliteFailure(f, _) = failure else {
        return None;
    };
    if f.code == rusqlite::ErrorCode::CannotOpen
        && beside("-wal").is_file()
        && !beside("-shm").exists()
    {
        return Some(LeftBeside::WalWithoutShm);
    }
    // SQLITE_READONLY_ROLLBACK
    if f.extended_code == 776 && beside("-journal").is_file() {
        return Some(LeftBeside::HotJournal);
    }
    None
}

pub fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(t.to_vec()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Catalog queries over a SQLite connection.
pub struct SqliteCatalog<'a>(pub &'a Connection);

impl Catalog for SqliteCatalog<'_> {
    fn query(&self, sql: &str) -> Result<Vec<Vec<Value>>> {
        let mut stmt = self.0.prepare(sql)?;
        let n = stmt.column_count();
        let rows = stmt.query_map([], |r| {
            (0..n)
                .map(|i| r.get_ref(i).map(value))
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

/// Number of rows in a table.
pub fn count_rows(conn: &Connection, table: &str) -> Result<u64> {
    count_from(conn, &quote_ident(table))
}

/// Number of rows a FROM clause (a table, or a transform's subquery) yields.
pub fn count_from(conn: &Connection, from: &str) -> Result<u64> {
    let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {from}"), [], |r| r.get(0))?;
    Ok(n as u64)
}

/// The keyset query of a shape: the first page when `after` is `None`, else the page after it.
pub fn page_sql(
    shape: &Shape,
    columns: &str,
    filter: &str,
    has_after: bool,
    limit: usize,
) -> String {
    let keys = shape.key_exprs.join(", ");
    let mut conditions = Vec::new();
    if has_after {
        let marks = vec!["?"; shape.key_exprs.len()].join(", ");
        conditions.push(format!("({keys}) > ({marks})"));
    }
    if !filter.is_empty() {
        conditions.push(format!("({filter})"));
    }
    let mut sql = format!("SELECT {columns} FROM {}", shape.read_from);
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY {keys} LIMIT {limit}"));
    sql
}

/// Reads rows of `shape` in key order after `after` (exclusive), `batch` rows at a time,
/// handing each batch to `each` until the table ends or `each` returns false.
pub fn read_batches(
    conn: &Connection,
    shape: &Shape,
    filter: &str,
    batch: usize,
    mut after: Option<Vec<Value>>,
    mut each: impl FnMut(Vec<Vec<Value>>) -> Result<bool>,
) -> Result<()> {
    let first = page_sql(shape, &shape.select_list(), filter, false, batch);
    let next = page_sql(shape, &shape.select_list(), filter, true, batch);
    let mut stmt_first = conn.prepare(&first)?;
    let mut stmt_next = conn.prepare(&next)?;
    loop {
        let (rows, cut_short) = match &after {
            None => collect(&mut stmt_first, &[], BATCH_BYTES)?,
            Some(key) => {
                let params: Vec<rusqlite::types::Value> = key.iter().map(to_sql).collect();
                let refs: Vec<&dyn rusqlite::ToSql> =
                    params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
                collect(&mut stmt_next, &refs, BATCH_BYTES)?
            }
        };
        let Some(last) = rows.last() else {
            return Ok(());
        };
        let full = rows.len() == batch || cut_short;
        after = Some(
            shape
                .key_positions
                .iter()
                .map(|&p| last[p].clone())
                .collect(),
        );
        if !each(rows)? || !full {
            return Ok(());
        }
    }
}

/// A batch stops early at this many bytes of values, so memory stays bounded however wide the
/// rows; the next batch starts after the last row taken.
pub const BATCH_BYTES: usize = 8 << 20;

/// The rows of a query, up to `budget` bytes of values; true when cut short by the budget.
fn collect(
    stmt: &mut rusqlite::Statement<'_>,
    params: &[&dyn rusqlite::ToSql],
    budget: usize,
) -> Result<(Vec<Vec<Value>>, bool)> {
    let n = stmt.column_count();
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut rows = stmt.query(params)?;
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            let v = value(r.get_ref(i)?);
            bytes += v.size();
            row.push(v);
        }
        out.push(row);
        if bytes > budget {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

pub fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Integer(i) => V::Integer(*i),
        Value::Real(r) => V::Real(*r),
        Value::Text(b) => match String::from_utf8(b.clone()) {
            Ok(s) => V::Text(s),
            Err(_) => V::Blob(b.clone()),
        },
        Value::Blob(b) => V::Blob(b.clone()),
    }
}

/// A SQLite file as one side of a validation: a small pool of read-only connections.
pub struct SqliteSide {
    path: std::path::PathBuf,
    label: &'static str,
    pool: std::sync::Mutex<Vec<Connection>>,
    /// Table (lower case) → the FROM clause reading it, for tables a transform changes.
    reads: std::collections::HashMap<String, String>,
    /// Tables (lower case) whose reads compute values: these are given their columns' affinity,
    /// as inserting them into D1 does.
    computed: std::collections::HashSet<String>,
}

impl SqliteSide {
    pub fn new(path: &Path, label: &'static str) -> Result<SqliteSide> {
        let first = open_read_only(path)?;
        Ok(SqliteSide {
            path: path.to_path_buf(),
            label,
            pool: std::sync::Mutex::new(vec![first]),
            reads: std::collections::HashMap::new(),
            computed: std::collections::HashSet::new(),
        })
    }

    /// Reads the tables a transform changes through its subqueries (`Transformed::reads`), so
    /// the side shows the rows as D1 should hold them.
    pub fn reading(mut self, reads: std::collections::HashMap<String, String>) -> SqliteSide {
        self.reads = reads;
        self
    }

    /// Gives the values read from these tables (a transform computes some) their columns'
    /// affinity, so they compare with what D1 stored for them.
    pub fn computing(mut self, tables: impl IntoIterator<Item = String>) -> SqliteSide {
        self.computed = tables.into_iter().map(|t| t.to_lowercase()).collect();
        self
    }

    /// The FROM clause that reads `table` on this side (a transform's subquery, or the table).
    pub fn read_from(&self, table: &str) -> String {
        self.reads
            .get(&table.to_lowercase())
            .cloned()
            .unwrap_or_else(|| quote_ident(table))
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.pool.lock().expect("pool").pop();
        let conn = match conn {
            Some(c) => c,
            None => open_read_only(&self.path)?,
        };
        let result = f(&conn);
        self.pool.lock().expect("pool").push(conn);
        result
    }
}

impl crate::validate::RowSide for SqliteSide {
    fn label(&self) -> &'static str {
        self.label
    }

    fn local(&self) -> bool {
        true
    }

    fn count(&self, table: &str) -> Result<u64> {
        self.with(|c| count_from(c, &self.read_from(table)))
    }

    fn surveys(&self, shapes: &[&Shape]) -> Result<Vec<crate::validate::Survey>> {
        self.with(|c| {
            shapes
                .iter()
                .map(|shape| {
                    let (count, width) = c.query_row(
                        &crate::validate::survey_sql(shape, &self.read_from(&shape.table)),
                        [],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<f64>>(1)?)),
                    )?;
                    Ok(crate::validate::survey_of(Some(count as u64), width))
                })
                .collect()
        })
    }

    fn select_each(
        &self,
        shape: &Shape,
        tail: &str,
        values: &[i64],
    ) -> Result<crate::validate::Rows> {
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM {} {tail}",
                shape.select_list(),
                self.read_from(&shape.table)
            );
            let mut stmt = c.prepare_cached(&sql)?;
            values
                .iter()
                .map(|v| {
                    let (rows, _) = collect(&mut stmt, &[v], usize::MAX)?;
                    self.typed(shape, rows)
                })
                .collect()
        })
    }

    fn at_ranks(&self, shape: &Shape, order: &str, ranks: &[u64]) -> Result<crate::validate::Rows> {
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {order}",
                shape.select_list(),
                self.read_from(&shape.table)
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let n = stmt.column_count();
            let mut rows = stmt.query([])?;
            let mut out = Vec::with_capacity(ranks.len());
            // `at`: rows read so far; `current`: the last of them (none past the end).
            let mut at = 0u64;
            let mut current: Option<Vec<Value>> = None;
            let mut ended = false;
            for &rank in ranks {
                // Ranks ascend; a repeated rank is the row already at hand.
                while at <= rank && !ended {
                    current = match rows.next()? {
                        Some(r) => Some(
                            (0..n)
                                .map(|i| r.get_ref(i).map(value))
                                .collect::<rusqlite::Result<_>>()?,
                        ),
                        None => None,
                    };
                    ended = current.is_none();
                    at += 1;
                }
                let row = if at == rank + 1 {
                    current.clone()
                } else {
                    None
                };
                out.push(self.typed(shape, row.into_iter().collect())?);
            }
            Ok(out)
        })
    }

    fn select(&self, shape: &Shape, tails: &[String]) -> Result<Vec<Vec<Vec<Value>>>> {
        self.with(|c| {
            tails
                .iter()
                .map(|tail| {
                    let sql = format!(
                        "SELECT {} FROM {} {tail}",
                        shape.select_list(),
                        self.read_from(&shape.table)
                    );
                    let mut stmt = c.prepare_cached(&sql)?;
                    let (rows, _) = collect(&mut stmt, &[], usize::MAX)?;
                    self.typed(shape, rows)
                })
                .collect()
        })
    }
}

impl SqliteSide {
    /// Rows of `shape` as the table stores them: a computed table's (a transform's) with its
    /// columns' affinities applied.
    fn typed(&self, shape: &Shape, rows: Vec<Vec<Value>>) -> Result<Vec<Vec<Value>>> {
        if self.computed.contains(&shape.table.to_lowercase()) {
            with_affinity(&shape.affinities, rows)
        } else {
            Ok(rows)
        }
    }
}

/// The rows as columns of these affinities would store them: SQLite itself applies them, by
/// inserting the rows into an in-memory table of those column types and reading them back.
pub fn with_affinity(
    affinities: &[crate::discover::Affinity],
    rows: Vec<Vec<Value>>,
) -> Result<Vec<Vec<Value>>> {
    use crate::discover::Affinity;
    if rows.is_empty() {
        return Ok(rows);
    }
    let mem = Connection::open_in_memory()?;
    let columns: Vec<String> = affinities
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let declared = match a {
                Affinity::Integer => "INTEGER",
                Affinity::Text => "TEXT",
                Affinity::Blob => "BLOB",
                Affinity::Real => "REAL",
                Affinity::Numeric => "NUMERIC",
            };
            format!("c{i} {declared}")
        })
        .collect();
    mem.execute_batch(&format!("CREATE TABLE t({})", columns.join(", ")))?;
    let marks = vec!["?"; affinities.len()].join(", ");
    {
        let mut insert = mem.prepare(&format!("INSERT INTO t VALUES ({marks})"))?;
        for row in &rows {
            let params: Vec<ValueRef<'_>> = row
                .iter()
                .map(|v| match v {
                    Value::Null => ValueRef::Null,
                    Value::Integer(i) => ValueRef::Integer(*i),
                    Value::Real(r) => ValueRef::Real(*r),
                    Value::Text(b) => ValueRef::Text(b),
                    Value::Blob(b) => ValueRef::Blob(b),
                })
                .collect();
            insert.execute(rusqlite::params_from_iter(
                params
                    .iter()
                    .map(|v| rusqlite::types::ToSqlOutput::Borrowed(*v)),
            ))?;
        }
    }
    let mut select = mem.prepare("SELECT * FROM t ORDER BY rowid")?;
    Ok(collect(&mut select, &[], usize::MAX)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Affinity;

    /// Validation's sample of a table without one integer key took a statement per key, each
    /// skipping `rank` rows (OFFSET): a fleet's tenants spent most of the migrator's time there.
    /// The SQLite side now walks the keys once and prepares a repeated statement once; the
    /// rows are those the statements written out select, ranks past the end included.
    #[test]
    fn one_walk_and_one_prepared_statement_pick_the_rows_the_statements_written_out_pick() {
        use crate::validate::RowSide;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a INTEGER, b TEXT, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
             CREATE TABLE n (id INTEGER PRIMARY KEY, v);",
        )
        .unwrap();
        for i in 0..300i64 {
            conn.execute(
                "INSERT INTO t VALUES (?, ?, ?)",
                rusqlite::params![i % 17, format!("k{i}"), i * 3],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO n VALUES (?, ?)",
                rusqlite::params![i * 7 - 500, i],
            )
            .unwrap();
        }
        drop(conn);
        let schema =
            crate::discover::discover(&SqliteCatalog(&open_read_only(&path).unwrap())).unwrap();
        let side = SqliteSide::new(&path, "source").unwrap();
        let t = Shape::new(schema.table("t").unwrap(), &[]);
        let order = t.key_exprs.join(", ");
        let ranks = [0u64, 1, 1, 2, 150, 299, 300, 1000];
        let written: Vec<String> = ranks
            .iter()
            .map(|r| format!("ORDER BY {order} LIMIT 1 OFFSET {r}"))
            .collect();
        let walked = side.at_ranks(&t, &order, &ranks).unwrap();
        assert_eq!(walked, side.select(&t, &written).unwrap());
        assert_eq!(walked[6], Vec::<Vec<Value>>::new());
        assert_eq!(walked[1], walked[2]);
        let n = Shape::new(schema.table("n").unwrap(), &[]);
        let starts = [-1000i64, -500, -499, 0, 1000, 1593, 1594, 5000];
        let tail = "WHERE id >= ?1 ORDER BY id LIMIT 1";
        let written: Vec<String> = starts
            .iter()
            .map(|s| tail.replace("?1", &s.to_string()))
            .collect();
        let each = side.select_each(&n, tail, &starts).unwrap();
        assert_eq!(each, side.select(&n, &written).unwrap());
        assert_eq!(each[0][0][0], Value::Integer(-500));
        assert!(each[7].is_empty());
    }

    #[test]
    fn computed_values_take_their_columns_affinity_exactly() {
        let row = |v: Value| vec![v.clone(), v.clone(), v.clone(), v.clone(), v];
        let all = [
            Affinity::Integer,
            Affinity::Text,
            Affinity::Blob,
            Affinity::Real,
            Affinity::Numeric,
        ];
        let out = with_affinity(
            &all,
            vec![
                row(Value::Integer(5)),
                row(Value::Text(b"1.50".to_vec())),
                row(Value::Text(b"abc\xff".to_vec())),
                row(Value::Real(2.0)),
            ],
        )
        .unwrap();
        use Value::{Integer as I, Real as R, Text as T};
        assert_eq!(out[0], [I(5), T(b"5".to_vec()), I(5), R(5.0), I(5)]);
        assert_eq!(out[1][0], R(1.5));
        assert_eq!(out[1][1], T(b"1.50".to_vec()));
        assert_eq!(out[1][2], T(b"1.50".to_vec()));
        assert_eq!(out[1][3], R(1.5));
        // Not a number: stays the same bytes, even invalid UTF-8.
        assert!(out[2].iter().all(|v| *v == T(b"abc\xff".to_vec())));
        assert_eq!(out[3], [I(2), T(b"2.0".to_vec()), R(2.0), R(2.0), I(2)]);
    }
}
