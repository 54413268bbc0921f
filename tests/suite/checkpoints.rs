//! One state folder, many migrations: each migration (source, API, account, database) keeps its
//! own checkpoint beside the others'; a second run of the same migration at once is refused and
//! a killed run's lock does not outlive it; a checkpoint is trusted only as far as the target
//! still holds what it recorded.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{generated, sqldiff, stderr, LocalD1, Run};

fn checkpoints(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-") && n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Regression: a second migration from the same folder was refused ("the checkpoint in
/// d1-migrator-state belongs to another migration").
#[test]
fn two_migrations_from_one_folder_keep_their_own_checkpoints() {
    let d1 = LocalD1::shared();
    let (staging, production) = (d1.fresh_database(), d1.fresh_database());
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "sample");
    let state = dir.path().join("state");
    Run::new(d1, &staging, &source)
        .env("MIGRATION_STATE_DIR", &state)
        .ok();
    let out = Run::new(d1, &production, &source)
        .env("MIGRATION_STATE_DIR", &state)
        .ok();
    assert!(
        !stderr(&out).contains("already complete"),
        "{}",
        stderr(&out)
    );
    for db in [&staging, &production] {
        let diff = sqldiff(&source, d1.file(db));
        assert!(diff.is_empty(), "{db}: {}", diff.join("\n"));
    }
    assert_eq!(checkpoints(&state).len(), 2, "{:?}", checkpoints(&state));
    // Each knows it is done, and the other's checkpoint is not touched.
    let before = std::fs::read_to_string(state.join(&checkpoints(&state)[0])).unwrap();
    for db in [&staging, &production] {
        let out = Run::new(d1, db, &source)
            .env("MIGRATION_STATE_DIR", &state)
            .ok();
        assert!(
            stderr(&out).contains("already complete"),
            "{}",
            stderr(&out)
        );
    }
    let after = std::fs::read_to_string(state.join(&checkpoints(&state)[0])).unwrap();
    assert_eq!(before, after);
}

/// Drops every table, view and trigger of the sample database from D1: the database deleted and
/// created again, empty, under the same id.
fn empty_the_sample(d1: &LocalD1, db: &str) {
    d1.sql(
        db,
        &[
            "DROP TRIGGER orders_note_default",
            "DROP VIEW order_totals",
            "DROP TABLE order_lines",
            "DROP TABLE orders",
            "DROP TABLE products",
            "DROP TABLE customers",
        ],
    );
    let left = d1.sql(
        db,
        &["SELECT name FROM sqlite_schema WHERE name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name <> 'sqlite_sequence'"],
    );
    assert_eq!(left[0], serde_json::json!([]));
}

#[test]
fn a_target_emptied_behind_a_complete_checkpoint_is_copied_again() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "sample");
    Run::new(d1, &db, &source).ok();

    // Rows deleted from one table: that table is copied again, the others are trusted.
    d1.sql(&db, &["DELETE FROM order_lines"]);
    let out = Run::new(d1, &db, &source).ok();
    let log = stderr(&out);
    // The checkpoint says complete; the validation finds D1 differs, and D1 is checked.
    assert!(
        log.contains("D1 differs from the source: checking D1 against the checkpoint"),
        "{log}"
    );
    assert!(
        log.contains("order_lines: copied again from its start: D1's table \"order_lines\" holds 0 rows, fewer than the"),
        "{log}"
    );
    assert!(!log.contains("customers: copied again"), "{log}");
    assert!(sqldiff(&source, d1.file(&db)).is_empty());

    // The whole database recreated empty under the same id: copied again by the same command.
    empty_the_sample(d1, &db);
    let out = Run::new(d1, &db, &source).ok();
    let log = stderr(&out);
    // The checkpoint says complete; the validation finds D1 differs, and D1 is checked.
    assert!(
        log.contains("D1 differs from the source: checking D1 against the checkpoint"),
        "{log}"
    );
    assert!(
        log.contains("customers: copied again from its start: D1 has no table \"customers\""),
        "{log}"
    );
    let diff = sqldiff(&source, d1.file(&db));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
}

#[test]
fn a_second_run_of_the_same_migration_at_once_is_refused_and_a_killed_runs_lock_is_not() {
    // Every request waits, so that a run lasts long enough to be caught in the middle.
    let ids = vec!["slow".to_string()];
    let d1 = LocalD1::start(&ids, Some("latency_ms=150"));
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("sample.sqlite");
    d1_migrator::fixture::sample(&source, 4).unwrap();
    let state = dir.path().join("state");
    let run = || {
        Run::new(&d1, "slow", &source)
            .env("MIGRATION_STATE_DIR", &state)
            .env("MIGRATION_REQUEST_BYTES", "100000")
            .env("MIGRATION_CONCURRENCY", "1")
            .env("MIGRATION_WRITES_IN_FLIGHT", "1")
    };
    let locked = || {
        state.is_dir()
            && std::fs::read_dir(&state)
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".lock"))
    };
    let mut first = run().command().spawn().unwrap();
    let since = Instant::now();
    while !locked() {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the first run locks"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run is still going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run().output();
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was still going when the second was refused"
    );
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another run of this migration")
            && stderr(&second).contains(&format!("process {}", first.id())),
        "{}",
        stderr(&second)
    );
    // Killed, the first run's lock goes with it: the next run resumes and finishes.
    first.kill().unwrap();
    first.wait().unwrap();
    run().ok();
    let diff = sqldiff(&source, d1.file("slow"));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
}
