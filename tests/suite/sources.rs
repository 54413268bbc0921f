//! Sources the other tests lacked, as a new user brings them: schema shapes (INTEGER PRIMARY KEY
//! DESC, columns named like the rowid, NOCASE/RTRIM, duplicate rows, negative rowids, a sequence
//! ahead of its table, views on views, RAISE triggers, JSON generated columns), UTF-16 files and
//! unusual page sizes, R*Tree tables, `user_version`. Each copies exactly or is refused, before any
//! write, naming what is at fault.

use std::path::{Path, PathBuf};

use crate::harness::{fresh, read_json, sqldiff, stderr, Run};
use crate::shapes::{round_trip, round_trip_into};

fn create(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(name);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    path
}

/// `INTEGER PRIMARY KEY DESC` is not a rowid alias (SQLite's documented quirk): the table has a
/// rowid of its own and an index for the key. The copy took the key for the rowid, so D1's rowids
/// (and a rolled-back file's) were not the source's. The other shapes here already copied exactly.
#[test]
fn integer_primary_key_desc_keeps_its_own_rowids_among_shapes_the_suite_lacked() {
    let dir = tempfile::tempdir().unwrap();
    let source = create(
        dir.path(),
        "zoo.sqlite",
        r#"
        CREATE TABLE desck(id INTEGER PRIMARY KEY DESC, v TEXT);
        INSERT INTO desck VALUES (5, 'five'), (-3, 'neg'), (9223372036854775807, 'max');
        DELETE FROM desck WHERE id = 5;
        INSERT INTO desck VALUES (1, 'one');
        CREATE TABLE desc_child(id INTEGER PRIMARY KEY, d INTEGER REFERENCES desck(id));
        INSERT INTO desc_child VALUES (1, -3), (2, 1);
        CREATE TABLE nc(id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE UNIQUE, code TEXT COLLATE RTRIM);
        CREATE INDEX nc_code ON nc(code COLLATE NOCASE);
        INSERT INTO nc VALUES (1, 'Alice', 'x  '), (2, 'bob', 'y'), (3, 'Carol ', 'x');
        CREATE TABLE dup(a, b);
        INSERT INTO dup VALUES (1, 2), (1, 2), (1, 2), (NULL, NULL);
        INSERT INTO dup(rowid, a, b) VALUES (-5, 'negative', 'rowid'), (1000000000000, 'gap', 'x');
        CREATE TABLE two_shadowed("rowid" TEXT, oid INTEGER, v);
        INSERT INTO two_shadowed(_rowid_, "rowid", oid, v) VALUES (7, 'r7', 70, 1), (-2, 'r-2', 20, 2);
        CREATE TABLE ai(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
        INSERT INTO ai(v) VALUES ('a'), ('b');
        UPDATE sqlite_sequence SET seq = 1000 WHERE name = 'ai';
        CREATE VIEW v1 AS SELECT id, name FROM nc WHERE id > 1;
        CREATE VIEW v2 AS SELECT name FROM v1;
        CREATE VIEW v3 AS SELECT count(*) AS n FROM v2;
        CREATE TABLE audit(id INTEGER PRIMARY KEY, msg TEXT);
        CREATE TRIGGER nc_guard BEFORE INSERT ON nc WHEN NEW.name = 'forbidden'
          BEGIN SELECT RAISE(ABORT, 'no forbidden names'); END;
        CREATE TRIGGER nc_log AFTER UPDATE OF name ON nc FOR EACH ROW WHEN OLD.name <> NEW.name
          BEGIN INSERT INTO audit(msg) VALUES (OLD.name || '->' || NEW.name); END;
        CREATE TABLE "order"("group" INTEGER PRIMARY KEY, "select" TEXT);
        INSERT INTO "order" VALUES (1, 'x');
        CREATE TABLE "Ünïcødé 表" (ключ INTEGER PRIMARY KEY, значение TEXT);
        INSERT INTO "Ünïcødé 表" VALUES (1, 'да');
        CREATE TABLE js(id INTEGER PRIMARY KEY, doc TEXT CHECK (json_valid(doc)),
          kind TEXT GENERATED ALWAYS AS (json_extract(doc, '$.kind')) VIRTUAL,
          n INTEGER GENERATED ALWAYS AS (json_array_length(doc, '$.items')) STORED);
        INSERT INTO js(id, doc) VALUES (1, '{"kind":"a","items":[1,2]}'), (2, '{"kind":"b","items":[]}');
        CREATE INDEX js_kind ON js(kind);
        CREATE TABLE ts(id INTEGER PRIMARY KEY, created TEXT DEFAULT CURRENT_TIMESTAMP,
          d TEXT DEFAULT (date('now')), n INTEGER DEFAULT (strftime('%s', 'now')));
        INSERT INTO ts(id) VALUES (1), (2);
        "#,
    );
    round_trip(&source, &[]);
}

/// Columns named `rowid`, `oid` and `_rowid_` together hide a table's rowid from SQL: the run
/// panicked ("key columns are inserted"). It is refused now, naming the table, before any write;
/// leaving the table out lets the rest go.
#[test]
fn a_table_whose_columns_hide_every_rowid_alias_is_refused_naming_it() {
    let (d1, db, dir) = fresh();
    let source = create(
        dir.path(),
        "hidden.sqlite",
        r#"
        CREATE TABLE weird("rowid" TEXT, oid INTEGER, "_rowid_" BLOB);
        INSERT INTO weird VALUES ('r1', 10, X'00'), ('r2', 20, NULL);
        CREATE TABLE fine(id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO fine VALUES (1, 'x');
        "#,
    );
    for dry in ["true", "false"] {
        let out = Run::new(d1, &db, &source)
            .env("MIGRATION_DRY_RUN", dry)
            .output();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("table \"weird\"") && err.contains("rowid, oid and _rowid_"),
            "{err}"
        );
        d1.assert_untouched(&db);
    }
    Run::new(d1, &db, &source)
        .env("MIGRATION_EXCLUDE_TABLES", "weird")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
}

/// The local D1's engine refuses `CREATE VIRTUAL TABLE ... USING rtree` (`not authorized`), though
/// Cloudflare's docs list R*Tree. The run wrote the ordinary tables, then failed on the R*Tree one;
/// it is refused before any write now, and the dry run names it.
#[test]
fn rtree_tables_are_refused_before_any_write() {
    let (d1, db, dir) = fresh();
    let source = create(
        dir.path(),
        "rtree.sqlite",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, g TEXT);
         INSERT INTO p VALUES (1, 'x');
         CREATE VIRTUAL TABLE boxes USING rtree(id, minx, maxx, miny, maxy);
         INSERT INTO boxes VALUES (1, 0, 1, 0, 1);
         CREATE VIRTUAL TABLE spans USING rtree_i32(id, a, b);",
    );
    // What D1's engine says to the statement the run would send.
    let (_, answer) = d1.post(
        &db,
        serde_json::json!({"sql": "CREATE VIRTUAL TABLE probe USING rtree(id, a, b)"}),
        Some(crate::harness::TOKEN),
    );
    assert!(
        answer.to_string().contains("not authorized"),
        "the local engine accepts rtree now: {answer}"
    );
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report)
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let findings = read_json(&report)["dry_run"]["findings"].clone();
    for table in ["boxes", "spans"] {
        assert!(
            findings
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == "virtual_table_module"
                    && f["object"] == table
                    && f["severity"] == "error"),
            "{table}: {findings}"
        );
    }
    let out = Run::new(d1, &db, &source).output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"boxes\""), "{}", stderr(&out));
    d1.assert_untouched(&db);
}

/// D1 refuses `PRAGMA user_version` and `application_id`, and the run dropped them (and the
/// planner's statistics, `sqlite_stat1`, copied since) without a word: an application that reads its schema version from `user_version` would migrate again
/// on a rolled-back file. Each is told now: a warning of the run, a dry-run finding, an entry of
/// the report's `skipped` with the statement that sets it again.
#[test]
fn user_version_and_application_id_are_told_not_dropped_silently() {
    let (d1, db, dir) = fresh();
    let source = create(
        dir.path(),
        "versioned.sqlite",
        "PRAGMA user_version = 42; PRAGMA application_id = 1234567;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');
         CREATE INDEX t_v ON t(v); ANALYZE;",
    );
    let report = dir.path().join("dry.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    assert!(
        stderr(&out).contains("PRAGMA user_version = 42"),
        "{}",
        stderr(&out)
    );
    let findings = read_json(&report)["dry_run"]["findings"].clone();
    // The planner's statistics: `sqlite_stat1` is copied (see the next test); the sampled
    // `sqlite_stat4` that this SQLite's ANALYZE writes too is not (D1 has none), and is told.
    let planner: Vec<&serde_json::Value> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "planner_statistics")
        .collect();
    assert!(
        planner.len() == 1
            && planner[0]["object"] == "sqlite_stat4"
            && planner[0]["severity"] == "warning"
            && planner[0]["message"]
                .as_str()
                .unwrap()
                .contains("D1 has no sqlite_stat4"),
        "{findings}"
    );
    let after = read_json(&report)["dry_run"]["objects_after_data"].clone();
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "sqlite_stat1: the planner's statistics, 1 row"),
        "{after}"
    );
    for pragma in ["PRAGMA user_version", "PRAGMA application_id"] {
        assert!(
            findings
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == "pragma_not_carried"
                    && f["object"] == pragma
                    && f["severity"] == "warning"),
            "{pragma}: {findings}"
        );
    }
    let report = dir.path().join("run.json");
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_REPORT", &report)
        .ok();
    assert!(
        stderr(&out).contains("PRAGMA application_id = 1234567"),
        "{}",
        stderr(&out)
    );
    let skipped = read_json(&report)["skipped"].clone();
    assert!(
        skipped
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "PRAGMA user_version"
                && s["reason"].as_str().unwrap().contains("= 42")),
        "{skipped}"
    );
}

/// `sqlite_stat1` of a file (or of D1's file), `_cf_*` rows aside: rowid, tbl, idx, stat.
fn stat1_of(path: &Path) -> Vec<(i64, String, Option<String>, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT rowid, tbl, idx, stat FROM sqlite_stat1 \
             WHERE tbl NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY rowid",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

/// The planner's statistics (`sqlite_stat1`, written by `ANALYZE` and by `PRAGMA optimize`, which
/// many applications run) were left behind with a note: D1 planned queries without them, and a
/// copy rolled back was not the source (`sqldiff` printed `DROP TABLE sqlite_stat1;`). They travel
/// now, after the data and indexes, and come back from D1. The sources are made as a SQLite built
/// without SQLITE_ENABLE_STAT4 (Debian's CLI, most platforms' SQLite) makes them: the SQLite here
/// has it and writes `sqlite_stat4` too, which D1 does not have (see the next test).
#[test]
fn planner_statistics_from_analyze_and_pragma_optimize_round_trip_exactly() {
    let schema = r#"
        CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT UNIQUE, kind TEXT);
        CREATE INDEX parent_kind ON parent(kind);
        CREATE TABLE child(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id), v REAL);
        CREATE INDEX child_parent_v ON child(parent, v);
        CREATE TABLE wr(a TEXT, b INTEGER, c, PRIMARY KEY (a, b)) WITHOUT ROWID;
        CREATE TABLE "odd ""name"" é"(x, y);
        CREATE INDEX "odd idx" ON "odd ""name"" é"(y);
        CREATE TABLE plain(x);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
        INSERT INTO parent SELECT i, 'p' || i, 'k' || (i % 7) FROM n;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 900)
        INSERT INTO child SELECT i, 1 + i % 300, i / 3.0 FROM n;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120)
        INSERT INTO wr SELECT 'a' || (i % 10), i, NULL FROM n;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
        INSERT INTO "odd ""name"" é" SELECT i, i % 4 FROM n;
        INSERT INTO plain VALUES (1), (2), (3);
    "#;
    let fts = "CREATE VIRTUAL TABLE docs USING fts5(body);
        INSERT INTO docs(body) VALUES ('one two'), ('two three'), ('three four');";
    for (name, statistics) in [
        // With an FTS5 table: loaded table by table.
        ("analyze.sqlite", format!("{fts} ANALYZE;")),
        // What applications run on opening (SQLite's advice; 0x10000: every table, as SQLite
        // judges it worth it). Without virtual tables, small: the compact load.
        (
            "optimize.sqlite",
            "SELECT count(*) FROM child WHERE parent = 3; PRAGMA optimize = 0x10002;".to_string(),
        ),
    ] {
        let (d1, db, dir) = fresh();
        let source = create(
            dir.path(),
            name,
            &format!("{schema} {statistics} DROP TABLE IF EXISTS sqlite_stat4;"),
        );
        let stats = stat1_of(&source);
        assert!(
            stats
                .iter()
                .any(|(_, t, i, _)| t == "child" && i.as_deref() == Some("child_parent_v")),
            "{name}: the source has statistics: {stats:?}"
        );
        if name == "analyze.sqlite" {
            // ANALYZE run on D1 before (trying it out): D1's statistics of its own
            // `_cf_METADATA` (a row once it holds rows) take the rowid of the source's first
            // row; they make way.
            d1.sql(
                &db,
                &[
                    "ANALYZE sqlite_schema",
                    "INSERT INTO sqlite_stat1 (rowid, tbl, idx, stat) VALUES (1, '_cf_METADATA', NULL, '1')",
                ],
            );
        }
        // The shapes: a table without index (idx NULL), a WITHOUT ROWID table's key, an FTS5
        // index's shadow tables.
        for table in ["plain", "wr", "docs_idx"] {
            if table == "docs_idx" && name == "optimize.sqlite" {
                continue;
            }
            assert!(
                stats.iter().any(|(_, t, ..)| t == table),
                "{name}: {table} has statistics: {stats:?}"
            );
        }
        round_trip_into(d1, &db, dir.path(), &source, &[]);
        assert_eq!(stat1_of(d1.file(&db)), stats, "{name}: D1's sqlite_stat1");
        let back = dir.path().join("back.sqlite");
        assert_eq!(
            stat1_of(&back),
            stats,
            "{name}: the rolled-back sqlite_stat1"
        );
        if name != "optimize.sqlite" {
            continue;
        }
        // Sent again (a run resumed before its checkpoint recorded them; here the whole copy,
        // table by table into the filled database), they are the same. (Without FTS5, whose
        // index a second fill splits into other segments.)
        Run::new(d1, &db, &source)
            .env("MIGRATION_STATE_DIR", dir.path().join("again"))
            .ok();
        assert_eq!(stat1_of(d1.file(&db)), stats, "{name}: D1's, sent again");
        let diff = sqldiff(&source, d1.file(&db));
        assert!(diff.is_empty(), "{name}: {diff:?}");
        // Validation compares them: statistics that differ are a warning of their table (they
        // change plans, not answers), and the run still exits 0.
        let warnings = |report: &Path| -> Vec<String> {
            let json = read_json(report);
            let tables = json["validation"]["tables"].as_array().unwrap().clone();
            tables
                .iter()
                .filter(|t| t["table"] == "child")
                .flat_map(|t| t["warnings"].as_array().unwrap().clone())
                .map(|w| w.as_str().unwrap().to_string())
                .filter(|w| w.contains("sqlite_stat1"))
                .collect()
        };
        let report = dir.path().join("validate.json");
        let validate = || {
            Run::new(d1, &db, &source)
                .env("MIGRATION_MODE", "validate")
                .env("MIGRATION_REPORT", &report)
                .ok()
        };
        validate();
        assert!(warnings(&report).is_empty(), "{:?}", warnings(&report));
        d1.sql(
            &db,
            &["UPDATE sqlite_stat1 SET stat = '900 1 1' WHERE tbl = 'child'"],
        );
        validate();
        let told = warnings(&report);
        assert!(
            told.len() == 1
                && told[0].contains("'900 1 1'")
                && told[0].contains("ANALYZE \"child\""),
            "{told:?}"
        );
    }
}

/// The rows of every table of a file, read through SQLite (which gives UTF-16 text as UTF-8).
fn contents(path: &Path) -> Vec<(String, Vec<Vec<rusqlite::types::Value>>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let mut stmt = conn
                .prepare(&format!("SELECT rowid, * FROM \"{t}\" ORDER BY rowid"))
                .unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            (t, rows)
        })
        .collect()
}

/// UTF-16 files (little and big endian) and files of 512- and 65,536-byte pages with
/// auto_vacuum: exact copies both ways. `sqldiff` cannot attach a UTF-16 file beside a UTF-8 one,
/// so the judge here is every row of every table, read through SQLite, plus full validation.
#[test]
fn utf16_and_unusual_page_size_sources_copy_exactly_both_ways() {
    for (name, pragmas) in [
        ("utf16le", "PRAGMA encoding = 'UTF-16le';"),
        ("utf16be", "PRAGMA encoding = 'UTF-16be';"),
        ("p512", "PRAGMA page_size = 512; PRAGMA auto_vacuum = FULL;"),
        (
            "p65536",
            "PRAGMA page_size = 65536; PRAGMA auto_vacuum = INCREMENTAL;",
        ),
    ] {
        let (d1, db, dir) = fresh();
        let source = create(
            dir.path(),
            &format!("{name}.sqlite"),
            &format!(
                "{pragmas}
                 CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE, v REAL, b BLOB);
                 CREATE INDEX t_name ON t(name);
                 INSERT INTO t VALUES (1, 'ÄÖÜ 🦀 ﷺ', -0.0, X'00FF'), (2, NULL, 1e308, NULL);
                 WITH RECURSIVE c(i) AS (SELECT 10 UNION ALL SELECT i + 1 FROM c WHERE i < 3000)
                 INSERT INTO t SELECT i, 'row ' || i || ' ' || char(i + 200), i * 0.5, randomblob(i % 50) FROM c;"
            ),
        );
        Run::new(d1, &db, &source)
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
            .ok();
        assert!(
            contents(&source) == contents(d1.file(&db)),
            "{name}: D1 differs"
        );
        let back = dir.path().join("back.sqlite");
        Run::new(d1, &db, &back)
            .env("MIGRATION_DIRECTION", "d1-to-sqlite")
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
            .ok();
        assert!(
            contents(&source) == contents(&back),
            "{name}: rollback differs"
        );
    }
}

/// An application that keeps writing its file while the copy runs (users keep it running through
/// the cutover): each commit adds an account and its first transfer. The copy read each table
/// at its own moment, so transfers of accounts created after the accounts were read reached D1
/// without their parent (WAL: `FOREIGN KEY constraint failed`), or a reader met the writer's
/// lock (rollback journal: `database is locked`). The run now reads one snapshot of the source:
/// D1 holds it as of one moment (every new account with exactly its transfer), validation passes
/// against that moment, and the report says the source changed after it. A dry run meanwhile
/// is not locked out either.
#[test]
fn an_application_writing_during_the_copy_cannot_tear_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for journal in ["wal", "delete"] {
        let (d1, db, dir) = fresh();
        let source = dir.path().join(format!("live-{journal}.sqlite"));
        {
            let conn = rusqlite::Connection::open(&source).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = {journal};
                 CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT, balance INTEGER NOT NULL);
                 CREATE TABLE transfers(id INTEGER PRIMARY KEY,
                   account_id INTEGER NOT NULL REFERENCES accounts(id), amount INTEGER);
                 WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
                 INSERT INTO accounts SELECT i, 'account ' || i, 1000 FROM c;
                 WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 150000)
                 INSERT INTO transfers SELECT i, i % 20000 + 1, 5 FROM c;"
            ))
            .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (source, stop) = (source.clone(), stop.clone());
            std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(&source).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(30))
                    .unwrap();
                let mut commits = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = 1_000_000 + commits as i64;
                    conn.execute_batch(&format!(
                        "BEGIN IMMEDIATE;
                         INSERT INTO accounts VALUES ({id}, 'new', 0);
                         INSERT INTO transfers(account_id, amount) VALUES ({id}, 7);
                         UPDATE accounts SET balance = balance - 1 WHERE id = {};
                         COMMIT;",
                        commits % 20000 + 1
                    ))
                    .unwrap();
                    commits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                commits
            })
        };
        // The application has been writing for a moment when the run starts.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let report = dir.path().join("report.json");
        let out = Run::new(d1, &db, &source)
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
            .env("MIGRATION_BATCH_SIZE", "2000")
            .env("MIGRATION_REPORT", &report)
            .output();
        // A dry run or a validation meanwhile reads a snapshot too: it is not locked out
        // (rollback journal: "SQLite: database is locked"), and the copy's validation passes.
        let dry = Run::new(d1, &db, &source)
            .env("MIGRATION_DRY_RUN", "true")
            .output();
        stop.store(true, Ordering::Relaxed);
        let commits = writer.join().unwrap();
        assert!(dry.status.success(), "{journal} dry run: {}", stderr(&dry));
        assert!(
            out.status.success(),
            "{journal}: {} ({commits} commits)",
            stderr(&out)
        );
        let rows = d1.sql(
            &db,
            &[
                "SELECT count(*) FROM accounts WHERE id >= 1000000",
                "SELECT count(*) FROM transfers WHERE account_id >= 1000000",
                "SELECT max(id) - 1000000 + 1 FROM accounts WHERE id >= 1000000",
            ],
        );
        // One moment of the source: every new account arrived with its transfer, and the new
        // accounts are the first ones the application created, without a gap.
        assert_eq!(rows[0], rows[1], "{journal}: {rows:?}");
        assert!(
            rows[0][0][0] == rows[2][0][0] || rows[0][0][0] == 0,
            "{journal}: {rows:?}"
        );
        let snapshot = read_json(&report)["source_snapshot"].clone();
        assert_eq!(snapshot["source_changed"], true, "{journal}: {snapshot}");
        assert!(
            stderr(&out).contains("the source changed while it was copied"),
            "{journal}: {}",
            stderr(&out)
        );
        assert!(
            !walk_names(&d1.state_dir(&db))
                .iter()
                .any(|n| n.starts_with("snapshot-")),
            "{journal}: the snapshot is removed at the end"
        );
    }
}

fn walk_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The API's base as users write it: `https://api.cloudflare.com` (no `/client/v4`) or with a
/// trailing slash. Without `/client/v4` every request met "No route for that URI" (code 7000),
/// reported as "D1 rejected the SQL" with exit 1. The host alone now means the API's base; a
/// route the API lacks is an error naming MIGRATION_D1_API_URL (and the ids), exit 2.
#[test]
fn the_api_url_as_users_write_it_reaches_the_api_or_is_named() {
    let (d1, db, dir) = fresh();
    let source = create(
        dir.path(),
        "small.sqlite",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');",
    );
    let host = d1.api_url.trim_end_matches("/client/v4");
    for wrong in [format!("{host}/v4"), format!("{}/v9/", d1.api_url)] {
        let out = Run::new(d1, &db, &source)
            .env("MIGRATION_D1_API_URL", &wrong)
            .output();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{wrong}: {err}");
        assert!(err.contains("MIGRATION_D1_API_URL"), "{wrong}: {err}");
        assert!(!err.contains("rejected the SQL"), "{wrong}: {err}");
        assert!(!err.contains(crate::harness::TOKEN), "{wrong}: {err}");
        d1.assert_untouched(&db);
    }
    Run::new(d1, &db, &source)
        .env("MIGRATION_D1_API_URL", format!("{host}/"))
        .ok();
    Run::new(d1, &db, &source)
        .env("MIGRATION_D1_API_URL", format!("{}/", d1.api_url))
        .env("MIGRATION_MODE", "validate")
        .ok();
}

/// Setups that are wrong before any row moves: an account id the token does not belong to (told
/// only "check CLOUDFLARE_API_TOKEN"), a report in a folder that does not exist (the whole copy
/// ran, then the run failed writing the report, exit 1), a state folder that cannot be made
/// (an I/O error naming no variable, exit 1). Each is refused now with exit 2, naming its
/// variable, nothing written, and the token in no output.
#[test]
fn wrong_setups_are_refused_naming_their_variable_before_any_write() {
    let (d1, db, dir) = fresh();
    let source = create(
        dir.path(),
        "small.sqlite",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');",
    );
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a folder").unwrap();
    for (variable, value) in [
        ("CLOUDFLARE_ACCOUNT_ID", "another-account".to_string()),
        (
            "MIGRATION_REPORT",
            dir.path().join("missing/report.json").display().to_string(),
        ),
        (
            "MIGRATION_STATE_DIR",
            blocker.join("state").display().to_string(),
        ),
    ] {
        let out = Run::new(d1, &db, &source).env(variable, &value).output();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{variable}: {err}");
        assert!(err.contains(variable), "{variable}: {err}");
        assert!(!err.contains(crate::harness::TOKEN), "{variable}: {err}");
        d1.assert_untouched(&db);
    }
}

/// A WAL-mode source with its `-wal` (commits not yet checkpointed) and no `-shm`, in a folder
/// the user running the tool cannot write (a read-only volume, another user's files): SQLite
/// cannot open it read-only there ("unable to open database file"), and the run refused it as
/// "not a readable SQLite database". The snapshot now copies the file with its `-wal` into the
/// state folder and reads it there: every committed row arrives, the source is left as it was.
/// Root ignores folder permissions, so the run is made as user `nobody` through `setpriv`.
#[test]
fn a_wal_source_in_a_folder_the_user_cannot_write_is_read_with_its_wal() {
    use std::os::unix::fs::PermissionsExt;
    let (d1, db, dir) = fresh();
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let as_root = root.is_ok_and(|uid| uid == 0);
    if as_root
        && std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: running as root without setpriv to drop to another user");
        return;
    }
    let folder = dir.path().join("read-only");
    std::fs::create_dir(&folder).unwrap();
    let source = folder.join("app.sqlite");
    let writer = rusqlite::Connection::open(&source).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 500)
             INSERT INTO t SELECT i, 'v' || i FROM c;",
        )
        .unwrap();
    // The -wal holds every row; the application is gone and took its -shm with it.
    std::fs::copy(&source, dir.path().join("db")).unwrap();
    let mut wal = source.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::copy(&wal, dir.path().join("wal")).unwrap();
    drop(writer);
    for f in std::fs::read_dir(&folder).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    std::fs::copy(dir.path().join("db"), &source).unwrap();
    std::fs::copy(dir.path().join("wal"), &wal).unwrap();
    let before = (
        std::fs::read(&source).unwrap(),
        std::fs::read(&wal).unwrap(),
    );
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    for f in [&source, &std::path::PathBuf::from(&wal)] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |snapshot: &str| {
        let inner = Run::new(d1, &db, &source)
            .env("MIGRATION_STATE_DIR", &state)
            .env("MIGRATION_SNAPSHOT", snapshot)
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
            .command();
        let mut cmd = if as_root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(inner.get_program());
            c
        } else {
            std::process::Command::new(inner.get_program())
        };
        cmd.env_clear();
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.output().unwrap()
    };
    // Read in place, it cannot be: the error says why and what to do.
    let out = run("false");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WAL mode") && stderr(&out).contains("MIGRATION_SNAPSHOT"),
        "{}",
        stderr(&out)
    );
    let out = run("true");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        d1.sql(&db, &["SELECT count(*) FROM t"])[0],
        serde_json::json!([[500]])
    );
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        (
            std::fs::read(&source).unwrap(),
            std::fs::read(&wal).unwrap()
        ),
        before,
        "the source and its -wal are left as they were"
    );
    let mut shm = source.as_os_str().to_owned();
    shm.push("-shm");
    assert!(!std::path::Path::new(&shm).exists());
}

/// A source an application left mid-transaction (killed while writing): a hot `-journal` beside
/// it. SQLite must roll it back before the file can be read, a read-only connection cannot, and
/// the run refused it as "not a readable SQLite database: attempt to write a readonly
/// database". The snapshot now copies the file with its journal and rolls it back on the copy,
/// as SQLite does on opening the file: D1 gets the rows as they were before the unfinished
/// transaction; the source and its journal are left as they were.
#[test]
fn a_source_left_with_a_hot_journal_is_copied_as_before_the_unfinished_transaction() {
    let (d1, db, dir) = fresh();
    let writing = dir.path().join("writing.sqlite");
    let source = dir.path().join("crashed.sqlite");
    let journal = dir.path().join("crashed.sqlite-journal");
    {
        let conn = rusqlite::Connection::open(&writing).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000)
             INSERT INTO t SELECT i, 'before' || printf('%500s', '') FROM c;
             PRAGMA cache_size = 1;
             PRAGMA synchronous = OFF;
             BEGIN;
             UPDATE t SET v = 'unfinished' || printf('%500s', '');",
        )
        .unwrap();
        // The application dies here: its file and hot journal are what it leaves.
        // A journal is hot once its header holds SQLite's magic number. With synchronous on,
        // SQLite writes it only when it syncs the journal, before it first overwrites the
        // file: whether the cache spilled by then varied from run to run (the journal was then
        // not hot, rightly read past, and this test failed). With synchronous off it is there
        // from the first page journaled.
        let left = std::fs::read(dir.path().join("writing.sqlite-journal")).unwrap();
        assert_eq!(
            left[..8],
            [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7],
            "the journal left is hot"
        );
        std::fs::copy(&writing, &source).unwrap();
        std::fs::copy(dir.path().join("writing.sqlite-journal"), &journal).unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
    }
    let before = (
        std::fs::read(&source).unwrap(),
        std::fs::read(&journal).unwrap(),
    );
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_SNAPSHOT", "false")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("-journal") && stderr(&out).contains("MIGRATION_SNAPSHOT"),
        "{}",
        stderr(&out)
    );
    d1.assert_untouched(&db);
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    assert_eq!(
        d1.sql(&db, &["SELECT count(*), sum(v LIKE 'before%') FROM t"])[0],
        serde_json::json!([[2000, 2000]])
    );
    assert_eq!(
        (
            std::fs::read(&source).unwrap(),
            std::fs::read(&journal).unwrap()
        ),
        before,
        "the source and its journal are left as they were"
    );
}
