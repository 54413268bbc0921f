//! What a person watches and what a script reads: live bars on a terminal, plain lines in logs,
//! the summary, `--help`, and a JSON report that follows its documented schema.

use std::process::Command;

use d1_migrator::config::VARIABLES;

use crate::harness::{fresh, generated, read_json, repo, stderr, LocalD1, Run, ACCOUNT, TOKEN};

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo().join("src/report.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("a valid JSON Schema")
}

fn assert_valid(report: &serde_json::Value) {
    let validator = schema();
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "report does not follow src/report.schema.json:\n{}\n{report}",
        errors.join("\n")
    );
}

#[test]
fn every_kind_of_report_follows_the_documented_schema() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "edge-cases");
    let report = |name: &str| dir.path().join(format!("{name}.json"));
    Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", report("dry"))
        .ok();
    Run::new(d1, &db, &source)
        .env("MIGRATION_REPORT", report("migrate"))
        .ok();
    Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", report("validate"))
        .ok();
    d1.sql(&db, &["DELETE FROM plain WHERE rowid = 9"]);
    Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", report("differs"))
        .output();
    Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", report("sync-dry"))
        .ok();
    Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_REPORT", report("sync"))
        .ok();
    Run::new(d1, &db, &dir.path().join("back.sqlite"))
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_REPORT", report("rollback"))
        .output();
    Run::new(d1, "no-such-db", &source)
        .env("MIGRATION_REPORT", report("failed"))
        .output();
    for name in [
        "dry", "migrate", "validate", "differs", "sync-dry", "sync", "rollback", "failed",
    ] {
        let r = read_json(&report(name));
        assert_valid(&r);
        assert_eq!(r["schema_version"], 1);
    }
    assert_eq!(
        read_json(&report("differs"))["validation"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["ok"] == false)
            .count(),
        1
    );
    assert_eq!(read_json(&report("failed"))["success"], false);
}

/// The migrator's command line with its environment, for `script` to run in a terminal.
fn shell_command(d1: &LocalD1, db: &str, source: &std::path::Path) -> String {
    format!(
        "env CLOUDFLARE_ACCOUNT_ID={ACCOUNT} CLOUDFLARE_API_TOKEN={TOKEN} MIGRATION_D1_API_URL={} \
         MIGRATION_D1_DATABASE_ID={db} MIGRATION_SQLITE_PATH={} MIGRATION_STATE_DIR={} MIGRATION_REQUEST_BYTES=100000 {}",
        d1.api_url,
        source.display(),
        d1.state_dir(db).display(),
        env!("CARGO_BIN_EXE_d1-migrator")
    )
}

#[test]
fn a_terminal_shows_live_bars_and_the_summary() {
    let (d1, db, dir) = fresh();
    let source = dir.path().join("sample.sqlite");
    d1_migrator::fixture::sample(&source, 10).unwrap();
    let out = Command::new("script")
        .args(["-qfec", &shell_command(d1, &db, &source), "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("script (util-linux) runs the migrator in a pseudo-terminal");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("all tables"),
        "an overall bar was drawn: {screen}"
    );
    assert!(screen.contains(" rows/s"), "bars show a rate: {screen}");
    // Regression: rates read `248,528.2973/s`; now a unit stands between the number and `/s`.
    assert!(
        !screen
            .match_indices("/s")
            .any(|(at, _)| screen[..at].ends_with(|c: char| c.is_ascii_digit())),
        "{screen}"
    );
    assert!(
        screen.contains('\u{1b}'),
        "terminal control sequences: bars are redrawn in place"
    );
    assert!(screen.contains("d1-migrator: migration succeeded"));
    assert!(screen.contains("validation"), "the summary table: {screen}");
}

#[test]
fn a_log_file_gets_plain_lines_and_the_same_summary() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let out = Run::new(d1, &db, &source).ok();
    let log = stderr(&out);
    assert!(
        !log.contains('\u{1b}'),
        "no control sequences in a log: {log}"
    );
    assert!(
        log.contains("order_lines (data): 2,453 rows copied in"),
        "{log}"
    );
    // Regression: the deferred-key pass printed `customers: 0 rows in 0.01 s`, as if the table
    // were copied twice, empty.
    assert!(
        log.contains("customers (keys set after the data): 60 rows with keys set in"),
        "{log}"
    );
    assert!(!log.contains("customers: 0 rows"), "{log}");
    // Rates are whole rows per second, not `248,528.2973/s`.
    let rate = log
        .lines()
        .find(|l| l.contains("order_lines (data)"))
        .and_then(|l| l.split('(').nth(2))
        .unwrap_or_default();
    assert!(
        rate.split(" rows/s")
            .next()
            .unwrap_or_default()
            .chars()
            .all(|c| c.is_ascii_digit() || c == ','),
        "{log}"
    );
    assert!(
        log.contains("table") && log.contains("validation") && log.contains("(all)"),
        "{log}"
    );
    assert!(log.contains("d1-migrator: migration succeeded"), "{log}");
}

#[test]
fn quiet_prints_nothing_but_errors() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_QUIET", "true")
        .ok();
    assert_eq!(stderr(&out), "");
    assert!(out.stdout.is_empty());
    let out = Run::new(d1, "no-such-db", &source)
        .env("MIGRATION_QUIET", "true")
        .output();
    assert!(stderr(&out).contains("FAILED"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn help_and_readme_list_every_variable_and_the_exit_statuses() {
    let out = Command::new(env!("CARGO_BIN_EXE_d1-migrator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for (name, _, default) in VARIABLES {
        assert!(help.contains(name), "--help lacks {name}");
        assert!(help.contains(default), "--help lacks the default of {name}");
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README's table lacks {name}"
        );
    }
    for status in [
        "0 success",
        "1 failure",
        "2 bad configuration",
        "3 validation found differences",
    ] {
        assert!(help.contains(status), "--help lacks exit status {status}");
    }
    let version = Command::new(env!("CARGO_BIN_EXE_d1-migrator"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn rows_appended_in_pieces_get_a_large_values_line() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "edge-cases");
    let out = Run::new(d1, &db, &source).ok();
    let log = stderr(&out);
    let line = log
        .lines()
        .find(|l| l.starts_with("big (large values): "))
        .unwrap_or_else(|| panic!("a large-values line for table big: {log}"));
    assert!(line.contains(" rows completed in "), "{line}");
    // It follows the data line of the same table.
    let data = log.find("big (data): ").expect("data line");
    assert!(data < log.find(line).unwrap(), "{log}");
}
