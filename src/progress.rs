//! Progress: one bar per table in flight and an overall bar when stderr is a terminal, plain
//! periodic lines when it is not, nothing but errors when quiet. Stages only report counts here.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Prints a line without tearing the bars.
pub fn println(line: &str) {
    match BARS.get() {
        Some(bars) => {
            let _ = bars.println(line);
        }
        None => eprintln!("{line}"),
    }
}

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

/// The whole run's progress.
pub struct Progress {
    mode: Mode,
    overall: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(mode: Mode, total_rows: u64) -> Progress {
        let overall = (mode == Mode::Bars).then(|| {
            let bars =
                BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
            let bar = bars.add(ProgressBar::new(total_rows));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>20} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_prefix("all tables");
            bar
        });
        Progress {
            mode,
            overall,
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// A table starts; its rows are counted on the returned handle.
    pub fn table(&self, name: &str, rows: u64) -> TableProgress<'_> {
        let bar = self.overall.as_ref().map(|_| {
            let bar = BARS
                .get()
                .expect("bars")
                .insert_from_back(1, ProgressBar::new(rows));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>20} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_prefix(name.chars().take(20).collect::<String>());
            bar
        });
        TableProgress {
            progress: self,
            name: name.to_string(),
            rows,
            done: 0,
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
    rows: u64,
    done: u64,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl TableProgress<'_> {
    pub fn add(&mut self, rows: u64) {
        self.done += rows;
        if let Some(bar) = &self.bar {
            bar.inc(rows);
        }
        if let Some(bar) = &self.progress.overall {
            bar.inc(rows);
        }
        if self.progress.mode == Mode::Lines {
            let mut last = self.progress.last_line.lock().expect("progress lock");
            if last.elapsed() >= Duration::from_secs(2) {
                *last = Instant::now();
                drop(last);
                crate::log::info(&format!(
                    "{}: {}/{} rows ({:.0} rows/s)",
                    self.name,
                    self.done,
                    self.rows,
                    self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
                ));
            }
        }
    }
}

impl Drop for TableProgress<'_> {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.progress.mode == Mode::Lines {
            crate::log::info(&format!(
                "{}: {} rows in {:.2} s",
                self.name,
                self.done,
                self.started.elapsed().as_secs_f64()
            ));
        }
    }
}
