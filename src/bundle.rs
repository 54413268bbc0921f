//! Small tables in one request, chosen: before the loader (`load`) starts its table workers,
//! the tables whose every row fits in what is left of one request, and whose parents are among
//! them (or were loaded by an earlier run), are read and packed (`produce`) together into a
//! single request, parents first, with the keys their own update pass would set (deferred
//! keys) after their rows. The loader sends it (`Loader::send_small_tables`); the dry run counts
//! it. D1 checks foreign keys at the request's end, so the whole chain of small parents and
//! children costs one round trip instead of one per level of the load order: over a network
//! 250 ms away, Northwind's nine small tables went in one request instead of five waves.
//!
//! The request is one D1 transaction: when D1 refuses it, nothing of it was written, and every
//! table goes its own way through the loader as before.

use crate::config::{Config, Method};
use crate::discover::Schema;
use crate::error::Result;
use crate::pack::Request;
use crate::produce::{pass_filter, produce, Pass, Produced, Work};

/// One table's share of the request.
pub struct Member {
    /// Index into the work list.
    pub work: usize,
    pub insert: Option<Request>,
    /// Index into the deferred list and that pass's request, when its keys go along.
    pub deferred: Option<(usize, Option<Request>)>,
    pub rows_read: u64,
}

impl Member {
    fn bytes(&self) -> usize {
        self.insert.as_ref().map_or(0, |r| r.bytes) + self.keys().map_or(0, |r| r.bytes)
    }

    /// The request of its deferred keys, when they go along.
    pub fn keys(&self) -> Option<&Request> {
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
    /// In load order.
    pub members: Vec<Member>,
    /// Bytes of SQL of the one request.
    pub bytes: usize,
}

impl SmallTables {
    /// The one request's statements: rows in load order, each table's between the pragmas its
    /// placeholders need; then the keys of the update passes.
    pub fn sql(&self) -> Vec<&str> {
        let mut sqls: Vec<&str> = Vec::new();
        for m in &self.members {
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
        for m in &self.members {
            if let Some((_, Some(request))) = &m.deferred {
                sqls.extend(request.statements.iter().map(|s| s.sql.as_str()));
            }
        }
        sqls
    }

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
