//! Producing requests: a table's rows read from the source in key order (`source`), checked
//! against D1's row limit and packed into statements and requests (`pack`). The real run sends
//! what this yields, the dry run counts it.

use std::collections::HashMap;

use crate::compat::{row_bytes, MAX_ROW_BYTES};
use crate::config::Config;
use crate::discover::Schema;
use crate::error::{Error, Result};
use crate::pack::{deferred_update, InsertPacker, Limits, Request, RequestBuilder, Shape, Unit};
use crate::plan::{GroupMode, Plan, TablePlan};
use crate::source::{page_sql, read_batches};
use crate::value::{quote_ident, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pass {
    Insert,
    SetDeferred,
    /// Requests a sync prepared from its differences (`prepared`), sent as they are.
    Sync,
    /// The anchor rows of a group bound by NOT NULL cycles (see `plan`), in one request.
    Anchors,
    /// Every row of a group whose cyclic keys cannot share an anchor, in one request.
    Whole,
}

/// One table's share of a pass (for `Anchors` and `Whole`, a group's: `shape` is its first
/// table's).
#[derive(Clone)]
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
    /// `Anchors` and `Whole`: the group's tables, and for `Anchors` each one's anchor row.
    pub group: Vec<GroupMember>,
}

/// A table of a group as its group pass loads it, with its anchor row (`Anchors` only).
pub type GroupMember = (Shape, Option<Vec<Value>>);

/// A group's whole request may hold this many bytes of SQL at most.
pub const WHOLE_GROUP_BYTES: usize = 16 << 20;

/// The checkpoint phase of the group whose first table is `table`.
pub fn group_phase(table: &str) -> String {
    format!("group of {table}")
}

/// Each anchored group's anchor rows, by table (index into `Schema::tables`): the first row in
/// key order whose columns that anchored keys refer to are all set, in the table's shape.
pub type Anchors = HashMap<usize, Vec<Value>>;

/// Reads the anchor rows of every anchored group from the source.
/// `adapt` points a shape at what the source reads it from (a transform's query).
pub fn read_anchors(
    conn: &rusqlite::Connection,
    schema: &Schema,
    plan: &Plan,
    adapt: impl Fn(&mut Shape),
) -> Result<Anchors> {
    let mut anchors = Anchors::new();
    for group in plan.groups.iter().filter(|g| g.mode == GroupMode::Anchored) {
        for &t in &group.tables {
            let mut shape = Shape::new(&schema.tables[t], &[]);
            adapt(&mut shape);
            let mut referred: Vec<String> = plan
                .tables
                .iter()
                .flat_map(|tp| tp.anchored.iter())
                .filter(|k| k.parent == t)
                .flat_map(|k| k.parent_columns.iter().cloned())
                .collect();
            referred.sort();
            referred.dedup();
            let filter: Vec<String> = referred
                .iter()
                .map(|c| format!("{} IS NOT NULL", quote_ident(c)))
                .collect();
            let sql = page_sql(
                &shape,
                &shape.select_list(),
                &filter.join(" AND "),
                false,
                1,
            );
            let mut stmt = conn.prepare(&sql)?;
            let n = stmt.column_count();
            let mut rows = stmt.query([])?;
            if let Some(r) = rows.next()? {
                let row = (0..n)
                    .map(|i| r.get_ref(i).map(crate::source::value))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                anchors.insert(t, row);
            }
        }
    }
    Ok(anchors)
}

/// The shape a planned table is loaded in: deferred keys NULL, anchored keys at their anchors.
pub fn load_shape(schema: &Schema, tp: &TablePlan, anchors: &Anchors) -> Shape {
    let mut shape = Shape::new(&schema.tables[tp.table], &tp.deferred).with_anchored(&tp.anchored);
    for key in &tp.anchored {
        let parent = Shape::new(&schema.tables[key.parent], &[]);
        for (column, referred) in key.columns.iter().zip(&key.parent_columns) {
            let value = anchors
                .get(&key.parent)
                .zip(parent.position(referred))
                .map(|(row, p)| row[p].clone());
            let Some(at) = shape.position(column) else {
                continue;
            };
            if let Some(slot) = shape.anchored.iter_mut().find(|(p, _)| *p == at) {
                slot.1 = value;
            }
        }
    }
    shape
}

/// The three passes of a forward run: rows of ordinary tables in load order (each group bound
/// by NOT NULL cycles preceded by its anchors or whole request), deferred keys, and virtual
/// tables. `done` says which parts an earlier run finished.
pub fn passes(
    schema: &Schema,
    plan: &Plan,
    anchors: &Anchors,
    done: impl Fn(&str, Pass) -> bool,
) -> [Vec<Work>; 3] {
    let mut rows: Vec<Work> = Vec::new();
    let mut work_of: HashMap<usize, usize> = HashMap::new();
    let mut group_work: HashMap<usize, usize> = HashMap::new();
    for tp in &plan.tables {
        let table = &schema.tables[tp.table];
        let mut parents: Vec<usize> = tp
            .parents
            .iter()
            .filter_map(|p| work_of.get(p).copied())
            .collect();
        if let Some(g) = tp.group {
            let at = *group_work.entry(g).or_insert_with(|| {
                let group = &plan.groups[g];
                let members: Vec<&TablePlan> = group
                    .tables
                    .iter()
                    .filter_map(|&t| plan.tables.iter().find(|x| x.table == t))
                    .collect();
                let mut outer: Vec<usize> = members
                    .iter()
                    .flat_map(|m| m.parents.iter())
                    .filter_map(|p| work_of.get(p).copied())
                    .collect();
                outer.sort_unstable();
                outer.dedup();
                let (pass, shapes): (Pass, Vec<GroupMember>) = match group.mode {
                    GroupMode::Anchored => (
                        Pass::Anchors,
                        members
                            .iter()
                            .map(|m| {
                                (
                                    load_shape(schema, m, anchors),
                                    anchors.get(&m.table).cloned(),
                                )
                            })
                            .collect(),
                    ),
                    GroupMode::Whole => (
                        Pass::Whole,
                        members
                            .iter()
                            .map(|m| (Shape::new(&schema.tables[m.table], &[]), None))
                            .collect(),
                    ),
                };
                rows.push(Work {
                    shape: shapes[0].0.clone(),
                    pass,
                    parents: outer,
                    done: done(&schema.tables[members[0].table].name, pass),
                    group: shapes,
                    sequential: false,
                    prepared: Vec::new(),
                });
                rows.len() - 1
            });
            parents.push(at);
        }
        work_of.insert(tp.table, rows.len());
        rows.push(Work {
            shape: load_shape(schema, tp, anchors),
            pass: Pass::Insert,
            parents,
            done: done(&table.name, Pass::Insert),
            group: Vec::new(),
            sequential: false,
            prepared: Vec::new(),
        });
    }
    let deferred = plan
        .tables
        .iter()
        .filter(|tp| !tp.deferred.is_empty() || !tp.anchored.is_empty())
        .map(|tp| Work {
            shape: load_shape(schema, tp, anchors),
            pass: Pass::SetDeferred,
            parents: Vec::new(),
            done: done(&schema.tables[tp.table].name, Pass::SetDeferred),
            group: Vec::new(),
            sequential: false,
            prepared: Vec::new(),
        })
        .collect();
    let virtual_tables = plan
        .virtual_tables
        .iter()
        .map(|&i| Work {
            shape: Shape::new(&schema.tables[i], &[]),
            pass: Pass::Insert,
            parents: Vec::new(),
            done: done(&schema.tables[i].name, Pass::Insert),
            group: Vec::new(),
            sequential: false,
            prepared: Vec::new(),
        })
        .collect();
    [rows, deferred, virtual_tables]
}

/// The one request that inserts a group's anchor rows, each pointing at the others' (see
/// `plan`); rows already there are left as they are. `None` when the group has no anchor rows.
pub fn anchor_request(group: &[GroupMember], limits: Limits) -> Option<Request> {
    let mut units = Vec::new();
    for (shape, row) in group {
        if let Some(row) = row {
            let mut packer = InsertPacker::new(shape.clone(), limits);
            packer.push(row, &mut units);
            packer.flush(&mut units);
        }
    }
    (!units.is_empty()).then(|| Request::of(units, 0, true))
}

/// Why a group whose rows must load in one request cannot: it is larger than one may be.
pub fn whole_group_too_large(tables: &[&str]) -> Error {
    let names: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    Error::Refused(format!(
        "tables {} refer to each other through NOT NULL foreign keys whose rows cannot point \
         at a shared anchor for a while, so all their rows must load in one request, and \
         they hold more than {WHOLE_GROUP_BYTES} bytes of SQL",
        names.join(", ")
    ))
}

/// The filter of a pass: the deferred pass reads only rows with a deferred key set (every row
/// when keys are anchored: which differ from their anchor is decided on the client).
pub fn pass_filter(work: &Work) -> String {
    match work.pass {
        Pass::SetDeferred if work.shape.anchored.is_empty() => work
            .shape
            .deferred
            .iter()
            .map(|&p| format!("{} IS NOT NULL", work.shape.columns[p]))
            .collect::<Vec<_>>()
            .join(" OR "),
        _ => String::new(),
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
///
/// `request_bytes` is asked before each request is closed: the SQL bytes a request may carry
/// now (`MIGRATION_REQUEST_BYTES`, lowered for the rest of the run once the API refused a
/// request as too large; see `D1Client::request_bytes`).
pub fn produce(
    config: &Config,
    conn: &rusqlite::Connection,
    work: &Work,
    filter: &str,
    after: Option<Vec<Value>>,
    request_bytes: &dyn Fn() -> usize,
    mut sink: impl FnMut(Produced) -> Result<bool>,
) -> Result<()> {
    match work.pass {
        Pass::Anchors => {
            if let Some(request) = anchor_request(&work.group, config.limits) {
                sink(Produced::Request(request))?;
            }
            return Ok(());
        }
        Pass::Whole => return produce_whole(config, conn, work, sink),
        Pass::Insert | Pass::SetDeferred | Pass::Sync => {}
    }
    let shape = &work.shape;
    let relax = work.pass == Pass::Insert && shape.loads_placeholders();
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
                Pass::Sync | Pass::Anchors | Pass::Whole => {}
            }
        }
        builder.limit_bytes(request_bytes());
        for unit in units.drain(..) {
            if let Some(mut request) = builder.push(unit) {
                request.relax_checks = relax;
                go_on &= sink(Produced::Request(request))?;
            }
        }
        Ok(go_on)
    })?;
    if !go_on {
        return Ok(());
    }
    packer.flush(&mut units);
    builder.limit_bytes(request_bytes());
    for unit in units.drain(..) {
        if let Some(mut request) = builder.push(unit) {
            request.relax_checks = relax;
            sink(Produced::Request(request))?;
        }
    }
    if let Some(mut request) = builder.take() {
        request.relax_checks = relax;
        sink(Produced::Request(request))?;
    }
    Ok(())
}

/// Every row of a group, with its real values, in one request: D1 checks the foreign keys
/// at its end. Refused, naming the tables, when the group is larger than one request may be.
fn produce_whole(
    config: &Config,
    conn: &rusqlite::Connection,
    work: &Work,
    mut sink: impl FnMut(Produced) -> Result<bool>,
) -> Result<()> {
    let mut units: Vec<Unit> = Vec::new();
    let mut bytes = 0usize;
    let names: Vec<&str> = work.group.iter().map(|(s, _)| s.table.as_str()).collect();
    let too_large = || whole_group_too_large(&names);
    for (shape, _) in &work.group {
        let mut packer = InsertPacker::new(shape.clone(), config.limits);
        read_batches(conn, shape, "", config.batch_size, None, |rows| {
            sink(Produced::Read(rows.len() as u64))?;
            for row in &rows {
                let size = row_bytes(row);
                if size > MAX_ROW_BYTES {
                    continue; // reported by the table's own pass
                }
                let at = units.len();
                packer.push(row, &mut units);
                bytes += units[at..].iter().map(Unit::bytes).sum::<usize>();
                if bytes > WHOLE_GROUP_BYTES {
                    return Err(too_large());
                }
            }
            Ok(true)
        })?;
        let at = units.len();
        packer.flush(&mut units);
        bytes += units[at..].iter().map(Unit::bytes).sum::<usize>();
        if bytes > WHOLE_GROUP_BYTES {
            return Err(too_large());
        }
    }
    if !units.is_empty() {
        sink(Produced::Request(Request::of(units, 0, false)))?;
    }
    Ok(())
}
