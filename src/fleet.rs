//! Many databases in one run (`MIGRATION_MANIFEST`): one migration per manifest line, each the
//! whole single-database pipeline (`crate::run_with`) with its own source file, D1 database and
//! checkpoint, `MIGRATION_PARALLEL_DATABASES` at a time. Every line's client is one of the
//! fleet's account client's (`D1Client::for_database`): one rate limiter, so the run as a whole
//! stays under the token's limit, and one pool of connections. A line whose database does not
//! exist creates it when it starts, and runs knowing it empty (`Config::created_database`).
//!
//! Everything that can be known before writing is checked for every line first (files, names,
//! transform files); a line that fails later does not stop the others unless
//! `MIGRATION_FAIL_FAST` says so. The exit status is the worst of the lines (0 < 3 < 1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Direction, RunMode};
use crate::d1::D1Client;

use crate::error::{Error, Result};
use crate::log;
use crate::progress::{self, Progress};
use crate::report::{Report, SCHEMA_VERSION};
use crate::transform::Transform;

/// One line of the manifest, as written.
#[derive(Debug, Deserialize)]
struct Row {
    sqlite_path: String,
    database: String,
    #[serde(default)]
    transform: Option<String>,
}

/// One migration of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Its line number in the manifest file (the header is line 1).
    pub number: usize,
    /// The SQLite file, relative paths taken from the manifest's folder.
    pub sqlite_path: PathBuf,
    /// The D1 database: an id, or a name resolved through D1's list endpoint.
    pub database: String,
    pub transform: Option<PathBuf>,
}

/// Reads a manifest: a CSV file with the header `sqlite_path,database[,transform]`.
pub fn read_manifest(path: &Path) -> Result<Vec<Line>> {
    let bad = |message: String| {
        Error::Config(format!("MIGRATION_MANIFEST {}: {message}", path.display()))
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    for needed in ["sqlite_path", "database"] {
        if !headers.iter().any(|h| h == needed) {
            return Err(bad(format!(
                "the header must name the columns sqlite_path,database (and optionally transform); it is {:?}",
                headers.iter().collect::<Vec<_>>().join(",")
            )));
        }
    }
    if let Some(other) = headers
        .iter()
        .find(|h| !["sqlite_path", "database", "transform"].contains(h))
    {
        return Err(bad(format!(
            "unknown column {other:?} (known: sqlite_path, database, transform)"
        )));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    let mut lines = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for record in reader.deserialize::<Row>() {
        let row = record.map_err(|e| bad(e.to_string()))?;
        let number = lines.len() + 2;
        if row.sqlite_path.is_empty() || row.database.is_empty() {
            return Err(bad(format!(
                "line {number}: sqlite_path and database are both required"
            )));
        }
        if let Some(first) = seen.insert(row.database.to_lowercase(), number) {
            return Err(bad(format!(
                "line {number}: database {:?} is already the target of line {first}; one line per database",
                row.database
            )));
        }
        lines.push(Line {
            number,
            sqlite_path: resolve(&row.sqlite_path),
            database: row.database,
            transform: row.transform.filter(|t| !t.is_empty()).map(|t| resolve(&t)),
        });
    }
    if lines.is_empty() {
        return Err(bad("it lists no migration".into()));
    }
    Ok(lines)
}

/// Whether `s` has the shape of a D1 database id (a UUID).
fn looks_like_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// One line's result in the fleet report: the line, and the single-database report of its run.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRun {
    pub line: usize,
    pub sqlite_path: String,
    pub database: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    /// ok, differences, failed, or not run (fail-fast stopped the fleet first).
    pub result: String,
    pub exit_code: u8,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Totals over the fleet.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetTotals {
    pub databases: usize,
    pub ok: usize,
    pub differences: usize,
    pub failed: usize,
    pub not_run: usize,
    pub databases_created: usize,
    pub rows_written: u64,
    pub http_requests: u64,
    pub bytes_sent: u64,
    pub d1_rows_read: u64,
    pub d1_rows_written: u64,
}

/// The report of a manifest run.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub schema_version: u32,
    pub tool_version: String,
    pub manifest: String,
    pub direction: String,
    pub mode: String,
    pub success: bool,
    pub duration_ms: u64,
    pub parallel_databases: usize,
    pub databases: Vec<DatabaseRun>,
    pub totals: FleetTotals,
}

impl FleetReport {
    /// A table of the databases and a line of totals, for the terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<5} {:<36} {:>12} {:>9} {:<12} {:>8}  {}\n",
            "line", "database", "rows", "requests", "validation", "seconds", "result"
        ));
        for d in &self.databases {
            let (rows, requests, validation) = match &d.report {
                Some(r) => (
                    progress::count(r.totals.rows_written),
                    progress::count(r.http_requests),
                    match &r.validation {
                        Some(v) if v.ok => "passed",
                        Some(_) => "DIFFERS",
                        None if r.already_complete => "(done before)",
                        None => "-",
                    },
                ),
                None => ("-".into(), "-".into(), "-"),
            };
            let name = match &d.database_id {
                Some(id) if id != &d.database => {
                    format!("{} ({})", d.database, &id[..8.min(id.len())])
                }
                _ => d.database.clone(),
            };
            out.push_str(&format!(
                "{:<5} {:<36} {:>12} {:>9} {:<12} {:>8.1}  {}{}\n",
                d.line,
                name,
                rows,
                requests,
                validation,
                d.seconds,
                d.result,
                d.error
                    .as_ref()
                    .map(|e| format!(": {}", first_line(e)))
                    .unwrap_or_default()
            ));
        }
        let t = &self.totals;
        out.push_str(&format!(
            "{} databases: {} ok, {} with differences, {} failed{}; {} rows, {} requests, {:.1} MB sent, D1 rows read {} / written {}, {:.1} s\n",
            t.databases,
            t.ok,
            t.differences,
            t.failed,
            if t.not_run > 0 { format!(", {} not run", t.not_run) } else { String::new() },
            progress::count(t.rows_written),
            progress::count(t.http_requests),
            t.bytes_sent as f64 / 1e6,
            progress::count(t.d1_rows_read),
            progress::count(t.d1_rows_written),
            self.duration_ms as f64 / 1000.0,
        ));
        out
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a report serializes");
        std::fs::write(path, text + "\n").map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// How a fleet ended.
pub struct FleetOutcome {
    pub report: FleetReport,
    /// An error that stopped the fleet before any line ran (configuration, manifest).
    pub error: Option<Error>,
    pub exit_code: u8,
}

/// The exit status of the worst line: 0 < 3 < 1 (2 is for what stops every line before writing).
fn worse(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        0 => 0,
        3 => 1,
        2 => 2,
        _ => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// A line made ready to run: its configuration, or why it cannot run.
struct Prepared {
    line: Line,
    database_id: Option<String>,
    config: Option<Config>,
    problem: Option<String>,
    /// Why the line is not run, when that is no failure (a dry run's database to create).
    skip: Option<String>,
}

/// Runs every line of `manifest` with `base`'s settings.
pub fn run_fleet(base: &Config, manifest: &Path) -> FleetOutcome {
    let started = Instant::now();
    let mut report = FleetReport {
        schema_version: SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        manifest: manifest.display().to_string(),
        direction: base.direction_name().into(),
        mode: base.mode_name().into(),
        success: false,
        duration_ms: 0,
        parallel_databases: base.parallel_databases,
        databases: Vec::new(),
        totals: FleetTotals::default(),
    };
    let fail = |mut report: FleetReport, error: Error| {
        report.duration_ms = started.elapsed().as_millis() as u64;
        let code = error.exit_code();
        if let Some(path) = &base.report {
            let _ = report.write(path);
        }
        FleetOutcome {
            report,
            error: Some(error),
            exit_code: code,
        }
    };
    let lines = match read_manifest(manifest) {
        Ok(l) => l,
        Err(e) => return fail(report, e),
    };
    // Every line's client is one of this client's: one rate limiter, one pool of connections.
    let account = D1Client::new(base.endpoint.clone(), base.retry.clone());

    // Everything that can be checked before writing, for every line.
    let mut prepared = match prepare(base, &lines, &account) {
        Ok(p) => p,
        Err(e) => return fail(report, e),
    };
    let problems: Vec<String> = prepared
        .iter()
        .filter_map(|p| {
            p.problem
                .as_ref()
                .map(|m| format!("line {} ({}): {m}", p.line.number, p.line.database))
        })
        .collect();
    if !problems.is_empty() {
        for p in &prepared {
            report.databases.push(DatabaseRun {
                line: p.line.number,
                sqlite_path: p.line.sqlite_path.display().to_string(),
                database: p.line.database.clone(),
                database_id: p.database_id.clone(),
                result: if p.problem.is_some() {
                    "configuration error"
                } else {
                    "not run"
                }
                .into(),
                exit_code: if p.problem.is_some() { 2 } else { 0 },
                seconds: 0.0,
                report: None,
                error: p.problem.clone(),
            });
        }
        report.totals.databases = prepared.len();
        report.totals.failed = problems.len();
        report.totals.not_run = prepared.len() - problems.len();
        return fail(
            report,
            Error::Config(format!(
                "the manifest has lines that cannot run; nothing was written:\n  {}",
                problems.join("\n  ")
            )),
        );
    }

    // A dry run or a validation writes nothing: its lines without a database are reported, not
    // run. Otherwise each line creates its database when it starts (in parallel with the other
    // lines, and none for lines a fail-fast fleet never starts).
    let created = AtomicUsize::new(0);
    let writes = !base.dry_run && base.mode != RunMode::Validate;
    for p in prepared.iter_mut().filter(|p| p.database_id.is_none()) {
        if !writes {
            p.config = None;
            p.skip =
                Some("not run: the database does not exist yet (a run would create it)".into());
        }
    }

    let total = prepared.len();
    let rows = Arc::new(AtomicU64::new(0));
    let fleet_bar = FleetProgress::new(base, total, rows.clone());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<DatabaseRun>>> = Mutex::new(vec![None; total]);
    let workers = base.parallel_databases.min(total).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    break;
                }
                let p = &prepared[i];
                let run = if stop.load(Ordering::SeqCst) {
                    not_run(p, "not run: MIGRATION_FAIL_FAST stopped the fleet")
                } else {
                    run_line(p, &account, &created, base.d1_location.as_deref(), &rows)
                };
                if base.fail_fast && run.exit_code != 0 {
                    stop.store(true, Ordering::SeqCst);
                }
                fleet_bar.line_done(&run);
                results.lock().expect("results")[i] = Some(run);
            });
        }
    });
    fleet_bar.finish();
    report.databases = results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every line has a result"))
        .collect();
    let mut exit = 0u8;
    let t = &mut report.totals;
    t.databases = total;
    t.databases_created = created.into_inner();
    for d in &report.databases {
        exit = worse(exit, d.exit_code);
        match d.result.as_str() {
            "ok" => t.ok += 1,
            "differences" => t.differences += 1,
            r if r.starts_with("not run") => t.not_run += 1,
            _ => t.failed += 1,
        }
        if let Some(r) = &d.report {
            t.rows_written += r.totals.rows_written;
            t.http_requests += r.http_requests;
            t.bytes_sent += r.bytes_sent;
            t.d1_rows_read += r.d1_rows_read;
            t.d1_rows_written += r.d1_rows_written;
        }
    }
    // Requests made for the fleet itself (listing, creating databases).
    t.http_requests += account.counters.requests.load(Ordering::Relaxed);
    report.success = exit == 0;
    report.duration_ms = started.elapsed().as_millis() as u64;
    let mut error = None;
    if let Some(path) = &base.report {
        if let Err(e) = report.write(path) {
            exit = worse(exit, e.exit_code());
            error = Some(e);
        }
    }
    FleetOutcome {
        report,
        error,
        exit_code: exit,
    }
}

fn not_run(p: &Prepared, why: &str) -> DatabaseRun {
    DatabaseRun {
        line: p.line.number,
        sqlite_path: p.line.sqlite_path.display().to_string(),
        database: p.line.database.clone(),
        database_id: p.database_id.clone(),
        result: why.into(),
        exit_code: 0,
        seconds: 0.0,
        report: None,
        error: None,
    }
}

/// Runs one line through the single-database pipeline, creating its database first when the
/// manifest names one D1 lacks. The line's client shares the fleet's connections and rate limit.
fn run_line(
    p: &Prepared,
    account: &D1Client,
    created: &AtomicUsize,
    location: Option<&str>,
    rows: &Arc<AtomicU64>,
) -> DatabaseRun {
    let started = Instant::now();
    if let Some(why) = &p.skip {
        return not_run(p, why);
    }
    let failed = |error: String| {
        let mut run = not_run(p, "failed");
        run.exit_code = 1;
        run.error = Some(error);
        run.seconds = started.elapsed().as_secs_f64();
        run
    };
    let Some(config) = &p.config else {
        return failed(p.problem.clone().unwrap_or_default());
    };
    let mut config = config.clone();
    let mut database_id = p.database_id.clone();
    if database_id.is_none() {
        match account.create_database(&p.line.database, location) {
            Ok(info) => {
                log::info(&format!(
                    "created D1 database {:?} ({}) for manifest line {}",
                    p.line.database, info.uuid, p.line.number
                ));
                created.fetch_add(1, Ordering::SeqCst);
                config.endpoint.database_id = info.uuid.clone();
                // Known empty: no catalog to read, no bookmark to take (deleting the database
                // undoes the run).
                config.created_database = true;
                database_id = Some(info.uuid);
            }
            Err(e) => return failed(format!("creating the database: {e}")),
        }
    }
    let client = account.for_database(config.endpoint.clone(), config.retry.clone());
    let progress = Progress::counting(rows.clone());
    let outcome = crate::run::run_with(&config, &client, &progress);
    let exit_code = outcome.exit_code();
    DatabaseRun {
        line: p.line.number,
        sqlite_path: p.line.sqlite_path.display().to_string(),
        database: p.line.database.clone(),
        database_id,
        result: match exit_code {
            0 => "ok",
            3 => "differences",
            _ => "failed",
        }
        .into(),
        exit_code,
        seconds: started.elapsed().as_secs_f64(),
        error: outcome.error.as_ref().map(|e| e.to_string()),
        report: Some(outcome.report),
    }
}

/// Checks every line and resolves database names, before anything is written.
fn prepare(base: &Config, lines: &[Line], account: &D1Client) -> Result<Vec<Prepared>> {
    // One listing of the account's databases resolves every name (and checks every id).
    let needs_lookup = lines.iter().any(|l| !looks_like_id(&l.database)) || base.create_databases;
    let known: Vec<crate::d1::DatabaseInfo> = if needs_lookup {
        account.list_databases(None).map_err(|e| {
            Error::Config(format!(
                "listing the account's D1 databases to resolve the manifest's names: {e}"
            ))
        })?
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    let mut writers: HashMap<PathBuf, usize> = HashMap::new();
    for line in lines {
        let mut problems: Vec<String> = Vec::new();
        if base.direction == Direction::D1ToSqlite {
            if let Some(first) = writers.insert(line.sqlite_path.clone(), line.number) {
                problems.push(format!(
                    "line {first} writes the same file, {}; one file per line",
                    line.sqlite_path.display()
                ));
            }
        }
        let database_id = if looks_like_id(&line.database) {
            Some(line.database.clone())
        } else {
            match known.iter().find(|d| d.name == line.database) {
                Some(d) => Some(d.uuid.clone()),
                None if base.create_databases && base.direction == Direction::SqliteToD1 => None,
                None => {
                    problems.push(format!(
                        "no D1 database is named {:?} in this account{}",
                        line.database,
                        if base.direction == Direction::SqliteToD1 {
                            " (MIGRATION_CREATE_DATABASES=true creates it)"
                        } else {
                            ""
                        }
                    ));
                    None
                }
            }
        };
        match base.direction {
            Direction::SqliteToD1 if !line.sqlite_path.is_file() => {
                problems.push(format!(
                    "the SQLite file {} does not exist",
                    line.sqlite_path.display()
                ));
            }
            Direction::D1ToSqlite => {
                let dir = line
                    .sqlite_path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty());
                if dir.is_some_and(|d| !d.is_dir()) {
                    problems.push(format!(
                        "the folder of the file to write, {}, does not exist",
                        line.sqlite_path.display()
                    ));
                }
            }
            _ => {}
        }
        let transform = match &line.transform {
            None => base.transform.clone(),
            Some(t) if !t.is_file() => {
                problems.push(format!("the transform file {} does not exist", t.display()));
                None
            }
            Some(t) => match Transform::load(t) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
        };
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        let config = problem
            .is_none()
            .then(|| line_config(base, line, database_id.as_deref(), transform));
        out.push(Prepared {
            line: line.clone(),
            database_id,
            config,
            problem,
            skip: None,
        });
    }
    Ok(out)
}

/// The configuration of one line: the fleet's, with this line's file, database, transform,
/// report and reject file.
fn line_config(
    base: &Config,
    line: &Line,
    database_id: Option<&str>,
    transform: Option<Transform>,
) -> Config {
    let mut c = base.clone();
    c.manifest = None;
    c.sqlite_path = line.sqlite_path.clone();
    c.endpoint.database_id = database_id.unwrap_or_default().to_string();
    c.report = None;
    c.quiet = true;
    if base.reject_file == base.state_dir.join("rejected-rows.jsonl") {
        c.reject_file = base
            .state_dir
            .join(format!("rejected-rows-line{}.jsonl", line.number));
    }
    c.transform = transform;
    c
}

/// The fleet's one display: databases done of the total, rows per second, and an estimate of
/// the time left from the databases' pace; a line per finished database when not on a terminal.
struct FleetProgress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    total: usize,
    done: AtomicUsize,
    rows: Arc<AtomicU64>,
    started: Instant,
}

impl FleetProgress {
    fn new(base: &Config, total: usize, rows: Arc<AtomicU64>) -> FleetProgress {
        let mode = progress::Mode::detect(base.quiet);
        let bar = (mode == progress::Mode::Bars).then(|| {
            let rows = rows.clone();
            let bar = indicatif::ProgressBar::new(total as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} databases {rows} eta {eta}",
                )
                .expect("template")
                .with_key(
                    "rows",
                    move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let n = rows.load(Ordering::Relaxed);
                        let _ = write!(
                            w,
                            "{} rows, {}",
                            progress::count(n),
                            progress::rows_rate(n, state.elapsed())
                        );
                    },
                )
                .progress_chars("=> "),
            );
            bar.set_prefix("fleet");
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        FleetProgress {
            bar,
            quiet: base.quiet,
            total,
            done: AtomicUsize::new(0),
            rows,
            started: Instant::now(),
        }
    }

    fn line_done(&self, run: &DatabaseRun) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if run.exit_code != 0 {
                bar.println(format!(
                    "line {} ({}): {}{}",
                    run.line,
                    run.database,
                    run.result,
                    run.error
                        .as_deref()
                        .map(|e| format!(": {}", first_line(e)))
                        .unwrap_or_default()
                ));
            }
        } else if !self.quiet {
            let elapsed = self.started.elapsed();
            let left = self.total - done;
            let eta = elapsed.as_secs_f64() / done as f64 * left as f64;
            log::info(&format!(
                "fleet: {done}/{} databases ({}: line {} {}), {} rows, {}, eta {:.0} s",
                self.total,
                run.database,
                run.line,
                run.result,
                progress::count(self.rows.load(Ordering::Relaxed)),
                progress::rows_rate(self.rows.load(Ordering::Relaxed), elapsed),
                eta
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tenants.csv");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn lines_are_read_with_paths_relative_to_the_manifest() {
        let (dir, path) = manifest(
            "sqlite_path,database,transform\n\
             a.sqlite,tenant-a,\n\
             /abs/b.sqlite, 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 ,t.toml\n",
        );
        let lines = read_manifest(&path).expect("reads");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].number, 2);
        assert_eq!(lines[0].sqlite_path, dir.path().join("a.sqlite"));
        assert_eq!(lines[0].transform, None);
        assert_eq!(lines[1].sqlite_path, PathBuf::from("/abs/b.sqlite"));
        assert_eq!(lines[1].database, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(lines[1].transform, Some(dir.path().join("t.toml")));
        assert!(looks_like_id(&lines[1].database));
        assert!(!looks_like_id(&lines[0].database));
    }

    #[test]
    fn a_bad_manifest_names_the_line_or_the_header() {
        let (_d, path) = manifest("path,db\na,b\n");
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("sqlite_path,database"), "{e}");
        let (_d, path) = manifest("sqlite_path,database\na.sqlite,x\nb.sqlite,X\n");
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("line 2"), "{e}");
        let (_d, path) = manifest("sqlite_path,database\na.sqlite,\n");
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let (_d, path) = manifest("sqlite_path,database\n");
        assert!(read_manifest(&path).is_err());
    }

    #[test]
    fn the_worst_line_decides_the_exit_status() {
        assert_eq!(worse(0, 3), 3);
        assert_eq!(worse(3, 1), 1);
        assert_eq!(worse(1, 3), 1);
        assert_eq!(worse(0, 0), 0);
    }
}
