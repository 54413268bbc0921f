//! Forward migration, SQLite → D1: exact copies judged by `sqldiff`, runs under faults, reruns,
//! the report, and bad input refused before anything is written.

use crate::harness::{dataset, fresh, generated, read_json, sqldiff, stderr, LocalD1, Run, TOKEN};

fn migrate_and_compare(source: &std::path::Path) -> serde_json::Value {
    let (d1, db, dir) = fresh();
    let report = dir.path().join("report.json");
    Run::new(d1, &db, source)
        .env("MIGRATION_REPORT", &report)
        .ok();
    let diff = sqldiff(source, d1.file(&db));
    assert!(
        diff.is_empty(),
        "differences after migrating {}:\n{}",
        source.display(),
        diff.join("\n")
    );
    read_json(&report)
}

#[test]
fn the_sample_arrives_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let report = migrate_and_compare(&generated(dir.path(), "sample"));
    assert_eq!(report["success"], true);
    assert_eq!(report["schema_version"], 1);
    let customers = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "customers")
        .unwrap();
    assert_eq!(customers["rows_read"], 200);
    assert_eq!(customers["rows_written"], 200);
    assert!(report["http_requests"].as_u64().unwrap() >= 5);
    assert!(report["bytes_sent"].as_u64().unwrap() > 100_000);
    assert!(report["totals"]["duration_ms"].is_u64());
}

#[test]
fn d1s_rows_read_and_written_are_summed_into_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "sample");
    let (d1, db, _) = fresh();
    let report_path = dir.path().join("copy.json");
    Run::new(d1, &db, &source)
        .env("MIGRATION_REPORT", &report_path)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    let copy = read_json(&report_path);
    let rows = copy["totals"]["rows_written"].as_u64().unwrap();
    // Every row copied is a row D1 wrote (indexes add more); full validation read them all.
    let written = copy["d1_rows_written"].as_u64().unwrap();
    assert!(written >= rows, "D1 wrote {written} rows for {rows} copied");
    let read = copy["d1_rows_read"].as_u64().unwrap();
    assert!(read >= rows, "D1 read {read} rows validating {rows}");
    assert!(stderr(
        &Run::new(d1, &db, &source)
            .env("MIGRATION_MODE", "validate")
            .ok()
    )
    .contains("D1 rows read"));
    let check_path = dir.path().join("validate.json");
    Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &check_path)
        .ok();
    let check = read_json(&check_path);
    assert_eq!(check["d1_rows_written"], 0, "a validation writes nothing");
    assert!(check["d1_rows_read"].as_u64().unwrap() >= rows);
}

#[test]
fn every_edge_case_arrives_exactly_except_d1s_reserved_names() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "edge-cases");
    Run::new(d1, &db, &source).ok();
    // _cf_legacy is the one table D1 forbids; everything else, FTS5 and sqlite_sequence
    // included, is identical.
    let diff = sqldiff(&source, d1.file(&db));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let tables = d1.sql(
        &db,
        &["SELECT name FROM sqlite_schema WHERE name LIKE '\\_cf\\_legacy%' ESCAPE '\\'"],
    );
    assert_eq!(tables[0], serde_json::json!([]));
}

#[test]
fn chinook_arrives_exactly() {
    if let Some(source) = dataset("chinook.sqlite") {
        migrate_and_compare(&source);
    }
}

#[test]
fn northwind_arrives_exactly() {
    if let Some(source) = dataset("northwind.db") {
        let report = migrate_and_compare(&source);
        // Data requests carry hundreds of kilobytes each, not a row or a statement.
        let totals = &report["totals"];
        let per_request =
            totals["bytes_sent"].as_u64().unwrap() / totals["requests"].as_u64().unwrap();
        assert!(per_request > 500_000, "{per_request} bytes per request");
    }
}

#[test]
fn a_run_under_faults_ends_exact_and_counts_its_retries() {
    let ids = vec!["faulty".to_string()];
    let d1 = LocalD1::start(
        &ids,
        Some("429=0.1,500=0.1,drop=0.05,lost=0.05,seed=5,retry_after=0"),
    );
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "edge-cases");
    let report = dir.path().join("report.json");
    Run::new(&d1, "faulty", &source)
        .env("MIGRATION_REPORT", &report)
        .env("MIGRATION_MAX_RETRIES", "30")
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .ok();
    let diff = sqldiff(&source, d1.file("faulty"));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let report = read_json(&report);
    assert!(report["retries"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn running_again_adds_nothing_and_changes_nothing() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let report = dir.path().join("report.json");
    Run::new(d1, &db, &source).ok();
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_REPORT", &report)
        .ok();
    assert!(
        stderr(&out).contains("already complete"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read_json(&report)["already_complete"], true);
    assert_eq!(read_json(&report)["totals"]["rows_written"], 0);
    // Without its checkpoint, a full rerun sends every row again and D1 keeps one of each.
    Run::new(d1, &db, &source)
        .env("MIGRATION_STATE_DIR", dir.path().join("fresh-state"))
        .ok();
    assert!(sqldiff(&source, d1.file(&db)).is_empty());
}

#[test]
fn bad_configuration_is_refused_with_status_2_naming_the_variable() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let cases = [
        ("MIGRATION_BATCH_SIZE", "lots", "MIGRATION_BATCH_SIZE"),
        ("MIGRATION_TIMEOUT", "-5", "MIGRATION_TIMEOUT"),
        (
            "MIGRATION_FROBNICATE",
            "1",
            "unknown variable MIGRATION_FROBNICATE",
        ),
        ("MIGRATION_TABLES", "customers,nope", "\"nope\""),
    ];
    for (key, value, expected) in cases {
        let out = Run::new(d1, &db, &source).env(key, value).output();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{key}={value}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(expected),
            "{key}={value}: {}",
            stderr(&out)
        );
    }
    d1.assert_untouched(&db);
}

#[test]
fn a_missing_or_non_sqlite_source_is_refused() {
    let (d1, db, dir) = fresh();
    let missing = dir.path().join("missing.sqlite");
    let out = Run::new(d1, &db, &missing).output();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.sqlite"), "{}", stderr(&out));
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a database, just words\n".repeat(100)).unwrap();
    let out = Run::new(d1, &db, &text).output();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a readable SQLite database"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_token_is_refused_and_never_printed() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let report = dir.path().join("report.json");
    let secret = "wrong-token-SHOULD-NOT-LEAK-91c3";
    let out = Run::new(d1, &db, &source)
        .env("CLOUDFLARE_API_TOKEN", secret)
        .env("MIGRATION_REPORT", &report)
        .env("MIGRATION_LOG", "debug")
        .output();
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&report).unwrap()
    );
    assert!(all.contains("refused the API token"), "{all}");
    assert!(!all.contains(secret));
    assert!(!all.contains(TOKEN));
}

#[test]
fn an_unknown_database_id_is_refused() {
    let d1 = LocalD1::shared();
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "sample");
    let out = Run::new(d1, "no-such-database", &source).output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn an_unreachable_api_is_refused() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_D1_API_URL", "http://127.0.0.1:9/client/v4")
        .env("MIGRATION_MAX_RETRIES", "1")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn a_selection_that_leaves_out_a_parent_table_is_refused_before_writing() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_TABLES", "order_lines")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"order_lines\" references \"orders\""),
        "{}",
        stderr(&out)
    );
    d1.assert_untouched(&db);
    // Once the parents are on D1, the same selection goes through.
    Run::new(d1, &db, &source)
        .env("MIGRATION_EXCLUDE_TABLES", "order_lines")
        .env("MIGRATION_STATE_DIR", dir.path().join("state-parents"))
        .ok();
    Run::new(d1, &db, &source)
        .env("MIGRATION_TABLES", "order_lines")
        .env("MIGRATION_STATE_DIR", dir.path().join("state-child"))
        .ok();
    assert!(sqldiff(&source, d1.file(&db)).is_empty());
}
