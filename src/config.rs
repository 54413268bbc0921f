//! Configuration in two phases: `envy` fills [`RawConfig`] from `MIGRATION_*` variables (plus
//! wrangler's `CLOUDFLARE_ACCOUNT_ID` / `CLOUDFLARE_API_TOKEN`), then [`Config::from_raw`]
//! validates every value and names the variable at fault. Stages never read the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::d1::{Endpoint, RetryPolicy, Secret};
use crate::error::{Error, Result};
use crate::log::Level;
use crate::pack::Limits;
use crate::transform::{Fts, Reshape, Transform};
use crate::wrangler;

pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";

/// Every variable, its meaning and default: the source of `--help` and of README's table.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    ("MIGRATION_SQLITE_PATH", "the SQLite file: the source (forward) or the file written (rollback)", "required"),
    ("CLOUDFLARE_ACCOUNT_ID", "Cloudflare account id, as wrangler reads it", "required"),
    ("CLOUDFLARE_API_TOKEN", "API token with D1 permissions, as wrangler reads it; never printed", "required"),
    ("MIGRATION_D1_DATABASE_ID", "the D1 database id (or name it with one of the next two)", "required"),
    ("D1_DATABASE_BINDING", "the database's binding in wrangler.json/jsonc/toml in the current folder", "none"),
    ("MIGRATION_D1_DATABASE", "the database's name (database_name) in wrangler.json/jsonc/toml", "none"),
    ("MIGRATION_D1_API_URL", "API base URL", DEFAULT_API_URL),
    ("MIGRATION_DIRECTION", "sqlite-to-d1, or d1-to-sqlite for a rollback", "sqlite-to-d1"),
    ("MIGRATION_ROLLBACK_MODE", "when the rollback's file exists: refuse, missing (add the rows it lacks) or replace (after a backup)", "refuse"),
    ("MIGRATION_MODE", "migrate (copy, then validate), validate (compare only, write nothing) or sync (write only what differs, then validate)", "migrate"),
    ("MIGRATION_SYNC_DELETE", "sync deletes the target's rows the source no longer has (otherwise they are listed and the run exits 3)", "false"),
    ("MIGRATION_METHOD", "how rows reach D1: query (HTTP requests to /raw) or import (SQL files through D1's import API, which blocks the database while each loads)", "query"),
    ("MIGRATION_IMPORT_MB", "size of each import file, megabytes (decimals allowed)", "50"),
    ("MIGRATION_BATCH_SIZE", "rows read from the source per batch", "1000"),
    ("MIGRATION_PARALLEL_TABLES", "tables worked on at once", "2"),
    ("MIGRATION_CONCURRENCY", "reads in flight at once (a validation's; a rollback's key segments and reads, twice as many), and threads decoding them", "8"),
    ("MIGRATION_WRITES_IN_FLIGHT", "most write requests in flight at once: the ceiling of the adaptive window, which keeps fewer while they keep D1 busy (more when answers are slow to arrive but quick to execute)", "16"),
    ("MIGRATION_REQUEST_BYTES", "target bytes of SQL per HTTP request", "1048576"),
    ("MIGRATION_TIMEOUT", "per-request timeout, milliseconds", "60000"),
    ("MIGRATION_MAX_RETRIES", "retries of one request before the run stops", "8"),
    ("MIGRATION_RATE_LIMIT", "requests allowed per rate window (Cloudflare allows 1200 per 5 minutes per token); 0 for no limit", "1100"),
    ("MIGRATION_RATE_WINDOW", "seconds of the window MIGRATION_RATE_LIMIT counts in (Cloudflare's is 300; shorter only to test the limit)", "300"),
    ("MIGRATION_TABLES", "comma-separated tables to copy", "all"),
    ("MIGRATION_EXCLUDE_TABLES", "comma-separated tables to leave out", "none"),
    ("MIGRATION_DRY_RUN", "do everything short of writing; print the plan and D1-compatibility findings", "false"),
    ("MIGRATION_VALIDATE", "validate after migrating", "true"),
    ("MIGRATION_VALIDATE_ALL_ROWS", "compare every row, not only counts and samples", "false"),
    ("MIGRATION_SAMPLE_SIZE", "rows sampled per table by validation", "100"),
    ("MIGRATION_SAMPLE_SEED", "seed choosing the sampled rows", "0"),
    ("MIGRATION_REPORT", "path of a JSON report of the run", "none"),
    ("MIGRATION_STATE_DIR", "folder of the checkpoints (one per migration) that let a stopped run resume", "d1-migrator-state"),
    ("MIGRATION_SNAPSHOT", "a run from SQLite (copy, sync, validation, dry run) first copies the source in one read transaction (SQLite's backup API, into the state folder) and reads only that copy, so an application writing the file meanwhile cannot tear it or lock the run out; false reads the file itself (no extra disk, but it must not change during the run)", "true"),
    ("MIGRATION_ON_BAD_ROW", "a row D1 rejects: fail (stop, naming it) or skip (to the reject file)", "fail"),
    ("MIGRATION_CONTINUE_ON_ERROR", "skip bad rows and go on with other tables when one fails", "false"),
    ("MIGRATION_REJECT_FILE", "JSON lines of rejected rows: table, key, reason, re-insertable SQL", "<state dir>/rejected-rows.jsonl"),
    ("MIGRATION_TRANSFORM", "a TOML file of transforms: rename tables and columns, drop columns, computed columns, row filters (README: Transforms)", "none"),
    ("MIGRATION_FTS", "FTS3/FTS4 tables, which D1 refuses: refuse (naming them), or convert (recreated as FTS5, same name, columns and rowids)", "refuse"),
    ("MIGRATION_MANIFEST", "CSV of many migrations (sqlite_path,database[,transform]), run with these settings; replaces MIGRATION_SQLITE_PATH and the database", "none"),
    ("MIGRATION_PARALLEL_DATABASES", "manifest lines migrated at once (one rate limit for all)", "4"),
    ("MIGRATION_CREATE_DATABASES", "create the manifest's databases D1 lacks (by name)", "false"),
    ("MIGRATION_D1_LOCATION", "location hint for databases created (wnam, enam, weur, eeur, apac, oc)", "none"),
    ("MIGRATION_FAIL_FAST", "stop starting manifest lines once one fails", "false"),
    ("MIGRATION_LOG", "error, warn, info or debug, to stderr", "info"),
    ("MIGRATION_QUIET", "print nothing but errors", "false"),
];

/// `MIGRATION_D1_API_URL` as the API's base: a trailing `/` is dropped, and a URL of a host
/// alone gets Cloudflare's `/client/v4` (`https://api.cloudflare.com` means the API). A URL
/// that goes on into `/accounts/...` is refused, naming the variable.
fn api_base(url: &str) -> Result<String> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(Error::Config(format!(
            "MIGRATION_D1_API_URL must start with http:// or https://, got {url:?}"
        )));
    };
    let trimmed = url.trim_end_matches('/');
    let path = rest
        .find('/')
        .map_or("", |at| &rest[at..])
        .trim_end_matches('/');
    if path.is_empty() {
        return Ok(format!("{trimmed}/client/v4"));
    }
    if path.to_ascii_lowercase().contains("/accounts") {
        return Err(Error::Config(format!(
            "MIGRATION_D1_API_URL is the API's base, as {DEFAULT_API_URL}, without /accounts/... \
             (the account is CLOUDFLARE_ACCOUNT_ID, the database MIGRATION_D1_DATABASE_ID); got {url:?}"
        )));
    }
    Ok(trimmed.to_string())
}

/// `MIGRATION_REPORT`, refused before the run when its folder does not exist (the report is
/// written at the end: the run would otherwise do all its work and then fail).
fn report_path(value: Option<String>) -> Result<Option<PathBuf>> {
    let Some(path) = value.filter(|r| !r.is_empty()).map(PathBuf::from) else {
        return Ok(None);
    };
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() && !folder.is_dir() => {
            Err(Error::Config(format!(
                "MIGRATION_REPORT {}: its folder {} does not exist",
                path.display(),
                folder.display()
            )))
        }
        _ => Ok(Some(path)),
    }
}

/// The variables as read, unvalidated.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    sqlite_path: Option<String>,
    d1_database_id: Option<String>,
    d1_database: Option<String>,
    d1_api_url: Option<String>,
    direction: Option<String>,
    rollback_mode: Option<String>,
    mode: Option<String>,
    sync_delete: Option<String>,
    method: Option<String>,
    import_mb: Option<String>,
    batch_size: Option<String>,
    parallel_tables: Option<String>,
    concurrency: Option<String>,
    writes_in_flight: Option<String>,
    request_bytes: Option<String>,
    timeout: Option<String>,
    max_retries: Option<String>,
    rate_limit: Option<String>,
    rate_window: Option<String>,
    tables: Option<String>,
    exclude_tables: Option<String>,
    validate: Option<String>,
    dry_run: Option<String>,
    validate_all_rows: Option<String>,
    sample_size: Option<String>,
    sample_seed: Option<String>,
    report: Option<String>,
    state_dir: Option<String>,
    on_bad_row: Option<String>,
    continue_on_error: Option<String>,
    reject_file: Option<String>,
    transform: Option<String>,
    fts: Option<String>,
    log: Option<String>,
    quiet: Option<String>,
    manifest: Option<String>,
    parallel_databases: Option<String>,
    create_databases: Option<String>,
    d1_location: Option<String>,
    fail_fast: Option<String>,
    snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Direction {
    SqliteToD1,
    D1ToSqlite,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunMode {
    Migrate,
    Validate,
    /// Bring the target level with the source, writing only what differs.
    Sync,
}

/// How rows reach D1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// HTTP requests to `/raw`.
    Query,
    /// SQL files through D1's import API (init, upload, ingest, poll), each atomic.
    Import,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BadRow {
    Fail,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RollbackMode {
    Refuse,
    Missing,
    Replace,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub sqlite_path: PathBuf,
    pub endpoint: Endpoint,
    pub direction: Direction,
    pub rollback_mode: RollbackMode,
    pub mode: RunMode,
    /// Sync deletes the rows only the target holds.
    pub sync_delete: bool,
    pub method: Method,
    /// Bytes of SQL per import file (`MIGRATION_IMPORT_MB`).
    pub import_bytes: usize,
    pub batch_size: usize,
    pub parallel_tables: usize,
    pub concurrency: usize,
    /// Senders of writes, the ceiling of the adaptive window (`MIGRATION_WRITES_IN_FLIGHT`).
    pub writes_in_flight: usize,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub tables: Vec<String>,
    pub exclude_tables: Vec<String>,
    pub validate: bool,
    pub dry_run: bool,
    pub validate_all_rows: bool,
    pub sample_size: usize,
    pub sample_seed: u64,
    pub report: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub on_bad_row: BadRow,
    pub continue_on_error: bool,
    pub reject_file: PathBuf,
    /// The parsed `MIGRATION_TRANSFORM` file (forward runs only).
    pub transform: Option<Transform>,
    pub fts: Fts,
    pub log_level: Level,
    pub quiet: bool,
    /// Many migrations, one per line of this CSV file (`fleet`).
    pub manifest: Option<PathBuf>,
    pub parallel_databases: usize,
    pub create_databases: bool,
    pub d1_location: Option<String>,
    pub fail_fast: bool,
    /// Copy the source into one consistent snapshot before reading it (`MIGRATION_SNAPSHOT`).
    pub snapshot: bool,
    /// The file a forward run reads when it is not `sqlite_path` itself: the snapshot taken
    /// for the run (`run`). `sqlite_path` still names the migration (its checkpoint).
    pub read_path: Option<PathBuf>,
    /// Set by a manifest run for a database it has just created: known empty, so the forward run
    /// reads no catalog and takes no Time Travel bookmark. Never read from the environment.
    pub created_database: bool,
}

impl Config {
    /// This configuration, reading `file` in place of the source (its snapshot).
    pub fn reading(&self, file: &Path) -> Config {
        Config {
            read_path: Some(file.to_path_buf()),
            ..self.clone()
        }
    }

    /// The SQLite file a forward run reads: the run's snapshot of the source, or the source.
    pub fn source_file(&self) -> &Path {
        self.read_path.as_deref().unwrap_or(&self.sqlite_path)
    }

    /// The direction as reports name it.
    pub fn direction_name(&self) -> &'static str {
        match self.direction {
            Direction::SqliteToD1 => "sqlite-to-d1",
            Direction::D1ToSqlite => "d1-to-sqlite",
        }
    }

    /// The mode as reports name it; a dry run of any mode is `dry-run`.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            _ if self.dry_run => "dry-run",
            RunMode::Migrate => "migrate",
            RunMode::Validate => "validate",
            RunMode::Sync => "sync",
        }
    }

    /// The run as a person names it in a headline: dry run, sync, validation, rollback, migration.
    pub fn run_name(&self) -> &'static str {
        match self.mode {
            _ if self.dry_run => "dry run",
            RunMode::Sync => "sync",
            RunMode::Validate => "validation",
            RunMode::Migrate if self.direction == Direction::D1ToSqlite => "rollback",
            RunMode::Migrate => "migration",
        }
    }

    /// What the source goes through on its way to D1: transform, FTS conversion, selection.
    pub fn reshape(&self) -> Reshape<'_> {
        Reshape {
            transform: self.transform.as_ref(),
            fts: self.fts,
            tables: &self.tables,
            exclude_tables: &self.exclude_tables,
        }
    }

    /// Reads the configuration from `(name, value)` pairs (the process environment in `main`);
    /// a database named rather than given by id is looked up in the current folder's wrangler
    /// configuration.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Config> {
        Config::from_vars_in(vars, Path::new("."))
    }

    /// As [`Config::from_vars`], with the wrangler configuration looked up in `dir`.
    pub fn from_vars_in<I: IntoIterator<Item = (String, String)>>(
        vars: I,
        dir: &Path,
    ) -> Result<Config> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let raw: RawConfig = envy::prefixed("MIGRATION_")
            .from_iter(
                vars.iter()
                    .filter(|(k, _)| k.starts_with("MIGRATION_"))
                    .cloned(),
            )
            .map_err(|e| Error::Config(envy_message(e)))?;
        let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut raw = raw;
        if raw.d1_database_id.is_none() {
            let binding = get("D1_DATABASE_BINDING").filter(|b| !b.is_empty());
            raw.d1_database_id = match (binding, raw.d1_database.as_deref()) {
                (Some(b), _) => Some(wrangler::resolve(dir, wrangler::By::Binding(&b))?),
                (None, Some(n)) => Some(wrangler::resolve(dir, wrangler::By::Name(n))?),
                (None, None) => None,
            };
        }
        Config::from_raw(
            raw,
            get("CLOUDFLARE_ACCOUNT_ID"),
            get("CLOUDFLARE_API_TOKEN"),
        )
    }

    pub fn from_raw(
        raw: RawConfig,
        account: Option<String>,
        token: Option<String>,
    ) -> Result<Config> {
        let required = |value: Option<String>, name: &str| {
            value
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| Error::Config(format!("{name} is required")))
        };
        let manifest = raw
            .manifest
            .filter(|m| !m.trim().is_empty())
            .map(PathBuf::from);
        // With a manifest, each line names its file and database.
        let (sqlite_path, database_id) = match &manifest {
            Some(_) => {
                let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
                if given(&raw.sqlite_path) || given(&raw.d1_database_id) {
                    return Err(Error::Config(
                        "MIGRATION_MANIFEST names a file and a database on each line; leave \
                         MIGRATION_SQLITE_PATH and the database (MIGRATION_D1_DATABASE_ID, \
                         MIGRATION_D1_DATABASE, D1_DATABASE_BINDING) unset with it"
                            .into(),
                    ));
                }
                (PathBuf::new(), String::new())
            }
            None => (
                PathBuf::from(required(raw.sqlite_path, "MIGRATION_SQLITE_PATH")?),
                required(raw.d1_database_id, "MIGRATION_D1_DATABASE_ID")?,
            ),
        };
        let d1_location = raw.d1_location.filter(|l| !l.trim().is_empty());
        if let Some(l) = &d1_location {
            const HINTS: &[&str] = &["wnam", "enam", "weur", "eeur", "apac", "oc"];
            if !HINTS.contains(&l.as_str()) {
                return Err(Error::Config(format!(
                    "MIGRATION_D1_LOCATION must be one of {}, got {l:?}",
                    HINTS.join(", ")
                )));
            }
        }
        let account_id = required(account, "CLOUDFLARE_ACCOUNT_ID")?;
        let token = required(token, "CLOUDFLARE_API_TOKEN")?;
        let api_url = raw
            .d1_api_url
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let api_url = api_base(&api_url)?;
        let direction = choice(
            raw.direction,
            "MIGRATION_DIRECTION",
            &[
                ("sqlite-to-d1", Direction::SqliteToD1),
                ("d1-to-sqlite", Direction::D1ToSqlite),
            ],
        )?;
        let rollback_mode = choice(
            raw.rollback_mode,
            "MIGRATION_ROLLBACK_MODE",
            &[
                ("refuse", RollbackMode::Refuse),
                ("missing", RollbackMode::Missing),
                ("replace", RollbackMode::Replace),
            ],
        )?;
        let mode = choice(
            raw.mode,
            "MIGRATION_MODE",
            &[
                ("migrate", RunMode::Migrate),
                ("validate", RunMode::Validate),
                ("sync", RunMode::Sync),
            ],
        )?;
        let log_level = choice(
            raw.log,
            "MIGRATION_LOG",
            &[
                ("info", Level::Info),
                ("error", Level::Error),
                ("warn", Level::Warn),
                ("debug", Level::Debug),
            ],
        )?;
        let state_dir = PathBuf::from(raw.state_dir.unwrap_or_else(|| "d1-migrator-state".into()));
        let continue_on_error =
            boolean(raw.continue_on_error, "MIGRATION_CONTINUE_ON_ERROR", false)?;
        let on_bad_row = choice(
            raw.on_bad_row,
            "MIGRATION_ON_BAD_ROW",
            &[("fail", BadRow::Fail), ("skip", BadRow::Skip)],
        )?;
        let request_bytes = number(
            raw.request_bytes,
            "MIGRATION_REQUEST_BYTES",
            1 << 20,
            100_000,
            100 << 20,
        )?;
        let concurrency = number(raw.concurrency, "MIGRATION_CONCURRENCY", 8, 1, 64)?;
        let writes_in_flight = number(
            raw.writes_in_flight,
            "MIGRATION_WRITES_IN_FLIGHT",
            16,
            1,
            64,
        )?;
        Ok(Config {
            sqlite_path,
            endpoint: Endpoint {
                api_url,
                account_id,
                database_id,
                token: Secret::new(token),
            },
            direction,
            rollback_mode,
            mode,
            sync_delete: boolean(raw.sync_delete, "MIGRATION_SYNC_DELETE", false)?,
            method: choice(
                raw.method,
                "MIGRATION_METHOD",
                &[("query", Method::Query), ("import", Method::Import)],
            )?,
            import_bytes: megabytes(raw.import_mb, "MIGRATION_IMPORT_MB", 50.0)?,
            batch_size: number(raw.batch_size, "MIGRATION_BATCH_SIZE", 1000, 1, 1_000_000)?,
            parallel_tables: number(raw.parallel_tables, "MIGRATION_PARALLEL_TABLES", 2, 1, 64)?,
            concurrency,
            writes_in_flight,
            limits: Limits {
                request_bytes,
                ..Limits::default()
            },
            retry: RetryPolicy {
                max_retries: number(raw.max_retries, "MIGRATION_MAX_RETRIES", 8, 0, 100)? as u32,
                timeout: Duration::from_millis(number(
                    raw.timeout,
                    "MIGRATION_TIMEOUT",
                    60_000,
                    100,
                    3_600_000,
                )? as u64),
                rate_limit: number(raw.rate_limit, "MIGRATION_RATE_LIMIT", 1100, 0, 1_000_000)?,
                rate_window: Duration::from_secs(number(
                    raw.rate_window,
                    "MIGRATION_RATE_WINDOW",
                    300,
                    1,
                    3600,
                )? as u64),
                max_in_flight: writes_in_flight,
                ..RetryPolicy::default()
            },
            tables: list(raw.tables),
            exclude_tables: list(raw.exclude_tables),
            validate: boolean(raw.validate, "MIGRATION_VALIDATE", true)?,
            dry_run: boolean(raw.dry_run, "MIGRATION_DRY_RUN", false)?,
            validate_all_rows: boolean(
                raw.validate_all_rows,
                "MIGRATION_VALIDATE_ALL_ROWS",
                false,
            )?,
            sample_size: number(raw.sample_size, "MIGRATION_SAMPLE_SIZE", 100, 0, 10_000_000)?,
            sample_seed: number(raw.sample_seed, "MIGRATION_SAMPLE_SEED", 0, 0, usize::MAX)? as u64,
            report: report_path(raw.report)?,
            reject_file: raw
                .reject_file
                .map(PathBuf::from)
                .unwrap_or_else(|| state_dir.join("rejected-rows.jsonl")),
            state_dir,
            on_bad_row: if continue_on_error {
                BadRow::Skip
            } else {
                on_bad_row
            },
            continue_on_error,
            transform: raw
                .transform
                .filter(|t| !t.trim().is_empty())
                .map(|t| Transform::load(Path::new(&t)))
                .transpose()?,
            fts: choice(
                raw.fts,
                "MIGRATION_FTS",
                &[("refuse", Fts::Refuse), ("convert", Fts::Convert)],
            )?,
            log_level,
            quiet: boolean(raw.quiet, "MIGRATION_QUIET", false)?,
            manifest,
            parallel_databases: number(
                raw.parallel_databases,
                "MIGRATION_PARALLEL_DATABASES",
                4,
                1,
                256,
            )?,
            create_databases: boolean(raw.create_databases, "MIGRATION_CREATE_DATABASES", false)?,
            d1_location,
            fail_fast: boolean(raw.fail_fast, "MIGRATION_FAIL_FAST", false)?,
            snapshot: boolean(raw.snapshot, "MIGRATION_SNAPSHOT", true)?,
            read_path: None,
            created_database: false,
        })
    }
}

fn envy_message(e: envy::Error) -> String {
    let text = e.to_string();
    // serde says: unknown field `foo`, expected one of `a`, `b`
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return format!(
            "unknown variable MIGRATION_{}; `d1-migrator --help` lists the variables",
            name.to_uppercase()
        );
    }
    text
}

fn number(
    value: Option<String>,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize> {
    let Some(text) = value else {
        return Ok(default);
    };
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{name} must be a whole number, got {text:?}")))?;
    if n < min || n > max {
        return Err(Error::Config(format!(
            "{name} must be between {min} and {max}, got {n}"
        )));
    }
    Ok(n)
}

fn boolean(value: Option<String>, name: &str, default: bool) -> Result<bool> {
    match value.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => Err(Error::Config(format!(
            "{name} must be true or false, got {v:?}"
        ))),
    }
}

/// Megabytes (decimals allowed) as bytes, from 0.01 MB to D1's 5 GB import limit.
fn megabytes(value: Option<String>, name: &str, default: f64) -> Result<usize> {
    let mb = match value {
        None => default,
        Some(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|mb| (0.01..=5000.0).contains(mb))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{name} must be a number of megabytes from 0.01 to 5000, got {text:?}"
                ))
            })?,
    };
    Ok((mb * 1e6) as usize)
}

fn choice<T: Copy>(value: Option<String>, name: &str, options: &[(&str, T)]) -> Result<T> {
    let Some(text) = value else {
        return Ok(options[0].1);
    };
    options
        .iter()
        .find(|(o, _)| o.eq_ignore_ascii_case(text.trim()))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(o, _)| *o).collect();
            Error::Config(format!(
                "{name} must be one of {}, got {text:?}",
                names.join(", ")
            ))
        })
}

fn list(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("MIGRATION_SQLITE_PATH", "db.sqlite"),
            ("MIGRATION_D1_DATABASE_ID", "db-id"),
            ("CLOUDFLARE_ACCOUNT_ID", "acc"),
            ("CLOUDFLARE_API_TOKEN", "tok-123"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    }

    fn error(extra: &[(&str, &str)]) -> String {
        Config::from_vars(vars(extra)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(c.batch_size, 1000);
        assert_eq!(c.endpoint.api_url, DEFAULT_API_URL);
        assert_eq!(c.retry.timeout, Duration::from_secs(60));
        assert_eq!(c.direction, Direction::SqliteToD1);
        assert!(c.validate);
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        // Setting each variable to the default --help and the README give changes nothing.
        let documented: Vec<(&str, &str)> = VARIABLES
            .iter()
            .filter(|(_, _, d)| !["required", "none", "all"].contains(d) && !d.starts_with('<'))
            .map(|&(name, _, default)| (name, default))
            .collect();
        assert!(documented.len() > 20);
        let defaults = format!("{:?}", Config::from_vars(vars(&[])).unwrap());
        for (name, default) in documented {
            let set = format!("{:?}", Config::from_vars(vars(&[(name, default)])).unwrap());
            assert_eq!(set, defaults, "{name}={default}");
        }
    }

    #[test]
    fn the_api_url_is_read_as_the_apis_base() {
        let url = |u: &str| {
            Config::from_vars(vars(&[("MIGRATION_D1_API_URL", u)]))
                .map(|c| c.endpoint.api_url)
                .map_err(|e| e.to_string())
        };
        let v4 = "https://api.cloudflare.com/client/v4";
        assert_eq!(url("https://api.cloudflare.com").unwrap(), v4);
        assert_eq!(url("https://api.cloudflare.com/").unwrap(), v4);
        assert_eq!(url("https://api.cloudflare.com/client/v4/").unwrap(), v4);
        assert_eq!(
            url("http://127.0.0.1:8787/client/v4").unwrap(),
            "http://127.0.0.1:8787/client/v4"
        );
        assert_eq!(
            url("http://proxy.local/d1-api/").unwrap(),
            "http://proxy.local/d1-api"
        );
        let e = url("https://api.cloudflare.com/client/v4/accounts/abc/d1/database").unwrap_err();
        assert!(
            e.contains("MIGRATION_D1_API_URL") && e.contains("/accounts"),
            "{e}"
        );
        assert!(url("api.cloudflare.com")
            .unwrap_err()
            .contains("MIGRATION_D1_API_URL"));
    }

    #[test]
    fn a_report_in_a_folder_that_does_not_exist_is_refused_before_the_run() {
        let e = error(&[("MIGRATION_REPORT", "/nonexistent-folder/report.json")]);
        assert!(
            e.contains("MIGRATION_REPORT") && e.contains("does not exist"),
            "{e}"
        );
        let c = Config::from_vars(vars(&[("MIGRATION_REPORT", "report.json")])).unwrap();
        assert_eq!(c.report, Some(PathBuf::from("report.json")));
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert!(error(&[("MIGRATION_BATCH_SIZE", "abc")]).contains("MIGRATION_BATCH_SIZE"));
        assert!(error(&[("MIGRATION_BATCH_SIZE", "0")]).contains("between 1"));
        assert!(error(&[("MIGRATION_VALIDATE", "maybe")]).contains("MIGRATION_VALIDATE"));
        assert!(error(&[("MIGRATION_DIRECTION", "up")]).contains("MIGRATION_DIRECTION"));
        assert!(error(&[("MIGRATION_D1_API_URL", "ftp://x")]).contains("MIGRATION_D1_API_URL"));
    }

    #[test]
    fn unknown_variables_are_refused() {
        // A misspelt variable (written in two parts, so no tool takes it for a real one).
        let misspelt = format!("MIGRATION_{}", "BATCHSIZE");
        let e = error(&[(misspelt.as_str(), "10")]);
        assert!(e.contains(&format!("unknown variable {misspelt}")), "{e}");
    }

    #[test]
    fn missing_required_variables_are_named() {
        let v: Vec<(String, String)> = vars(&[])
            .into_iter()
            .filter(|(k, _)| k != "CLOUDFLARE_API_TOKEN")
            .collect();
        let e = Config::from_vars(v).unwrap_err().to_string();
        assert!(e.contains("CLOUDFLARE_API_TOKEN is required"), "{e}");
    }

    #[test]
    fn a_database_named_by_binding_or_name_is_resolved_from_wrangler_toml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("wrangler.toml"),
            "[[d1_databases]]\nbinding = \"DB\"\ndatabase_name = \"prod\"\ndatabase_id = \"abc-123\"\n",
        )
        .unwrap();
        let without_id = || {
            vars(&[])
                .into_iter()
                .filter(|(k, _)| k != "MIGRATION_D1_DATABASE_ID")
        };
        let mut by_binding: Vec<(String, String)> = without_id().collect();
        by_binding.push(("D1_DATABASE_BINDING".into(), "DB".into()));
        assert_eq!(
            Config::from_vars_in(by_binding, dir.path())
                .unwrap()
                .endpoint
                .database_id,
            "abc-123"
        );
        let mut by_name: Vec<(String, String)> = without_id().collect();
        by_name.push(("MIGRATION_D1_DATABASE".into(), "prod".into()));
        assert_eq!(
            Config::from_vars_in(by_name, dir.path())
                .unwrap()
                .endpoint
                .database_id,
            "abc-123"
        );
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let c = Config::from_vars(vars(&[])).unwrap();
        assert!(!format!("{c:?}").contains("tok-123"));
    }
}
