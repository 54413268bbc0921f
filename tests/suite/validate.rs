//! Validation: a clean copy passes in both modes; changes made behind the tool's back are each
//! caught by full validation, which names the table and the key.

use d1_migrator::value::Value;

use crate::harness::{dataset, fresh, read_json, stderr, LocalD1, Run};

fn source(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("cells.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch("CREATE TABLE cells (id INTEGER PRIMARY KEY, r REAL, i INTEGER, b BLOB, v)")
        .unwrap();
    for id in 1..=300i64 {
        db.execute(
            "INSERT INTO cells VALUES (?, ?, ?, ?, ?)",
            rusqlite::params![
                id,
                id as f64 / 7.0,
                (1i64 << 53) + id,
                vec![id as u8; 40],
                id.to_string()
            ],
        )
        .unwrap();
    }
    path
}

#[test]
fn full_validation_names_every_kind_of_difference() {
    let (d1, db, dir) = fresh();
    let src = source(dir.path());
    Run::new(d1, &db, &src)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();

    let one_ulp = Value::Real(f64::from_bits((3.0f64 / 7.0).to_bits() + 1)).literal();
    let mut flipped = vec![5u8; 40];
    flipped[17] ^= 0x01;
    let flipped = Value::Blob(flipped).literal();
    d1.sql(
        &db,
        &[
            "DELETE FROM cells WHERE id = 2",
            "INSERT INTO cells VALUES (1000, 1.5, 1, X'00', 'new')",
            &format!("UPDATE cells SET r = {one_ulp} WHERE id = 3"),
            "UPDATE cells SET i = 9007199254740998 WHERE id = 4",
            &format!("UPDATE cells SET b = {flipped} WHERE id = 5"),
            "UPDATE cells SET v = 6 WHERE id = 6",
        ],
    );
    let report_path = dir.path().join("report.json");
    let out = Run::new(d1, &db, &src)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report_path)
        .output();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = read_json(&report_path);
    let table = &report["validation"]["tables"][0];
    assert_eq!(table["table"], "cells");
    assert_eq!(table["missing"], 1);
    assert_eq!(table["extra"], 1);
    assert_eq!(table["mismatched"], 4);
    let kind_of = |key: &str| {
        table["differences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["key"] == key)
            .unwrap_or_else(|| panic!("key {key} is named: {table}"))
            .clone()
    };
    assert_eq!(kind_of("2")["kind"], "missing");
    assert_eq!(kind_of("1000")["kind"], "extra");
    for (key, column) in [
        ("3", "\"r\""),
        ("4", "\"i\""),
        ("5", "\"b\""),
        ("6", "\"v\""),
    ] {
        let d = kind_of(key);
        assert_eq!(d["kind"], "mismatch");
        assert_eq!(d["fields"][0]["column"], column, "{d}");
    }
    assert!(kind_of("6")["fields"][0]["target"]
        .as_str()
        .unwrap()
        .starts_with("integer 6"));
    assert!(stderr(&out).contains("mismatch key 3"), "{}", stderr(&out));
}

#[test]
fn sampled_validation_reaches_across_the_key_range_and_catches_a_change() {
    let (d1, db, dir) = fresh();
    let src = source(dir.path());
    Run::new(d1, &db, &src).ok();
    // Change every row of the upper half: a sample taken only from the first rows would miss it.
    d1.sql(&db, &["UPDATE cells SET v = 'changed' WHERE id > 150"]);
    let report_path = dir.path().join("report.json");
    let out = Run::new(d1, &db, &src)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_SAMPLE_SIZE", "40")
        .env("MIGRATION_SAMPLE_SEED", "9")
        .env("MIGRATION_REPORT", &report_path)
        .output();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let table = read_json(&report_path)["validation"]["tables"][0].clone();
    assert!(table["sampled"].as_u64().unwrap() >= 30, "{table}");
    assert!(table["mismatched"].as_u64().unwrap() > 0);
    // The same seed samples the same rows.
    let again = dir.path().join("again.json");
    Run::new(d1, &db, &src)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_SAMPLE_SIZE", "40")
        .env("MIGRATION_SAMPLE_SEED", "9")
        .env("MIGRATION_REPORT", &again)
        .output();
    assert_eq!(
        read_json(&again)["validation"]["tables"][0]["differences"],
        table["differences"]
    );
}

#[test]
fn chinook_and_northwind_pass_full_validation() {
    for name in ["chinook.sqlite", "northwind.db"] {
        let Some(src) = dataset(name) else { return };
        let d1 = LocalD1::shared();
        let db = d1.fresh_database();
        let dir = tempfile::tempdir().unwrap();
        Run::new(d1, &db, &src).ok();
        let report_path = dir.path().join("report.json");
        Run::new(d1, &db, &src)
            .env("MIGRATION_MODE", "validate")
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
            .env("MIGRATION_REPORT", &report_path)
            .ok();
        let report = read_json(&report_path);
        assert_eq!(report["validation"]["ok"], true);
        let compared: u64 = report["validation"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["compared"].as_u64().unwrap())
            .sum();
        let rows: u64 = report["validation"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["source_rows"].as_u64().unwrap())
            .sum();
        assert_eq!(compared, rows, "{name}: every row compared");
    }
}

/// Regression: with MIGRATION_SAMPLE_SIZE=100, a 93-row table was "64 sampled" and a 200-row
/// table "84 sampled" (keys drawn with replacement). Now the first is compared whole and the
/// second gets exactly 100 distinct rows, read from D1 too.
#[test]
fn samples_have_the_size_asked_for() {
    let (d1, db, dir) = fresh();
    let src = dir.path().join("sizes.sqlite");
    let mut conn = rusqlite::Connection::open(&src).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch(
        "CREATE TABLE small (id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE large (id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    for i in 1..=200i64 {
        if i <= 93 {
            tx.execute("INSERT INTO small VALUES (?, 's')", [i])
                .unwrap();
        }
        tx.execute("INSERT INTO large VALUES (?, 'l')", [i * 3])
            .unwrap();
    }
    tx.commit().unwrap();
    let report_path = dir.path().join("report.json");
    let out = Run::new(d1, &db, &src)
        .env("MIGRATION_SAMPLE_SIZE", "100")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let tables = read_json(&report_path)["validation"]["tables"].clone();
    let sampled = |name: &str| {
        tables
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .map(|t| {
                (
                    t["sampled"].as_u64().unwrap(),
                    t["compared"].as_u64().unwrap(),
                )
            })
            .unwrap()
    };
    assert_eq!(sampled("small"), (93, 93), "{tables}");
    assert_eq!(sampled("large"), (100, 100), "{tables}");
    assert!(stderr(&out).contains("93 sampled"), "{}", stderr(&out));
}

/// A table no larger than the sample is compared whole, its target rows read with the other
/// tables' in one request: a row only the target holds is extra, and so is every one of many
/// (more than that read takes: the table is then walked).
#[test]
fn a_table_compared_whole_counts_every_row_only_the_target_holds() {
    let (d1, db, dir) = fresh();
    let src = dir.path().join("small.sqlite");
    let conn = rusqlite::Connection::open(&src).unwrap();
    conn.execute_batch(
        "CREATE TABLE few (id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO few VALUES (1, 'a'), (2, 'b'), (3, 'c');
         CREATE TABLE others (id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO others VALUES (1, 'x'), (2, 'y');",
    )
    .unwrap();
    drop(conn);
    Run::new(d1, &db, &src).ok();
    let validate = |name: &str| {
        let report = dir.path().join(format!("{name}.json"));
        let out = Run::new(d1, &db, &src)
            .env("MIGRATION_MODE", "validate")
            .env("MIGRATION_REPORT", &report)
            .output();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let r = read_json(&report);
        let table = |t: &str| {
            r["validation"]["tables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["table"] == t)
                .unwrap()
                .clone()
        };
        (table("few"), table("others"))
    };
    d1.sql(&db, &["INSERT INTO few VALUES (10, 'only on D1')"]);
    let (few, others) = validate("one");
    assert_eq!(
        (few["extra"].as_u64(), few["compared"].as_u64()),
        (Some(1), Some(3)),
        "{few}"
    );
    assert_eq!(few["differences"][0]["key"], "10", "{few}");
    assert_eq!(others["ok"], true, "{others}");
    let many: Vec<String> = (100..120)
        .map(|i| format!("INSERT INTO few VALUES ({i}, 'more')"))
        .collect();
    d1.sql(&db, &many.iter().map(String::as_str).collect::<Vec<_>>());
    let (few, _) = validate("many");
    assert_eq!(few["extra"], 21, "{few}");
    assert_eq!(few["target_rows"], 24, "{few}");
}

/// More than a page of rows only the target holds after the source's last key: the table's last
/// page asks for a page of them along with its own rows, and the rest is walked after it.
#[test]
fn full_validation_counts_more_than_a_page_of_rows_only_the_target_holds_after_the_last_key() {
    let (d1, db, dir) = fresh();
    let src = dir.path().join("wide.sqlite");
    // Rows of 100 KB of values: pages of 20 rows.
    rusqlite::Connection::open(&src)
        .unwrap()
        .execute_batch(
            "CREATE TABLE wide (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
             INSERT INTO wide SELECT i, hex(randomblob(50000)) FROM n;",
        )
        .unwrap();
    Run::new(d1, &db, &src).ok();
    d1.sql(
        &db,
        &[
            "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < 149) \
           INSERT INTO wide SELECT i, hex(randomblob(50000)) FROM n",
        ],
    );
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &src)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report)
        .output();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = read_json(&report);
    let table = &report["validation"]["tables"][0];
    assert_eq!(
        (
            table["compared"].as_u64(),
            table["extra"].as_u64(),
            table["missing"].as_u64(),
            table["mismatched"].as_u64(),
            table["target_rows"].as_u64()
        ),
        (Some(5), Some(50), Some(0), Some(0), Some(55)),
        "{table}"
    );
    assert_eq!(table["differences"][0]["key"], "100", "{table}");
}
