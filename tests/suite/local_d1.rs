//! The local D1 server: D1's envelope, errors and limits, and its fault switch.

use serde_json::json;

use crate::harness::{LocalD1, TOKEN};

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
