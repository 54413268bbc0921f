//! The client's calls around the query endpoints, against the local D1: databases found by
//! name, read, created and deleted; Time Travel bookmarks.

use d1_migrator::d1::{D1Client, Endpoint, RetryPolicy, Secret};
use d1_migrator::error::D1Error;

use crate::harness::{LocalD1, ACCOUNT, TOKEN};

fn client(d1: &LocalD1, database: &str) -> D1Client {
    let endpoint = Endpoint {
        api_url: d1.api_url.clone(),
        account_id: ACCOUNT.to_string(),
        database_id: database.to_string(),
        token: Secret::new(TOKEN.to_string()),
    };
    D1Client::new(endpoint, RetryPolicy::default())
}

#[test]
fn the_client_creates_finds_reads_and_deletes_databases() {
    let d1 = LocalD1::start(&["first".to_string(), "first-too".to_string()], None);
    let account = client(&d1, "");
    let made = account.create_database("by-the-client", None).unwrap();
    assert_eq!(made.name, "by-the-client");
    assert_eq!(made.uuid.len(), 36);
    match account.create_database("by-the-client", None) {
        Err(D1Error::Http {
            status: 400,
            message,
        }) => assert!(message.contains("7502"), "{message}"),
        other => panic!("a taken name is refused with D1's 7502: {other:?}"),
    }
    // Found by exact name, though the list filter also matches "first-too".
    let first = account.find_database("first").unwrap().expect("found");
    assert_eq!(first.uuid, "first");
    assert_eq!(account.find_database("fir").unwrap(), None);
    let all = account.list_databases(None).unwrap();
    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["first", "first-too", "by-the-client"]);

    let db = client(&d1, &made.uuid);
    db.execute(&[
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES (randomblob(50000))",
    ])
    .unwrap();
    let info = db.database_info().unwrap();
    assert_eq!(info.num_tables, Some(1));
    assert!(info.file_size.unwrap() >= 50_000, "{info:?}");
    assert_eq!(info.version.as_deref(), Some("production"));
    assert_eq!(
        account.get_database("by-the-client").unwrap().uuid,
        made.uuid
    );

    account.delete_database(&made.uuid).unwrap();
    assert!(matches!(db.database_info(), Err(D1Error::NotFound { .. })));
    assert_eq!(account.find_database("by-the-client").unwrap(), None);
}

#[test]
fn listing_reads_every_page() {
    let d1 = LocalD1::shared();
    let all = client(d1, "").list_databases(None).unwrap();
    assert!(all.len() >= 64, "more than one page of 100? {}", all.len());
    let mut ids: Vec<&str> = all.iter().map(|d| d.uuid.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "no database listed twice");
}

#[test]
fn the_clients_bookmark_moves_with_each_write() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    let c = client(d1, &db);
    let before = c.bookmark().unwrap();
    assert_eq!(c.bookmark().unwrap(), before);
    c.execute(&["CREATE TABLE t(x)"]).unwrap();
    assert_ne!(c.bookmark().unwrap(), before);
    assert!(matches!(
        client(d1, "no-such-db").bookmark(),
        Err(D1Error::NotFound { .. })
    ));
}

#[test]
fn a_writing_run_records_the_bookmark_taken_before_its_first_write() {
    let (d1, db, dir) = crate::harness::fresh();
    let source = crate::harness::generated(dir.path(), "sample");
    let before = client(d1, &db).bookmark().unwrap();
    let report_path = dir.path().join("report.json");
    let out = crate::harness::Run::new(d1, &db, &source)
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let report = crate::harness::read_json(&report_path);
    assert_eq!(report["bookmark_before"], before.as_str());
    assert_ne!(client(d1, &db).bookmark().unwrap(), before, "the run wrote");
    let command = format!("wrangler d1 time-travel restore {db} --bookmark={before}");
    assert_eq!(report["restore_command"], command.as_str());
    assert!(crate::harness::stderr(&out).contains(&command));
}

#[test]
fn an_api_without_time_travel_is_a_warning_not_a_failure() {
    let d1 = LocalD1::start_with(&["no-tt".to_string()], &[("LOCAL_D1_TIME_TRAVEL", "off")]);
    let dir = tempfile::tempdir().unwrap();
    let source = crate::harness::generated(dir.path(), "sample");
    let report_path = dir.path().join("report.json");
    let out = crate::harness::Run::new(&d1, "no-tt", &source)
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let err = crate::harness::stderr(&out);
    assert!(
        err.contains("could not take a Time Travel bookmark"),
        "{err}"
    );
    let report = crate::harness::read_json(&report_path);
    assert_eq!(report["success"], true);
    assert!(report.get("bookmark_before").is_none(), "{report}");
    assert!(crate::harness::sqldiff(&source, d1.file("no-tt")).is_empty());
}

#[test]
fn a_sync_that_writes_records_the_bookmark_taken_before_it() {
    let (db, dir, source) = crate::harness::migrated("sample");
    let d1 = LocalD1::shared();
    let sync = |report: &std::path::Path| {
        crate::harness::Run::new(d1, &db, &source)
            .env("MIGRATION_MODE", "sync")
            .env("MIGRATION_REPORT", report)
            .ok();
        crate::harness::read_json(report)
    };
    let idle = sync(&dir.path().join("idle.json"));
    assert!(
        idle.get("bookmark_before").is_none(),
        "nothing to write: {idle}"
    );
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch("UPDATE customers SET name = name || '!' WHERE id = 1")
        .unwrap();
    let before = client(d1, &db).bookmark().unwrap();
    let report = sync(&dir.path().join("sync.json"));
    assert_eq!(report["bookmark_before"], before.as_str(), "{report}");
}
