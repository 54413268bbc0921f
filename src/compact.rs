//! A small database into an empty D1 database in few requests: the tables' DDL, then every
//! table's rows (parents first, several tables sharing a request), `sqlite_sequence`, then the
//! indexes, views and triggers, packed in that order into requests of at most
//! `MIGRATION_REQUEST_BYTES` and sent one after the other. The table-by-table load (`load`)
//! keeps a request per table and several in flight, which pays on large tables; a small
//! database (a fleet's tenant) is bound by round trips instead, and here its whole copy is one
//! request where it fits.
//!
//! `migrate` takes this path only for the plain case (see [`eligible`]): an empty target, a
//! checkpoint without progress, every table loaded in one pass (no deferred or anchored keys, no
//! virtual tables), the query method, and a source file of at most [`MAX_REQUESTS`] requests'
//! bytes. Every request is one D1 transaction; after each, the checkpoint records how far each
//! of its tables got, so a stopped run resumes table by table. A request D1 refuses (a row it
//! rejects, a request too large) leaves nothing behind: the table-by-table load takes over from
//! the checkpoint, and isolates and names the row as always.

use std::time::Instant;

use crate::config::{Config, Method};
use crate::d1::{D1Client, Failure};
use crate::error::{D1Error, Result};
use crate::pack::Request;
use crate::produce::{produce, Pass, Produced, Work};
use crate::progress::{Progress, Stage, TableProgress};
use crate::report::TableStats;
use crate::source::open_read_only;
use crate::state::{Committed, State};

/// The source files this path takes are at most this many requests' bytes: past that, the
/// table-by-table load's requests in flight are worth more than the round trips saved here.
pub const MAX_REQUESTS: usize = 4;

/// How the compact load ended.
pub enum Outcome {
    /// Everything is on D1, and each table's counts.
    Loaded(Vec<TableStats>),
    /// D1 refused a request (why): nothing of it was written, and the checkpoint holds what
    /// the requests before it committed.
    Refused(String),
}

/// Whether a forward run may load compactly: see the module's documentation. `empty_target`:
/// D1 holds nothing of the source's (a database the run created, or one found empty).
pub fn eligible(
    config: &Config,
    empty_target: bool,
    state: &State,
    work: &[Work],
    later_passes: bool,
) -> bool {
    let small = std::fs::metadata(config.source_file())
        .is_ok_and(|m| m.len() <= (MAX_REQUESTS * config.limits.request_bytes) as u64);
    empty_target
        && small
        && !later_passes
        && config.method == Method::Query
        && state.recorded().is_empty()
        && !state.is_complete()
        && work
            .iter()
            .all(|w| w.pass == Pass::Insert && !w.done && !w.sequential)
}

/// The statements of one request on its way, and what each table has in it.
#[derive(Default)]
struct Batch {
    statements: Vec<String>,
    bytes: usize,
    /// Per table with rows (or its end) in the batch: its index in the work list, and what
    /// the batch commits of it.
    parts: Vec<(usize, Committed, u64, u64)>,
}

impl Batch {
    fn fits(&self, bytes: usize, statements: usize, config: &Config) -> bool {
        self.statements.is_empty()
            || (self.bytes + bytes <= config.limits.request_bytes
                && self.statements.len() + statements <= config.limits.request_statements)
    }

    fn add_sql(&mut self, sqls: Vec<String>) {
        self.bytes += sqls.iter().map(String::len).sum::<usize>();
        self.statements.extend(sqls);
    }

    /// A produced request of table `i` joins the batch.
    fn add_request(&mut self, i: usize, table: &str, request: Request) {
        let statements = request.statements.len() as u64;
        let bytes = request.bytes as u64;
        let part = self.part(i, table);
        part.1.rows += request.rows as u64;
        if request.last_key.is_some() {
            part.1.key = request.last_key;
        }
        part.2 += statements;
        part.3 += bytes;
        self.bytes += request.bytes;
        self.statements
            .extend(request.statements.into_iter().map(|s| s.sql));
    }

    fn part(&mut self, i: usize, table: &str) -> &mut (usize, Committed, u64, u64) {
        if self.parts.last().is_none_or(|p| p.0 != i) {
            self.parts.push((
                i,
                Committed {
                    table: table.to_string(),
                    key: None,
                    rows: 0,
                    inserted: false,
                },
                0,
                0,
            ));
        }
        self.parts.last_mut().expect("a part")
    }
}

/// Sends the batches and keeps the books: checkpoint, counts, progress.
struct Sender<'a> {
    client: &'a D1Client,
    state: &'a State,
    stats: Vec<TableStats>,
    bars: Vec<TableProgress<'a>>,
    batch: Batch,
    refused: Option<String>,
}

impl Sender<'_> {
    /// Sends the batch as one request; false when D1 refused it.
    fn flush(&mut self) -> Result<bool> {
        let batch = std::mem::take(&mut self.batch);
        if batch.statements.is_empty() {
            return Ok(true);
        }
        match self.client.execute(&batch.statements) {
            Ok(_) => {}
            Err(Failure { error, shrink }) if shrink || matches!(error, D1Error::Sql { .. }) => {
                self.refused = Some(error.to_string());
                return Ok(false);
            }
            Err(f) => return Err(f.error.into()),
        }
        let parts: Vec<Committed> = batch.parts.iter().map(|p| p.1.clone()).collect();
        self.state.committed(&parts)?;
        // The request counts toward the first table it carried rows of.
        if let Some((i, ..)) = batch.parts.first() {
            self.stats[*i].requests += 1;
        }
        for (i, part, statements, bytes) in batch.parts {
            let s = &mut self.stats[i];
            s.rows_written += part.rows;
            s.statements += statements;
            s.bytes_sent += bytes;
            self.bars[i].add(part.rows);
            self.bars[i].add_bytes(bytes);
        }
        Ok(true)
    }

    /// Adds statements, sending the batch first when they do not fit in it.
    fn add_sql(&mut self, sqls: Vec<String>, config: &Config) -> Result<bool> {
        let bytes = sqls.iter().map(String::len).sum();
        if !self.batch.fits(bytes, sqls.len(), config) && !self.flush()? {
            return Ok(false);
        }
        self.batch.add_sql(sqls);
        Ok(true)
    }
}

/// Loads `work` (every table's one pass, in load order) with `head` before the rows (the
/// tables' DDL) and `tail` after them (`sqlite_sequence`, indexes, views, triggers).
/// `rows` gives each table's rows to copy, for the progress display.
#[allow(clippy::too_many_arguments)]
pub fn load<'a>(
    config: &Config,
    client: &'a D1Client,
    progress: &'a Progress,
    state: &'a State,
    work: &[Work],
    rows: &std::collections::HashMap<String, u64>,
    head: Vec<String>,
    tail: Vec<String>,
) -> Result<Outcome> {
    let conn = open_read_only(config.source_file())?;
    let mut sender = Sender {
        client,
        state,
        stats: work
            .iter()
            .map(|w| TableStats {
                table: w.shape.table.clone(),
                ..TableStats::default()
            })
            .collect(),
        bars: work
            .iter()
            .map(|w| {
                let n = rows.get(&w.shape.table).copied().unwrap_or(0);
                progress.pass(&w.shape.table, Stage::Data, n)
            })
            .collect(),
        batch: Batch::default(),
        refused: None,
    };
    sender.batch.add_sql(head);
    for (i, w) in work.iter().enumerate() {
        let started = Instant::now();
        let table = &w.shape.table;
        let request_bytes = || client.request_bytes(config.limits.request_bytes);
        produce(config, &conn, w, "", None, &request_bytes, |event| {
            match event {
                Produced::Read(n) => sender.stats[i].rows_read += n,
                Produced::Request(request) => {
                    if !sender
                        .batch
                        .fits(request.bytes, request.statements.len(), config)
                        && !sender.flush()?
                    {
                        return Ok(false);
                    }
                    sender.batch.add_request(i, table, request);
                }
                Produced::Oversize { key, .. } => {
                    // The table-by-table load rejects or names it, as the configuration says.
                    sender.refused = Some(format!(
                        "table {table}, row {key} is over D1's row size limit"
                    ));
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        if let Some(why) = sender.refused.take() {
            return Ok(Outcome::Refused(why));
        }
        // Every row of the table is in this batch or an earlier one.
        sender.batch.part(i, table).1.inserted = true;
        sender.stats[i].duration_ms += started.elapsed().as_millis() as u64;
    }
    if !sender.add_sql(tail, config)? || !sender.flush()? {
        return Ok(Outcome::Refused(sender.refused.take().unwrap_or_default()));
    }
    Ok(Outcome::Loaded(sender.stats))
}
