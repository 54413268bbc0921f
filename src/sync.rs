//! Sync (`MIGRATION_MODE=sync`): brings the target level with the source, writing only what
//! differs, in either direction.
//!
//! The pipeline is the copy's with another middle and other ends: discover both sides (`sides`),
//! plan the order (`plan`), find the differences (`diff`, full validation's page walk) instead of
//! reading every row, pack them (`pack`: inserts, updates with large values in pieces, deletes),
//! and hand them to a sink: D1's (`load`, the copy's senders, as a `Sync` pass) or a SQLite
//! transaction. A dry run stops after the differences and lists them.
//!
//! Order keeps D1's foreign keys true at the end of every request: inserts and updates go
//! parents first, deletes children first, after them. Keys in a cycle are written as the copy
//! loads them (`plan`, `produce`): nullable ones NULL, NOT NULL ones at their group's anchor
//! rows (sent first in one request), each set by a later pass; a group that cannot share
//! anchors writes in one request, and a group's deletes go in one request. Triggers on the target do not fire for these writes: on D1 they are
//! dropped before and created again after (what was dropped is recorded in
//! `MIGRATION_STATE_DIR/sync-<migration>.json` first, so a run killed in between creates them on its rerun);
//! on SQLite they are dropped and created again inside the one transaction that writes. Every
//! statement is idempotent and a rerun finds what is left, so a killed sync converges.
//!
//! It ends with a validation of every row: the rows found equal were compared by the difference
//! engine itself and not written; the rows written are read from both sides and compared again.

use std::collections::{HashMap, HashSet};

use crate::config::{Config, Direction};
use crate::d1::D1Client;
use crate::diff::{diff_table, TableChanges, TableDiff};
use crate::discover::{Schema, SchemaObject, Table, TableKind};
use crate::error::{Error, Result};
use crate::load::{run_work, Loader};
use crate::log;
use crate::pack::{
    deferred_update, delete_units, update_unit, update_units, InsertPacker, Limits, Request,
    RequestBuilder, Shape, Unit,
};
use crate::plan::{plan, GroupMode, Plan};
use crate::produce::{
    anchor_request, load_shape, read_anchors, whole_group_too_large, Anchors, GroupMember, Pass,
    Work, WHOLE_GROUP_BYTES,
};
use crate::progress::Progress;
use crate::report::{Report, SyncReport, TableStats};
use crate::send::Rejects;
use crate::sides::{options, Sides};
use crate::source::{open_read_only, to_sql};
use crate::state::{Fingerprint, State};
use crate::target::{copy_sequence, resume_d1_triggers, suspend_d1_triggers};
use crate::validate::{validate_rechecked, Options, Recheck};
use crate::value::{quote_ident, Value};

/// One table of the sync, in write order.
struct Item<'s> {
    table: &'s Table,
    /// Index into `Schema::tables`.
    index: usize,
    /// The write shape, as the copy loads it: nullable cyclic keys NULL, NOT NULL ones at their
    /// group's anchor rows (forward), each set by the keys pass.
    shape: Shape,
    /// Positions in the item list of the tables it references.
    parents: Vec<usize>,
    sequential: bool,
    /// Index into `Plan::groups` of its group bound by NOT NULL cycles, if any.
    group: Option<usize>,
}

/// Runs a sync, filling `report`.
pub fn sync(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let sides = Sides::open(config, client)?;
    report.set_skipped(&sides.source_schema.skipped);
    let schema = &sides.source_schema;
    check_targets(schema, &sides.target_schema, sides.target().label())?;
    let plan = plan(schema);
    // Forward, NOT NULL keys in a cycle are written pointing at anchor rows, as the copy
    // writes them (see `plan`); backward, one transaction with foreign keys off needs none.
    let anchors = match config.direction {
        Direction::SqliteToD1 => {
            read_anchors(&open_read_only(&config.sqlite_path)?, schema, &plan, |s| {
                s.read_from = sides.sqlite.read_from(&s.table)
            })?
        }
        Direction::D1ToSqlite => Anchors::new(),
    };
    let items = order(schema, &plan, &anchors);
    let options = options(config, true);
    let diffs = diff_all(&sides, &items, options, config.parallel_tables)?;

    let delete = config.sync_delete;
    let mut summary = SyncReport {
        delete,
        ..SyncReport::default()
    };
    for (item, diff) in items.iter().zip(&diffs) {
        summary.tables.push(TableChanges::of(diff, &item.shape));
        report.tables.push(TableStats {
            table: item.table.name.clone(),
            rows_read: diff.compared,
            ..TableStats::default()
        });
    }
    let pending: u64 = diffs.iter().map(|d| d.deletes.len() as u64).sum();
    if !delete {
        summary.deletes_pending = pending;
    }
    let sequence_differs = sequence_differs(schema, &sides.target_schema);
    report.sync = Some(summary);
    if config.dry_run {
        return Ok(());
    }

    let suspended = triggers_on(&sides.target_schema, &items);
    let writes = diffs.iter().any(|d| {
        !d.inserts.is_empty() || !d.updates.is_empty() || (delete && !d.deletes.is_empty())
    });
    // The migration's lock, in both directions: no copy or other sync of the same source and
    // database writes while this one does.
    let state = State::open_kind(&config.state_dir, "sync", fingerprint(config))?;
    match config.direction {
        Direction::SqliteToD1 => {
            if writes || sequence_differs {
                report.take_bookmark(client);
            }
            let on_tables: Vec<(String, String)> = suspended
                .iter()
                .map(|t| (t.name.clone(), t.sql.clone()))
                .collect();
            let dropped = suspend_d1_triggers(client, &state, &on_tables, writes)?;
            // The triggers are created again whatever the writes did: a failed write must not
            // leave the live database without them until a rerun.
            let written = if writes {
                let plan = (&plan, &anchors);
                write_d1(
                    config, client, progress, &state, plan, &items, &diffs, report,
                )
            } else {
                Ok(())
            };
            let written = written.and_then(|()| {
                if sequence_differs {
                    copy_sequence(client, schema)
                } else {
                    Ok(())
                }
            });
            let resumed = resume_d1_triggers(client, &state, &dropped);
            if let Some(s) = report.sync.as_mut() {
                s.triggers_suspended = dropped.into_iter().map(|(n, _)| n).collect();
            }
            if let (Err(_), Err(e)) = (&written, &resumed) {
                log::warn(&e.to_string());
            }
            written?;
            resumed?;
        }
        Direction::D1ToSqlite => {
            if writes || sequence_differs {
                write_sqlite(config, schema, &suspended, &items, &diffs, sequence_differs)?;
                if let Some(s) = report.sync.as_mut() {
                    s.triggers_suspended = suspended.iter().map(|t| t.name.clone()).collect();
                }
            }
        }
    }
    if let Some(s) = report.sync.as_mut() {
        s.sequence_updated = sequence_differs;
    }
    for (stats, diff) in report.tables.iter_mut().zip(&diffs) {
        stats.inserted = diff.inserts.len() as u64;
        stats.updated = diff.updates.len() as u64;
        stats.deleted = if delete { diff.deletes.len() as u64 } else { 0 };
        if config.direction == Direction::D1ToSqlite {
            stats.rows_written = stats.inserted + stats.updated + stats.deleted;
        }
    }
    if pending > 0 && !delete {
        log::warn(&format!(
            "{pending} rows exist only on the {} and were left there; MIGRATION_SYNC_DELETE=true deletes them",
            sides.target().label()
        ));
    }

    let rechecks: HashMap<String, Recheck> = diffs
        .iter()
        .map(|d| (d.table.clone(), d.recheck.clone()))
        .collect();
    let validation = validate_rechecked(
        sides.source(),
        sides.target(),
        schema,
        &sides.target_schema,
        options,
        config.parallel_tables,
        &rechecks,
    )?;
    let verdict = validation.verdict();
    report.validation = Some(validation);
    verdict
}

/// Every table must be on the target with the same columns: a sync writes rows, not schema.
fn check_targets(schema: &Schema, target: &Schema, label: &str) -> Result<()> {
    let mut problems = Vec::new();
    for t in &schema.tables {
        let names = |t: &Table| -> Vec<String> {
            t.columns.iter().map(|c| c.name.to_lowercase()).collect()
        };
        match target.table(&t.name) {
            None => problems.push(format!("table {:?}: the {label} has no such table", t.name)),
            Some(other) if names(other) != names(t) => problems.push(format!(
                "table {:?}: the {label} has other columns ({:?}, source {:?})",
                t.name,
                names(other),
                names(t)
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "a sync writes rows, not tables; copy these first (MIGRATION_MODE=migrate), nothing was written:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// Ordinary tables in load order (parents first), then virtual tables.
fn order<'s>(schema: &'s Schema, plan: &Plan, anchors: &Anchors) -> Vec<Item<'s>> {
    let position: HashMap<usize, usize> = plan
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.table, i))
        .collect();
    let mut items: Vec<Item> = plan
        .tables
        .iter()
        .map(|tp| Item {
            table: &schema.tables[tp.table],
            index: tp.table,
            shape: load_shape(schema, tp, anchors),
            parents: tp.parents.iter().map(|p| position[p]).collect(),
            sequential: tp.sequential,
            group: tp.group,
        })
        .collect();
    items.extend(plan.virtual_tables.iter().map(|&i| Item {
        table: &schema.tables[i],
        index: i,
        shape: Shape::new(&schema.tables[i], &[]),
        parents: Vec::new(),
        sequential: false,
        group: None,
    }));
    items
}

/// The differences of every table, `parallel` tables at once.
fn diff_all(
    sides: &Sides,
    items: &[Item],
    options: Options,
    parallel: usize,
) -> Result<Vec<TableDiff>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..items.len() {
        tx.send(i).expect("queue");
    }
    drop(tx);
    let out = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            let (rx, out) = (rx.clone(), &out);
            scope.spawn(move || {
                for i in rx {
                    let item = &items[i];
                    let shape = Shape::new(item.table, &[]);
                    let result = sides
                        .source()
                        .count(&item.table.name)
                        .and_then(|rows| {
                            diff_table(
                                sides.source(),
                                sides.target(),
                                item.table,
                                &shape,
                                options,
                                rows,
                            )
                        })
                        .map_err(|e| e.in_table(&item.table.name));
                    out.lock().expect("diffs").push((i, result));
                }
            });
        }
    });
    let mut out = out.into_inner().expect("diffs");
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

fn sequence_differs(source: &Schema, target: &Schema) -> bool {
    let rows = |s: &Schema| -> Vec<(String, Vec<u8>)> {
        let mut rows: Vec<(String, Vec<u8>)> = s
            .sequence
            .iter()
            .filter(|r| source.table(&r.name).is_some())
            .map(|r| {
                (
                    r.name.to_lowercase(),
                    crate::validate::canonical(std::slice::from_ref(&r.seq)),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    rows(source) != rows(target)
}

/// The target's triggers on the tables a sync writes.
fn triggers_on<'s>(target: &'s Schema, items: &[Item]) -> Vec<&'s SchemaObject> {
    let tables: HashSet<String> = items.iter().map(|i| i.table.name.to_lowercase()).collect();
    target
        .objects
        .iter()
        .filter(|o| o.kind == "trigger" && tables.contains(&o.table.to_lowercase()))
        .collect()
}

/// What a sync's state belongs to; only the migration's identity (source, API, account,
/// database) must match on a rerun, so the triggers it recorded survive another selection.
fn fingerprint(config: &Config) -> Fingerprint {
    Fingerprint::of(config, "sync".into())
}

/// FTS5 tables a sync changed: their index is rebuilt from their rows after the writes, so that
/// it is laid out as a copy's is (rows deleted and inserted one by one leave other segments).
/// Contentless tables (`content=''`) hold no rows to rebuild from.
fn rebuilds(items: &[Item], diffs: &[TableDiff], delete: bool) -> Vec<String> {
    items
        .iter()
        .zip(diffs)
        .filter(|(item, d)| {
            let fts5 = matches!(&item.table.kind, TableKind::Virtual { module } if module.eq_ignore_ascii_case("fts5"));
            let compact: String = item.table.sql.split_whitespace().collect::<String>().to_lowercase();
            let contentless = compact.contains("content=''") || compact.contains("content=\"\"");
            let changed = !d.inserts.is_empty() || !d.updates.is_empty() || (delete && !d.deletes.is_empty());
            fts5 && !contentless && changed
        })
        .map(|(item, _)| {
            let t = quote_ident(&item.table.name);
            format!("INSERT INTO {t}({t}) VALUES('rebuild')")
        })
        .collect()
}

/// Requests grouped from units.
fn requests(units: Vec<Unit>, limits: Limits) -> Vec<Request> {
    let mut builder = RequestBuilder::new(limits);
    let mut out: Vec<Request> = units.into_iter().filter_map(|u| builder.push(u)).collect();
    out.extend(builder.take());
    out
}

/// Positions of a shape that the keys pass sets: deferred and anchored foreign keys.
fn set_later(shape: &Shape) -> impl Fn(&usize) -> bool + '_ {
    |c| shape.deferred.contains(c) || shape.anchored.iter().any(|(p, _)| p == c)
}

/// Inserts (cyclic keys NULL or at their anchors) and updates (all but cyclic keys) of one
/// table.
fn upsert_requests(shape: &Shape, diff: &TableDiff, limits: Limits) -> Vec<Request> {
    let later = set_later(shape);
    let mut units = Vec::new();
    let mut packer = InsertPacker::new(shape.clone(), limits);
    for row in &diff.inserts {
        packer.push(row, &mut units);
    }
    packer.flush(&mut units);
    let updates: Vec<(&[Value], Vec<usize>)> = diff
        .updates
        .iter()
        .map(|u| {
            let columns = u.columns.iter().copied().filter(|c| !later(c)).collect();
            (u.row.as_slice(), columns)
        })
        .collect();
    units.extend(update_units(shape, &updates, limits));
    let mut out = requests(units, limits);
    // A placeholder may break a CHECK until the keys pass, as in the copy.
    for r in &mut out {
        r.relax_checks = shape.loads_placeholders();
    }
    out
}

/// The cyclic keys of inserted and updated rows, set once every table's rows are there.
fn deferred_requests(shape: &Shape, diff: &TableDiff, limits: Limits) -> Vec<Request> {
    if !shape.loads_placeholders() {
        return Vec::new();
    }
    let later = set_later(shape);
    let mut units: Vec<Unit> = diff
        .inserts
        .iter()
        .filter_map(|r| deferred_update(shape, r))
        .collect();
    for u in &diff.updates {
        let columns: Vec<usize> = u.columns.iter().copied().filter(|c| later(c)).collect();
        units.extend(update_unit(shape, &u.row, &columns, limits.statement_bytes));
    }
    for u in &mut units {
        u.rows = 0;
    }
    requests(units, limits)
}

/// Writes the differences to D1 through the copy's sink: inserts and updates parents first
/// (a group bound by NOT NULL cycles after its anchor rows, or all in one request), cyclic
/// keys, then deletes children first.
#[allow(clippy::too_many_arguments)]
fn write_d1(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    state: &State,
    (plan, anchors): (&Plan, &Anchors),
    items: &[Item],
    diffs: &[TableDiff],
    report: &mut Report,
) -> Result<()> {
    let limits = config.limits;
    let work = |pass_requests: Vec<Vec<Request>>, parents: &dyn Fn(usize) -> Vec<usize>| {
        pass_requests
            .into_iter()
            .enumerate()
            .map(|(i, prepared)| Work {
                shape: items[i].shape.clone(),
                pass: Pass::Sync,
                sequential: items[i].sequential,
                parents: parents(i),
                done: prepared.is_empty(),
                prepared,
                group: Vec::new(),
            })
            .collect::<Vec<Work>>()
    };
    let parents = |i: usize| items[i].parents.clone();
    let children = |i: usize| {
        (0..items.len())
            .filter(|&c| c != i && items[c].parents.contains(&i))
            .collect()
    };
    let mut upserts = work(
        items
            .iter()
            .zip(diffs)
            .map(|(it, d)| upsert_requests(&it.shape, d, limits))
            .collect(),
        &parents,
    );
    group_upserts(plan, anchors, items, limits, &mut upserts)?;
    let deferred = work(
        items
            .iter()
            .zip(diffs)
            .map(|(it, d)| deferred_requests(&it.shape, d, limits))
            .collect(),
        &|_| Vec::new(),
    );
    let mut deletes = work(
        items
            .iter()
            .zip(diffs)
            .map(|(it, d)| {
                if config.sync_delete {
                    requests(delete_units(&it.shape, &d.deletes, limits), limits)
                } else {
                    Vec::new()
                }
            })
            .collect(),
        &children,
    );
    group_deletes(plan, items, &mut deletes)?;
    let rejects = Rejects::new(config.reject_file.clone());
    let ctx = Loader {
        config,
        client,
        progress,
        state,
        rejects: &rejects,
        rows: HashMap::new(),
    };
    let mut failed = run_work(&ctx, &upserts, &mut report.tables)?;
    failed.extend(run_work(&ctx, &deferred, &mut report.tables)?);
    failed.extend(run_work(&ctx, &deletes, &mut report.tables)?);
    let rebuild = rebuilds(items, diffs, config.sync_delete);
    if !rebuild.is_empty() {
        client.execute(&rebuild).map_err(|f| {
            Error::Refused(format!("rebuilding full-text indexes on D1: {}", f.error))
        })?;
    }
    report.rejected_rows = rejects.count();
    if rejects.count() > 0 {
        report.reject_file = Some(config.reject_file.display().to_string());
    }
    if !failed.is_empty() {
        return Err(Error::TablesFailed(failed));
    }
    Ok(())
}

/// Orders the upserts of each group bound by NOT NULL cycles as the copy loads it: an anchored
/// group's anchor rows first, in one request (rows already on D1 are left as they are), after
/// the group's other parents and before any of its tables; a group that cannot share anchors
/// writes all its tables' upserts in one request.
fn group_upserts(
    plan: &Plan,
    anchors: &Anchors,
    items: &[Item],
    limits: Limits,
    upserts: &mut Vec<Work>,
) -> Result<()> {
    for (g, group) in plan.groups.iter().enumerate() {
        let members: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].group == Some(g))
            .collect();
        debug_assert_eq!(members.len(), group.tables.len());
        if members.iter().all(|&m| upserts[m].prepared.is_empty()) {
            continue;
        }
        let outer = outside(&members, upserts);
        match group.mode {
            GroupMode::Anchored => {
                let rows: Vec<GroupMember> = members
                    .iter()
                    .map(|&m| {
                        (
                            items[m].shape.clone(),
                            anchors.get(&items[m].index).cloned(),
                        )
                    })
                    .collect();
                let Some(request) = anchor_request(&rows, limits) else {
                    continue;
                };
                let at = upserts.len();
                upserts.push(Work {
                    shape: items[members[0]].shape.clone(),
                    pass: Pass::Sync,
                    sequential: false,
                    parents: outer,
                    done: false,
                    prepared: vec![request],
                    group: Vec::new(),
                });
                for &m in &members {
                    upserts[m].parents.push(at);
                }
            }
            GroupMode::Whole => one_request(&members, items, upserts)?,
        }
    }
    Ok(())
}

/// What the works of a group's `members` wait for outside the group.
fn outside(members: &[usize], works: &[Work]) -> Vec<usize> {
    let mut outer: Vec<usize> = members
        .iter()
        .flat_map(|&m| works[m].parents.iter().copied())
        .filter(|p| !members.contains(p))
        .collect();
    outer.sort_unstable();
    outer.dedup();
    outer
}

/// The tables of each group bound by NOT NULL cycles delete their rows in one request: rows
/// that refer to each other go together, whichever table holds them.
fn group_deletes(plan: &Plan, items: &[Item], deletes: &mut [Work]) -> Result<()> {
    for g in 0..plan.groups.len() {
        let members: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].group == Some(g))
            .collect();
        if members.iter().any(|&m| !deletes[m].prepared.is_empty()) {
            one_request(&members, items, deletes)?;
        }
    }
    Ok(())
}

/// Puts the requests of `members` (one group's tables) into one request, sent by the first
/// after every table the members wait for; the others wait for it. Refused, naming the tables,
/// when that request would be larger than a group's may be.
fn one_request(members: &[usize], items: &[Item], works: &mut [Work]) -> Result<()> {
    let outer = outside(members, works);
    let mut whole = Request::default();
    for &m in members {
        for r in std::mem::take(&mut works[m].prepared) {
            whole.statements.extend(r.statements);
            whole.rows += r.rows;
            whole.large_rows += r.large_rows;
            whole.bytes += r.bytes;
        }
        works[m].done = false;
    }
    if whole.bytes > WHOLE_GROUP_BYTES {
        let names: Vec<&str> = members
            .iter()
            .map(|&m| items[m].table.name.as_str())
            .collect();
        return Err(whole_group_too_large(&names));
    }
    let first = members[0];
    works[first].prepared = vec![whole];
    works[first].parents = outer;
    for &m in &members[1..] {
        works[m].parents = vec![first];
    }
    Ok(())
}

/// Writes the differences to the SQLite file in one transaction, its triggers dropped and
/// created again inside it: a sync killed anywhere leaves the file as it was.
fn write_sqlite(
    config: &Config,
    schema: &Schema,
    triggers: &[&SchemaObject],
    items: &[Item],
    diffs: &[TableDiff],
    sequence: bool,
) -> Result<()> {
    let mut conn = rusqlite::Connection::open(&config.sqlite_path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // Off outside the transaction: no ON DELETE action of the file's own runs for a sync's writes.
    conn.pragma_update(None, "foreign_keys", false)?;
    let tx = conn.transaction()?;
    for t in triggers {
        tx.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&t.name)))?;
    }
    for (item, diff) in items.iter().zip(diffs) {
        let shape = Shape::new(item.table, &[]);
        let table = quote_ident(&shape.table);
        let key_where: Vec<String> = shape.key_exprs.iter().map(|k| format!("{k} = ?")).collect();
        let key_where = key_where.join(" AND ");
        let at = |e: rusqlite::Error| Error::from(e).in_table(&shape.table);
        if !diff.inserts.is_empty() {
            let verb = if shape.is_virtual {
                "INSERT OR REPLACE"
            } else {
                "INSERT"
            };
            let marks = vec!["?"; shape.columns.len()].join(", ");
            let mut stmt = tx
                .prepare(&format!(
                    "{verb} INTO {table} ({}) VALUES ({marks})",
                    shape.columns.join(", ")
                ))
                .map_err(at)?;
            for row in &diff.inserts {
                stmt.execute(rusqlite::params_from_iter(row.iter().map(to_sql)))
                    .map_err(at)?;
            }
        }
        for u in &diff.updates {
            let sets: Vec<String> = u
                .columns
                .iter()
                .map(|&c| format!("{} = ?", shape.columns[c]))
                .collect();
            let mut stmt = tx
                .prepare_cached(&format!(
                    "UPDATE {table} SET {} WHERE {key_where}",
                    sets.join(", ")
                ))
                .map_err(at)?;
            let values = u
                .columns
                .iter()
                .map(|&c| &u.row[c])
                .chain(shape.key_positions.iter().map(|&p| &u.row[p]))
                .map(to_sql);
            stmt.execute(rusqlite::params_from_iter(values))
                .map_err(at)?;
        }
    }
    if sequence {
        let names: Vec<String> = schema
            .sequence
            .iter()
            .map(|s| crate::value::quote_text(&s.name))
            .collect();
        if !names.is_empty() {
            tx.execute_batch(&format!(
                "DELETE FROM sqlite_sequence WHERE name IN ({})",
                names.join(", ")
            ))?;
            // D1's rowids are kept where they are free: a sequence row of a table outside the
            // selection may hold one, and then SQLite numbers the row (one row at a time, so
            // no later rowid is taken; forward, D1's own rows make way instead).
            for s in &schema.sequence {
                tx.execute(
                    "INSERT INTO sqlite_sequence (rowid, name, seq) VALUES \
                     (CASE WHEN EXISTS (SELECT 1 FROM sqlite_sequence WHERE rowid = ?1) THEN NULL ELSE ?1 END, ?2, ?3)",
                    rusqlite::params![s.rowid, s.name, to_sql(&s.seq)],
                )?;
            }
        }
    }
    if config.sync_delete {
        for (item, diff) in items.iter().zip(diffs).rev() {
            if diff.deletes.is_empty() {
                continue;
            }
            let shape = &item.shape;
            let key_where: Vec<String> =
                shape.key_exprs.iter().map(|k| format!("{k} = ?")).collect();
            let mut stmt = tx.prepare(&format!(
                "DELETE FROM {} WHERE {}",
                quote_ident(&shape.table),
                key_where.join(" AND ")
            ))?;
            for key in &diff.deletes {
                stmt.execute(rusqlite::params_from_iter(key.iter().map(to_sql)))
                    .map_err(|e| Error::from(e).in_table(&shape.table))?;
            }
        }
    }
    for sql in rebuilds(items, diffs, config.sync_delete) {
        tx.execute_batch(&sql)?;
    }
    for t in triggers {
        tx.execute_batch(&t.sql)?;
    }
    tx.commit()?;
    Ok(())
}
