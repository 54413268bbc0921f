//! The dry run: the whole forward pipeline (discovery, reading, transforming, packing) short of
//! any write, then a plan and a D1-compatibility report.
//!
//! Requests are produced by the same `produce::produce` the real run sends, so the predicted
//! statements and requests per table are the real run's. The target is only read (its catalog),
//! to say whether tables of the same names exist and match.

use serde::Serialize;

use crate::bundle::choose;
use crate::compat::{check_schema, Finding, MAX_DATABASE_BYTES};
use crate::config::{BadRow, Config, Method};
use crate::d1::D1Client;
use crate::discover::Schema;
use crate::error::Result;
use crate::fit::{fit, Fit};
use crate::plan::plan;
use crate::produce::{pass_filter, passes, produce, read_anchors, Pass, Produced, Work};
use crate::source::open_read_only;
use crate::target::{
    after_data_statements, d1_triggers_on, if_not_exists, missing_parents, ordered_objects,
    target_objects,
};
use crate::transform::{source_schema, TableMapping, Transformed};
use crate::value::quote_ident;

/// D1's database size limit on the Workers Free plan.
const FREE_PLAN_DATABASE_BYTES: u64 = 500_000_000;

/// Cloudflare's API allows this many requests per token in five minutes.
const RATE_LIMIT_PER_5_MIN: f64 = 1200.0;

#[derive(Debug, Clone, Default, Serialize)]
pub struct PlannedTable {
    pub table: String,
    /// Why the table loads where it does.
    pub order_reason: String,
    pub rows: u64,
    pub bytes: u64,
    pub statements: u64,
    pub requests: u64,
    /// What the run does on D1: "create" the table, "fill" it as it exists there, or "merge by
    /// name" (wrangler's `d1_migrations`).
    pub on_d1: String,
    /// How source columns map to D1's, where it is not one-to-one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub column_mapping: Vec<String>,
    /// Rows over D1's row-size limit, left out of `rows`, `bytes` and the requests (each is a
    /// finding naming its key).
    pub rows_over_limit: u64,
    /// Bytes and statements of its last request (what the statements after the data may ride
    /// with).
    #[serde(skip)]
    last_request: (usize, usize),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DryRun {
    /// Tables in load order (virtual tables last).
    pub tables: Vec<PlannedTable>,
    /// Indexes, views and triggers created after the data, and FTS5 tables filled.
    pub objects_after_data: Vec<String>,
    /// Every request the real run would send: creating tables, data, deferred keys,
    /// `sqlite_sequence`, virtual tables, objects.
    pub http_requests: u64,
    pub statements: u64,
    /// Seconds the real run needs at least, at Cloudflare's 1,200 requests per 5 minutes.
    pub estimated_seconds_at_rate_limit: f64,
    pub findings: Vec<Finding>,
    /// What `MIGRATION_TRANSFORM` does to each table it names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TableMapping>,
    /// Indexes, views and triggers the transform leaves out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// What the real run would do with the problems found.
    pub policy: String,
    pub would_succeed: bool,
    /// `MIGRATION_METHOD`, the method the dry run recommends for this source, and why.
    pub method: String,
    pub recommended_method: String,
    pub method_reason: String,
    /// The D1 database's size now (`GET …/database/{id}`), when the API tells it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d1_database_bytes: Option<u64>,
}

/// Runs the dry run against the source and, read-only, the target.
pub fn dry_run(config: &Config, client: &D1Client) -> Result<DryRun> {
    let source = open_read_only(config.source_file())?;
    let mut transformed = source_schema(&source, &config.reshape())?;
    transformed.count_filtered(&source)?;
    let schema = &transformed.schema;
    let plan = plan(schema);
    let mut out = DryRun {
        findings: check_schema(schema),
        transforms: transformed.mappings.clone(),
        left_out: transformed.left_out.clone(),
        ..DryRun::default()
    };
    out.findings
        .extend(transformed.fts.iter().map(|f| f.finding()));
    let skip = config.on_bad_row == BadRow::Skip;
    out.findings.extend(if transformed.is_identity() {
        foreign_key_violations(&source, schema, skip)?
    } else {
        transformed.foreign_key_findings(&source, true, skip)?
    });
    out.findings.extend(database_size(&source)?);
    out.d1_database_bytes = match client.database_info() {
        Ok(info) => info.file_size,
        Err(e) => {
            out.findings.push(Finding::warning(
                "database_size_unknown",
                "(database)",
                format!(
                    "could not read the D1 database's size ({e}); its size limit is not checked"
                ),
            ));
            None
        }
    };
    out.findings
        .extend(size_after(out.d1_database_bytes, source_bytes(&source)?));
    let fitted = target_check(client, &source, &transformed, &mut out.findings)?;

    let anchors = read_anchors(&source, schema, &plan, |s| transformed.adapt(s))?;
    let [mut rows, mut deferred, mut fill] = passes(schema, &plan, &anchors, |_, _| false);
    for w in rows.iter_mut().chain(&mut deferred).chain(&mut fill) {
        transformed.adapt(&mut w.shape);
        for (shape, _) in &mut w.group {
            transformed.adapt(shape);
        }
    }
    // The small tables the real run sends together in one request (see `bundle`), after the
    // CREATE statements of the tables it creates, at the head of that request.
    let head: usize = plan
        .tables
        .iter()
        .map(|t| &schema.tables[t.table])
        .filter(|t| fitted.as_ref().is_none_or(|f| f.creates_table(&t.name)))
        .map(|t| if_not_exists(&t.sql).len())
        .sum();
    let small = choose(
        config,
        &source,
        schema,
        &rows,
        &deferred,
        config.limits.request_bytes.saturating_sub(head),
    )?
    .shares();
    let reason_of = |table: &str| {
        plan.tables
            .iter()
            .find(|t| schema.tables[t.table].name == table)
            .map(|t| t.reason.clone())
            .unwrap_or_default()
    };
    // A group's own request (anchors, or all its rows) is counted with its first table.
    let mut group_share: Option<PlannedTable> = None;
    for (i, work) in rows.iter().enumerate() {
        if let Some(share) = small.iter().find(|s| s.work == i) {
            let reason = reason_of(&work.shape.table);
            out.tables.push(PlannedTable {
                table: work.shape.table.clone(),
                order_reason: format!(
                    "{reason}; small: sent in one request with the other small tables"
                ),
                rows: share.rows_written,
                statements: share.statements,
                requests: share.requests,
                bytes: share.bytes,
                ..PlannedTable::default()
            });
            continue;
        }
        if work.pass != Pass::Insert {
            match count(
                config,
                &source,
                work,
                String::new(),
                skip,
                &mut out.findings,
            ) {
                Ok(share) => group_share = Some(share),
                Err(e) => out.findings.push(Finding::error(
                    "cycle_too_large",
                    &work.shape.table,
                    e.to_string(),
                )),
            }
            continue;
        }
        let reason = reason_of(&work.shape.table);
        let mut planned = count(config, &source, work, reason, skip, &mut out.findings)?;
        if let Some(share) = group_share.take() {
            planned.statements += share.statements;
            planned.requests += share.requests;
            planned.bytes += share.bytes;
        }
        out.tables.push(planned);
    }
    for (i, work) in deferred.iter().enumerate() {
        if small.iter().any(|s| s.deferred == Some(i)) {
            continue; // counted with its table's share of the small tables' request
        }
        let extra = count(
            config,
            &source,
            work,
            String::new(),
            skip,
            &mut out.findings,
        )?;
        let t = out
            .tables
            .iter_mut()
            .find(|t| t.table == work.shape.table)
            .expect("planned");
        t.statements += extra.statements;
        t.requests += extra.requests;
    }
    for work in &fill {
        out.tables.push(count(
            config,
            &source,
            work,
            "virtual table, filled after the data".into(),
            skip,
            &mut out.findings,
        )?);
        out.objects_after_data
            .push(format!("virtual table {}", work.shape.table));
    }
    for o in ordered_objects(schema) {
        if fitted.as_ref().is_none_or(|f| f.creates_object(&o.name)) {
            out.objects_after_data
                .push(format!("{} {}", o.kind, o.name));
        }
    }
    if !schema.stat1.is_empty() {
        let n = schema.stat1.len();
        out.objects_after_data.push(format!(
            "sqlite_stat1: the planner's statistics, {n} row{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    for t in &mut out.tables {
        let fit = fitted
            .as_ref()
            .and_then(|f| f.tables.iter().find(|f| f.table == t.table));
        t.on_d1 = fit.map_or("create".into(), |f| f.action.clone());
        t.column_mapping = fit.map(|f| f.mapping.clone()).unwrap_or_default();
    }

    let data_requests: u64 = out.tables.iter().map(|t| t.requests).sum();
    // Nothing follows the rows but the statements after the data: no keys set after them, no
    // virtual table, none of D1's triggers to create again.
    let nothing_after = plan.virtual_tables.is_empty()
        && fill.is_empty()
        && !out
            .findings
            .iter()
            .any(|f| f.kind == "target_trigger_suspended")
        && (0..deferred.len()).all(|i| small.iter().any(|s| s.deferred == Some(i)));
    // The last table of the load order with a request of its own.
    let last = out
        .tables
        .iter()
        .filter(|t| !small.iter().any(|s| rows[s.work].shape.table == t.table))
        .rfind(|t| t.requests > 0);
    // `sqlite_sequence` and the planner's statistics go along with the virtual tables' or the
    // indexes' DDL when there is any.
    // The tables' DDL goes in a request of its own only when no small table's rows take it along.
    let ddl_requests = u64::from(!plan.tables.is_empty() && !small.iter().any(|s| s.requests > 0))
        + u64::from(!plan.virtual_tables.is_empty())
        + u64::from(
            !rides_last(config, schema, last, &fitted, nothing_after)
                && (!schema.objects.is_empty()
                    || (plan.virtual_tables.is_empty()
                        && !after_data_statements(schema).is_empty())),
        );
    // 2: reading the target's catalog, and the Time Travel bookmark taken before the first write
    out.http_requests = 2 + ddl_requests + data_requests;
    out.statements = out.tables.iter().map(|t| t.statements).sum();
    out.estimated_seconds_at_rate_limit = if out.http_requests as f64 <= RATE_LIMIT_PER_5_MIN {
        0.0
    } else {
        (out.http_requests as f64 / RATE_LIMIT_PER_5_MIN - 1.0) * 300.0
    };
    (out.recommended_method, out.method_reason) = recommend(data_requests, config.retry.rate_limit);
    out.method = match config.method {
        Method::Query => "query",
        Method::Import => "import",
    }
    .into();
    out.policy = if skip {
        "MIGRATION_ON_BAD_ROW=skip: rows D1 would refuse go to the reject file and the run goes on"
            .into()
    } else {
        "MIGRATION_ON_BAD_ROW=fail: the run stops at the first row D1 refuses".into()
    };
    out.would_succeed = !out
        .findings
        .iter()
        .any(|f| f.is_error() && !(skip && f.key.is_some()));
    Ok(out)
}

/// Whether the statements after the data (`sqlite_sequence`, statistics, indexes, views and
/// triggers) ride at the end of the last data request, as `migrate` sends them when nothing else
/// follows the rows and they fit: predicted with the last table of the load order that has a
/// request of its own, `last` (tables load in parallel, so another may end last in the real run).
fn rides_last(
    config: &Config,
    schema: &Schema,
    last: Option<&PlannedTable>,
    fitted: &Option<Fit>,
    nothing_after: bool,
) -> bool {
    let mut tail: Vec<String> = after_data_statements(schema);
    tail.extend(
        ordered_objects(schema)
            .filter(|o| fitted.as_ref().is_none_or(|f| f.creates_object(&o.name)))
            .map(|o| if_not_exists(&o.sql)),
    );
    let bytes: usize = tail.iter().map(String::len).sum();
    config.method == Method::Query
        && nothing_after
        && !tail.is_empty()
        && last.is_some_and(|t| {
            t.last_request.0 + bytes <= config.limits.request_bytes
                && t.last_request.1 + tail.len() <= config.limits.request_statements
        })
}

/// Reads and packs one table's pass, counting what the real run would send.
fn count(
    config: &Config,
    source: &rusqlite::Connection,
    work: &Work,
    order_reason: String,
    skip: bool,
    findings: &mut Vec<Finding>,
) -> Result<PlannedTable> {
    let table = work.shape.table.clone();
    let mut planned = PlannedTable {
        table: table.clone(),
        order_reason,
        ..PlannedTable::default()
    };
    let request_bytes = || config.limits.request_bytes;
    produce(
        config,
        source,
        work,
        &pass_filter(work),
        None,
        &request_bytes,
        |event| {
            match event {
                Produced::Read(n) => {
                    if work.pass == Pass::Insert {
                        planned.rows += n
                    }
                }
                Produced::Request(r) => {
                    planned.last_request = (r.bytes, r.statements.len());
                    planned.requests += 1;
                    planned.statements += r.statements.len() as u64;
                    planned.bytes += r.bytes as u64;
                }
                Produced::Oversize { key, bytes, .. } => {
                    planned.rows_over_limit += 1;
                    let action = if skip {
                        "it would go to the reject file"
                    } else {
                        "the run would stop here"
                    };
                    findings.push(
                    Finding::error(
                        "row_too_large",
                        &table,
                        format!("row {key} of {bytes} bytes in {table:?} is over D1's 2,000,000-byte limit; {action}"),
                    )
                    .with_key(key),
                );
                }
            }
            Ok(true)
        },
    )?;
    planned.rows -= planned.rows_over_limit;
    Ok(planned)
}

/// `PRAGMA foreign_key_check`: rows SQLite stored without enforcing their keys; D1 refuses them.
fn foreign_key_violations(
    source: &rusqlite::Connection,
    schema: &Schema,
    skip: bool,
) -> Result<Vec<Finding>> {
    let action = if skip {
        "it would go to the reject file"
    } else {
        "the run would stop here"
    };
    let mut findings = Vec::new();
    for t in schema.tables.iter().filter(|t| !t.is_virtual()) {
        let sql = format!("PRAGMA foreign_key_check({})", quote_ident(&t.name));
        let mut stmt = source.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let rowid: Option<i64> = r.get(1)?;
            let parent: String = r.get(2)?;
            let key = rowid
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(no rowid)".into());
            findings.push(
                Finding::error(
                    "foreign_key_violation",
                    &t.name,
                    format!(
                        "row {key} of {:?} references a row of {parent:?} that does not exist; D1 enforces foreign keys, so {action}",
                        t.name
                    ),
                )
                .with_key(key),
            );
        }
    }
    Ok(findings)
}

fn source_bytes(source: &rusqlite::Connection) -> Result<u64> {
    let pages: i64 = source.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: i64 = source.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((pages * size) as u64)
}

/// D1's limits on the database after the run: what it holds now plus the source. The API does
/// not tell the account's plan, so the Free plan's 500 MB is a warning.
fn size_after(d1_bytes: Option<u64>, source_bytes: u64) -> Vec<Finding> {
    let Some(now) = d1_bytes else {
        return Vec::new();
    };
    let after = now + source_bytes;
    if after > MAX_DATABASE_BYTES {
        vec![Finding::error(
            "database_too_large",
            "(database)",
            format!(
                "the D1 database holds {now} bytes; with the source's {source_bytes} it would hold about {after}, past D1's 10 GB limit"
            ),
        )]
    } else if after > FREE_PLAN_DATABASE_BYTES {
        vec![Finding::warning(
            "free_plan_limit",
            "(database)",
            format!(
                "the D1 database would hold about {after} bytes; on the Workers Free plan D1 databases hold at most 500 MB (the API does not say which plan this account is on)"
            ),
        )]
    } else {
        Vec::new()
    }
}

/// The method for this many data requests: `query` while they fit the rate limit, `import`
/// beyond it.
fn recommend(data_requests: u64, rate_limit: usize) -> (String, String) {
    let limit = if rate_limit == 0 {
        RATE_LIMIT_PER_5_MIN as u64
    } else {
        rate_limit as u64
    };
    if data_requests > limit {
        let wait = (data_requests as f64 / limit as f64 - 1.0) * 300.0;
        (
            "import".into(),
            format!(
                "{data_requests} data requests are more than the {limit} per 5 minutes the query method may send: it would wait about {wait:.0} s on the rate limit; import sends files of MIGRATION_IMPORT_MB instead, without that limit, but D1 answers no other query while each file loads"
            ),
        )
    } else {
        (
            "query".into(),
            format!(
                "{data_requests} data requests fit within the {limit} per 5 minutes the query method may send, and the database keeps answering during the run (an import blocks it while each file loads)"
            ),
        )
    }
}

fn database_size(source: &rusqlite::Connection) -> Result<Vec<Finding>> {
    let bytes = source_bytes(source)?;
    Ok(if bytes > MAX_DATABASE_BYTES {
        vec![Finding::error(
            "database_too_large",
            "(database)",
            format!("the database is {bytes} bytes; D1 databases hold at most 10 GB"),
        )]
    } else {
        Vec::new()
    })
}

/// Read-only look at the target: the tables and objects it already has, compared with the
/// source's by structure (`fit`). `None` when the target cannot be read (a finding says so).
fn target_check(
    client: &D1Client,
    source: &rusqlite::Connection,
    transformed: &Transformed,
    findings: &mut Vec<Finding>,
) -> Result<Option<Fit>> {
    let existing = match target_objects(client) {
        Ok(e) => e,
        Err(e) => {
            findings.push(Finding::error(
                "target_unreachable",
                client.database_id(),
                format!("the target cannot be read: {e}"),
            ));
            return Ok(None);
        }
    };
    let schema = &transformed.schema;
    for m in missing_parents(schema, &existing) {
        findings.push(Finding::error(
            "missing_parent_table",
            client.database_id(),
            format!("{m}; D1 enforces foreign keys"),
        ));
    }
    let fit = fit(source, schema, &existing, &|t| transformed.read_from(t))?;
    for t in fit.tables.iter().filter(|t| t.action != "create") {
        for p in &t.problems {
            findings.push(Finding::error(
                "target_table_differs",
                &t.table,
                format!("{p}; the run would stop before writing"),
            ));
        }
        if t.problems.is_empty() {
            findings.push(Finding::warning(
                "target_table_exists",
                &t.table,
                format!(
                    "D1 already has table {:?} and it fits; it is filled as it exists, rows it has are kept",
                    t.table
                ),
            ));
        }
        for n in &t.notes {
            findings.push(Finding::warning("target_table_note", &t.table, n.clone()));
        }
    }
    // The real run drops D1's triggers on the tables it writes and creates them again after the
    // data (`target::Suspended`): the copied rows already hold their effects.
    let written: Vec<&str> = schema
        .tables
        .iter()
        .filter(|t| !t.is_virtual())
        .map(|t| t.name.as_str())
        .collect();
    for (name, _) in d1_triggers_on(client, &existing, &written)? {
        findings.push(Finding::warning(
            "target_trigger_suspended",
            &name,
            format!(
                "D1's trigger {name:?} is on a table the copy writes: it is dropped while the rows \
                 are written (they already hold its effects) and created again after the data"
            ),
        ));
    }
    for o in &fit.objects {
        if let Some(message) = &o.message {
            let finding = if o.action == "conflict" {
                Finding::error
            } else {
                Finding::warning
            };
            findings.push(finding("target_object_differs", &o.name, message.clone()));
        }
    }
    Ok(Some(fit))
}

impl DryRun {
    /// The plan and findings as text.
    pub fn summary(&self) -> String {
        let mut out = String::from("Dry run: nothing was written.\n");
        if !self.transforms.is_empty() {
            out.push_str("Transforms (MIGRATION_TRANSFORM):\n");
            for m in &self.transforms {
                out.push_str(&format!("  {}\n", m.describe()));
            }
        }
        if !self.left_out.is_empty() {
            out.push_str(&format!(
                "Left out by the transform: {}\n",
                self.left_out.join(", ")
            ));
        }
        out.push_str("Load order:\n");
        for (i, t) in self.tables.iter().enumerate() {
            let left_out = if t.rows_over_limit > 0 {
                format!(", {} rows over D1's row limit left out", t.rows_over_limit)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "  {:>2}. {:<24} {:>9} rows {:>11} bytes {:>6} statements {:>5} requests  ({}{left_out})\n",
                i + 1,
                t.table,
                t.rows,
                t.bytes,
                t.statements,
                t.requests,
                t.order_reason
            ));
            out.push_str(&format!(
                "      on D1: {}\n",
                match t.on_d1.as_str() {
                    "fill" => "filled as it exists",
                    "merge by name" =>
                        "exists: the source's applied migrations it lacks are added by name",
                    _ => "created",
                }
            ));
            for m in &t.column_mapping {
                out.push_str(&format!("        {m}\n"));
            }
        }
        if !self.objects_after_data.is_empty() {
            out.push_str(&format!(
                "After the data: {}\n",
                self.objects_after_data.join(", ")
            ));
        }
        out.push_str(&format!(
            "{} HTTP requests, {} statements; at Cloudflare's 1,200 requests per 5 minutes the rate limit adds {:.0} s\n",
            self.http_requests, self.statements, self.estimated_seconds_at_rate_limit
        ));
        out.push_str(&format!(
            "Method: {} (MIGRATION_METHOD); recommended: {}: {}\n",
            self.method, self.recommended_method, self.method_reason
        ));
        if let Some(bytes) = self.d1_database_bytes {
            out.push_str(&format!("The D1 database holds {bytes} bytes now\n"));
        }
        if self.findings.is_empty() {
            out.push_str("No D1 compatibility problems found.\n");
        }
        for f in &self.findings {
            out.push_str(&format!("  {}: [{}] {}\n", f.severity, f.kind, f.message));
        }
        out.push_str(&format!("{}\n", self.policy));
        out.push_str(if self.would_succeed {
            "The real run would succeed.\n"
        } else {
            "The real run would NOT succeed.\n"
        });
        out
    }
}

#[cfg(test)]
mod method_and_size_tests {
    use super::*;

    #[test]
    fn import_is_recommended_past_the_rate_limit() {
        assert_eq!(recommend(1_000, 1_100).0, "query");
        let (method, reason) = recommend(5_500, 1_100);
        assert_eq!(method, "import");
        assert!(reason.contains("1200 s"), "{reason}");
        assert!(
            reason.contains("blocks") || reason.contains("no other query"),
            "{reason}"
        );
    }

    #[test]
    fn a_run_that_would_pass_d1s_size_limits_is_refused_or_warned() {
        assert!(size_after(None, 20_000_000_000).is_empty());
        assert!(size_after(Some(1_000_000), 1_000_000).is_empty());
        let free = size_after(Some(400_000_000), 200_000_000);
        assert_eq!(free[0].kind, "free_plan_limit");
        assert!(!free[0].is_error());
        let over = size_after(Some(9_000_000_000), 2_000_000_000);
        assert_eq!(over[0].kind, "database_too_large");
        assert!(over[0].is_error());
    }
}
