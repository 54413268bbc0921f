//! Log lines to stderr at the level `MIGRATION_LOG` sets (error, warn, info, debug).
//!
//! Stages call these functions and never print themselves; the `progress` module routes the lines
//! around its bars when bars are shown.

use std::sync::atomic::{AtomicU8, Ordering};

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
        crate::progress::println(&format!("{tag}{message}"));
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
