//! The forward run, wiring the stages together: discover the source, plan the load order, create
//! the tables on D1, then a pool of table workers (each with its own read-only connection) reads
//! batches, packs them and hands requests over a bounded channel to HTTP senders; then deferred
//! keys, `sqlite_sequence`, virtual tables, and indexes, views and triggers.
//!
//! Every write is idempotent (see `pack`), so a run that stops anywhere can simply be run again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::config::Config;
use crate::d1::{D1Client, Failure};
use crate::discover::{discover, Schema, SchemaObject, Table};
use crate::error::{D1Error, Error, Result};
use crate::pack::{deferred_update, InsertPacker, Request, RequestBuilder, Shape, Statement, Unit};
use crate::plan::plan;
use crate::progress::Progress;
use crate::report::{Report, Skipped, TableStats};
use crate::source::{count_rows, open_read_only, read_batches, SqliteCatalog};
use crate::value::quote_text;

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
    for name in dropped {
        schema
            .skipped
            .push((name, "excluded by configuration".into()));
    }
    Ok(())
}

/// Runs the forward migration, filling `report`.
pub fn forward(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let source = open_read_only(&config.sqlite_path)?;
    let mut schema = discover(&SqliteCatalog(&source))?;
    select_tables(&mut schema, &config.tables, &config.exclude_tables)?;
    report.skipped = schema
        .skipped
        .iter()
        .map(|(name, reason)| Skipped {
            name: name.clone(),
            reason: reason.clone(),
        })
        .collect();
    let plan = plan(&schema);

    // Reading the target's catalog first also proves the token, account and database id.
    let existing = target_objects(client)?;
    let ordinary: Vec<&Table> = plan
        .tables
        .iter()
        .map(|t| &schema.tables[t.table])
        .collect();
    create_missing(
        client,
        ordinary
            .iter()
            .map(|t| ("table", t.name.as_str(), t.sql.as_str())),
        &existing,
        report,
    )?;

    let mut work: Vec<Work> = Vec::new();
    let position: HashMap<usize, usize> = plan
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.table, i))
        .collect();
    for tp in &plan.tables {
        let table = &schema.tables[tp.table];
        work.push(Work {
            shape: Shape::new(table, &tp.deferred),
            pass: Pass::Insert,
            sequential: tp.sequential,
            parents: tp.parents.iter().map(|p| position[p]).collect(),
        });
    }
    run_work(config, client, progress, &work, &mut report.tables)?;

    let deferred: Vec<Work> = plan
        .tables
        .iter()
        .filter(|tp| !tp.deferred.is_empty())
        .map(|tp| Work {
            shape: Shape::new(&schema.tables[tp.table], &tp.deferred),
            pass: Pass::SetDeferred,
            sequential: false,
            parents: Vec::new(),
        })
        .collect();
    run_work(config, client, progress, &deferred, &mut report.tables)?;

    copy_sequence(client, &schema)?;

    let virtual_tables: Vec<&Table> = plan
        .virtual_tables
        .iter()
        .map(|&i| &schema.tables[i])
        .collect();
    create_missing(
        client,
        virtual_tables
            .iter()
            .map(|t| ("table", t.name.as_str(), t.sql.as_str())),
        &existing,
        report,
    )?;
    let fill: Vec<Work> = virtual_tables
        .iter()
        .map(|t| Work {
            shape: Shape::new(t, &[]),
            pass: Pass::Insert,
            sequential: false,
            parents: Vec::new(),
        })
        .collect();
    run_work(config, client, progress, &fill, &mut report.tables)?;

    create_missing(
        client,
        ordered_objects(&schema).map(|o| (o.kind.as_str(), o.name.as_str(), o.sql.as_str())),
        &existing,
        report,
    )?;
    Ok(())
}

/// Indexes, then views, then triggers (which may use views), each in catalog order.
pub fn ordered_objects(schema: &Schema) -> impl Iterator<Item = &SchemaObject> {
    ["index", "view", "trigger"]
        .into_iter()
        .flat_map(move |kind| schema.objects.iter().filter(move |o| o.kind == kind))
}

fn merge(into: &mut Vec<TableStats>, s: TableStats) {
    match into.iter_mut().find(|t| t.table == s.table) {
        Some(t) => {
            *t += &s;
            if s.error.is_some() {
                t.error = s.error;
            }
        }
        None => into.push(s),
    }
}

/// Names and SQL of what the target already has: `name (lower-case) -> (type, sql)`.
pub fn target_objects(client: &D1Client) -> Result<HashMap<String, (String, String)>> {
    let result = client.query("SELECT type, name, sql FROM sqlite_schema")?;
    Ok(result
        .rows
        .into_iter()
        .map(|r| {
            let s = |i: usize| {
                r.get(i)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            (s(1).to_lowercase(), (s(0), s(2)))
        })
        .collect())
}

fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Creates what the target lacks; what it has must have the same SQL.
fn create_missing<'a>(
    client: &D1Client,
    objects: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    existing: &HashMap<String, (String, String)>,
    report: &mut Report,
) -> Result<()> {
    let mut todo: Vec<(&str, &str)> = Vec::new();
    for (kind, name, sql) in objects {
        match existing.get(&name.to_lowercase()) {
            Some((_, have)) if normalize(have) == normalize(sql) => {}
            Some((have_kind, _)) => {
                return Err(Error::Refused(format!(
                    "{kind} {name:?} already exists on D1 as a {have_kind} with a different definition; \
                     drop it on D1 or exclude the table (MIGRATION_EXCLUDE_TABLES)"
                )))
            }
            None => todo.push((name, sql)),
        }
    }
    execute_named(client, &todo)?;
    report
        .objects_created
        .extend(todo.iter().map(|(n, _)| n.to_string()));
    Ok(())
}

/// Runs DDL in one request; if D1 refuses it, runs each alone to name the one at fault.
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
        }) if items.len() > 1 => {
            for ((name, _), sql) in items.iter().zip(&sqls) {
                client
                    .execute(&[sql])
                    .map_err(|f| Error::Refused(format!("creating {name:?} on D1: {}", f.error)))?;
            }
            Ok(())
        }
        Err(f) if matches!(f.error, D1Error::Sql { .. }) => Err(Error::Refused(format!(
            "creating {:?} on D1: {}",
            items[0].0, f.error
        ))),
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
fn copy_sequence(client: &D1Client, schema: &Schema) -> Result<()> {
    if schema.sequence.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = schema
        .sequence
        .iter()
        .map(|s| quote_text(&s.name))
        .collect();
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
    client
        .execute(&[delete, insert])
        .map_err(|f| Error::Refused(format!("setting sqlite_sequence on D1: {}", f.error)))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pass {
    Insert,
    SetDeferred,
}

/// One table's share of a pass.
struct Work {
    shape: Shape,
    pass: Pass,
    sequential: bool,
    /// Indexes into the same work list of tables that must be finished first.
    parents: Vec<usize>,
}

/// A request on its way to a sender, with where to say how it went.
struct Job {
    table: String,
    request: Request,
    ack: Sender<Result<Sent>>,
}

#[derive(Debug, Default)]
struct Sent {
    rows: u64,
    statements: u64,
    bytes: u64,
    requests: u64,
}

/// Runs a list of table work items: tables start when their parents are done, at most
/// `parallel_tables` at once; requests go through `concurrency` senders.
/// Each table's counts are merged into `stats` as it finishes, failed or not.
fn run_work(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    work: &[Work],
    stats: &mut Vec<TableStats>,
) -> Result<()> {
    if work.is_empty() {
        return Ok(());
    }
    let cancel = AtomicBool::new(false);
    let (job_tx, job_rx) = bounded::<Job>(config.concurrency);
    let (done_tx, done_rx) = unbounded::<(usize, TableStats, Option<Error>)>();
    let mut first_error: Option<Error> = None;

    std::thread::scope(|scope| {
        for _ in 0..config.concurrency {
            let rx = job_rx.clone();
            scope.spawn(move || sender(client, rx));
        }
        drop(job_rx);

        let mut started = vec![false; work.len()];
        let mut finished = vec![false; work.len()];
        let mut running = 0usize;
        loop {
            if first_error.is_none() {
                for i in 0..work.len() {
                    if running >= config.parallel_tables {
                        break;
                    }
                    if !started[i] && work[i].parents.iter().all(|&p| finished[p]) {
                        started[i] = true;
                        running += 1;
                        let (job_tx, done_tx, cancel) = (job_tx.clone(), done_tx.clone(), &cancel);
                        let item = &work[i];
                        scope.spawn(move || {
                            let (stats, error) =
                                copy_table(config, item, progress, &job_tx, cancel);
                            let _ = done_tx.send((i, stats, error));
                        });
                    }
                }
            }
            if running == 0 {
                break;
            }
            let (i, table_stats, error) = done_rx.recv().expect("a table worker reports");
            running -= 1;
            finished[i] = true;
            merge(stats, table_stats);
            if let Some(e) = error {
                cancel.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        drop(job_tx);
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reads one table in batches, packs it, and sends its requests; waits for every answer.
/// Returns the table's counts, and the error that stopped it, if any.
fn copy_table(
    config: &Config,
    work: &Work,
    progress: &Progress,
    jobs: &Sender<Job>,
    cancel: &AtomicBool,
) -> (TableStats, Option<Error>) {
    let mut stats = TableStats {
        table: work.shape.table.clone(),
        ..TableStats::default()
    };
    let error = copy_rows(config, work, progress, jobs, cancel, &mut stats).err();
    if let Some(e) = &error {
        stats.error = Some(e.to_string());
    }
    (stats, error.map(|e| e.in_table(&work.shape.table)))
}

fn copy_rows(
    config: &Config,
    work: &Work,
    progress: &Progress,
    jobs: &Sender<Job>,
    cancel: &AtomicBool,
    stats: &mut TableStats,
) -> Result<()> {
    let started = Instant::now();
    let shape = &work.shape;
    let table = shape.table.clone();
    let conn = open_read_only(&config.sqlite_path)?;
    let filter = match work.pass {
        Pass::Insert => String::new(),
        Pass::SetDeferred => shape
            .deferred
            .iter()
            .map(|&p| format!("{} IS NOT NULL", shape.columns[p]))
            .collect::<Vec<_>>()
            .join(" OR "),
    };
    let total = count_rows(&conn, &table).map_err(|e| e.in_table(&table))?;
    let mut bar = progress.table(&table, if work.pass == Pass::Insert { total } else { 0 });
    let (ack_tx, ack_rx) = unbounded::<Result<Sent>>();
    let mut in_flight = 0usize;
    let mut error: Option<Error> = None;
    let mut on_ack =
        |ack: Result<Sent>, stats: &mut TableStats, error: &mut Option<Error>| match ack {
            Ok(sent) => {
                stats.rows_written += sent.rows;
                stats.statements += sent.statements;
                stats.bytes_sent += sent.bytes;
                stats.requests += sent.requests;
                if work.pass == Pass::Insert {
                    bar.add(sent.rows);
                }
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        };

    let mut packer = InsertPacker::new(shape.clone(), config.limits);
    let mut builder = RequestBuilder::new(config.limits);
    let mut units: Vec<Unit> = Vec::new();
    let mut send = |request: Request,
                    in_flight: &mut usize,
                    stats: &mut TableStats,
                    error: &mut Option<Error>| {
        let job = Job {
            table: table.clone(),
            request,
            ack: ack_tx.clone(),
        };
        if jobs.send(job).is_ok() {
            *in_flight += 1;
        }
        // A table whose rows reference each other through a NOT NULL key goes one request at a time.
        while *in_flight > 0 {
            let ack = if work.sequential {
                ack_rx.recv().ok()
            } else {
                ack_rx.try_recv().ok()
            };
            let Some(ack) = ack else { break };
            *in_flight -= 1;
            on_ack(ack, stats, error);
        }
    };

    let read = read_batches(&conn, shape, &filter, config.batch_size, None, |rows| {
        stats.rows_read += rows.len() as u64;
        for row in &rows {
            match work.pass {
                Pass::Insert => packer.push(row, &mut units),
                Pass::SetDeferred => units.extend(deferred_update(shape, row)),
            }
        }
        for unit in units.drain(..) {
            if let Some(request) = builder.push(unit) {
                send(request, &mut in_flight, stats, &mut error);
            }
        }
        Ok(error.is_none() && !cancel.load(Ordering::Relaxed))
    });
    if let Err(e) = read {
        error.get_or_insert(e);
    }
    if error.is_none() && !cancel.load(Ordering::Relaxed) {
        packer.flush(&mut units);
        for unit in units.drain(..) {
            if let Some(request) = builder.push(unit) {
                send(request, &mut in_flight, stats, &mut error);
            }
        }
        if let Some(request) = builder.take() {
            send(request, &mut in_flight, stats, &mut error);
        }
    }
    drop(send);
    while in_flight > 0 {
        let ack = ack_rx.recv().expect("senders answer every job");
        in_flight -= 1;
        on_ack(ack, stats, &mut error);
    }
    if work.pass == Pass::SetDeferred {
        stats.rows_read = 0;
        stats.rows_written = 0;
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A sender thread: posts each job's request and reports back.
fn sender(client: &D1Client, jobs: Receiver<Job>) {
    for job in jobs {
        let mut sent = Sent::default();
        let result =
            send_statements(client, &job.table, &job.request.statements, &mut sent).map(|()| {
                sent.rows = job.request.rows as u64;
                sent
            });
        let _ = job.ack.send(result);
    }
}

/// Sends statements as one request. When D1 says they are too large, or rejects them, sends
/// halves instead, down to the single row at fault, which is then named in the error.
fn send_statements(
    client: &D1Client,
    table: &str,
    statements: &[Statement],
    sent: &mut Sent,
) -> Result<()> {
    let sqls: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
    sent.requests += 1;
    match client.execute(&sqls) {
        Ok(_) => {
            sent.statements += statements.len() as u64;
            sent.bytes += sqls.iter().map(|s| s.len() as u64).sum::<u64>();
            Ok(())
        }
        Err(Failure { error, shrink }) => {
            let splittable = shrink || matches!(error, D1Error::Sql { .. });
            if !splittable {
                return Err(error.into());
            }
            if statements.len() > 1 {
                let (a, b) = statements.split_at(statements.len() / 2);
                send_statements(client, table, a, sent)?;
                return send_statements(client, table, b, sent);
            }
            if let Some((a, b)) = statements[0].split() {
                send_statements(client, table, &[a], sent)?;
                return send_statements(client, table, &[b], sent);
            }
            let sql = &statements[0].sql;
            let key = row_text(sql);
            Err(Error::Row {
                table: table.to_string(),
                key,
                message: error.to_string(),
            })
        }
    }
}

/// The row tuple of a one-row insert (or the statement), cut short, to name a row in an error.
fn row_text(sql: &str) -> String {
    let text = sql.find(" VALUES ").map(|at| &sql[at + 8..]).unwrap_or(sql);
    let text = text.trim_end_matches(" ON CONFLICT DO NOTHING");
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
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

    #[test]
    fn a_row_is_named_by_its_tuple() {
        assert_eq!(
            row_text("INSERT INTO \"t\" (rowid,\"a\") VALUES (5,'x') ON CONFLICT DO NOTHING"),
            "(5,'x')"
        );
    }
}
