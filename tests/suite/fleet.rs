//! Many databases in one run (MIGRATION_MANIFEST): tenants created by name and copied exactly, a
//! rerun that does nothing, one broken source among good ones, every line checked before any
//! write, a fleet rollback, and one rate limit for the whole run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{generated, read_json, sqldiff, stderr, LocalD1, Run};

/// A logged local D1 of the test's own, with one configured database; the manifest's databases
/// are created through its API.
fn server() -> LocalD1 {
    LocalD1::start(&["home".to_string()], None)
}

/// The databases the server holds, by name: (id, file).
fn databases(d1: &LocalD1) -> HashMap<String, (String, PathBuf)> {
    let listing = read_json(&d1.dir.path().join("state/databases.json"));
    listing
        .as_object()
        .expect("databases.json is an object")
        .iter()
        .map(|(id, d)| {
            (
                d["name"].as_str().unwrap_or(id).to_string(),
                (id.clone(), PathBuf::from(d["file"].as_str().expect("file"))),
            )
        })
        .collect()
}

/// The migrator with a manifest instead of one file and database.
fn fleet(d1: &LocalD1, manifest: &Path, state: &Path) -> Command {
    let mut cmd = Run::new(d1, "unused", manifest)
        .env("MIGRATION_STATE_DIR", state)
        .command();
    cmd.env_remove("MIGRATION_D1_DATABASE_ID")
        .env_remove("MIGRATION_SQLITE_PATH")
        .env("MIGRATION_MANIFEST", manifest);
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.output().expect("the migrator runs")
}

/// Three tenants' sources in `dir` (two kinds of generated database), and a manifest naming them
/// relative to itself.
fn tenants(dir: &Path, names: &[&str]) -> (PathBuf, Vec<PathBuf>) {
    let mut sources = Vec::new();
    let mut text = String::from("sqlite_path,database\n");
    for (i, name) in names.iter().enumerate() {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let source = generated(&sub, if i % 2 == 0 { "sample" } else { "edge-cases" });
        text.push_str(&format!(
            "{},{name}\n",
            source.strip_prefix(dir).unwrap().display()
        ));
        sources.push(source);
    }
    let manifest = dir.join("tenants.csv");
    std::fs::write(&manifest, text).unwrap();
    (manifest, sources)
}

/// The same manifest run again (creating what is missing, as the first run did); its report.
fn rerun(d1: &LocalD1, manifest: &Path, state: &Path, dir: &Path) -> serde_json::Value {
    let again = dir.join("again.json");
    let out = output({
        let mut c = fleet(d1, manifest, state);
        c.env("MIGRATION_CREATE_DATABASES", "true")
            .env("MIGRATION_REPORT", &again);
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    read_json(&again)
}

#[test]
fn a_manifest_of_tenants_is_created_by_name_copied_exactly_and_a_rerun_does_nothing() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let names = ["tenant-a", "tenant-b", "tenant-c"];
    let (manifest, sources) = tenants(dir.path(), &names);
    let state = dir.path().join("state");
    let report = dir.path().join("fleet.json");
    let out = output({
        let mut c = fleet(&d1, &manifest, &state);
        c.env("MIGRATION_CREATE_DATABASES", "true")
            .env("MIGRATION_PARALLEL_DATABASES", "2")
            .env("MIGRATION_REPORT", &report);
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    for name in names {
        assert!(text.contains(name), "the summary names {name}:\n{text}");
    }
    let created = databases(&d1);
    for (name, source) in names.iter().zip(&sources) {
        let (_, file) = created
            .get(*name)
            .unwrap_or_else(|| panic!("{name} was created: {created:?}"));
        let diff = sqldiff(source, file);
        assert!(diff.is_empty(), "{name} differs:\n{}", diff.join("\n"));
    }
    let r = read_json(&report);
    assert_eq!(r["success"], true);
    assert_eq!(r["totals"]["databases"], 3);
    assert_eq!(r["totals"]["ok"], 3);
    assert_eq!(r["totals"]["databases_created"], 3);
    let runs = r["databases"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["result"], "ok");
        assert_eq!(run["report"]["validation"]["ok"], true, "{run}");
        assert!(run["report"]["totals"]["rows_written"].as_u64().unwrap() > 0);
        assert_eq!(
            created[run["database"].as_str().unwrap()].0,
            run["database_id"].as_str().unwrap()
        );
    }

    // Again: every line is complete, nothing is written, no database is created twice.
    let r = rerun(&d1, &manifest, &state, dir.path());
    assert_eq!(r["totals"]["databases_created"], 0);
    assert_eq!(r["totals"]["d1_rows_written"], 0, "{r}");
    for run in r["databases"].as_array().unwrap() {
        assert_eq!(run["report"]["already_complete"], true, "{run}");
    }
    assert_eq!(databases(&d1).len(), created.len());
}

#[test]
fn one_broken_source_among_good_ones_fails_alone_and_is_named() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let (manifest, sources) = tenants(dir.path(), &["good-1", "good-2"]);
    // A source D1 refuses a row of: a child whose parent does not exist.
    let broken = dir.path().join("broken.sqlite");
    let conn = rusqlite::Connection::open(&broken).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id));
         INSERT INTO parent VALUES (1);
         INSERT INTO child VALUES (1, 1), (2, 99);",
    )
    .unwrap();
    drop(conn);
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.insert_str(
        text.find('\n').unwrap() + 1,
        "broken.sqlite,broken-tenant\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let report = dir.path().join("fleet.json");
    let out = output({
        let mut c = fleet(&d1, &manifest, &dir.path().join("state"));
        c.env("MIGRATION_CREATE_DATABASES", "true")
            .env("MIGRATION_PARALLEL_DATABASES", "1")
            .env("MIGRATION_REPORT", &report);
        c
    });
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let created = databases(&d1);
    for (name, source) in ["good-1", "good-2"].iter().zip(&sources) {
        let diff = sqldiff(source, &created[*name].1);
        assert!(diff.is_empty(), "{name} differs:\n{}", diff.join("\n"));
    }
    let r = read_json(&report);
    assert_eq!(r["totals"]["ok"], 2);
    assert_eq!(r["totals"]["failed"], 1);
    let bad = r["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "broken-tenant")
        .expect("the broken line is reported");
    assert_eq!(bad["line"], 2);
    assert_eq!(bad["result"], "failed");
    let error = bad["error"].as_str().unwrap();
    assert!(error.contains("child") && error.contains('2'), "{error}");
    assert!(stderr(&out).contains("broken-tenant"));
}

#[test]
fn every_line_is_checked_before_anything_is_written() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let (manifest, _) = tenants(dir.path(), &["fine"]);
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("missing.sqlite,also-fine\nfine/sample.sqlite,nobody-made-me\n");
    std::fs::write(&manifest, text).unwrap();
    let before = databases(&d1).len();
    let out = output(fleet(&d1, &manifest, &dir.path().join("state")));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("line 3") && text.contains("missing.sqlite"),
        "{text}"
    );
    assert!(
        text.contains("line 4") && text.contains("nobody-made-me"),
        "{text}"
    );
    assert!(
        text.contains("line 2"),
        "the name `fine` is not in the account either: {text}"
    );
    assert_eq!(databases(&d1).len(), before, "no database was created");
    let writes: Vec<_> = d1
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert!(
        writes.is_empty(),
        "nothing is sent but look-ups: {writes:?}"
    );
}

#[test]
fn a_fleet_rolls_back_into_one_file_per_database() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let names = ["back-a", "back-b"];
    let (manifest, sources) = tenants(dir.path(), &names);
    let out = output({
        let mut c = fleet(&d1, &manifest, &dir.path().join("state"));
        c.env("MIGRATION_CREATE_DATABASES", "true");
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    let back = dir.path().join("back.csv");
    std::fs::write(
        &back,
        "sqlite_path,database\nrestored/a.sqlite,back-a\nrestored/b.sqlite,back-b\n",
    )
    .unwrap();
    let out = output({
        let mut c = fleet(&d1, &back, &dir.path().join("state"));
        c.env("MIGRATION_DIRECTION", "d1-to-sqlite");
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    for (file, source) in ["a", "b"].iter().zip(&sources) {
        let diff = sqldiff(source, &restored.join(format!("{file}.sqlite")));
        assert!(diff.is_empty(), "{file} differs:\n{}", diff.join("\n"));
    }
}

#[test]
fn a_manifest_and_a_single_source_together_are_refused() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let (manifest, sources) = tenants(dir.path(), &["x"]);
    let out = Run::new(&d1, "home", &sources[0])
        .env("MIGRATION_MANIFEST", &manifest)
        .output();
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("MIGRATION_MANIFEST") && text.contains("MIGRATION_SQLITE_PATH"),
        "{text}"
    );
}

#[test]
fn one_file_split_into_a_database_per_tenant_by_each_lines_transform() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("all.sqlite");
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(
        "CREATE TABLE tenants (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE items (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL REFERENCES tenants(id),
                             title TEXT);
         INSERT INTO tenants VALUES (1, 'acme'), (2, 'globex');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO items SELECT i, 1 + i % 2, 'item ' || i FROM n;",
    )
    .unwrap();
    drop(conn);
    let mut text = String::from("sqlite_path,database,transform\n");
    for (id, name) in [(1, "acme"), (2, "globex")] {
        std::fs::write(
            dir.path().join(format!("{name}.toml")),
            format!(
                "[table.tenants]\nwhere = \"id = {id}\"\n\n[table.items]\nwhere = \"tenant_id = {id}\"\n"
            ),
        )
        .unwrap();
        text.push_str(&format!("all.sqlite,{name},{name}.toml\n"));
    }
    let manifest = dir.path().join("tenants.csv");
    std::fs::write(&manifest, text).unwrap();
    let out = output({
        let mut c = fleet(&d1, &manifest, &dir.path().join("state"));
        c.env("MIGRATION_CREATE_DATABASES", "true")
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true");
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let created = databases(&d1);
    for (id, name) in [(1, "acme"), (2, "globex")] {
        let db = rusqlite::Connection::open(&created[name].1).unwrap();
        let tenants: Vec<i64> = db
            .prepare("SELECT id FROM tenants")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(tenants, vec![id], "{name}");
        let (items, others): (i64, i64) = db
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE tenant_id <> ?1) FROM items",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((items, others), (150, 0), "{name}");
    }
}

#[test]
fn a_dry_run_of_a_manifest_creates_no_database_and_two_rollback_lines_may_not_share_a_file() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let (manifest, _) = tenants(dir.path(), &["dry-a", "dry-b"]);
    let before = databases(&d1).len();
    let report = dir.path().join("dry.json");
    let out = output({
        let mut c = fleet(&d1, &manifest, &dir.path().join("state"));
        c.env("MIGRATION_CREATE_DATABASES", "true")
            .env("MIGRATION_DRY_RUN", "true")
            .env("MIGRATION_REPORT", &report);
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(databases(&d1).len(), before, "a dry run creates nothing");
    let r = read_json(&report);
    assert_eq!(r["mode"], "dry-run");
    assert_eq!(r["totals"]["not_run"], 2, "{r}");

    let back = dir.path().join("back.csv");
    std::fs::write(
        &back,
        "sqlite_path,database\nsame.sqlite,dry-a\nsame.sqlite,dry-b\n",
    )
    .unwrap();
    let out = output({
        let mut c = fleet(&d1, &back, &dir.path().join("state"));
        c.env("MIGRATION_DIRECTION", "d1-to-sqlite");
        c
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 2 writes the same file"),
        "{}",
        stderr(&out)
    );
}

/// A small source: parents with AUTOINCREMENT (and a counter ahead of their keys), children
/// referring to them, an index, a view and a trigger.
fn small_tenant(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE account (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);
         CREATE TABLE invoice (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES account(id),
                               total REAL, note BLOB);
         CREATE TABLE audit (at TEXT, what TEXT);
         CREATE INDEX invoice_account ON invoice(account_id);
         CREATE VIEW big AS SELECT * FROM invoice WHERE total > 100;
         CREATE TRIGGER invoice_audit AFTER INSERT ON invoice BEGIN
           INSERT INTO audit VALUES ('now', 'invoice ' || new.id);
         END;",
    )
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for a in 1..=150i64 {
        tx.execute(
            "INSERT INTO account (id, name) VALUES (?, ?)",
            rusqlite::params![a, format!("account {a}")],
        )
        .unwrap();
    }
    for i in 1..=400i64 {
        tx.execute(
            "INSERT INTO invoice VALUES (?, ?, ?, ?)",
            rusqlite::params![i, 1 + i % 150, i as f64 * 1.25, vec![i as u8; 3]],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    conn.execute_batch("UPDATE sqlite_sequence SET seq = 900 WHERE name = 'account';")
        .unwrap();
}

/// A folder with [`small_tenant`]'s file and a manifest of one line copying it to `database`:
/// the source, the manifest and the state folder.
fn small_line(dir: &Path, database: &str) -> (PathBuf, PathBuf, PathBuf) {
    let source = dir.join("small.sqlite");
    small_tenant(&source);
    let manifest = dir.join("tenants.csv");
    std::fs::write(
        &manifest,
        format!("sqlite_path,database\nsmall.sqlite,{database}\n"),
    )
    .unwrap();
    (source, manifest, dir.join("state"))
}

#[test]
fn a_database_the_run_creates_is_copied_in_one_request_validated_in_one_and_a_rerun_sends_one() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let (source, manifest, state) = small_line(dir.path(), "small-tenant");
    let report = dir.path().join("fleet.json");
    let out = output({
        let mut c = fleet(&d1, &manifest, &state);
        c.env("MIGRATION_CREATE_DATABASES", "true")
            .env("MIGRATION_REPORT", &report);
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let (id, file) = databases(&d1)["small-tenant"].clone();
    let diff = sqldiff(&source, &file);
    assert!(diff.is_empty(), "differs:\n{}", diff.join("\n"));
    // The objects after the data, and the AUTOINCREMENT counter ahead of the keys.
    let copy = rusqlite::Connection::open(&file).unwrap();
    let objects: Vec<String> = copy
        .prepare("SELECT type || ' ' || name FROM sqlite_schema WHERE type != 'table' AND sql IS NOT NULL ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        objects,
        ["index invoice_account", "trigger invoice_audit", "view big"]
    );
    let seq: i64 = copy
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'account'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seq, 900);
    let audit: i64 = copy
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        audit, 400,
        "the source's audit rows, and none from the trigger firing for the copied invoices"
    );
    drop(copy);

    // Created by the run: no catalog read, no bookmark; every table in one request, the
    // validation in one (the catalog with each table's columns, counts and sampled rows).
    let r = read_json(&report);
    let line = &r["databases"][0]["report"];
    assert_eq!(line["validation"]["ok"], true, "{line}");
    let phase = |name: &str| {
        line["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == name)
            .map(|p| p["requests"].as_u64().unwrap())
    };
    assert_eq!(phase("forward"), Some(1), "{line}");
    assert_eq!(phase("validate"), Some(1), "{line}");
    assert!(line["bookmark_before"].is_null(), "{line}");
    let to_it: Vec<serde_json::Value> = d1
        .settled_requests()
        .into_iter()
        .filter(|q| q["path"].as_str().unwrap_or_default().contains(&id))
        .collect();
    assert_eq!(to_it.len(), 2, "{to_it:?}");
    let first = to_it[0]["statements"].to_string();
    assert!(
        first.contains("CREATE TABLE")
            && first.contains("INSERT INTO")
            && first.contains("CREATE TRIGGER"),
        "{first}"
    );
    let second = to_it[1]["statements"].to_string();
    assert!(
        second.contains("SELECT NAME") && second.contains("SELECT COUNT(*),"),
        "the catalog and the counts in one request: {second}"
    );

    // Again: the checkpoint says complete; the validation alone (one request, after the
    // listing) shows D1 still holds it, and nothing is written.
    let before = d1.settled_requests().len();
    let r = rerun(&d1, &manifest, &state, dir.path());
    assert_eq!(r["totals"]["d1_rows_written"], 0, "{r}");
    let line = &r["databases"][0]["report"];
    assert_eq!(line["already_complete"], true);
    assert_eq!(line["validation"]["ok"], true, "{line}");
    assert_eq!(line["http_requests"], 1, "{line}");
    assert_eq!(
        r["totals"]["http_requests"], 2,
        "the listing and the validation: {r}"
    );
    assert_eq!(d1.settled_requests().len() - before, 2);
    assert!(sqldiff(&source, &file).is_empty());
}

/// A rerun of a complete line trusts its validation rather than reading D1's catalog and counts
/// first: when D1 lost rows since (here rows of two tables, deleted), the validation finds the
/// difference, D1 is checked against the checkpoint, the tables are copied again, and the line
/// ends validated and exact (not with differences, as a rerun that only validated would).
#[test]
fn a_rerun_of_a_complete_line_whose_database_lost_rows_copies_them_again() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let (source, manifest, state) = small_line(dir.path(), "lossy");
    let first = rerun(&d1, &manifest, &state, dir.path());
    assert_eq!(first["totals"]["ok"], 1, "{first}");
    let (id, file) = databases(&d1)["lossy"].clone();
    // Invoices lost too: D1 holds the source's trigger on invoice, which must not fire on the
    // invoices copied again (their audit rows are copied from the source).
    d1.sql(
        &id,
        &[
            "DELETE FROM invoice WHERE id > 300",
            "DELETE FROM audit WHERE rowid > 100",
        ],
    );
    assert!(!sqldiff(&source, &file).is_empty());

    let r = rerun(&d1, &manifest, &state, dir.path());
    let line = &r["databases"][0]["report"];
    assert_eq!(r["databases"][0]["result"], "ok", "{r}");
    assert_eq!(line["validation"]["ok"], true, "{line}");
    assert_eq!(line["already_complete"], false, "{line}");
    let diff = sqldiff(&source, &file);
    assert!(diff.is_empty(), "differs:\n{}", diff.join("\n"));
}

/// Validation after a copy reads D1's catalog with its counts and sampled rows, assuming D1
/// holds every table of the source; when it does not (here a table dropped on D1 after the
/// copy), D1 refuses that request, validation reads the catalog first and finds the table
/// missing, and the rerun copies it again.
#[test]
fn validation_along_a_target_that_lacks_a_table_reads_the_catalog_first_and_names_it() {
    let d1 = server();
    let dir = tempfile::tempdir().unwrap();
    let (_, manifest, state) = small_line(dir.path(), "dropped");
    let first = rerun(&d1, &manifest, &state, dir.path());
    assert_eq!(first["totals"]["ok"], 1, "{first}");
    let (id, file) = databases(&d1)["dropped"].clone();
    d1.sql(&id, &["DROP TRIGGER invoice_audit", "DROP TABLE audit"]);

    // The rerun: validation along is refused (no table audit), the catalog is read first, the
    // differences found, the checkpoint checked against D1 and audit copied again.
    let r = rerun(&d1, &manifest, &state, dir.path());
    let line = &r["databases"][0]["report"];
    assert_eq!(r["databases"][0]["result"], "ok", "{r}");
    assert_eq!(line["validation"]["ok"], true, "{line}");
    assert!(
        line["objects_created"].to_string().contains("audit"),
        "{line}"
    );
    // Validation: along, refused; the catalog, then counts and samples (finding audit
    // missing); after the repair, along again.
    let validate = line["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "validate")
        .map(|p| p["requests"].as_u64().unwrap());
    assert_eq!(validate, Some(4), "{line}");
    let copy = rusqlite::Connection::open(&file).unwrap();
    let audit: i64 = copy
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(audit, 400);
}
