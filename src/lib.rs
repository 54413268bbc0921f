//! d1-migrator: moves a whole SQLite database into Cloudflare D1 and back again, exactly.
//!
//! Stages, one module each: `discover` (catalog) → `plan` (load order) → `source` (reading
//! batches) → `pack` (rows to statements under D1's limits) → `d1` (HTTP with retries) →
//! `validate`. `migrate` wires the forward run, `rollback` the reverse one; `config` reads the
//! environment, `report` and `progress` tell what happened.
#![forbid(unsafe_code)]

pub mod config;
pub mod d1;
pub mod discover;
pub mod error;
pub mod fixture;
pub mod log;
pub mod migrate;
pub mod pack;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod report;
pub mod source;
pub mod value;

use std::time::Instant;

use config::{Config, Direction, RunMode};
use d1::D1Client;
use error::Error;
use progress::{Mode, Progress};
use report::Report;

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

/// Runs what the configuration asks for and writes the report.
pub fn run(config: &Config) -> Outcome {
    log::set_level(if config.quiet { log::Level::Error } else { config.log_level });
    let started = Instant::now();
    let direction = match config.direction {
        Direction::SqliteToD1 => "sqlite-to-d1",
        Direction::D1ToSqlite => "d1-to-sqlite",
    };
    let mode = match config.mode {
        RunMode::Migrate => "migrate",
        RunMode::Validate => "validate",
    };
    let mut report = Report::new(direction, mode);
    let progress = Progress::new(Mode::detect(config.quiet), 0);
    let client = D1Client::new(config.endpoint.clone(), config.retry.clone());
    let result = match (config.direction, config.mode) {
        (Direction::SqliteToD1, RunMode::Migrate) => migrate::forward(config, &client, &progress, &mut report),
        _ => Err(Error::Config(format!(
            "MIGRATION_DIRECTION={direction} with MIGRATION_MODE={mode} is not available yet"
        ))),
    };
    progress.finish();
    let counters = &client.counters;
    report.http_requests = counters.requests.load(std::sync::atomic::Ordering::Relaxed);
    report.retries = counters.retries.load(std::sync::atomic::Ordering::Relaxed);
    report.bytes_sent = counters.bytes_sent.load(std::sync::atomic::Ordering::Relaxed);
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
