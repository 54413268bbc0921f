//! Counts of a run, summed from every worker, and the JSON report (`MIGRATION_REPORT`).
//!
//! The report's shape is versioned by `schema_version`; README.md documents its fields.

use std::ops::AddAssign;
use std::path::Path;

use serde::Serialize;

use crate::diff::TableChanges;
use crate::error::{Error, Result};

pub const SCHEMA_VERSION: u32 = 1;

/// What happened to one table.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TableStats {
    pub table: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_failed: u64,
    pub requests: u64,
    pub bytes_sent: u64,
    pub statements: u64,
    pub duration_ms: u64,
    /// Rows a sync inserted, updated and deleted.
    #[serde(skip_serializing_if = "is_zero")]
    pub inserted: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub updated: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub deleted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl AddAssign<&TableStats> for TableStats {
    fn add_assign(&mut self, o: &TableStats) {
        self.rows_read += o.rows_read;
        self.rows_written += o.rows_written;
        self.rows_failed += o.rows_failed;
        self.requests += o.requests;
        self.bytes_sent += o.bytes_sent;
        self.statements += o.statements;
        self.duration_ms += o.duration_ms;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
    }
}

/// What a sync found and did, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SyncReport {
    /// Whether rows only the target holds were deleted (`MIGRATION_SYNC_DELETE`).
    pub delete: bool,
    /// Per table, the differences found (counts and first keys).
    pub tables: Vec<TableChanges>,
    /// Rows only the target holds, left there because deletes were not asked for.
    pub deletes_pending: u64,
    /// Triggers on the target kept from firing (dropped and created again around the writes).
    pub triggers_suspended: Vec<String>,
    pub sequence_updated: bool,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool_version: String,
    pub direction: String,
    pub mode: String,
    pub success: bool,
    pub started_at_unix_ms: u64,
    pub duration_ms: u64,
    pub tables: Vec<TableStats>,
    pub totals: TableStats,
    pub http_requests: u64,
    pub retries: u64,
    pub bytes_sent: u64,
    /// D1's own `meta.rows_read` and `meta.rows_written` summed over the run: what D1 bills.
    pub d1_rows_read: u64,
    pub d1_rows_written: u64,
    /// Bytes of D1's answers.
    pub bytes_received: u64,
    /// Time threads spent held back by the rate limit or a 429's pause, summed over threads.
    pub rate_limit_wait_ms: u64,
    /// The largest window of writes in flight the run reached (see `flow::Window`).
    pub writes_window_peak: usize,
    /// Requests, bytes, requests per GB and rate-limit waiting of each phase.
    pub phases: Vec<crate::flow::PhaseStats>,
    pub objects_created: Vec<String>,
    /// True when the checkpoint said the migration was already complete.
    pub already_complete: bool,
    pub rejected_rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_file: Option<String>,
    pub skipped: Vec<Skipped>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<crate::validate::Validation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<crate::dryrun::DryRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// D1's Time Travel bookmark taken before this run's first write, and the command that
    /// restores the database to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bookmark_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
    /// The consistent copy of the source the run read (`MIGRATION_SNAPSHOT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_snapshot: Option<crate::snapshot::SnapshotReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

impl Report {
    /// The closing line of a summary: requests, retries, bytes, what D1 billed, time.
    fn requests_line(&self) -> String {
        format!(
            "HTTP requests {}, retries {}, {:.1} MB sent, D1 rows read {} / written {}, {:.2} s\n",
            self.http_requests,
            self.retries,
            self.bytes_sent as f64 / 1e6,
            self.d1_rows_read,
            self.d1_rows_written,
            self.duration_ms as f64 / 1000.0
        )
    }

    pub fn new(direction: &str, mode: &str) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            direction: direction.to_string(),
            mode: mode.to_string(),
            started_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ..Report::default()
        }
    }

    /// Records what was left out, and why.
    pub fn set_skipped(&mut self, skipped: &[(String, String)]) {
        self.skipped = skipped
            .iter()
            .map(|(name, reason)| Skipped {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect();
    }

    /// Sums the tables into `totals`.
    pub fn total(&mut self) {
        let mut totals = TableStats {
            table: "(all)".into(),
            ..TableStats::default()
        };
        for t in &self.tables {
            totals += t;
        }
        self.totals = totals;
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a report serialises");
        std::fs::write(path, text + "\n").map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The summary table printed at the end of a run.
    pub fn summary(&self) -> String {
        if let Some(plan) = &self.dry_run {
            return plan.summary();
        }
        let verdict = |table: &str| match &self.validation {
            None => "-",
            Some(v) => match v.tables.iter().find(|t| t.table == table) {
                Some(t) if t.ok => "ok",
                Some(_) => "DIFFERS",
                None => "-",
            },
        };
        let mut out = String::new();
        if let Some(sync) = &self.sync {
            out.push_str(&self.sync_summary(sync));
            return out;
        }
        out.push_str(&format!(
            "{:<28} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9}\n",
            "table", "read", "written", "failed", "validation", "requests", "seconds"
        ));
        for t in self.tables.iter().chain(std::iter::once(&self.totals)) {
            let valid = if t.table == "(all)" {
                match &self.validation {
                    Some(v) if v.ok => "ok",
                    Some(_) => "DIFFERS",
                    None => "-",
                }
            } else {
                verdict(&t.table)
            };
            out.push_str(&format!(
                "{:<28} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9.2}\n",
                truncate(&t.table, 28),
                t.rows_read,
                t.rows_written,
                t.rows_failed,
                valid,
                t.requests,
                t.duration_ms as f64 / 1000.0
            ));
        }
        if let Some(v) = &self.validation {
            out.push_str(&v.summary());
        }
        out.push_str(&self.requests_line());
        for p in &self.phases {
            out.push_str(&p.summary());
        }
        if let Some(file) = &self.reject_file {
            out.push_str(&format!(
                "rejected rows: {}, written to {file}\n",
                self.rejected_rows
            ));
        }
        if let Some(command) = &self.restore_command {
            out.push_str(&format!("to undo this run's writes: {command}\n"));
        }
        out
    }

    /// Takes D1's Time Travel bookmark before the run's first write. A failure (an API without
    /// Time Travel) is a warning: the run goes on without one.
    pub fn take_bookmark(&mut self, client: &crate::d1::D1Client) {
        self.record_bookmark(client, client.bookmark());
    }

    /// Records a bookmark taken before writing (or says why there is none).
    pub fn record_bookmark(
        &mut self,
        client: &crate::d1::D1Client,
        taken: Result<String, crate::error::D1Error>,
    ) {
        match taken {
            Ok(bookmark) => {
                self.restore_command = Some(format!(
                    "wrangler d1 time-travel restore {} --bookmark={bookmark}",
                    client.database_id()
                ));
                self.bookmark_before = Some(bookmark);
            }
            Err(e) => crate::log::warn(&format!(
                "could not take a Time Travel bookmark before writing ({e}); going on without one"
            )),
        }
    }
}

impl Report {
    /// A sync's summary: per table what differed and what was written; a dry run's lists the
    /// first keys of each kind.
    fn sync_summary(&self, sync: &SyncReport) -> String {
        let dry = self.mode == "dry-run";
        let mut out = String::new();
        let verdict = |table: &str| match &self.validation {
            None => "-",
            Some(v) => match v.tables.iter().find(|t| t.table == table) {
                Some(t) if t.ok => "ok",
                Some(_) => "DIFFERS",
                None => "-",
            },
        };
        out.push_str(&format!(
            "{:<28} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}\n",
            "table",
            "compared",
            if dry { "to insert" } else { "inserted" },
            if dry { "to update" } else { "updated" },
            if dry { "to delete" } else { "deleted" },
            "validation",
            "requests",
            "seconds"
        ));
        for c in &sync.tables {
            let stats = self.tables.iter().find(|t| t.table == c.table);
            let (inserted, updated, deleted) = match stats {
                Some(t) if !dry => (t.inserted, t.updated, t.deleted),
                _ => (c.insert, c.update, c.delete),
            };
            out.push_str(&format!(
                "{:<28} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9.2}\n",
                truncate(&c.table, 28),
                stats.map_or(0, |t| t.rows_read),
                inserted,
                updated,
                deleted,
                verdict(&c.table),
                stats.map_or(0, |t| t.requests),
                stats.map_or(0, |t| t.duration_ms) as f64 / 1000.0
            ));
            if dry {
                for (kind, keys) in [
                    ("insert", &c.first_inserts),
                    ("update", &c.first_updates),
                    ("delete", &c.first_deletes),
                ] {
                    if !keys.is_empty() {
                        out.push_str(&format!("  {kind} keys: {}\n", keys.join("; ")));
                    }
                }
            }
        }
        if sync.deletes_pending > 0 {
            out.push_str(&format!(
                "{} rows exist only on the target and are {}: MIGRATION_SYNC_DELETE=true deletes them\n",
                sync.deletes_pending,
                if dry { "listed" } else { "left there" }
            ));
        }
        if !sync.triggers_suspended.is_empty() {
            out.push_str(&format!(
                "triggers kept from firing (dropped and created again): {}\n",
                sync.triggers_suspended.join(", ")
            ));
        }
        if let Some(v) = &self.validation {
            out.push_str(&v.summary());
        }
        out.push_str(&self.requests_line());
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
