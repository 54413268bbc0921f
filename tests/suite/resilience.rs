//! Resilience: runs killed at any point, bad rows, and bad input lose nothing, duplicate nothing,
//! and never show the token.

use std::time::{Duration, Instant};

use crate::harness::{
    fresh, generated, read_json, rejected_keys, sqldiff, stderr, LocalD1, Run, TOKEN,
};

#[test]
fn killed_at_twelve_points_and_rerun_the_copy_is_exact() {
    let ids = vec!["killed".to_string()];
    let d1 = LocalD1::start(&ids, Some("latency_ms=10,seed=1"));
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big-sample.sqlite");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_d1-migrator"))
        .args(["generate", "sample", "--scale", "20"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut kills = 0;
    for point in 1..=12 {
        let before = d1.requests().len();
        let mut child = Run::new(&d1, "killed", &source)
            .env("MIGRATION_REQUEST_BYTES", "100000")
            .env("MIGRATION_QUIET", "true")
            .command()
            .spawn()
            .unwrap();
        // Kill after a few requests of this attempt: as each attempt resumes where the last one
        // stopped, the points spread over the whole run.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if d1.requests().len() >= before + 2 + point % 4 {
                child.kill().unwrap();
                kills += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the run neither progressed nor ended"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        child.wait().unwrap();
    }
    assert!(kills >= 10, "only {kills} runs were killed mid-way");
    let report = dir.path().join("report.json");
    Run::new(&d1, "killed", &source)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let diff = sqldiff(&source, d1.file("killed"));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    assert_eq!(read_json(&report)["validation"]["ok"], true);
}

/// A source with one child row whose parent does not exist: D1 enforces foreign keys.
fn source_with_a_bad_row(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("bad-row.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id), note TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO parent SELECT i, 'p' || i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO child SELECT i, 1 + i % 500, 'c' || i FROM n;
         UPDATE child SET parent_id = 9999 WHERE id = 1234;",
    )
    .unwrap();
    path
}

#[test]
fn a_bad_row_stops_the_run_naming_table_key_and_d1s_message() {
    let (d1, db, dir) = fresh();
    let source = source_with_a_bad_row(dir.path());
    let out = Run::new(d1, &db, &source).output();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("table child, row 1234"), "{err}");
    assert!(err.contains("FOREIGN KEY constraint failed"), "{err}");
}

#[test]
fn a_skipped_bad_row_goes_to_the_reject_file_and_the_run_goes_on() {
    let (d1, db, dir) = fresh();
    let source = source_with_a_bad_row(dir.path());
    let rejects = dir.path().join("rejects.jsonl");
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_ON_BAD_ROW", "skip")
        .env("MIGRATION_REJECT_FILE", &rejects)
        .env("MIGRATION_REPORT", &report)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .output();
    // Validation then finds the one row missing, and says so.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["table"], "child");
    assert_eq!(lines[0]["key"], "1234");
    assert!(lines[0]["reason"].as_str().unwrap().contains("FOREIGN KEY"));
    let report = read_json(&report);
    assert_eq!(report["rejected_rows"], 1);
    let child = report["validation"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "child")
        .unwrap()
        .clone();
    assert_eq!(child["missing"], 1);
    assert_eq!(child["differences"][0]["key"], "1234");
    // Every other row arrived; once its parent exists, the rejected row re-inserts as written.
    let counts = d1.sql(
        &db,
        &["SELECT count(*) FROM child", "SELECT count(*) FROM parent"],
    );
    assert_eq!(counts[0], serde_json::json!([[1999]]));
    assert_eq!(counts[1], serde_json::json!([[500]]));
    let sql = lines[0]["sql"].as_str().unwrap();
    d1.sql(&db, &["INSERT INTO parent VALUES (9999, 'late')", sql]);
    assert_eq!(
        d1.sql(&db, &["SELECT count(*) FROM child"])[0],
        serde_json::json!([[2000]])
    );
}

#[test]
fn a_corrupt_source_is_refused() {
    let (d1, db, dir) = fresh();
    let corrupt = dir.path().join("corrupt.sqlite");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend((0..8192u32).map(|i| (i * 31 % 251) as u8));
    std::fs::write(&corrupt, bytes).unwrap();
    let out = Run::new(d1, &db, &corrupt).output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("corrupt.sqlite"), "{}", stderr(&out));
    d1.assert_untouched(&db);
}

#[test]
fn a_source_locked_by_a_writer_is_refused() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let writer = rusqlite::Connection::open(&source).unwrap();
    writer
        .execute_batch("BEGIN EXCLUSIVE; UPDATE customers SET name = name WHERE id = 1;")
        .unwrap();
    let out = Run::new(d1, &db, &source).output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
    writer.execute_batch("ROLLBACK").unwrap();
    d1.assert_untouched(&db);
}

#[test]
fn the_source_file_is_never_changed() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "edge-cases");
    let before = std::fs::read(&source).unwrap();
    Run::new(d1, &db, &source).ok();
    assert_eq!(std::fs::read(&source).unwrap(), before);
    let siblings: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        siblings.len(),
        1,
        "no journal or WAL beside the source: {siblings:?}"
    );
}

#[test]
fn the_token_appears_in_no_output_or_file_of_a_failing_run() {
    let (d1, db, dir) = fresh();
    let source = source_with_a_bad_row(dir.path());
    let state = dir.path().join("state");
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_STATE_DIR", &state)
        .env("MIGRATION_ON_BAD_ROW", "skip")
        .env("MIGRATION_REPORT", &report)
        .env("MIGRATION_LOG", "debug")
        .output();
    assert_ne!(out.status.code(), Some(0));
    let mut everything = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    for entry in walk(dir.path()) {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(
        everything.contains("FOREIGN KEY"),
        "the run did fail and say why"
    );
    assert!(!everything.contains(TOKEN), "the token leaked");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn continue_on_error_rejects_bad_rows_and_finishes_the_rest() {
    let (d1, db, dir) = fresh();
    let source = source_with_a_bad_row(dir.path());
    let rejects = dir.path().join("rejects.jsonl");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_CONTINUE_ON_ERROR", "true")
        .env("MIGRATION_REJECT_FILE", &rejects)
        .env("MIGRATION_VALIDATE", "false")
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rejected rows: 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap().lines().count(),
        1
    );
    assert_eq!(
        d1.sql(&db, &["SELECT count(*) FROM child"])[0],
        serde_json::json!([[1999]])
    );
}

#[test]
fn rows_rejected_beside_other_tables_are_only_the_bad_ones() {
    // Each request that breaks a foreign key makes D1 reset the database and fail the requests
    // in flight beside it with the same message. Isolating a hundred orphans while another table
    // loads in small requests must reject the orphans and nothing else.
    let (d1, db, dir) = fresh();
    let source = dir.path().join("orphans.sqlite");
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id));
         CREATE TABLE items (id INTEGER PRIMARY KEY, payload TEXT);
         INSERT INTO parent VALUES (1);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
           INSERT INTO child SELECT i, CASE WHEN i % 4 = 0 THEN 2 ELSE 1 END FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
           INSERT INTO items SELECT i, printf('%.100c', 'x') FROM n;",
    )
    .unwrap();
    drop(conn);
    let rejects = dir.path().join("rejects.jsonl");
    Run::new(d1, &db, &source)
        .env("MIGRATION_ON_BAD_ROW", "skip")
        .env("MIGRATION_REJECT_FILE", &rejects)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let orphans: std::collections::BTreeSet<(String, String)> = (1..=100)
        .map(|i| ("child".to_string(), (i * 4).to_string()))
        .collect();
    assert_eq!(rejected_keys(&rejects), orphans);
    assert_eq!(
        d1.sql(
            &db,
            &["SELECT count(*) FROM child", "SELECT count(*) FROM items"]
        ),
        vec![serde_json::json!([[300]]), serde_json::json!([[100000]])]
    );
}
