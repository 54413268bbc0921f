//! The import method (`MIGRATION_METHOD=import`): rows travel as SQL files through D1's import
//! flow, exactly (`sqldiff`), with no data sent through `/query` or `/raw`; a killed run resumes
//! at the next file; a file D1 refuses finds its row at fault through the query path.

use std::path::Path;

use crate::harness::{dataset, generated, read_json, sqldiff, stderr, LocalD1, Run};

/// Requests to `/query` or `/raw` that carried rows: any INSERT or UPDATE, except the rewrite
/// of `sqlite_sequence` (a DELETE FROM, then its rows).
fn data_through_queries(d1: &LocalD1, db: &str) -> Vec<serde_json::Value> {
    d1.requests()
        .into_iter()
        .filter(|e| {
            let path = e["path"].as_str().unwrap_or_default();
            path.contains(&format!("/database/{db}/"))
                && (path.ends_with("/raw") || path.ends_with("/query"))
        })
        .filter(|e| {
            let words: Vec<&str> = e["statements"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            let data = words.iter().any(|w| {
                w.starts_with("INSERT") || w.starts_with("UPDATE") || w.starts_with("REPLACE")
            });
            data && !words.contains(&"DELETE FROM")
        })
        .collect()
}

fn imports(d1: &LocalD1, db: &str, action: &str) -> usize {
    d1.requests()
        .iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .unwrap_or_default()
                .ends_with(&format!("/database/{db}/import"))
        })
        .filter(|e| {
            e["method"] == "POST" && e["statements"].as_array().is_some_and(|s| s.is_empty())
                || action.is_empty()
        })
        .count()
}

fn migrate_by_import(d1: &LocalD1, db: &str, source: &Path, dir: &Path) -> serde_json::Value {
    let report_path = dir.join(format!("{db}.json"));
    Run::new(d1, db, source)
        .env("MIGRATION_METHOD", "import")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let diff = sqldiff(source, d1.file(db));
    assert!(diff.is_empty(), "{db}: {}", diff.join("\n"));
    let through_queries = data_through_queries(d1, db);
    assert!(
        through_queries.is_empty(),
        "{db}: rows sent as queries: {through_queries:?}"
    );
    read_json(&report_path)
}

#[test]
fn the_edge_cases_and_datasets_migrate_by_import_exactly_with_no_rows_through_queries() {
    let ids: Vec<String> = ["edge", "chinook", "northwind"].map(String::from).to_vec();
    let d1 = LocalD1::start(&ids, None);
    let dir = tempfile::tempdir().unwrap();
    let edge = generated(dir.path(), "edge-cases");
    let report = migrate_by_import(&d1, "edge", &edge, dir.path());
    assert!(report["bookmark_before"].is_string());
    assert!(
        imports(&d1, "edge", "") >= 3,
        "init, ingest and poll at least"
    );
    for (db, file) in [("chinook", "chinook.sqlite"), ("northwind", "northwind.db")] {
        if let Some(source) = dataset(file) {
            migrate_by_import(&d1, db, &source, dir.path());
        }
    }
}

#[test]
fn a_killed_import_run_resumes_at_the_next_file() {
    let ids = vec!["killed-import".to_string()];
    let d1 = LocalD1::start(&ids, None);
    let dir = tempfile::tempdir().unwrap();
    // 10 times the sample (about 1.7 MB), in requests of 100 KB and files of 200 KB.
    let source = dir.path().join("sample10.sqlite");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_d1-migrator"))
        .args(["generate", "sample", "--scale", "10"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(made.status.success());
    let ingests = |d1: &LocalD1| {
        d1.requests()
            .iter()
            .filter(|e| e["method"] == "PUT")
            .count()
    };
    let mut child = Run::new(&d1, "killed-import", &source)
        .env("MIGRATION_METHOD", "import")
        .env("MIGRATION_IMPORT_MB", "0.2")
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .command()
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while ingests(&d1) < 6 && started.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let uploaded_before = ingests(&d1);
    assert!(uploaded_before >= 6, "files were loaded before the kill");
    let report_path = dir.path().join("resumed.json");
    Run::new(&d1, "killed-import", &source)
        .env("MIGRATION_METHOD", "import")
        .env("MIGRATION_IMPORT_MB", "0.2")
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let diff = sqldiff(&source, d1.file("killed-import"));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    // The resumed run loaded only what the killed one had not: fewer rows than the source.
    let report = read_json(&report_path);
    let source_rows: u64 = {
        let conn = rusqlite::Connection::open(&source).unwrap();
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        tables
            .iter()
            .map(|t| {
                conn.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                    r.get::<_, u64>(0)
                })
                .unwrap()
            })
            .sum()
    };
    let written = report["totals"]["rows_written"].as_u64().unwrap();
    assert!(
        written < source_rows,
        "{written} rows written again of {source_rows}"
    );
}

#[test]
fn a_file_d1_refuses_finds_its_bad_row_through_queries() {
    let ids = vec!["bad-import".to_string()];
    let d1 = LocalD1::start(&ids, None);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("bad.sqlite");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id));
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
             INSERT INTO parent SELECT i FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO child SELECT i, 1 + i % 100 FROM n;
             UPDATE child SET parent_id = 999 WHERE id = 321;",
        )
        .unwrap();
    let out = Run::new(&d1, "bad-import", &source)
        .env("MIGRATION_METHOD", "import")
        .output();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("table child, row 321"), "{err}");
    assert!(err.contains("FOREIGN KEY constraint failed"), "{err}");
}

#[test]
fn the_dry_run_recommends_a_method_and_reads_the_databases_size() {
    let (d1, db, dir) = crate::harness::fresh();
    let source = generated(dir.path(), "sample");
    d1.sql(
        &db,
        &[
            "CREATE TABLE already_there(x)",
            "INSERT INTO already_there VALUES (zeroblob(30000))",
        ],
    );
    let report_path = dir.path().join("dry.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let plan = &read_json(&report_path)["dry_run"];
    assert_eq!(plan["method"], "query");
    assert_eq!(
        plan["recommended_method"], "query",
        "a few requests fit the rate limit"
    );
    assert!(
        plan["method_reason"].as_str().unwrap().contains("blocks"),
        "{plan}"
    );
    assert!(
        plan["d1_database_bytes"].as_u64().unwrap() >= 30_000,
        "{plan}"
    );
    let text = stderr(&out);
    assert!(text.contains("recommended: query"), "{text}");
    // Past the rate limit (here set to 1 request per 5 minutes), import is recommended. (With
    // requests of 1 MiB the sample's tables all go in one: smaller ones make it several.)
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_RATE_LIMIT", "1")
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .ok();
    assert!(
        stderr(&out).contains("recommended: import"),
        "{}",
        stderr(&out)
    );
}
