//! Transforms, the T of the pipeline: what `MIGRATION_TRANSFORM` asks for (rename tables and
//! columns, drop columns, compute a column from a SQLite expression, keep only rows matching a
//! filter), turned into the schema D1 receives and into the reads that feed the workers.
//!
//! In: the discovered source [`Schema`] and the parsed transform file. Out: a [`Transformed`]
//! source, whose `schema` is what D1 will hold (discovered, like any database, from an in-memory
//! SQLite database where SQLite's own `ALTER TABLE ... DROP COLUMN / RENAME COLUMN / RENAME TO`
//! made foreign keys, indexes, views and triggers follow), and whose reads are FROM clauses
//! (`(SELECT expr AS col, ... FROM main.src WHERE filter)`) that `source` pages through in the
//! same single read the workers always did. `plan`, `produce`, `load` and `validate` then work
//! on the D1 names, unaware of the transform. Nothing here writes anywhere.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::compat::Finding;
use crate::discover::{discover, select_tables, Catalog, Schema, Table, TableKind};
use crate::error::{Error, Result};
use crate::pack::Shape;
use crate::source::{value, SqliteCatalog};
use crate::value::{quote_ident, quote_text, Value};

/// The transform file as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    table: BTreeMap<String, TableSpec>,
    /// Indexes, views and triggers to leave out of D1 (those a dropped column breaks, say).
    #[serde(default)]
    leave_out: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    rename: Option<String>,
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    rename_columns: BTreeMap<String, String>,
    #[serde(rename = "where")]
    filter: Option<String>,
}

/// A parsed `MIGRATION_TRANSFORM` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    path: PathBuf,
    digest: String,
    spec: Spec,
}

impl Transform {
    /// Reads and parses the file; unknown keys and malformed TOML are errors naming the place.
    pub fn load(path: &Path) -> Result<Transform> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "MIGRATION_TRANSFORM {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        Transform::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Transform> {
        let spec: Spec = toml::from_str(text).map_err(|e| {
            Error::Config(format!(
                "MIGRATION_TRANSFORM {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        Ok(Transform {
            path: path.to_path_buf(),
            digest: blake3::hash(text.as_bytes()).to_hex().to_string(),
            spec,
        })
    }

    /// The hash of the file's content: part of a migration's identity (the checkpoint).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// An error at `place` (`[table.X] drop`, say) of the file.
    fn error(&self, place: &str, message: String) -> Error {
        Error::Config(format!(
            "MIGRATION_TRANSFORM {} {place}: {message}",
            self.path.display()
        ))
    }
}

/// How one table goes from the source to D1, for the dry run and the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TableMapping {
    pub source: String,
    pub target: String,
    /// Columns copied as they are, by their source names.
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
    /// `[source name, D1 name]`.
    pub renamed: Vec<[String; 2]>,
    /// `[column, expression]`.
    pub computed: Vec<[String; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// With a filter: the source's rows, and how many the filter keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_kept: Option<u64>,
}

impl TableMapping {
    /// One line per table: `Customer → customers: dropped Fax; ...`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.kept.is_empty() {
            parts.push(format!("kept {}", self.kept.join(", ")));
        }
        if !self.dropped.is_empty() {
            parts.push(format!("dropped {}", self.dropped.join(", ")));
        }
        if !self.renamed.is_empty() {
            let r: Vec<String> = self
                .renamed
                .iter()
                .map(|[a, b]| format!("{a} → {b}"))
                .collect();
            parts.push(format!("renamed {}", r.join(", ")));
        }
        if !self.computed.is_empty() {
            let c: Vec<String> = self
                .computed
                .iter()
                .map(|[c, e]| format!("{c} = {e}"))
                .collect();
            parts.push(format!("computed {}", c.join(", ")));
        }
        if let Some(f) = &self.filter {
            match (self.rows_kept, self.source_rows) {
                (Some(k), Some(n)) => parts.push(format!("where {f} (keeps {k} of {n} rows)")),
                _ => parts.push(format!("where {f}")),
            }
        }
        format!(
            "{} → {}: {}",
            self.source,
            self.target,
            if parts.is_empty() {
                "as it is".to_string()
            } else {
                parts.join("; ")
            }
        )
    }
}

/// A foreign key of the transformed schema, in D1's names.
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    child: String,
    columns: Vec<String>,
    parent: String,
    parent_columns: Vec<String>,
    /// True when the transform can break it: the parent is filtered, or a column on either side
    /// is computed.
    touched: bool,
}

/// The source as D1 will hold it.
#[derive(Debug, Clone, Default)]
pub struct Transformed {
    /// The schema D1 receives (D1's names), tables selected by the configuration.
    pub schema: Schema,
    /// D1 table (lower case) → the FROM clause reading its rows on the source, for transformed
    /// tables only; the others are read from the table of the same name.
    reads: HashMap<String, String>,
    /// Every table the transform file names, in file order.
    pub mappings: Vec<TableMapping>,
    /// Indexes, views and triggers left out (`leave_out`), as `kind name`.
    pub left_out: Vec<String>,
    references: Vec<Reference>,
    /// The transform file's hash, when there is one.
    pub digest: Option<String>,
    /// FTS3/FTS4 tables recreated as FTS5 (`MIGRATION_FTS=convert`).
    pub fts: Vec<FtsConversion>,
}

impl Transformed {
    /// True when no transform applies: the source is copied as it is.
    pub fn is_identity(&self) -> bool {
        self.digest.is_none()
    }

    /// The FROM clause that reads the rows of D1 table `table` on the source.
    pub fn read_from(&self, table: &str) -> String {
        self.reads
            .get(&table.to_lowercase())
            .cloned()
            .unwrap_or_else(|| format!("main.{}", quote_ident(table)))
    }

    /// The reads of the transformed tables, for a `source::SqliteSide`.
    pub fn reads(&self) -> HashMap<String, String> {
        self.reads.clone()
    }

    /// The D1 names of the tables with computed columns (`set`): their values are whatever the
    /// expression yields, so a comparison gives them their column's affinity first, as D1 does
    /// on insert.
    pub fn computed_tables(&self) -> Vec<String> {
        self.mappings
            .iter()
            .filter(|m| !m.computed.is_empty())
            .map(|m| m.target.clone())
            .collect()
    }

    /// Points a shape's reads at the transformed rows.
    pub fn adapt(&self, shape: &mut Shape) {
        if let Some(from) = self.reads.get(&shape.table.to_lowercase()) {
            shape.read_from = from.clone();
        }
    }

    /// Rows whose parent the transform leaves out (or never existed): every foreign key when
    /// `all`, else only those the transform can break. Keys the transform touches are errors
    /// without a key (no reject file takes them: the transform must change); the others are the
    /// usual `foreign_key_violation`s, skippable by `MIGRATION_ON_BAD_ROW=skip`.
    pub fn foreign_key_findings(
        &self,
        conn: &Connection,
        all: bool,
        skip: bool,
    ) -> Result<Vec<Finding>> {
        let action = if skip {
            "it would go to the reject file"
        } else {
            "the run would stop here"
        };
        let mut findings = Vec::new();
        for r in self.references.iter().filter(|r| all || r.touched) {
            let Some(child) = self.schema.table(&r.child) else {
                continue;
            };
            let joins: Vec<String> = r
                .columns
                .iter()
                .zip(&r.parent_columns)
                .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
                .collect();
            let not_null: Vec<String> = r
                .columns
                .iter()
                .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
                .collect();
            let keys: Vec<String> = child
                .key_columns()
                .iter()
                .map(|k| format!("c.{k}"))
                .collect();
            let body = format!(
                "FROM {} AS c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})",
                self.read_from(&r.child),
                not_null.join(" AND "),
                self.read_from(&r.parent),
                joins.join(" AND ")
            );
            let count: i64 =
                conn.query_row(&format!("SELECT count(*) {body}"), [], |row| row.get(0))?;
            if count == 0 {
                continue;
            }
            let mut stmt = conn.prepare(&format!(
                "SELECT {} {body} ORDER BY {} LIMIT 10",
                keys.join(", "),
                keys.join(", ")
            ))?;
            let n = keys.len();
            let examples: Vec<String> = stmt
                .query_map([], |row| {
                    (0..n)
                        .map(|i| row.get_ref(i).map(|v| value(v).literal()))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(|k| k.join(", "))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let fk = format!(
                "{:?} ({}) → {:?} ({})",
                r.child,
                r.columns.join(", "),
                r.parent,
                r.parent_columns.join(", ")
            );
            if r.touched {
                let place = |table: &str| {
                    self.mappings
                        .iter()
                        .find(|m| m.target.eq_ignore_ascii_case(table))
                        .map_or(table.to_string(), |m| m.source.clone())
                };
                let cause = match self
                    .mappings
                    .iter()
                    .find(|m| m.target.eq_ignore_ascii_case(&r.parent) && m.filter.is_some())
                {
                    Some(m) => format!(
                        "MIGRATION_TRANSFORM [table.{}] where = {:?} leaves out their parents",
                        m.source,
                        m.filter.as_deref().unwrap_or_default()
                    ),
                    None => "a computed column of MIGRATION_TRANSFORM changes the key".into(),
                };
                findings.push(Finding::error(
                    "transform_breaks_foreign_key",
                    &r.child,
                    format!(
                        "{count} rows of {:?} would reference rows of {:?} that D1 would not hold (foreign key {fk}; rows {}): {cause}; D1 enforces foreign keys, so filter the children too ([table.{}] where)",
                        r.child,
                        r.parent,
                        examples.join("; "),
                        place(&r.child)
                    ),
                ));
            } else {
                for key in examples {
                    findings.push(
                        Finding::error(
                            "foreign_key_violation",
                            &r.child,
                            format!(
                                "row {key} of {:?} references a row of {:?} that does not exist; D1 enforces foreign keys, so {action}",
                                r.child, r.parent
                            ),
                        )
                        .with_key(key),
                    );
                }
            }
        }
        Ok(findings)
    }

    /// Refuses, before anything is written, a transform that leaves children without parents.
    pub fn check_references(&self, conn: &Connection) -> Result<()> {
        let broken: Vec<String> = self
            .foreign_key_findings(conn, false, false)?
            .into_iter()
            .map(|f| f.message)
            .collect();
        if broken.is_empty() {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "the transform would break foreign keys; nothing was written:\n  {}",
                broken.join("\n  ")
            )))
        }
    }

    /// Counts, for each filtered table, the source's rows and the rows the filter keeps.
    pub fn count_filtered(&mut self, conn: &Connection) -> Result<()> {
        for m in self.mappings.iter_mut().filter(|m| m.filter.is_some()) {
            let count = |from: &str| -> Result<u64> {
                let n: i64 =
                    conn.query_row(&format!("SELECT count(*) FROM {from}"), [], |r| r.get(0))?;
                Ok(n as u64)
            };
            m.source_rows = Some(count(&format!("main.{}", quote_ident(&m.source)))?);
            m.rows_kept = Some(count(
                self.reads
                    .get(&m.target.to_lowercase())
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?);
        }
        Ok(())
    }
}

/// `MIGRATION_FTS`: what becomes of FTS3/FTS4 tables, which D1 refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fts {
    /// Refuse the source, naming the table (the compatibility check does).
    Refuse,
    /// Recreate each as FTS5, same name, columns and rows (rowids kept).
    Convert,
}

/// What the configuration asks of the source: `MIGRATION_TRANSFORM`, `MIGRATION_FTS`, and the
/// table selection (`MIGRATION_TABLES`, `MIGRATION_EXCLUDE_TABLES`: source names, or D1's).
#[derive(Debug, Clone, Copy)]
pub struct Reshape<'a> {
    pub transform: Option<&'a Transform>,
    pub fts: Fts,
    pub tables: &'a [String],
    pub exclude_tables: &'a [String],
}

/// An FTS3/FTS4 table recreated as FTS5.
#[derive(Debug, Clone, PartialEq)]
pub struct FtsConversion {
    pub table: String,
    pub module: String,
    /// The FTS5 table's DDL.
    pub sql: String,
    /// FTS3/FTS4 options FTS5 has no equal for, each with what becomes of it.
    pub lost: Vec<String>,
}

impl FtsConversion {
    /// The dry run's line about it.
    pub fn finding(&self) -> Finding {
        let lost = if self.lost.is_empty() {
            "every option has an FTS5 equal".to_string()
        } else {
            format!("options FTS5 has no equal for: {}", self.lost.join("; "))
        };
        Finding::warning(
            "fts_converted",
            &self.table,
            format!(
                "{} table {:?} is recreated as FTS5 (MIGRATION_FTS=convert), same columns and rowids: {}; {lost}",
                self.module, self.table, self.sql
            ),
        )
    }
}

/// Splits a module's arguments at the commas outside quotes and parentheses.
fn split_arguments(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0;
    for c in args.chars() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' | '`' => quote = Some(c),
                '[' => quote = Some(']'),
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(current.trim().to_string());
                    current.clear();
                    continue;
                }
                _ => {}
            },
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// `'x'`, `"x"`, `[x]` or `` `x` `` → `x`.
fn unquote(s: &str) -> String {
    let s = s.trim();
    let mut chars = s.chars();
    match (chars.next(), s.chars().last()) {
        (Some(a @ ('\'' | '"' | '`')), Some(b)) if a == b && s.len() >= 2 => {
            s[1..s.len() - 1].replace(&format!("{a}{a}"), &a.to_string())
        }
        (Some('['), Some(']')) => s[1..s.len() - 1].to_string(),
        _ => s.to_string(),
    }
}

/// The words of an FTS3 tokenizer specification: `porter`, `unicode61 "remove_diacritics=2"`.
fn words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in spec.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => current.push(c),
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            None => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The FTS5 table that stands for an FTS3/FTS4 one: its DDL, and the options left behind.
pub fn fts5_equivalent(table: &Table) -> (String, Vec<String>) {
    let sql = &table.sql;
    let args = match (sql.find('('), sql.rfind(')')) {
        (Some(a), Some(b)) if a < b => &sql[a + 1..b],
        _ => "",
    };
    let mut tokenizer = "ascii".to_string();
    let mut prefix: Option<String> = None;
    let mut unindexed: Vec<String> = Vec::new();
    let mut lost = Vec::new();
    for arg in split_arguments(args) {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) if !k.trim().contains(char::is_whitespace) => {
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            }
            _ => {
                let mut w = arg.splitn(2, char::is_whitespace);
                let first = w.next().unwrap_or_default().to_ascii_lowercase();
                if first == "tokenize" {
                    (first, w.next().unwrap_or_default().trim().to_string())
                } else {
                    continue; // a column definition: the columns are the discovered ones
                }
            }
        };
        match key.as_str() {
            "tokenize" => {
                let words = words(&unquote(&value));
                let name = words.first().map(|w| w.to_ascii_lowercase());
                let options: Vec<String> = words
                    .iter()
                    .skip(1)
                    .flat_map(|w| match w.split_once('=') {
                        Some((k, v)) => vec![k.to_string(), v.to_string()],
                        None => vec![w.clone()],
                    })
                    .map(|w| {
                        if w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                            w
                        } else {
                            format!("'{}'", w.replace('\'', "''"))
                        }
                    })
                    .collect();
                tokenizer = match name.as_deref() {
                    None | Some("simple") => "ascii".into(),
                    Some("porter") => "porter ascii".into(),
                    Some("unicode61") => {
                        let mut t = vec!["unicode61".to_string()];
                        t.extend(options);
                        t.join(" ")
                    }
                    Some(other) => {
                        lost.push(format!(
                            "tokenize={value} (FTS5 has no {other} tokenizer; unicode61 is used)"
                        ));
                        "unicode61".into()
                    }
                };
            }
            "prefix" => {
                let sizes: Vec<String> = unquote(&value)
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect();
                prefix = Some(sizes.join(" "));
            }
            "notindexed" => unindexed.push(unquote(&value)),
            "content" => lost.push(format!(
                "content={value} (the FTS5 table holds its own copy of the rows)"
            )),
            "compress" | "uncompress" => {
                lost.push(format!("{key}={value} (FTS5 stores text uncompressed)"))
            }
            "languageid" => lost.push(format!(
                "languageid={value} (FTS5 has no language id; the column is not copied)"
            )),
            "matchinfo" => lost.push(format!(
                "matchinfo={value} (FTS5 has no matchinfo(); use its auxiliary functions)"
            )),
            "order" => lost.push(format!(
                "order={value} (FTS5 returns rows in rowid order; use ORDER BY rowid DESC)"
            )),
            other => lost.push(format!("{other}={value} (unknown to FTS5)")),
        }
    }
    let mut items: Vec<String> = table
        .data_columns()
        .iter()
        .map(|c| {
            if unindexed.iter().any(|u| u.eq_ignore_ascii_case(&c.name)) {
                format!("{} UNINDEXED", quote_ident(&c.name))
            } else {
                quote_ident(&c.name)
            }
        })
        .collect();
    items.push(format!("tokenize = {}", quote_text(&tokenizer)));
    if let Some(p) = prefix {
        items.push(format!("prefix = {}", quote_text(&p)));
    }
    (
        format!(
            "CREATE VIRTUAL TABLE {} USING fts5({})",
            quote_ident(&table.name),
            items.join(", ")
        ),
        lost,
    )
}

/// Recreates the FTS3/FTS4 tables of `schema` as FTS5: the table as SQLite discovers the FTS5
/// DDL (its columns, hidden ones included), read from the source as before (rowid and columns).
fn convert_fts(schema: &mut Schema) -> Result<Vec<FtsConversion>> {
    let mut out = Vec::new();
    for t in schema.tables.iter_mut() {
        let module = match &t.kind {
            TableKind::Virtual { module } if module == "fts3" || module == "fts4" => module.clone(),
            _ => continue,
        };
        let (sql, lost) = fts5_equivalent(t);
        if lost
            .iter()
            .any(|l| l.starts_with("content='' ") || l.starts_with("content=\"\" "))
        {
            return Err(Error::Refused(format!(
                "MIGRATION_FTS=convert: {module} table {:?} is contentless (content=''): it does not keep its text, so there is nothing to fill an FTS5 table with; rebuild it from its source text",
                t.name
            )));
        }
        let mem = Connection::open_in_memory()?;
        mem.execute_batch(&sql).map_err(|e| {
            Error::Refused(format!(
            "MIGRATION_FTS=convert: {module} table {:?} cannot be recreated as FTS5 ({sql}): {}",
            t.name,
            sqlite_message(&e)
        ))
        })?;
        let converted = discover(&SqliteCatalog(&mem))?
            .tables
            .into_iter()
            .find(|c| c.name == t.name)
            .expect("the FTS5 table was created");
        *t = converted;
        out.push(FtsConversion {
            table: t.name.clone(),
            module,
            sql,
            lost,
        });
    }
    // The statistics of their FTS3/FTS4 shadow tables describe tables D1 will not have.
    let shadow_of_converted = |tbl: &str| {
        let lower = tbl.to_lowercase();
        schema.table(tbl).is_none()
            && out
                .iter()
                .any(|f| lower.starts_with(&format!("{}_", f.table.to_lowercase())))
    };
    let keep: Vec<bool> = schema
        .stat1
        .iter()
        .map(|s| !shadow_of_converted(&s.tbl))
        .collect();
    let mut keep = keep.into_iter();
    schema.stat1.retain(|_| keep.next().unwrap_or(true));
    Ok(out)
}

/// Discovers the source and applies the configuration to it: the transform, FTS conversion and
/// table selection of `reshape`.
pub fn source_schema(conn: &Connection, reshape: &Reshape<'_>) -> Result<Transformed> {
    let (include, exclude) = (reshape.tables, reshape.exclude_tables);
    let schema = discover(&SqliteCatalog(conn))?;
    let mut out = match reshape.transform {
        Some(t) => apply(t, conn, &schema)?,
        None => Transformed {
            schema,
            ..Transformed::default()
        },
    };
    if reshape.fts == Fts::Convert {
        out.fts = convert_fts(&mut out.schema)?;
    }
    let rename = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .map(|n| {
                out.mappings
                    .iter()
                    .find(|m| m.source.eq_ignore_ascii_case(n))
                    .map(|m| m.target.clone())
                    .unwrap_or_else(|| n.clone())
            })
            .collect()
    };
    let (include, exclude) = (rename(include), rename(exclude));
    select_tables(&mut out.schema, &include, &exclude)?;
    out.schema.skipped.extend(header_values_left_behind(conn)?);
    let kept = |name: &str| out.schema.table(name).is_some();
    let references: Vec<Reference> = out
        .references
        .iter()
        .filter(|r| kept(&r.child) && kept(&r.parent))
        .cloned()
        .collect();
    out.references = references;
    let mappings: Vec<TableMapping> = out
        .mappings
        .iter()
        .filter(|m| kept(&m.target))
        .cloned()
        .collect();
    out.mappings = mappings;
    let fts: Vec<FtsConversion> = out.fts.iter().filter(|f| kept(&f.table)).cloned().collect();
    out.fts = fts;
    Ok(out)
}

/// The source's `user_version` and `application_id` when set: D1 refuses both pragmas, so they
/// cannot travel; each is told (the dry run's findings, the report's `skipped`) with the
/// statement that sets it again on a file rolled back.
fn header_values_left_behind(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pragma in ["user_version", "application_id"] {
        let value: i64 = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?;
        if value != 0 {
            out.push((
                format!("PRAGMA {pragma}"),
                format!(
                    "the source's {pragma} is {value}; D1 refuses PRAGMA {pragma}, so it is not \
                     carried over (a file rolled back from D1 has 0): set it again there with \
                     PRAGMA {pragma} = {value}"
                ),
            ));
        }
    }
    Ok(out)
}

/// The message of a SQLite error, without rusqlite's wrapping.
fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
        other => other.to_string(),
    }
}

/// `error in view v after drop column: ...` → ("view", "v"): the object an ALTER broke.
fn broken_object(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("error in ")?;
    let (kind, rest) = rest.split_once(' ')?;
    if !["index", "view", "trigger"].contains(&kind) {
        return None;
    }
    let name = rest.split(" after ").next()?.trim_end_matches(':');
    Some((kind.to_string(), name.to_string()))
}

/// Applies `transform` to `schema` (discovered from `conn`).
pub fn apply(transform: &Transform, conn: &Connection, schema: &Schema) -> Result<Transformed> {
    let spec = &transform.spec;
    // 1. Every name in the file must exist, and no change may touch a key.
    let mut tables: Vec<(&Table, &TableSpec, String)> = Vec::new();
    for (name, ts) in &spec.table {
        let place = format!("[table.{name}]");
        let table = schema.table(name).ok_or_else(|| {
            transform.error(&place, format!("there is no table {name:?} in the source"))
        })?;
        if table.is_virtual() {
            return Err(transform.error(
                &place,
                format!("{name:?} is a virtual table; transforms apply to ordinary tables only"),
            ));
        }
        let column = |key: &str, col: &str| {
            table
                .columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(col))
                .ok_or_else(|| {
                    transform.error(
                        &format!("[table.{name}] {key}"),
                        format!("there is no column {col:?} in table {:?}", table.name),
                    )
                })
        };
        for col in &ts.drop {
            let c = column("drop", col)?;
            if c.pk > 0 {
                return Err(transform.error(
                    &format!("[table.{name}] drop"),
                    format!("{col:?} is part of the primary key of {:?}; rows are read, checkpointed and validated by their key, so it cannot be dropped", table.name),
                ));
            }
        }
        for (col, expr) in &ts.set {
            let c = column("set", col)?;
            let place = format!("[table.{name}.set] {col}");
            if c.pk > 0 {
                return Err(transform.error(
                    &place,
                    format!("{col:?} is part of the primary key of {:?}; rows are read, checkpointed and validated by their key, so it cannot be computed", table.name),
                ));
            }
            if !c.is_stored_data() {
                return Err(transform.error(
                    &place,
                    format!("{col:?} is a generated or hidden column; SQLite computes it"),
                ));
            }
            if ts.drop.iter().any(|d| d.eq_ignore_ascii_case(col)) {
                return Err(transform.error(&place, format!("{col:?} is also dropped")));
            }
            let sql = format!(
                "SELECT ({expr}) FROM main.{} LIMIT 0",
                quote_ident(&table.name)
            );
            conn.prepare(&sql).map_err(|e| {
                transform.error(
                    &place,
                    format!(
                        "SQLite refuses the expression {expr:?}: {}",
                        sqlite_message(&e)
                    ),
                )
            })?;
        }
        for (col, to) in &ts.rename_columns {
            column("rename_columns", col)?;
            if ts.drop.iter().any(|d| d.eq_ignore_ascii_case(col)) {
                return Err(transform.error(
                    &format!("[table.{name}.rename_columns] {col}"),
                    format!("{col:?} is also dropped"),
                ));
            }
            if to.trim().is_empty() {
                return Err(transform.error(
                    &format!("[table.{name}.rename_columns] {col}"),
                    "the new name is empty".into(),
                ));
            }
        }
        if let Some(to) = &ts.rename {
            let lower = to.to_ascii_lowercase();
            if to.trim().is_empty() || lower.starts_with("sqlite_") || lower.starts_with("_cf_") {
                return Err(transform.error(
                    &format!("[table.{name}] rename"),
                    format!("{to:?} cannot name a table on D1 (empty, or a reserved sqlite_ / _cf_ prefix)"),
                ));
            }
        }
        if let Some(filter) = &ts.filter {
            let sql = format!(
                "SELECT 1 FROM main.{} WHERE ({filter}) LIMIT 0",
                quote_ident(&table.name)
            );
            conn.prepare(&sql).map_err(|e| {
                transform.error(
                    &format!("[table.{name}] where"),
                    format!(
                        "SQLite refuses the filter {filter:?}: {}",
                        sqlite_message(&e)
                    ),
                )
            })?;
        }
        tables.push((table, ts, ts.rename.clone().unwrap_or(table.name.clone())));
    }
    for name in &spec.leave_out {
        if !schema
            .objects
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(name))
        {
            return Err(transform.error(
                "leave_out",
                format!("there is no index, view or trigger {name:?} in the source"),
            ));
        }
    }

    // 2. The source's schema, in memory, changed by SQLite itself.
    let mem = Connection::open_in_memory()?;
    let scratch = |what: &str, sql: &str| -> Result<()> {
        mem.execute_batch(sql).map_err(|e| {
            Error::Config(format!(
                "MIGRATION_TRANSFORM: {what} cannot be loaded into the in-memory copy of the schema: {}",
                sqlite_message(&e)
            ))
        })
    };
    for t in &schema.tables {
        if t.is_virtual() {
            // A stand-in with the same columns, so views and triggers using it still parse.
            let cols: Vec<String> = t
                .data_columns()
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect();
            scratch(
                &format!("virtual table {:?}", t.name),
                &format!("CREATE TABLE {}({})", quote_ident(&t.name), cols.join(", ")),
            )?;
        } else {
            scratch(&format!("table {:?}", t.name), &t.sql)?;
        }
    }
    for o in &schema.objects {
        scratch(&format!("{} {:?}", o.kind, o.name), &o.sql)?;
    }
    let mut left_out = Vec::new();
    for o in &schema.objects {
        if spec
            .leave_out
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&o.name))
        {
            mem.execute_batch(&format!(
                "DROP {} {}",
                o.kind.to_ascii_uppercase(),
                quote_ident(&o.name)
            ))?;
            left_out.push(format!("{} {}", o.kind, o.name));
        }
    }
    // An ALTER that breaks an index, view or trigger: the object is named, and the run refused
    // unless the file leaves it out; the rest of the ALTERs go on to find every such object.
    let mut cannot_stand: Vec<String> = Vec::new();
    let mut alter = |place: String, sql: String| -> Result<()> {
        for _ in 0..1000 {
            match mem.execute_batch(&sql) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let message = sqlite_message(&e);
                    match broken_object(&message) {
                        Some((kind, name)) => {
                            cannot_stand.push(format!(
                                "{place}: {kind} {name:?} can no longer stand ({message})"
                            ));
                            mem.execute_batch(&format!(
                                "DROP {} {}",
                                kind.to_ascii_uppercase(),
                                quote_ident(&name)
                            ))?;
                        }
                        None => return Err(transform.error(&place, format!("SQLite: {message}"))),
                    }
                }
            }
        }
        Err(transform.error(&place, "too many objects break".into()))
    };
    for (table, ts, _) in &tables {
        let name = quote_ident(&table.name);
        for col in &ts.drop {
            alter(
                format!("[table.{}] drop {col:?}", table.name),
                format!("ALTER TABLE {name} DROP COLUMN {}", quote_ident(col)),
            )?;
        }
        for (col, to) in &ts.rename_columns {
            alter(
                format!("[table.{}.rename_columns] {col}", table.name),
                format!(
                    "ALTER TABLE {name} RENAME COLUMN {} TO {}",
                    quote_ident(col),
                    quote_ident(to)
                ),
            )?;
        }
    }
    for (table, ts, _) in &tables {
        if let Some(to) = &ts.rename {
            if to != &table.name {
                alter(
                    format!("[table.{}] rename", table.name),
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        quote_ident(&table.name),
                        quote_ident(to)
                    ),
                )?;
            }
        }
    }
    if !cannot_stand.is_empty() {
        return Err(Error::Config(format!(
            "MIGRATION_TRANSFORM {}: objects that can no longer stand; name them in leave_out = [...] to leave them out of D1:\n  {}",
            transform.path.display(),
            cannot_stand.join("\n  ")
        )));
    }
    // A parent column dropped under a child's foreign key.
    if let Err(e) = mem.execute_batch("PRAGMA foreign_key_check") {
        return Err(Error::Config(format!(
            "MIGRATION_TRANSFORM {}: the transformed schema's foreign keys no longer hold: {}",
            transform.path.display(),
            sqlite_message(&e)
        )));
    }

    // 3. The transformed schema, discovered like any database.
    let mut target = discover(&SqliteCatalog(&mem))?;
    for t in target.tables.iter_mut() {
        if let Some(original) = schema
            .tables
            .iter()
            .find(|s| s.is_virtual() && s.name == t.name)
        {
            *t = original.clone();
        }
    }
    target.skipped = schema.skipped.clone();
    let d1_name = |source: &str| -> String {
        tables
            .iter()
            .find(|(t, _, _)| t.name.eq_ignore_ascii_case(source))
            .map(|(_, _, to)| to.clone())
            .unwrap_or_else(|| source.to_string())
    };
    target.sequence = schema
        .sequence
        .iter()
        .map(|s| crate::discover::SequenceRow {
            name: d1_name(&s.name),
            ..s.clone()
        })
        .collect();
    // The planner's statistics travel with a table whose rows and values are the source's
    // (renamed, or with columns dropped or renamed, the numbers still hold); a table whose rows
    // are filtered or whose values are computed would get numbers that describe other data.
    target.stat1 = Vec::new();
    let mut reshaped: Vec<&str> = Vec::new();
    for s in &schema.stat1 {
        let reshaping = tables
            .iter()
            .find(|(t, _, _)| t.name.eq_ignore_ascii_case(&s.tbl));
        if let Some((t, ts, _)) =
            reshaping.filter(|(_, ts, _)| ts.filter.is_some() || !ts.set.is_empty())
        {
            if !reshaped.contains(&t.name.as_str()) {
                reshaped.push(&t.name);
                let why = if ts.filter.is_some() {
                    "filters its rows"
                } else {
                    "computes values"
                };
                target.skipped.push((
                    format!("sqlite_stat1 of {}", t.name),
                    format!(
                        "the transform {why} of table {:?}, so the source's planner statistics \
                         (sqlite_stat1) would not describe D1's rows: not copied; run ANALYZE {} \
                         on D1 once the data is in",
                        t.name,
                        quote_ident(&d1_name(&t.name))
                    ),
                ));
            }
            continue;
        }
        // An index left out has no statistics on D1.
        let left_out = matches!(&s.idx, Value::Text(idx) if left_out.iter().any(|o| {
            o.strip_prefix("index ")
                .is_some_and(|n| n.as_bytes().eq_ignore_ascii_case(idx))
        }));
        if !left_out {
            target.stat1.push(crate::discover::StatRow {
                tbl: d1_name(&s.tbl),
                ..s.clone()
            });
        }
    }

    // 4. The reads, and the mappings.
    let mut reads = HashMap::new();
    let mut mappings = Vec::new();
    for (table, ts, to) in &tables {
        let d1 = target.table(to).expect("the renamed table exists");
        let kept: Vec<&crate::discover::Column> = table
            .data_columns()
            .into_iter()
            .filter(|c| !ts.drop.iter().any(|d| d.eq_ignore_ascii_case(&c.name)))
            .collect();
        let d1_columns = d1.data_columns();
        if kept.len() != d1_columns.len() {
            return Err(transform.error(
                &format!("[table.{}]", table.name),
                format!(
                    "the transformed table has columns {:?}, not those expected",
                    d1_columns.iter().map(|c| &c.name).collect::<Vec<_>>()
                ),
            ));
        }
        let mut items = Vec::new();
        if let Some(rowid) = d1.hidden_rowid() {
            items.push(format!(
                "{} AS {rowid}",
                table.hidden_rowid().unwrap_or("rowid")
            ));
        }
        let mut mapping = TableMapping {
            source: table.name.clone(),
            target: d1.name.clone(),
            filter: ts.filter.clone(),
            dropped: ts.drop.clone(),
            ..TableMapping::default()
        };
        for (s, t) in kept.iter().zip(&d1_columns) {
            let computed = ts.set.iter().find(|(c, _)| c.eq_ignore_ascii_case(&s.name));
            let expr = match computed {
                Some((_, e)) => {
                    mapping.computed.push([t.name.clone(), e.clone()]);
                    format!("({e})")
                }
                None => quote_ident(&s.name),
            };
            if s.name != t.name {
                mapping.renamed.push([s.name.clone(), t.name.clone()]);
            } else if computed.is_none() {
                mapping.kept.push(s.name.clone());
            }
            items.push(format!("{expr} AS {}", quote_ident(&t.name)));
        }
        let filter = ts
            .filter
            .as_ref()
            .map(|f| format!(" WHERE ({f})"))
            .unwrap_or_default();
        reads.insert(
            d1.name.to_lowercase(),
            format!(
                "(SELECT {} FROM main.{}{filter})",
                items.join(", "),
                quote_ident(&table.name)
            ),
        );
        mappings.push(mapping);
    }

    // 5. Foreign keys the transform can break.
    let changed = |table: &str, columns: &[String]| -> bool {
        tables.iter().any(|(_, ts, to)| {
            to.eq_ignore_ascii_case(table)
                && columns.iter().any(|c| {
                    let source = ts
                        .rename_columns
                        .iter()
                        .find(|(_, new)| new.eq_ignore_ascii_case(c))
                        .map(|(old, _)| old.as_str())
                        .unwrap_or(c);
                    ts.set.keys().any(|k| k.eq_ignore_ascii_case(source))
                })
        })
    };
    let filtered = |table: &str| {
        tables
            .iter()
            .any(|(_, ts, to)| to.eq_ignore_ascii_case(table) && ts.filter.is_some())
    };
    let mut references = Vec::new();
    for t in target.tables.iter().filter(|t| !t.is_virtual()) {
        let rows = SqliteCatalog(&mem).query(&format!(
            "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list({}) ORDER BY id, seq",
            quote_text(&t.name)
        ))?;
        let mut by_id: BTreeMap<i64, Reference> = BTreeMap::new();
        for r in rows {
            let id = match r[0] {
                Value::Integer(i) => i,
                _ => 0,
            };
            let text = |v: &Value| match v {
                Value::Text(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            let e = by_id.entry(id).or_insert_with(|| Reference {
                child: t.name.clone(),
                columns: Vec::new(),
                parent: text(&r[1]),
                parent_columns: Vec::new(),
                touched: false,
            });
            e.columns.push(text(&r[2]));
            e.parent_columns.push(text(&r[3]));
        }
        for mut r in by_id.into_values() {
            let Some(parent) = target.table(&r.parent) else {
                continue;
            };
            if r.parent_columns.iter().any(String::is_empty) {
                // References the parent's primary key.
                let mut pk: Vec<&crate::discover::Column> =
                    parent.columns.iter().filter(|c| c.pk > 0).collect();
                pk.sort_by_key(|c| c.pk);
                if pk.len() != r.columns.len() {
                    continue;
                }
                r.parent_columns = pk.iter().map(|c| c.name.clone()).collect();
            }
            r.parent = parent.name.clone();
            r.touched = filtered(&r.parent)
                || changed(&r.child, &r.columns)
                || changed(&r.parent, &r.parent_columns);
            references.push(r);
        }
    }

    Ok(Transformed {
        schema: target,
        reads,
        mappings,
        left_out,
        references,
        digest: Some(transform.digest.clone()),
        fts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE Customer (Id INTEGER PRIMARY KEY, Name TEXT, Email TEXT, Fax TEXT, Tenant INTEGER);
             CREATE TABLE Invoice (Id INTEGER PRIMARY KEY, CustomerId INTEGER REFERENCES Customer(Id), Total REAL);
             CREATE INDEX InvoiceByCustomer ON Invoice(CustomerId);
             CREATE INDEX CustomerByFax ON Customer(Fax);
             CREATE VIEW Contacts AS SELECT Name, Email FROM Customer;
             INSERT INTO Customer VALUES (1, 'a', 'a@x', 'f1', 1), (2, 'b', 'b@x', NULL, 2);
             INSERT INTO Invoice VALUES (10, 1, 1.5), (11, 2, 2.5), (12, NULL, 3.0);",
        )
        .unwrap();
        db
    }

    fn transform(text: &str) -> Transform {
        Transform::parse(Path::new("t.toml"), text).unwrap()
    }

    fn applied(text: &str) -> Result<Transformed> {
        let db = source();
        let schema = discover(&SqliteCatalog(&db)).unwrap();
        apply(&transform(text), &db, &schema)
    }

    #[test]
    fn renames_and_drops_follow_through_keys_indexes_and_views() {
        let e = Transform::parse(Path::new("t.toml"), "[table.Customer]\nleave = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml") && e.contains("line 2") && e.contains("unknown field `leave`"),
            "{e}"
        );
        let t = applied(
            "leave_out = [\"CustomerByFax\"]\n[table.Customer]\nrename = \"customers\"\ndrop = [\"Fax\"]\n\
             [table.Customer.rename_columns]\nEmail = \"email\"\n",
        )
        .unwrap();
        let invoice = t.schema.table("Invoice").unwrap();
        assert!(
            invoice.sql.contains("REFERENCES \"customers\""),
            "{}",
            invoice.sql
        );
        assert_eq!(invoice.foreign_keys[0].parent, "customers");
        let customers = t.schema.table("customers").unwrap();
        let names: Vec<&str> = customers.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Id", "Name", "email", "Tenant"]);
        let view = t
            .schema
            .objects
            .iter()
            .find(|o| o.name == "Contacts")
            .unwrap();
        assert!(
            view.sql.contains("\"customers\"") && view.sql.contains("email"),
            "{}",
            view.sql
        );
        assert!(!t.schema.objects.iter().any(|o| o.name == "CustomerByFax"));
        assert_eq!(t.left_out, ["index CustomerByFax"]);
        assert_eq!(
            t.read_from("customers"),
            "(SELECT \"Id\" AS \"Id\", \"Name\" AS \"Name\", \"Email\" AS \"email\", \"Tenant\" AS \"Tenant\" FROM main.\"Customer\")"
        );
    }

    /// The planner's statistics go with a table whose rows and values are the source's, under
    /// its D1 name (an index left out has none); a filtered table's are left behind and told.
    #[test]
    fn statistics_travel_with_renamed_tables_and_stay_behind_for_filtered_ones() {
        let db = source();
        db.execute_batch("CREATE INDEX CustomerByName ON Customer(Name); ANALYZE")
            .unwrap();
        let schema = discover(&SqliteCatalog(&db)).unwrap();
        let t = apply(
            &transform(
                "leave_out = [\"CustomerByFax\"]\n[table.Customer]\nrename = \"customers\"\n\
                 drop = [\"Fax\"]\n[table.Invoice]\nwhere = \"Total > 2\"\n",
            ),
            &db,
            &schema,
        )
        .unwrap();
        let rows: Vec<(&str, Value)> = t
            .schema
            .stat1
            .iter()
            .map(|s| (s.tbl.as_str(), s.idx.clone()))
            .collect();
        assert_eq!(
            rows,
            [("customers", Value::Text(b"CustomerByName".to_vec()))]
        );
        let (name, why) = t
            .schema
            .skipped
            .iter()
            .find(|(n, _)| n.starts_with("sqlite_stat1"))
            .unwrap();
        assert_eq!(name, "sqlite_stat1 of Invoice");
        assert!(
            why.contains("filters its rows") && why.contains("ANALYZE \"Invoice\""),
            "{why}"
        );
        let findings = crate::compat::check_schema(&t.schema);
        assert!(
            findings
                .iter()
                .any(|f| f.kind == "planner_statistics" && f.object == "sqlite_stat1 of Invoice"),
            "{findings:?}"
        );
    }

    #[test]
    fn an_object_a_drop_breaks_is_named_until_left_out() {
        let e = applied("[table.Customer]\ndrop = [\"Fax\", \"Email\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("index \"CustomerByFax\""), "{e}");
        assert!(e.contains("view \"Contacts\""), "{e}");
        assert!(e.contains("[table.Customer] drop \"Email\""), "{e}");
        assert!(e.contains("leave_out"), "{e}");
    }

    #[test]
    fn unknown_names_and_bad_expressions_name_their_place() {
        let e = |text: &str| applied(text).unwrap_err().to_string();
        assert!(e("[table.Nope]\ndrop = [\"x\"]").contains("[table.Nope]: there is no table"));
        assert!(e("[table.Customer]\ndrop = [\"Nope\"]")
            .contains("[table.Customer] drop: there is no column \"Nope\""));
        let bad = e("[table.Customer.set]\nEmail = \"upper(Emial)\"");
        assert!(
            bad.contains("[table.Customer.set] Email") && bad.contains("no such column: Emial"),
            "{bad}"
        );
        let bad = e("[table.Customer]\nwhere = \"Tenant = = 1\"");
        assert!(
            bad.contains("[table.Customer] where") && bad.contains("syntax error"),
            "{bad}"
        );
        assert!(e("[table.Customer]\ndrop = [\"Id\"]").contains("primary key"));
        assert!(e("[table.Customer.set]\nId = \"Id + 1\"").contains("primary key"));
        assert!(e("leave_out = [\"nope\"]").contains("leave_out: there is no index"));
    }

    #[test]
    fn a_filtered_parent_is_a_broken_reference_and_filtering_the_children_too_mends_it() {
        let db = source();
        let schema = discover(&SqliteCatalog(&db)).unwrap();
        let t = apply(
            &transform("[table.Customer]\nwhere = \"Tenant = 1\""),
            &db,
            &schema,
        )
        .unwrap();
        let f = t.foreign_key_findings(&db, false, false).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].kind, "transform_breaks_foreign_key");
        assert!(f[0].message.contains("rows 11"), "{}", f[0].message);
        assert!(t.check_references(&db).is_err());
        let t = apply(
            &transform(
                "[table.Customer]\nwhere = \"Tenant = 1\"\n[table.Invoice]\n\
                 where = \"CustomerId IN (SELECT Id FROM Customer WHERE Tenant = 1)\"",
            ),
            &db,
            &schema,
        )
        .unwrap();
        assert!(t.foreign_key_findings(&db, true, false).unwrap().is_empty());
        t.check_references(&db).unwrap();
    }

    #[test]
    fn a_transformed_read_pages_by_the_key_index() {
        let db = source();
        let schema = discover(&SqliteCatalog(&db)).unwrap();
        let t = apply(
            &transform("[table.Customer]\nwhere = \"Tenant = 1\"\n[table.Customer.set]\nEmail = \"upper(Email)\""),
            &db,
            &schema,
        )
        .unwrap();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT * FROM {} WHERE (\"Id\") > (0) ORDER BY \"Id\" LIMIT 10",
            t.read_from("Customer")
        );
        let plan: Vec<String> = db
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(
            plan.iter()
                .any(|p| p.contains("SEARCH main.Customer USING INTEGER PRIMARY KEY")),
            "{plan:?}"
        );
        let rows: Vec<(i64, String)> = db
            .prepare(&format!(
                "SELECT Id, Email FROM {}",
                t.read_from("Customer")
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rows, [(1, "A@X".to_string())]);
        assert_eq!(
            t.mappings[0].computed,
            [["Email".to_string(), "upper(Email)".to_string()]]
        );
    }

    #[test]
    fn fts4_options_map_to_fts5_and_those_without_an_equal_are_named() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE VIRTUAL TABLE docs USING fts4(title, body TEXT, tokenize=unicode61 \"remove_diacritics=2\", \
             prefix=\"2,3\", notindexed=title, order=DESC, matchinfo=fts3);
             CREATE VIRTUAL TABLE plain USING fts3(a, b);
             CREATE VIRTUAL TABLE stems USING fts4(a, tokenize=porter);",
        )
        .unwrap();
        let mut schema = discover(&SqliteCatalog(&db)).unwrap();
        assert!(schema.skipped.iter().any(|(n, _)| n == "docs_segments"));
        let converted = convert_fts(&mut schema).unwrap();
        assert_eq!(converted.len(), 3);
        assert_eq!(
            converted[0].sql,
            "CREATE VIRTUAL TABLE \"docs\" USING fts5(\"title\" UNINDEXED, \"body\", tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')"
        );
        assert_eq!(converted[0].lost.len(), 2, "{:?}", converted[0].lost);
        assert!(converted[0].lost[0].starts_with("order=DESC"));
        assert!(converted[1]
            .sql
            .ends_with("fts5(\"a\", \"b\", tokenize = 'ascii')"));
        assert!(converted[1].lost.is_empty());
        assert!(converted[2].sql.contains("tokenize = 'porter ascii'"));
        let docs = schema.table("docs").unwrap();
        assert_eq!(
            docs.kind,
            TableKind::Virtual {
                module: "fts5".into()
            }
        );
        let data: Vec<&str> = docs
            .data_columns()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(data, ["title", "body"]);
        assert_eq!(docs.hidden_rowid(), Some("rowid"));
    }

    #[test]
    fn a_contentless_fts4_table_is_refused_for_it_keeps_no_text() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE VIRTUAL TABLE c USING fts4(body, content='')")
            .unwrap();
        let mut schema = discover(&SqliteCatalog(&db)).unwrap();
        let e = convert_fts(&mut schema).unwrap_err().to_string();
        assert!(e.contains("\"c\" is contentless"), "{e}");
    }

    #[test]
    fn tables_are_selected_by_their_source_or_d1_names() {
        let db = source();
        let t = transform("[table.Customer]\nrename = \"customers\"\n");
        let select = |tables: &[&str], exclude: &[&str]| {
            let (tables, exclude): (Vec<String>, Vec<String>) = (
                tables.iter().map(|s| s.to_string()).collect(),
                exclude.iter().map(|s| s.to_string()).collect(),
            );
            let reshape = Reshape {
                transform: Some(&t),
                fts: Fts::Refuse,
                tables: &tables,
                exclude_tables: &exclude,
            };
            source_schema(&db, &reshape).map(|out| {
                let names: Vec<String> = out.schema.tables.iter().map(|t| t.name.clone()).collect();
                (names, out.mappings.len())
            })
        };
        assert_eq!(
            select(&["Customer"], &[]).unwrap(),
            (vec!["customers".to_string()], 1)
        );
        assert_eq!(
            select(&["customers"], &[]).unwrap(),
            (vec!["customers".to_string()], 1)
        );
        assert_eq!(
            select(&[], &["Customer"]).unwrap(),
            (vec!["Invoice".to_string()], 0)
        );
        assert!(select(&["Nope"], &[]).is_err());
    }

    #[test]
    fn broken_objects_are_read_from_sqlites_message() {
        assert_eq!(
            broken_object("error in index ifax after drop column: no such column: fax"),
            Some(("index".into(), "ifax".into()))
        );
        assert_eq!(broken_object("error in table t after drop column: x"), None);
        assert_eq!(broken_object("no such column"), None);
    }
}
