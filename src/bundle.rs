//! Small tables in one request: before the loader (`load`) starts its table workers, the
//! tables whose every row fits in what is left of one request, and whose parents are among
//! them (or were loaded by an earlier run), are read and packed (`produce`) together into a
//! single request, parents first, with the keys their own update pass would set (deferred keys)
//! after their rows. D1 checks foreign keys at the request's end, so the whole chain of small
//! parents and children costs one round trip instead of one per level of the load order: over
//! a network 250 ms away, Northwind's nine small tables went in one request instead of five
//! waves.
//!
//! The request is one D1 transaction: when D1 refuses it, nothing of it was written, and every
//! table goes its own way through the loader as before.

use crate::config::{Config, Method};
use crate::discover::Schema;
use crate::error::{D1Error, Result};
use crate::load::Loader;
use crate::log;
use crate::pack::Request;
use crate::produce::{pass_filter, produce, Pass, Produced, Work};
use crate::progress::Stage;
use crate::report::TableStats;
use crate::source::open_read_only;

/// One table's share of the request.
struct Member {
    /// Index into the work list.
    work: usize,
    insert: Option<Request>,
    /// Index into the deferred list and that pass's request, when its keys go along.
    deferred: Option<(usize, Option<Request>)>,
    rows_read: u64,
}

impl Member {
    fn bytes(&self) -> usize {
        self.insert.as_ref().map_or(0, |r| r.bytes) + self.keys().map_or(0, |r| r.bytes)
    }

    fn keys(&self) -> Option<&Request> {
        self.deferred.as_ref().and_then(|(_, r)| r.as_ref())
    }
}

/// What one table's share of the request counts, in the report and in the dry run's plan.
#[derive(Debug, Default)]
pub struct Share {
    /// Indexes into the work list and, when its deferred keys go along, the deferred list.
    pub work: usize,
    pub deferred: Option<usize>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub statements: u64,
    pub bytes: u64,
    /// The one request counts once, with the first table that has statements in it.
    pub requests: u64,
}

/// The small tables chosen for one request, with their requests.
pub struct SmallTables {
    members: Vec<Member>,
    bytes: usize,
}

impl SmallTables {
    /// Each table's share, in load order.
    pub fn shares(&self) -> Vec<Share> {
        let mut first = true;
        self.members
            .iter()
            .map(|m| {
                let insert = m.insert.as_ref();
                let statements = insert.map_or(0, |r| r.statements.len())
                    + m.keys().map_or(0, |r| r.statements.len());
                Share {
                    work: m.work,
                    deferred: m.deferred.as_ref().map(|(d, _)| *d),
                    rows_read: m.rows_read,
                    rows_written: insert.map_or(0, |r| r.rows as u64),
                    statements: statements as u64,
                    bytes: m.bytes() as u64,
                    requests: u64::from(statements > 0 && std::mem::take(&mut first)),
                }
            })
            .collect()
    }
}

/// What a pass of one table yields, when it is at most one request of at most `budget` bytes
/// with no row over D1's limit: `Some((request, rows read))`; `None` when it is more (reading
/// stops at the batch that shows it).
fn one_request(
    config: &Config,
    conn: &rusqlite::Connection,
    work: &Work,
    budget: usize,
) -> Result<Option<(Option<Request>, u64)>> {
    let mut request: Option<Request> = None;
    let mut read = 0u64;
    let mut fits = true;
    let unlimited = || usize::MAX;
    produce(
        config,
        conn,
        work,
        &pass_filter(work),
        None,
        &unlimited,
        |event| {
            match event {
                Produced::Read(n) => read += n,
                Produced::Request(r) if request.is_none() && r.bytes <= budget => request = Some(r),
                Produced::Request(_) | Produced::Oversize { .. } => fits = false,
            }
            Ok(fits)
        },
    )?;
    Ok(fits.then_some((request, read)))
}

/// Chooses the small tables of `work` that go in one request of at most `budget` bytes of
/// SQL, in load order, each with its requests (and its deferred keys', from `deferred`, when
/// every table they may point at is in too). The dry run counts what this chooses.
pub fn choose(
    config: &Config,
    conn: &rusqlite::Connection,
    schema: &Schema,
    work: &[Work],
    deferred: &[Work],
    budget: usize,
) -> Result<SmallTables> {
    let mut members: Vec<Member> = Vec::new();
    let mut used = 0usize;
    if config.method != Method::Query {
        return Ok(SmallTables { members, bytes: 0 });
    }
    let bundled = |members: &[Member], i: usize| members.iter().any(|m| m.work == i);
    for (i, w) in work.iter().enumerate() {
        let eligible = !w.done
            && w.pass == Pass::Insert
            && w.group.is_empty()
            && w.shape.anchored.is_empty()
            && !w.shape.is_virtual
            && !w.sequential
            && w.parents
                .iter()
                .all(|&p| work[p].done || bundled(&members, p));
        if !eligible {
            continue;
        }
        let Some((insert, rows_read)) = one_request(config, conn, w, budget - used)? else {
            continue;
        };
        let mut member = Member {
            work: i,
            insert,
            deferred: None,
            rows_read,
        };
        // Its deferred keys go along when every table they may point at is already in;
        // otherwise the update pass after the data sets them, as for any table.
        let parents_in = schema.table(&w.shape.table).is_some_and(|t| {
            t.foreign_keys.iter().all(|fk| {
                fk.parent.eq_ignore_ascii_case(&t.name)
                    || members
                        .iter()
                        .any(|m| work[m.work].shape.table.eq_ignore_ascii_case(&fk.parent))
            })
        });
        let keys = deferred
            .iter()
            .position(|d| !d.done && d.shape.table == w.shape.table);
        if let Some(d) = keys.filter(|_| parents_in) {
            let left = budget - used - member.bytes();
            if let Some((request, _)) = one_request(config, conn, &deferred[d], left)? {
                member.deferred = Some((d, request));
            }
        }
        used += member.bytes();
        members.push(member);
    }
    Ok(SmallTables {
        members,
        bytes: used,
    })
}

/// Sends the small tables of `work` (and their deferred keys, from `deferred`) in one request,
/// and marks what it sent done in both lists and in the checkpoint. Tables it leaves out, or
/// every table when D1 refuses the request, load through the loader as before.
pub fn send_small_tables(
    ctx: &Loader<'_>,
    schema: &Schema,
    work: &mut [Work],
    deferred: &mut [Work],
    stats: &mut Vec<TableStats>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let conn = open_read_only(ctx.config.source_file())?;
    let budget = ctx.client.request_bytes(ctx.config.limits.request_bytes);
    let small = choose(ctx.config, &conn, schema, work, deferred, budget)?;
    let SmallTables {
        members,
        bytes: used,
    } = &small;
    if members.is_empty() {
        return Ok(());
    }
    // Rows in load order, each table's between the pragmas its placeholders need; then the
    // keys of the update passes.
    let mut sqls: Vec<&str> = Vec::new();
    for m in members {
        let Some(request) = &m.insert else { continue };
        let relax = request.relax_checks;
        if relax {
            sqls.push("PRAGMA ignore_check_constraints = on");
        }
        sqls.extend(request.statements.iter().map(|s| s.sql.as_str()));
        if relax {
            sqls.push("PRAGMA ignore_check_constraints = off");
        }
    }
    for m in members {
        if let Some((_, Some(request))) = &m.deferred {
            sqls.extend(request.statements.iter().map(|s| s.sql.as_str()));
        }
    }
    let names: Vec<&str> = members
        .iter()
        .map(|m| work[m.work].shape.table.as_str())
        .collect();
    // Each table's data, and its keys when they go along, count as their own passes would.
    let mut bars: Vec<_> = members
        .iter()
        .map(|m| {
            let table = &work[m.work].shape.table;
            let rows = ctx.rows.get(table).copied().unwrap_or(0);
            let data = ctx.progress.pass(table, Stage::Data, rows);
            let keys = m
                .deferred
                .as_ref()
                .map(|_| ctx.progress.pass(table, Stage::DeferredKeys, 0));
            (data, keys)
        })
        .collect();
    if !sqls.is_empty() {
        match ctx.client.execute(&sqls) {
            Ok(_) => {}
            Err(f) if f.shrink || matches!(f.error, D1Error::Sql { .. }) => {
                // Their bars close at nothing; each table's own pass counts its rows.
                drop(bars);
                log::info(&format!(
                    "the small tables {} did not go in one request ({}); each is sent on its own",
                    names.join(", "),
                    f.error
                ));
                return Ok(());
            }
            Err(f) => return Err(f.error.into()),
        }
    }
    log::debug(&format!(
        "{} small tables in one request of {used} bytes: {}",
        members.len(),
        names.join(", ")
    ));
    let elapsed = started.elapsed().as_millis() as u64;
    for ((m, share), (mut bar, keys)) in members.iter().zip(small.shares()).zip(bars.drain(..)) {
        let table = work[m.work].shape.table.clone();
        bar.add(share.rows_written);
        bar.add_bytes(share.bytes);
        drop(bar);
        if let (Some(mut keys), Some(request)) = (keys, m.keys()) {
            keys.add(request.rows as u64);
        }
        if let Some(request) = &m.insert {
            if let Some(key) = &request.last_key {
                ctx.state.advanced(&table, key, share.rows_written)?;
            }
        }
        ctx.state.set_inserted(&table)?;
        work[m.work].done = true;
        if let Some(d) = share.deferred {
            ctx.state.set_deferred_done(&table)?;
            deferred[d].done = true;
        }
        stats.push(TableStats {
            table,
            rows_read: share.rows_read,
            rows_written: share.rows_written,
            statements: share.statements,
            bytes_sent: share.bytes,
            requests: share.requests,
            duration_ms: elapsed,
            ..TableStats::default()
        });
    }
    Ok(())
}
