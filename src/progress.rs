//! Progress: one bar per table in flight and an overall bar when stderr is a terminal, plain
//! periodic lines when it is not, nothing but errors when quiet. Stages only report counts here.
//! Every bar and line names the pass it belongs to (a table is worked on in up to two passes),
//! and rates read as whole rows per second and megabytes per second.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Mode {
    /// Bars on a terminal, lines elsewhere, nothing when quiet.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// Which pass over a table a bar or line belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// The rows themselves (the only pass of most tables).
    Data,
    /// Foreign keys loaded NULL and set once every row is in.
    DeferredKeys,
    /// Values too large for one statement, appended in pieces.
    LargeValues,
    /// A virtual (FTS5, R*Tree) table filled after the ordinary tables.
    VirtualRefill,
    /// A sync's writes: the rows that differ.
    Differences,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::DeferredKeys => "keys set after the data",
            Stage::LargeValues => "large values",
            Stage::VirtualRefill => "virtual-table refill",
            Stage::Differences => "differences",
        }
    }

    /// What the pass does to each row it counts.
    fn verb(self) -> &'static str {
        match self {
            Stage::Data | Stage::VirtualRefill => "copied",
            Stage::DeferredKeys => "with keys set",
            Stage::LargeValues => "completed",
            Stage::Differences => "written",
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    HumanCount(n).to_string()
}

/// A whole number of rows per second: `248,528 rows/s`.
pub fn rows_rate(rows: u64, elapsed: Duration) -> String {
    let per_sec = rows as f64 / elapsed.as_secs_f64().max(1e-3);
    format!("{} rows/s", count(per_sec.round() as u64))
}

/// Bytes per second in megabytes (10^6 bytes): `12.4 MB/s`.
pub fn bytes_rate(bytes: u64, elapsed: Duration) -> String {
    let per_sec = bytes as f64 / elapsed.as_secs_f64().max(1e-3);
    format!("{:.1} MB/s", per_sec / 1e6)
}

/// A bar's style: rows done of the total, whole rows per second, megabytes per second of the
/// bytes counted in `bytes`.
fn style(bytes: Arc<AtomicU64>) -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>20} {msg:<8} [{bar:30}] {pos}/{len} rows {rows_rate} {bytes_rate} eta {eta}",
    )
    .expect("template")
    .with_key(
        "rows_rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&rows_rate(state.pos(), state.elapsed()));
        },
    )
    .with_key(
        "bytes_rate",
        move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let bytes = bytes.load(Ordering::Relaxed);
            if bytes > 0 {
                let _ = w.write_str(&bytes_rate(bytes, state.elapsed()));
            }
        },
    )
    .progress_chars("=> ")
}

/// The whole run's progress.
pub struct Progress {
    mode: Mode,
    overall: Option<ProgressBar>,
    bytes: Arc<AtomicU64>,
    /// Rows of data counted, shared with whoever shows them (a manifest's one display).
    rows: Arc<AtomicU64>,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(mode: Mode, total_rows: u64) -> Progress {
        let bytes = Arc::new(AtomicU64::new(0));
        let overall = (mode == Mode::Bars).then(|| {
            let bar = crate::log::bars().add(ProgressBar::new(total_rows));
            bar.set_style(style(bytes.clone()));
            bar.set_prefix("all tables");
            bar
        });
        Progress {
            mode,
            overall,
            bytes,
            rows: Arc::new(AtomicU64::new(0)),
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// Shows nothing, and counts the rows of data into `rows`: one migration of many, whose
    /// progress a manifest's one display sums.
    pub fn counting(rows: Arc<AtomicU64>) -> Progress {
        Progress {
            rows,
            ..Progress::new(Mode::Quiet, 0)
        }
    }

    /// A table's data pass starts; its rows are counted on the returned handle.
    pub fn table(&self, name: &str, rows: u64) -> TableProgress<'_> {
        self.pass(name, Stage::Data, rows)
    }

    /// A pass over a table starts; its rows (`rows` expected, 0 when unknown) are counted on
    /// the returned handle.
    pub fn pass(&self, name: &str, stage: Stage, rows: u64) -> TableProgress<'_> {
        let bytes = Arc::new(AtomicU64::new(0));
        let bar = self.overall.as_ref().map(|_| {
            let bar = ProgressBar::new(rows)
                .with_style(style(bytes.clone()))
                .with_prefix(name.chars().take(20).collect::<String>())
                .with_message(match stage {
                    Stage::Data => "data",
                    Stage::DeferredKeys => "keys",
                    Stage::LargeValues => "large",
                    Stage::VirtualRefill => "refill",
                    Stage::Differences => "sync",
                });
            crate::log::bars().insert_from_back(1, bar)
        });
        TableProgress {
            progress: self,
            name: name.to_string(),
            stage,
            rows,
            done: 0,
            bytes,
            started: Instant::now(),
            bar,
        }
    }

    /// Sets the number of rows the whole run will copy.
    pub fn set_total(&self, rows: u64) {
        if let Some(bar) = &self.overall {
            bar.set_length(rows);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
    }
}

pub struct TableProgress<'a> {
    progress: &'a Progress,
    name: String,
    stage: Stage,
    rows: u64,
    done: u64,
    bytes: Arc<AtomicU64>,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl TableProgress<'_> {
    /// Counts rows done by this pass.
    pub fn add(&mut self, rows: u64) {
        self.done += rows;
        // A pass that does not count the rows it will do ahead grows its total as it goes.
        if self.done > self.rows {
            self.rows = self.done;
            if let Some(bar) = &self.bar {
                bar.set_length(self.rows);
            }
        }
        if let Some(bar) = &self.bar {
            bar.inc(rows);
        }
        // Only the data of a table counts towards the whole run's total.
        if matches!(self.stage, Stage::Data | Stage::VirtualRefill) {
            self.progress.rows.fetch_add(rows, Ordering::Relaxed);
            if let Some(bar) = &self.progress.overall {
                bar.inc(rows);
            }
        }
        if self.progress.mode == Mode::Lines {
            let mut last = self.progress.last_line.lock().expect("progress lock");
            if last.elapsed() >= Duration::from_secs(2) {
                *last = Instant::now();
                drop(last);
                crate::log::info(&format!(
                    "{} ({}): {}/{} rows, {}{}",
                    self.name,
                    self.stage.label(),
                    count(self.done),
                    count(self.rows),
                    rows_rate(self.done, self.started.elapsed()),
                    self.bytes_part()
                ));
            }
        }
    }

    /// Counts bytes sent or written by this pass.
    pub fn add_bytes(&mut self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn bytes_part(&self) -> String {
        match self.bytes.load(Ordering::Relaxed) {
            0 => String::new(),
            b => format!(", {}", bytes_rate(b, self.started.elapsed())),
        }
    }

    /// The line that closes a pass: `orders (data): 2,453 rows copied in 0.52 s (4,717 rows/s,
    /// 1.2 MB/s)`.
    pub fn summary(&self) -> String {
        let elapsed = self.started.elapsed();
        format!(
            "{} ({}): {} rows {} in {:.2} s ({}{})",
            self.name,
            self.stage.label(),
            count(self.done),
            self.stage.verb(),
            elapsed.as_secs_f64(),
            rows_rate(self.done, elapsed),
            self.bytes_part()
        )
    }
}

impl Drop for TableProgress<'_> {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.progress.mode == Mode::Lines {
            crate::log::info(&self.summary());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_whole_units() {
        let second = Duration::from_secs(1);
        assert_eq!(rows_rate(248_528, second), "248,528 rows/s");
        // Regression: the bars showed `248,528.2973/s`.
        assert_eq!(
            rows_rate(248_528_297, Duration::from_secs(1_000)),
            "248,528 rows/s"
        );
        assert_eq!(bytes_rate(12_400_000, second), "12.4 MB/s");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn a_line_names_its_pass() {
        let progress = Progress::new(Mode::Quiet, 0);
        let mut keys = progress.pass("customers", Stage::DeferredKeys, 0);
        keys.add(120);
        let line = keys.summary();
        assert!(
            line.starts_with("customers (keys set after the data): 120 rows with keys set in "),
            "{line}"
        );
        let mut data = progress.table("orders", 2453);
        data.add(2453);
        data.add_bytes(3_000_000);
        let line = data.summary();
        assert!(
            line.starts_with("orders (data): 2,453 rows copied in "),
            "{line}"
        );
        assert!(
            line.contains(" rows/s, ") && line.ends_with(" MB/s)"),
            "{line}"
        );
    }
}
