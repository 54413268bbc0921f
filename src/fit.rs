//! Fitting the source into the schema D1 already has (the application's own migrations, applied
//! with `wrangler d1 migrations apply` before the data is copied).
//!
//! A table D1 already has is compared with the source's by structure, not text: each definition
//! is created in an in-memory SQLite database and read back with SQLite's own pragmas
//! (`table_xinfo`, `foreign_key_list`, `index_list`), so formatting, quoting, column order and
//! constraint layout do not matter. Columns are matched by name, case-insensitively. What would
//! lose or change a value, or make D1 refuse rows the source holds, is a problem, refused before
//! anything is written, one line per difference; what cannot, is a note. Indexes, views and
//! triggers with an equivalent definition are kept; others of the same name are reported.
//!
//! Fed by `discover` (the source's schema) and `target::target_objects` (D1's catalog); read by
//! `migrate` (what to create, what to refuse) and `dryrun` (what the run would do).

use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;

use crate::discover::{Affinity, Column, Schema, Table};
use crate::error::Result;
use crate::value::{quote_ident, quote_text};

/// wrangler's table of applied migrations: merged by name when D1 already has it.
pub const MIGRATIONS_TABLE: &str = "d1_migrations";

/// What the run does with one source table on D1.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableFit {
    pub table: String,
    /// "create" (D1 lacks it), "fill" (filled as it exists on D1), or "merge by name" (wrangler's
    /// `d1_migrations`: the source's rows D1 lacks are added by name).
    pub action: String,
    /// How source columns map to D1's, where it is not one-to-one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mapping: Vec<String>,
    /// Differences that would lose or change values, or make D1 refuse the source's rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Differences that change nothing the run copies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The table's name as D1 spells it, where it is there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d1_name: Option<String>,
}

/// What the run does with one index, view or trigger.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ObjectFit {
    pub kind: String,
    pub name: String,
    /// "create", "keep" (D1 has an equivalent one), "differs" (D1's is kept and reported) or
    /// "conflict" (D1 has another kind of object of that name: refused).
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Fit {
    pub tables: Vec<TableFit>,
    pub objects: Vec<ObjectFit>,
}

impl Fit {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        let tables = self.tables.iter().flat_map(|t| t.problems.iter().cloned());
        let objects = self
            .objects
            .iter()
            .filter(|o| o.action == "conflict")
            .filter_map(|o| o.message.clone());
        tables.chain(objects).collect()
    }

    /// The tables D1 lacks.
    pub fn creates(&self, table: &str) -> bool {
        self.tables
            .iter()
            .any(|t| t.table.eq_ignore_ascii_case(table) && t.action == "create")
    }

    /// The name D1 spells `table` with, when D1 has it.
    pub fn d1_name(&self, table: &str) -> Option<&str> {
        self.tables
            .iter()
            .find(|t| t.table.eq_ignore_ascii_case(table))
            .and_then(|t| t.d1_name.as_deref())
    }

    /// Whether `table` is wrangler's `d1_migrations`, already on D1: merged by name.
    pub fn merges(&self, table: &str) -> bool {
        self.tables
            .iter()
            .any(|t| t.table.eq_ignore_ascii_case(table) && t.action == "merge by name")
    }

    /// Whether the run creates the table `name` (D1 lacks it).
    pub fn creates_table(&self, name: &str) -> bool {
        self.tables
            .iter()
            .any(|t| t.table.eq_ignore_ascii_case(name) && t.action == "create")
    }

    /// Whether the run creates the index, view or trigger `name`.
    pub fn creates_object(&self, name: &str) -> bool {
        self.objects
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(name) && o.action == "create")
    }
}

/// Compares the source's tables and objects with what D1 already has (`existing`: lower-case
/// name → (type, SQL)). `source` answers the questions only the data can (does a column hold
/// NULLs, are values unique), reading each table's rows FROM `read_from(table)` (a transform's
/// read, or the table itself).
pub fn fit(
    source: &Connection,
    schema: &Schema,
    existing: &HashMap<String, (String, String)>,
    read_from: &dyn Fn(&str) -> String,
) -> Result<Fit> {
    let mut out = Fit::default();
    for table in &schema.tables {
        out.tables
            .push(match existing.get(&table.name.to_lowercase()) {
                None => TableFit {
                    table: table.name.clone(),
                    action: "create".into(),
                    mapping: Vec::new(),
                    problems: Vec::new(),
                    notes: Vec::new(),
                    d1_name: None,
                },
                Some((kind, sql)) if kind != "table" => TableFit {
                    table: table.name.clone(),
                    action: "fill".into(),
                    mapping: Vec::new(),
                    problems: vec![format!(
                        "table {:?}: D1 has a {kind} of that name ({})",
                        table.name,
                        one_line(sql)
                    )],
                    notes: Vec::new(),
                    d1_name: None,
                },
                Some((_, sql)) => fit_table(source, table, sql, &read_from(&table.name))?,
            });
    }
    for o in &schema.objects {
        let action = |action: &str, message: Option<String>| ObjectFit {
            kind: o.kind.clone(),
            name: o.name.clone(),
            action: action.into(),
            message,
        };
        out.objects.push(match existing.get(&o.name.to_lowercase()) {
            None => action("create", None),
            Some((kind, _)) if *kind != o.kind => action(
                "conflict",
                Some(format!(
                    "{} {:?}: D1 has a {kind} of that name",
                    o.kind, o.name
                )),
            ),
            Some((_, sql)) if equivalent_object(&o.sql, sql) => action("keep", None),
            Some((_, sql)) => action(
                "differs",
                Some(format!(
                    "{} {:?} already exists on D1 with another definition; D1's is kept: source {}, D1 {}",
                    o.kind,
                    o.name,
                    one_line(&o.sql),
                    one_line(sql)
                )),
            ),
        });
    }
    Ok(out)
}

fn one_line(sql: &str) -> String {
    let text = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 160 {
        format!("{}…", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}

/// One column as SQLite reads it back.
#[derive(Debug, Clone)]
struct ColumnInfo {
    column: Column,
    default: Option<String>,
}

/// A table's structure as SQLite reads it back from its definition.
#[derive(Debug, Clone)]
struct Structure {
    columns: Vec<ColumnInfo>,
    without_rowid: bool,
    strict: bool,
    /// Primary key columns in key order, lower-case.
    primary_key: Vec<String>,
    /// An INTEGER PRIMARY KEY: the key is the rowid.
    rowid_alias: bool,
    /// UNIQUE constraints: their columns, lower-case, sorted.
    unique: Vec<Vec<String>>,
    /// Foreign keys: (columns, parent, parent columns), lower-case.
    foreign_keys: Vec<(Vec<String>, String, Vec<String>)>,
    /// CHECK constraints: (canonical SQL, the expression as written).
    checks: Vec<(String, String)>,
}

impl Structure {
    /// Creates `sql` in an in-memory database and reads it back.
    fn of(sql: &str) -> std::result::Result<Structure, String> {
        let db = Connection::open_in_memory().map_err(|e| e.to_string())?;
        db.execute_batch(sql).map_err(|e| e.to_string())?;
        let name: String = db
            .query_row(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        let read = || -> rusqlite::Result<Structure> {
            let q = quote_text(&name);
            let (without_rowid, strict): (bool, bool) = db.query_row(
                &format!("SELECT wr, strict FROM pragma_table_list({q}) WHERE schema = 'main'"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut stmt = db.prepare(&format!(
                "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo({q})"
            ))?;
            let columns: Vec<ColumnInfo> = stmt
                .query_map([], |r| {
                    Ok(ColumnInfo {
                        column: Column {
                            name: r.get(0)?,
                            decl_type: r.get(1)?,
                            not_null: r.get(2)?,
                            pk: r.get(4)?,
                            hidden: r.get(5)?,
                        },
                        default: r.get::<_, Option<String>>(3)?.map(|d| canonical_sql(&d)),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut pk: Vec<&ColumnInfo> = columns.iter().filter(|c| c.column.pk > 0).collect();
            pk.sort_by_key(|c| c.column.pk);
            let primary_key: Vec<String> =
                pk.iter().map(|c| c.column.name.to_lowercase()).collect();
            let rowid_alias = !without_rowid
                && pk.len() == 1
                && pk[0].column.decl_type.eq_ignore_ascii_case("INTEGER");
            let mut unique = Vec::new();
            let mut indexes = db.prepare(&format!(
                "SELECT name FROM pragma_index_list({q}) WHERE origin = 'u'"
            ))?;
            let names: Vec<String> = indexes
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for index in names {
                let mut cols: Vec<String> = db
                    .prepare(&format!(
                        "SELECT name FROM pragma_index_info({})",
                        quote_text(&index)
                    ))?
                    .query_map([], |r| r.get::<_, Option<String>>(0))?
                    .map(|c| c.map(|c| c.unwrap_or_default().to_lowercase()))
                    .collect::<rusqlite::Result<_>>()?;
                cols.sort();
                unique.push(cols);
            }
            unique.sort();
            let mut fks: Vec<(i64, Vec<String>, String, Vec<String>)> = Vec::new();
            let mut stmt = db.prepare(&format!(
                "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list({q}) ORDER BY id, seq"
            ))?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
            for row in rows {
                let (id, parent, from, to) = row?;
                let to = to.unwrap_or_default().to_lowercase();
                match fks.last_mut() {
                    Some(fk) if fk.0 == id => {
                        fk.1.push(from.to_lowercase());
                        fk.3.push(to);
                    }
                    _ => fks.push((
                        id,
                        vec![from.to_lowercase()],
                        parent.to_lowercase(),
                        vec![to],
                    )),
                }
            }
            let mut foreign_keys: Vec<_> = fks.into_iter().map(|(_, a, b, c)| (a, b, c)).collect();
            foreign_keys.sort();
            let mut checks = checks(sql);
            checks.sort();
            Ok(Structure {
                columns,
                without_rowid,
                strict,
                primary_key,
                rowid_alias,
                unique,
                foreign_keys,
                checks,
            })
        };
        read().map_err(|e| e.to_string())
    }

    fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns
            .iter()
            .find(|c| c.column.name.eq_ignore_ascii_case(name))
    }
}

/// Whether a value stored under affinity `from` is stored unchanged under affinity `to`.
/// INTEGER and NUMERIC store alike (they differ only in CAST); BLOB (none) converts nothing.
pub fn keeps_values(from: Affinity, to: Affinity) -> bool {
    use Affinity::*;
    from == to || to == Blob || matches!((from, to), (Integer, Numeric) | (Numeric, Integer))
}

fn affinity_name(a: Affinity) -> &'static str {
    match a {
        Affinity::Integer => "integer",
        Affinity::Text => "text",
        Affinity::Blob => "blob",
        Affinity::Real => "real",
        Affinity::Numeric => "numeric",
    }
}

fn describe(c: &ColumnInfo) -> String {
    let mut s = if c.column.decl_type.is_empty() {
        "no type".to_string()
    } else {
        c.column.decl_type.clone()
    };
    s.push_str(&format!(
        " ({} affinity)",
        affinity_name(c.column.affinity())
    ));
    if c.column.not_null {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    s
}

fn count(source: &Connection, sql: &str) -> Option<i64> {
    source.query_row(sql, [], |r| r.get(0)).ok()
}

/// Compares a source table with the table of the same name on D1.
fn fit_table(source: &Connection, table: &Table, d1_sql: &str, from: &str) -> Result<TableFit> {
    let name = &table.name;
    let mut fit = TableFit {
        table: name.clone(),
        action: if name.eq_ignore_ascii_case(MIGRATIONS_TABLE) {
            "merge by name".into()
        } else {
            "fill".into()
        },
        mapping: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
        d1_name: None,
    };
    // The same definition but for layout (a rerun, or a D1 created from the source's DDL): it
    // fits, whatever SQLite here could make of it.
    fit.d1_name = declared_name(d1_sql);
    if canonical_sql(&table.sql) == canonical_sql(d1_sql) {
        return Ok(fit);
    }
    if table.is_virtual() {
        fit.problems.push(format!(
            "table {name:?}: virtual tables differ: source {}, D1 {}",
            one_line(&table.sql),
            one_line(d1_sql)
        ));
        return Ok(fit);
    }
    let (ours, theirs) = match (Structure::of(&table.sql), Structure::of(d1_sql)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            fit.problems.push(format!(
                "table {name:?}: its definitions cannot be compared ({e})"
            ));
            return Ok(fit);
        }
    };
    let mut problem = |column: &str, source_side: String, d1_side: String, why: &str| {
        fit.problems.push(format!(
            "table {name:?}, column {column:?}: source {source_side}, D1 {d1_side}: {why}"
        ))
    };
    let qt = from;
    let data: Vec<&ColumnInfo> = ours
        .columns
        .iter()
        .filter(|c| c.column.hidden == 0)
        .collect();
    let d1_data: Vec<&ColumnInfo> = theirs
        .columns
        .iter()
        .filter(|c| c.column.hidden == 0)
        .collect();
    for c in &data {
        let Some(d) = theirs.column(&c.column.name) else {
            problem(
                &c.column.name,
                describe(c),
                "has no such column".into(),
                "its values would have nowhere to go",
            );
            continue;
        };
        if d.column.hidden != 0 {
            problem(
                &c.column.name,
                describe(c),
                "a generated column".into(),
                "D1 computes it and refuses values for it",
            );
            continue;
        }
        let (from, to) = (c.column.affinity(), d.column.affinity());
        if !keeps_values(from, to) {
            problem(
                &c.column.name,
                describe(c),
                describe(d),
                "the affinity would change stored values",
            );
        }
        if d.column.not_null && !c.column.not_null {
            let nulls = count(
                source,
                &format!(
                    "SELECT count(*) FROM {qt} WHERE {} IS NULL",
                    quote_ident(&c.column.name)
                ),
            )
            .unwrap_or(0);
            if nulls > 0 {
                problem(
                    &c.column.name,
                    format!("{} holding NULL in {nulls} rows", describe(c)),
                    describe(d),
                    "D1 would refuse those rows",
                );
            } else {
                fit.notes.push(format!(
                    "column {:?} is NOT NULL on D1 only; the source holds no NULL in it",
                    c.column.name
                ));
            }
        }
        if c.default != d.default {
            fit.notes.push(format!(
                "column {:?}: default {} on the source, {} on D1 (the source's values are copied)",
                c.column.name,
                c.default.as_deref().unwrap_or("none"),
                d.default.as_deref().unwrap_or("none")
            ));
        }
    }
    for d in &d1_data {
        if ours.column(&d.column.name).is_some() {
            continue;
        }
        if d.column.not_null && d.default.is_none() && d.column.pk == 0 {
            problem(
                &d.column.name,
                "has no such column".into(),
                describe(d),
                "NOT NULL without a default: the source cannot fill it",
            );
        } else {
            fit.notes.push(format!(
                "column {:?} is on D1 only ({}); left {}",
                d.column.name,
                describe(d),
                match &d.default {
                    Some(v) => format!("to its default {v}"),
                    None => "NULL".into(),
                }
            ));
        }
    }
    let key = |s: &Structure| {
        let kind = if s.without_rowid {
            "WITHOUT ROWID"
        } else if s.rowid_alias {
            "INTEGER PRIMARY KEY (the rowid)"
        } else {
            "rowid"
        };
        if s.primary_key.is_empty() {
            format!("no primary key ({kind})")
        } else {
            format!("PRIMARY KEY ({}), {kind}", s.primary_key.join(", "))
        }
    };
    if ours.primary_key != theirs.primary_key
        || ours.without_rowid != theirs.without_rowid
        || ours.rowid_alias != theirs.rowid_alias
    {
        problem(
            "(primary key)",
            key(&ours),
            key(&theirs),
            "rows are identified by their key",
        );
    }
    if theirs.strict && !ours.strict {
        fit.notes.push(
            "D1's table is STRICT: a value of another type than its column's is refused".into(),
        );
    }
    for u in &theirs.unique {
        if ours.unique.contains(u) {
            continue;
        }
        let cols: Vec<String> = u.iter().map(|c| quote_ident(c)).collect();
        let duplicates = count(
            source,
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {qt} WHERE {} GROUP BY {} HAVING count(*) > 1)",
                cols.iter()
                    .map(|c| format!("{c} IS NOT NULL"))
                    .collect::<Vec<_>>()
                    .join(" AND "),
                cols.join(", ")
            ),
        );
        match duplicates {
            Some(0) => fit.notes.push(format!(
                "UNIQUE ({}) on D1 only; the source's values are unique",
                u.join(", ")
            )),
            Some(n) => problem(
                &u.join(", "),
                format!("not unique ({n} values occur more than once)"),
                "UNIQUE".into(),
                "D1 would refuse the repeated rows",
            ),
            None => problem(
                &u.join(", "),
                "not unique".into(),
                "UNIQUE".into(),
                "the source's columns cannot be checked",
            ),
        }
    }
    for fk in &theirs.foreign_keys {
        let same = ours.foreign_keys.iter().any(|o| {
            o.0 == fk.0
                && o.1 == fk.1
                && (o.2 == fk.2
                    || o.2.iter().all(String::is_empty)
                    || fk.2.iter().all(String::is_empty))
        });
        if !same {
            fit.notes.push(format!(
                "foreign key ({}) → {} on D1 only: rows whose parent is missing are refused (MIGRATION_ON_BAD_ROW)",
                fk.0.join(", "),
                fk.1
            ));
        }
    }
    for (check, written) in &theirs.checks {
        if ours.checks.iter().any(|(c, _)| c == check) {
            continue;
        }
        match count(
            source,
            &format!("SELECT count(*) FROM {qt} WHERE NOT ({written})"),
        ) {
            Some(0) => fit.notes.push(format!(
                "CHECK ({}) on D1 only; every source row meets it",
                one_line(written)
            )),
            Some(n) => problem(
                "(check)",
                format!("{n} rows that break it"),
                format!("CHECK ({})", one_line(written)),
                "D1 would refuse those rows",
            ),
            None => fit.notes.push(format!(
                "CHECK ({}) on D1 only (not checkable on the source): rows that break it are refused (MIGRATION_ON_BAD_ROW)",
                one_line(written)
            )),
        }
    }
    // The mapping, where it is not one-to-one.
    let same_order = data.len() == d1_data.len()
        && data
            .iter()
            .zip(&d1_data)
            .all(|(a, b)| a.column.name == b.column.name);
    if !same_order {
        for c in &data {
            if let Some(at) = d1_data
                .iter()
                .position(|d| d.column.name.eq_ignore_ascii_case(&c.column.name))
            {
                fit.mapping.push(format!(
                    "{} → {} (column {} on D1)",
                    c.column.name,
                    d1_data[at].column.name,
                    at + 1
                ));
            }
        }
        for d in &d1_data {
            if ours.column(&d.column.name).is_none() {
                fit.mapping
                    .push(format!("(none) → {} (D1 only)", d.column.name));
            }
        }
    }
    Ok(fit)
}

/// Whether two definitions of an index, view or trigger are equivalent: the same canonical SQL
/// (the names, already matched, left aside; `ASC`, the default order, too).
fn equivalent_object(ours: &str, theirs: &str) -> bool {
    let shape = |sql: &str| -> Vec<String> {
        let mut t: Vec<String> = canonical_sql(sql)
            .split(' ')
            .map(str::to_string)
            .filter(|t| t != "asc")
            .collect();
        if let (Some(kind), Some(on)) = (
            t.iter().position(|w| w == "index"),
            t.iter().position(|w| w == "on"),
        ) {
            if kind < on {
                t.drain(kind + 1..on);
            }
        }
        t
    };
    shape(ours) == shape(theirs)
}

fn matching(tokens: &[String], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The CHECK constraints of a CREATE TABLE: each as canonical SQL and as written.
fn checks(sql: &str) -> Vec<(String, String)> {
    let mut lexer = Lexer::new(sql);
    let mut tokens: Vec<(String, usize, usize)> = Vec::new();
    while let Some(t) = lexer.next_token() {
        tokens.push(t);
    }
    let words: Vec<String> = tokens.iter().map(|t| t.0.clone()).collect();
    let mut out = Vec::new();
    for (i, t) in words.iter().enumerate() {
        if t == "check" && words.get(i + 1).map(String::as_str) == Some("(") {
            if let Some(close) = matching(&words, i + 1) {
                out.push((
                    words[i + 2..close].join(" "),
                    sql[tokens[i + 1].2..tokens[close].1].to_string(),
                ));
            }
        }
    }
    out
}

/// The name a `CREATE [VIRTUAL] TABLE` gives its table, as written (unquoted).
fn declared_name(sql: &str) -> Option<String> {
    let mut lexer = Lexer::new(sql);
    let mut seen_table = false;
    while let Some((token, start, end)) = lexer.next_token() {
        if !seen_table {
            seen_table = token == "table";
            continue;
        }
        if ["if", "not", "exists"].contains(&token.as_str()) {
            continue;
        }
        let raw = &sql[start..end];
        return Some(match raw.chars().next() {
            Some('"') => raw[1..raw.len() - 1].replace("\"\"", "\""),
            Some('`') => raw[1..raw.len() - 1].replace("``", "`"),
            Some('[') => raw[1..raw.len() - 1].to_string(),
            _ => raw.to_string(),
        });
    }
    None
}

/// SQL in a canonical form: comments and layout dropped, keywords and identifiers lower-case and
/// unquoted, string and blob literals as written, one space between tokens. Two texts SQLite
/// reads alike (but for identifiers quoted only in one) give the same form.
pub fn canonical_sql(sql: &str) -> String {
    let mut t = tokens(sql);
    // `IF NOT EXISTS` is not part of a definition (SQLite drops it from what it keeps).
    if let Some(at) = t.windows(3).position(|w| w == ["if", "not", "exists"]) {
        t.drain(at..at + 3);
    }
    while t.last().map(String::as_str) == Some(";") {
        t.pop();
    }
    t.join(" ")
}

fn tokens(sql: &str) -> Vec<String> {
    let mut lexer = Lexer::new(sql);
    let mut out = Vec::new();
    while let Some((token, _, _)) = lexer.next_token() {
        out.push(token);
    }
    out
}

/// A small SQL tokenizer: enough of SQLite's lexical rules to compare definitions.
struct Lexer<'a> {
    sql: &'a str,
    at: usize,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Lexer<'a> {
        Lexer { sql, at: 0 }
    }

    /// The next token in canonical form, with its byte range.
    fn next_token(&mut self) -> Option<(String, usize, usize)> {
        let bytes = self.sql.as_bytes();
        loop {
            while self.at < bytes.len() && bytes[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
            if self.sql[self.at..].starts_with("--") {
                self.at = self.sql[self.at..]
                    .find('\n')
                    .map_or(bytes.len(), |n| self.at + n);
                continue;
            }
            if self.sql[self.at..].starts_with("/*") {
                self.at = self.sql[self.at + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| self.at + 2 + n + 2);
                continue;
            }
            break;
        }
        if self.at >= bytes.len() {
            return None;
        }
        let start = self.at;
        let c = bytes[start];
        let quoted = |lexer: &mut Lexer<'_>, close: u8| -> String {
            // From after the opening quote to the closing one, a doubled quote standing for one.
            let mut out = String::new();
            let mut i = lexer.at + 1;
            let b = lexer.sql.as_bytes();
            while i < b.len() {
                if b[i] == close {
                    if close != b']' && b.get(i + 1) == Some(&close) {
                        out.push(close as char);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                let ch = lexer.sql[i..].chars().next().expect("a char");
                out.push(ch);
                i += ch.len_utf8();
            }
            lexer.at = i;
            out
        };
        let token = match c {
            b'\'' => {
                let s = quoted(self, b'\'');
                format!("'{}'", s.replace('\'', "''"))
            }
            b'"' | b'`' | b'[' => {
                let close = match c {
                    b'[' => b']',
                    other => other,
                };
                identifier(&quoted(self, close))
            }
            b'x' | b'X' if bytes.get(start + 1) == Some(&b'\'') => {
                self.at += 1;
                let s = quoted(self, b'\'');
                format!("x'{}'", s.to_ascii_lowercase())
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 || c == b'$' => {
                let end = self.sql[start..]
                    .char_indices()
                    .find(|(_, ch)| {
                        !(ch.is_alphanumeric()
                            || *ch == '_'
                            || *ch == '$'
                            || *ch == '.' && c.is_ascii_digit())
                    })
                    .map_or(self.sql.len(), |(n, _)| start + n);
                self.at = end;
                self.sql[start..end].to_lowercase()
            }
            _ => {
                let ch = self.sql[start..].chars().next().expect("a char");
                self.at += ch.len_utf8();
                ch.to_string()
            }
        };
        Some((token, start, self.at))
    }
}

/// An identifier in canonical form: lower-case, bare when it can be.
fn identifier(name: &str) -> String {
    let lower = name.to_lowercase();
    let bare = lower
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && lower.chars().all(|c| c.is_alphanumeric() || c == '_');
    if bare {
        lower
    } else {
        quote_ident(&lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_with(sql: &str) -> (tempfile::TempDir, Connection, Schema) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        let conn = crate::source::open_read_only(&path).unwrap();
        let schema = crate::discover::discover(&crate::source::SqliteCatalog(&conn)).unwrap();
        (dir, conn, schema)
    }

    fn existing(sqls: &[(&str, &str, &str)]) -> HashMap<String, (String, String)> {
        sqls.iter()
            .map(|(kind, name, sql)| (name.to_lowercase(), (kind.to_string(), sql.to_string())))
            .collect()
    }

    #[test]
    fn a_table_is_named_as_its_definition_spells_it() {
        assert_eq!(
            declared_name("create table if not exists \"My \"\"T\"\"\" (x)").as_deref(),
            Some("My \"T\"")
        );
        assert_eq!(
            declared_name("CREATE VIRTUAL TABLE [Docs] USING fts5(a)").as_deref(),
            Some("Docs")
        );
        assert_eq!(
            declared_name("CREATE TABLE Counter(id)").as_deref(),
            Some("Counter")
        );
    }

    #[test]
    fn canonical_sql_ignores_layout_quotes_and_case() {
        assert_eq!(
            canonical_sql(
                "CREATE VIEW \"V\" AS\n  SELECT [a],`B` -- note\n FROM t WHERE x<='Q''s'"
            ),
            canonical_sql("create view v as select a, b from T where x <= 'Q''s';")
        );
        assert_ne!(
            canonical_sql("SELECT 'A'"),
            canonical_sql("SELECT 'a'"),
            "string literals keep their case"
        );
    }

    #[test]
    fn a_reformatted_reordered_table_with_an_extra_nullable_column_fits() {
        let (_dir, conn, schema) = source_with(
            "CREATE TABLE [Artist] ([ArtistId] INTEGER NOT NULL, [Name] NVARCHAR(120),
               CONSTRAINT [PK_Artist] PRIMARY KEY ([ArtistId]));
             INSERT INTO Artist VALUES (1, 'AC/DC');",
        );
        let d1 = existing(&[(
            "table",
            "Artist",
            "CREATE TABLE artist (name nvarchar(120), artistid integer primary key not null, note text)",
        )]);
        let fit = fit(&conn, &schema, &d1, &|t| quote_ident(t)).unwrap();
        let t = &fit.tables[0];
        assert_eq!(t.action, "fill");
        assert!(t.problems.is_empty(), "{t:?}");
        assert_eq!(
            t.mapping,
            vec![
                "ArtistId → artistid (column 2 on D1)",
                "Name → name (column 1 on D1)",
                "(none) → note (D1 only)"
            ]
        );
        assert!(
            t.notes.iter().any(|n| n.contains("\"note\" is on D1 only")),
            "{t:?}"
        );
    }

    #[test]
    fn each_real_incompatibility_is_one_line_naming_table_column_and_both_sides() {
        let (_dir, conn, schema) = source_with(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT, d TEXT);
             INSERT INTO t VALUES (1, 'x', 2, NULL, 'same'), (2, 'y', 3, 'z', 'same');",
        );
        let d1 = existing(&[(
            "table",
            "t",
            "CREATE TABLE t (id TEXT PRIMARY KEY, b REAL, c TEXT NOT NULL, d TEXT UNIQUE, e INT NOT NULL,
               CHECK (length(d)>=4), CHECK(b <= 2))",
        )]);
        let fitted = fit(&conn, &schema, &d1, &|t| quote_ident(t)).unwrap();
        assert!(
            fitted.tables[0].notes.contains(
                &"CHECK (length(d)>=4) on D1 only; every source row meets it".to_string()
            ),
            "{fitted:?}"
        );
        let problems = fitted.problems();
        let expect = [
            "table \"t\", column \"a\": source TEXT (text affinity), D1 has no such column",
            "table \"t\", column \"b\": source INTEGER (integer affinity), D1 REAL (real affinity): the affinity would change",
            "table \"t\", column \"c\": source TEXT (text affinity) holding NULL in 1 rows, D1 TEXT (text affinity) NOT NULL",
            "table \"t\", column \"e\": source has no such column, D1 INT (integer affinity) NOT NULL: NOT NULL without a default",
            "table \"t\", column \"(primary key)\": source PRIMARY KEY (id), INTEGER PRIMARY KEY (the rowid), D1 PRIMARY KEY (id), rowid",
            "table \"t\", column \"d\": source not unique (1 values occur more than once), D1 UNIQUE",
            "table \"t\", column \"id\": source INTEGER (integer affinity), D1 TEXT (text affinity)",
            "table \"t\", column \"(check)\": source 1 rows that break it, D1 CHECK (b <= 2)",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "{e}\n{problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }

    #[test]
    fn indexes_views_and_triggers_are_kept_when_equivalent_and_reported_when_not() {
        let (_dir, conn, schema) = source_with(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT);
             CREATE INDEX t_a ON t(a, b DESC);
             CREATE INDEX t_b ON t(b);
             CREATE VIEW v AS SELECT a FROM t WHERE b = 'x';
             CREATE TABLE u (id INTEGER PRIMARY KEY);
             CREATE INDEX clash ON u(id);",
        );
        let d1 = existing(&[
            (
                "index",
                "t_a",
                "CREATE INDEX \"T_A\" on \"t\" ( \"a\" , b desc )",
            ),
            ("index", "t_b", "CREATE UNIQUE INDEX t_b ON t(b)"),
            ("view", "v", "create view V as select A from T where b='x'"),
            ("table", "clash", "CREATE TABLE clash (x)"),
        ]);
        let fit = fit(&conn, &schema, &d1, &|t| quote_ident(t)).unwrap();
        let action = |name: &str| {
            fit.objects
                .iter()
                .find(|o| o.name == name)
                .map(|o| o.action.as_str())
                .unwrap()
        };
        assert_eq!(action("t_a"), "keep");
        assert_eq!(action("t_b"), "differs");
        assert_eq!(action("v"), "keep");
        assert_eq!(action("clash"), "conflict");
        assert_eq!(
            fit.problems(),
            vec!["index \"clash\": D1 has a table of that name"]
        );
    }
}
