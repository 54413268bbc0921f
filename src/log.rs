//! Log lines to stderr at the level `MIGRATION_LOG` sets (error, warn, info, debug).
//!
//! Stages call these functions and never print themselves; once the `progress` module draws bars
//! (on the one `MultiProgress` kept here), lines are printed above them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressDrawTarget};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The run's progress bars on stderr, made the first time they are asked for.
pub fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Prints a line without tearing the bars.
pub fn println(line: &str) {
    match BARS.get() {
        Some(bars) => {
            let _ = bars.println(line);
        }
        None => eprintln!("{line}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

fn emit(level: Level, tag: &str, message: &str) {
    if enabled(level) {
        println(&format!("{tag}{message}"));
    }
}

pub fn error(message: &str) {
    emit(Level::Error, "error: ", message);
}

pub fn warn(message: &str) {
    emit(Level::Warn, "warning: ", message);
}

pub fn info(message: &str) {
    emit(Level::Info, "", message);
}

pub fn debug(message: &str) {
    emit(Level::Debug, "debug: ", message);
}
