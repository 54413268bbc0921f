//! The `d1-migrator` command: reads the configuration from the environment, runs, and maps the
//! outcome to an exit status (0 success, 1 failure, 2 bad configuration or input, 3 differences).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use d1_migrator::config::{Config, VARIABLES};
use d1_migrator::{fixture, fleet, run, set_log_level};

#[derive(Parser)]
#[command(version, about = "Moves a whole SQLite database into Cloudflare D1 and back again, exactly.",
    after_help = variables_help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Writes one of the project's generated databases (sample, edge-cases, problems, large) to
    /// PATH.
    Generate {
        #[arg(value_parser = ["sample", "edge-cases", "problems", "large"])]
        kind: String,
        path: PathBuf,
        /// Size multiplier of the sample; megabytes of the large database.
        #[arg(long, default_value_t = 1)]
        scale: usize,
    },
}

fn variables_help() -> String {
    let mut out = String::from("Configuration (environment variables):\n");
    for (name, meaning, default) in VARIABLES {
        out.push_str(&format!("  {name:<28} {meaning} [default: {default}]\n"));
    }
    out.push_str("\nExit status: 0 success, 1 failure, 2 bad configuration or input (nothing written), 3 validation found differences.");
    out
}

/// Green or red on a terminal, unless NO_COLOR is set.
fn paint(text: &str, ok: bool) -> String {
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    if !colors {
        return text.to_string();
    }
    let style = if ok {
        console::Style::new().green().bold()
    } else {
        console::Style::new().red().bold()
    };
    style.force_styling(true).apply_to(text).to_string()
}

fn main() -> ExitCode {
    limit_heaps();
    let cli = Cli::parse();
    if let Some(Command::Generate { kind, path, scale }) = cli.command {
        let made = match kind.as_str() {
            "sample" => fixture::sample(&path, scale),
            "problems" => fixture::problems(&path),
            "large" => fixture::large(&path, scale),
            _ => fixture::edge_cases(&path),
        };
        return match made {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let config = match Config::from_vars(std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if let Some(manifest) = &config.manifest {
        return run_manifest(&config, manifest);
    }
    let outcome = run(&config);
    let what = config.run_name();
    let headline = match &outcome.error {
        None => Ok(format!("{what} succeeded")),
        Some(e) => Err(format!("{what} FAILED: {e}")),
    };
    let summary = outcome.report.summary();
    finish(&config, Some(summary), headline, outcome.exit_code())
}

/// Limits glibc's heaps to two before any thread starts, unless the environment sets the limit
/// itself (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`). glibc keeps one heap per
/// thread that allocates, up to eight per core, each holding on to what its thread freed: every
/// thread that decoded a page of D1's answers kept that page's worth (a full validation of the
/// 970 MB database peaked at 178 MB; 98 MB in two heaps, no slower: the threads mostly wait on
/// the network).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_heaps() {
    const HEAPS: i32 = 2;
    let set = |name: &str, part: &str| std::env::var(name).is_ok_and(|v| v.contains(part));
    if !set("MALLOC_ARENA_MAX", "") && !set("GLIBC_TUNABLES", "arena_max") {
        // SAFETY: mallopt only sets a parameter of the allocator, before any other thread runs.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, HEAPS) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_heaps() {}

/// Many migrations, one per manifest line: a table of the databases, then the headline.
fn run_manifest(config: &Config, manifest: &std::path::Path) -> ExitCode {
    set_log_level(config);
    let outcome = fleet::run_fleet(config, manifest);
    // When lines could not start, the error lists them; the table is for lines that ran.
    let ran = outcome.report.databases.iter().any(|d| d.report.is_some());
    let t = &outcome.report.totals;
    let headline = match (&outcome.error, outcome.exit_code) {
        (Some(e), _) => Err(format!("manifest FAILED: {e}")),
        (None, 0) => Ok(format!("manifest succeeded: {} databases", t.databases)),
        (None, _) => Err(format!(
            "manifest FAILED: {} of {} databases did not succeed",
            t.databases - t.ok,
            t.databases
        )),
    };
    let summary = ran.then(|| outcome.report.summary());
    finish(config, summary, headline, outcome.exit_code)
}

/// Prints the summary (unless quiet), then the headline: green on success, red on failure, and
/// always when the run failed.
fn finish(
    config: &Config,
    summary: Option<String>,
    headline: Result<String, String>,
    exit_code: u8,
) -> ExitCode {
    if let (false, Some(summary)) = (config.quiet, summary) {
        eprint!("{summary}");
        if let Some(path) = &config.report {
            eprintln!("report: {}", path.display());
        }
    }
    match headline {
        Ok(text) if !config.quiet => eprintln!("{}", paint(&format!("d1-migrator: {text}"), true)),
        Ok(_) => {}
        Err(text) => eprintln!("{}", paint(&format!("d1-migrator: {text}"), false)),
    }
    ExitCode::from(exit_code)
}
