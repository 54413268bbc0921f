//! The target's schema: what D1 already holds, creating what it lacks (tables before the data;
//! indexes, views and triggers after it) with idempotent DDL, `sqlite_sequence`, and the
//! planner's statistics (`sqlite_stat1`).

use std::collections::HashMap;

use crate::d1::{D1Client, Failure};
use crate::discover::{Schema, SchemaObject};
use crate::error::{D1Error, Error, Result};
use crate::log;
use crate::state::State;
use crate::value::{quote_ident, quote_text};

/// Indexes, then views, then triggers (which may use views), each in catalog order.
pub fn ordered_objects(schema: &Schema) -> impl Iterator<Item = &SchemaObject> {
    ["index", "view", "trigger"]
        .into_iter()
        .flat_map(move |kind| schema.objects.iter().filter(move |o| o.kind == kind))
}

/// Foreign keys whose parent table is neither in the selection nor already on the target.
pub fn missing_parents(
    schema: &Schema,
    existing: &HashMap<String, (String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for t in &schema.tables {
        for fk in &t.foreign_keys {
            let copied = schema.table(&fk.parent).is_some();
            if !copied && !existing.contains_key(&fk.parent.to_lowercase()) {
                out.push(format!(
                    "table {:?} references {:?}, which MIGRATION_TABLES / MIGRATION_EXCLUDE_TABLES leave out",
                    t.name, fk.parent
                ));
            }
        }
    }
    out
}

/// Names and SQL of what the target already has: `name (lower-case) -> (type, sql)`.
pub fn target_objects(client: &D1Client) -> Result<HashMap<String, (String, String)>> {
    let result = client.query("SELECT type, name, sql FROM sqlite_schema")?;
    Ok(result
        .rows
        .into_iter()
        .map(|r| {
            (
                text_at(&r, 1).to_lowercase(),
                (text_at(&r, 0), text_at(&r, 2)),
            )
        })
        .collect())
}

/// Column `i` of a catalog row as text ("" for NULL).
fn text_at(row: &[serde_json::Value], i: usize) -> String {
    row.get(i)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// Creates what the target lacks; what it has is kept (`fit` has compared it with the source's
/// and refused what does not fit). Returns the names of the objects it created.
pub fn create_missing<'a>(
    client: &D1Client,
    objects: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    existing: &HashMap<String, (String, String)>,
) -> Result<Vec<String>> {
    create_missing_along(client, &mut Vec::new(), objects, existing)
}

/// The objects of `objects` (kind, name, SQL) that D1 lacks, each with its idempotent DDL
/// ([`if_not_exists`]): what [`create_missing`] would send.
pub fn missing<'a>(
    objects: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    existing: &HashMap<String, (String, String)>,
) -> Vec<(&'a str, String)> {
    objects
        .filter(|(_, name, _)| !existing.contains_key(&name.to_lowercase()))
        .map(|(_, name, sql)| (name, if_not_exists(sql)))
        .collect()
}

/// Runs DDL in one request; if D1 refuses it, runs each alone to name the one at fault: with
/// none of this client's other requests in flight, since D1 fails the requests beside one that
/// breaks a foreign key (a row sent early, ahead of its parent) with that request's message.
fn execute_named(client: &D1Client, items: &[(&str, &str)]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let sqls: Vec<String> = items.iter().map(|(_, s)| if_not_exists(s)).collect();
    match client.execute(&sqls) {
        Ok(_) => Ok(()),
        Err(Failure {
            error: D1Error::Sql { .. },
            ..
        }) => {
            for ((name, _), sql) in items.iter().zip(&sqls) {
                client.execute_alone(&[sql]).map_err(|f| match f.error {
                    D1Error::Sql { .. } => {
                        Error::Refused(format!("creating {name:?} on D1: {}", f.error))
                    }
                    other => other.into(),
                })?;
            }
            Ok(())
        }
        Err(f) => Err(f.error.into()),
    }
}

/// The DDL with `IF NOT EXISTS`, so that a request whose answer was lost can be sent again.
/// SQLite drops the clause from the text it keeps in `sqlite_schema`, so the stored DDL stays the
/// source's.
pub fn if_not_exists(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(6).collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let kind_words = match upper
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["CREATE", "VIRTUAL", "TABLE", ..] | ["CREATE", "UNIQUE", "INDEX", ..] => 3,
        ["CREATE", "TABLE" | "INDEX" | "VIEW" | "TRIGGER", ..] => 2,
        _ => return sql.to_string(),
    };
    if upper.get(kind_words).map(String::as_str) == Some("IF") {
        return sql.to_string();
    }
    // Find the end of the kind words in the original text.
    let mut rest = sql.trim_start();
    for _ in 0..kind_words {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    let head = &sql[..sql.len() - rest.len()];
    format!("{head} IF NOT EXISTS{rest}")
}

/// Sets the target's `sqlite_sequence` rows of the copied tables to the source's, rowids
/// included, so AUTOINCREMENT counters ahead of `max(id)` stay ahead.
pub fn copy_sequence(client: &D1Client, schema: &Schema) -> Result<()> {
    send_sequence(client, &sequence_statements(schema))
}

/// Sets the target's `sqlite_sequence` and `sqlite_stat1` rows of the copied tables to the
/// source's ([`after_data_statements`]).
pub fn copy_after_data(client: &D1Client, schema: &Schema) -> Result<()> {
    send_sequence(client, &after_data_statements(schema))
}

fn send_sequence(client: &D1Client, statements: &[String]) -> Result<()> {
    if statements.is_empty() {
        return Ok(());
    }
    // Alone: it follows a refused request, which may have been refused for another's fault.
    client.execute_alone(statements).map_err(|f| {
        Error::Refused(format!(
            "setting sqlite_sequence and sqlite_stat1 on D1: {}",
            f.error
        ))
    })?;
    Ok(())
}

/// What follows the data in the request of the next DDL: `sqlite_sequence`
/// ([`sequence_statements`]) and the planner's statistics ([`statistics_statements`]). Each is
/// idempotent, so a request whose answer was lost is simply sent again.
pub fn after_data_statements(schema: &Schema) -> Vec<String> {
    let mut out = sequence_statements(schema);
    out.extend(statistics_statements(schema));
    out
}

/// A statement of the statistics' lists stays under this many bytes (D1 takes 100,000).
const STATISTICS_STATEMENT_BYTES: usize = 50_000;

/// The statements that set the target's `sqlite_stat1` rows of the copied tables to the
/// source's, rowids included (none when the source has none): `ANALYZE sqlite_schema` creates
/// the table where it is missing (analysing nothing: SQLite's own tables are never analysed),
/// then the copied tables' rows are replaced. D1's rows of other tables (its own `_cf_*`, tables
/// not copied) are kept, moved past the source's rowids where they hold one ([`make_way`]).
pub fn statistics_statements(schema: &Schema) -> Vec<String> {
    if schema.stat1.is_empty() {
        return Vec::new();
    }
    let mut names: Vec<String> = Vec::new();
    for name in schema
        .tables
        .iter()
        .map(|t| &t.name)
        .chain(schema.stat1.iter().map(|s| &s.tbl))
    {
        let quoted = quote_text(name);
        if !names.contains(&quoted) {
            names.push(quoted);
        }
    }
    let mut out = vec!["ANALYZE sqlite_schema".to_string()];
    out.extend(chunked(
        "DELETE FROM sqlite_stat1 WHERE tbl COLLATE NOCASE IN (",
        names,
        ", ",
        ")",
    ));
    out.extend(make_way(
        "sqlite_stat1",
        schema.stat1.iter().map(|s| s.rowid),
    ));
    let rows = schema.stat1.iter().map(|s| {
        format!(
            "({}, {}, {}, {})",
            s.rowid,
            quote_text(&s.tbl),
            s.idx.literal(),
            s.stat.literal()
        )
    });
    out.extend(chunked(
        "INSERT INTO sqlite_stat1 (rowid, tbl, idx, stat) VALUES ",
        rows,
        ", ",
        "",
    ));
    out
}

/// The statement that moves the rows of `table` whose rowids lie within the range of `rowids`
/// past every rowid it holds, so that rows can be inserted under those rowids. Its rows are
/// bookkeeping (counters, statistics) found by name, never by rowid. A `CASE WHEN EXISTS` on
/// each inserted row cannot do it: SQLite evaluates every row of an `INSERT` reading the table
/// it writes before inserting any, so a row D1 numbers takes the rowid of a later one (`UNIQUE
/// constraint failed: sqlite_stat1.rowid`).
fn make_way(table: &str, rowids: impl Iterator<Item = i64>) -> Option<String> {
    let (lo, hi) = rowids.fold(None, |range: Option<(i64, i64)>, r| {
        Some(range.map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))))
    })?;
    // Each row moves by the same amount to beyond the largest rowid, the table's and the
    // range's: no two meet, and none lands in the range.
    Some(format!(
        "UPDATE {table} SET rowid = rowid - {lo} + 1 + max({hi}, (SELECT max(rowid) FROM {table})) \
         WHERE rowid BETWEEN {lo} AND {hi}"
    ))
}

/// `head item, item, ... tail` statements of at most [`STATISTICS_STATEMENT_BYTES`] each (an
/// item longer than that alone in its own).
fn chunked(
    head: &str,
    items: impl IntoIterator<Item = String>,
    separator: &str,
    tail: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for item in items {
        if !current.is_empty()
            && current.len() + separator.len() + item.len() + tail.len()
                > STATISTICS_STATEMENT_BYTES
        {
            current.push_str(tail);
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(head);
        } else {
            current.push_str(separator);
        }
        current.push_str(&item);
    }
    if !current.is_empty() {
        current.push_str(tail);
        out.push(current);
    }
    out
}

/// The statements that set the target's `sqlite_sequence` rows of the copied tables (none when
/// the source has none).
pub fn sequence_statements(schema: &Schema) -> Vec<String> {
    if schema.sequence.is_empty() {
        return Vec::new();
    }
    let names: Vec<String> = schema
        .sequence
        .iter()
        .map(|s| quote_text(&s.name))
        .collect();
    // The source's rowids are kept: a D1 that already has sequence rows of its own (wrangler's
    // `d1_migrations`, an application's table) moves those that hold one out of the way.
    let values: Vec<String> = schema
        .sequence
        .iter()
        .map(|s| {
            format!(
                "({}, {}, {})",
                s.rowid,
                quote_text(&s.name),
                s.seq.literal()
            )
        })
        .collect();
    let delete = format!(
        "DELETE FROM sqlite_sequence WHERE name IN ({})",
        names.join(", ")
    );
    let insert = format!(
        "INSERT INTO sqlite_sequence (rowid, name, seq) VALUES {}",
        values.join(", ")
    );
    let mut out = vec![delete];
    out.extend(make_way(
        "sqlite_sequence",
        schema.sequence.iter().map(|s| s.rowid),
    ));
    out.push(insert);
    out
}

/// [`create_missing`] with `along` (the statements of a step that need not wait for a round
/// trip of its own: the sequence) in the same request, when there is anything to create;
/// `along` is emptied once D1 has committed it. When D1 refuses the request, `along` is sent
/// alone and the objects one by one, to name the one at fault.
pub fn create_missing_along<'a>(
    client: &D1Client,
    along: &mut Vec<String>,
    objects: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    existing: &HashMap<String, (String, String)>,
) -> Result<Vec<String>> {
    let todo: Vec<(&str, &str)> = objects
        .filter(|(_, name, _)| !existing.contains_key(&name.to_lowercase()))
        .map(|(_, name, sql)| (name, sql))
        .collect();
    if todo.is_empty() || along.is_empty() {
        execute_named(client, &todo)?;
        return Ok(todo.iter().map(|(n, _)| n.to_string()).collect());
    }
    let mut sqls = along.clone();
    sqls.extend(todo.iter().map(|(_, s)| if_not_exists(s)));
    match client.execute(&sqls) {
        Ok(_) => {}
        Err(Failure {
            error: D1Error::Sql { .. },
            ..
        }) => {
            send_sequence(client, along)?;
            execute_named(client, &todo)?;
        }
        Err(f) => return Err(f.error.into()),
    }
    along.clear();
    Ok(todo.iter().map(|(n, _)| n.to_string()).collect())
}

/// D1's triggers (name, SQL) on the `tables` a run writes, read only when D1's catalog
/// (`existing`) holds a trigger at all.
pub fn d1_triggers_on(
    client: &D1Client,
    existing: &HashMap<String, (String, String)>,
    tables: &[&str],
) -> Result<Vec<(String, String)>> {
    if !existing.values().any(|(kind, _)| kind == "trigger") {
        return Ok(Vec::new());
    }
    let written: Vec<String> = tables.iter().map(|t| t.to_lowercase()).collect();
    let result =
        client.query("SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'trigger'")?;
    Ok(result
        .rows
        .into_iter()
        .filter(|r| written.contains(&text_at(r, 1).to_lowercase()))
        .map(|r| (text_at(&r, 0), text_at(&r, 2)))
        .collect())
}

/// Triggers dropped for a run's writes, created again when it is dropped if the run did not
/// (an error on the way): a failed copy must not leave the live database without them until a
/// rerun. The checkpoint keeps them too, for a run that did not get that far.
pub struct Suspended<'a> {
    client: &'a D1Client,
    state: &'a State,
    triggers: Vec<(String, String)>,
}

impl<'a> Suspended<'a> {
    /// Drops `triggers` on D1 (and takes over those an interrupted run dropped).
    pub fn new(
        client: &'a D1Client,
        state: &'a State,
        triggers: &[(String, String)],
    ) -> Result<Suspended<'a>> {
        let triggers = suspend_d1_triggers(client, state, triggers, true)?;
        Ok(Suspended {
            client,
            state,
            triggers,
        })
    }

    /// Whether no trigger is held back.
    pub fn is_empty(&self) -> bool {
        self.triggers.is_empty()
    }

    /// Creates them again; returns their names.
    pub fn resume(mut self) -> Result<Vec<String>> {
        let triggers = std::mem::take(&mut self.triggers);
        resume_d1_triggers(self.client, self.state, &triggers)?;
        Ok(triggers.into_iter().map(|(n, _)| n).collect())
    }
}

impl Drop for Suspended<'_> {
    fn drop(&mut self) {
        if let Err(e) = resume_d1_triggers(self.client, self.state, &self.triggers) {
            log::warn(&e.to_string());
        }
    }
}

/// Drops D1's `triggers` (name, SQL) before writes (when there are writes), recording them in
/// the checkpoint first: they would fire on rows that already hold their effects (a sync's, a
/// copy's). Returns every trigger to create again: these and any an interrupted run had dropped.
pub fn suspend_d1_triggers(
    client: &D1Client,
    state: &State,
    triggers: &[(String, String)],
    writes: bool,
) -> Result<Vec<(String, String)>> {
    let mut all = state.dropped_triggers();
    if !all.is_empty() {
        log::info(&format!(
            "an earlier run dropped {} triggers on D1; they are created again after this one's writes",
            all.len()
        ));
    }
    if !writes {
        return Ok(all);
    }
    for (name, sql) in triggers {
        if !all.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            all.push((name.clone(), sql.clone()));
        }
    }
    if triggers.is_empty() {
        return Ok(all);
    }
    state.set_dropped_triggers(all.clone())?;
    let drops: Vec<String> = triggers
        .iter()
        .map(|(name, _)| format!("DROP TRIGGER IF EXISTS {}", quote_ident(name)))
        .collect();
    client.execute(&drops).map_err(|f| {
        Error::Refused(format!(
            "dropping triggers on D1 before writing: {}",
            f.error
        ))
    })?;
    Ok(all)
}

/// Creates the recorded triggers again (idempotently), then forgets them.
pub fn resume_d1_triggers(
    client: &D1Client,
    state: &State,
    triggers: &[(String, String)],
) -> Result<()> {
    if triggers.is_empty() {
        return Ok(());
    }
    let creates: Vec<String> = triggers.iter().map(|(_, sql)| if_not_exists(sql)).collect();
    client.execute(&creates).map_err(|f| {
        Error::Refused(format!(
            "creating triggers on D1 again after writing (run it again to retry): {}",
            f.error
        ))
    })?;
    state.set_dropped_triggers(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_becomes_idempotent() {
        assert_eq!(
            if_not_exists("CREATE TABLE \"a b\"(x)"),
            "CREATE TABLE IF NOT EXISTS \"a b\"(x)"
        );
        assert_eq!(
            if_not_exists("create unique index i on t(x)"),
            "create unique index IF NOT EXISTS i on t(x)"
        );
        assert_eq!(
            if_not_exists("CREATE VIRTUAL TABLE docs USING fts5(a)"),
            "CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(a)"
        );
        assert_eq!(
            if_not_exists("CREATE VIEW IF NOT EXISTS v AS SELECT 1"),
            "CREATE VIEW IF NOT EXISTS v AS SELECT 1"
        );
    }
}
