//! One run: what the configuration asks for (a copy either way, a validation, a sync or a dry
//! run) on one SQLite file and one D1 database, ending in a report and an exit status.

use std::time::Instant;

use crate::config::{Config, Direction, RunMode};
use crate::d1::D1Client;
use crate::error::{D1Error, Error};
use crate::progress::{Mode, Progress};
use crate::report::Report;
use crate::snapshot::Snapshot;
use crate::{discover, dryrun, log, migrate, remote, rollback, sides, sync, validate};

/// How a run ended: its report, and the error that stopped it, if any.
pub struct Outcome {
    pub report: Report,
    pub error: Option<Error>,
}

impl Outcome {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        match &self.error {
            Some(e) => e.exit_code(),
            None => 0,
        }
    }
}

/// Compares the SQLite file and the D1 database, source against target. Forward, D1 is
/// expected to hold every table of the source (a forward copy has completed, or a validation is
/// asked for after one), so its catalog is read with its counts and sampled rows, in one request
/// for a small database; should it lack a table or a column after all, D1 refuses that request
/// and validation reads the catalog first (one request more).
fn validation(config: &Config, client: &D1Client) -> Result<validate::Validation, Error> {
    if config.direction == Direction::SqliteToD1 {
        let sides = sides::Sides::unread(config, client)?;
        let (expected, sequence, statistics) = sides.catalog_wanted();
        let catalog = discover::first_queries(&expected, sequence, statistics);
        if catalog.len() <= remote::CATALOG_PER_REQUEST {
            let d1 = remote::D1Catalog(client);
            let discover = |rows| {
                let read = discover::Answered::new(&d1, catalog.clone(), rows);
                discover::discover_expecting(&read, &expected, sequence, statistics)
            };
            match validate::validate_along(
                sides.source(),
                sides.target(),
                &sides.source_schema,
                &catalog,
                &discover,
                sides::options(config, config.validate_all_rows),
                config.parallel_tables,
            ) {
                Err(e @ Error::D1(D1Error::Sql { .. })) => log::info(&format!(
                    "D1 refused validation's reads with its catalog ({e}): reading the catalog first"
                )),
                Err(e) if e.is_too_large() => log::info(&format!(
                    "validation's reads with D1's catalog were too large for one answer ({e}): \
                     reading the catalog first"
                )),
                done => return done,
            }
        }
    }
    let sides = sides::Sides::open(config, client)?;
    validate::validate(
        sides.source(),
        sides.target(),
        &sides.source_schema,
        &sides.target_schema,
        sides::options(config, config.validate_all_rows),
        config.parallel_tables,
    )
}

/// Sets the log level the configuration asks for.
pub fn set_log_level(config: &Config) {
    log::set_level(if config.quiet {
        log::Level::Error
    } else {
        config.log_level
    });
}

/// Runs what the configuration asks for and writes the report.
pub fn run(config: &Config) -> Outcome {
    set_log_level(config);
    let progress = Progress::new(Mode::detect(config.quiet), 0);
    let client = D1Client::new(config.endpoint.clone(), config.retry.clone());
    run_with(config, &client, &progress)
}

/// Runs one migration on `client`, counting on `progress` (a manifest runs many at once).
pub fn run_with(config: &Config, client: &D1Client, progress: &Progress) -> Outcome {
    let started = Instant::now();
    if config.direction == Direction::D1ToSqlite && config.transform.is_some() {
        log::warn("MIGRATION_TRANSFORM is ignored by a rollback: it writes what D1 holds");
    }
    let report = Report::new(config.direction_name(), config.mode_name());
    // Every run from SQLite (a copy, a sync, a validation, a dry run) reads one consistent copy
    // of the source (the application may still be writing it).
    let mut snapshot = None;
    let reading;
    let config = if config.direction == Direction::SqliteToD1 && config.snapshot {
        match Snapshot::take(&config.sqlite_path, &config.state_dir) {
            Ok(s) => {
                reading = config.reading(s.path());
                snapshot = Some(s);
                &reading
            }
            Err(e) => return finish(config, report, Err(e), client, started),
        }
    } else {
        config
    };
    let outcome = run_on(config, client, progress, report, started, || {
        snapshot.as_mut().map(Snapshot::finish)
    });
    drop(snapshot);
    outcome
}

/// [`run_with`] once the file to read is settled; `snapshot` completes the report's account of
/// the source's copy at the end.
fn run_on(
    config: &Config,
    client: &D1Client,
    progress: &Progress,
    mut report: Report,
    started: Instant,
    mut snapshot: impl FnMut() -> Option<crate::snapshot::SnapshotReport>,
) -> Outcome {
    if config.mode == RunMode::Sync {
        // A sync validates every row itself at its end; its dry run stops before writing.
        let result = sync::sync(config, client, progress, &mut report);
        progress.finish();
        report.source_snapshot = snapshot();
        return finish(config, report, result, client, started);
    }
    if config.dry_run {
        client.begin_phase("dry run");
        let result = dryrun::dry_run(config, client).and_then(|plan| {
            let ok = plan.would_succeed;
            report.dry_run = Some(plan);
            if ok {
                Ok(())
            } else {
                Err(Error::Refused(
                    "the dry run found problems the real run would not get past".into(),
                ))
            }
        });
        report.source_snapshot = snapshot();
        return finish(config, report, result, client, started);
    }
    let forward = config.direction == Direction::SqliteToD1 && config.mode == RunMode::Migrate;
    let validates = config.mode == RunMode::Validate || config.validate;
    let copied = match (config.direction, config.mode) {
        (_, RunMode::Validate | RunMode::Sync) => Ok(()),
        (Direction::SqliteToD1, RunMode::Migrate) => {
            client.begin_phase("forward");
            migrate::forward(config, client, progress, &mut report, validates)
        }
        (Direction::D1ToSqlite, RunMode::Migrate) => {
            client.begin_phase("rollback");
            rollback::rollback(config, client, progress, &mut report)
        }
    };
    let validate = |report: &mut Report| {
        client.begin_phase("validate");
        let validation = validation(config, client)?;
        let verdict = validation.verdict();
        report.validation = Some(validation);
        verdict
    };
    let result = copied.and_then(|()| {
        if !validates {
            return Ok(());
        }
        let verdict = validate(&mut report);
        if !(forward && report.already_complete && matches!(verdict, Err(Error::Differences(_)))) {
            return verdict;
        }
        // The checkpoint says the copy is complete and D1 differs: D1 is checked against the
        // checkpoint (tables gone, or holding fewer rows than it recorded, are copied again),
        // then validated again.
        log::warn(
            "the checkpoint says this migration is complete but D1 differs from the source: \
             checking D1 against the checkpoint, copying again what it lacks, and validating again",
        );
        report.already_complete = false;
        client.begin_phase("forward");
        migrate::forward(config, client, progress, &mut report, false)?;
        validate(&mut report)
    });
    progress.finish();
    report.source_snapshot = snapshot();
    finish(config, report, result, client, started)
}

/// Completes the report with the client's counters, writes it, and returns the outcome.
fn finish(
    config: &Config,
    mut report: Report,
    result: Result<(), Error>,
    client: &D1Client,
    started: Instant,
) -> Outcome {
    let counters = &client.counters;
    let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    report.http_requests = read(&counters.requests);
    report.retries = read(&counters.retries);
    report.bytes_sent = read(&counters.bytes_sent);
    report.d1_rows_read = read(&counters.rows_read);
    report.d1_rows_written = read(&counters.rows_written);
    report.bytes_received = read(&counters.bytes_received);
    report.rate_limit_wait_ms = client.rate_limit_wait().as_millis() as u64;
    report.writes_window_peak = client.window_peak();
    report.phases = client.phases.snapshot();
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.total();
    report.success = result.is_ok();
    let mut error = result.err();
    if let Some(e) = &error {
        report.error = Some(e.to_string());
    }
    if let Some(path) = &config.report {
        if let Err(e) = report.write(path) {
            error.get_or_insert(e);
        }
    }
    Outcome { report, error }
}
