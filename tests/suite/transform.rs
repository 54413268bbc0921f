//! Transforms (`MIGRATION_TRANSFORM`): renamed tables and columns, dropped and computed columns,
//! filters. D1 must hold exactly what the transform applied to a copy of the source (by SQLite,
//! here) yields, `sqldiff` judging; validation, full validation included, passes on it and still
//! sees a real difference; bad transforms are refused before any write, naming their place.

use std::path::{Path, PathBuf};

use crate::harness::{dataset, fresh, generated, read_json, sqldiff, stderr, LocalD1, Run};

fn transform_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("transform.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A copy of `source` with `sql` applied by SQLite: what D1 must hold.
fn expected(dir: &Path, source: &Path, sql: &str) -> PathBuf {
    let path = dir.join("expected.sqlite");
    std::fs::copy(source, &path).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(sql).unwrap();
    path
}

/// Migrates `source` through `transform` with full validation; asserts D1 equals `expected`.
fn migrate_transformed(
    d1: &LocalD1,
    db: &str,
    dir: &Path,
    source: &Path,
    transform: &str,
    expected_sql: &str,
) -> serde_json::Value {
    let file = transform_file(dir, transform);
    let report = dir.join("report.json");
    Run::new(d1, db, source)
        .env("MIGRATION_TRANSFORM", &file)
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let want = expected(dir, source, expected_sql);
    let diff = sqldiff(&want, d1.file(db));
    assert!(
        diff.is_empty(),
        "D1 differs from the transformed source:\n{}",
        diff.join("\n")
    );
    let report = read_json(&report);
    assert_eq!(report["validation"]["ok"], true, "{report}");
    assert_eq!(report["validation"]["full"], true);
    report
}

const CHINOOK_RESHAPED: &str = r#"
[table.Customer]
rename = "customers"
drop = ["Fax"]

[table.Customer.set]
Email = "lower(Email)"

[table.Customer.rename_columns]
SupportRepId = "support_rep_id"

[table.InvoiceLine]
where = "UnitPrice > 0.99"
"#;

#[test]
fn chinook_renamed_table_dropped_computed_and_renamed_columns_and_a_leaf_filter() {
    let Some(source) = dataset("chinook.sqlite") else {
        return;
    };
    let (d1, db, dir) = fresh();
    migrate_transformed(
        d1,
        &db,
        dir.path(),
        &source,
        CHINOOK_RESHAPED,
        "UPDATE Customer SET Email = lower(Email);
         DELETE FROM InvoiceLine WHERE (UnitPrice > 0.99) IS NOT 1;
         ALTER TABLE Customer DROP COLUMN Fax;
         ALTER TABLE Customer RENAME COLUMN SupportRepId TO support_rep_id;
         ALTER TABLE Customer RENAME TO customers;",
    );
    // The children's foreign keys and the indexes followed the rename.
    let rows = d1.sql(
        &db,
        &[
            "SELECT sql FROM sqlite_schema WHERE name = 'Invoice'",
            "SELECT tbl_name, sql FROM sqlite_schema WHERE name = 'IFK_CustomerSupportRepId'",
            "SELECT count(*) FROM customers WHERE Email <> lower(Email)",
        ],
    );
    assert!(
        rows[0][0][0]
            .as_str()
            .unwrap()
            .contains("REFERENCES \"customers\""),
        "{}",
        rows[0]
    );
    assert_eq!(rows[1][0][0], "customers");
    assert!(rows[1][0][1].as_str().unwrap().contains("support_rep_id"));
    assert_eq!(rows[2][0][0], 0);
}

#[test]
fn chinook_one_support_reps_customers_move_with_their_invoices_and_lines() {
    let Some(source) = dataset("chinook.sqlite") else {
        return;
    };
    let (d1, db, dir) = fresh();
    let tenant = "SELECT CustomerId FROM Customer WHERE SupportRepId = 3";
    let invoices = format!("SELECT InvoiceId FROM Invoice WHERE CustomerId IN ({tenant})");
    let report = migrate_transformed(
        d1,
        &db,
        dir.path(),
        &source,
        &format!(
            "[table.Customer]\nwhere = \"SupportRepId = 3\"\n\
             [table.Invoice]\nwhere = \"CustomerId IN ({tenant})\"\n\
             [table.InvoiceLine]\nwhere = \"InvoiceId IN ({invoices})\"\n"
        ),
        &format!(
            "DELETE FROM InvoiceLine WHERE (InvoiceId IN ({invoices})) IS NOT 1;
             DELETE FROM Invoice WHERE (CustomerId IN ({tenant})) IS NOT 1;
             DELETE FROM Customer WHERE (SupportRepId = 3) IS NOT 1;"
        ),
    );
    let customers = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "Customer")
        .unwrap();
    assert_eq!(customers["rows_written"], 21);
}

#[test]
fn northwind_renamed_table_followed_by_its_views_and_a_tenant_filter() {
    let Some(source) = dataset("northwind.db") else {
        return;
    };
    let (d1, db, dir) = fresh();
    let orders = "SELECT OrderID FROM Orders WHERE ShipCountry = 'France'";
    migrate_transformed(
        d1,
        &db,
        dir.path(),
        &source,
        &format!(
            "[table.\"Order Details\"]\nrename = \"order_details\"\nwhere = \"OrderID IN ({orders})\"\n\
             [table.Orders]\nwhere = \"ShipCountry = 'France'\"\n\
             [table.Customers]\ndrop = [\"Fax\"]\n"
        ),
        &format!(
            "DELETE FROM \"Order Details\" WHERE (OrderID IN ({orders})) IS NOT 1;
             DELETE FROM Orders WHERE (ShipCountry = 'France') IS NOT 1;
             ALTER TABLE Customers DROP COLUMN Fax;
             ALTER TABLE \"Order Details\" RENAME TO order_details;"
        ),
    );
    let views = d1.sql(
        &db,
        &["SELECT count(*) FROM sqlite_schema WHERE type = 'view' AND sql LIKE '%order_details%'"],
    );
    assert!(views[0][0][0].as_i64().unwrap() >= 3, "{}", views[0]);
}

const SAMPLE_RESHAPED: &str = r#"
[table.orders]
rename = "purchases"

[table.products]
rename = "items"

[table.customers]
drop = ["created_at"]

[table.customers.set]
email = "upper(email)"

[table.customers.rename_columns]
referred_by = "referrer"

[table.order_lines]
where = "quantity > 2"
"#;

const SAMPLE_RESHAPED_SQL: &str = "
    UPDATE customers SET email = upper(email);
    DELETE FROM order_lines WHERE (quantity > 2) IS NOT 1;
    ALTER TABLE customers DROP COLUMN created_at;
    ALTER TABLE customers RENAME COLUMN referred_by TO referrer;
    ALTER TABLE orders RENAME TO purchases;
    ALTER TABLE products RENAME TO items;";

#[test]
fn generated_shop_reshaped_keeps_its_cycle_counter_trigger_and_view() {
    // Renamed AUTOINCREMENT table (sqlite_sequence follows), a renamed self-referencing column
    // (set by the deferred pass), a filtered WITHOUT ROWID table, a trigger on a renamed table.
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    migrate_transformed(
        d1,
        &db,
        dir.path(),
        &source,
        SAMPLE_RESHAPED,
        SAMPLE_RESHAPED_SQL,
    );
    let rows = d1.sql(
        &db,
        &[
            "SELECT name, seq FROM sqlite_sequence",
            "SELECT tbl_name FROM sqlite_schema WHERE name = 'orders_note_default'",
            "SELECT count(*) FROM customers WHERE referrer IS NOT NULL",
        ],
    );
    assert_eq!(rows[0][0][0], "items");
    assert_eq!(rows[1][0][0], "purchases");
    assert!(rows[2][0][0].as_i64().unwrap() > 0);
}

#[test]
fn the_dry_run_prints_each_tables_mapping_and_rows_kept() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env(
            "MIGRATION_TRANSFORM",
            transform_file(dir.path(), SAMPLE_RESHAPED),
        )
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    d1.assert_untouched(&db);
    let conn = rusqlite::Connection::open(&source).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let (all, kept) = (
        count("SELECT count(*) FROM order_lines"),
        count("SELECT count(*) FROM order_lines WHERE quantity > 2"),
    );
    let text = stderr(&out);
    for line in [
        "customers → customers: kept id, name; dropped created_at; renamed referred_by → referrer; computed email = upper(email)".to_string(),
        "orders → purchases: kept id, customer_id, placed_at, note".to_string(),
        format!("order_lines → order_lines: kept order_id, product_id, quantity, unit_price; where quantity > 2 (keeps {kept} of {all} rows)"),
    ] {
        assert!(text.contains(&line), "{line:?} not in:\n{text}");
    }
    let plan = read_json(&report)["dry_run"].clone();
    let lines = plan["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "order_lines")
        .unwrap();
    assert_eq!(lines["rows"], kept);
    assert_eq!(plan["transforms"].as_array().unwrap().len(), 4);
}

#[test]
fn validation_of_a_transformed_copy_still_sees_a_real_difference() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let file = transform_file(dir.path(), SAMPLE_RESHAPED);
    Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &file)
        .ok();
    d1.sql(
        &db,
        &["UPDATE customers SET email = lower(email) WHERE id = 7"],
    );
    for all_rows in ["false", "true"] {
        let report = dir.path().join(format!("report-{all_rows}.json"));
        let out = Run::new(d1, &db, &source)
            .env("MIGRATION_TRANSFORM", &file)
            .env("MIGRATION_MODE", "validate")
            .env("MIGRATION_VALIDATE_ALL_ROWS", all_rows)
            .env("MIGRATION_SAMPLE_SIZE", "100000")
            .env("MIGRATION_REPORT", &report)
            .output();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let tables = read_json(&report)["validation"]["tables"].clone();
        let bad: Vec<&serde_json::Value> = tables
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["ok"] == false)
            .collect();
        assert_eq!(bad.len(), 1, "{tables}");
        assert_eq!(bad[0]["table"], "customers");
        assert_eq!(bad[0]["mismatched"], 1);
    }
}

#[test]
fn a_checkpoint_belongs_to_its_transform_file() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let file = transform_file(dir.path(), SAMPLE_RESHAPED);
    Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &file)
        .ok();
    let again = Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &file)
        .ok();
    assert!(
        stderr(&again).contains("already complete"),
        "{}",
        stderr(&again)
    );
    std::fs::write(
        &file,
        SAMPLE_RESHAPED.replace("quantity > 2", "quantity > 3"),
    )
    .unwrap();
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &file)
        .output();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("MIGRATION_TRANSFORM file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_transforms_are_refused_before_any_write_naming_their_place() {
    let cases = [
        ("[table.clients]\nrename = \"x\"\n", "[table.clients]: there is no table \"clients\""),
        (
            "[table.customers]\ndrop = [\"phone\"]\n",
            "[table.customers] drop: there is no column \"phone\"",
        ),
        (
            "[table.customers.set]\nemail = \"upper(emial)\"\n",
            "[table.customers.set] email: SQLite refuses the expression \"upper(emial)\": no such column: emial",
        ),
        (
            "[table.orders]\nwhere = \"placed_at >\"\n",
            "[table.orders] where: SQLite refuses the filter",
        ),
        ("[table.orders]\nwhen = \"1\"\n", "unknown field `when`"),
        (
            "[table.customers]\ndrop = [\"id\"]\n",
            "[table.customers] drop: \"id\" is part of the primary key",
        ),
        (
            "[table.customers]\ndrop = [\"email\"]\n",
            "SQLite: cannot drop UNIQUE column",
        ),
        (
            "[table.customers]\nwhere = \"id <= 100\"\n",
            "[table.customers] where = \"id <= 100\" leaves out their parents",
        ),
    ];
    // One database for every case: each must leave it untouched.
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    for (text, message) in cases {
        let out = Run::new(d1, &db, &source)
            .env("MIGRATION_TRANSFORM", transform_file(dir.path(), text))
            .output();
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(message),
            "{text}: {message:?} not in {}",
            stderr(&out)
        );
        d1.assert_untouched(&db);
    }
}

#[test]
fn the_dry_run_finds_a_filter_that_orphans_children() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let report = dir.path().join("report.json");
    let out = Run::new(d1, &db, &source)
        .env(
            "MIGRATION_TRANSFORM",
            transform_file(dir.path(), "[table.products]\nwhere = \"id % 2 = 0\"\n"),
        )
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report)
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let findings = read_json(&report)["dry_run"]["findings"].clone();
    let broken: Vec<&serde_json::Value> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "transform_breaks_foreign_key")
        .collect();
    assert_eq!(broken.len(), 1, "{findings}");
    assert_eq!(broken[0]["object"], "order_lines");
    d1.assert_untouched(&db);
}

#[test]
fn a_view_a_dropped_column_breaks_is_named_and_left_out_only_when_the_file_says_so() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let drop = "[table.order_lines]\ndrop = [\"unit_price\"]\n";
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", transform_file(dir.path(), drop))
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains(
            "[table.order_lines] drop \"unit_price\": view \"order_totals\" can no longer stand"
        ),
        "{text}"
    );
    assert!(text.contains("leave_out"), "{text}");
    d1.assert_untouched(&db);
    migrate_transformed(
        d1,
        &db,
        dir.path(),
        &source,
        &format!("leave_out = [\"order_totals\"]\n{drop}"),
        "DROP VIEW order_totals; ALTER TABLE order_lines DROP COLUMN unit_price;",
    );
    let views = d1.sql(
        &db,
        &["SELECT count(*) FROM sqlite_schema WHERE type = 'view'"],
    );
    assert_eq!(views[0][0][0], 0);
}

/// A source with an FTS4 table (porter stemming, non-contiguous docids) and an FTS3 one (the
/// simple tokenizer, non-ASCII words).
fn fts_source(dir: &Path) -> PathBuf {
    let path = dir.join("fts.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT);
         CREATE VIRTUAL TABLE search USING fts4(title, body, tokenize=porter, prefix=\"2\", order=DESC);
         CREATE VIRTUAL TABLE legacy USING fts3(body);",
    )
    .unwrap();
    let words = [
        "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "running", "runs", "ran", "café",
        "Crème", "naïve", "search", "engines", "index", "indexing", "SQLite", "D1",
    ];
    let tx = db.unchecked_transaction().unwrap();
    for i in 0..300i64 {
        let pick = |k: i64| words[((i * 7 + k * 13) % words.len() as i64) as usize];
        let title = format!("{} {}", pick(1), pick(2));
        let body = (0..8).map(pick).collect::<Vec<_>>().join(" ");
        let docid = 5 + i * 3 + (i % 7) * 1000;
        tx.execute(
            "INSERT INTO search (docid, title, body) VALUES (?, ?, ?)",
            rusqlite::params![docid, title, body],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO legacy (docid, body) VALUES (?, ?)",
            rusqlite::params![docid + 1, body],
        )
        .unwrap();
        tx.execute("INSERT INTO notes (title) VALUES (?)", [&title])
            .unwrap();
    }
    tx.commit().unwrap();
    path
}

#[test]
fn fts4_is_refused_by_default_naming_the_table() {
    let (d1, db, dir) = fresh();
    let source = fts_source(dir.path());
    let out = Run::new(d1, &db, &source).output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("\"search\" uses module \"fts4\""), "{text}");
    assert!(text.contains("MIGRATION_FTS=convert"), "{text}");
    d1.assert_untouched(&db);
}

#[test]
fn fts4_converted_to_fts5_answers_the_same_match_queries_with_the_same_rowids() {
    let (d1, db, dir) = fresh();
    let source = fts_source(dir.path());
    let report = dir.path().join("dry.json");
    Run::new(d1, &db, &source)
        .env("MIGRATION_FTS", "convert")
        .env("MIGRATION_DRY_RUN", "true")
        .env("MIGRATION_REPORT", &report)
        .ok();
    let findings = read_json(&report)["dry_run"]["findings"].clone();
    let converted: Vec<&serde_json::Value> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "fts_converted")
        .collect();
    assert_eq!(converted.len(), 2, "{findings}");
    let search = converted.iter().find(|f| f["object"] == "search").unwrap();
    let message = search["message"].as_str().unwrap();
    assert!(
        message.contains("tokenize = 'porter ascii'") && message.contains("prefix = '2'"),
        "{message}"
    );
    assert!(message.contains("order=DESC"), "{message}");
    d1.assert_untouched(&db);

    Run::new(d1, &db, &source)
        .env("MIGRATION_FTS", "convert")
        .env("MIGRATION_VALIDATE_ALL_ROWS", "true")
        .ok();
    let conn = rusqlite::Connection::open(&source).unwrap();
    let local = |sql: &str| -> Vec<serde_json::Value> {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            Ok(serde_json::Value::Array(
                (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Integer(v) => serde_json::json!(v),
                        rusqlite::types::ValueRef::Text(t) => {
                            serde_json::json!(String::from_utf8_lossy(t))
                        }
                        other => panic!("{other:?}"),
                    })
                    .collect(),
            ))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    };
    let on_d1 = |sql: &str| d1.sql(&db, &[sql])[0].as_array().unwrap().clone();
    let schema =
        on_d1("SELECT sql FROM sqlite_schema WHERE name IN ('search', 'legacy') ORDER BY name");
    assert!(
        schema
            .iter()
            .all(|s| s[0].as_str().unwrap().contains("USING fts5(")),
        "{schema:?}"
    );
    for table in ["search", "legacy"] {
        let all = format!("SELECT rowid, * FROM {table} ORDER BY rowid");
        assert_eq!(local(&all), on_d1(&all), "{table}: rows and rowids");
    }
    let queries = [
        ("search", "fox"),
        ("search", "run"),
        ("search", "running"),
        ("search", "index*"),
        ("search", "\"quick brown\""),
        ("search", "lazy dog"),
        ("search", "fox OR café"),
        ("search", "title:lazy"),
        ("search", "sqlite"),
        ("legacy", "café"),
        ("legacy", "CAFÉ"),
        ("legacy", "crème"),
        ("legacy", "naïve OR engines"),
    ];
    let mut answered = 0;
    for (table, q) in queries {
        let sql = format!(
            "SELECT rowid FROM {table} WHERE {table} MATCH '{}' ORDER BY rowid",
            q.replace('\'', "''")
        );
        let (want, got) = (local(&sql), on_d1(&sql));
        assert_eq!(want, got, "{table} MATCH {q:?}");
        answered += usize::from(!want.is_empty());
    }
    assert!(answered >= 10, "most queries find rows ({answered})");
}

#[test]
fn a_computed_value_takes_its_columns_affinity_as_on_d1() {
    // Epoch seconds (INTEGER) into a TEXT column, text into a REAL one: D1 stores them with the
    // column's affinity, and validation, full or sampled, must see them so too.
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    migrate_transformed(
        d1,
        &db,
        dir.path(),
        &source,
        "[table.orders.set]\nplaced_at = \"CAST(strftime('%s', placed_at) AS INTEGER)\"\n\
         [table.products.set]\nprice = \"printf('%.2f', price)\"\n",
        "UPDATE orders SET placed_at = CAST(strftime('%s', placed_at) AS INTEGER);
         UPDATE products SET price = printf('%.2f', price);",
    );
    let types = d1.sql(
        &db,
        &[
            "SELECT DISTINCT typeof(placed_at) FROM orders",
            "SELECT DISTINCT typeof(price) FROM products",
        ],
    );
    assert_eq!(types[0], serde_json::json!([["text"]]));
    assert_eq!(types[1], serde_json::json!([["real"]]));
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", dir.path().join("transform.toml"))
        .env("MIGRATION_MODE", "validate")
        .env("MIGRATION_SAMPLE_SIZE", "500")
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_renamed_table_d1_already_has_is_judged_by_its_transformed_rows() {
    // The app's schema on D1 already holds `purchases`, with `note` NOT NULL: the source's
    // `orders` (renamed) hold NULL notes, which D1 would refuse, until the transform fills them.
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    d1.sql(
        &db,
        &["CREATE TABLE purchases (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), placed_at TEXT NOT NULL, note TEXT NOT NULL)"],
    );
    let renamed = "[table.orders]\nrename = \"purchases\"\n";
    let out = Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", transform_file(dir.path(), renamed))
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("table \"purchases\", column \"note\"") && text.contains("holding NULL"),
        "{text}"
    );
    let rows = d1.sql(&db, &["SELECT count(*) FROM purchases"]);
    assert_eq!(rows[0][0][0], 0, "nothing was written");
    migrate_transformed(
        d1,
        &db,
        dir.path(),
        &source,
        &format!("{renamed}[table.orders.set]\nnote = \"coalesce(note, '')\"\n"),
        "UPDATE orders SET note = coalesce(note, '');
         ALTER TABLE orders RENAME TO purchases;",
    );
}

#[test]
fn a_sync_after_a_transformed_copy_writes_the_transformed_changes() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let file = transform_file(dir.path(), SAMPLE_RESHAPED);
    Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &file)
        .ok();
    // The source moves on: an email changes, lines come and go, one crosses the filter.
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(
        "UPDATE customers SET email = 'moved@example.com' WHERE id = 3;
         DELETE FROM order_lines WHERE (order_id, product_id) IN (SELECT order_id, product_id FROM order_lines WHERE quantity > 2 LIMIT 5);
         UPDATE order_lines SET quantity = 9 WHERE order_id = (SELECT min(order_id) FROM order_lines WHERE quantity <= 2) AND quantity <= 2;
         INSERT OR IGNORE INTO order_lines VALUES (1, 2, 7, 1.5);",
    )
    .unwrap();
    drop(conn);
    Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &file)
        .env("MIGRATION_MODE", "sync")
        .env("MIGRATION_SYNC_DELETE", "true")
        .ok();
    let want = expected(dir.path(), &source, SAMPLE_RESHAPED_SQL);
    let diff = sqldiff(&want, d1.file(&db));
    assert!(
        diff.is_empty(),
        "D1 differs from the transformed source:\n{}",
        diff.join("\n")
    );
}

#[test]
fn a_rollback_of_a_transformed_copy_writes_what_d1_holds() {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), "sample");
    let file = transform_file(dir.path(), SAMPLE_RESHAPED);
    Run::new(d1, &db, &source)
        .env("MIGRATION_TRANSFORM", &file)
        .ok();
    let restored = dir.path().join("restored.sqlite");
    let out = Run::new(d1, &db, &restored)
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_TRANSFORM", &file)
        .ok();
    assert!(
        stderr(&out).contains("MIGRATION_TRANSFORM is ignored by a rollback"),
        "{}",
        stderr(&out)
    );
    let diff = sqldiff(d1.file(&db), &restored);
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    let want = expected(dir.path(), &source, SAMPLE_RESHAPED_SQL);
    assert!(sqldiff(&want, &restored).is_empty(), "no reverse transform");
}
