//! The local D1 server: D1's envelope, errors and limits, and its fault switch.

use serde_json::json;

use crate::harness::{LocalD1, ACCOUNT, TOKEN};

#[test]
fn three_statements_give_three_results_in_cloudflares_envelope() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    let (status, body) = d1.post(
        &db,
        json!({"sql": "CREATE TABLE t(x); INSERT INTO t VALUES (1); SELECT * FROM t"}),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["errors"], json!([]));
    let results = body["result"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2]["results"]["columns"], json!(["x"]));
    assert_eq!(results[2]["results"]["rows"], json!([[1]]));
    assert_eq!(results[1]["meta"]["changes"], 1);
}

#[test]
fn d1_limits_and_refusals_come_back_as_code_7500() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(&db, &["CREATE TABLE t(x)"]);
    let marks = vec!["?"; 101].join(",");
    let params: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let cases = [
        (
            json!({"sql": format!("INSERT INTO t VALUES ({marks})"), "params": params}),
            "too many SQL variables",
        ),
        (
            json!({"sql": format!("SELECT '{}'", "x".repeat(120_000))}),
            "SQLITE_TOOBIG",
        ),
        (json!({"sql": "BEGIN TRANSACTION"}), "transaction"),
        (json!({"sql": "SELECT * FROM missing"}), "no such table"),
    ];
    for (body, expected) in cases {
        let (status, answer) = d1.post(&db, body, Some(TOKEN));
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["success"], false);
        assert_eq!(answer["errors"][0]["code"], 7500);
        let message = answer["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn a_failing_statement_rolls_back_the_whole_request() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(&db, &["CREATE TABLE t(x)"]);
    let (status, _) = d1.post(
        &db,
        json!({"batch": [{"sql": "INSERT INTO t VALUES (1)"}, {"sql": "INSERT INTO nope VALUES (1)"}]}),
        Some(TOKEN),
    );
    assert_eq!(status, 400);
    assert_eq!(d1.sql(&db, &["SELECT count(*) FROM t"])[0], json!([[0]]));
}

/// What the guard of the objects after the data (`load::guard_sql`) relies on: it fails at run
/// time exactly when a row it asks for is missing (SQLite cannot fold it when it prepares it),
/// and D1 then rolls back the whole request: the rows before it and the DDL after it.
#[test]
fn the_tails_guard_fails_the_whole_request_exactly_when_a_row_it_asks_for_is_missing() {
    use d1_migrator::load::guard_sql;
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(
        &db,
        &[
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
            "CREATE TABLE w(a TEXT, b INT, PRIMARY KEY (a, b)) WITHOUT ROWID",
            "CREATE TABLE seen(x)",
            "INSERT INTO t VALUES (1, 'a'), (5, 'b')",
            "INSERT INTO w VALUES ('o''neil', 2)",
        ],
    );
    let request = |exists: &[&str], n: i64| {
        let exists: Vec<String> = exists.iter().map(|e| e.to_string()).collect();
        json!({"batch": [
            {"sql": format!("INSERT INTO t VALUES ({n}, 'x') ON CONFLICT DO NOTHING")},
            {"sql": guard_sql(&exists)},
            {"sql": format!("CREATE INDEX i{n} ON t(v)")},
            {"sql": format!("CREATE TRIGGER tr{n} AFTER INSERT ON t BEGIN INSERT INTO seen VALUES (NEW.id); END")},
        ]})
    };
    let five = "EXISTS(SELECT 1 FROM \"t\" WHERE \"id\" = 5)";
    let quoted = "EXISTS(SELECT 1 FROM \"w\" WHERE \"a\" = 'o''neil' AND \"b\" = 2)";
    for missing in [
        "EXISTS(SELECT 1 FROM \"t\" WHERE \"id\" = 6)",
        "EXISTS(SELECT 1 FROM \"w\" WHERE \"a\" = 'oneil' AND \"b\" = 2)",
        "EXISTS(SELECT 1 FROM \"t\" WHERE rowid = 7)",
    ] {
        let (status, answer) = d1.post(&db, request(&[five, missing, quoted], 10), Some(TOKEN));
        assert_eq!(status, 400, "{answer}");
        let message = answer["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("malformed JSON"), "{message}");
    }
    // Nothing of those requests: not their row, index or trigger.
    let state = [
        "SELECT group_concat(id) FROM t",
        "SELECT count(*) FROM sqlite_schema WHERE type IN ('index', 'trigger')",
    ];
    assert_eq!(d1.sql(&db, &state), [json!([["1,5"]]), json!([[0]])]);
    // Every row there: the request goes in whole, its trigger after its row.
    let (status, answer) = d1.post(&db, request(&[five, quoted], 11), Some(TOKEN));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(d1.sql(&db, &state), [json!([["1,5,11"]]), json!([[2]])]);
    assert_eq!(d1.sql(&db, &["SELECT count(*) FROM seen"])[0], json!([[0]]));
}

#[test]
fn tokens_and_database_ids_are_checked() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    let (status, body) = d1.post(&db, json!({"sql": "SELECT 1"}), Some("wrong"));
    assert_eq!(status, 403);
    assert_eq!(body["errors"][0]["code"], 10000);
    let (status, _) = d1.post(&db, json!({"sql": "SELECT 1"}), None);
    assert_eq!(status, 401);
    let (status, body) = d1.post("no-such-db", json!({"sql": "SELECT 1"}), Some(TOKEN));
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], 7404);
}

#[test]
fn faults_happen_at_their_configured_rates_and_never_half_apply() {
    let ids = vec!["faulty".to_string()];
    let d1 = LocalD1::start(&ids, Some("429=0.2,500=0.1,drop=0.1,lost=0.1,seed=11"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!(
        "{}/accounts/{}/d1/database/faulty/raw",
        d1.api_url,
        crate::harness::ACCOUNT
    );
    let send = |sql: &str| {
        agent
            .post(&url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .send(json!({"sql": sql}).to_string())
            .map(|r| {
                (
                    r.status().as_u16(),
                    r.headers().get("retry-after").is_some(),
                )
            })
    };
    while !matches!(
        send("CREATE TABLE IF NOT EXISTS t(n INTEGER PRIMARY KEY)"),
        Ok((200, _))
    ) {}
    let n = 400;
    let (mut ok, mut r429, mut r500, mut dropped) = (0, 0, 0, 0);
    for i in 0..n {
        match send(&format!("INSERT INTO t VALUES ({i})")) {
            Ok((200, _)) => ok += 1,
            Ok((429, has_retry_after)) => {
                assert!(has_retry_after);
                r429 += 1
            }
            Ok((500, _)) => r500 += 1,
            Ok((other, _)) => panic!("unexpected status {other}"),
            Err(_) => dropped += 1,
        }
    }
    let near = |count: i32, rate: f64| (count as f64 - rate * n as f64).abs() < 0.06 * n as f64;
    assert!(near(r429, 0.2), "429: {r429}");
    assert!(near(r500, 0.1), "500: {r500}");
    assert!(near(dropped, 0.2), "dropped or lost: {dropped}");
    assert!(near(ok, 0.5), "ok: {ok}");
    // Rows exist exactly for the requests that reached D1: answered ones and lost answers.
    let log = d1.requests();
    let applied = log
        .iter()
        .filter(|e| e["statements"][0] == "INSERT INTO")
        .filter(|e| e["fault"].is_null() || e["fault"] == "lost")
        .count();
    let count = loop {
        let (status, body) = d1.post(
            "faulty",
            json!({"sql": "SELECT count(*) FROM t"}),
            Some(TOKEN),
        );
        if status == 200 {
            break body["result"][0]["results"]["rows"][0][0].as_u64().unwrap() as usize;
        }
    };
    assert_eq!(count, applied);
    assert!(
        count > ok as usize,
        "lost answers were applied: {count} rows, {ok} answered"
    );
}

/// The `meta` every statement carries on Cloudflare (D1_FACTS §1), in every body form.
fn assert_full_meta(result: &serde_json::Value) {
    let meta = &result["meta"];
    for key in [
        "duration",
        "changes",
        "last_row_id",
        "size_after",
        "rows_read",
        "rows_written",
    ] {
        assert!(meta[key].is_number(), "meta.{key} missing: {result}");
    }
    assert!(meta["changed_db"].is_boolean(), "{result}");
    assert!(meta["served_by_primary"].is_boolean(), "{result}");
    assert!(meta["served_by_colo"].is_string(), "{result}");
    let region = meta["served_by_region"].as_str().unwrap_or_default();
    assert!(
        ["WNAM", "ENAM", "WEUR", "EEUR", "APAC", "OC"].contains(&region),
        "served_by_region {region}"
    );
    assert!(meta["timings"]["sql_duration_ms"].is_number(), "{result}");
}

#[test]
fn raw_columns_come_from_the_statement_not_the_first_row() {
    // Regression: columns were rebuilt from the first row's keys, so a zero-row result had none,
    // `SELECT 1 AS a, 2 AS a` had one, and integer-like names moved to the front.
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(&db, &["CREATE TABLE t(b, \"2\", a)"]);
    let statements = [
        ("SELECT * FROM t", json!(["b", "2", "a"]), json!([])),
        ("SELECT 1 AS a, 2 AS a", json!(["a", "a"]), json!([[1, 2]])),
        (
            "SELECT 'x' AS z, 'y' AS \"10\", 'w' AS \"1\"",
            json!(["z", "10", "1"]),
            json!([["x", "y", "w"]]),
        ),
    ];
    for (sql, columns, rows) in &statements {
        // One statement alone, the same inside a batch, and several in one `sql`.
        for body in [
            json!({"sql": sql}),
            json!({"batch": [{"sql": "SELECT 0"}, {"sql": sql}]}),
            json!({"sql": format!("SELECT 0; {sql}")}),
        ] {
            let (status, answer) = d1.post(&db, body.clone(), Some(TOKEN));
            assert_eq!(status, 200, "{answer}");
            let last = answer["result"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(last["results"]["columns"], *columns, "{body}");
            assert_eq!(last["results"]["rows"], *rows, "{body}");
        }
    }
}

#[test]
fn every_statement_has_the_full_meta_in_every_body_form() {
    // Regression: a single statement to /raw answered a meta with only served_by_*.
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(&db, &["CREATE TABLE t(id INTEGER PRIMARY KEY, x)"]);
    for endpoint in ["raw", "query"] {
        for body in [
            json!({"sql": "INSERT INTO t(x) VALUES (1)"}),
            json!({"batch": [{"sql": "INSERT INTO t(x) VALUES (2)"}, {"sql": "SELECT * FROM t"}]}),
        ] {
            let (status, answer) = d1.call(
                "POST",
                &format!("/accounts/{ACCOUNT}/d1/database/{db}/{endpoint}"),
                Some(body),
            );
            assert_eq!(status, 200, "{answer}");
            for result in answer["result"].as_array().unwrap() {
                assert_full_meta(result);
            }
            let first = &answer["result"][0]["meta"];
            assert_eq!(first["changes"], 1, "{answer}");
            assert_eq!(first["rows_written"], 1, "{answer}");
            assert_eq!(first["changed_db"], true, "{answer}");
            assert!(first["last_row_id"].as_u64().unwrap() >= 1, "{answer}");
        }
    }
    let (_, answer) = d1.call(
        "POST",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}/query"),
        Some(json!({"sql": "SELECT x FROM t ORDER BY id"})),
    );
    assert_eq!(
        answer["result"][0]["results"],
        json!([{"x": 1}, {"x": 2}, {"x": 1}, {"x": 2}])
    );
    assert_eq!(answer["result"][0]["meta"]["changed_db"], false);
}

#[test]
fn unknown_routes_answer_in_cloudflares_envelope() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    let (status, answer) = d1.call(
        "POST",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}/nope"),
        Some(json!({})),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["success"], false);
    assert_eq!(answer["errors"][0]["code"], 7000);
    let (status, answer) = d1.call(
        "GET",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}/raw"),
        None,
    );
    assert_eq!(status, 405, "{answer}");
}

fn list(d1: &LocalD1, query: &str) -> serde_json::Value {
    let (status, answer) = d1.call(
        "GET",
        &format!("/accounts/{ACCOUNT}/d1/database{query}"),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    answer
}

#[test]
fn databases_are_listed_by_page_and_found_by_name() {
    let d1 = LocalD1::shared();
    let all = list(d1, "");
    let total = all["result_info"]["total_count"].as_u64().unwrap();
    assert!(total >= 64, "{}", all["result_info"]);
    let page = list(d1, "?per_page=10&page=2");
    assert_eq!(
        page["result_info"],
        json!({"page": 2, "per_page": 10, "count": 10, "total_count": total})
    );
    assert_eq!(page["result"][0], all["result"][10]);
    let last = list(d1, &format!("?per_page=10&page={}", total.div_ceil(10) + 1));
    assert_eq!(last["result"], json!([]));
    let found = list(d1, "?name=db17");
    assert_eq!(found["result"].as_array().unwrap().len(), 1, "{found}");
    let item = &found["result"][0];
    assert_eq!(item["uuid"], "db17");
    assert_eq!(item["name"], "db17");
    assert_eq!(item["version"], "production");
    assert!(
        item["created_at"].as_str().unwrap().ends_with('Z'),
        "{item}"
    );
}

#[test]
fn get_reports_tables_and_size_by_id_or_name() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(
        &db,
        &[
            "CREATE TABLE a(x)",
            "CREATE TABLE b(y)",
            "INSERT INTO a VALUES (zeroblob(100000))",
        ],
    );
    let (status, answer) = d1.call(
        "GET",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}"),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let info = &answer["result"];
    assert_eq!(info["uuid"], db.as_str());
    assert_eq!(
        info["num_tables"], 2,
        "D1's own _cf_ tables are not counted: {info}"
    );
    let size = info["file_size"].as_u64().unwrap();
    let on_disk = std::fs::metadata(d1.file(&db)).unwrap().len();
    assert!(
        size >= 100_000 && size <= on_disk.max(size),
        "file_size {size}, file {on_disk}"
    );
    assert_eq!(info["version"], "production");
    let (_, fields) = d1.call(
        "GET",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}?fields=uuid,name"),
        None,
    );
    assert_eq!(fields["result"], json!({"uuid": db, "name": db}));
    let (status, missing) = d1.call(
        "GET",
        &format!("/accounts/{ACCOUNT}/d1/database/nope"),
        None,
    );
    assert_eq!(status, 404);
    assert_eq!(missing["errors"][0]["code"], 7404);
}

#[test]
fn created_databases_get_a_new_uuid_a_unique_name_and_persist_across_restarts() {
    let d1 = LocalD1::start(&["configured".to_string()], None);
    let create = |d1: &LocalD1, name: &str| {
        d1.call(
            "POST",
            &format!("/accounts/{ACCOUNT}/d1/database"),
            Some(json!({"name": name})),
        )
    };
    let (status, made) = create(&d1, "made-at-run-time");
    assert_eq!(status, 200, "{made}");
    let id = made["result"]["uuid"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(made["result"]["name"], "made-at-run-time");
    let (status, taken) = create(&d1, "made-at-run-time");
    assert_eq!(status, 400, "{taken}");
    assert_eq!(taken["errors"][0]["code"], 7502);
    let (status, taken) = create(&d1, "configured");
    assert_eq!(taken["errors"][0]["code"], 7502, "{status} {taken}");
    let (status, other) = create(&d1, "another");
    assert_eq!(status, 200, "{other}");
    assert_ne!(other["result"]["uuid"].as_str().unwrap(), id);

    let path = format!("/accounts/{ACCOUNT}/d1/database/{id}/query");
    let (status, _) = d1.call(
        "POST",
        &path,
        Some(json!({"sql": "CREATE TABLE kept(x); INSERT INTO kept VALUES (42)"})),
    );
    assert_eq!(status, 200);
    let registry = read_registry(&d1);
    assert_eq!(registry[&id]["name"], "made-at-run-time");
    assert_eq!(registry["configured"]["name"], "configured");
    let file = std::path::PathBuf::from(registry[&id]["file"].as_str().unwrap());
    assert!(file.is_file(), "{}", file.display());

    // Deleting forgets the database and its file.
    let other_id = other["result"]["uuid"].as_str().unwrap().to_string();
    let (status, gone) = d1.call(
        "DELETE",
        &format!("/accounts/{ACCOUNT}/d1/database/{other_id}"),
        None,
    );
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["success"], true);
    let (status, _) = d1.call(
        "GET",
        &format!("/accounts/{ACCOUNT}/d1/database/{other_id}"),
        None,
    );
    assert_eq!(status, 404);
    assert!(read_registry(&d1).get(&other_id).is_none());

    let d1 = d1.restart();
    let (status, rows) = d1.call("POST", &path, Some(json!({"sql": "SELECT x FROM kept"})));
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows["result"][0]["results"], json!([{"x": 42}]));
    let found = list(&d1, "?name=made-at-run-time");
    assert_eq!(found["result"][0]["uuid"], id.as_str());
    assert_eq!(list(&d1, "")["result_info"]["total_count"], 2);
    let (status, taken) = create(&d1, "made-at-run-time");
    assert_eq!(
        (status, taken["errors"][0]["code"].clone()),
        (400, json!(7502))
    );

    // The spare bindings (LOCAL_D1_SPARE, 16 by default) run out as D1's "max databases".
    let refused = (0..40)
        .map(|i| create(&d1, &format!("spare-{i}")))
        .find(|(status, _)| *status != 200)
        .expect("the spare bindings run out");
    assert_eq!(refused.1["errors"][0]["code"], 7406, "{}", refused.1);
}

fn read_registry(d1: &LocalD1) -> serde_json::Value {
    let text = std::fs::read_to_string(d1.dir.path().join("state/databases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bookmark(d1: &LocalD1, db: &str, query: &str) -> String {
    let (status, answer) = d1.call(
        "GET",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}/time_travel/bookmark{query}"),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    answer["result"]["bookmark"].as_str().unwrap().to_string()
}

#[test]
fn the_bookmark_changes_exactly_when_the_database_changes() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    let start = bookmark(d1, &db, "");
    d1.sql(&db, &["SELECT 1"]);
    assert_eq!(bookmark(d1, &db, ""), start, "a read changes nothing");
    let before_write = unix_seconds();
    std::thread::sleep(std::time::Duration::from_millis(20));
    d1.sql(&db, &["CREATE TABLE t(x)"]);
    let after_create = bookmark(d1, &db, "");
    assert_ne!(after_create, start);
    d1.sql(&db, &["INSERT INTO t VALUES (1)"]);
    let after_insert = bookmark(d1, &db, "");
    assert_ne!(after_insert, after_create);
    assert!(
        after_insert > after_create && after_create > start,
        "ordered"
    );
    // With a timestamp: the bookmark in force then.
    assert_eq!(
        bookmark(d1, &db, &format!("?timestamp={before_write}")),
        start
    );
    assert_eq!(
        bookmark(d1, &db, "?timestamp=2999-01-01T00:00:00Z"),
        after_insert
    );
    // Restoring is not emulated; it fails in D1's envelope.
    let (status, answer) = d1.call(
        "POST",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}/time_travel/restore?bookmark={start}"),
        Some(json!({})),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["success"], false);
    assert!(
        answer["errors"][0]["code"].as_u64().unwrap() >= 1000,
        "{answer}"
    );
}

/// Now as Unix seconds, a form the bookmark endpoint's `timestamp` reads.
fn unix_seconds() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    now.as_secs().to_string()
}

/// Regression: a client gone mid-request (a run killed while sending) crashed the logging front
/// end ("Error: aborted", ECONNRESET, unhandled), and every later run met "Connection refused".
#[test]
fn a_client_gone_mid_request_leaves_the_server_serving() {
    use std::io::Write;
    let ids = vec!["gone".to_string()];
    let d1 = LocalD1::start(&ids, None);
    let address = d1
        .api_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "POST /client/v4/accounts/a/d1/database/gone/raw HTTP/1.1\r\nHost: {address}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"sql\": \"SEL"
        )
        .unwrap();
        stream.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(stream);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(d1.sql("gone", &["SELECT 1"])[0], json!([[1]]));
}

#[test]
fn the_import_flow_answers_errors_as_d1_does_and_a_failed_import_changes_nothing() {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    d1.sql(&db, &["CREATE TABLE t(x)", "INSERT INTO t VALUES (1)"]);
    let import = |body: serde_json::Value| {
        let (status, answer) = d1.call(
            "POST",
            &format!("/accounts/{ACCOUNT}/d1/database/{db}/import"),
            Some(body),
        );
        assert_eq!(status, 200, "{answer}");
        answer["result"].clone()
    };
    let nothing = import(json!({"action": "poll", "current_bookmark": "x"}));
    assert_eq!(
        nothing,
        json!({"success": false, "error": "Not currently importing anything."})
    );
    let etag = "0123456789abcdef0123456789abcdef";
    let not_uploaded = import(json!({"action": "ingest", "etag": etag, "filename": "f"}));
    assert_eq!(not_uploaded["success"], false, "{not_uploaded}");
    let (status, bad) = d1.call(
        "POST",
        &format!("/accounts/{ACCOUNT}/d1/database/{db}/import"),
        Some(json!({"action": "init", "etag": "not-an-md5"})),
    );
    assert_eq!(status, 400, "{bad}");

    // A file whose second statement fails: the import errs and the first is undone.
    let sql = "INSERT INTO t VALUES (2);\nINSERT INTO missing VALUES (3);\n";
    let md5 = md5_hex(sql.as_bytes());
    let init = import(json!({"action": "init", "etag": md5}));
    let upload_url = init["upload_url"].as_str().unwrap().to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let forged = agent.put(&format!("{}x", upload_url)).send(sql).unwrap();
    assert_eq!(
        forged.status().as_u16(),
        403,
        "a URL without its nonce is refused"
    );
    let put = agent.put(&upload_url).send(sql).unwrap();
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(
        put.headers().get("etag").unwrap().to_str().unwrap(),
        format!("\"{md5}\"")
    );
    let mut answer = import(json!({"action": "ingest", "etag": md5, "filename": init["filename"]}));
    while answer["status"] == "active" {
        answer = import(json!({"action": "poll", "current_bookmark": answer["at_bookmark"]}));
    }
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no such table: missing"),
        "{answer}"
    );
    assert_eq!(d1.sql(&db, &["SELECT x FROM t"])[0], json!([[1]]));
}

/// MD5 in hex, as D1's import names a file by it.
fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn bodies_over_max_body_are_refused_with_413_and_an_html_page_before_d1_sees_them() {
    let ids = vec!["bodies".to_string()];
    let d1 = LocalD1::start(&ids, Some("max_body=2000"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!(
        "{}/accounts/{}/d1/database/bodies/raw",
        d1.api_url,
        crate::harness::ACCOUNT
    );
    let post = |sql: String| {
        let mut resp = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .send(json!({ "sql": sql }).to_string())
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap())
    };
    let long = format!("CREATE TABLE t (a TEXT DEFAULT '{}')", "x".repeat(3000));
    let (status, text) = post(long);
    assert_eq!(status, 413);
    assert!(text.contains("413 Request Entity Too Large"), "{text}");
    let (status, text) = post("CREATE TABLE t (a TEXT)".into());
    assert_eq!(status, 200, "{text}");
    // The refused request never reached D1: only the small one created its table.
    let tables = d1.sql(
        "bodies",
        &["SELECT name FROM sqlite_schema WHERE name = 't'"],
    );
    assert_eq!(tables[0], json!([["t"]]));
    let faults: Vec<serde_json::Value> = d1
        .settled_requests()
        .iter()
        .map(|r| r["fault"].clone())
        .collect();
    assert_eq!(faults[0], "413");
}
