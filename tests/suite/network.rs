//! Over a slow network (the local D1's `latency_ms` fault): writes keep more requests in flight
//! when answers are slow to arrive, reads keep pages of several tables in flight, a 429 holds
//! back the whole run, and every copy stays exact.

use crate::harness::{read_json, sqldiff, LocalD1, Run};

/// A generated sample of about `scale` × 170 KB.
fn sample(dir: &std::path::Path, scale: usize) -> std::path::PathBuf {
    let path = dir.join("sample.sqlite");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_d1-migrator"))
        .args(["generate", "sample", "--scale", &scale.to_string()])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    path
}

/// The most requests the server held at once among those whose first statement starts with
/// `first` (`in_flight` of its request log).
fn most_in_flight(d1: &LocalD1, first: &str) -> u64 {
    d1.settled_requests()
        .iter()
        .filter(|r| {
            r["statements"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|w| w.as_str().unwrap_or("").starts_with(first))
            })
        })
        .filter_map(|r| r["in_flight"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn writes_keep_more_than_eight_requests_in_flight_when_answers_are_slow_to_arrive_and_no_more_requests(
) {
    let dir = tempfile::tempdir().unwrap();
    let source = sample(dir.path(), 80);
    let copy = |faults: Option<&str>| {
        let id = "window".to_string();
        let d1 = LocalD1::start(std::slice::from_ref(&id), faults);
        let report = dir.path().join("report.json");
        Run::new(&d1, &id, &source)
            .env("MIGRATION_REQUEST_BYTES", "100000")
            .env("MIGRATION_CONCURRENCY", "8")
            .env("MIGRATION_VALIDATE", "false")
            .env("MIGRATION_REPORT", &report)
            .ok();
        let diff = sqldiff(&source, d1.file(&id));
        assert!(diff.is_empty(), "{}", diff.join("\n"));
        (most_in_flight(&d1, "INSERT"), read_json(&report))
    };
    let (_, near_report) = copy(None);
    let (far_in_flight, report) = copy(Some("latency_ms=250"));
    // D1 executes each request in a few milliseconds: on this machine a few requests keep it
    // busy; 250 ms away it takes more than MIGRATION_CONCURRENCY's 8, and the window of writes
    // has its own ceiling, MIGRATION_WRITES_IN_FLIGHT (16). The window is the client's (the
    // server counts a request in flight until its connection's close event, late on a loaded
    // machine); the server saw the writes in flight.
    // Without latency the window stays small on a quiet machine (flow's unit tests show it),
    // but grows on a loaded one, where the client, not D1, is the bottleneck.
    let near = near_report["writes_window_peak"].as_u64().unwrap();
    let far = report["writes_window_peak"].as_u64().unwrap();
    assert!(
        far > 8 && far >= near,
        "a window of {far} writes at 250 ms per answer, {near} without"
    );
    assert!(
        far <= 16,
        "a window of {far} writes, over MIGRATION_WRITES_IN_FLIGHT"
    );
    // The server counts a request once its body is in: on a loaded machine (two test runs
    // side by side) it saw 8 at once of a window of more.
    assert!(
        far_in_flight >= 8,
        "the server saw {far_in_flight} writes in flight at once"
    );
    // The latency costs no request.
    assert_eq!(
        report["http_requests"], near_report["http_requests"],
        "requests at 250 ms and without latency"
    );
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases[0]["phase"], "forward");
    assert_eq!(phases[0]["requests"], report["http_requests"]);
    assert!(phases[0]["requests_per_gb"].as_f64().unwrap() > 0.0);
}

/// Copies `source` into a local D1 with `faults`, then rolls it back with full validation
/// into a new file that must equal the source. Returns the D1, how many requests it had
/// logged before the rollback, and the rollback's report.
fn round_trip(
    dir: &std::path::Path,
    source: &std::path::Path,
    faults: &str,
) -> (LocalD1, usize, serde_json::Value) {
    let id = "round-trip".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some(faults));
    Run::new(&d1, &id, source)
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let before = d1.settled_requests().len();
    let back = dir.join("back.sqlite");
    let report = dir.join("rollback.json");
    Run::new(&d1, &id, &back)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let diff = sqldiff(source, &back);
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    (d1, before, read_json(&report))
}

/// The most exact reads (`SELECT CASE ...`) the server held at once after its first `before`
/// requests.
fn most_reads_in_flight(d1: &LocalD1, before: usize) -> u64 {
    d1.settled_requests()[before..]
        .iter()
        .filter(|r| r["statements"][0] == "SELECT CASE")
        .filter_map(|r| r["in_flight"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn reads_keep_pages_of_several_tables_in_flight_and_the_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let source = sample(dir.path(), 10);
    let (d1, before, report) = round_trip(dir.path(), &source, "latency_ms=150");
    assert_eq!(report["validation"]["ok"], true);
    // Pages of several tables were asked for at once.
    let reads = most_reads_in_flight(&d1, before);
    assert!(reads >= 3, "only {reads} reads in flight");
    // The catalog comes in two round trips, every table's rows and width in one: one per
    // table would cost a round trip each.
    let catalog = d1.settled_requests()[before..]
        .iter()
        .filter(|r| {
            r["statements"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|w| w != "SELECT CASE" && w != "SELECT HEX(SUBSTR(CAST(")
            })
        })
        .count();
    // Rollback and its validation: discovery (2 + 2), surveys (1 + 1 + 1), key ranges.
    assert!(catalog <= 10, "{catalog} catalog requests");
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["rollback", "validate"]);
}

#[test]
fn a_429_holds_back_the_whole_run_and_the_copy_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let source = sample(dir.path(), 5);
    let id = "limited".to_string();
    let d1 = LocalD1::start(
        std::slice::from_ref(&id),
        Some("429=0.15,retry_after=1,seed=3,latency_ms=20"),
    );
    let report = dir.path().join("report.json");
    Run::new(&d1, &id, &source)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let diff = sqldiff(&source, d1.file(&id));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let report = read_json(&report);
    let limited = d1
        .settled_requests()
        .iter()
        .filter(|r| r["fault"] == "429")
        .count();
    assert!(limited >= 1, "no 429 was injected");
    assert!(report["retries"].as_u64().unwrap() >= limited as u64);
    // Each 429 said "Retry-After: 1"; every thread waited it out, not only the one that got it.
    let waited = report["rate_limit_wait_ms"].as_u64().unwrap();
    assert!(
        waited >= 500,
        "threads waited {waited} ms for {limited} 429s"
    );
}

/// Copies `source` (exactly) with requests of 1 MiB, `writes` at most in flight, into a
/// local D1 that refuses bodies over 300,000 bytes as Cloudflare's edge does (413 and an HTML
/// page). Returns the D1, the run's report and its output.
fn copy_refusing_large_bodies(
    dir: &std::path::Path,
    source: &std::path::Path,
    writes: &str,
) -> (LocalD1, serde_json::Value, std::process::Output) {
    let id = "small-bodies".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some("max_body=300000"));
    let report = dir.join("report.json");
    let out = Run::new(&d1, &id, source)
        .env("MIGRATION_REQUEST_BYTES", "1048576")
        .env("MIGRATION_WRITES_IN_FLIGHT", writes)
        .env("MIGRATION_VALIDATE", "false")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let diff = sqldiff(source, d1.file(&id));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    (d1, read_json(&report), out)
}

#[test]
fn a_request_too_large_is_split_and_later_requests_are_sent_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let source = sample(dir.path(), 30);
    let (d1, report, out) = copy_refusing_large_bodies(dir.path(), &source, "8");
    let requests = d1.settled_requests();
    let refused = requests.iter().filter(|r| r["fault"] == "413").count();
    let sent = requests.iter().filter(|r| r["fault"].is_null()).count();
    assert!(refused >= 1, "no request was refused");
    // Once refused, requests are split before they are sent: few are refused at all.
    assert!(
        refused * 3 < sent,
        "{refused} requests refused as too large, {sent} accepted"
    );
    assert!(requests
        .iter()
        .filter(|r| r["fault"].is_null())
        .all(|r| r["bytes"].as_u64().unwrap() <= 300_000));
    assert_eq!(report["phases"][0]["too_large"], refused as u64);
    let err = crate::harness::stderr(&out);
    assert!(err.contains("split from now on"), "{err}");
}

/// A table of 60 small integer columns: statements of about 50 KB (the engine's cap on
/// rows × columns binds before its 100,000 bytes), sixteen to a request of 1 MiB: 14 MB.
fn narrow_statements(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("narrow.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let columns: Vec<String> = (0..60).map(|i| format!("c{i} INTEGER")).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, {});
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
         INSERT INTO wide SELECT i, {} FROM n;",
        columns.join(", "),
        (0..60)
            .map(|c| format!("(i * {}) % 1000", c + 7))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .unwrap();
    path
}

#[test]
fn after_a_request_too_large_the_packer_keeps_the_lowered_size_for_the_rest_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let source = narrow_statements(dir.path());
    // Few requests packed ahead at the old size.
    let (d1, report, out) = copy_refusing_large_bodies(dir.path(), &source, "2");
    let lowered = report["phases"][0]["max_body"].as_u64().expect("max_body");
    assert!(lowered < 300_000, "requests of {lowered} bytes allowed");
    let requests = d1.settled_requests();
    let last_refused = requests
        .iter()
        .rposition(|r| r["fault"] == "413")
        .expect("a request was refused");
    // After the last refusal, data requests are packed up to the lowered size (here three
    // statements of 62 KB in 249 KB), not packed to 1 MiB and cut in halves (two statements).
    // The requests packed before the refusal was known are cut in halves and go first: the
    // last twenty were packed after it.
    let after: Vec<u64> = requests[last_refused + 1..]
        .iter()
        .filter(|r| r["statements"][1] == "INSERT INTO")
        .map(|r| r["bytes"].as_u64().unwrap())
        .collect();
    assert!(
        after.len() >= 40,
        "{} data requests after the refusal",
        after.len()
    );
    assert!(
        after.iter().all(|&b| b <= lowered),
        "{after:?} over {lowered}"
    );
    // The table's last request holds what is left of it; sent beside the one before, it may
    // reach D1 first: of the last twenty-one, the smallest is left out.
    let mut last = after[after.len() - 21..].to_vec();
    last.sort_unstable();
    let last = &last[1..];
    assert!(
        last.iter().all(|&b| b * 10 >= lowered * 7),
        "requests far below {lowered} bytes: {after:?}"
    );
    let err = crate::harness::stderr(&out);
    assert!(err.contains("KB per request from then on"), "{err}");
}

#[test]
fn a_without_rowid_table_is_read_back_in_segments_of_its_first_key_column_whatever_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tags.sqlite");
    // About 6 MB of rows keyed (integer, text), and a few keys of other types at both ends of
    // the first column's order (a REAL between integers, TEXT and a BLOB above every number).
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "CREATE TABLE tags (a, b TEXT, note TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
             INSERT INTO tags SELECT i / 3, 'tag-' || (i % 3), hex(randomblob(90)) FROM n;
             INSERT INTO tags VALUES (2500.5, 'x', 'real'), ('text key', 'x', 'text'),
                 (X'00', 'x', 'blob'), (-7, 'x', 'negative');",
        )
        .unwrap();
    let (d1, before, report) = round_trip(dir.path(), &source, "latency_ms=100");
    assert_eq!(report["validation"]["ok"], true);
    let reads = most_reads_in_flight(&d1, before);
    assert!(reads >= 3, "only {reads} reads of the one table in flight");
}

/// About 7 MB of rows: `notes` keyed by integers (read in segments), `tags` keyed by text
/// (read page after page), and a few small tables read together.
fn pages_of_text(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("pages.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, n REAL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
             INSERT INTO notes SELECT i, hex(randomblob(60)) || 'é', i / 7.0 FROM n;
             CREATE TABLE tags (name TEXT PRIMARY KEY, note INTEGER) WITHOUT ROWID;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO tags SELECT 'tag ' || hex(randomblob(40)), i FROM n;
             CREATE TABLE colours (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO colours (name) VALUES ('red'), ('green'), ('blue');
             CREATE TABLE empty (id INTEGER PRIMARY KEY, x BLOB);",
        )
        .unwrap();
    path
}

/// The `phase` entry of a report's phases.
fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == name)
        .unwrap_or_else(|| panic!("no phase {name}: {report}"))
}

#[test]
fn a_page_too_large_for_d1_is_read_again_smaller_and_the_rollback_and_its_validation_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let source = pages_of_text(dir.path());
    // D1 answers at most 600 KB: pages of 2 MiB of values are refused as its isolate's memory.
    let (d1, before, report) = round_trip(dir.path(), &source, "max_answer=600000");
    // round_trip: the file rolled back equals the source (sqldiff); its full validation, which
    // reads D1 in pages again, compared every row.
    let validation = &report["validation"];
    assert_eq!(validation["ok"], true, "{validation}");
    for t in validation["tables"].as_array().unwrap() {
        assert_eq!(t["compared"], t["source_rows"], "{t}");
    }
    let rollback = phase(&report, "rollback");
    let lowered = rollback["page_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        rollback["answers_too_large"].as_u64().unwrap_or(0) >= 1 && lowered < 1 << 20,
        "{rollback}"
    );
    // The lowered page size holds for the rest of the run: the validation after the rollback
    // reads its pages of D1 at that size, and none is refused.
    let validate = phase(&report, "validate");
    assert!(validate["answers_too_large"].is_null(), "{validate}");
    let requests = &d1.settled_requests()[before..];
    let refused: Vec<usize> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r["fault"] == "answer_too_large")
        .map(|(i, _)| i)
        .collect();
    // Pages are smaller for the rest of the run once one was refused: only those asked for
    // before the lowered size was known (the readers' pages in flight, in a few rounds of
    // halving) are refused, and none in the second half of the run.
    let last = *refused.last().expect("no answer was refused");
    assert!(
        refused.len() >= 2 && refused.len() <= 30 && last < requests.len() / 2,
        "refused at {refused:?} of {} requests",
        requests.len()
    );
}

#[test]
fn a_full_validation_against_a_d1_that_refuses_large_answers_reads_smaller_pages_and_finds_every_row(
) {
    let dir = tempfile::tempdir().unwrap();
    let source = pages_of_text(dir.path());
    let id = "small-answers".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some("max_answer=600000"));
    Run::new(&d1, &id, &source)
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let diff = sqldiff(&source, d1.file(&id));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let report_path = dir.path().join("validate.json");
    let out = Run::new(&d1, &id, &source)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report_path)
        .ok();
    let report = read_json(&report_path);
    let validation = &report["validation"];
    assert_eq!(validation["ok"], true, "{validation}");
    for t in validation["tables"].as_array().unwrap() {
        assert_eq!(t["compared"], t["source_rows"], "{t}");
    }
    let p = phase(&report, "validate");
    assert!(p["answers_too_large"].as_u64().unwrap_or(0) >= 1, "{p}");
    let err = crate::harness::stderr(&out);
    assert!(err.contains("pages hold at most"), "{err}");
    assert!(err.contains("answers too large"), "{err}");
    // A row changed on D1 after the refusals is still found.
    d1.sql(&id, &["UPDATE notes SET body = 'changed' WHERE id = 29000"]);
    let out = Run::new(&d1, &id, &source)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report_path)
        .output();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        crate::harness::stderr(&out)
    );
    let report = read_json(&report_path);
    let notes = report["validation"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "notes")
        .unwrap();
    assert_eq!(notes["mismatched"], 1, "{notes}");
    assert_eq!(notes["differences"][0]["key"], "29000", "{notes}");
}

#[test]
fn a_rollback_asks_for_its_first_pages_after_two_round_trips_and_reads_its_small_tables_together() {
    let dir = tempfile::tempdir().unwrap();
    let source = shop(dir.path());
    let (d1, before, _) = round_trip(dir.path(), &source, "latency_ms=1");
    let requests = &d1.settled_requests()[before..];
    let first_page = requests
        .iter()
        .position(|r| r["statements"][0] == "SELECT CASE")
        .expect("a page was read");
    // D1's whole catalog (sqlite_sequence with it) in one round trip, every table's rows, width
    // and key range in one.
    assert_eq!(first_page, 2, "{:?}", &requests[..first_page]);
    // The three small tables (one of them empty) in one request.
    assert!(
        requests.iter().any(|r| r["statements"]
            .as_array()
            .is_some_and(|s| s.len() == 3 && s.iter().all(|w| w == "SELECT CASE"))),
        "the small tables were read one by one"
    );
}

#[test]
fn a_rollback_from_a_d1_without_sqlite_sequence_reads_its_catalog_in_one_round_trip_and_its_statistics_with_the_surveys(
) {
    let dir = tempfile::tempdir().unwrap();
    // No AUTOINCREMENT (no sqlite_sequence), the planner's statistics (sqlite_stat1).
    let source = dir.path().join("plain.sqlite");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "CREATE TABLE colours (id INTEGER PRIMARY KEY, name TEXT UNIQUE);
             INSERT INTO colours (name) VALUES ('red'), ('green'), ('blue');
             CREATE TABLE items (id INTEGER PRIMARY KEY, colour INTEGER REFERENCES colours(id),
                                 note TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO items SELECT i, 1 + i % 3, hex(randomblob(20)) FROM n;
             CREATE INDEX items_by_colour ON items(colour);
             ANALYZE;
             DROP TABLE IF EXISTS sqlite_stat4;",
        )
        .unwrap();
    let (d1, before, _) = round_trip(dir.path(), &source, "latency_ms=1");
    let back = dir.path().join("back.sqlite");
    let requests = &d1.settled_requests()[before..];
    let first_page = requests
        .iter()
        .position(|r| r["statements"][0] == "SELECT CASE")
        .expect("a page was read");
    // D1's catalog, then the tables' surveys with sqlite_stat1's rows. Before: the catalog
    // asked with sqlite_sequence (refused: there is none), again without it, then
    // sqlite_stat1 in a round of its own, then the surveys (the first page fifth).
    assert_eq!(first_page, 2, "{:?}", &requests[..first_page]);
    assert!(
        requests[1]["statements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "SELECT ROWID,"),
        "{:?}",
        requests[1]
    );
    let stat1 = |path: &std::path::Path| -> Vec<(i64, String, Option<String>, String)> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT rowid, tbl, idx, stat FROM sqlite_stat1 ORDER BY rowid")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(stat1(&back), stat1(&source));
    let has_sequence: i64 = rusqlite::Connection::open(&back)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(has_sequence, 0);
}

/// A shop: a table of 40,000 orders, two small tables (one WITHOUT ROWID), an empty one.
fn shop(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("shop.sqlite");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000)
             INSERT INTO orders (note) SELECT hex(randomblob(30)) FROM n;
             CREATE TABLE colours (id INTEGER PRIMARY KEY, name TEXT UNIQUE);
             INSERT INTO colours (name) VALUES ('red'), ('green');
             CREATE TABLE sizes (name TEXT PRIMARY KEY) WITHOUT ROWID;
             INSERT INTO sizes VALUES ('S'), ('M'), ('L');
             CREATE TABLE notes (id INTEGER PRIMARY KEY, colour INTEGER REFERENCES colours(id));
             CREATE INDEX orders_note ON orders(note);",
        )
        .unwrap();
    source
}

/// Copies `source` into a local D1 with `faults`, then validates every row of it
/// (`MIGRATION_MODE=validate`), which must find the copy exact. Returns the D1, how many
/// requests it had logged before the validation, and the validation's report.
fn validated(
    dir: &std::path::Path,
    source: &std::path::Path,
    faults: &str,
) -> (LocalD1, usize, serde_json::Value) {
    let id = "validated".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some(faults));
    Run::new(&d1, &id, source)
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let before = d1.settled_requests().len();
    let report = dir.join("validate.json");
    Run::new(&d1, &id, source)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let report = read_json(&report);
    let validation = &report["validation"];
    assert_eq!(validation["ok"], true, "{validation}");
    for t in validation["tables"].as_array().unwrap() {
        assert_eq!(t["compared"], t["source_rows"], "{t}");
    }
    (d1, before, report)
}

#[test]
fn a_full_validation_asks_for_its_first_pages_beside_d1s_catalog_not_after_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let source = shop(dir.path());
    let id = "beside".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), None);
    Run::new(&d1, &id, &source)
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    // Every request reaches D1 two seconds after it left.
    let d1 = d1.restart_with(Some("latency_ms=2000"));
    let before = d1.settled_requests().len();
    validate_all_rows(&d1, &id, &source, dir.path());
    let requests = &d1.settled_requests()[before..];
    let at = |r: &serde_json::Value| r["t"].as_f64().unwrap();
    let catalog = requests
        .iter()
        .find(|r| {
            r["statements"][0]
                .as_str()
                .is_some_and(|s| s.starts_with("SELECT NAME"))
        })
        .unwrap_or_else(|| panic!("D1's catalog was not read: {requests:?}"));
    let first_page = requests
        .iter()
        .filter(|r| r["statements"][0] == "SELECT CASE")
        .map(at)
        .fold(f64::INFINITY, f64::min);
    // The pages leave with D1's catalog (and the counts), not once it is answered: the first
    // reaches D1 well within the two seconds a page sent after the catalog's answer would
    // come after it.
    assert!(
        first_page < at(catalog) + 1000.0,
        "the first page reached D1 {} ms after the catalog",
        first_page - at(catalog)
    );
    // No request more: the catalog and counts, the orders' pages, the small tables' pages.
    assert_eq!(requests.len(), 7, "{requests:?}");
}

/// Validates every row of `source` against `id` on `d1` (`MIGRATION_MODE=validate`), which
/// must find the copy exact; returns the report.
fn validate_all_rows(
    d1: &LocalD1,
    id: &str,
    source: &std::path::Path,
    dir: &std::path::Path,
) -> serde_json::Value {
    let report = dir.join("validate.json");
    Run::new(d1, id, source)
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let report = read_json(&report);
    let validation = &report["validation"];
    assert_eq!(validation["ok"], true, "{validation}");
    for t in validation["tables"].as_array().unwrap() {
        assert_eq!(t["compared"], t["source_rows"], "{t}");
    }
    report
}

#[test]
fn a_full_validation_of_a_d1_that_lacks_a_table_stops_its_walks_reads_the_catalog_first_and_names_it(
) {
    let dir = tempfile::tempdir().unwrap();
    // About 13 MB of rows: pages of 2 MiB of values, walked with two pages at once.
    let source = dir.path().join("words.sqlite");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "CREATE TABLE words (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 36000)
             INSERT INTO words (body) SELECT hex(randomblob(150)) FROM n;
             CREATE TABLE gone (id INTEGER PRIMARY KEY);
             INSERT INTO gone VALUES (1);",
        )
        .unwrap();
    let id = "lacking".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), None);
    Run::new(&d1, &id, &source)
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let validate = |d1: &LocalD1| {
        let report = dir.path().join("validate.json");
        let before = d1.settled_requests().len();
        Run::new(d1, &id, &source)
            .env("MIGRATION_MODE", "validate")
            .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
            .env("MIGRATION_CONCURRENCY", "1")
            .env("MIGRATION_PARALLEL_TABLES", "1")
            .env("MIGRATION_REPORT", &report)
            .output();
        let pages = d1.settled_requests()[before..]
            .iter()
            .filter(|r| r["statements"][0] == "SELECT CASE")
            .count();
        (read_json(&report), pages)
    };
    let (_, pages) = validate(&d1);
    assert!(pages >= 6, "{pages} pages");
    d1.sql(&id, &["DROP TABLE gone"]);
    // Answers come 300 ms after their requests left: D1's refusal of the catalog with its
    // counts (no table gone) comes while the walk's first pages are on their way.
    let d1 = d1.restart_with(Some("latency_ms=300"));
    let (report, read) = validate(&d1);
    let tables = report["validation"]["tables"].as_array().unwrap();
    let gone = tables.iter().find(|t| t["table"] == "gone").unwrap();
    assert!(
        gone["schema_problems"].to_string().contains("has no table"),
        "{gone}"
    );
    let words = tables.iter().find(|t| t["table"] == "words").unwrap();
    assert_eq!(words["compared"], 36000, "{words}");
    // The walk begun beside the refused request stopped at its next page: the words were
    // read once after the catalog, and at most the pages asked for before the refusal (two at
    // once, and one more) besides; walked to its end, it read every page twice.
    assert!(
        read <= pages + 3,
        "{read} pages read, {pages} in a validation"
    );
}

#[test]
fn a_full_validation_keeps_several_pages_of_one_table_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // About 13 MB of rows keyed by text: one key range, walked page after page, six pages of
    // 2 MiB of values.
    let source = dir.path().join("words.sqlite");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(
            "CREATE TABLE words (word TEXT PRIMARY KEY, body TEXT) WITHOUT ROWID;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 36000)
             INSERT INTO words SELECT 'w' || hex(randomblob(8)), hex(randomblob(150)) FROM n;",
        )
        .unwrap();
    let (d1, before, _) = validated(dir.path(), &source, "latency_ms=300");
    let pages = d1.settled_requests()[before..]
        .iter()
        .filter(|r| r["statements"][0] == "SELECT CASE")
        .count();
    assert!(pages >= 6, "{pages} pages");
    // The source's pages end where a key says: the target's pages are asked for before the
    // source's rows are read, several at once (one page read ahead kept two on their way).
    let reads = most_reads_in_flight(&d1, before);
    assert!(reads >= 4, "only {reads} pages of the one table in flight");
}

/// A database of four levels (regions ← customers ← orders ← lines), the two upper ones small,
/// with an AUTOINCREMENT counter ahead of its rows, the planner's statistics, an index, a view
/// and a trigger that would change `orders` if it fired on the copied lines.
fn levels(path: &std::path::Path, bad_rows: bool) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE regions (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         INSERT INTO regions VALUES (1, 'north'), (2, 'south');
         CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
                                 region INTEGER REFERENCES regions(id));
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO customers SELECT i, 'customer ' || i, 1 + i % 2 FROM n;
         UPDATE sqlite_sequence SET seq = 500 WHERE name = 'customers';
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL
                              REFERENCES customers(id), lines INTEGER NOT NULL DEFAULT 0, note TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO orders SELECT i, 1 + i % 50, 2, hex(randomblob(80)) FROM n;
         CREATE TABLE lines (id INTEGER PRIMARY KEY, orders INTEGER NOT NULL REFERENCES orders(id),
                             product TEXT, qty INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
         INSERT INTO lines SELECT i, 1 + (i - 1) / 2, hex(randomblob(20)), i % 7 FROM n;
         CREATE INDEX lines_by_order ON lines(orders);
         CREATE VIEW order_sizes AS SELECT orders, count(*) AS n FROM lines GROUP BY orders;
         CREATE TRIGGER count_lines AFTER INSERT ON lines
           BEGIN UPDATE orders SET lines = lines + 1 WHERE id = NEW.orders; END;
         ANALYZE;
         DROP TABLE IF EXISTS sqlite_stat4;",
    )
    .unwrap();
    if bad_rows {
        // Rows D1 refuses (SQLite does not enforce foreign keys by default): a small table's,
        // and the large one's last.
        conn.execute_batch(
            "PRAGMA foreign_keys = off;
             INSERT INTO customers VALUES (51, 'nowhere', 9);
             INSERT INTO lines VALUES (6001, 99999, 'orphan', 1);",
        )
        .unwrap();
    }
}

/// The requests of the log whose statements include one starting with each of `words`.
fn with_all<'a>(requests: &'a [serde_json::Value], words: &[&str]) -> Vec<&'a serde_json::Value> {
    requests
        .iter()
        .filter(|r| {
            words.iter().all(|w| {
                r["statements"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x.as_str().unwrap_or("").starts_with(w)))
            })
        })
        .collect()
}

#[test]
fn the_tables_are_created_with_the_small_tables_rows_and_the_objects_after_the_data_with_the_last_rows(
) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels(&source, false);
    let id = "levels".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some("latency_ms=20"));
    let plan = dir.path().join("plan.json");
    Run::new(&d1, &id, &source)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &plan)
        .ok();
    let report = dir.path().join("report.json");
    Run::new(&d1, &id, &source)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_VALIDATE", "false")
        .env("MIGRATION_REPORT", &report)
        .ok();
    // Exact: the trigger did not fire on the copied lines, the counter is the source's.
    let diff = sqldiff(&source, d1.file(&id));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let requests = d1.settled_requests();
    let report = read_json(&report);
    let data: u64 = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["requests"].as_u64().unwrap())
        .sum();
    // The catalog and the bookmark, then data requests only: no round trip for DDL alone, as
    // the dry run predicts.
    assert_eq!(
        report["http_requests"].as_u64().unwrap(),
        2 + data,
        "{requests:?}"
    );
    assert_eq!(
        read_json(&plan)["dry_run"]["http_requests"],
        report["http_requests"]
    );
    let created = with_all(&requests, &["CREATE TABLE"]);
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(
        !with_all(std::slice::from_ref(created[0]), &["INSERT INTO"]).is_empty(),
        "the tables were created without the small tables' rows: {created:?}"
    );
    let after = with_all(&requests, &["CREATE TRIGGER"]);
    assert_eq!(after.len(), 1, "{after:?}");
    let last = requests
        .iter()
        .rev()
        .find(|r| r["method"] == "POST")
        .unwrap();
    assert_eq!(
        after[0], last,
        "the objects after the data did not come last"
    );
    for words in [
        ["INSERT INTO", "CREATE INDEX"],
        ["INSERT INTO", "CREATE VIEW"],
    ] {
        assert!(
            !with_all(std::slice::from_ref(last), &words).is_empty(),
            "the last request lacks {words:?}: {last}"
        );
    }
}

/// The `levels` source with a trigger on each large table, writing to another table: the
/// copy differs from it if either fires on copied rows.
fn levels_with_triggers(path: &std::path::Path) {
    levels_then(
        path,
        "CREATE TRIGGER orders_seen AFTER INSERT ON orders
           BEGIN UPDATE customers SET name = name || '+' WHERE id = NEW.customer; END;",
    );
}

/// The `levels` source (without its bad rows), then `sql` run on it.
fn levels_then(path: &std::path::Path, sql: &str) {
    levels(path, false);
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

/// The requests the dry run of the `levels` source predicts (on a D1 of its own).
fn levels_requests(dir: &std::path::Path, source: &std::path::Path) -> u64 {
    let id = "plan".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), None);
    let plan = dir.join("plan.json");
    Run::new(&d1, &id, source)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &plan)
        .ok();
    read_json(&plan)["dry_run"]["http_requests"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_objects_after_the_data_leave_with_the_last_rows_before_the_other_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels_with_triggers(&source);
    let predicted = levels_requests(dir.path(), &source);
    let id = "guarded".to_string();
    let latency = 300;
    let d1 = LocalD1::start(
        std::slice::from_ref(&id),
        Some(&format!("latency_ms={latency}")),
    );
    let report = dir.path().join("report.json");
    // Exact: the triggers (on the lines, counting them into their order; on the orders, marking
    // their customer) did not fire on the copied rows; the AUTOINCREMENT counter, the index and
    // the view are the source's.
    let requests = copied_in_requests_of_100_kb(&d1, &id, &source, |run| {
        run.env("MIGRATION_REPORT", &report)
    });
    let tails = with_all(&requests, &["INSERT INTO", "CREATE TRIGGER"]);
    assert_eq!(tails.len(), 1, "{requests:?}");
    let tail = tails[0];
    // The log's time is when D1 got a request, `latency` after the front end received it: the
    // tail left before D1 had even got some of the rows sent before it.
    let received = tail["t"].as_u64().unwrap() - latency;
    let overtaken: Vec<_> = with_all(&requests, &["INSERT INTO"])
        .into_iter()
        .filter(|r| *r != tail && r["t"].as_u64().unwrap() > received)
        .collect();
    assert!(
        !overtaken.is_empty(),
        "the objects after the data waited for every other request's answer: {requests:?}"
    );
    // No more requests than the dry run predicts (the guard rides in the last one).
    assert_eq!(
        read_json(&report)["http_requests"].as_u64().unwrap(),
        predicted
    );
}

#[test]
fn objects_after_the_data_that_reach_d1_before_an_earlier_request_go_again_once_it_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels_with_triggers(&source);
    // The last request is the one with the objects after the data: the one before it is held
    // at the front end, so that the objects reach D1 first.
    let predicted = levels_requests(dir.path(), &source);
    let id = "overtaken".to_string();
    let d1 = LocalD1::start(
        std::slice::from_ref(&id),
        Some(&format!(
            "latency_ms=50,hold_request={},hold_ms=2000",
            predicted - 1
        )),
    );
    let report = dir.path().join("report.json");
    // Exact: D1 refused the objects (and the last rows with them) while the held rows were not
    // in; had it created the triggers, one would have fired on them.
    let requests = copied_in_requests_of_100_kb(&d1, &id, &source, |run| {
        run.env("MIGRATION_REPORT", &report)
    });
    let held: Vec<_> = requests
        .iter()
        .filter(|r| r["held_ms"].is_u64())
        .cloned()
        .collect();
    assert_eq!(held.len(), 1, "{requests:?}");
    assert!(!with_all(&held, &["INSERT INTO"]).is_empty(), "{held:?}");
    let tails = with_all(&requests, &["INSERT INTO", "CREATE TRIGGER"]);
    assert_eq!(tails.len(), 2, "{requests:?}");
    assert!(
        tails[0]["t"].as_u64() < held[0]["t"].as_u64(),
        "{requests:?}"
    );
    assert!(
        tails[1]["t"].as_u64() > held[0]["t"].as_u64(),
        "{requests:?}"
    );
    // The one request more is the refused one.
    let report = read_json(&report);
    assert_eq!(report["http_requests"].as_u64().unwrap(), predicted + 1);
    let data: u64 = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(report["http_requests"].as_u64().unwrap(), 2 + data);
}

#[test]
fn rows_d1_refuses_beside_the_tables_ddl_or_the_objects_after_the_data_are_rejected_alone() {
    let id = "refused".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), None);
    copies_levels_but_its_two_bad_rows(&d1, &id);
}

#[test]
fn a_tables_create_refused_for_a_request_beside_it_that_broke_a_foreign_key_goes_again_alone() {
    let id = "beside".to_string();
    // The small tables' request (refused for its bad row) reaches D1 300 ms late: the orders'
    // first request, sent right behind it, is still held (1.5 s) when the tables' CREATE
    // statements go alone, and D1 fails the CREATE requests beside it with its reset message,
    // as when a request beside them breaks a foreign key (CI once saw it: "creating
    // \"regions\" on D1: … Durable Object was reset …" stopped the run).
    let d1 = LocalD1::start_with(
        std::slice::from_ref(&id),
        &[
            ("LOCAL_D1_DELAY_INTO", "regions=300,orders=1500"),
            ("LOCAL_D1_BESIDE_BROKEN_KEY", "IF NOT EXISTS regions"),
        ],
    );
    copies_levels_but_its_two_bad_rows(&d1, &id);
    let requests = d1.settled_requests();
    assert!(
        requests.iter().any(|r| r["fault"] == "beside_broken_key"),
        "no CREATE went beside another request: {requests:?}"
    );
}

#[test]
fn a_data_request_refused_beside_a_request_that_broke_a_foreign_key_goes_again_whole_and_alone() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels_then(
        &source,
        "UPDATE orders SET note = 'beside a broken key' WHERE id = 1500",
    );
    // The orders' requests as D1 got them, and how many different ones.
    let copy = |id: &str, vars: &[(&str, &str)]| {
        let d1 = LocalD1::start_with(&[id.to_string()], vars);
        let report = dir.path().join(format!("{id}.json"));
        let requests = copied_in_requests_of_100_kb(&d1, id, &source, |run| {
            run.env("MIGRATION_REPORT", &report)
        });
        let bodies: std::collections::HashSet<_> = into(&requests, "\"orders\"")
            .iter()
            .map(|r| r["body"].clone())
            .collect();
        (requests, bodies.len(), read_json(&report))
    };
    let (_, plain, _) = copy("plain", &[]);
    // The orders' request holding the marked row, sent among others (answers 100 ms away), is
    // refused as D1 refuses the requests beside one that breaks a foreign key.
    let (requests, beside, report) = copy(
        "beside",
        &[
            ("LOCAL_D1_FAULTS", "latency_ms=100"),
            ("LOCAL_D1_BESIDE_BROKEN_KEY", "beside a broken key"),
        ],
    );
    let failed: Vec<_> = requests
        .iter()
        .filter(|r| r["fault"] == "beside_broken_key")
        .collect();
    assert!(!failed.is_empty(), "{requests:?}");
    // It went again whole (the same body; sent early, it was refused once more as an
    // ordinary request), and at last alone, and was not split: its halves would be requests
    // of their own.
    let sends: Vec<_> = requests
        .iter()
        .filter(|r| r["body"] == failed[0]["body"])
        .collect();
    assert!(
        sends[..sends.len() - 1]
            .iter()
            .all(|r| r["fault"] == "beside_broken_key")
            && sends[sends.len() - 1]["fault"].is_null(),
        "{requests:?}"
    );
    assert_eq!(beside, plain, "{requests:?}");
    assert_sent_again_counted(&report, &requests);
}

/// Copies the `levels` source with its two rows D1 refuses (skipped to the rejects file) into
/// `id`, and checks that everything else arrived.
fn copies_levels_but_its_two_bad_rows(d1: &LocalD1, id: &str) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels(&source, true);
    let rejects = dir.path().join("rejects.jsonl");
    Run::new(d1, id, &source)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_VALIDATE", "false")
        .env("MIGRATION_ON_BAD_ROW", "skip")
        .env("MIGRATION_REJECT_FILE", &rejects)
        .ok();
    assert_eq!(
        crate::harness::rejected_keys(&rejects),
        [("customers", "51"), ("lines", "6001")]
            .into_iter()
            .map(|(t, k)| (t.to_string(), k.to_string()))
            .collect()
    );
    // Everything else arrived, the objects after the data too.
    let diff = sqldiff(&source, d1.file(id));
    assert_eq!(diff.len(), 2, "{}", diff.join("\n"));
    assert!(
        diff.iter()
            .all(|l| l.starts_with("DELETE FROM customers WHERE id=51")
                || l.starts_with("DELETE FROM lines WHERE id=6001")),
        "{}",
        diff.join("\n")
    );
}

#[test]
fn a_large_child_starts_before_its_large_parent_is_finished_and_waits_only_for_the_rows_it_refers_to(
) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels(&source, false);
    let id = "gated".to_string();
    // Each of the parent's requests is answered 150 ms late: the child's reader, however slow
    // the machine, has its first request packed and waiting while the parent's are still being
    // sent (with answers in a millisecond, a loaded machine let the parent's reader queue all of
    // its requests first, and CI saw the child start after the parent's last request).
    let d1 = LocalD1::start_with(
        std::slice::from_ref(&id),
        &[("LOCAL_D1_DELAY_INTO", "orders=150")],
    );
    // One request at a time: the log's order is the order requests were sent in.
    Run::new(&d1, &id, &source)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_CONCURRENCY", "1")
        .env("MIGRATION_WRITES_IN_FLIGHT", "1")
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let diff = sqldiff(&source, d1.file(&id));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let into: Vec<String> = d1
        .settled_requests()
        .iter()
        .filter_map(|r| r["into"].as_array()?.first()?.as_str().map(str::to_string))
        .collect();
    let orders = into.iter().filter(|t| *t == "\"orders\"").count();
    let last_order = into.iter().rposition(|t| t == "\"orders\"").unwrap();
    let first_line = into.iter().position(|t| t == "\"lines\"").unwrap();
    // Waiting for the whole of `orders`, `lines` would start after its last request.
    assert!(orders >= 5, "{into:?}");
    assert!(
        first_line < last_order,
        "lines waited for the whole of orders: {into:?}"
    );
}

/// The requests of the log that insert first into `table` (quoted as sent).
fn into<'a>(requests: &'a [serde_json::Value], table: &str) -> Vec<&'a serde_json::Value> {
    requests
        .iter()
        .filter(|r| r["into"][0].as_str() == Some(table))
        .collect()
}

/// How many times the log holds the request `r` (by its body's hash): a request sent again is
/// logged twice.
fn times_sent(requests: &[serde_json::Value], r: &serde_json::Value) -> usize {
    requests.iter().filter(|x| x["body"] == r["body"]).count()
}

/// Copies `source` into `id` on `d1` in requests of 100 KB, without validation (and whatever
/// `more` adds to the run), checks the copy exact and returns D1's request log.
fn copied_in_requests_of_100_kb(
    d1: &LocalD1,
    id: &str,
    source: &std::path::Path,
    more: impl FnOnce(Run) -> Run,
) -> Vec<serde_json::Value> {
    more(
        Run::new(d1, id, source)
            .env("MIGRATION_REQUEST_BYTES", "100000")
            .env("MIGRATION_VALIDATE", "false"),
    )
    .ok();
    let diff = sqldiff(source, d1.file(id));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    d1.settled_requests()
}

/// Where the log's first request inserting first into `table` (quoted) is.
fn first_into(requests: &[serde_json::Value], table: &str) -> usize {
    requests
        .iter()
        .position(|r| r["into"][0] == table)
        .unwrap_or_else(|| panic!("no request into {table}: {requests:?}"))
}

#[test]
fn the_large_tables_first_request_goes_before_the_small_tables_request_that_creates_it_is_answered()
{
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels(&source, false);
    let id = "opening".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some("latency_ms=400"));
    let requests = copied_in_requests_of_100_kb(&d1, &id, &source, |run| run);
    let small = into(&requests, "\"regions\"");
    let orders = into(&requests, "\"orders\"");
    assert_eq!(small.len(), 1, "{requests:?}");
    // Both were held 400 ms before D1 ran them (the log's time): the orders' first request
    // left less than 400 ms after the small tables' one, before its answer could be back.
    let gap = orders[0]["t"].as_u64().unwrap() as i64 - small[0]["t"].as_u64().unwrap() as i64;
    assert!(
        (0..400).contains(&gap),
        "the orders' first request reached D1 {gap} ms after the small tables' one"
    );
    // No write went twice.
    assert!(
        requests
            .iter()
            .filter(|r| r["method"] == "POST")
            .all(|r| times_sent(&requests, r) == 1),
        "{requests:?}"
    );
}

#[test]
fn a_wire_of_400_ms_measured_by_the_catalogs_read_starts_the_window_of_writes_at_five() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels(&source, false);
    let id = "wide-start".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some("latency_ms=400"));
    let requests = copied_in_requests_of_100_kb(&d1, &id, &source, |run| run);
    let writes: Vec<i64> = requests
        .iter()
        .filter(|r| r["method"] == "POST" && !r["into"].as_array().unwrap().is_empty())
        .map(|r| r["t"].as_u64().unwrap() as i64)
        .collect();
    assert!(writes.len() > 5, "{requests:?}");
    // Each was held 400 ms before D1 ran it (the log's time): the fifth write left before the
    // first one's answer could be back (a window starting at two holds the third until then).
    let gap = writes[4] - writes[0];
    assert!(
        gap < 400,
        "the fifth write reached D1 {gap} ms after the first: {writes:?}"
    );
}

#[test]
fn a_request_that_reaches_d1_before_the_request_creating_its_table_goes_again_once_that_is_committed(
) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels(&source, false);
    let id = "created-late".to_string();
    // The small tables' request (which creates every table) reaches D1 600 ms late.
    let d1 = LocalD1::start_with(
        std::slice::from_ref(&id),
        &[("LOCAL_D1_DELAY_INTO", "regions=600")],
    );
    let report = dir.path().join("report.json");
    let requests = copied_in_requests_of_100_kb(&d1, &id, &source, |run| {
        run.env("MIGRATION_REPORT", &report)
    });
    let small = first_into(&requests, "\"regions\"");
    let first = first_into(&requests, "\"orders\"");
    // It arrived first (no such table), and went again, once.
    assert!(first < small, "{requests:?}");
    assert_eq!(times_sent(&requests, &requests[first]), 2, "{requests:?}");
    // The report counts what went again (the summary says it).
    assert_sent_again_counted(&read_json(&report), &requests);
}

/// The report's `sent_again` (over its phases) is the number of writes the log holds more than
/// once, beyond their first (in a run without retries).
fn assert_sent_again_counted(report: &serde_json::Value, requests: &[serde_json::Value]) {
    let counted: u64 = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sent_again"].as_u64().unwrap_or(0))
        .sum();
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| r["method"] == "POST" && !r["into"].as_array().unwrap().is_empty())
        .collect();
    let distinct: std::collections::HashSet<_> = writes.iter().map(|r| &r["body"]).collect();
    assert!(counted > 0, "{report}");
    assert_eq!(
        counted as usize,
        writes.len() - distinct.len(),
        "{report} {requests:?}"
    );
}

/// Parents in one request of 84 KB, and children that refer only to the first ten of them.
/// A table's CREATE statement of 30 KB keeps the parents out of the small tables' request
/// (their request does not fit beside the tables' DDL); a megabyte of free pages keeps the
/// file too large for the compact load.
fn parents_and_children(path: &std::path::Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT CHECK (body <> '{}'));
         CREATE TABLE parent (id INTEGER PRIMARY KEY, pad TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO parent SELECT i, printf('%.200c', 'p') FROM n;
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent(id),
                             note TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO child SELECT i, 1 + i % 10, printf('%.40c', 'c') FROM n;
         CREATE TABLE filler AS SELECT randomblob(1000000) AS b;
         DROP TABLE filler;",
        "x".repeat(30_000)
    ))
    .unwrap();
}

#[test]
fn a_childs_request_that_reaches_d1_before_its_parents_rows_goes_again_once_they_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("family.sqlite");
    parents_and_children(&source);
    let id = "family".to_string();
    // The parents' requests reach D1 500 ms after they left: the children's, sent once the
    // parents' rows they refer to are on their way, reach it first.
    let d1 = LocalD1::start_with(
        std::slice::from_ref(&id),
        &[("LOCAL_D1_DELAY_INTO", "parent=500")],
    );
    let requests = copied_in_requests_of_100_kb(&d1, &id, &source, |run| run);
    let parent = first_into(&requests, "\"parent\"");
    let child = first_into(&requests, "\"child\"");
    // The children's first request arrived before the parents' first (a foreign key failed
    // at its commit), and went again, once, behind them.
    assert!(child < parent, "{requests:?}");
    assert_eq!(times_sent(&requests, &requests[child]), 2, "{requests:?}");
    let again = requests[parent..]
        .iter()
        .position(|r| r["body"] == requests[child]["body"]);
    assert!(again.is_some(), "{requests:?}");
}

#[test]
fn requests_sent_right_behind_what_they_need_copy_exactly_when_they_reach_d1_in_another_order() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    levels(&source, false);
    for seed in [1, 2] {
        let id = format!("jitter-{seed}");
        // Each request held 20 to 320 ms: requests sent together reach D1 in another order.
        let faults = format!("latency_ms=20,jitter_ms=300,seed={seed}");
        let d1 = LocalD1::start(std::slice::from_ref(&id), Some(&faults));
        copied_in_requests_of_100_kb(&d1, &id, &source, |run| run);
    }
}

#[test]
fn a_genuine_orphan_in_a_request_sent_early_is_rejected_after_two_resends() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("levels.sqlite");
    // An order of a customer that does not exist, in the orders' first request.
    levels_then(
        &source,
        "PRAGMA foreign_keys = off; INSERT INTO orders VALUES (0, 99999, 0, 'nobody');",
    );
    let id = "orphan".to_string();
    // The small tables' request (customers among them) reaches D1 600 ms late: the orders'
    // first request goes early, and is refused for want of its table.
    let d1 = LocalD1::start_with(
        std::slice::from_ref(&id),
        &[("LOCAL_D1_DELAY_INTO", "regions=600")],
    );
    let rejects = dir.path().join("rejects.jsonl");
    Run::new(&d1, &id, &source)
        .env("MIGRATION_REQUEST_BYTES", "100000")
        .env("MIGRATION_VALIDATE", "false")
        .env("MIGRATION_ON_BAD_ROW", "skip")
        .env("MIGRATION_REJECT_FILE", &rejects)
        .ok();
    assert_eq!(
        crate::harness::rejected_keys(&rejects),
        [("orders".to_string(), "0".to_string())]
            .into_iter()
            .collect()
    );
    let diff = sqldiff(&source, d1.file(&id));
    assert_eq!(diff.len(), 1, "{}", diff.join("\n"));
    assert!(
        diff[0].starts_with("DELETE FROM orders WHERE id=0"),
        "{diff:?}"
    );
    // Early, then once more as an ordinary request, which D1 refused for the orphan with its
    // reset message (which can be another request's), then once more alone, refused again: then
    // split down to it, as any request.
    let requests = d1.settled_requests();
    let first = into(&requests, "\"orders\"")[0];
    assert_eq!(times_sent(&requests, first), 3, "{requests:?}");
}

#[test]
fn a_rollback_reads_a_table_of_two_pages_in_segments_twice_its_concurrency_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Orders of two pages (40,000 rows of 84 bytes, pages of 20,000 rows), and small tables.
    let source = shop(dir.path());
    let id = "segments".to_string();
    let d1 = LocalD1::start(std::slice::from_ref(&id), Some("latency_ms=300"));
    Run::new(&d1, &id, &source)
        .env("MIGRATION_VALIDATE", "false")
        .ok();
    let before = d1.settled_requests().len();
    let back = dir.path().join("back.sqlite");
    Run::new(&d1, &id, &back)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_VALIDATE", "false")
        .env("MIGRATION_CONCURRENCY", "2")
        .env("MIGRATION_PARALLEL_TABLES", "1")
        .ok();
    let diff = sqldiff(&source, &back);
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let requests = &d1.settled_requests()[before..];
    // The catalog, the surveys, the small tables, and three segments of the orders of one page
    // each (two pages' worth, each a fiftieth short of a page), all asked for at once: before,
    // one chain of two pages (a table of two pages was not cut), beside the small tables.
    assert_eq!(requests.len(), 6, "{requests:?}");
    let reads = most_reads_in_flight(&d1, before);
    assert!(reads >= 4, "only {reads} reads in flight");
}

#[test]
fn a_full_validation_asks_for_a_tables_last_page_and_what_the_target_holds_after_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = shop(dir.path());
    let (d1, before, _) = validated(dir.path(), &source, "latency_ms=1");
    let requests = d1.settled_requests().len() - before;
    // The catalog and counts; the orders' two full pages, then the rows after them; the two
    // small tables' only pages, each with the rows after it; the empty table's rows. Before,
    // each small table's rows after its page cost a request more (9).
    assert_eq!(requests, 7, "{:?}", &d1.settled_requests()[before..]);
}
