//! The project's own databases, generated: the built-in sample the README's main command migrates,
//! and the edge-case fixture holding every case "whole and exact" names (extreme values, awkward
//! names, keys, cycles, large values, virtual tables). Deterministic for a given seed.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};

use crate::error::{Error, Result};

fn create(path: &Path) -> Result<Connection> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let db = Connection::open(path)?;
    // Like most SQLite files in the wild, written without foreign-key enforcement.
    db.execute_batch("PRAGMA foreign_keys = OFF")?;
    Ok(db)
}

/// A small shop: customers who refer each other, products, orders, order lines; with an
/// AUTOINCREMENT counter, a view, an index and a trigger.
pub fn sample(path: &Path, scale: usize) -> Result<()> {
    let mut db = create(path)?;
    db.execute_batch(
        "CREATE TABLE order_lines (
             order_id INTEGER NOT NULL REFERENCES orders(id),
             product_id INTEGER NOT NULL REFERENCES products(id),
             quantity INTEGER NOT NULL CHECK (quantity > 0),
             unit_price REAL NOT NULL,
             PRIMARY KEY (order_id, product_id)
         ) WITHOUT ROWID;
         CREATE TABLE customers (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             email TEXT UNIQUE,
             referred_by INTEGER REFERENCES customers(id),
             created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
         );
         CREATE TABLE products (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             name TEXT NOT NULL,
             price REAL NOT NULL,
             picture BLOB
         );
         CREATE TABLE orders (
             id INTEGER PRIMARY KEY,
             customer_id INTEGER NOT NULL REFERENCES customers(id),
             placed_at TEXT NOT NULL,
             note TEXT
         );",
    )?;
    let mut rng = StdRng::seed_from_u64(42);
    let tx = db.transaction()?;
    {
        let customers = 200 * scale;
        let mut c = tx.prepare("INSERT INTO customers (id, name, email, referred_by, created_at) VALUES (?, ?, ?, ?, ?)")?;
        for id in 1..=customers as i64 {
            // Some customers were referred by customers with a higher id (imported later).
            let referred: Option<i64> = rng
                .random_bool(0.3)
                .then(|| rng.random_range(1..=customers as i64));
            c.execute(params![
                id,
                format!("Customer {id} O'Brien"),
                format!("c{id}@example.com"),
                referred,
                format!("2024-01-{:02} 10:00:00", 1 + id % 28)
            ])?;
        }
        let products = 50 * scale;
        let mut p = tx.prepare("INSERT INTO products (name, price, picture) VALUES (?, ?, ?)")?;
        for id in 1..=products {
            let picture: Vec<u8> = (0..rng.random_range(0..512))
                .map(|_| rng.random())
                .collect();
            p.execute(params![
                format!("Product №{id}"),
                rng.random_range(1.0..500.0f64),
                picture
            ])?;
        }
        let mut o = tx
            .prepare("INSERT INTO orders (id, customer_id, placed_at, note) VALUES (?, ?, ?, ?)")?;
        let mut l = tx.prepare("INSERT OR IGNORE INTO order_lines VALUES (?, ?, ?, ?)")?;
        for id in 1..=(1000 * scale) as i64 {
            let note = rng
                .random_bool(0.1)
                .then_some("leave at the door; ring twice\r\nthanks");
            o.execute(params![
                id,
                rng.random_range(1..=customers as i64),
                "2024-02-01",
                note
            ])?;
            for _ in 0..rng.random_range(1..5) {
                l.execute(params![
                    id,
                    rng.random_range(1..=products as i64),
                    rng.random_range(1..10),
                    rng.random_range(1.0..500.0f64)
                ])?;
            }
        }
    }
    tx.commit()?;
    db.execute_batch(
        "UPDATE sqlite_sequence SET seq = seq + 10 WHERE name = 'products';
         CREATE INDEX orders_by_customer ON orders(customer_id);
         CREATE VIEW order_totals AS
             SELECT order_id, sum(quantity * unit_price) AS total FROM order_lines GROUP BY order_id;
         CREATE TRIGGER orders_note_default AFTER INSERT ON orders WHEN NEW.note IS NULL
         BEGIN UPDATE orders SET note = '' WHERE id = NEW.id; END;",
    )?;
    Ok(())
}

/// Every case the migration must carry exactly.
pub fn edge_cases(path: &Path) -> Result<()> {
    let mut db = create(path)?;
    db.execute_batch(
        r#"
        -- A child created before its parent, with a composite key.
        CREATE TABLE "line items" (
            "order" INTEGER NOT NULL REFERENCES "Orders; DROP"(id),
            "line" INTEGER NOT NULL,
            sku TEXT COLLATE NOCASE,
            PRIMARY KEY ("order", "line")
        ) WITHOUT ROWID;
        CREATE TABLE "Orders; DROP" (id INTEGER PRIMARY KEY, "select" TEXT DEFAULT 'x''y', total REAL CHECK (total >= 0 OR total IS NULL));
        -- Every storage class in untyped and typed columns, values defying affinity.
        CREATE TABLE "values" (
            id INTEGER PRIMARY KEY,
            anything,
            i INTEGER,
            r REAL,
            t TEXT,
            b BLOB,
            n NUMERIC
        );
        -- No INTEGER PRIMARY KEY: rowids with gaps must survive.
        CREATE TABLE plain (label TEXT, amount NUMERIC);
        -- Keys in a cycle and a self-reference, all nullable.
        CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, manager_id INTEGER REFERENCES employees(id), team_id INTEGER REFERENCES teams(id));
        CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL, lead_id INTEGER REFERENCES employees(id));
        CREATE TABLE strict_t (k TEXT PRIMARY KEY, v INTEGER NOT NULL, w ANY) STRICT;
        CREATE TABLE "naïve 列 ""q""" ("ünï" TEXT, "emoji 🦀" TEXT);
        CREATE TABLE gen (a INTEGER, b INTEGER, s INTEGER GENERATED ALWAYS AS (a + b) STORED, v TEXT GENERATED ALWAYS AS (a || '-' || b) VIRTUAL);
        CREATE TABLE counters (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT);
        CREATE TABLE d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL);
        CREATE TABLE big (id INTEGER PRIMARY KEY, payload BLOB, body TEXT);
        CREATE VIRTUAL TABLE docs USING fts5(title, body);
        CREATE TABLE _cf_legacy (x);
        "#,
    )?;
    let tx = db.transaction()?;
    tx.execute_batch(
        r#"
        INSERT INTO "Orders; DROP" VALUES (1, 'a', 10.5), (2, NULL, NULL);
        INSERT INTO "Orders; DROP" (id, total) VALUES (3, 0);
        INSERT INTO "line items" VALUES (1, 1, 'ABC'), (1, 2, 'abd'), (3, 1, NULL);
        INSERT INTO plain (rowid, label, amount) VALUES (5, 'five', 5), (9, 'nine', '9.50'), (1000000, 'far', 'not a number');
        INSERT INTO employees VALUES (1, 'Ada', 3, 2), (2, 'Bob', 1, 1), (3, 'Cy', NULL, 2);
        INSERT INTO teams VALUES (1, 'core', 2), (2, 'edge', 3);
        INSERT INTO strict_t VALUES ('a', 1, 1.5), ('b', -2, X'00'), ('c', 3, 'text');
        INSERT INTO "naïve 列 ""q""" VALUES ('ÄÖÜ', '🦀🦀'), ('ﷺ عربى', 'e' || char(769));
        INSERT INTO gen (a, b) VALUES (1, 2), (40, 2);
        INSERT INTO counters (note) VALUES ('one'), ('two'), ('three');
        DELETE FROM counters WHERE id = 3;
        UPDATE sqlite_sequence SET seq = 41 WHERE name = 'counters';
        INSERT INTO d1_migrations (name, applied_at) VALUES ('0001_init.sql', '2025-01-01 00:00:00');
        INSERT INTO docs (rowid, title, body) VALUES (1, 'hello', 'full text search'), (7, 'second', 'another row; with -- markers');
        INSERT INTO _cf_legacy VALUES (1);
        "#,
    )?;
    {
        let mut v = tx.prepare(
            r#"INSERT INTO "values" (id, anything, i, r, t, b, n) VALUES (?, ?, ?, ?, ?, ?, ?)"#,
        )?;
        let texts: Vec<&str> = vec![
            "",
            "it's \"quoted\"",
            "line1\nline2\r\nline3\r",
            "a; DROP TABLE x; --",
            "/* not a comment */ -- nor this",
            "tab\there",
            "🦀 Ünïcödé ﷺ 中文 \u{200B}\u{FEFF}",
            "END; BEGIN",
        ];
        let reals = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            2.225073858507201e-308,
            0.1 + 0.2,
            1.0 / 3.0,
            f64::MAX,
            f64::MIN,
            1e16,
            123456789.12345679,
            -1.5e-310,
        ];
        let ints = [
            0,
            1,
            -1,
            i64::MIN,
            i64::MAX,
            (1 << 53) + 1,
            -(1 << 53) - 1,
            1 << 62,
        ];
        let mut id = 1i64;
        let mut rng = StdRng::seed_from_u64(7);
        for (k, &r) in reals.iter().enumerate() {
            let i = ints[k % ints.len()];
            let t = texts[k % texts.len()];
            v.execute(params![id, r, i, r, t, vec![k as u8; k], i])?;
            id += 1;
        }
        for _ in 0..200 {
            // Random bit patterns: every finite double must survive.
            let r = loop {
                let x = f64::from_bits(rng.random());
                if x.is_finite() {
                    break x;
                }
            };
            v.execute(params![
                id,
                r,
                rng.random::<i64>(),
                r,
                format!("{r:e}"),
                rng.random::<[u8; 16]>().to_vec(),
                r
            ])?;
            id += 1;
        }
        // Values that defy their column's affinity, and TEXT that is not plain.
        tx.execute_batch(&format!(
            r#"INSERT INTO "values" (id, anything, i, r, t, b, n) VALUES
               ({a}, 'text in any', 'abc', 'not real', X'DEADBEEF', 'text in blob', X'00'),
               ({b}, 'nul' || char(0) || 'inside', 1.5, 2, 'x', 42, 'twelve'),
               ({c}, CAST(X'FF00FE' AS TEXT), NULL, NULL, CAST(X'C0AF' AS TEXT), X'', ''),
               ({d}, '12', '12', '12', 12, 12.0, '12.0'),
               ({e}, NULL, 9007199254740993, -0.0, 'ok' || char(0) || CAST(X'FF' AS TEXT), NULL, 0.5),
               ({f}, NULL, -9007199254740991, 1e308, 'a' || char(0), NULL, -9223372036854775808);"#,
            a = id,
            b = id + 1,
            c = id + 2,
            d = id + 3,
            e = id + 4,
            f = id + 5,
        ))?;
        let mut big = tx.prepare("INSERT INTO big VALUES (?, ?, ?)")?;
        let blob = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 % 251) as u8).collect() };
        big.execute(params![1, Vec::<u8>::new(), ""])?;
        big.execute(params![2, blob(99_000), "small"])?;
        big.execute(params![3, blob(250_000), "x".repeat(120_000)])?;
        // The largest row D1 accepts is 2,000,000 bytes.
        big.execute(params![4, blob(1_990_000), "end"])?;
        big.execute(params![
            5,
            Option::<Vec<u8>>::None,
            format!("{}\0{}", "é".repeat(60_000), "tail")
        ])?;
    }
    tx.commit()?;
    db.execute_batch(
        r#"
        CREATE INDEX "idx; sku" ON "line items"(sku);
        CREATE UNIQUE INDEX employees_name ON employees(name);
        CREATE VIEW "team view" AS SELECT t.name, e.name AS lead FROM teams t JOIN employees e ON e.id = t.lead_id;
        CREATE TRIGGER counters_touch AFTER INSERT ON counters
        BEGIN
            UPDATE counters SET note = CASE WHEN NEW.note IS NULL THEN 'none' ELSE NEW.note END WHERE id = NEW.id;
        END;
        "#,
    )?;
    Ok(())
}

/// One instance of each D1 compatibility problem the dry run reports.
pub fn problems(path: &Path) -> Result<()> {
    let db = create(path)?;
    let wide: Vec<String> = (1..=101).map(|i| format!("c{i} INTEGER")).collect();
    db.execute_batch(&format!(
        "CREATE TABLE wide ({});
         INSERT INTO wide (c1) VALUES (1);
         CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id));
         INSERT INTO customers VALUES (1, 'Ada'), (2, 'Bob');
         INSERT INTO orders VALUES (5, 1), (6, 2), (7, 999);
         CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
         INSERT INTO blobs VALUES (1, zeroblob(10)), (2, zeroblob(2100000)), (3, X'01');
         CREATE VIRTUAL TABLE old_search USING fts4(body);
         INSERT INTO old_search (body) VALUES ('fts4 is not in D1');
         CREATE TABLE _cf_notes (note TEXT);
         CREATE INDEX _cf_idx ON customers(name);
         CREATE VIEW version_view AS SELECT sqlite_version() AS v;",
        wide.join(", ")
    ))?;
    Ok(())
}

/// A large database of about `megabytes`: many narrow and mixed-width rows, some BLOBs, a
/// composite-key table; for the benchmark's scale run.
pub fn large(path: &Path, megabytes: usize) -> Result<()> {
    let mut db = create(path)?;
    db.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE events (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT, amount REAL);
         CREATE TABLE documents (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body BLOB);
         CREATE TABLE tags (event_id INTEGER NOT NULL REFERENCES events(id), tag TEXT NOT NULL,
                            PRIMARY KEY (event_id, tag)) WITHOUT ROWID;",
    )?;
    let budget = megabytes as u64 * 1_000_000;
    let mut rng = StdRng::seed_from_u64(1);
    let kinds = ["click", "view", "purchase", "refund", "signup"];
    let (events, documents) = (budget * 70 / 100 / 260, budget * 25 / 100 / 16_500);
    let tx = db.transaction()?;
    {
        let mut e = tx.prepare("INSERT INTO events VALUES (?, ?, ?, ?, ?)")?;
        let mut t = tx.prepare("INSERT OR IGNORE INTO tags VALUES (?, ?)")?;
        for id in 1..=events as i64 {
            let detail: String = (0..rng.random_range(20..400))
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect();
            e.execute(params![
                id,
                1_700_000_000 + id * 7,
                kinds[id as usize % 5],
                detail,
                rng.random_range(-1e6..1e6f64)
            ])?;
            if id % 4 == 0 {
                t.execute(params![id, format!("tag-{}", rng.random_range(0..50))])?;
            }
        }
        let mut d = tx.prepare("INSERT INTO documents VALUES (?, ?, ?)")?;
        for id in 1..=documents as i64 {
            let body: Vec<u8> = (0..rng.random_range(1_000..32_000))
                .map(|_| rng.random())
                .collect();
            d.execute(params![id, format!("document {id}"), body])?;
        }
    }
    tx.commit()?;
    Ok(())
}
