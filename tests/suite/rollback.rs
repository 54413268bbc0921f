//! Rollback, D1 → SQLite: round trips judged by `sqldiff`, the `missing` and `replace` modes, and
//! an existing file refused and left byte-identical.

use std::path::Path;

use crate::harness::{dataset, generated, migrated, sqldiff, stderr, LocalD1, Run};

/// SQLite → D1 → a new SQLite file, which must equal the original.
fn round_trip(source: &Path) {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    Run::new(d1, &db, source).ok();
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.sqlite");
    Run::new(d1, &db, &back)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    let diff = sqldiff(source, &back);
    assert!(
        diff.is_empty(),
        "{} after a round trip:\n{}",
        source.display(),
        diff.join("\n")
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "only the final file remains: {leftovers:?}"
    );
}

#[test]
fn edge_cases_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "edge-cases");
    // The edge-case fixture holds a _cf_ table that D1 refuses; compare without it.
    let db = rusqlite::Connection::open(&source).unwrap();
    db.execute_batch("DROP TABLE _cf_legacy").unwrap();
    drop(db);
    round_trip(&source);
}

#[test]
fn chinook_round_trips_exactly() {
    if let Some(source) = dataset("chinook.sqlite") {
        round_trip(&source);
    }
}

#[test]
fn northwind_round_trips_exactly() {
    if let Some(source) = dataset("northwind.db") {
        round_trip(&source);
    }
}

#[test]
fn an_existing_file_is_refused_and_left_byte_identical() {
    let d1 = LocalD1::shared();
    let (db, _dir, source) = migrated("sample");
    let before = std::fs::read(&source).unwrap();
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("MIGRATION_ROLLBACK_MODE"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&source).unwrap(), before);
}

#[test]
fn missing_mode_adds_exactly_the_rows_the_file_lacks() {
    let d1 = LocalD1::shared();
    let (db, dir, source) = migrated("sample");
    let file = dir.path().join("app.sqlite");
    std::fs::copy(&source, &file).unwrap();
    // The file loses some rows; D1 gains some; one row differs on both sides.
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute_batch(
        "DELETE FROM order_lines WHERE order_id BETWEEN 10 AND 20;
         DELETE FROM orders WHERE id BETWEEN 10 AND 20;
         UPDATE customers SET name = 'kept locally' WHERE id = 5;",
    )
    .unwrap();
    drop(conn);
    d1.sql(
        &db,
        &[
            "INSERT INTO orders (id, customer_id, placed_at, note) VALUES (5001, 1, '2025-01-01', 'new on D1')",
            "UPDATE customers SET name = 'changed on D1' WHERE id = 6",
        ],
    );
    Run::new(d1, &db, &file)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_ROLLBACK_MODE", "missing")
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let conn = rusqlite::Connection::open(&file).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(
        count("SELECT count(*) FROM orders WHERE id BETWEEN 10 AND 20"),
        11
    );
    assert_eq!(count("SELECT count(*) FROM orders WHERE id = 5001"), 1);
    let name = |id: i64| {
        conn.query_row("SELECT name FROM customers WHERE id = ?", [id], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
    };
    assert_eq!(
        name(5),
        "kept locally",
        "rows the file has are left untouched"
    );
    assert_ne!(name(6), "changed on D1");
    // Apart from the new order and the local change, the file equals the source again.
    let diff = sqldiff(&source, &file);
    assert_eq!(diff.len(), 2, "{}", diff.join("\n"));
}

#[test]
fn missing_mode_completes_an_fts5_table_that_already_has_rows() {
    // FTS5 refuses INSERT OR IGNORE of a rowid it holds ("constraint failed").
    let d1 = LocalD1::shared();
    let (db, dir, source) = migrated("edge-cases");
    let file = dir.path().join("app.sqlite");
    std::fs::copy(&source, &file).unwrap();
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute_batch("DELETE FROM docs WHERE rowid = 7; DELETE FROM plain WHERE rowid = 9;")
        .unwrap();
    drop(conn);
    Run::new(d1, &db, &file)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_ROLLBACK_MODE", "missing")
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    // FTS5 keeps its index in shadow tables whose layout depends on the order of inserts: the
    // table's rows are compared, its shadow tables left out.
    let diff: Vec<String> = sqldiff(&source, &file)
        .into_iter()
        .filter(|line| !line.contains("docs_"))
        .collect();
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let docs = |path: &std::path::Path| -> Vec<(i64, String, String)> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT rowid, title, body FROM docs ORDER BY rowid")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
        rows.unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(docs(&file), docs(&source));
    let conn = rusqlite::Connection::open(&file).unwrap();
    let search: i64 = conn
        .query_row(
            "SELECT count(*) FROM docs WHERE docs MATCH 'markers'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(search, 1, "the restored row is in the full-text index");
}

#[test]
fn replace_mode_keeps_a_backup_and_rebuilds_the_file() {
    let d1 = LocalD1::shared();
    let (db, dir, source) = migrated("sample");
    let file = dir.path().join("app.sqlite");
    std::fs::write(&file, b"old contents").unwrap();
    Run::new(d1, &db, &file)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_ROLLBACK_MODE", "replace")
        .ok();
    assert!(sqldiff(&source, &file).is_empty());
    let backups: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("app.sqlite.backup-"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read(&backups[0]).unwrap(), b"old contents");
}

/// Regression: the rolled-back file's `sqlite_sequence` is D1's, row for row. Loading the rows
/// makes counters of its own; one for a table D1 keeps no counter for stayed behind, and could
/// hold the rowid D1's counter of another table has (`UNIQUE constraint failed:
/// sqlite_sequence.rowid`).
#[test]
fn the_rolled_back_sequence_is_d1s_even_where_d1_keeps_no_counter_for_a_table() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(
        &db,
        &[
            "CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
            "CREATE TABLE b (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
            "INSERT INTO b (v) VALUES ('b1'), ('b2')",
            "INSERT INTO a (v) VALUES ('a1')",
            "DELETE FROM sqlite_sequence WHERE name = 'b'",
        ],
    );
    let on_d1 = d1.sql(
        &db,
        &["SELECT rowid, name, seq FROM sqlite_sequence ORDER BY rowid"],
    );
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.sqlite");
    Run::new(d1, &db, &back)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .ok();
    let conn = rusqlite::Connection::open(&back).unwrap();
    let mut stmt = conn
        .prepare("SELECT rowid, name, seq FROM sqlite_sequence ORDER BY rowid")
        .unwrap();
    let rows: Vec<(i64, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, vec![(2, "a".to_string(), 1)], "D1 holds {on_d1:?}");
    let b: i64 = conn
        .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
        .unwrap();
    assert_eq!(b, 2);
}
