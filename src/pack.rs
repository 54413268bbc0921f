//! Transform and pack: rows in, D1 statements out, with no I/O.
//!
//! Rows (cells in the order of [`Shape::columns`]) become multi-row
//! `INSERT ... VALUES (...),(...) ON CONFLICT DO NOTHING` statements, each within D1's limits: at
//! most `statement_bytes` of SQL (D1: 100,000) and `statement_cells` rows × (columns + 1), which
//! keeps the engine under its 25,000 VDBE-op cap (`SQLITE_NOMEM` otherwise). Inserts are
//! idempotent (a row whose key exists is left alone), so a request sent twice adds nothing.
//!
//! A row too large for one statement is inserted with its largest values empty and then grown by
//! `UPDATE ... SET c = c || X'..' WHERE key AND length(c) = <length so far>` pieces; the guard makes
//! each piece idempotent too. The pieces form one [`Unit`], which always travels in one request,
//! so D1 commits the whole row or nothing. Statements are grouped into requests by
//! [`RequestBuilder`]; the `migrate` stage sends them.

use crate::discover::{Affinity, Table, TableKind};
use crate::plan::{AnchoredKey, DeferredKey};
use crate::value::{quote_ident, write_hex_literal, Value};

/// D1's limits as the packer applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of SQL in one statement (D1: 100,000).
    pub statement_bytes: usize,
    /// Rows × (columns + 1) in one statement.
    pub statement_cells: usize,
    /// Target bytes of SQL in one HTTP request.
    pub request_bytes: usize,
    /// Statements in one HTTP request, at most.
    pub request_statements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            statement_bytes: 100_000,
            statement_cells: 16_000,
            request_bytes: 1 << 20,
            request_statements: 10_000,
        }
    }
}

/// How a table's rows are written: its INSERT column list and where its key is.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub table: String,
    /// Quoted column names of the INSERT, the hidden rowid first when there is one.
    pub columns: Vec<String>,
    /// Each column's affinity (the hidden rowid's is INTEGER).
    pub affinities: Vec<Affinity>,
    /// Positions in `columns` of the key, and the key's SQL expressions.
    pub key_positions: Vec<usize>,
    pub key_exprs: Vec<String>,
    /// Positions loaded NULL and set by the update pass (deferred foreign keys).
    pub deferred: Vec<usize>,
    /// Positions loaded with an anchor row's values and set by the update pass (NOT NULL keys
    /// in a cycle, see `plan`), with the value each is loaded with; `None` until the anchors
    /// are read (or when the parent has no row to anchor to: the real value is loaded).
    pub anchored: Vec<(usize, Option<Value>)>,
    pub is_virtual: bool,
    /// The FROM clause that reads these rows on the source: the table itself, or the subquery
    /// of a transform (`transform::Transformed::adapt`) presenting the rows as D1 will hold them.
    pub read_from: String,
}

impl Shape {
    pub fn new(table: &Table, deferred: &[DeferredKey]) -> Shape {
        let mut columns = Vec::new();
        let mut affinities = Vec::new();
        if let Some(rowid) = table.hidden_rowid() {
            columns.push(rowid.to_string());
            affinities.push(Affinity::Integer);
        }
        let data = table.data_columns();
        columns.extend(data.iter().map(|c| quote_ident(&c.name)));
        affinities.extend(data.iter().map(|c| c.affinity()));
        let key_exprs = table.key_columns();
        let key_positions = key_exprs
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(k))
                    .expect("key columns are inserted")
            })
            .collect();
        let deferred = deferred
            .iter()
            .flat_map(|d| d.columns.iter())
            .filter_map(|name| {
                let q = quote_ident(name);
                columns.iter().position(|c| c.eq_ignore_ascii_case(&q))
            })
            .collect();
        Shape {
            table: table.name.clone(),
            columns,
            affinities,
            key_positions,
            key_exprs,
            deferred,
            anchored: Vec::new(),
            is_virtual: matches!(table.kind, TableKind::Virtual { .. }),
            read_from: quote_ident(&table.name),
        }
    }

    /// The position in `columns` of a column named as in the catalog.
    pub fn position(&self, name: &str) -> Option<usize> {
        let q = quote_ident(name);
        self.columns.iter().position(|c| c.eq_ignore_ascii_case(&q))
    }

    /// Marks the columns of `keys` as anchored, with no anchor values yet.
    pub fn with_anchored(mut self, keys: &[AnchoredKey]) -> Shape {
        for name in keys.iter().flat_map(|k| k.columns.iter()) {
            if let Some(p) = self.position(name) {
                if !self.anchored.iter().any(|(q, _)| *q == p) {
                    self.anchored.push((p, None));
                }
            }
        }
        self
    }

    /// True when rows are loaded with placeholders (NULL or anchor values) in some columns,
    /// which a CHECK constraint may refuse until the update pass sets the real values.
    pub fn loads_placeholders(&self) -> bool {
        !self.deferred.is_empty() || !self.anchored.is_empty()
    }

    /// What position `i` is loaded with: `None` for the row's own value.
    fn placeholder(&self, i: usize) -> Option<&Value> {
        if self.deferred.contains(&i) {
            return Some(&Value::Null);
        }
        self.anchored
            .iter()
            .find(|(p, _)| *p == i)
            .and_then(|(_, v)| v.as_ref())
    }

    /// The SELECT list that reads rows in this shape.
    pub fn select_list(&self) -> String {
        self.columns.join(", ")
    }

    /// `k1 = v1 AND k2 = v2` for the row's key.
    pub fn key_predicate(&self, row: &[Value]) -> String {
        let mut out = String::new();
        for (i, (&pos, expr)) in self.key_positions.iter().zip(&self.key_exprs).enumerate() {
            if i > 0 {
                out.push_str(" AND ");
            }
            out.push_str(expr);
            out.push_str(" = ");
            row[pos].write_literal(&mut out);
        }
        out
    }

    /// `EXISTS(SELECT 1 FROM "t" WHERE k1 = v1 AND k2 = v2)`: whether D1 holds the row of `key`
    /// (its values in the order of `key_exprs`, as [`Shape::key_values`] gives them). `None`
    /// when a value of the key is NULL, which no `=` finds.
    pub fn exists(&self, key: &[Value]) -> Option<String> {
        if key.len() != self.key_exprs.len() || key.contains(&Value::Null) {
            return None;
        }
        let mut out = format!("EXISTS(SELECT 1 FROM {} WHERE ", quote_ident(&self.table));
        for (i, (expr, value)) in self.key_exprs.iter().zip(key).enumerate() {
            if i > 0 {
                out.push_str(" AND ");
            }
            out.push_str(expr);
            out.push_str(" = ");
            value.write_literal(&mut out);
        }
        out.push(')');
        Some(out)
    }

    /// Key values as text.
    pub fn key_text_of(&self, key: &[Value]) -> String {
        let parts: Vec<String> = key.iter().map(Value::literal).collect();
        parts.join(", ")
    }

    /// The row's key values.
    pub fn key_values(&self, row: &[Value]) -> Vec<Value> {
        self.key_positions.iter().map(|&p| row[p].clone()).collect()
    }

    /// The row's key as text, for messages and reports.
    pub fn key_text(&self, row: &[Value]) -> String {
        let parts: Vec<String> = self
            .key_positions
            .iter()
            .map(|&p| row[p].literal())
            .collect();
        parts.join(", ")
    }

    fn insert_head(&self) -> String {
        let verb = if self.is_virtual {
            "INSERT OR REPLACE INTO"
        } else {
            "INSERT INTO"
        };
        format!(
            "{verb} {} ({}) VALUES ",
            quote_ident(&self.table),
            self.columns.join(",")
        )
    }

    fn insert_tail(&self) -> &'static str {
        if self.is_virtual {
            ""
        } else {
            " ON CONFLICT DO NOTHING"
        }
    }
}

/// Where the rows of a multi-row insert sit in its SQL, and their keys.
#[derive(Debug, Clone, PartialEq)]
struct RowIndex {
    /// Byte length of `INSERT INTO ... VALUES `.
    head: usize,
    /// End offset of each row tuple.
    ends: Vec<usize>,
    /// Each row's key, as text for messages and reject files.
    keys: Vec<String>,
}

/// One SQL statement; inserts remember where each row's tuple sits so they can be split.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    rows: Option<RowIndex>,
}

impl Statement {
    pub fn plain(sql: String) -> Statement {
        Statement { sql, rows: None }
    }

    /// Number of row tuples (0 for statements that are not multi-row inserts).
    pub fn row_count(&self) -> usize {
        self.rows.as_ref().map_or(0, |r| r.ends.len())
    }

    /// The key of a one-row insert.
    pub fn single_key(&self) -> Option<&str> {
        match &self.rows {
            Some(r) if r.keys.len() == 1 => Some(&r.keys[0]),
            _ => None,
        }
    }

    /// Splits a multi-row insert into two halves; `None` when it holds one row or is not one.
    pub fn split(&self) -> Option<(Statement, Statement)> {
        let index = self.rows.as_ref()?;
        let (head, ends) = (index.head, &index.ends);
        if ends.len() < 2 {
            return None;
        }
        let tail = &self.sql[*ends.last().expect("rows")..];
        let mid = ends.len() / 2;
        let build = |from: usize, range: &[usize], keys: &[String]| {
            let mut sql = String::with_capacity(self.sql.len() / 2 + head + tail.len());
            sql.push_str(&self.sql[..head]);
            let mut start = from;
            let mut out_ends = Vec::with_capacity(range.len());
            for (i, &end) in range.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&self.sql[start..end]);
                out_ends.push(sql.len());
                start = end + 1; // skip the comma between tuples
            }
            sql.push_str(tail);
            Statement {
                sql,
                rows: Some(RowIndex {
                    head,
                    ends: out_ends,
                    keys: keys.to_vec(),
                }),
            }
        };
        Some((
            build(head, &ends[..mid], &index.keys[..mid]),
            build(ends[mid - 1] + 1, &ends[mid..], &index.keys[mid..]),
        ))
    }
}

/// Statements that must be committed together (one row and its pieces), or a single statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub statements: Vec<Statement>,
    pub rows: usize,
    /// The key of the unit's last row, for checkpoints.
    pub last_key: Option<Vec<Value>>,
}

impl Unit {
    pub fn bytes(&self) -> usize {
        self.statements.iter().map(|s| s.sql.len()).sum()
    }
}

/// Builds multi-row inserts for one table.
pub struct InsertPacker {
    shape: Shape,
    limits: Limits,
    head: String,
    tail: &'static str,
    current: String,
    ends: Vec<usize>,
    keys: Vec<String>,
    last_key: Option<Vec<Value>>,
    scratch: String,
}

impl InsertPacker {
    pub fn new(shape: Shape, limits: Limits) -> InsertPacker {
        let head = shape.insert_head();
        let tail = shape.insert_tail();
        InsertPacker {
            shape,
            limits,
            head,
            tail,
            current: String::new(),
            ends: Vec::new(),
            keys: Vec::new(),
            last_key: None,
            scratch: String::new(),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    fn rows_per_statement(&self) -> usize {
        (self.limits.statement_cells / (self.shape.columns.len() + 1)).max(1)
    }

    /// Adds a row; returns the units completed by it (zero, one, or two when a large row
    /// closes the statement in progress and stands alone).
    pub fn push(&mut self, row: &[Value], out: &mut Vec<Unit>) {
        self.scratch.clear();
        write_tuple(row, &self.shape, &mut self.scratch);
        let fixed = self.head.len() + self.tail.len();
        if fixed + self.scratch.len() > self.limits.statement_bytes {
            self.flush(out);
            out.push(self.large_row(row));
            return;
        }
        let full = !self.ends.is_empty()
            && (self.current.len() + 1 + self.scratch.len() + self.tail.len()
                > self.limits.statement_bytes
                || self.ends.len() >= self.rows_per_statement());
        if full {
            self.flush(out);
        }
        if self.ends.is_empty() {
            self.current.push_str(&self.head);
        } else {
            self.current.push(',');
        }
        self.current.push_str(&self.scratch);
        self.ends.push(self.current.len());
        self.keys.push(self.shape.key_text(row));
        self.last_key = Some(self.shape.key_values(row));
    }

    /// Closes the statement in progress.
    pub fn flush(&mut self, out: &mut Vec<Unit>) {
        if self.ends.is_empty() {
            return;
        }
        let mut sql = std::mem::take(&mut self.current);
        sql.push_str(self.tail);
        let ends = std::mem::take(&mut self.ends);
        let rows = ends.len();
        out.push(Unit {
            statements: vec![Statement {
                sql,
                rows: Some(RowIndex {
                    head: self.head.len(),
                    ends,
                    keys: std::mem::take(&mut self.keys),
                }),
            }],
            rows,
            last_key: self.last_key.take(),
        });
    }

    /// A row that does not fit one statement: insert it with its largest values empty, then
    /// append those values in guarded pieces.
    fn large_row(&self, row: &[Value]) -> Unit {
        let mut order: Vec<usize> = (0..row.len())
            .filter(|&i| {
                !self.shape.key_positions.contains(&i) && self.shape.placeholder(i).is_none()
            })
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(row[i].size()));
        let mut slim: Vec<Value> = row.to_vec();
        let mut moved = Vec::new();
        let budget = self.limits.statement_bytes - self.head.len() - self.tail.len();
        for i in order {
            let mut probe = String::new();
            write_tuple(&slim, &self.shape, &mut probe);
            if probe.len() <= budget {
                break;
            }
            if matches!(row[i], Value::Text(_) | Value::Blob(_)) {
                slim[i] = row[i].empty_like();
                moved.push(i);
            }
        }
        let mut sql = self.head.clone();
        write_tuple(&slim, &self.shape, &mut sql);
        let end = sql.len();
        sql.push_str(self.tail);
        let mut statements = vec![Statement {
            sql,
            rows: Some(RowIndex {
                head: self.head.len(),
                ends: vec![end],
                keys: vec![self.shape.key_text(row)],
            }),
        }];
        statements.extend(append_pieces(
            &self.shape,
            row,
            &moved,
            self.limits.statement_bytes,
        ));
        Unit {
            statements,
            rows: 1,
            last_key: Some(self.shape.key_values(row)),
        }
    }
}

/// Statements appending the values at `moved` (TEXT or BLOB, left empty by the statement before)
/// to the row, in pieces of at most `statement_bytes`, each guarded by the length so far so that
/// a piece sent twice appends nothing.
fn append_pieces(
    shape: &Shape,
    row: &[Value],
    moved: &[usize],
    statement_bytes: usize,
) -> Vec<Statement> {
    let predicate = shape.key_predicate(row);
    let mut statements = Vec::new();
    for &i in moved {
        let column = &shape.columns[i];
        let (bytes, is_text) = match &row[i] {
            Value::Text(b) => (b, true),
            Value::Blob(b) => (b, false),
            _ => unreachable!("only TEXT and BLOB values are moved"),
        };
        // The statement around the piece's hex, with room for the longest length so far.
        let overhead = format!(
            "UPDATE {} SET {column} = CAST({column} || X'' AS BLOB) WHERE {predicate} \
             AND length(CAST({column} AS BLOB)) = {}",
            quote_ident(&shape.table),
            u64::MAX
        )
        .len();
        let piece = (statement_bytes.saturating_sub(overhead) / 2).max(1);
        let mut done = 0usize;
        for chunk in bytes.chunks(piece) {
            // `||` always yields TEXT: the result is cast back to the value's own type.
            let mut sql = format!(
                "UPDATE {} SET {column} = CAST({column} || ",
                quote_ident(&shape.table)
            );
            write_hex_literal(chunk, &mut sql);
            sql.push_str(if is_text { " AS TEXT)" } else { " AS BLOB)" });
            sql.push_str(&format!(
                " WHERE {predicate} AND length(CAST({column} AS BLOB)) = {done}"
            ));
            done += chunk.len();
            statements.push(Statement::plain(sql));
        }
    }
    statements
}

/// The unit that sets a row's `columns` to its values, found by its key: one
/// `UPDATE ... SET ... WHERE key`, or, when the values do not fit one statement, the largest
/// set empty and appended in guarded pieces, as a large insert is; D1 commits the unit whole.
/// Sent again, it leaves the same row. `None` when there is nothing to set.
pub fn update_unit(
    shape: &Shape,
    row: &[Value],
    columns: &[usize],
    statement_bytes: usize,
) -> Option<Unit> {
    if columns.is_empty() {
        return None;
    }
    let head = format!("UPDATE {} SET ", quote_ident(&shape.table));
    let tail = format!(" WHERE {}", shape.key_predicate(row));
    let build = |values: &[Value]| {
        let mut sql = head.clone();
        for (n, &i) in columns.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&shape.columns[i]);
            sql.push_str(" = ");
            values[i].write_literal(&mut sql);
        }
        sql.push_str(&tail);
        sql
    };
    let mut slim = row.to_vec();
    let mut moved = Vec::new();
    let mut order: Vec<usize> = columns.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(row[i].size()));
    let mut sql = build(&slim);
    for i in order {
        if sql.len() <= statement_bytes {
            break;
        }
        if matches!(row[i], Value::Text(_) | Value::Blob(_)) {
            slim[i] = row[i].empty_like();
            moved.push(i);
            sql = build(&slim);
        }
    }
    let mut statements = vec![Statement::plain(sql)];
    statements.extend(append_pieces(shape, row, &moved, statement_bytes));
    Some(Unit {
        statements,
        rows: 1,
        last_key: None,
    })
}

/// Updates of many rows: for each set of columns that differ, multi-row
/// `UPDATE t SET c = v.column3 FROM (VALUES (key..., value...), ...) AS v WHERE t.key = v.column1`
/// statements within the statement limits (D1 looks each row up by its key); a row whose values
/// do not fit one statement gets its own [`update_unit`]. Each `(row, columns)` sets `columns` of
/// `row`. Sent again, they leave the same rows.
pub fn update_units(
    shape: &Shape,
    updates: &[(&[Value], Vec<usize>)],
    limits: Limits,
) -> Vec<Unit> {
    let mut groups: std::collections::BTreeMap<&[usize], Vec<&[Value]>> = Default::default();
    for (row, columns) in updates {
        if !columns.is_empty() {
            groups.entry(columns.as_slice()).or_default().push(row);
        }
    }
    let table = quote_ident(&shape.table);
    let keys = shape.key_positions.len();
    let mut units = Vec::new();
    for (columns, rows) in groups {
        let sets: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("{} = v.column{}", shape.columns[c], keys + i + 1))
            .collect();
        let matches: Vec<String> = shape
            .key_exprs
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{table}.{k} = v.column{}", i + 1))
            .collect();
        let head = format!("UPDATE {table} SET {} FROM (VALUES ", sets.join(", "));
        let tail = format!(") AS v WHERE {}", matches.join(" AND "));
        let per_statement = (limits.statement_cells / (keys + columns.len() + 1)).max(1);
        let mut sql = String::new();
        let mut count = 0usize;
        let mut tuple = String::new();
        let flush = |sql: &mut String, count: &mut usize, units: &mut Vec<Unit>| {
            if *count > 0 {
                sql.push_str(&tail);
                units.push(Unit {
                    statements: vec![Statement::plain(std::mem::take(sql))],
                    rows: std::mem::take(count),
                    last_key: None,
                });
            }
        };
        for row in rows {
            let values: Vec<Value> = shape
                .key_positions
                .iter()
                .chain(columns)
                .map(|&p| row[p].clone())
                .collect();
            tuple.clear();
            write_plain_tuple(&values, &mut tuple);
            if head.len() + tuple.len() + tail.len() > limits.statement_bytes {
                units.extend(update_unit(shape, row, columns, limits.statement_bytes));
                continue;
            }
            if count > 0
                && (sql.len() + 1 + tuple.len() + tail.len() > limits.statement_bytes
                    || count >= per_statement)
            {
                flush(&mut sql, &mut count, &mut units);
            }
            if count == 0 {
                sql.push_str(&head);
            } else {
                sql.push(',');
            }
            sql.push_str(&tuple);
            count += 1;
        }
        flush(&mut sql, &mut count, &mut units);
    }
    units
}

/// `DELETE FROM t WHERE key IN (...)` statements for `keys`, each within the statement limits;
/// a key that is already gone deletes nothing, so they can be sent again.
pub fn delete_units(shape: &Shape, keys: &[Vec<Value>], limits: Limits) -> Vec<Unit> {
    let single = shape.key_exprs.len() == 1;
    let head = if single {
        format!(
            "DELETE FROM {} WHERE {} IN (",
            quote_ident(&shape.table),
            shape.key_exprs[0]
        )
    } else {
        format!(
            "DELETE FROM {} WHERE ({}) IN (VALUES ",
            quote_ident(&shape.table),
            shape.key_exprs.join(", ")
        )
    };
    let per_statement = (limits.statement_cells / (shape.key_exprs.len() + 1)).max(1);
    let mut units = Vec::new();
    let mut sql = String::new();
    let mut rows = 0usize;
    let mut tuple = String::new();
    let mut flush = |sql: &mut String, rows: &mut usize| {
        if *rows > 0 {
            sql.push(')');
            units.push(Unit {
                statements: vec![Statement::plain(std::mem::take(sql))],
                rows: std::mem::take(rows),
                last_key: None,
            });
        }
    };
    for key in keys {
        tuple.clear();
        if single {
            key[0].write_literal(&mut tuple);
        } else {
            write_plain_tuple(key, &mut tuple);
        }
        if rows > 0
            && (sql.len() + 1 + tuple.len() + 1 > limits.statement_bytes || rows >= per_statement)
        {
            flush(&mut sql, &mut rows);
        }
        if rows == 0 {
            sql.push_str(&head);
        } else {
            sql.push(',');
        }
        sql.push_str(&tuple);
        rows += 1;
    }
    flush(&mut sql, &mut rows);
    units
}

/// `(v1,v2,...)`.
fn write_plain_tuple(row: &[Value], out: &mut String) {
    out.push('(');
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        v.write_literal(out);
    }
    out.push(')');
}

/// `(v1,v2,...)`, with deferred positions written as NULL and anchored ones as their anchor.
fn write_tuple(row: &[Value], shape: &Shape, out: &mut String) {
    out.push('(');
    let plain = !shape.loads_placeholders();
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match shape.placeholder(i) {
            Some(p) if !plain => p.write_literal(out),
            _ => v.write_literal(out),
        }
    }
    out.push(')');
}

/// The update that sets a row's deferred and anchored foreign-key columns to their real
/// values; `None` when the row was loaded with them already.
pub fn deferred_update(shape: &Shape, row: &[Value]) -> Option<Unit> {
    let mut positions: Vec<usize> = shape
        .deferred
        .iter()
        .copied()
        .filter(|&p| row[p] != Value::Null)
        .collect();
    for (p, anchor) in &shape.anchored {
        let same = anchor.as_ref().is_none_or(|a| same_value(a, &row[*p]));
        if !same && !positions.contains(p) {
            positions.push(*p);
        }
    }
    let sets: Vec<String> = positions
        .iter()
        .map(|&p| format!("{} = {}", shape.columns[p], row[p].literal()))
        .collect();
    if sets.is_empty() {
        return None;
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        quote_ident(&shape.table),
        sets.join(", "),
        shape.key_predicate(row)
    );
    // One row whose keys are set (counted by the progress of the keys pass, not as written).
    Some(Unit {
        statements: vec![Statement::plain(sql)],
        rows: 1,
        last_key: None,
    })
}

/// Equal type and bits (a REAL -0.0 is not 0.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// A group of units sent as one HTTP request (one D1 transaction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub statements: Vec<Statement>,
    pub rows: usize,
    /// Rows among them too large for one statement (inserted, then appended in pieces).
    pub large_rows: usize,
    pub bytes: usize,
    /// The key of the request's last row: once D1 has committed this request and every one
    /// before it, the table is copied up to this key.
    pub last_key: Option<Vec<Value>>,
    /// True when rows carry placeholders (NULL or anchor values in foreign-key columns) that a
    /// CHECK constraint may refuse until the update pass: the request is sent with
    /// `PRAGMA ignore_check_constraints` on.
    pub relax_checks: bool,
}

impl Request {
    /// One request of all of `units`, whatever their size.
    /// `rows` is what the request counts as written (0 for rows that their table's own pass
    /// sends again).
    pub fn of(units: Vec<Unit>, rows: usize, relax_checks: bool) -> Request {
        let bytes = units.iter().map(Unit::bytes).sum();
        Request {
            statements: units.into_iter().flat_map(|u| u.statements).collect(),
            rows,
            large_rows: 0,
            bytes,
            last_key: None,
            relax_checks,
        }
    }
}

/// Groups units into requests of about `request_bytes` each.
pub struct RequestBuilder {
    limits: Limits,
    current: Request,
}

impl RequestBuilder {
    pub fn new(limits: Limits) -> RequestBuilder {
        RequestBuilder {
            limits,
            current: Request::default(),
        }
    }

    /// From now on, requests of at most `bytes` of SQL (the API refused a larger one).
    pub fn limit_bytes(&mut self, bytes: usize) {
        self.limits.request_bytes = self.limits.request_bytes.min(bytes);
    }

    /// Adds a unit; returns a full request when the unit closed one.
    pub fn push(&mut self, unit: Unit) -> Option<Request> {
        let bytes = unit.bytes();
        let full = !self.current.statements.is_empty()
            && (self.current.bytes + bytes > self.limits.request_bytes
                || self.current.statements.len() + unit.statements.len()
                    > self.limits.request_statements);
        let done = if full { self.take() } else { None };
        self.current.bytes += bytes;
        self.current.rows += unit.rows;
        if unit.rows == 1 && unit.statements.len() > 1 {
            self.current.large_rows += 1;
        }
        self.current.statements.extend(unit.statements);
        if unit.last_key.is_some() {
            self.current.last_key = unit.last_key;
        }
        done
    }

    /// The request in progress, if it holds anything.
    pub fn take(&mut self) -> Option<Request> {
        if self.current.statements.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.current))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Column;

    fn col(name: &str, pk: i64) -> Column {
        Column::new(name, if pk > 0 { "INTEGER" } else { "" }, pk)
    }

    fn shape() -> Shape {
        let t = Table {
            name: "t x".into(),
            sql: String::new(),
            kind: TableKind::Rowid { rowid_alias: None },
            columns: vec![col("a", 0), col("b", 0)],
            foreign_keys: vec![],
            unique: vec![],
        };
        Shape::new(&t, &[])
    }

    fn row(i: i64) -> Vec<Value> {
        vec![
            Value::Integer(i),
            Value::Integer(i * 10),
            Value::Text(b"x".to_vec()),
        ]
    }

    fn pack(rows: impl IntoIterator<Item = Vec<Value>>, limits: Limits) -> Vec<Unit> {
        let mut p = InsertPacker::new(shape(), limits);
        let mut out = Vec::new();
        for r in rows {
            p.push(&r, &mut out);
        }
        p.flush(&mut out);
        out
    }

    #[test]
    fn a_rows_existence_is_asked_by_its_key_rowid_first_without_rowid_by_the_primary_key() {
        // The hidden rowid.
        let key = shape().key_values(&row(7));
        assert_eq!(
            shape().exists(&key).unwrap(),
            "EXISTS(SELECT 1 FROM \"t x\" WHERE rowid = 7)"
        );
        // A column named rowid: the next alias.
        let mut t = Table {
            name: "t".into(),
            sql: String::new(),
            kind: TableKind::Rowid { rowid_alias: None },
            columns: vec![col("rowid", 0)],
            foreign_keys: vec![],
            unique: vec![],
        };
        assert_eq!(
            Shape::new(&t, &[]).exists(&[Value::Integer(-3)]).unwrap(),
            "EXISTS(SELECT 1 FROM \"t\" WHERE _rowid_ = -3)"
        );
        // An INTEGER PRIMARY KEY.
        t.kind = TableKind::Rowid {
            rowid_alias: Some("id".into()),
        };
        t.columns = vec![col("id", 1), col("v", 0)];
        assert_eq!(
            Shape::new(&t, &[]).exists(&[Value::Integer(5)]).unwrap(),
            "EXISTS(SELECT 1 FROM \"t\" WHERE \"id\" = 5)"
        );
        // WITHOUT ROWID, a primary key of two columns in its declared order, a text with quotes.
        let w = Table {
            name: "it's".into(),
            sql: String::new(),
            kind: TableKind::WithoutRowid,
            columns: vec![col("b", 2), col("v", 0), Column::new("a \"x\"", "TEXT", 1)],
            foreign_keys: vec![],
            unique: vec![],
        };
        let shape = Shape::new(&w, &[]);
        let key = shape.key_values(&[
            Value::Blob(vec![0xab, 1]),
            Value::Integer(1),
            Value::Text(b"o'neil".to_vec()),
        ]);
        assert_eq!(
            shape.exists(&key).unwrap(),
            "EXISTS(SELECT 1 FROM \"it's\" WHERE \"a \"\"x\"\"\" = 'o''neil' AND \"b\" = X'AB01')"
        );
        // No row is found by a NULL.
        assert_eq!(shape.exists(&[Value::Null, Value::Integer(1)]), None);
        assert_eq!(shape.exists(&[Value::Integer(1)]), None);
    }

    #[test]
    fn rows_become_one_idempotent_insert_with_the_hidden_rowid() {
        let units = pack((1..=2).map(row), Limits::default());
        assert_eq!(units.len(), 1);
        assert_eq!(
            units[0].statements[0].sql,
            "INSERT INTO \"t x\" (rowid,\"a\",\"b\") VALUES (1,10,'x'),(2,20,'x') ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn statements_respect_byte_and_cell_limits() {
        let limits = Limits {
            statement_bytes: 300,
            statement_cells: 40,
            ..Limits::default()
        };
        let units = pack((0..1000).map(row), limits);
        let total: usize = units.iter().map(|u| u.rows).sum();
        assert_eq!(total, 1000);
        for u in &units {
            let s = &u.statements[0];
            assert!(s.sql.len() <= 300, "{} bytes", s.sql.len());
            assert!(s.row_count() * 4 <= 40);
        }
    }

    #[test]
    fn split_keeps_every_row_once() {
        let units = pack((0..7).map(row), Limits::default());
        let (a, b) = units[0].statements[0].split().unwrap();
        assert_eq!(a.row_count() + b.row_count(), 7);
        assert!(a
            .sql
            .starts_with("INSERT INTO \"t x\" (rowid,\"a\",\"b\") VALUES (0,0,'x'),"));
        assert!(
            a.sql.ends_with("(2,20,'x') ON CONFLICT DO NOTHING"),
            "{}",
            a.sql
        );
        assert!(b.sql.contains("VALUES (3,30,'x'),(4,40,'x')"), "{}", b.sql);
        assert!(b.sql.ends_with("(6,60,'x') ON CONFLICT DO NOTHING"));
        assert_eq!(a.single_key(), None);
        let (c, d) = b.split().unwrap();
        assert_eq!((c.row_count(), d.row_count()), (2, 2));
        let (one, _) = c.split().unwrap();
        assert!(one.split().is_none());
        assert_eq!(one.single_key(), Some("3"));
    }

    /// Found by the random schemas: with long quoted names the pieces' statements ran past
    /// D1's 100,000 bytes (the estimate of their overhead counted the column twice, not three
    /// times, and the table not at all).
    #[test]
    fn pieces_fit_the_statement_limit_whatever_the_names() {
        let long = |c: char| format!("{}{}", c, "\"q\" x".repeat(12));
        let t = Table {
            name: long('t'),
            sql: String::new(),
            kind: TableKind::WithoutRowid,
            columns: vec![
                Column::new(&long('k'), "TEXT", 1),
                Column::new(&long('j'), "TEXT", 2),
                Column::new(&long('v'), "", 0),
            ],
            foreign_keys: vec![],
            unique: vec![],
        };
        let shape = Shape::new(&t, &[]);
        let row = vec![
            Value::Text(b"key 'one'".to_vec()),
            Value::Text("k".repeat(300).into_bytes()),
            Value::Blob(vec![7; 1_000_000]),
        ];
        let mut p = InsertPacker::new(shape, Limits::default());
        let mut out = Vec::new();
        p.push(&row, &mut out);
        p.flush(&mut out);
        let statements: Vec<&Statement> = out.iter().flat_map(|u| &u.statements).collect();
        assert!(statements.len() > 10);
        for s in statements {
            assert!(s.sql.len() <= 100_000, "{} bytes", s.sql.len());
        }
    }

    #[test]
    fn a_large_value_is_appended_in_guarded_pieces_within_one_unit() {
        let big: Vec<u8> = (0..250_000u32).map(|i| (i % 251) as u8).collect();
        let r = vec![
            Value::Integer(7),
            Value::Blob(big),
            Value::Text(b"small".to_vec()),
        ];
        let units = pack([row(1), r, row(8)], Limits::default());
        assert_eq!(
            units.len(),
            3,
            "the large row stands alone between the others"
        );
        let large = &units[1];
        assert_eq!(large.rows, 1);
        assert!(large.statements.len() >= 6);
        assert!(large.statements.iter().all(|s| s.sql.len() <= 100_000));
        assert!(large.statements[0].sql.contains("(7,X'','small')"));
        assert!(large.statements[1]
            .sql
            .ends_with("WHERE rowid = 7 AND length(CAST(\"a\" AS BLOB)) = 0"));
    }

    #[test]
    fn an_update_sets_only_the_given_columns_and_grows_a_large_value_in_pieces() {
        let small = update_unit(&shape(), &row(4), &[2], 100_000).unwrap();
        assert_eq!(
            small.statements[0].sql,
            "UPDATE \"t x\" SET \"b\" = 'x' WHERE rowid = 4"
        );
        let big: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        let r = vec![Value::Integer(9), Value::Integer(1), Value::Blob(big)];
        let unit = update_unit(&shape(), &r, &[1, 2], 100_000).unwrap();
        assert!(unit.statements.len() >= 4);
        assert!(unit.statements.iter().all(|s| s.sql.len() <= 100_000));
        assert_eq!(
            unit.statements[0].sql,
            "UPDATE \"t x\" SET \"a\" = 1, \"b\" = X'' WHERE rowid = 9"
        );
        assert!(unit.statements[1]
            .sql
            .ends_with("WHERE rowid = 9 AND length(CAST(\"b\" AS BLOB)) = 0"));
        assert!(update_unit(&shape(), &r, &[], 100_000).is_none());
    }

    #[test]
    fn updates_of_many_rows_share_a_statement_per_set_of_columns() {
        let rows: Vec<Vec<Value>> = (1..=4).map(row).collect();
        let big = vec![
            Value::Integer(9),
            Value::Integer(1),
            Value::Text(vec![b'x'; 150_000]),
        ];
        let updates: Vec<(&[Value], Vec<usize>)> = vec![
            (&rows[0], vec![1]),
            (&rows[1], vec![1, 2]),
            (&rows[2], vec![1]),
            (&big, vec![2]),
            (&rows[3], vec![]),
        ];
        let units = update_units(&shape(), &updates, Limits::default());
        let sqls: Vec<&str> = units
            .iter()
            .flat_map(|u| u.statements.iter().map(|s| s.sql.as_str()))
            .collect();
        assert_eq!(
            sqls[0],
            "UPDATE \"t x\" SET \"a\" = v.column2 FROM (VALUES (1,10),(3,30)) AS v WHERE \"t x\".rowid = v.column1"
        );
        assert_eq!(
            sqls[1],
            "UPDATE \"t x\" SET \"a\" = v.column2, \"b\" = v.column3 FROM (VALUES (2,20,'x')) AS v WHERE \"t x\".rowid = v.column1"
        );
        // The large value goes alone, in pieces.
        assert!(sqls[2].starts_with("UPDATE \"t x\" SET \"b\" = '' WHERE rowid = 9"));
        assert!(sqls.len() > 3 && sqls.iter().all(|s| s.len() <= 100_000));
        assert_eq!(units.iter().map(|u| u.rows).sum::<usize>(), 4);
    }

    #[test]
    fn deletes_name_their_keys_within_the_statement_limits() {
        let keys: Vec<Vec<Value>> = (0..100).map(|i| vec![Value::Integer(i)]).collect();
        let limits = Limits {
            statement_cells: 60,
            ..Limits::default()
        };
        let units = delete_units(&shape(), &keys, limits);
        assert_eq!(units.iter().map(|u| u.rows).sum::<usize>(), 100);
        assert_eq!(units.len(), 4);
        assert_eq!(
            units[0].statements[0].sql,
            format!(
                "DELETE FROM \"t x\" WHERE rowid IN ({})",
                (0..30).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            )
        );
    }

    #[test]
    fn requests_group_units_up_to_the_byte_target() {
        let limits = Limits {
            statement_bytes: 200,
            request_bytes: 1000,
            ..Limits::default()
        };
        let mut b = RequestBuilder::new(limits);
        let mut requests = Vec::new();
        for u in pack((0..500).map(row), limits) {
            requests.extend(b.push(u));
        }
        requests.extend(b.take());
        assert_eq!(requests.iter().map(|r| r.rows).sum::<usize>(), 500);
        assert!(requests.iter().all(|r| r.bytes <= 1000));
        assert!(requests.len() > 10);
    }
}
