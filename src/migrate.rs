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

use crate::compat::{check_schema, row_bytes, MAX_ROW_BYTES};
use crate::config::{BadRow, Config};
use crate::d1::{D1Client, Failure};
use crate::discover::{discover, Schema, SchemaObject, Table};
use crate::error::{D1Error, Error, Result};
use crate::log;
use crate::pack::{
    deferred_update, InsertPacker, Limits, Request, RequestBuilder, Shape, Statement, Unit,
};
use crate::plan::{plan, Plan};
use crate::progress::Progress;
use crate::report::{Report, TableStats};
use crate::source::{count_rows, open_read_only, read_batches, SqliteCatalog};
use crate::state::{Fingerprint, State};
use crate::value::{quote_text, Value};

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

/// What every stage of a forward run shares.
struct Ctx<'a> {
    config: &'a Config,
    client: &'a D1Client,
    progress: &'a Progress,
    state: &'a State,
    rejects: &'a Rejects,
    /// Rows each table has to copy, counted once for the progress bars.
    rows: HashMap<String, u64>,
}

/// Runs the forward migration, filling `report`. Resumes from the checkpoint in
/// `MIGRATION_STATE_DIR` when there is one.
pub fn forward(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let source = open_read_only(&config.sqlite_path)?;
    let mut schema = discover(&SqliteCatalog(&source))?;
    select_tables(&mut schema, &config.tables, &config.exclude_tables)?;
    report.set_skipped(&schema.skipped);
    let plan = plan(&schema);
    let refused: Vec<String> = check_schema(&schema)
        .into_iter()
        .filter(|f| f.is_error())
        .map(|f| f.message)
        .collect();
    if !refused.is_empty() {
        return Err(Error::Refused(format!(
            "D1 would refuse this source; nothing was written:\n  {}",
            refused.join("\n  ")
        )));
    }

    // Reading the target's catalog first also proves the token, account and database id.
    let existing = target_objects(client)?;
    let orphans = missing_parents(&schema, &existing);
    if !orphans.is_empty() {
        return Err(Error::Refused(format!(
            "D1 enforces foreign keys, and these parents are neither copied nor on D1; nothing was written:\n  {}",
            orphans.join("\n  ")
        )));
    }
    let state = State::open(&config.state_dir, fingerprint(config, &schema))?;
    if state.is_complete() {
        log::info(&format!(
            "this migration is already complete (checkpoint {}); nothing to do. \
             Remove that folder to run it again from the start.",
            state.path().display()
        ));
        report.already_complete = true;
        return Ok(());
    }
    let rejects = Rejects::new(config.reject_file.clone());

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

    let [work, deferred, fill] = passes(&schema, &plan, |table, pass| {
        let t = state.table(table);
        match pass {
            Pass::Insert => t.inserted,
            Pass::SetDeferred => t.deferred_done,
        }
    });
    let mut rows = HashMap::new();
    for w in work.iter().chain(&fill).filter(|w| !w.done) {
        rows.insert(w.shape.table.clone(), count_rows(&source, &w.shape.table)?);
    }
    progress.set_total(rows.values().sum());
    let ctx = Ctx {
        config,
        client,
        progress,
        state: &state,
        rejects: &rejects,
        rows,
    };
    let mut failed = run_work(&ctx, &work, &mut report.tables)?;
    failed.extend(run_work(&ctx, &deferred, &mut report.tables)?);

    if !state.phase_done("sequence") {
        copy_sequence(client, &schema)?;
        state.set_phase_done("sequence")?;
    }

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
    failed.extend(run_work(&ctx, &fill, &mut report.tables)?);

    create_missing(
        client,
        ordered_objects(&schema).map(|o| (o.kind.as_str(), o.name.as_str(), o.sql.as_str())),
        &existing,
        report,
    )?;
    report.rejected_rows = rejects.count();
    if rejects.count() > 0 {
        report.reject_file = Some(config.reject_file.display().to_string());
        log::warn(&format!(
            "{} rows were rejected by D1 and written to {}",
            rejects.count(),
            config.reject_file.display()
        ));
    }
    if !failed.is_empty() {
        return Err(Error::TablesFailed(failed));
    }
    state.set_complete()?;
    Ok(())
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

/// What a checkpoint must match: the same source (and schema), target and table selection.
fn fingerprint(config: &Config, schema: &Schema) -> Fingerprint {
    let mut ddl = blake3::Hasher::new();
    for t in &schema.tables {
        ddl.update(t.sql.as_bytes());
    }
    Fingerprint {
        source: std::fs::canonicalize(&config.sqlite_path)
            .unwrap_or_else(|_| config.sqlite_path.clone())
            .display()
            .to_string(),
        source_schema: ddl.finalize().to_hex().to_string(),
        api_url: config.endpoint.api_url.clone(),
        database_id: config.endpoint.database_id.clone(),
        tables: config.tables.clone(),
        exclude_tables: config.exclude_tables.clone(),
    }
}

/// The reject file: one JSON line per row D1 refused, with a statement that re-inserts it.
pub struct Rejects {
    path: std::path::PathBuf,
    file: std::sync::Mutex<Option<std::fs::File>>,
    count: std::sync::atomic::AtomicU64,
}

impl Rejects {
    fn new(path: std::path::PathBuf) -> Rejects {
        Rejects {
            path,
            file: std::sync::Mutex::new(None),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn write(&self, table: &str, key: &str, reason: &str, sql: &str) -> Result<()> {
        use std::io::Write;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = self.file.lock().expect("reject file lock");
        if file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(io)?,
            );
        }
        let line = serde_json::json!({"table": table, "key": key, "reason": reason, "sql": sql});
        writeln!(file.as_mut().expect("opened"), "{line}").map_err(io)?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
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
pub(crate) enum Pass {
    Insert,
    SetDeferred,
}

/// One table's share of a pass.
pub(crate) struct Work {
    pub shape: Shape,
    pub pass: Pass,
    pub sequential: bool,
    /// Indexes into the same work list of tables that must be finished first.
    pub parents: Vec<usize>,
    /// Already done by an earlier run (checkpoint).
    pub done: bool,
}

/// The three passes of a forward run: rows of ordinary tables in load order, deferred keys,
/// and virtual tables. `done` says which parts an earlier run finished.
pub(crate) fn passes(
    schema: &Schema,
    plan: &Plan,
    done: impl Fn(&str, Pass) -> bool,
) -> [Vec<Work>; 3] {
    let position: HashMap<usize, usize> = plan
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.table, i))
        .collect();
    let rows = plan
        .tables
        .iter()
        .map(|tp| {
            let table = &schema.tables[tp.table];
            Work {
                shape: Shape::new(table, &tp.deferred),
                pass: Pass::Insert,
                sequential: tp.sequential,
                parents: tp.parents.iter().map(|p| position[p]).collect(),
                done: done(&table.name, Pass::Insert),
            }
        })
        .collect();
    let deferred = plan
        .tables
        .iter()
        .filter(|tp| !tp.deferred.is_empty())
        .map(|tp| {
            let table = &schema.tables[tp.table];
            Work {
                shape: Shape::new(table, &tp.deferred),
                pass: Pass::SetDeferred,
                sequential: false,
                parents: Vec::new(),
                done: done(&table.name, Pass::SetDeferred),
            }
        })
        .collect();
    let virtual_tables = plan
        .virtual_tables
        .iter()
        .map(|&i| Work {
            shape: Shape::new(&schema.tables[i], &[]),
            pass: Pass::Insert,
            sequential: false,
            parents: Vec::new(),
            done: done(&schema.tables[i].name, Pass::Insert),
        })
        .collect();
    [rows, deferred, virtual_tables]
}

/// The filter of a pass: the deferred pass reads only rows with a deferred key set.
pub(crate) fn pass_filter(work: &Work) -> String {
    match work.pass {
        Pass::Insert => String::new(),
        Pass::SetDeferred => work
            .shape
            .deferred
            .iter()
            .map(|&p| format!("{} IS NOT NULL", work.shape.columns[p]))
            .collect::<Vec<_>>()
            .join(" OR "),
    }
}

/// A request on its way to a sender, with where to say how it went.
struct Job {
    table: String,
    seq: u64,
    request: Request,
    ack: Sender<(u64, Result<Sent>)>,
}

#[derive(Debug, Default)]
struct Sent {
    rows: u64,
    failed: u64,
    statements: u64,
    bytes: u64,
    requests: u64,
}

impl Sent {
    /// Counts statements D1 has committed.
    fn committed(&mut self, sqls: &[&str]) {
        self.statements += sqls.len() as u64;
        self.bytes += sqls.iter().map(|s| s.len() as u64).sum::<u64>();
    }
}

/// Runs a list of table work items: tables start when their parents are done, at most
/// `parallel_tables` at once; requests go through `concurrency` senders. Returns the tables
/// that failed when `continue_on_error` let the run go on without them.
fn run_work(ctx: &Ctx<'_>, work: &[Work], stats: &mut Vec<TableStats>) -> Result<Vec<String>> {
    if work.iter().all(|w| w.done) {
        return Ok(Vec::new());
    }
    let config = ctx.config;
    let cancel = AtomicBool::new(false);
    let (job_tx, job_rx) = bounded::<Job>(config.concurrency);
    let (done_tx, done_rx) = unbounded::<(usize, TableStats, Option<Error>)>();
    let mut first_error: Option<Error> = None;
    let mut failed: Vec<String> = Vec::new();

    std::thread::scope(|scope| {
        for _ in 0..config.concurrency {
            let rx = job_rx.clone();
            scope.spawn(move || sender(ctx, rx));
        }
        drop(job_rx);

        let mut started: Vec<bool> = work.iter().map(|w| w.done).collect();
        let mut finished = started.clone();
        let mut broken = vec![false; work.len()];
        let mut running = 0usize;
        loop {
            if first_error.is_none() {
                for i in 0..work.len() {
                    if running >= config.parallel_tables {
                        break;
                    }
                    if started[i] || !work[i].parents.iter().all(|&p| finished[p]) {
                        continue;
                    }
                    started[i] = true;
                    if work[i].parents.iter().any(|&p| broken[p]) {
                        // A parent failed: its children cannot load either.
                        finished[i] = true;
                        broken[i] = true;
                        failed.push(work[i].shape.table.clone());
                        continue;
                    }
                    running += 1;
                    let (job_tx, done_tx, cancel) = (job_tx.clone(), done_tx.clone(), &cancel);
                    let item = &work[i];
                    scope.spawn(move || {
                        let (stats, error) = copy_table(ctx, item, &job_tx, cancel);
                        let _ = done_tx.send((i, stats, error));
                    });
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
                if config.continue_on_error {
                    log::error(&e.to_string());
                    broken[i] = true;
                    failed.push(work[i].shape.table.clone());
                } else {
                    cancel.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
        drop(job_tx);
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(failed),
    }
}

/// Reads one table in batches, packs it, and sends its requests; waits for every answer.
/// Returns the table's counts, and the error that stopped it, if any.
fn copy_table(
    ctx: &Ctx<'_>,
    work: &Work,
    jobs: &Sender<Job>,
    cancel: &AtomicBool,
) -> (TableStats, Option<Error>) {
    let mut stats = TableStats {
        table: work.shape.table.clone(),
        ..TableStats::default()
    };
    let error = copy_rows(ctx, work, jobs, cancel, &mut stats).err();
    if let Some(e) = &error {
        stats.error = Some(e.to_string());
    }
    (stats, error.map(|e| e.in_table(&work.shape.table)))
}

/// One table's requests on their way: how many, and the first error.
#[derive(Default)]
struct Flight {
    in_flight: usize,
    next_seq: u64,
    watermark: Watermark,
    error: Option<Error>,
}

/// Requests in flight of one table, in the order they were sent: the checkpoint advances over
/// the prefix D1 has committed.
#[derive(Default)]
struct Watermark {
    pending: std::collections::VecDeque<(u64, Option<Vec<Value>>, bool)>,
}

impl Watermark {
    fn sent(&mut self, seq: u64, last_key: Option<Vec<Value>>) {
        self.pending.push_back((seq, last_key, false));
    }

    /// Marks `seq` committed; returns the new key up to which everything is committed.
    fn committed(&mut self, seq: u64) -> Option<Vec<Value>> {
        if let Some(entry) = self.pending.iter_mut().find(|e| e.0 == seq) {
            entry.2 = true;
        }
        let mut key = None;
        while self.pending.front().is_some_and(|e| e.2) {
            let (_, k, _) = self.pending.pop_front().expect("front");
            if k.is_some() {
                key = k;
            }
        }
        key
    }
}

fn copy_rows(
    ctx: &Ctx<'_>,
    work: &Work,
    jobs: &Sender<Job>,
    cancel: &AtomicBool,
    stats: &mut TableStats,
) -> Result<()> {
    let config = ctx.config;
    let started = Instant::now();
    let shape = &work.shape;
    let table = shape.table.clone();
    let conn = open_read_only(&config.sqlite_path)?;
    let filter = pass_filter(work);
    let after = match work.pass {
        Pass::Insert => ctx.state.resume_after(&table),
        Pass::SetDeferred => None,
    };
    if after.is_some() {
        log::info(&format!(
            "{table}: resuming after key {}",
            shape.key_text_of(after.as_deref().unwrap_or_default())
        ));
    }
    let total = ctx.rows.get(&table).copied().unwrap_or(0);
    let mut bar = ctx
        .progress
        .table(&table, if work.pass == Pass::Insert { total } else { 0 });
    let (ack_tx, ack_rx) = unbounded::<(u64, Result<Sent>)>();
    let mut flight = Flight::default();
    let mut on_ack =
        |(seq, ack): (u64, Result<Sent>), stats: &mut TableStats, flight: &mut Flight| match ack {
            Ok(sent) => {
                stats.rows_written += sent.rows - sent.failed;
                stats.rows_failed += sent.failed;
                stats.statements += sent.statements;
                stats.bytes_sent += sent.bytes;
                stats.requests += sent.requests;
                if work.pass == Pass::Insert {
                    bar.add(sent.rows);
                    if let Some(key) = flight.watermark.committed(seq) {
                        if let Err(e) = ctx.state.committed_up_to(&table, &key) {
                            flight.error.get_or_insert(e);
                        }
                    }
                }
            }
            Err(e) => {
                flight.error.get_or_insert(e);
            }
        };

    let mut send = |request: Request, stats: &mut TableStats, flight: &mut Flight| {
        let seq = flight.next_seq;
        flight.next_seq += 1;
        flight.watermark.sent(seq, request.last_key.clone());
        let job = Job {
            table: table.clone(),
            seq,
            request,
            ack: ack_tx.clone(),
        };
        if jobs.send(job).is_ok() {
            flight.in_flight += 1;
        }
        // A table whose rows reference each other through a NOT NULL key goes one request at a time.
        while flight.in_flight > 0 {
            let ack = if work.sequential {
                ack_rx.recv().ok()
            } else {
                ack_rx.try_recv().ok()
            };
            let Some(ack) = ack else { break };
            flight.in_flight -= 1;
            on_ack(ack, stats, flight);
        }
    };

    let produced = produce(config, &conn, work, &filter, after, |event| {
        match event {
            Produced::Read(n) => stats.rows_read += n,
            Produced::Request(request) => send(request, stats, &mut flight),
            Produced::Oversize { key, bytes, sql } => {
                let reason =
                    format!("row of {bytes} bytes is over D1's {MAX_ROW_BYTES}-byte limit");
                if config.on_bad_row == BadRow::Skip {
                    log::warn(&format!("table {table}, row {key}: {reason}"));
                    stats.rows_failed += 1;
                    ctx.rejects.write(&table, &key, &reason, &sql)?;
                } else {
                    return Err(Error::Row {
                        table: table.clone(),
                        key,
                        message: reason,
                    });
                }
            }
        }
        Ok(flight.error.is_none() && !cancel.load(Ordering::Relaxed))
    });
    if let Err(e) = produced {
        flight.error.get_or_insert(e);
    }
    while flight.in_flight > 0 {
        let ack = ack_rx.recv().expect("senders answer every job");
        flight.in_flight -= 1;
        on_ack(ack, stats, &mut flight);
    }
    let error = flight.error;
    if work.pass == Pass::SetDeferred {
        stats.rows_read = 0;
        stats.rows_written = 0;
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    if let Some(e) = error {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Refused(
            "stopped because another table failed".into(),
        ));
    }
    match work.pass {
        Pass::Insert => ctx.state.set_inserted(&table),
        Pass::SetDeferred => ctx.state.set_deferred_done(&table),
    }
}

/// What reading and packing a table yields, in order.
pub(crate) enum Produced {
    /// Rows read from the source.
    Read(u64),
    Request(Request),
    /// A row over D1's row-size limit, with its key and an INSERT that would re-insert it.
    Oversize {
        key: String,
        bytes: usize,
        sql: String,
    },
}

/// Reads a table's rows (after `after`, matching `filter`) in batches and packs them into
/// requests exactly as the real run sends them; the dry run counts them, the real run sends
/// them. `sink` returns false to stop early.
pub(crate) fn produce(
    config: &Config,
    conn: &rusqlite::Connection,
    work: &Work,
    filter: &str,
    after: Option<Vec<Value>>,
    mut sink: impl FnMut(Produced) -> Result<bool>,
) -> Result<()> {
    let shape = &work.shape;
    let mut packer = InsertPacker::new(shape.clone(), config.limits);
    let mut builder = RequestBuilder::new(config.limits);
    let mut units: Vec<Unit> = Vec::new();
    let mut go_on = true;
    read_batches(conn, shape, filter, config.batch_size, after, |rows| {
        go_on = sink(Produced::Read(rows.len() as u64))?;
        for row in &rows {
            match work.pass {
                Pass::Insert => {
                    let bytes = row_bytes(row);
                    if bytes > MAX_ROW_BYTES {
                        let mut one = InsertPacker::new(
                            shape.clone(),
                            Limits {
                                statement_bytes: usize::MAX,
                                ..config.limits
                            },
                        );
                        let mut out = Vec::new();
                        one.push(row, &mut out);
                        one.flush(&mut out);
                        let sql = out
                            .pop()
                            .map(|u| u.statements[0].sql.clone())
                            .unwrap_or_default();
                        go_on &= sink(Produced::Oversize {
                            key: shape.key_text(row),
                            bytes,
                            sql,
                        })?;
                        continue;
                    }
                    packer.push(row, &mut units)
                }
                Pass::SetDeferred => units.extend(deferred_update(shape, row)),
            }
        }
        for unit in units.drain(..) {
            if let Some(request) = builder.push(unit) {
                go_on &= sink(Produced::Request(request))?;
            }
        }
        Ok(go_on)
    })?;
    if !go_on {
        return Ok(());
    }
    packer.flush(&mut units);
    for unit in units.drain(..) {
        if let Some(request) = builder.push(unit) {
            sink(Produced::Request(request))?;
        }
    }
    if let Some(request) = builder.take() {
        sink(Produced::Request(request))?;
    }
    Ok(())
}

/// A sender thread: posts each job's request and reports back.
fn sender(ctx: &Ctx<'_>, jobs: Receiver<Job>) {
    for job in jobs {
        let mut sent = Sent::default();
        let result =
            send_statements(ctx, &job.table, &job.request.statements, &mut sent).map(|()| {
                sent.rows = job.request.rows as u64;
                sent
            });
        let _ = job.ack.send((job.seq, result));
    }
}

/// Sends statements as one request. When D1 says they are too large, or rejects them, sends
/// halves instead, down to the single row at fault, which is then rejected (to the reject file,
/// when the configuration says so) or named in the error.
fn send_statements(
    ctx: &Ctx<'_>,
    table: &str,
    statements: &[Statement],
    sent: &mut Sent,
) -> Result<()> {
    let sqls: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
    sent.requests += 1;
    match ctx.client.execute(&sqls) {
        Ok(_) => {
            sent.committed(&sqls);
            Ok(())
        }
        Err(Failure { error, shrink }) => {
            let splittable = shrink || matches!(error, D1Error::Sql { .. });
            if !splittable {
                return Err(error.into());
            }
            if statements.len() > 1 {
                let (a, b) = statements.split_at(statements.len() / 2);
                send_statements(ctx, table, a, sent)?;
                return send_statements(ctx, table, b, sent);
            }
            if let Some((a, b)) = statements[0].split() {
                send_statements(ctx, table, &[a], sent)?;
                return send_statements(ctx, table, &[b], sent);
            }
            let statement = &statements[0];
            // Before a row is blamed, it is sent once more alone: a request that breaks a
            // constraint makes D1 fail the requests in flight beside it with its own message.
            sent.requests += 1;
            let alone = [statement.sql.as_str()];
            let error = match ctx.client.execute_alone(&alone) {
                Ok(_) => {
                    sent.committed(&alone);
                    return Ok(());
                }
                Err(Failure { error, .. }) => error,
            };
            let key = statement
                .single_key()
                .map(str::to_string)
                .unwrap_or_else(|| row_text(&statement.sql));
            let reason = match &error {
                D1Error::Sql { message } => message.clone(),
                other => other.to_string(),
            };
            if ctx.config.on_bad_row == BadRow::Skip && statement.row_count() == 1 {
                log::warn(&format!(
                    "table {table}, row {key}: rejected by D1: {reason}"
                ));
                sent.failed += 1;
                return ctx.rejects.write(table, &key, &reason, &statement.sql);
            }
            Err(Error::Row {
                table: table.to_string(),
                key,
                message: format!("D1 rejected the row: {reason}"),
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
