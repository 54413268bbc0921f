//! The reverse run, D1 → SQLite file: discover D1's catalog, read every table through the API
//! page by key (exact values, see `remote`), and write the file with prepared statements in one
//! transaction; then `sqlite_sequence`, indexes, views, triggers and the planner's statistics
//! (`sqlite_stat1`).
//!
//! A new file is built under a temporary name beside the final one and renamed into place only
//! when complete, so a failed run never leaves a half-written file under the final name. An
//! existing file is refused, rebuilt after a backup (`replace`), or given only the rows it lacks
//! (`missing`), as `MIGRATION_ROLLBACK_MODE` says.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::unbounded;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql};

use crate::config::{Config, RollbackMode};
use crate::d1::D1Client;
use crate::discover::{discover_at_once, select_tables, Later, Schema};
use crate::error::{Error, Result};
use crate::flow::{Permit, Permits};
use crate::pack::Shape;
use crate::progress::Progress;
use crate::remote::{D1Catalog, D1Side};
use crate::report::{Report, TableStats};
use crate::target::{if_not_exists, ordered_objects};
use crate::validate::{
    key_segments, page_rows_after, page_segments, row_bytes, smaller_page, survey_of, survey_sql,
    RowSide, Survey,
};
use crate::value::{quote_ident, Value};

/// Rows read from D1 per request when paging through a table.
const PAGE: usize = 20_000;

/// Statements per request of the surveys and key ranges.
const READS_PER_REQUEST: usize = 50;

/// Runs the rollback, filling `report`.
pub fn rollback(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let path = &config.sqlite_path;
    let exists = path.exists();
    if exists && config.rollback_mode == RollbackMode::Refuse {
        return Err(Error::Refused(format!(
            "{} already exists; it is left as it is. Set MIGRATION_ROLLBACK_MODE=missing to add the rows \
             it lacks, or MIGRATION_ROLLBACK_MODE=replace to rebuild it (a backup is kept)",
            path.display()
        )));
    }
    // D1's catalog in one round trip; `sqlite_sequence` and `sqlite_stat1` ride with the
    // tables' surveys (see `copy_rows`).
    let (mut schema, later) = discover_at_once(&D1Catalog(client))?;
    select_tables(&mut schema, &config.tables, &config.exclude_tables)?;
    report.set_skipped(&schema.skipped);

    if exists && config.rollback_mode == RollbackMode::Missing {
        let mut conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA foreign_keys = OFF")?;
        write_all(
            config, client, progress, schema, &later, &mut conn, true, report,
        )?;
        return Ok(());
    }

    let partial = sibling(path, &format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let built = (|| {
        let mut conn = Connection::open(&partial)?;
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             PRAGMA cache_size = -32768",
        )?;
        write_all(
            config, client, progress, schema, &later, &mut conn, false, report,
        )?;
        conn.execute_batch("PRAGMA journal_mode = DELETE")?;
        drop(conn);
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|source| Error::Io {
                path: partial.clone(),
                source,
            })
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    if exists {
        let backup = sibling(path, &format!("backup-{}", report.started_at_unix_ms));
        std::fs::rename(path, &backup).map_err(|source| Error::Io {
            path: backup.clone(),
            source,
        })?;
        crate::log::info(&format!(
            "the previous file is kept as {}",
            backup.display()
        ));
    }
    std::fs::rename(&partial, path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })
}

/// `dir/name.ext` → `dir/name.ext.<suffix>`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Schema, data, sequence, then indexes, views and triggers, into `conn`; `later`'s counters and
/// statistics are read with the tables' surveys.
#[allow(clippy::too_many_arguments)]
fn write_all(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    mut schema: Schema,
    later: &Later,
    conn: &mut Connection,
    only_missing: bool,
    report: &mut Report,
) -> Result<()> {
    let tx = conn.transaction()?;
    // An existing file's triggers must not fire while rows are copied in: they are set aside
    // and recreated in the same transaction.
    let triggers: Vec<(String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND sql IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (name, _) in &triggers {
        tx.execute_batch(&format!("DROP TRIGGER {}", quote_ident(name)))?;
    }
    for t in &schema.tables {
        tx.execute_batch(&if_not_exists(&t.sql))
            .map_err(|e| Error::from(e).in_table(&t.name))?;
    }
    let counters = copy_rows(
        config,
        client,
        progress,
        &schema,
        later,
        &tx,
        only_missing,
        report,
    )?;
    later.fill(&mut schema, counters);
    let schema = &schema;
    // FTS5 indexes of external content are rebuilt from their content table, not copied.
    for t in schema
        .tables
        .iter()
        .filter(|t| t.external_content().is_some())
    {
        let q = quote_ident(&t.name);
        tx.execute_batch(&format!("INSERT INTO {q}({q}) VALUES ('rebuild')"))
            .map_err(|e| Error::from(e).in_table(&t.name))?;
    }
    write_sequence(&tx, schema, only_missing)?;
    for (_, sql) in &triggers {
        tx.execute_batch(sql)?;
    }
    for o in ordered_objects(schema) {
        tx.execute_batch(&if_not_exists(&o.sql))
            .map_err(|e| Error::Refused(format!("creating {} {:?}: {e}", o.kind, o.name)))?;
        report.objects_created.push(o.name.clone());
    }
    write_statistics(&tx, schema, only_missing)?;
    tx.commit()?;
    Ok(())
}

/// Whether the file has a `sqlite_sequence` (SQLite makes it with the first AUTOINCREMENT table).
fn has_sequence(tx: &rusqlite::Transaction<'_>) -> Result<bool> {
    let n: i64 = tx.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

fn write_sequence(
    tx: &rusqlite::Transaction<'_>,
    schema: &Schema,
    only_missing: bool,
) -> Result<()> {
    if !only_missing && has_sequence(tx)? {
        // A new file: loading rows made counters of their own; D1's replace them all, rowids
        // included (a table D1 keeps no counter for keeps none here either).
        tx.execute("DELETE FROM sqlite_sequence", [])?;
    }
    for s in &schema.sequence {
        let seq = crate::source::to_sql(&s.seq);
        if only_missing {
            // Counters only move forward.
            let changed = tx.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = ?2",
                rusqlite::params![seq, s.name],
            )?;
            if changed == 0 {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                    rusqlite::params![s.name, seq],
                )?;
            }
        } else {
            tx.execute(
                "INSERT INTO sqlite_sequence (rowid, name, seq) VALUES (?1, ?2, ?3)",
                rusqlite::params![s.rowid, s.name, seq],
            )?;
        }
    }
    Ok(())
}

/// Whether the file has a table of that name.
fn has_table(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<bool> {
    let n: i64 = tx.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// D1's `sqlite_stat1` rows (its own `_cf_*` tables' aside) into the file. SQLite makes the
/// table only through `ANALYZE`: `ANALYZE sqlite_schema` analyses nothing (SQLite never analyses
/// its own tables) but creates it, and, in a SQLite built with SQLITE_ENABLE_STAT4 (as the one
/// here is), `sqlite_stat4` too, which D1 does not have: that one is dropped again unless the
/// file had it. A new file gets D1's rows, rowids included; an existing one (`missing`) gets the
/// rows of the tables it has no statistics of.
fn write_statistics(
    tx: &rusqlite::Transaction<'_>,
    schema: &Schema,
    only_missing: bool,
) -> Result<()> {
    if schema.stat1.is_empty() {
        return Ok(());
    }
    if !has_table(tx, "sqlite_stat1")? {
        let had_stat4 = has_table(tx, "sqlite_stat4")?;
        tx.execute_batch("ANALYZE sqlite_schema")?;
        if !had_stat4 && has_table(tx, "sqlite_stat4")? {
            tx.execute_batch("DROP TABLE sqlite_stat4")?;
        }
    }
    // Tables the file already has statistics of (an existing file's own ANALYZE) keep them.
    let kept: Vec<String> = if only_missing {
        let mut stmt = tx.prepare("SELECT DISTINCT tbl FROM sqlite_stat1")?;
        let rows = stmt.query_map([], |r| r.get::<_, Option<String>>(0))?;
        let tables: Vec<Option<String>> = rows.collect::<rusqlite::Result<_>>()?;
        tables.into_iter().flatten().collect()
    } else {
        Vec::new()
    };
    for s in &schema.stat1 {
        let (idx, stat) = (
            crate::source::to_sql(&s.idx),
            crate::source::to_sql(&s.stat),
        );
        if only_missing {
            if !kept.iter().any(|k| k.eq_ignore_ascii_case(&s.tbl)) {
                tx.execute(
                    "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?1, ?2, ?3)",
                    rusqlite::params![s.tbl, idx, stat],
                )?;
            }
        } else {
            tx.execute(
                "INSERT INTO sqlite_stat1 (rowid, tbl, idx, stat) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![s.rowid, s.tbl, idx, stat],
            )?;
        }
    }
    Ok(())
}

/// A page of one table's rows on its way to the writer, holding the place it took among the
/// pages read at once until it is written (several tables read in one request share one).
struct Page<'a> {
    table: usize,
    rows: Vec<Vec<Value>>,
    _place: Option<Permit<'a>>,
}

/// Pages being read or waiting to be written at once, and their readers: twice
/// `MIGRATION_CONCURRENCY` (a large table's key segments), and `MIGRATION_PARALLEL_TABLES`
/// more for the other tables. A request on its way holds no rows: as many as the pages a
/// rollback held before (its readers' and the writer's queue), but all of them may be on their
/// way at once (only the readers' were).
fn places_at_once(config: &Config) -> usize {
    2 * config.concurrency + config.parallel_tables
}

/// Readers (one per table in flight) page through D1; this thread writes. Returns the rows of
/// `later`'s queries, read with the tables' surveys.
#[allow(clippy::too_many_arguments)]
fn copy_rows(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    schema: &Schema,
    later: &Later,
    tx: &rusqlite::Transaction<'_>,
    only_missing: bool,
    report: &mut Report,
) -> Result<Vec<Vec<Vec<Value>>>> {
    let shapes: Vec<Shape> = schema.tables.iter().map(|t| Shape::new(t, &[])).collect();
    let side = D1Side {
        client,
        label: "source (D1)",
    };
    // Every table's rows and row width, and the range of its first key column, in one round
    // trip. Tables of more than two pages whose (first) key column holds integers are read in
    // segments of that column at once, WITHOUT ROWID tables with a composite key too.
    let copied: Vec<usize> = (0..shapes.len())
        .filter(|&i| schema.tables[i].external_content().is_none())
        .collect();
    let mut sqls: Vec<String> = shapes
        .iter()
        .map(|s| survey_sql(s, &quote_ident(&s.table)))
        .collect();
    sqls.extend(copied.iter().map(|&i| {
        // Each bound in a query of its own, which SQLite answers from the key's index (min and
        // max in one query read the whole table); the largest number, below every TEXT and BLOB.
        let key = &shapes[i].key_exprs[0];
        let table = quote_ident(&shapes[i].table);
        format!(
            "SELECT (SELECT min({key}) FROM {table}), \
             (SELECT max({key}) FROM {table} WHERE {key} < '')"
        )
    }));
    let surveyed = sqls.len();
    sqls.extend(later.queries.iter().cloned());
    let mut answers = Vec::with_capacity(sqls.len());
    for chunk in sqls.chunks(READS_PER_REQUEST) {
        answers.extend(client.read(chunk)?);
    }
    let counters: Vec<Vec<Vec<Value>>> = answers
        .split_off(surveyed.min(answers.len()))
        .into_iter()
        .map(|r| {
            r.rows
                .into_iter()
                .map(|row| row.into_iter().map(crate::remote::json_value).collect())
                .collect()
        })
        .collect();
    let (survey_answers, range_answers) = answers.split_at(shapes.len().min(answers.len()));
    let surveys: Vec<Survey> = survey_answers
        .iter()
        .map(|r| {
            let cell = |i: usize| r.rows.first().and_then(|row| row.get(i));
            survey_of(
                cell(0).and_then(|v| v.as_u64()),
                cell(1).and_then(|v| v.as_f64()),
            )
        })
        .collect();
    progress.set_total(surveys.iter().map(|s| s.rows).sum());
    let budget = side.page_bytes();
    let mut bounds = std::collections::HashMap::new();
    for (r, &i) in range_answers.iter().zip(&copied) {
        if page_segments(surveys[i].rows, surveys[i].page_rows(PAGE, budget), 2) < 2 {
            continue;
        }
        let bound = |at: usize| {
            r.rows
                .first()
                .and_then(|row| row.get(at))
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        };
        // Segments cut the column's values at thresholds, the first open below and the last
        // above: whatever lies between (rounded by JSON, or of another type) is read.
        if let (Some(lo), Some(hi)) = (bound(0), bound(1)) {
            bounds.insert(i, (lo, hi));
        }
    }
    let mut jobs: Vec<Job> = Vec::new();
    // Tables that fit in a page go together, as many to a request as fit in a page.
    let mut bundle: Vec<usize> = Vec::new();
    let mut bundled_bytes = 0;
    for &i in &copied {
        let survey = &surveys[i];
        let first_page = survey.page_rows(PAGE, budget);
        let small =
            survey.rows == 0 || survey.row_bytes.is_some() && survey.rows as usize <= first_page;
        if small {
            let bytes = survey.rows as usize * survey.row_bytes.unwrap_or(1);
            if !bundle.is_empty()
                && (bundled_bytes + bytes > budget || bundle.len() >= READS_PER_REQUEST)
            {
                jobs.push(Job::Tables(std::mem::take(&mut bundle)));
                bundled_bytes = 0;
            }
            bundle.push(i);
            bundled_bytes += bytes;
            continue;
        }
        // Segments of whole pages, at most twice `MIGRATION_CONCURRENCY`.
        let segments = match bounds.get(&i) {
            Some(&(lo, hi)) => key_segments(
                lo,
                hi,
                page_segments(survey.rows, first_page, 2 * config.concurrency),
            ),
            None => vec![(None, None)],
        };
        let of = segments.len();
        jobs.extend(segments.into_iter().map(|(after, upto)| {
            Job::Segment(Segment {
                table: i,
                after,
                upto,
                of,
                first_page,
                row_bytes: survey.row_bytes,
            })
        }));
    }
    if !bundle.is_empty() {
        jobs.push(Job::Tables(bundle));
    }
    // The longest chains of pages first, so that they do not end last.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.pages(&surveys)));
    // The places bound what is read at once; the writer's queue needs no bound of its own.
    let places = Permits::new(places_at_once(config));
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let (page_tx, page_rx) = unbounded::<Result<Page>>();
    let (work_tx, work_rx) = crossbeam_channel::unbounded::<Job>();
    for job in jobs {
        work_tx.send(job).expect("queue");
    }
    drop(work_tx);
    let mut stats: Vec<TableStats> = shapes
        .iter()
        .map(|s| TableStats {
            table: s.table.clone(),
            ..TableStats::default()
        })
        .collect();
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        // A reader for each place: the segments of large tables, and the other tables beside
        // them.
        for _ in 0..places_at_once(config) {
            let (work_rx, page_tx, shapes) = (work_rx.clone(), page_tx.clone(), &shapes);
            let reader = Reader {
                side: &side,
                places: &places,
                stopped: &stopped,
                pages: page_tx.clone(),
            };
            scope.spawn(move || {
                for job in work_rx {
                    if let Err(e) = reader.read_job(shapes, &job) {
                        let _ = page_tx.send(Err(e));
                        return;
                    }
                }
            });
        }
        drop(page_tx);
        let written = write_pages(
            tx,
            progress,
            &shapes,
            &surveys,
            only_missing,
            page_rx,
            &mut stats,
        );
        // A run that stops lets its readers go: the pages queued are dropped with the queue
        // (their places freed), and a reader that takes a place then reads no more.
        stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        written
    })?;
    let elapsed = started.elapsed().as_millis() as u64;
    for mut s in stats {
        s.duration_ms = elapsed;
        report.tables.push(s);
    }
    Ok(counters)
}

/// Writes the pages as they come, each table's with its prepared statement, counting in
/// `stats`; the first error (a reader's, or a row the file refuses) stops it.
fn write_pages(
    tx: &rusqlite::Transaction<'_>,
    progress: &Progress,
    shapes: &[Shape],
    surveys: &[Survey],
    only_missing: bool,
    page_rx: crossbeam_channel::Receiver<Result<Page<'_>>>,
    stats: &mut [TableStats],
) -> Result<()> {
    let mut statements: Vec<rusqlite::CachedStatement<'_>> = Vec::new();
    for s in shapes {
        let marks = vec!["?"; s.columns.len()].join(",");
        let verb = match (only_missing, s.is_virtual) {
            (true, true) => "INSERT OR IGNORE INTO",
            _ => "INSERT INTO",
        };
        let tail = if only_missing && !s.is_virtual {
            " ON CONFLICT DO NOTHING"
        } else {
            ""
        };
        let sql = format!(
            "{verb} {} ({}) VALUES ({marks}){tail}",
            quote_ident(&s.table),
            s.columns.join(",")
        );
        statements.push(tx.prepare_cached(&sql)?);
    }
    let mut bars: Vec<Option<crate::progress::TableProgress<'_>>> =
        (0..shapes.len()).map(|_| None).collect();
    for page in page_rx {
        let page = page?;
        let bar = bars[page.table].get_or_insert_with(|| {
            progress.table(&shapes[page.table].table, surveys[page.table].rows)
        });
        let stmt = &mut statements[page.table];
        let st = &mut stats[page.table];
        for row in &page.rows {
            let params: Vec<Cell<'_>> = row.iter().map(Cell).collect();
            let changed = stmt
                .execute(rusqlite::params_from_iter(params.iter()))
                .map_err(|e| Error::Row {
                    table: shapes[page.table].table.clone(),
                    key: shapes[page.table].key_text(row),
                    message: e.to_string(),
                })?;
            st.rows_written += changed as u64;
        }
        st.rows_read += page.rows.len() as u64;
        bar.add(page.rows.len() as u64);
        bar.add_bytes(page.rows.iter().flatten().map(|v| v.size() as u64).sum());
    }
    Ok(())
}

/// What one reader reads: a table, or a segment of its integer keys, page after page; or
/// whole tables small enough to share one request.
enum Job {
    Segment(Segment),
    Tables(Vec<usize>),
}

impl Job {
    /// Pages read one after the other, about.
    fn pages(&self, surveys: &[Survey]) -> usize {
        match self {
            Job::Segment(s) => {
                let rows = (surveys[s.table].rows as usize).div_ceil(s.of.max(1));
                rows.div_ceil(s.first_page.max(1)).max(1)
            }
            Job::Tables(_) => 1,
        }
    }
}

/// A table, or a segment of its integer keys, to read.
struct Segment {
    table: usize,
    /// Values of the first key column after this one (none: from the start) and up to that
    /// one (none: to the end).
    after: Option<i64>,
    upto: Option<i64>,
    /// Segments the table is cut into.
    of: usize,
    /// Rows of the first page, from the table's row width.
    first_page: usize,
    /// Bytes of the table's average row, as surveyed.
    row_bytes: Option<usize>,
}

/// One reader: reads jobs page after page, each page in a place among those read at once,
/// and hands the pages on to the writer.
struct Reader<'a, 'c> {
    side: &'a D1Side<'c>,
    places: &'a Permits,
    /// The writer stopped (an error): read nothing more.
    stopped: &'a std::sync::atomic::AtomicBool,
    pages: crossbeam_channel::Sender<Result<Page<'a>>>,
}

impl<'a> Reader<'a, '_> {
    /// A place for the next page, none once the writer stopped.
    fn place(&self) -> Option<Permit<'a>> {
        let place = self.places.take();
        (!self.stopped.load(std::sync::atomic::Ordering::Relaxed)).then_some(place)
    }

    /// Hands a page on; false when the writer is gone.
    fn hand_on(&self, table: usize, rows: Vec<Vec<Value>>, place: Option<Permit<'a>>) -> bool {
        self.pages
            .send(Ok(Page {
                table,
                rows,
                _place: place,
            }))
            .is_ok()
    }

    /// Reads one job and hands its pages on; errors name their table.
    fn read_job(&self, shapes: &[Shape], job: &Job) -> Result<()> {
        let tables = match job {
            Job::Segment(segment) => {
                return self
                    .read_table(&shapes[segment.table], segment)
                    .map_err(|e| e.in_table(&shapes[segment.table].table))
            }
            Job::Tables(tables) => tables,
        };
        let tails: Vec<[String; 1]> = tables
            .iter()
            .map(|&t| [format!("ORDER BY {}", shapes[t].key_exprs.join(", "))])
            .collect();
        let reads: Vec<(&Shape, &[String])> = tables
            .iter()
            .zip(&tails)
            .map(|(&t, tail)| (&shapes[t], tail.as_slice()))
            .collect();
        let Some(place) = self.place() else {
            return Ok(());
        };
        match self.side.surveys_and_reads(&[], &reads) {
            Ok((_, read)) => {
                // The tables share the request's place: the last of them holds it.
                let mut place = Some(place);
                let n = tables.len();
                for (i, (&table, mut rows)) in tables.iter().zip(read).enumerate() {
                    let held = if i + 1 == n { place.take() } else { None };
                    if !self.hand_on(table, rows.pop().unwrap_or_default(), held) {
                        return Ok(());
                    }
                }
                Ok(())
            }
            // A table too large to answer whole: each is read in pages.
            Err(e) if e.is_too_large() => {
                drop(place);
                for &t in tables {
                    let whole = Segment {
                        table: t,
                        after: None,
                        upto: None,
                        of: 1,
                        first_page: PAGE,
                        row_bytes: None,
                    };
                    self.read_table(&shapes[t], &whole)
                        .map_err(|e| e.in_table(&shapes[t].table))?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Pages through one table, or a segment of its keys, by key (never by OFFSET) and hands
    /// the pages on. A page D1 finds too large to answer is asked for again, smaller, and every
    /// reader's pages are smaller from then on.
    fn read_table(&self, shape: &Shape, job: &Segment) -> Result<()> {
        let side = self.side;
        let (table, upto) = (job.table, job.upto);
        let keys = shape.key_exprs.join(", ");
        // A segment bounds the first key column; pages go on after the last key read.
        let first = &shape.key_exprs[0];
        let mut after: Option<String> = None;
        let mut per_row = job.row_bytes;
        let mut page = match per_row {
            Some(b) => (side.page_bytes() / b).clamp(1, job.first_page),
            None => job.first_page,
        };
        loop {
            let mut conditions = Vec::new();
            match (&after, job.after) {
                (Some(k), _) => conditions.push(format!("({keys}) > {k}")),
                (None, Some(from)) => conditions.push(format!("{first} > {from}")),
                (None, None) => {}
            }
            if let Some(u) = upto {
                conditions.push(format!("{first} <= {u}"));
            }
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {} ", conditions.join(" AND "))
            };
            let tail = format!("{filter}ORDER BY {keys} LIMIT {page}");
            let Some(place) = self.place() else {
                return Ok(());
            };
            let rows = match side.select(shape, &[tail]) {
                Ok(mut rows) => rows.pop().unwrap_or_default(),
                Err(e) if e.is_too_large() => match smaller_page(side, page, per_row) {
                    Some(smaller) => {
                        page = smaller;
                        continue;
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            };
            let Some(last) = rows.last() else {
                return Ok(());
            };
            let key: Vec<String> = shape
                .key_positions
                .iter()
                .map(|&p| last[p].literal())
                .collect();
            after = Some(format!("({})", key.join(", ")));
            let full = rows.len() == page;
            per_row = row_bytes(&rows).or(per_row);
            page = page_rows_after(&rows, PAGE, side.page_bytes());
            if !self.hand_on(table, rows, Some(place)) || !full {
                return Ok(());
            }
        }
    }
}

/// A value bound exactly as it is, TEXT with whatever bytes it holds.
struct Cell<'a>(&'a Value);

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(b) => ValueRef::Text(b),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}
