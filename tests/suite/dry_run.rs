//! Dry run: writes nothing, finds every D1 compatibility problem by name and key, and predicts
//! what the real run then does, statements and requests included.

use std::collections::BTreeSet;

use crate::harness::{fresh, generated, read_json, rejected_keys, stderr, LocalD1, Run};

#[test]
fn a_dry_run_reads_the_target_and_writes_nothing() {
    // A server of its own, which logs each request.
    let d1 = &LocalD1::start(&["dry".to_string()], None);
    let db = d1.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "sample");
    d1.sql(&db, &["CREATE TABLE unrelated (x)"]);
    let before_bytes = std::fs::read(d1.file(&db)).unwrap();
    let before_log = d1.requests().len();
    Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .ok();
    assert_eq!(
        std::fs::read(d1.file(&db)).unwrap(),
        before_bytes,
        "the D1 file is byte-identical"
    );
    let log = d1.settled_requests();
    let ours: Vec<&serde_json::Value> = log[before_log..]
        .iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .contains(&format!("/database/{db}/"))
        })
        .collect();
    assert!(!ours.is_empty());
    for entry in ours {
        for statement in entry["statements"].as_array().unwrap() {
            assert!(
                statement.as_str().unwrap().starts_with("SELECT"),
                "a write was sent: {entry}"
            );
        }
    }
}

#[test]
fn every_problem_is_found_once_with_its_name_and_key() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "problems");
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report)
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let plan = read_json(&report)["dry_run"].clone();
    let found: BTreeSet<(String, String, String, String)> = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["object"].as_str().unwrap().to_string(),
                f["key"].as_str().unwrap_or("").to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String, String)> = [
        ("too_many_columns", "wide", "", "error"),
        ("row_too_large", "blobs", "2", "error"),
        ("virtual_table_module", "old_search", "", "error"),
        ("reserved_name", "_cf_notes", "", "warning"),
        ("reserved_name", "_cf_idx", "", "error"),
        ("refused_function", "version_view", "", "error"),
        ("foreign_key_violation", "orders", "7", "error"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(found, expected);
    assert_eq!(plan["would_succeed"], false);
    // The real run refuses the same source before writing anything, as predicted.
    let out = Run::new(d1, &db, &source).output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for name in ["wide", "old_search", "_cf_idx", "version_view"] {
        assert!(stderr(&out).contains(name), "{name}: {}", stderr(&out));
    }
    d1.assert_untouched(&db);
}

#[test]
fn predicted_statements_and_requests_are_what_the_real_run_sends() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "edge-cases");
    let plan_path = dir.path().join("plan.json");
    let report_path = dir.path().join("report.json");
    Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_REPORT", &plan_path)
        .ok();
    Run::new(d1, &db, &source)
        .env("MIGRATION_VALIDATE", "false")
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let plan = read_json(&plan_path)["dry_run"].clone();
    let report = read_json(&report_path);
    let by_table = |v: &serde_json::Value, field: &str| -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["table"].as_str().unwrap().to_string(),
                    t[field].as_u64().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        by_table(&plan["tables"], "statements"),
        by_table(&report["tables"], "statements")
    );
    assert_eq!(
        by_table(&plan["tables"], "requests"),
        by_table(&report["tables"], "requests")
    );
    assert_eq!(
        by_table(&plan["tables"], "rows"),
        by_table(&report["tables"], "rows_written")
    );
    assert_eq!(plan["http_requests"], report["http_requests"]);
}

#[test]
fn rows_the_dry_run_flags_are_the_rows_the_real_run_rejects() {
    let (d1, db, dir) = fresh();
    let source = dir.path().join("data-problems.sqlite");
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id));
         CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
         INSERT INTO parent VALUES (1), (2);
         INSERT INTO child VALUES (10, 1), (11, 3), (12, 2), (13, 4);
         INSERT INTO blobs VALUES (1, X'00'), (2, zeroblob(2500000)), (3, X'01');",
    )
    .unwrap();
    drop(conn);
    let plan_path = dir.path().join("plan.json");
    let rejects = dir.path().join("rejects.jsonl");
    Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_ON_BAD_ROW", "skip")
        .env("MIGRATION_REPORT", &plan_path)
        .ok();
    let plan = read_json(&plan_path)["dry_run"].clone();
    assert_eq!(plan["would_succeed"], true, "with skip, the run goes on");
    let predicted: BTreeSet<(String, String)> = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["object"].as_str().unwrap().to_string(),
                f["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    Run::new(d1, &db, &source)
        .env("MIGRATION_ON_BAD_ROW", "skip")
        .env("MIGRATION_REJECT_FILE", &rejects)
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let rejected = rejected_keys(&rejects);
    assert_eq!(predicted, rejected);
    assert_eq!(rejected.len(), 3);
}
