//! The hot parts on their own: value encoding and statement packing, SQLite reading, hashing for
//! validation, and decoding what D1 answers to exact reads.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use d1_migrator::discover::{Column, Table, TableKind};
use d1_migrator::pack::{InsertPacker, Limits, Shape, Unit};
use d1_migrator::value::Value;

fn rows(n: usize) -> Vec<Vec<Value>> {
    (0..n)
        .map(|i| {
            vec![
                Value::Integer(i as i64),
                Value::Integer((i * 7) as i64),
                Value::Real(i as f64 * 1.25),
                Value::Text(format!("product name {i} with 'quotes'").into_bytes()),
                Value::Blob(vec![i as u8; 16]),
            ]
        })
        .collect()
}

fn shape() -> Shape {
    let col = |name: &str, pk: i64| Column::new(name, if pk > 0 { "INTEGER" } else { "" }, pk);
    let table = Table {
        name: "Order Details".into(),
        sql: String::new(),
        kind: TableKind::Rowid {
            rowid_alias: Some("id".into()),
        },
        columns: vec![
            col("id", 1),
            col("qty", 0),
            col("price", 0),
            col("name", 0),
            col("tag", 0),
        ],
        foreign_keys: vec![],
        unique: vec![],
    };
    Shape::new(&table, &[])
}

fn packing(c: &mut Criterion) {
    let data = rows(100_000);
    let mut group = c.benchmark_group("pack");
    group.throughput(Throughput::Elements(data.len() as u64));
    group.bench_function("100k rows into statements", |b| {
        b.iter(|| {
            let mut packer = InsertPacker::new(shape(), Limits::default());
            let mut out: Vec<Unit> = Vec::new();
            for r in &data {
                packer.push(r, &mut out);
            }
            packer.flush(&mut out);
            out.len()
        })
    });
    group.finish();
}

fn reading(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    d1_migrator::fixture::sample(&path, 10).unwrap();
    let conn = d1_migrator::source::open_read_only(&path).unwrap();
    let schema =
        d1_migrator::discover::discover(&d1_migrator::source::SqliteCatalog(&conn)).unwrap();
    let table = schema.table("order_lines").unwrap().clone();
    let shape = Shape::new(&table, &[]);
    c.bench_function("read order_lines in batches of 1000", |b| {
        b.iter(|| {
            let mut n = 0;
            d1_migrator::source::read_batches(&conn, &shape, "", 1000, None, |batch| {
                n += batch.len();
                Ok(true)
            })
            .unwrap();
            n
        })
    });
}

fn hashing(c: &mut Criterion) {
    let data = rows(100_000);
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(data.len() as u64));
    group.bench_function("canonical encoding + blake3 of 100k rows", |b| {
        b.iter(|| {
            let mut hasher = blake3::Hasher::new();
            let mut buf = Vec::with_capacity(256);
            for r in &data {
                buf.clear();
                for v in r {
                    v.write_canonical(&mut buf);
                }
                hasher.update(&buf);
            }
            hasher.finalize()
        })
    });
    group.finish();
}

/// A page of D1's answer to exact reads (`remote::exact_select`), as JSON text: integers and
/// REALs bare, one TEXT bare, one tagged (hex), as Order Details-like rows come back.
fn d1_page(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"[{i},{},{}.25,0.05,"product name {i}","\u0001t4ec3a9"]"#,
                i * 7,
                i % 90
            )
        })
        .collect();
    format!(
        r#"{{"columns":["a","b","c","d","e","f"],"rows":[{}]}}"#,
        rows.join(",")
    )
}

fn decoding(c: &mut Criterion) {
    use d1_migrator::discover::Affinity;
    let n = 20_000;
    let page = d1_page(n);
    let affinities = [
        Affinity::Integer,
        Affinity::Integer,
        Affinity::Numeric,
        Affinity::Real,
        Affinity::Text,
        Affinity::Text,
    ];
    let mut group = c.benchmark_group("exact reads");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("parse + decode a page of 20k rows from D1", |b| {
        b.iter(|| {
            let answer: serde_json::Value = serde_json::from_str(&page).unwrap();
            let mut decoded = 0;
            for row in answer["rows"].as_array().unwrap() {
                for (cell, &a) in row.as_array().unwrap().iter().zip(&affinities) {
                    d1_migrator::remote::decode_cell(cell, a, &String::new).unwrap();
                    decoded += 1;
                }
            }
            decoded
        })
    });
    group.finish();
}

criterion_group!(benches, packing, reading, hashing, decoding);
criterion_main!(benches);
