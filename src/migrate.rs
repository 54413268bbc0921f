//! The forward run, wiring the stages together: discover the source, plan the load order, create
//! the tables on D1 (`target`), load the rows (`produce` → `load`), then deferred keys,
//! `sqlite_sequence` and the planner's statistics, virtual tables, and indexes, views and
//! triggers.
//!
//! Every write is idempotent (see `pack`), so a run that stops anywhere can simply be run again.

use std::collections::HashMap;

use crate::compact;
use crate::compat::check_schema;
use crate::config::{Config, Method};
use crate::d1::D1Client;
use crate::discover::{is_d1_internal, Schema, Table};
use crate::error::{Error, Result};
use crate::fit::{fit, Fit, MIGRATIONS_TABLE};
use crate::load::{gates, run_work, run_work_then, Loader, Opening, Tail};
use crate::log;
use crate::plan::plan;
use crate::produce::{group_phase, passes, read_anchors, Pass};
use crate::progress::Progress;
use crate::report::Report;
use crate::send::Rejects;
use crate::source::{count_from, open_read_only};
use crate::state::{Fingerprint, State};
use crate::target::{
    after_data_statements, copy_after_data, create_missing, create_missing_along, d1_triggers_on,
    if_not_exists, missing, missing_parents, ordered_objects, target_objects, Suspended,
};
use crate::transform::source_schema;
use crate::value::quote_ident;

/// Runs the forward migration, filling `report`. Resumes from the checkpoint in
/// `MIGRATION_STATE_DIR` when there is one.
///
/// `validated_after`: a validation follows in this run. A migration whose checkpoint says it is
/// complete then sends nothing here: that validation (D1's catalog, every table's count and
/// sampled rows) proves D1 still holds it, and `run` comes back here (with false) to check D1
/// against the checkpoint, and copy again what it lacks, only when it finds a difference.
pub fn forward(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    report: &mut Report,
    validated_after: bool,
) -> Result<()> {
    let source = open_read_only(config.source_file())?;
    let transformed = source_schema(&source, &config.reshape())?;
    let mut schema = transformed.schema.clone();
    for m in &transformed.mappings {
        log::info(&format!("transform: {}", m.describe()));
    }
    for f in &transformed.fts {
        log::info(&f.finding().message);
    }
    report.set_skipped(&schema.skipped);
    for (_, reason) in schema
        .skipped
        .iter()
        .filter(|(n, _)| n.starts_with("PRAGMA "))
    {
        log::warn(reason);
    }
    // The checkpoint's fingerprint is of the whole selection, whatever D1 already holds.
    let fingerprint = fingerprint(config, &schema);
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
    transformed.check_references(&source)?;
    if validated_after && State::says_complete(&config.state_dir, &fingerprint) {
        // Its lock is taken all the same: a second run of the migration at once is refused.
        let state = State::open(&config.state_dir, fingerprint.clone())?;
        if state.is_complete() {
            log::info(&format!(
                "this migration is already complete (checkpoint {}); validation checks that D1 \
                 still holds it. Remove that folder to run it again from the start.",
                state.path().display()
            ));
            report.already_complete = true;
            return Ok(());
        }
    }

    // Reading the target's catalog first also proves the token, account and database id. A
    // database the run has just created holds nothing. The Time Travel bookmark is asked for
    // beside the catalog, in the same round trip, unless the checkpoint already says there is
    // nothing to do (a database the run created is undone by deleting it: no bookmark).
    let early_bookmark =
        !config.created_database && !State::says_complete(&config.state_dir, &fingerprint);
    let (existing, bookmark) = std::thread::scope(|scope| {
        let bookmark = early_bookmark.then(|| scope.spawn(|| client.bookmark()));
        let existing = if config.created_database {
            Ok(HashMap::new())
        } else {
            target_objects(client)
        };
        (
            existing,
            bookmark.map(|b| b.join().expect("the bookmark thread")),
        )
    });
    let existing = existing?;
    let empty_target = existing
        .keys()
        .all(|name| is_d1_internal(name) || name.starts_with("sqlite_"));
    let orphans = missing_parents(&schema, &existing);
    if !orphans.is_empty() {
        return Err(Error::Refused(format!(
            "D1 enforces foreign keys, and these parents are neither copied nor on D1; nothing was written:\n  {}",
            orphans.join("\n  ")
        )));
    }
    // The schema D1 already has (the application's migrations): compared by structure; what
    // does not fit is refused before anything is written.
    let fit = fit(&source, &schema, &existing, &|t| transformed.read_from(t))?;
    let problems = fit.problems();
    if !problems.is_empty() {
        return Err(Error::Refused(format!(
            "the tables already on D1 do not fit the source; nothing was written:\n  {}",
            problems.join("\n  ")
        )));
    }
    tell_fit(&fit);
    // AUTOINCREMENT finds its sequence row by the table's name exactly as D1 spells it.
    for row in &mut schema.sequence {
        if let Some(name) = fit.d1_name(&row.name) {
            row.name = name.to_string();
        }
    }
    for row in &mut schema.stat1 {
        if let Some(name) = fit.d1_name(&row.tbl) {
            row.tbl = name.to_string();
        }
    }
    let merged = fit.merges(MIGRATIONS_TABLE);
    if merged {
        // wrangler's history already on D1: the source's entries it lacks are added by name
        // below, not copied with their ids.
        schema
            .tables
            .retain(|t| !t.name.eq_ignore_ascii_case(MIGRATIONS_TABLE));
        schema
            .sequence
            .retain(|s| !s.name.eq_ignore_ascii_case(MIGRATIONS_TABLE));
        schema
            .stat1
            .retain(|s| !s.tbl.eq_ignore_ascii_case(MIGRATIONS_TABLE));
    }
    let plan = plan(&schema);
    let state = State::open(&config.state_dir, fingerprint)?;
    check_target(&state, client, &existing)?;
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
    if !config.created_database {
        // A database the run created is undone by deleting it.
        match bookmark {
            Some(taken) => report.record_bookmark(client, taken),
            None => report.take_bookmark(client),
        }
    }
    if merged {
        let added = merge_migrations(client, &source)?;
        if added > 0 {
            log::info(&format!(
                "{MIGRATIONS_TABLE}: {added} applied migrations of the source added by name"
            ));
        }
    }

    let ordinary: Vec<&Table> = plan
        .tables
        .iter()
        .map(|t| &schema.tables[t.table])
        .collect();

    let anchors = read_anchors(&source, &schema, &plan, |s| transformed.adapt(s))?;
    let [mut work, mut deferred, mut fill] = passes(&schema, &plan, &anchors, |table, pass| {
        let t = state.table(table);
        match pass {
            Pass::Insert => t.inserted,
            Pass::SetDeferred => t.deferred_done,
            Pass::Sync => false,
            Pass::Anchors | Pass::Whole => state.phase_done(&group_phase(table)),
        }
    });
    for w in work.iter_mut().chain(&mut deferred).chain(&mut fill) {
        transformed.adapt(&mut w.shape);
        for (shape, _) in &mut w.group {
            transformed.adapt(shape);
        }
    }
    // FTS5 indexes of external content are rebuilt from their content table, not copied.
    let external: Vec<String> = fill
        .iter()
        .filter(|w| {
            schema
                .table(&w.shape.table)
                .is_some_and(|t| t.external_content().is_some())
        })
        .map(|w| w.shape.table.clone())
        .collect();
    fill.retain(|w| !external.contains(&w.shape.table));
    let mut rows = HashMap::new();
    for w in work.iter().chain(&fill).filter(|w| !w.done) {
        rows.insert(
            w.shape.table.clone(),
            count_from(&source, &w.shape.read_from)?,
        );
    }
    progress.set_total(rows.values().sum());
    // A small database into an empty one: tables, rows and objects in as few requests as fit.
    let later_passes = !deferred.is_empty() || !fill.is_empty() || !external.is_empty();
    if compact::eligible(config, empty_target, &state, &work, later_passes) {
        let head: Vec<String> = ordinary.iter().map(|t| if_not_exists(&t.sql)).collect();
        let mut tail = after_data_statements(&schema);
        tail.extend(ordered_objects(&schema).map(|o| if_not_exists(&o.sql)));
        match compact::load(config, client, progress, &state, &work, &rows, head, tail)? {
            compact::Outcome::Loaded(stats) => {
                report.tables = stats;
                report.objects_created.extend(
                    ordinary
                        .iter()
                        .map(|t| t.name.clone())
                        .chain(ordered_objects(&schema).map(|o| o.name.clone())),
                );
                state.set_phase_done("sequence")?;
                state.set_complete()?;
                return Ok(());
            }
            compact::Outcome::Refused(why) => {
                log::info(&format!(
                    "D1 refused a request of the compact load ({why}); loading table by table"
                ));
                for w in &mut work {
                    w.done = state.table(&w.shape.table).inserted;
                }
            }
        }
    }
    // Triggers D1 already has on the tables the run writes (the application's own, or the
    // source's from an earlier run of this migration) would fire on rows that already hold
    // their effects: they are dropped for the writes and created again after them.
    let written: Vec<&str> = ordinary.iter().map(|t| t.name.as_str()).collect();
    let suspended = Suspended::new(
        client,
        &state,
        &d1_triggers_on(client, &existing, &written)?,
    )?;
    let tables = || {
        ordinary
            .iter()
            .map(|t| ("table", t.name.as_str(), t.sql.as_str()))
    };
    let ctx = Loader {
        config,
        client,
        progress,
        state: &state,
        rejects: &rejects,
        rows,
    };
    let create_alone = || create_missing(client, tables(), &existing).map(drop);
    // The small tables' request opens the load: it carries the tables' CREATE statements at
    // its head, and the other tables' requests go right behind it.
    let mut small = None;
    if config.method == Method::Query {
        let (names, head): (Vec<&str>, Vec<String>) =
            missing(tables(), &existing).into_iter().unzip();
        small = ctx.small_tables(&schema, &mut work, &deferred, &head)?;
        if small.is_none() {
            create_alone()?;
        }
        report
            .objects_created
            .extend(names.into_iter().map(str::to_string));
    } else {
        report
            .objects_created
            .extend(create_missing(client, tables(), &existing)?);
    }
    // The sequence and the planner's statistics go along with the next DDL after the data, in
    // its request.
    let mut sequence = if state.phase_done("sequence") {
        Vec::new()
    } else {
        after_data_statements(&schema)
    };
    // When nothing but that DDL follows the rows (no keys set after them, no virtual table,
    // none of D1's triggers to create again), it rides at the end of the last data request.
    let objects: Vec<(&str, String)> = missing(
        ordered_objects(&schema).map(|o| (o.kind.as_str(), o.name.as_str(), o.sql.as_str())),
        &existing,
    );
    let last = deferred
        .iter()
        .enumerate()
        .all(|(d, w)| w.done || small.as_ref().is_some_and(|s| s.carries_keys(d)))
        && plan.virtual_tables.is_empty()
        && fill.is_empty()
        && suspended.is_empty();
    // Tables this run creates (none of D1's before it, none with an earlier attempt's rows)
    // hold only the rows of this load's requests: a request's last row on D1 proves it committed,
    // and the tail goes guarded by them, without waiting for their answers.
    let empty = work.iter().filter(|w| !w.done).all(|w| {
        !existing.contains_key(&w.shape.table.to_lowercase())
            && state.resume_after(&w.shape.table).is_none()
    });
    let tail = Tail::new(
        sequence
            .iter()
            .cloned()
            .chain(objects.iter().map(|(_, sql)| sql.clone()))
            .collect(),
    )
    .guarded(empty);
    // A large child starts before its large parent is finished, each of its requests once the
    // parent's rows it refers to are on their way to D1.
    let gates = gates(&schema, &work);
    let mut opened = None;
    let opening = small.as_ref().map(|small| {
        let (ctx, opened) = (&ctx, &mut opened);
        Opening::new(move |on_its_way| {
            let o = ctx.send_small_tables(small, create_alone, on_its_way)?;
            let planned = !o.alone;
            *opened = Some(o);
            Ok(planned)
        })
    });
    let loaded = run_work_then(
        &ctx,
        &work,
        &mut report.tables,
        last.then_some(&tail),
        &gates,
        opening,
    );
    let mut failed = Vec::new();
    if let Some(o) = opened {
        // The small tables first in the report, as they went.
        report.tables.splice(0..0, o.stats);
        for d in o.keys {
            deferred[d].done = true;
        }
        failed.extend(o.failed);
    }
    failed.extend(loaded?);
    failed.extend(run_work(&ctx, &deferred, &mut report.tables)?);
    if tail.sent() {
        report
            .objects_created
            .extend(objects.iter().map(|(name, _)| name.to_string()));
        if !state.phase_done("sequence") {
            state.set_phase_done("sequence")?;
        }
        sequence.clear();
    }

    let virtual_tables: Vec<&Table> = plan
        .virtual_tables
        .iter()
        .map(|&i| &schema.tables[i])
        .collect();
    report.objects_created.extend(create_missing_along(
        client,
        &mut sequence,
        virtual_tables
            .iter()
            .map(|t| ("table", t.name.as_str(), t.sql.as_str())),
        &existing,
    )?);
    // An FTS5 index filled over several requests (D1 transactions) holds several segments where
    // the source, filled at once, holds one: rebuilt, it is the same as the source's.
    let resumed: Vec<String> = fill
        .iter()
        .filter(|w| !w.done && state.resume_after(&w.shape.table).is_some())
        .map(|w| w.shape.table.clone())
        .collect();
    failed.extend(run_work(&ctx, &fill, &mut report.tables)?);
    let mut rebuilt = external.clone();
    rebuilt.extend(fill.iter().filter_map(|w| {
        let name = &w.shape.table;
        let table = schema.table(name)?;
        let requests = report
            .tables
            .iter()
            .find(|s| &s.table == name)
            .map_or(0, |s| s.requests);
        (table.fts5_with_content() && (requests > 1 || resumed.contains(name)))
            .then(|| name.clone())
    }));
    for name in &rebuilt {
        let phase = format!("rebuild {name}");
        if !state.phase_done(&phase) {
            let q = quote_ident(name);
            client
                .execute(&[format!("INSERT INTO {q}({q}) VALUES ('rebuild')")])
                .map_err(|f| Error::Refused(format!("rebuilding {name:?} on D1: {}", f.error)))?;
            state.set_phase_done(&phase)?;
        }
    }

    let resumed = suspended.resume()?;
    if !resumed.is_empty() {
        log::info(&format!(
            "D1's triggers {} were dropped for the copy and created again after it",
            resumed.join(", ")
        ));
    }
    if !tail.sent() {
        report.objects_created.extend(create_missing_along(
            client,
            &mut sequence,
            ordered_objects(&schema).map(|o| (o.kind.as_str(), o.name.as_str(), o.sql.as_str())),
            &existing,
        )?);
    }
    if !state.phase_done("sequence") {
        if !sequence.is_empty() {
            copy_after_data(client, &schema)?;
        }
        state.set_phase_done("sequence")?;
    }
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

/// Says how each table the run fills fits the one D1 already has, and what of D1's is kept.
fn tell_fit(fit: &Fit) {
    for t in fit.tables.iter().filter(|t| t.action != "create") {
        let mut line = if t.action == "fill" {
            format!("{}: filled as it exists on D1", t.table)
        } else {
            format!(
                "{}: already on D1; the source's applied migrations it lacks are added by name",
                t.table
            )
        };
        if !t.mapping.is_empty() {
            line.push_str(&format!("; columns by name: {}", t.mapping.join(", ")));
        }
        log::info(&line);
        for note in &t.notes {
            log::info(&format!("{}: {note}", t.table));
        }
    }
    for o in &fit.objects {
        if let Some(message) = o.message.as_ref().filter(|_| o.action == "differs") {
            log::warn(message);
        }
    }
}

/// Adds the source's rows of wrangler's `d1_migrations` that D1's lacks, by name (D1 numbers
/// them); rows D1 has are left alone. Returns how many were added.
fn merge_migrations(client: &D1Client, source: &rusqlite::Connection) -> Result<u64> {
    let table = quote_ident(MIGRATIONS_TABLE);
    let have: std::collections::HashSet<String> = client
        .query(&format!("SELECT name FROM {table}"))?
        .rows
        .iter()
        .filter_map(|r| r.first().and_then(|v| v.as_str()).map(str::to_string))
        .collect();
    let columns: Vec<String> = {
        let mut stmt = source.prepare(&format!(
            "SELECT name FROM pragma_table_info({}) WHERE pk = 0",
            crate::value::quote_text(MIGRATIONS_TABLE)
        ))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    if !columns.iter().any(|c| c.eq_ignore_ascii_case("name")) {
        return Ok(0);
    }
    let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let mut stmt = source.prepare(&format!(
        "SELECT name, {} FROM {table} ORDER BY rowid",
        list.join(", ")
    ))?;
    let mut inserts = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let name: Option<String> = row.get(0)?;
        if name.as_ref().is_some_and(|n| have.contains(n)) {
            continue;
        }
        let values: Vec<String> = (0..columns.len())
            .map(|i| {
                row.get_ref(i + 1)
                    .map(|v| crate::source::value(v).literal())
            })
            .collect::<rusqlite::Result<_>>()?;
        inserts.push(format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            list.join(", "),
            values.join(", ")
        ));
    }
    for chunk in inserts.chunks(50) {
        client.execute(chunk).map_err(|f| f.error)?;
    }
    Ok(inserts.len() as u64)
}

/// Trusts the checkpoint only as far as the target still holds what it recorded: a table that is
/// gone from D1, or holds fewer rows than the checkpoint covers (a database deleted and created
/// again under the same id), is copied again from its start, with a line saying why.
fn check_target(
    state: &State,
    client: &D1Client,
    existing: &HashMap<String, (String, String)>,
) -> Result<()> {
    let recorded = state.recorded();
    let present: Vec<&(String, u64)> = recorded
        .iter()
        .filter(|(name, _)| existing.contains_key(&name.to_lowercase()))
        .collect();
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for chunk in present.chunks(50) {
        let sqls: Vec<String> = chunk
            .iter()
            .map(|(name, _)| format!("SELECT count(*) FROM {}", quote_ident(name)))
            .collect();
        for ((name, _), result) in chunk.iter().zip(client.read(&sqls)?) {
            let n = result
                .rows
                .first()
                .and_then(|row| row.first())
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            counts.insert(name.as_str(), n);
        }
    }
    for (name, rows) in &recorded {
        let why = match counts.get(name.as_str()) {
            None => format!("D1 has no table {name:?}"),
            Some(&held) if held < *rows => format!(
                "D1's table {name:?} holds {held} rows, fewer than the {rows} the checkpoint recorded"
            ),
            Some(_) => continue,
        };
        log::warn(&format!(
            "{name}: copied again from its start: {why} (checkpoint {})",
            state.path().display()
        ));
        state.forget(name)?;
    }
    Ok(())
}

/// What a checkpoint must match: the same source (and schema), target and table selection.
fn fingerprint(config: &Config, schema: &Schema) -> Fingerprint {
    let mut ddl = blake3::Hasher::new();
    for t in &schema.tables {
        ddl.update(t.sql.as_bytes());
    }
    Fingerprint::of(config, ddl.finalize().to_hex().to_string())
}
