//! Into the schema the application already has: D1's tables created first, the way
//! `wrangler d1 migrations apply` would (other formatting and constraint layout, lower-case names,
//! columns in another order, a column of D1's own, wrangler's `d1_migrations` holding a row),
//! then filled. Tables that fit are filled as they exist, compared by structure; a table that
//! does not fit is refused before anything is written, one line per difference.

use std::path::Path;

use rusqlite::Connection;

use crate::harness::{dataset, fresh, generated, read_json, stderr, LocalD1, Run};

/// wrangler's table of applied migrations, as `wrangler d1 migrations apply` creates it.
const D1_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS d1_migrations(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
)";

/// The source's tables as an application's migration would write them: lower-case names, no
/// brackets, the primary key and foreign keys laid out otherwise, the columns of `reversed` in
/// reverse order, and a nullable column `extra_note` added to `extended`.
fn app_schema(source: &Path, reversed: &str, extended: &str) -> Vec<String> {
    let db = Connection::open(source).unwrap();
    let tables: Vec<(String, String)> = db
        .prepare(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' \
             AND name <> 'd1_migrations' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = Vec::new();
    for (table, sql) in tables {
        let q = format!("'{}'", table.replace('\'', "''"));
        let mut columns: Vec<(String, String, bool, Option<String>, i64)> = db
            .prepare(&format!(
                "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info({q})"
            ))
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if table == reversed {
            columns.reverse();
        }
        let autoincrement = sql.to_uppercase().contains("AUTOINCREMENT");
        let pk_count = columns.iter().filter(|c| c.4 > 0).count();
        let mut defs: Vec<String> = columns
            .iter()
            .map(|(name, ty, not_null, default, pk)| {
                let mut d = format!("{} {}", name.to_lowercase(), ty.to_lowercase());
                if *pk > 0 && pk_count == 1 {
                    d.push_str(" primary key");
                    if autoincrement {
                        d.push_str(" autoincrement");
                    }
                }
                if *not_null {
                    d.push_str(" not null");
                }
                if let Some(v) = default {
                    d.push_str(&format!(" default {v}"));
                }
                d
            })
            .collect();
        if table == extended {
            defs.push("extra_note text".into());
        }
        if pk_count > 1 {
            let mut pk: Vec<&(String, String, bool, Option<String>, i64)> =
                columns.iter().filter(|c| c.4 > 0).collect();
            pk.sort_by_key(|c| c.4);
            let names: Vec<String> = pk.iter().map(|c| c.0.to_lowercase()).collect();
            defs.push(format!("primary key ({})", names.join(", ")));
        }
        let uniques: Vec<String> = db
            .prepare(&format!(
                "SELECT group_concat(i.name, ', ') FROM pragma_index_list({q}) l, pragma_index_info(l.name) i \
                 WHERE l.origin = 'u' GROUP BY l.name"
            ))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for u in uniques {
            defs.push(format!("unique ({})", u.to_lowercase()));
        }
        let fks: Vec<(i64, String, String, Option<String>)> = db
            .prepare(&format!(
                "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list({q}) ORDER BY id, seq"
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (_, parent, from, to) in fks {
            defs.push(format!(
                "foreign key ({}) references {} ({})",
                from.to_lowercase(),
                parent.to_lowercase(),
                to.unwrap_or_else(|| "id".into()).to_lowercase()
            ));
        }
        let without_rowid = sql.to_uppercase().contains("WITHOUT ROWID");
        out.push(format!(
            "create table {} (\n  {}\n){}",
            table.to_lowercase(),
            defs.join(",\n  "),
            if without_rowid { " without rowid" } else { "" }
        ));
    }
    out
}

/// Asserts that every column of every source table holds the same values on D1, matched by
/// name, whatever else D1's table has.
fn assert_source_columns_equal(source: &Path, d1_file: &Path) {
    let src = Connection::open(source).unwrap();
    let d1 = Connection::open(d1_file).unwrap();
    let tables: Vec<String> = src
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' \
             AND name <> 'd1_migrations' AND sql NOT LIKE 'CREATE VIRTUAL%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!tables.is_empty());
    for table in tables {
        let columns: Vec<String> = src
            .prepare(&format!(
                "SELECT '\"' || replace(name, '\"', '\"\"') || '\"' FROM pragma_table_info('{}')",
                table.replace('\'', "''")
            ))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let sql = format!(
            "SELECT {0} FROM \"{1}\" ORDER BY {0}",
            columns.join(", "),
            table.replace('"', "\"\"")
        );
        let read = |db: &Connection| -> Vec<Vec<rusqlite::types::Value>> {
            let mut stmt = db.prepare(&sql).unwrap();
            let n = stmt.column_count();
            stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let (a, b) = (read(&src), read(&d1));
        assert_eq!(a.len(), b.len(), "{table}: rows");
        assert!(a == b, "{table}: the source's columns differ on D1");
    }
}

fn names(d1: &LocalD1, db: &str) -> Vec<String> {
    d1.sql(db, &["SELECT name FROM d1_migrations ORDER BY id"])[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

/// The sample database with wrangler's history of two applied migrations.
fn sample_with_history(dir: &Path) -> std::path::PathBuf {
    let source = generated(dir, "sample");
    let db = Connection::open(&source).unwrap();
    db.execute_batch(&format!(
        "{D1_MIGRATIONS};
         INSERT INTO d1_migrations (name, applied_at) VALUES
           ('0001_init.sql', '2024-05-01 10:00:00'), ('0002_tiers.sql', '2024-06-01 10:00:00');"
    ))
    .unwrap();
    source
}

/// Applies `ddl` to D1 as `wrangler d1 migrations apply` would, with the history D1 has: a
/// migration of the application's own, then the source's first.
fn apply_migrations(d1: &LocalD1, db: &str, ddl: &[String]) {
    let mut statements: Vec<&str> = vec![D1_MIGRATIONS];
    statements.extend(ddl.iter().map(String::as_str));
    statements.push(
        "INSERT INTO d1_migrations (name, applied_at) VALUES \
         ('0000_app_only.sql', '2025-01-01 00:00:00'), ('0001_init.sql', '2025-01-02 00:00:00')",
    );
    d1.sql(db, &statements);
}

/// Also the regression test of `setting sqlite_sequence on D1: ... UNIQUE constraint failed:
/// sqlite_sequence.rowid`: D1's own AUTOINCREMENT table (wrangler's history) held the rowid the
/// source's sequence row had.
#[test]
fn a_schema_the_app_migrated_is_filled_as_it_exists() {
    let (d1, db, dir) = fresh();
    let source = sample_with_history(dir.path());
    let mut ddl = app_schema(&source, "products", "customers");
    // An index of the application's own: kept, and no difference for validation.
    ddl.push("create index customers_by_name on customers (name)".into());
    apply_migrations(d1, &db, &ddl);

    // The dry run says what the run will do with each table.
    let dry = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", dir.path().join("dry.json"))
        .ok();
    let text = stderr(&dry);
    assert!(text.contains("on D1: filled as it exists"), "{text}");
    assert!(text.contains("price → price (column 2 on D1)"), "{text}");
    assert!(text.contains("(none) → extra_note (D1 only)"), "{text}");
    assert!(
        text.contains("on D1: exists: the source's applied migrations it lacks are added by name"),
        "{text}"
    );
    let plan = read_json(&dir.path().join("dry.json"));
    let on_d1 = |table: &str| {
        plan["dry_run"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .map(|t| t["on_d1"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(on_d1("customers"), "fill");
    assert_eq!(on_d1("d1_migrations"), "merge by name");

    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_REPORT", &report)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    let log = stderr(&out);
    assert!(
        log.contains("customers: filled as it exists on D1; columns by name:"),
        "{log}"
    );
    let report = read_json(&report);
    assert_eq!(report["validation"]["ok"], true, "{report}");
    let customers = report["validation"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "customers")
        .unwrap();
    assert_eq!(
        customers["warnings"],
        serde_json::json!(["index \"customers_by_name\" exists only on the target"])
    );
    assert_source_columns_equal(&source, d1.file(&db));
    // D1's own column is left NULL; wrangler's history gains the source's entry it lacked, by
    // name, and keeps its own as they were.
    assert_eq!(
        d1.sql(
            &db,
            &["SELECT count(*) FROM customers WHERE extra_note IS NOT NULL"]
        )[0],
        serde_json::json!([[0]])
    );
    assert_eq!(
        names(d1, &db),
        ["0000_app_only.sql", "0001_init.sql", "0002_tiers.sql"]
    );
    assert_eq!(
        d1.sql(
            &db,
            &["SELECT applied_at FROM d1_migrations WHERE name = '0001_init.sql'"]
        )[0],
        serde_json::json!([["2025-01-02 00:00:00"]])
    );
    // The view and trigger D1 lacked were created; the index it had is kept.
    let objects = d1.sql(
        &db,
        &["SELECT name FROM sqlite_schema WHERE name IN ('order_totals', 'orders_note_default') ORDER BY name"],
    );
    assert_eq!(
        objects[0],
        serde_json::json!([["order_totals"], ["orders_note_default"]])
    );
    // Run again: complete, and the history is not added twice.
    let again = Run::new(d1, &db, &source).ok();
    assert!(
        stderr(&again).contains("already complete"),
        "{}",
        stderr(&again)
    );
    assert_eq!(names(d1, &db).len(), 3);
}

#[test]
fn an_incompatible_table_is_refused_before_any_write_one_line_per_column() {
    let (d1, db, dir) = fresh();
    let source = sample_with_history(dir.path());
    let mut ddl = app_schema(&source, "", "");
    for t in &mut ddl {
        if t.starts_with("create table customers") {
            // No email column, and a NOT NULL column the source cannot fill.
            *t = "create table customers (id integer primary key, name text not null, \
                  referred_by integer references customers(id), created_at text not null, \
                  tier text not null)"
                .into();
        }
        if t.starts_with("create table products") {
            *t =
                "create table products (id integer primary key autoincrement, name text not null, \
                  price text not null, picture blob)"
                    .into();
        }
    }
    apply_migrations(d1, &db, &ddl);
    let schema_before = d1.sql(
        &db,
        &["SELECT type, name, sql FROM sqlite_schema ORDER BY name"],
    );
    let out = Run::new(d1, &db, &source).output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let log = stderr(&out);
    for line in [
        "table \"customers\", column \"email\": source TEXT (text affinity), D1 has no such column",
        "table \"customers\", column \"tier\": source has no such column, D1 TEXT (text affinity) NOT NULL: NOT NULL without a default",
        "table \"products\", column \"price\": source REAL (real affinity) NOT NULL, D1 TEXT (text affinity) NOT NULL: the affinity would change stored values",
    ] {
        assert!(log.contains(line), "{line}\n{log}");
    }
    assert!(log.contains("nothing was written"), "{log}");
    // Nothing was written: the same schema, no rows but wrangler's.
    assert_eq!(
        d1.sql(
            &db,
            &["SELECT type, name, sql FROM sqlite_schema ORDER BY name"]
        ),
        schema_before
    );
    for table in ["customers", "products", "orders", "order_lines"] {
        assert_eq!(
            d1.sql(&db, &[&format!("SELECT count(*) FROM {table}")])[0],
            serde_json::json!([[0]]),
            "{table}"
        );
    }
    assert_eq!(names(d1, &db).len(), 2);

    // The dry run names the same differences and says the run would not succeed.
    let dry = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .output();
    assert_eq!(dry.status.code(), Some(2));
    assert!(
        stderr(&dry).contains("table \"customers\", column \"email\""),
        "{}",
        stderr(&dry)
    );
}

#[test]
fn chinook_fills_the_schema_its_app_migrated() {
    let Some(chinook) = dataset("chinook.sqlite") else {
        return;
    };
    let (d1, db, dir) = fresh();
    let source = dir.path().join("chinook.sqlite");
    std::fs::copy(&chinook, &source).unwrap();
    Connection::open(&source)
        .unwrap()
        .execute_batch(&format!(
            "{D1_MIGRATIONS}; INSERT INTO d1_migrations (name) VALUES ('0001_init.sql');"
        ))
        .unwrap();
    let mut ddl = app_schema(&source, "Track", "Artist");
    // The app's indexes, written its own way: kept, not created again.
    ddl.push("create index ifk_trackalbumid on track (albumid)".into());
    apply_migrations(d1, &db, &ddl);
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_REPORT", &report)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    let log = stderr(&out);
    assert!(log.contains("Artist: filled as it exists on D1"), "{log}");
    assert!(
        log.contains("Track: filled as it exists on D1; columns by name:"),
        "{log}"
    );
    let report = read_json(&report);
    assert_eq!(report["validation"]["ok"], true, "{report}");
    assert!(
        !report["objects_created"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "IFK_TrackAlbumId"),
        "{report}"
    );
    assert_source_columns_equal(&source, d1.file(&db));
    assert_eq!(names(d1, &db), ["0000_app_only.sql", "0001_init.sql"]);
}

/// AUTOINCREMENT finds its `sqlite_sequence` row by the table's name exactly as D1 spells it:
/// a counter ahead of the largest id stays ahead when D1's table is spelled otherwise.
#[test]
fn an_autoincrement_counter_stays_ahead_in_a_table_d1_spells_otherwise() {
    let (d1, db, dir) = fresh();
    let source = dir.path().join("counter.sqlite");
    Connection::open(&source)
        .unwrap()
        .execute_batch(
            "CREATE TABLE Counter (Id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
             INSERT INTO Counter (v) VALUES ('a'), ('b'), ('c');
             UPDATE sqlite_sequence SET seq = 10 WHERE name = 'Counter';",
        )
        .unwrap();
    d1.sql(
        &db,
        &["create table counter (id integer primary key autoincrement, v text)"],
    );
    Run::new(d1, &db, &source).ok();
    d1.sql(&db, &["INSERT INTO counter (v) VALUES ('next')"]);
    assert_eq!(
        d1.sql(&db, &["SELECT id FROM counter WHERE v = 'next'"])[0],
        serde_json::json!([[11]])
    );
}

/// With a transform, what D1 already has is compared with what it would receive: a CHECK on
/// D1's renamed column is tried on the source's rows read through the transform, and the rows
/// that break it are refused before any write.
#[test]
fn a_check_on_a_renamed_column_is_tried_through_the_transform() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let transform = dir.path().join("transform.toml");
    std::fs::write(
        &transform,
        "[table.customers.rename_columns]\nemail = \"mail\"\n",
    )
    .unwrap();
    d1.sql(
        &db,
        &["create table customers (id integer primary key, name text not null, \
           mail text unique check (length(mail) > 100), referred_by integer references customers(id), \
           created_at text not null default current_timestamp)"],
    );
    let before = d1.sql(&db, &["SELECT name FROM sqlite_schema ORDER BY name"]);
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &transform)
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "table \"customers\", column \"(check)\": source 200 rows that break it, D1 CHECK (length(mail) > 100)"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        d1.sql(&db, &["SELECT name FROM sqlite_schema ORDER BY name"]),
        before,
        "nothing was created"
    );
}

/// D1 keeps counters of its own (an AUTOINCREMENT table of the application's, wrangler's
/// `d1_migrations`) under the rowids the source's counters have. The copy inserted the source's
/// rows with `CASE WHEN EXISTS (rowid) THEN NULL`, but SQLite evaluates every row of an INSERT
/// reading its own table before inserting any: the row D1 numbered took the next one's rowid and
/// the run failed (`UNIQUE constraint failed: sqlite_sequence.rowid`). D1's rows make way now.
#[test]
fn the_sources_counters_keep_their_rowids_beside_counters_d1_already_has() {
    let (d1, db, dir) = fresh();
    d1.sql(
        &db,
        &[
            "CREATE TABLE app_own(id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
            "INSERT INTO app_own(v) VALUES ('D1''s own')",
        ],
    );
    let source = dir.path().join("counters.sqlite");
    Connection::open(&source)
        .unwrap()
        .execute_batch(
            "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
             CREATE TABLE b(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
             CREATE TABLE c(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
             INSERT INTO a(v) VALUES (1), (2); INSERT INTO b(v) VALUES (1);
             INSERT INTO c(v) VALUES (1), (2), (3);
             UPDATE sqlite_sequence SET seq = seq + 100;",
        )
        .unwrap();
    Run::new(d1, &db, &source).ok();
    let read = |path: &Path, sql: &str| -> Vec<(i64, String, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    };
    let sql = "SELECT rowid, name, seq FROM sqlite_sequence WHERE name <> 'app_own' ORDER BY rowid";
    assert_eq!(read(d1.file(&db), sql), read(&source, sql));
    let own = read(
        d1.file(&db),
        "SELECT rowid, name, seq FROM sqlite_sequence WHERE name = 'app_own'",
    );
    assert!(own.len() == 1 && own[0].2 == 1, "{own:?}");
}

/// An application's migrations made D1's schema with a trigger (an audit row for every order);
/// the source's rows already hold the trigger's effects. Copied with the trigger in place, every
/// order fired it again: its rows took the audit table's keys first and the source's audit rows
/// were left out (`ON CONFLICT DO NOTHING`), and validation found the table different (exit 3).
/// The run now drops D1's triggers on the tables it writes for the writes, and creates them
/// again after them; the dry run says it will.
#[test]
fn triggers_already_on_d1_do_not_fire_on_the_copied_rows_and_are_there_again_after() {
    let (d1, db, dir) = fresh();
    let ddl = [
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL)",
        "CREATE TABLE audit(id INTEGER PRIMARY KEY, order_id INTEGER, what TEXT)",
        "CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN \
         INSERT INTO audit(order_id, what) VALUES (new.id, 'created'); END",
    ];
    let source = dir.path().join("app.sqlite");
    {
        let conn = Connection::open(&source).unwrap();
        for s in ddl {
            conn.execute_batch(s).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO orders(total) VALUES (1.5), (2.5), (3.5);
             UPDATE audit SET what = 'imported from the old system' WHERE id = 2;
             INSERT INTO audit(order_id, what) VALUES (9, 'written by hand');",
        )
        .unwrap();
    }
    d1.sql(&db, &ddl);
    // The dry run says so, and writes nothing (the trigger stays).
    let dry = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .ok();
    assert!(
        stderr(&dry).contains("D1's trigger \"orders_audit\" is on a table the copy writes"),
        "{}",
        stderr(&dry)
    );
    assert_eq!(
        d1.sql(
            &db,
            &["SELECT count(*) FROM sqlite_schema WHERE name = 'orders_audit'"]
        )[0],
        serde_json::json!([[1]])
    );
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    assert!(stderr(&out).contains("orders_audit"), "{}", stderr(&out));
    assert_eq!(
        crate::harness::sqldiff(&source, d1.file(&db)),
        Vec::<String>::new()
    );
    // The trigger is there again, and fires for the application's next order.
    d1.sql(&db, &["INSERT INTO orders(id, total) VALUES (10, 4.5)"]);
    assert_eq!(
        d1.sql(
            &db,
            &["SELECT count(*) FROM audit WHERE order_id = 10 AND what = 'created'"]
        )[0],
        serde_json::json!([[1]])
    );
}

/// A copy that stops on the way (D1 refuses a row: its parent is missing) does not leave the
/// live database without the triggers it dropped for its writes: they are created again as the
/// run fails. The rerun, once the source is mended, drops them again for its writes and ends
/// exact, with the trigger in place.
#[test]
fn a_copy_that_fails_on_the_way_puts_d1s_triggers_back_and_its_rerun_ends_exact() {
    let (d1, db, dir) = fresh();
    let ddl = [
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE child (id INTEGER PRIMARY KEY, \
         parent_id INTEGER NOT NULL REFERENCES parent(id), note TEXT)",
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, child_id INTEGER)",
        "CREATE TRIGGER child_audit AFTER INSERT ON child BEGIN \
         INSERT INTO audit(child_id) VALUES (new.id); END",
    ];
    let source = dir.path().join("app.sqlite");
    let conn = Connection::open(&source).unwrap();
    for s in ddl {
        conn.execute_batch(s).unwrap();
    }
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO parent SELECT i, 'p' || i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO child SELECT i, 1 + i % 500, printf('%.200c', 'c') FROM n;
         PRAGMA foreign_keys = OFF;
         UPDATE child SET parent_id = 9999 WHERE id = 2345;",
    )
    .unwrap();
    d1.sql(&db, &ddl);
    let trigger_on_d1 = |d1: &LocalD1| {
        d1.sql(
            &db,
            &["SELECT count(*) FROM sqlite_schema WHERE name = 'child_audit'"],
        )[0]
        .clone()
    };

    let failed = Run::new(d1, &db, &source).output();
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("table child, row 2345"),
        "{}",
        stderr(&failed)
    );
    assert_eq!(trigger_on_d1(d1), serde_json::json!([[1]]));

    conn.execute_batch("UPDATE child SET parent_id = 1 WHERE id = 2345")
        .unwrap();
    Run::new(d1, &db, &source)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    assert_eq!(
        crate::harness::sqldiff(&source, d1.file(&db)),
        Vec::<String>::new()
    );
    assert_eq!(trigger_on_d1(d1), serde_json::json!([[1]]));
}
