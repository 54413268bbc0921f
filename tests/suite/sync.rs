//! Sync (`MIGRATION_MODE=sync`): after changes of every kind on one side, the other is brought
//! level writing only what differs, in both directions; exact (`sqldiff`), foreign keys and
//! triggers respected, killed runs converge, the dry run lists and writes nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{fresh, generated, read_json, sqldiff, stderr, LocalD1, Run};

/// A sample source with an audit table that a trigger on `order_lines` writes: a sync that let
/// the target's trigger fire would double the audit rows it also copies.
fn audited_sample(dir: &Path) -> PathBuf {
    let source = generated(dir, "sample");
    let db = rusqlite::Connection::open(&source).unwrap();
    db.execute_batch(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT NOT NULL);
         CREATE TRIGGER lines_audit AFTER INSERT ON order_lines
         BEGIN INSERT INTO audit (what) VALUES ('line ' || NEW.order_id || '/' || NEW.product_id); END;
         INSERT INTO audit (what) VALUES ('before the copy');",
    )
    .unwrap();
    source
}

/// Changes of every kind: updates (text, real, a NULL, a large BLOB over 100 KB), a new parent
/// (customer) with new children (orders, lines: the trigger adds audit rows), a new product with
/// a large picture, and deletes of children and of a parent.
const CHANGES: &str = "
    UPDATE customers SET name = name || ' (moved)', email = NULL WHERE id % 37 = 0;
    UPDATE products SET price = price * 1.5 WHERE id % 9 = 0;
    UPDATE products SET picture = zeroblob(150000) WHERE id = 3;
    UPDATE orders SET note = 'changed ' || id WHERE id % 101 = 0;
    INSERT INTO customers (id, name, email, referred_by, created_at)
        VALUES (5000, 'New Parent', 'new@example.com', 5001, '2025-01-01'),
               (5001, 'Referrer', NULL, 5000, '2025-01-01');
    INSERT INTO orders (id, customer_id, placed_at, note) VALUES (9000, 5000, '2025-01-02', 'new');
    INSERT INTO products (name, price, picture) VALUES ('Large', 1.25, randomblob(300000));
    INSERT INTO order_lines VALUES (9000, 1, 2, 3.5), (9000, (SELECT max(id) FROM products), 1, 9.75);
    DELETE FROM order_lines WHERE order_id IN (SELECT id FROM orders WHERE id % 97 = 0);
    DELETE FROM orders WHERE id % 97 = 0;
    DELETE FROM order_lines WHERE order_id = 13;
";

fn table<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("table {name} in the report"))
}

fn count(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn forward_sync_writes_every_kind_of_change_and_ends_identical() {
    let (d1, db, dir) = fresh();
    let source = audited_sample(dir.path());
    Run::new(d1, &db, &source).ok();
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(CHANGES).unwrap();
    let audit = count(&source, "SELECT count(*) FROM audit");
    drop(conn);
    let report_path = dir.path().join("sync.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_SYNC_DELETE", "true")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let diff = sqldiff(&source, d1.file(&db));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let report = read_json(&report_path);
    assert_eq!(report["mode"], "sync");
    assert_eq!(report["validation"]["ok"], true);
    assert_eq!(report["validation"]["full"], true);
    let customers = table(&report, "customers");
    assert_eq!(customers["inserted"], 2);
    assert_eq!(customers["updated"], 5, "ids 37, 74, ..., 185");
    let orders = table(&report, "orders");
    assert_eq!(orders["inserted"], 1);
    assert_eq!(orders["deleted"], 10, "ids 97, 194, ..., 970");
    assert!(table(&report, "order_lines")["deleted"].as_u64().unwrap() > 10);
    assert_eq!(table(&report, "products")["inserted"], 1);
    // Only the differences travel and are written: a few hundred rows of 4,000.
    let written = report["d1_rows_written"].as_u64().unwrap();
    assert!(written < 400, "D1 wrote {written} rows");
    // The trigger was kept from firing, and is there again.
    let on_d1 = d1.sql(
        &db,
        &[
            "SELECT count(*) FROM audit",
            "SELECT count(*) FROM sqlite_schema WHERE name = 'lines_audit'",
        ],
    );
    assert_eq!(on_d1[0], serde_json::json!([[audit]]));
    assert_eq!(on_d1[1], serde_json::json!([[1]]));
    assert_eq!(
        report["sync"]["triggers_suspended"],
        serde_json::json!(["orders_note_default", "lines_audit"])
    );
    let summary = stderr(&out);
    assert!(summary.contains("inserted"), "{summary}");
}

#[test]
fn rows_only_on_the_target_are_listed_and_kept_without_sync_delete() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    Run::new(d1, &db, &source).ok();
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "DELETE FROM order_lines WHERE order_id = 7;
             UPDATE customers SET name = 'x' WHERE id = 3;",
        )
        .unwrap();
    let report_path = dir.path().join("sync.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_REPORT", &report_path)
        .output();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = read_json(&report_path);
    let lines = report["sync"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "order_lines")
        .unwrap();
    assert!(lines["delete"].as_u64().unwrap() >= 1);
    assert!(lines["first_deletes"][0]
        .as_str()
        .unwrap()
        .starts_with("7, "));
    assert_eq!(report["sync"]["deletes_pending"], lines["delete"]);
    assert_eq!(table(&report, "customers")["updated"], 1);
    let still = d1.sql(
        &db,
        &["SELECT count(*) FROM order_lines WHERE order_id = 7"],
    );
    assert_ne!(still[0], serde_json::json!([[0]]), "not deleted");
    assert!(stderr(&out).contains("MIGRATION_SYNC_DELETE"));
}

#[test]
fn identical_databases_sync_writing_nothing() {
    let ids = vec!["same".to_string()];
    let d1 = LocalD1::start(&ids, None);
    let dir = tempfile::tempdir().unwrap();
    let source = audited_sample(dir.path());
    Run::new(&d1, "same", &source).ok();
    let before = d1.requests().len();
    let report_path = dir.path().join("sync.json");
    Run::new(&d1, "same", &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_SYNC_DELETE", "true")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let report = read_json(&report_path);
    assert_eq!(report["d1_rows_written"], 0);
    assert!(report["d1_rows_read"].as_u64().unwrap() > 4000);
    let writes: Vec<serde_json::Value> = d1.requests()[before..]
        .iter()
        .filter(|r| {
            r["statements"].as_array().unwrap().iter().any(|s| {
                let s = s.as_str().unwrap();
                [
                    "INSERT",
                    "UPDATE",
                    "DELETE",
                    "DROP",
                    "CREATE",
                    "PRAGMA DEFER",
                ]
                .iter()
                .any(|w| s.starts_with(w))
            })
        })
        .cloned()
        .collect();
    assert!(writes.is_empty(), "requests that write: {writes:?}");
}

#[test]
fn backward_sync_leaves_the_file_identical_to_d1() {
    let (d1, db, dir) = fresh();
    let source = audited_sample(dir.path());
    Run::new(d1, &db, &source).ok();
    // The file to bring level: the source as it was, copied.
    let file = dir.path().join("local.sqlite");
    std::fs::copy(&source, &file).unwrap();
    // Changes on D1 after the switch; its trigger adds audit rows for the new line.
    d1.sql(
        &db,
        &[
            "UPDATE customers SET name = 'on D1 ' || id, referred_by = NULL WHERE id % 41 = 0",
            "UPDATE products SET picture = randomblob(200000), price = -0.0 WHERE id = 4",
            "INSERT INTO customers (id, name, email, created_at) VALUES (7000, 'D1 parent', 'd1@example.com', '2025-03-01')",
            "INSERT INTO orders (id, customer_id, placed_at) VALUES (7000, 7000, '2025-03-02')",
            "INSERT INTO order_lines VALUES (7000, 2, 1, 1e300)",
            "DELETE FROM order_lines WHERE order_id = 20",
            "DELETE FROM orders WHERE id = 20",
        ],
    );
    let report_path = dir.path().join("sync.json");
    let out = Run::new(d1, &db, &file)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_SYNC_DELETE", "true")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let diff = sqldiff(&file, d1.file(&db));
    assert!(diff.is_empty(), "{}\n{}", diff.join("\n"), stderr(&out));
    let report = read_json(&report_path);
    assert_eq!(report["direction"], "d1-to-sqlite");
    assert_eq!(table(&report, "orders")["inserted"], 1);
    assert_eq!(table(&report, "orders")["deleted"], 1);
    assert_eq!(table(&report, "customers")["updated"], 4);
    assert_eq!(report["d1_rows_written"], 0, "D1 is only read");
    // Triggers of the file are there again, and did not fire.
    assert_eq!(
        count(
            &file,
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
        ),
        2
    );
}

#[test]
fn the_dry_run_lists_what_sync_would_write_and_writes_nothing() {
    let ids = vec!["dry".to_string()];
    let d1 = LocalD1::start(&ids, None);
    let dir = tempfile::tempdir().unwrap();
    let source = audited_sample(dir.path());
    Run::new(&d1, "dry", &source).ok();
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(CHANGES)
        .unwrap();
    let before = d1.requests().len();
    let report_path = dir.path().join("dry.json");
    let out = Run::new(&d1, "dry", &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let report = read_json(&report_path);
    assert_eq!(report["mode"], "dry-run");
    assert_eq!(report["d1_rows_written"], 0);
    let tables = report["sync"]["tables"].as_array().unwrap();
    let customers = tables.iter().find(|t| t["table"] == "customers").unwrap();
    assert_eq!(customers["insert"], 2);
    assert_eq!(
        customers["first_inserts"],
        serde_json::json!(["5000", "5001"])
    );
    assert_eq!(customers["update"], 5);
    assert_eq!(customers["first_updates"][0], "37");
    let orders = tables.iter().find(|t| t["table"] == "orders").unwrap();
    assert_eq!(orders["delete"], 10);
    assert_eq!(orders["first_deletes"][0], "97");
    let summary = stderr(&out);
    assert!(summary.contains("to insert"), "{summary}");
    assert!(summary.contains("insert keys: 5000; 5001"), "{summary}");
    // Nothing but reads was sent.
    for r in &d1.requests()[before..] {
        for s in r["statements"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            assert!(!s.starts_with("PRAGMA DEFER"), "a write was sent: {r}");
        }
    }
}

#[test]
fn a_sync_killed_at_several_points_converges_when_run_again() {
    let ids = vec!["killed-sync".to_string()];
    let d1 = LocalD1::start(&ids, Some("latency_ms=10,seed=3"));
    let dir = tempfile::tempdir().unwrap();
    let source = audited_sample(dir.path());
    Run::new(&d1, "killed-sync", &source).ok();
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(CHANGES).unwrap();
    // Many requests' worth of changes: every other line's price.
    conn.execute_batch("UPDATE order_lines SET unit_price = unit_price + 1 WHERE order_id % 2 = 0")
        .unwrap();
    drop(conn);
    let writes = |d1: &LocalD1| {
        d1.requests()
            .iter()
            .filter(|r| r["statements"][0] == "PRAGMA DEFER_FOREIGN_KEYS")
            .count()
    };
    let mut kills = 0;
    for point in 0..4 {
        let before = writes(&d1);
        let mut child = Run::new(&d1, "killed-sync", &source)
            .env("MIGRATION_MODE", "sync")
            .env("MIGRATION_SYNC_DELETE", "true")
            .env("MIGRATION_REQUEST_BYTES", "100000")
            .env("MIGRATION_QUIET", "true")
            .command()
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            // Kill after the trigger drop and a few writes of this attempt.
            if writes(&d1) >= before + 1 + point {
                child.kill().unwrap();
                kills += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sync neither wrote nor ended"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "only {kills} syncs were killed mid-way");
    let report_path = dir.path().join("sync.json");
    Run::new(&d1, "killed-sync", &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_SYNC_DELETE", "true")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let diff = sqldiff(&source, d1.file("killed-sync"));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let triggers = d1.sql(
        "killed-sync",
        &["SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name"],
    );
    assert_eq!(
        triggers[0],
        serde_json::json!([["lines_audit"], ["orders_note_default"]])
    );
    assert_eq!(read_json(&report_path)["validation"]["ok"], true);
}

/// Tampering of every kind with the edge cases: storage classes swapped, a large value cut, a
/// cyclic key cleared, rows deleted and added (rowid table without alias, WITHOUT ROWID, FTS5),
/// generated columns' inputs changed.
const TAMPERING: &[&str] = &[
    "UPDATE \"values\" SET anything = 1.0, i = 'text', r = X'00', t = NULL, b = 42, n = -0.0 WHERE id = (SELECT min(id) FROM \"values\")",
    "UPDATE \"values\" SET t = CAST(X'6F6B00FF' AS TEXT) WHERE id = (SELECT max(id) FROM \"values\")",
    "DELETE FROM plain WHERE rowid = (SELECT min(rowid) FROM plain)",
    "INSERT INTO plain (rowid, label, amount) VALUES (99999, 'extra', 1)",
    "UPDATE employees SET manager_id = NULL WHERE manager_id IS NOT NULL",
    "UPDATE big SET payload = X'00' WHERE id = (SELECT id FROM big ORDER BY length(payload) DESC LIMIT 1)",
    "DELETE FROM docs WHERE rowid = (SELECT min(rowid) FROM docs)",
    "UPDATE gen SET a = a + 1",
    "DELETE FROM \"line items\" WHERE \"order\" = (SELECT min(\"order\") FROM \"line items\")",
    "UPDATE strict_t SET w = 'changed'",
];

#[test]
fn the_edge_cases_are_repaired_exactly_in_both_directions() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "edge-cases");
    Run::new(d1, &db, &source).ok();
    d1.sql(&db, TAMPERING);
    assert!(!sqldiff(&source, d1.file(&db)).is_empty());
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_SYNC_DELETE", "true")
        .ok();
    let diff = sqldiff(&source, d1.file(&db));
    assert!(diff.is_empty(), "{}\n{}", diff.join("\n"), stderr(&out));

    // Backward: the file tampered with, D1 the source.
    let file = dir.path().join("local.sqlite");
    std::fs::copy(&source, &file).unwrap();
    let conn = rusqlite::Connection::open(&file).unwrap();
    for sql in TAMPERING {
        conn.execute_batch(sql).unwrap();
    }
    drop(conn);
    let out = Run::new(d1, &db, &file)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_SYNC_DELETE", "true")
        .ok();
    let diff = sqldiff(&file, d1.file(&db));
    assert!(diff.is_empty(), "{}\n{}", diff.join("\n"), stderr(&out));
}

/// The names of the triggers on D1, in order.
fn d1_triggers(d1: &LocalD1, db: &str) -> serde_json::Value {
    d1.sql(
        db,
        &["SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name"],
    )[0]
    .clone()
}

#[test]
fn a_sync_whose_writes_fail_creates_d1s_triggers_again() {
    let (d1, db, dir) = fresh();
    let source = audited_sample(dir.path());
    Run::new(d1, &db, &source).ok();
    let before = d1_triggers(d1, &db);
    assert_eq!(
        before,
        serde_json::json!([["lines_audit"], ["orders_note_default"]])
    );
    // A line whose order exists nowhere: D1's foreign key rejects it.
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             UPDATE customers SET name = 'changed' WHERE id = 5;
             INSERT INTO order_lines VALUES (999999, 1, 1, 1.0);",
        )
        .unwrap();
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_ON_BAD_ROW", "fail")
        .env("MIGRATION_MAX_RETRIES", "0")
        .output();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(d1_triggers(d1, &db), before, "{}", stderr(&out));
}

/// The sync state of this migration in the state folder (`sync-<id>.json`).
fn sync_state(d1: &LocalD1, db: &str) -> PathBuf {
    std::fs::read_dir(d1.state_dir(db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("sync-") && name.ends_with(".json")
        })
        .expect("a sync state")
}

#[test]
fn triggers_a_killed_sync_dropped_are_created_again_by_a_rerun_of_another_selection() {
    let (d1, db, dir) = fresh();
    let source = audited_sample(dir.path());
    Run::new(d1, &db, &source).ok();
    Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .ok();
    // As a sync killed between dropping the trigger and creating it again leaves it: dropped on
    // D1, recorded only in the sync's state.
    let sql = d1.sql(
        &db,
        &["SELECT sql FROM sqlite_schema WHERE name = 'lines_audit'"],
    )[0][0][0]
        .as_str()
        .unwrap()
        .to_string();
    d1.sql(&db, &["DROP TRIGGER lines_audit"]);
    let path = sync_state(d1, &db);
    let mut state = read_json(&path);
    state["dropped_triggers"] = serde_json::json!([["lines_audit", sql]]);
    std::fs::write(&path, state.to_string()).unwrap();
    // Rerun with another table selection: not refused, and the trigger is there again.
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_TABLES", "customers,orders")
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        d1_triggers(d1, &db),
        serde_json::json!([["lines_audit"], ["orders_note_default"]]),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        read_json(&path)["dropped_triggers"],
        serde_json::Value::Null
    );
}

#[test]
fn a_sync_either_way_is_refused_while_a_copy_of_the_same_migration_holds_its_lock() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    Run::new(d1, &db, &source).ok();
    let lock = std::fs::read_dir(d1.state_dir(&db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("checkpoint-") && name.ends_with(".lock")
        })
        .expect("the copy's lock");
    // Held as a running copy holds it.
    let held = std::fs::OpenOptions::new().write(true).open(&lock).unwrap();
    held.try_lock().unwrap();
    // Both directions: a backward sync writes the file the copy reads.
    for direction in ["sqlite-to-d1", "d1-to-sqlite"] {
        let out = Run::new(d1, &db, &source)
            .env("MIGRATION_MODE", "sync")
            .env("MIGRATION_DIRECTION", direction)
            .output();
        assert_eq!(out.status.code(), Some(2), "{direction}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("another run of this migration"),
            "{direction}: {}",
            stderr(&out)
        );
    }
    drop(held);
    Run::new(d1, &db, &source)
        .env("MIGRATION_MODE", "sync")
        .ok();
}

#[test]
fn a_backward_sync_keeps_d1s_sequence_rowid_only_where_free() {
    let (d1, db, dir) = fresh();
    let source = dir.path().join("seq.sqlite");
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(
        "CREATE TABLE x (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
         CREATE TABLE y (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
         INSERT INTO x (v) VALUES ('a');
         INSERT INTO y (v) VALUES ('b');",
    )
    .unwrap();
    drop(conn);
    // D1 holds x's counter at rowid 1.
    Run::new(d1, &db, &source).env("MIGRATION_TABLES", "x").ok();
    assert_eq!(
        d1.sql(&db, &["SELECT rowid FROM sqlite_sequence WHERE name = 'x'"])[0],
        serde_json::json!([[1]])
    );
    // The file's rowid 1 is y's, a table outside the selection; D1's counter moves on.
    let file = dir.path().join("local.sqlite");
    std::fs::copy(&source, &file).unwrap();
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch(
            "DELETE FROM sqlite_sequence;
             INSERT INTO sqlite_sequence (rowid, name, seq) VALUES (1, 'y', 1), (2, 'x', 1);",
        )
        .unwrap();
    d1.sql(&db, &["INSERT INTO x (v) VALUES ('on D1')"]);
    let out = Run::new(d1, &db, &file)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_TABLES", "x")
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
    let seq = |name: &str| {
        count(
            &file,
            &format!("SELECT seq FROM sqlite_sequence WHERE name = '{name}'"),
        )
    };
    assert_eq!(seq("x"), 2);
    assert_eq!(seq("y"), 1);
    assert_eq!(count(&file, "SELECT count(*) FROM x"), 2);
}

/// A sync whose new rows require each other through NOT NULL keys (and an update pointing an
/// old row at a new one, and deleted rows that refer to each other), in both directions:
/// forward, changed in the file and written to D1; backward, changed on D1 (one request, keys
/// checked at its end) and written to the file. Each ends identical, every key kept, with every
/// row validated.
fn syncs_a_not_null_cycle_both_ways(original: &Path, changes: &[&str]) {
    let synced = |d1: &LocalD1, db: &str, dir: &Path, file: &Path, direction: &str| {
        let report_path = dir.join(format!("{direction}.json"));
        let out = Run::new(d1, db, file)
            .env("MIGRATION_DIRECTION", direction)
            .env("MIGRATION_MODE", "sync")
            .env("MIGRATION_SYNC_DELETE", "true")
            .env("MIGRATION_REPORT", &report_path)
            .ok();
        let diff = sqldiff(file, d1.file(db));
        assert!(diff.is_empty(), "{}\n{}", diff.join("\n"), stderr(&out));
        assert_eq!(
            count(file, "SELECT count(*) FROM pragma_foreign_key_check"),
            0,
            "every key is kept"
        );
        let report = read_json(&report_path);
        assert_eq!(report["validation"]["ok"], true);
        assert_eq!(report["validation"]["full"], true);
    };
    let (d1, db, dir) = fresh();
    let source = dir.path().join("source.sqlite");
    std::fs::copy(original, &source).unwrap();
    Run::new(d1, &db, &source).ok();
    let mut batch =
        String::from("PRAGMA foreign_keys = ON; BEGIN; PRAGMA defer_foreign_keys = ON;");
    for c in changes {
        batch.push_str(c);
        batch.push(';');
    }
    batch.push_str("COMMIT;");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(&batch)
        .unwrap();
    synced(d1, &db, dir.path(), &source, "sqlite-to-d1");

    let (d1, db, dir) = fresh();
    Run::new(d1, &db, original).ok();
    let file = dir.path().join("local.sqlite");
    std::fs::copy(original, &file).unwrap();
    let mut statements = vec!["PRAGMA defer_foreign_keys = on"];
    statements.extend(changes);
    d1.sql(&db, &statements);
    synced(d1, &db, dir.path(), &file, "d1-to-sqlite");
}

#[test]
fn a_sync_inserts_rows_of_a_not_null_two_table_cycle_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    syncs_a_not_null_cycle_both_ways(
        &crate::shapes::store_and_staff(dir.path()),
        &[
            // A new store and its new manager, who works there, and a colleague.
            "INSERT INTO store VALUES (8, 'store 8', 41, 41)",
            "INSERT INTO staff VALUES (41, 'staff 41', 8, NULL), (42, 'staff 42', 8, 41)",
            // An old store managed by a new member, an old member moved to the new store.
            "UPDATE store SET manager_staff_id = 42, manager_copy = 42 WHERE store_id = 1",
            "UPDATE staff SET store_id = 8, name = 'moved' WHERE staff_id = 3",
            // A store closed with its manager, who works there (rows that refer to each
            // other, deleted together); the rest of its staff moved to the new store.
            "UPDATE staff SET mentor = NULL WHERE mentor = 22",
            "UPDATE staff SET store_id = 8 WHERE store_id = 6 AND staff_id <> 22",
            "DELETE FROM staff WHERE staff_id = 22",
            "DELETE FROM store WHERE store_id = 6",
        ],
    );
}

#[test]
fn a_sync_inserts_rows_of_a_three_table_not_null_ring_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    syncs_a_not_null_cycle_both_ways(
        &crate::shapes::ring_source(dir.path()),
        &[
            "INSERT INTO \"ring a\" VALUES (60, 'b60', 'new'), (61, 'b61', 'new too')",
            "INSERT INTO \"ring b\" VALUES ('b60', 61, 'c61'), ('b61', 60, 'c60')",
            "INSERT INTO \"ring c\" VALUES (60, 'c60', 61, 61), (61, 'c61', 60, 60)",
            "UPDATE \"ring a\" SET \"to b\" = 'b61' WHERE id = 0",
            "UPDATE \"ring c\" SET \"to a\" = 60, copy = 60 WHERE k1 = 5",
        ],
    );
}

#[test]
fn a_sync_writes_a_unique_not_null_cycle_in_one_request_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    syncs_a_not_null_cycle_both_ways(
        &crate::shapes::unique_cycles(dir.path()),
        &[
            "INSERT INTO store VALUES (30, 30), (31, 31)",
            "INSERT INTO staff VALUES (30, 31), (31, 30)",
            "UPDATE staff SET store = 31 WHERE id = 4",
        ],
    );
}

#[test]
fn a_sync_inserts_a_row_level_cycle_several_requests_long_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    // 300 new rows, each pointing at the next and the last at the first, about 3 MB: in one
    // table and across two.
    let rows = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 299)";
    syncs_a_not_null_cycle_both_ways(
        &crate::shapes::row_level_cycles(dir.path(), 20),
        &[
            &format!("{rows} INSERT INTO chain SELECT 1000 + i, 1000 + (i + 1) % 300, randomblob(6000) FROM n"),
            &format!("{rows} INSERT INTO left_side SELECT 1000 + i, 1000 + i, hex(randomblob(2000)) FROM n"),
            &format!("{rows} INSERT INTO right_side SELECT 1000 + i, 1000 + (i + 1) % 300, hex(randomblob(2000)) FROM n"),
        ],
    );
}
