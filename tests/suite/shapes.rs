//! Shapes real applications have: tables bound by NOT NULL foreign-key cycles (two tables, rings,
//! row-level cycles many requests long), and tables at D1's column limit with long quoted names
//! and wide keys. Each migrates, validates in full and rolls back exactly (`sqldiff`).

use std::path::Path;

use crate::harness::{fresh, sqldiff, stderr, LocalD1, Run};

/// Migrates `source` into a fresh database with full validation, then rolls it back with full
/// validation; both copies must equal the source. `env` adds variables to both runs.
pub fn round_trip(source: &Path, env: &[(&str, &str)]) {
    let (d1, db, dir) = fresh();
    round_trip_into(d1, &db, dir.path(), source, env);
}

/// [`round_trip`] into database `db`, with checkpoints and the rolled-back file under `dir`.
pub fn round_trip_into(d1: &LocalD1, db: &str, dir: &Path, source: &Path, env: &[(&str, &str)]) {
    let mut forward = Run::new(d1, db, source)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_STATE_DIR", dir.join("state-forward"));
    for (k, v) in env {
        forward = forward.env(k, v);
    }
    forward.ok();
    let diff = sqldiff(source, d1.file(db));
    assert!(
        diff.is_empty(),
        "D1 differs from the source:\n{}",
        diff.join("\n")
    );
    let back = dir.join("back.sqlite");
    let mut rollback = Run::new(d1, db, &back)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_STATE_DIR", dir.join("state-rollback"));
    for (k, v) in env {
        rollback = rollback.env(k, v);
    }
    rollback.ok();
    let diff = sqldiff(source, &back);
    assert!(
        diff.is_empty(),
        "the rolled-back file differs from the source:\n{}",
        diff.join("\n")
    );
    assert_eq!(schema_of(source), schema_of(&back), "sqlite_master differs");
}

/// `(type, name, tbl_name, sql)` of every object of a SQLite file, D1's own left out.
pub fn schema_of(path: &Path) -> Vec<(String, String, String, Option<String>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT type, name, tbl_name, sql FROM sqlite_master \
             WHERE name NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY type, name",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column name of exactly 64 characters with spaces, quotes and brackets.
fn long_name(i: usize) -> String {
    let mut name = format!("col {i:03} \"quoted\" [bracket] 'single' and a long tail of words ");
    while name.chars().count() < 64 {
        name.push('x');
    }
    name.chars().take(64).collect()
}

fn edge_value(i: usize, row: usize) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match (i + row) % 9 {
        0 => V::Integer(i64::MIN + row as i64),
        1 => V::Integer((1 << 53) + 1 + row as i64),
        2 => V::Real(-0.0),
        3 => V::Real(f64::INFINITY),
        4 => V::Real(5e-324 * (row + 1) as f64),
        5 => V::Text(format!("line\r\nnul-free {row} 'quoted' \u{e9}")),
        6 => V::Blob(vec![0, 0xff, row as u8]),
        7 => V::Null,
        _ => V::Text("x".repeat(200 + row)),
    }
}

/// A 100-column rowid table and a WITHOUT ROWID table with a 12-column key, all names 64
/// characters long with spaces and quotes, long table names, edge values.
fn wide_source(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("wide.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let wide = "a table name that is long, \"quoted\" and [bracketed] to reach the column limit";
    let cols: Vec<String> = (0..100).map(|i| quoted(&long_name(i))).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE {} ({})",
        quoted(wide),
        cols.join(", ")
    ))
    .unwrap();
    let keyed = "keyed by twelve columns, WITHOUT ROWID and with a long \"name\"";
    let mut defs: Vec<String> = (0..100)
        .map(|i| {
            let ty = if i < 12 { " NOT NULL" } else { "" };
            format!("{}{ty}", quoted(&long_name(i)))
        })
        .collect();
    defs.push(format!(
        "PRIMARY KEY ({})",
        (0..12)
            .map(|i| quoted(&long_name(i)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    conn.execute_batch(&format!(
        "CREATE TABLE {} ({}) WITHOUT ROWID",
        quoted(keyed),
        defs.join(", ")
    ))
    .unwrap();
    let marks = vec!["?"; 100].join(",");
    for (table, rows) in [(wide, 300usize), (keyed, 150)] {
        let mut stmt = conn
            .prepare(&format!("INSERT INTO {} VALUES ({marks})", quoted(table)))
            .unwrap();
        for row in 0..rows {
            let values: Vec<rusqlite::types::Value> = (0..100)
                .map(|i| {
                    if table == keyed && i < 12 {
                        // Keys: distinct per row, of every type but NULL.
                        match i % 4 {
                            0 => rusqlite::types::Value::Integer((row / 3) as i64),
                            1 => rusqlite::types::Value::Text(format!("k {row} 'q'")),
                            2 => rusqlite::types::Value::Real(row as f64 / 7.0),
                            _ => rusqlite::types::Value::Blob(vec![row as u8, 0]),
                        }
                    } else {
                        edge_value(i, row)
                    }
                })
                .collect();
            stmt.execute(rusqlite::params_from_iter(values)).unwrap();
        }
    }
    drop(conn);
    path
}

#[test]
fn tables_at_the_column_limit_with_long_quoted_names_and_a_12_column_key_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let source = wide_source(dir.path());
    round_trip(&source, &[("MIGRATION_SAMPLE_SIZE", "50")]);
}

#[test]
fn sampled_validation_of_tables_at_the_column_limit_passes() {
    let (d1, db, dir) = fresh();
    let source = wide_source(dir.path());
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_SAMPLE_SIZE", "200")
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn create(dir: &Path, name: &str, sql: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    path
}

/// Sakila's shape: every store has a required manager, every staff member a required store.
/// The CHECK ties a key to a copy of it, so a row pointing at an anchor breaks it for a while.
pub fn store_and_staff(dir: &Path) -> std::path::PathBuf {
    let mut sql = String::from(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE store (store_id INTEGER PRIMARY KEY, name TEXT NOT NULL,
             manager_staff_id INTEGER NOT NULL REFERENCES staff (staff_id) ON DELETE RESTRICT,
             manager_copy INTEGER, CHECK (manager_staff_id = manager_copy));
         CREATE TABLE staff (staff_id INTEGER PRIMARY KEY, name TEXT NOT NULL,
             store_id INTEGER NOT NULL REFERENCES store (store_id) DEFERRABLE INITIALLY DEFERRED,
             mentor INTEGER REFERENCES staff (staff_id));
         CREATE INDEX staff_store ON staff (store_id);
         BEGIN;",
    );
    for s in 1..=7 {
        let manager = 40 - s * 3;
        sql.push_str(&format!(
            "INSERT INTO store VALUES ({s}, 'store {s}', {manager}, {manager});"
        ));
    }
    for p in 1..=40 {
        let mentor = if p % 5 == 0 {
            "NULL".to_string()
        } else {
            (41 - p).to_string()
        };
        sql.push_str(&format!(
            "INSERT INTO staff VALUES ({p}, 'staff {p}', {}, {mentor});",
            7 - p % 7
        ));
    }
    sql.push_str("COMMIT;");
    create(dir, "store-staff.sqlite", &sql)
}

#[test]
fn a_not_null_two_table_cycle_migrates_validates_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&store_and_staff(dir.path()), &[]);
}

/// Three tables in a ring of NOT NULL keys (one composite, WITHOUT ROWID), with CHECKs that a
/// placeholder key breaks.
pub fn ring_source(dir: &Path) -> std::path::PathBuf {
    let mut sql = String::from(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE \"ring a\" (id INTEGER PRIMARY KEY, \"to b\" INTEGER NOT NULL REFERENCES \"ring b\", note TEXT);
         CREATE TABLE \"ring b\" (id TEXT PRIMARY KEY, \"to c\" BLOB NOT NULL REFERENCES \"ring c\" (k1, k2),
             CHECK (length(\"to c\") > 0)) WITHOUT ROWID;
         CREATE TABLE \"ring c\" (k1 INTEGER NOT NULL, k2 TEXT NOT NULL, \"to a\" INTEGER NOT NULL
             REFERENCES \"ring a\" ON DELETE CASCADE, copy INTEGER, CHECK (\"to a\" = copy),
             PRIMARY KEY (k1, k2)) WITHOUT ROWID;
         BEGIN;",
    );
    // Composite key (k1, k2) referred to by a single-column key: only legal pairs matter, so
    // ring b refers to c's (k1) through a two-column key spelled with k1 alone would be
    // illegal; use c's rowid-free key through a generated pair instead.
    sql = sql.replace(
        "\"to c\" BLOB NOT NULL REFERENCES \"ring c\" (k1, k2),",
        "\"to c k1\" INTEGER NOT NULL, \"to c\" TEXT NOT NULL, \
         FOREIGN KEY (\"to c k1\", \"to c\") REFERENCES \"ring c\" (k1, k2),",
    );
    for i in 0..60 {
        sql.push_str(&format!(
            "INSERT INTO \"ring a\" VALUES ({i}, 'b{}', 'a row {i}');",
            (i * 7) % 60
        ));
        sql.push_str(&format!(
            "INSERT INTO \"ring b\" VALUES ('b{i}', {}, 'c{}');",
            (i * 11) % 60,
            (i * 11) % 60
        ));
        sql.push_str(&format!(
            "INSERT INTO \"ring c\" VALUES ({i}, 'c{i}', {}, {});",
            59 - i,
            59 - i
        ));
    }
    sql.push_str("COMMIT;");
    let source = create(dir, "ring.sqlite", &sql);
    let check = rusqlite::Connection::open(&source).unwrap();
    let violations: i64 = check
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(violations, 0, "the ring is consistent");
    drop(check);
    source
}

#[test]
fn a_three_table_not_null_ring_migrates_validates_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&ring_source(dir.path()), &[]);
}

#[test]
fn a_not_null_ring_loads_through_the_import_method_too() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&ring_source(dir.path()), &[("MIGRATION_METHOD", "import")]);
}

/// Row i points at row i+1 and the last at the first, with enough payload that the cycle runs
/// over many requests: in one table (NOT NULL self-reference) and across two tables.
pub fn row_level_cycles(dir: &Path, rows: usize) -> std::path::PathBuf {
    let mut sql = String::from(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE chain (id INTEGER PRIMARY KEY, next INTEGER NOT NULL REFERENCES chain (id), payload BLOB);
         CREATE TABLE left_side (id INTEGER PRIMARY KEY, partner INTEGER NOT NULL REFERENCES right_side, payload TEXT);
         CREATE TABLE right_side (id INTEGER PRIMARY KEY, partner INTEGER NOT NULL REFERENCES left_side, payload TEXT);
         BEGIN;",
    );
    for i in 0..rows {
        let next = (i + 1) % rows;
        sql.push_str(&format!(
            "INSERT INTO chain VALUES ({i}, {next}, randomblob(3000));
             INSERT INTO left_side VALUES ({i}, {i}, hex(randomblob(1500)));
             INSERT INTO right_side VALUES ({i}, {next}, hex(randomblob(1500)));"
        ));
    }
    sql.push_str("COMMIT;");
    create(dir, "row-cycles.sqlite", &sql)
}

#[test]
fn a_row_level_cycle_many_requests_long_migrates_validates_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let source = row_level_cycles(dir.path(), 400);
    round_trip(&source, &[("MIGRATION_REQUEST_BYTES", "100000")]);
}

/// Cycles of NOT NULL keys that are UNIQUE, so no anchor can be shared: two tables and a ring
/// of rows in one table.
pub fn unique_cycles(dir: &Path) -> std::path::PathBuf {
    let mut sql = String::from(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE store (id INTEGER PRIMARY KEY, manager INTEGER NOT NULL UNIQUE REFERENCES staff);
         CREATE TABLE staff (id INTEGER PRIMARY KEY, store INTEGER NOT NULL REFERENCES store);
         CREATE TABLE ring (id INTEGER PRIMARY KEY, next INTEGER NOT NULL UNIQUE REFERENCES ring);
         BEGIN;",
    );
    for i in 0..30 {
        sql.push_str(&format!(
            "INSERT INTO store VALUES ({i}, {});
             INSERT INTO staff VALUES ({i}, {});
             INSERT INTO ring VALUES ({i}, {});",
            29 - i,
            (i * 7) % 30,
            (i + 1) % 30
        ));
    }
    sql.push_str("COMMIT;");
    create(dir, "unique-cycle.sqlite", &sql)
}

#[test]
fn unique_cyclic_keys_load_their_group_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let source = unique_cycles(dir.path());
    round_trip(&source, &[("MIGRATION_REQUEST_BYTES", "100000")]);
}

#[test]
fn a_unique_cycle_too_large_for_one_request_is_refused_naming_its_tables() {
    let (d1, db, dir) = fresh();
    let mut sql = String::from(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE a (id INTEGER PRIMARY KEY, b_id INTEGER NOT NULL UNIQUE REFERENCES b, big BLOB);
         CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER NOT NULL REFERENCES a);
         BEGIN;",
    );
    for i in 0..10 {
        sql.push_str(&format!(
            "INSERT INTO a VALUES ({i}, {i}, zeroblob(1900000));
             INSERT INTO b VALUES ({i}, {i});"
        ));
    }
    sql.push_str("COMMIT;");
    let source = create(dir.path(), "too-large.sqlite", &sql);
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_STATE_DIR", dir.path().join("state"))
        .output();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("tables \"a\", \"b\" refer to each other through NOT NULL foreign keys"),
        "{err}"
    );
    let rows = d1.sql(&db, &["SELECT count(*) FROM a"]);
    assert_eq!(
        rows[0],
        serde_json::json!([[0]]),
        "no row of the group was loaded"
    );
}

#[test]
fn a_not_null_cycle_run_killed_midway_resumes_exactly() {
    let ids = vec!["cycle-killed".to_string()];
    let d1 = LocalD1::start(&ids, Some("latency_ms=5,seed=3"));
    let dir = tempfile::tempdir().unwrap();
    let source = row_level_cycles(dir.path(), 600);
    let mut kills = 0;
    for point in 1..=8 {
        let before = d1.requests().len();
        let mut child = Run::new(&d1, "cycle-killed", &source)
            .env("MIGRATION_REQUEST_BYTES", "100000")
            .env("MIGRATION_QUIET", "true")
            .env("MIGRATION_VALIDATE", "false")
            .command()
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
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
                std::time::Instant::now() < deadline,
                "the run neither progressed nor ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.wait().unwrap();
    }
    assert!(kills >= 6, "only {kills} runs were killed mid-way");
    Run::new(&d1, "cycle-killed", &source)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    let diff = sqldiff(&source, d1.file("cycle-killed"));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
}

#[test]
fn the_dry_run_names_the_key_of_every_oversize_row_and_counts_them() {
    let (d1, db, dir) = fresh();
    let source = create(
        dir.path(),
        "oversize.sqlite",
        "CREATE TABLE big_blobs (id INTEGER PRIMARY KEY, b BLOB);
         INSERT INTO big_blobs VALUES (1, zeroblob(10)), (2, zeroblob(2500000)), (3, zeroblob(20)),
             (4, zeroblob(2100000)), (5, zeroblob(2000001));",
    );
    let report = dir.path().join("plan.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report)
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let plan = crate::harness::read_json(&report)["dry_run"].clone();
    let mut keys: Vec<String> = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "row_too_large")
        .map(|f| {
            let key = f["key"].as_str().unwrap().to_string();
            assert!(
                f["message"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("row {key} of ")),
                "{f}"
            );
            key
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["2", "4", "5"]);
    let table = &plan["tables"][0];
    assert_eq!(
        (table["rows"].as_u64(), table["rows_over_limit"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(
        stderr(&out).contains("3 rows over D1's row limit left out"),
        "{}",
        stderr(&out)
    );
}

/// Runs `run` and fails the test when it has not ended within `seconds` (it is killed).
fn within(run: Run, seconds: u64) -> std::process::Output {
    let mut child = run
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the run did not end within {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Found by the random schemas: the keys pass of a table with two deferred keys read
/// `WHERE key > ? AND a IS NOT NULL OR b IS NOT NULL`, so every batch started over and the run
/// never ended.
#[test]
fn a_table_with_two_deferred_keys_over_many_batches_loads_once() {
    let (d1, db, dir) = fresh();
    let mut sql = String::from(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE node (id INTEGER PRIMARY KEY, up INTEGER REFERENCES node, side INTEGER REFERENCES node);
         BEGIN;",
    );
    for i in 0..300 {
        sql.push_str(&format!(
            "INSERT INTO node VALUES ({i}, {}, {});",
            if i % 3 == 0 {
                "NULL".to_string()
            } else {
                ((i + 7) % 300).to_string()
            },
            (i * 11) % 300
        ));
    }
    sql.push_str("COMMIT;");
    let source = create(dir.path(), "two-deferred.sqlite", &sql);
    let out = within(
        Run::new(d1, &db, &source)
            .env("MIGRATION_BATCH_SIZE", "64")
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true"),
        120,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff = sqldiff(&source, d1.file(&db));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
}

/// Found by the random schemas: an FTS5 index filled over several requests holds several
/// segments where the source's, filled at once, holds one, and an external-content index copied
/// row by row is not the one the source rebuilt. Both are rebuilt on D1 now, and the external
/// one in the rolled-back file: the shadow tables equal the source's.
#[test]
fn fts5_indexes_filled_over_many_requests_equal_the_sources() {
    let dir = tempfile::tempdir().unwrap();
    let mut sql = String::from(
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT);
         CREATE VIRTUAL TABLE \"search docs\" USING fts5(body, content='docs', content_rowid='id');
         CREATE VIRTUAL TABLE notes USING fts5(title, body);
         BEGIN;",
    );
    for i in 0..400 {
        let words: Vec<String> = (0..120)
            .map(|w| format!("w{}", (i * 7 + w) % 997))
            .collect();
        sql.push_str(&format!(
            "INSERT INTO docs VALUES ({i}, '{0}');
             INSERT INTO notes (rowid, title, body) VALUES ({i}, 'note {i}', '{0}');",
            words.join(" ")
        ));
    }
    sql.push_str("COMMIT; INSERT INTO \"search docs\"(\"search docs\") VALUES ('rebuild');");
    let source = create(dir.path(), "fts.sqlite", &sql);
    round_trip(&source, &[("MIGRATION_REQUEST_BYTES", "100000")]);
}
