//! Producing requests: a table's rows read from the source in key order (`source`), checked
//! against D1's row limit and packed into statements and requests (`pack`). The real run sends
//! what this yields, the dry run counts it.

use std::collections::HashMap;

use crate::compat::{row_bytes, MAX_ROW_BYTES};
use crate::config::Config;
use crate::discover::Schema;
use crate::error::Result;
use crate::pack::{deferred_update, InsertPacker, Limits, Request, RequestBuilder, Shape, Unit};
use crate::plan::Plan;
use crate::source::read_batches;
use crate::value::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pass {
    Insert,
    SetDeferred,
    /// Requests a sync prepared from its differences (`prepared`), sent as they are.
    Sync,
}

/// One table's share of a pass.
pub struct Work {
    pub shape: Shape,
    pub pass: Pass,
    pub sequential: bool,
    /// Indexes into the same work list of tables that must be finished first.
    pub parents: Vec<usize>,
    /// Already done by an earlier run (checkpoint).
    pub done: bool,
    /// The requests of a `Sync` pass, in order.
    pub prepared: Vec<Request>,
}

/// The three passes of a forward run: rows of ordinary tables in load order, deferred keys,
/// and virtual tables. `done` says which parts an earlier run finished.
pub fn passes(schema: &Schema, plan: &Plan, done: impl Fn(&str, Pass) -> bool) -> [Vec<Work>; 3] {
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
                prepared: Vec::new(),
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
                prepared: Vec::new(),
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
            prepared: Vec::new(),
        })
        .collect();
    [rows, deferred, virtual_tables]
}

/// The filter of a pass: the deferred pass reads only rows with a deferred key set.
pub fn pass_filter(work: &Work) -> String {
    match work.pass {
        Pass::Insert | Pass::Sync => String::new(),
        Pass::SetDeferred => work
            .shape
            .deferred
            .iter()
            .map(|&p| format!("{} IS NOT NULL", work.shape.columns[p]))
            .collect::<Vec<_>>()
            .join(" OR "),
    }
}

/// What reading and packing a table yields, in order.
pub enum Produced {
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
pub fn produce(
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
                Pass::Sync => {}
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
