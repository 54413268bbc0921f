//! Databases nobody wrote by hand: a property-based generator (proptest) of random legal SQLite
//! databases, each migrated to the local D1 with full validation and rolled back with full
//! validation; the D1 copy and the rolled-back file must be `sqldiff`-identical to the source,
//! with the same `sqlite_master` (D1's `_cf_` objects aside); FTS5 index segments, which D1
//! cannot be made to hold byte-for-byte (README, "FTS5 indexes"), are compared by content, and
//! the rolled-back file must be `sqldiff`-identical to D1, segments included.
//!
//! A case is `Knobs`: a seed and a few sizes and switches. The seed drives a deterministic
//! generator (random foreign-key graphs: chains, diamonds, self-references, cycles of nullable
//! and NOT NULL keys, composite and UNIQUE keys, ON DELETE actions, DEFERRABLE; 1-100 columns;
//! names with spaces, quotes, brackets, unicode, keywords, up to 64 characters; rowid tables,
//! INTEGER PRIMARY KEY aliases, AUTOINCREMENT, WITHOUT ROWID keys of 1-12 columns, STRICT,
//! generated columns, CHECKs, partial and expression indexes, views, triggers writing other
//! tables, FTS5 with internal and external content; values over every storage class and edge,
//! BLOBs up to a row just under 2 MB, 0 rows to several requests per table; the planner's
//! statistics of `ANALYZE` in half the cases). Half the cases (odd seeds) reach D1 through the
//! local D1's front end delaying each request by 0 to 30 ms (`jitter_ms`): the requests a run
//! keeps in flight reach D1 in another order than they were sent. proptest shrinks
//! the sizes and switches of a failing case; the failure prints the knobs to replay it with
//! `D1M_FUZZ_REPLAY`.
//!
//! `D1M_FUZZ_CASES` (default 32) cases run, from `D1M_FUZZ_SEED` (default fixed, so
//! `scripts/test` is reproducible), within `D1M_FUZZ_SECONDS` (default 150). `scripts/fuzz` runs
//! many more from a random seed.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::harness::{sqldiff, LocalD1, Run, TOKEN};
use crate::shapes::schema_of;

/// What a case is made of: a seed for every choice, and the sizes and switches proptest shrinks.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    pub seed: u64,
    pub tables: usize,
    pub max_columns: usize,
    pub max_rows: usize,
    /// Foreign keys may point at later tables and at their own table (cycles).
    pub cycles: bool,
    /// Foreign keys may be NOT NULL (and UNIQUE).
    pub not_null_keys: bool,
    pub without_rowid: bool,
    pub strict: bool,
    /// Indexes, views, triggers, generated columns, CHECKs, FTS5.
    pub extras: bool,
    /// Values up to a row just under 2 MB.
    pub big_values: bool,
    /// Names with spaces, quotes, brackets, unicode and keywords.
    pub odd_names: bool,
}

impl Knobs {
    fn replay_text(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{}",
            self.seed,
            self.tables,
            self.max_columns,
            self.max_rows,
            self.cycles as u8,
            self.not_null_keys as u8,
            self.without_rowid as u8,
            self.strict as u8,
            self.extras as u8,
            self.big_values as u8,
            self.odd_names as u8
        )
    }

    fn parse(text: &str) -> Knobs {
        let n: Vec<u64> = text
            .split(',')
            .map(|p| p.trim().parse().expect("D1M_FUZZ_REPLAY: numbers"))
            .collect();
        assert_eq!(n.len(), 11, "D1M_FUZZ_REPLAY holds 11 numbers");
        Knobs {
            seed: n[0],
            tables: n[1] as usize,
            max_columns: n[2] as usize,
            max_rows: n[3] as usize,
            cycles: n[4] != 0,
            not_null_keys: n[5] != 0,
            without_rowid: n[6] != 0,
            strict: n[7] != 0,
            extras: n[8] != 0,
            big_values: n[9] != 0,
            odd_names: n[10] != 0,
        }
    }
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        any::<u64>(),
        1..=6usize,
        1..=100usize,
        0..=240usize,
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (any::<bool>(), proptest::bool::weighted(0.15), any::<bool>()),
    )
        .prop_map(
            |(seed, tables, max_columns, max_rows, (c, n, w, s), (e, b, o))| Knobs {
                seed,
                tables,
                max_columns,
                max_rows,
                cycles: c,
                not_null_keys: n,
                without_rowid: w,
                strict: s,
                extras: e,
                big_values: b,
                odd_names: o,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// The model of a generated database.

/// A cell as the source stores it. TEXT may hold any bytes.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Cell {
    fn size(&self) -> usize {
        match self {
            Cell::Null => 1,
            Cell::Int(_) | Cell::Real(_) => 8,
            Cell::Text(b) | Cell::Blob(b) => b.len(),
        }
    }
}

impl rusqlite::ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Cell::Null => ValueRef::Null,
            Cell::Int(i) => ValueRef::Integer(*i),
            Cell::Real(r) => ValueRef::Real(*r),
            Cell::Text(b) => ValueRef::Text(b),
            Cell::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The kind of values a column holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Int,
    Real,
    Text,
    Blob,
    /// Any storage class (no type, or a type whose affinity takes everything as it comes).
    Any,
}

#[derive(Debug, Clone, PartialEq)]
enum Role {
    Data,
    /// Part `i` of the primary key.
    Key(usize),
    /// Part `part` of foreign key `fk`.
    Fk {
        fk: usize,
        part: usize,
    },
    /// A copy of another column, which a CHECK ties to it.
    Copy(usize),
    /// Computed by SQLite: not inserted.
    Generated,
}

#[derive(Debug, Clone)]
struct Col {
    name: String,
    decl: String,
    class: Class,
    not_null: bool,
    role: Role,
    /// Extra clauses after the type (COLLATE, DEFAULT, GENERATED ...).
    extra: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A rowid table with no declared key (not a parent).
    Rowid,
    /// INTEGER PRIMARY KEY.
    Alias,
    /// A rowid table with a declared primary key that is not the rowid.
    RowidKeyed,
    WithoutRowid,
}

#[derive(Debug, Clone)]
struct Fk {
    parent: usize,
    cols: Vec<usize>,
    not_null: bool,
    unique: bool,
    name_parent_columns: bool,
    tail: String,
}

#[derive(Debug, Clone)]
struct Tbl {
    name: String,
    kind: Kind,
    strict: bool,
    autoincrement: bool,
    cols: Vec<Col>,
    keys: Vec<usize>,
    fks: Vec<Fk>,
    checks: Vec<String>,
    rows: usize,
    data: Vec<Vec<Cell>>,
}

impl Tbl {
    fn is_parent(&self) -> bool {
        self.kind != Kind::Rowid
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

const KEYWORDS: &[&str] = &[
    "select",
    "order",
    "group",
    "table",
    "from",
    "where",
    "index",
    "key",
    "values",
    "default",
    "check",
    "primary",
    "references",
    "trigger",
    "view",
    "join",
    "limit",
    "null",
    "rowid",
];

/// Names, unique (case-insensitively) within their scope.
struct Names {
    used: HashSet<String>,
    odd: bool,
}

impl Names {
    fn new(odd: bool) -> Names {
        Names {
            used: HashSet::new(),
            odd,
        }
    }

    fn fresh(&mut self, rng: &mut StdRng, base: &str) -> String {
        loop {
            let name = if self.odd && rng.random_bool(0.7) {
                odd_name(rng, base)
            } else {
                format!("{base}{}", rng.random_range(0..1000))
            };
            let lower = name.to_lowercase();
            let reserved = lower.starts_with("sqlite_") || lower.starts_with("_cf_");
            if !reserved && self.used.insert(lower) {
                return name;
            }
        }
    }
}

fn odd_name(rng: &mut StdRng, base: &str) -> String {
    let mut name = match rng.random_range(0..8) {
        0 => KEYWORDS[rng.random_range(0..KEYWORDS.len())].to_string(),
        1 => format!("{base} with spaces"),
        2 => format!("{base} \"quoted\""),
        3 => format!("[{base}] bracketed"),
        4 => format!("{base} 'single'"),
        5 => format!("{base} ünïcödé 日本 🎉"),
        6 => format!(
            "{} {base}",
            KEYWORDS[rng.random_range(0..KEYWORDS.len())].to_uppercase()
        ),
        _ => format!("{base}_{}", "long".repeat(rng.random_range(1..16))),
    };
    if rng.random_bool(0.3) {
        while name.chars().count() < 64 {
            name.push(['x', ' ', '"', '.', '-'][rng.random_range(0..5)]);
        }
    }
    let mut cut: String = name.chars().take(64).collect();
    cut.push_str(&rng.random_range(0..100).to_string());
    cut.chars()
        .rev()
        .take(64)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

fn declared(rng: &mut StdRng, strict: bool, class: Class) -> String {
    let pick = |opts: &[&str], rng: &mut StdRng| opts[rng.random_range(0..opts.len())].to_string();
    match (strict, class) {
        (true, Class::Int) => pick(&["INTEGER", "INT"], rng),
        (true, Class::Real) => "REAL".into(),
        (true, Class::Text) => "TEXT".into(),
        (true, Class::Blob) => "BLOB".into(),
        (true, Class::Any) => "ANY".into(),
        (false, Class::Int) => pick(&["INTEGER", "INT", "BIGINT", "NUMERIC", "BOOLEAN"], rng),
        (false, Class::Real) => pick(&["REAL", "DOUBLE", "FLOAT"], rng),
        (false, Class::Text) => pick(&["TEXT", "VARCHAR(64)", "CLOB", "JSON"], rng),
        (false, Class::Blob) => pick(&["BLOB", ""], rng),
        (false, Class::Any) => pick(&["", "BLOB", "ANYTHING", "DATETIME"], rng),
    }
}

fn random_class(rng: &mut StdRng) -> Class {
    [
        Class::Int,
        Class::Real,
        Class::Text,
        Class::Blob,
        Class::Any,
    ][rng.random_range(0..5)]
}

// ---------------------------------------------------------------------------------------------
// Values.

const INT_EDGES: &[i64] = &[
    0,
    1,
    -1,
    i64::MAX,
    i64::MIN,
    i64::MAX - 1,
    i64::MIN + 1,
    1 << 53,
    (1 << 53) + 1,
    -(1 << 53) - 1,
    9_007_199_254_740_993,
    4_294_967_296,
];

const REAL_EDGES: &[f64] = &[
    0.0,
    -0.0,
    1.5,
    -2.25,
    0.1,
    f64::INFINITY,
    f64::NEG_INFINITY,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e308,
    f64::MAX,
    f64::MIN,
    1e-20,
    1e20,
    9007199254740993.0,
    123456789.125,
];

fn text_edge(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..12) {
        0 => Vec::new(),
        1 => b"plain".to_vec(),
        2 => b"it's \"quoted\"".to_vec(),
        3 => b"line\r\nbreak\nand\rmore".to_vec(),
        4 => b"nul\0inside\0".to_vec(),
        5 => "ünïcödé 日本語 🎉".as_bytes().to_vec(),
        6 => vec![0xff, 0xfe, b'a', 0xc3],
        7 => b"\x01t00ff looks tagged".to_vec(),
        8 => br#"{"json": [1, 2.5, null]}"#.to_vec(),
        9 => "x".repeat(rng.random_range(100..3000)).into_bytes(),
        10 => b"12".to_vec(),
        _ => (0..rng.random_range(1..40))
            .map(|_| rng.random_range(0x20..0x7f))
            .collect(),
    }
}

fn random_real(rng: &mut StdRng) -> f64 {
    if rng.random_bool(0.5) {
        return REAL_EDGES[rng.random_range(0..REAL_EDGES.len())];
    }
    loop {
        let r = f64::from_bits(rng.random());
        if !r.is_nan() {
            return r;
        }
    }
}

fn random_int(rng: &mut StdRng) -> i64 {
    if rng.random_bool(0.4) {
        INT_EDGES[rng.random_range(0..INT_EDGES.len())]
    } else if rng.random_bool(0.5) {
        rng.random_range(-1000..1000)
    } else {
        rng.random()
    }
}

fn value_of(rng: &mut StdRng, class: Class, not_null: bool) -> Cell {
    if !not_null && rng.random_bool(0.15) {
        return Cell::Null;
    }
    let class = if class == Class::Any {
        [Class::Int, Class::Real, Class::Text, Class::Blob][rng.random_range(0..4)]
    } else {
        class
    };
    match class {
        Class::Int => Cell::Int(random_int(rng)),
        Class::Real => Cell::Real(random_real(rng)),
        Class::Text => Cell::Text(text_edge(rng)),
        _ => {
            let n = [0, 1, 16, 300][rng.random_range(0..4)];
            Cell::Blob((0..n).map(|_| rng.random()).collect())
        }
    }
}

/// A value of key part `part` for row `i`: part 0 is distinct per row; others repeat.
fn key_value(class: Class, part: usize, i: usize, salt: u64) -> Cell {
    let i = i as i64;
    let v = if part == 0 {
        i
    } else {
        (i * 7 + part as i64) % 3
    };
    match class {
        Class::Int => Cell::Int(if part == 0 {
            // Spread over the whole range, distinct, in an order that is not insertion order.
            (v * 2_654_435_761 + salt as i64 % 1000).wrapping_mul(if v % 2 == 0 { 1 } else { -1 })
        } else {
            v
        }),
        Class::Real => Cell::Real(v as f64 + 0.5),
        Class::Text => Cell::Text(format!("k{v} é'\"{}", salt % 7).into_bytes()),
        Class::Blob => Cell::Blob(vec![(v % 251) as u8, (v / 251) as u8, 0]),
        Class::Any => match v.rem_euclid(3) {
            0 => Cell::Int(v * 3),
            1 => Cell::Text(format!("t{v}").into_bytes()),
            _ => Cell::Blob(vec![v as u8, (v >> 8) as u8]),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Generating a database.

struct Database {
    tables: Vec<Tbl>,
    /// Indexes, views, triggers, FTS5: created after the tables are filled.
    after: Vec<String>,
}

// Tables refer to each other by index, so loops run over indexes.
#[allow(clippy::needless_range_loop)]
fn generate(k: &Knobs) -> Database {
    let mut rng = StdRng::seed_from_u64(k.seed);
    let mut names = Names::new(k.odd_names);
    let mut tables: Vec<Tbl> = Vec::new();
    let mut col_names: Vec<Names> = Vec::new();
    let n_tables = k.tables;
    // Tables and their keys.
    for t in 0..n_tables {
        let strict = k.strict && rng.random_bool(0.5);
        let kind = match rng.random_range(0..10) {
            0..=1 => Kind::Rowid,
            2..=5 => Kind::Alias,
            6..=7 => Kind::RowidKeyed,
            _ if k.without_rowid => Kind::WithoutRowid,
            _ => Kind::Alias,
        };
        let kind = if kind == Kind::Rowid && t == 0 && n_tables > 1 {
            Kind::Alias
        } else {
            kind
        };
        let mut cols = Vec::new();
        let mut names_of_table = Names::new(k.odd_names);
        let key_parts = match kind {
            Kind::Rowid => 0,
            Kind::Alias => 1,
            Kind::RowidKeyed => rng.random_range(1..=2),
            Kind::WithoutRowid => {
                if rng.random_bool(0.3) {
                    rng.random_range(1..=12)
                } else {
                    rng.random_range(1..=3)
                }
            }
        };
        for part in 0..key_parts {
            let class = if kind == Kind::Alias {
                Class::Int
            } else {
                random_class(&mut rng)
            };
            let decl = if kind == Kind::Alias {
                "INTEGER".to_string()
            } else {
                declared(&mut rng, strict, class)
            };
            cols.push(Col {
                name: names_of_table.fresh(&mut rng, "key"),
                decl,
                class,
                not_null: true,
                role: Role::Key(part),
                extra: String::new(),
            });
        }
        let autoincrement = kind == Kind::Alias && rng.random_bool(0.25);
        tables.push(Tbl {
            name: names.fresh(&mut rng, "table"),
            kind,
            strict,
            autoincrement,
            keys: (0..key_parts).collect(),
            cols,
            fks: Vec::new(),
            checks: Vec::new(),
            rows: rng.random_range(0..=k.max_rows),
            data: Vec::new(),
        });
        col_names.push(names_of_table);
    }

    // Foreign keys: to earlier tables (chains, diamonds), and with `cycles` to itself and later
    // tables.
    for t in 0..n_tables {
        let n_fks = rng.random_range(0..=3usize);
        for _ in 0..n_fks {
            let candidates: Vec<usize> = (0..n_tables)
                .filter(|&p| tables[p].is_parent() && (k.cycles || p < t))
                .collect();
            if candidates.is_empty() || tables[t].cols.len() > 90 {
                break;
            }
            let parent = candidates[rng.random_range(0..candidates.len())];
            let not_null = k.not_null_keys && rng.random_bool(0.6);
            let parent_keys: Vec<(Class, String)> = tables[parent]
                .keys
                .iter()
                .map(|&c| {
                    (
                        tables[parent].cols[c].class,
                        tables[parent].cols[c].decl.clone(),
                    )
                })
                .collect();
            let fk = tables[t].fks.len();
            let mut cols = Vec::new();
            for (part, (class, decl)) in parent_keys.into_iter().enumerate() {
                let decl = if tables[t].strict && !tables[parent].strict {
                    // A STRICT table takes only its own type names.
                    declared(&mut rng, true, class)
                } else if !tables[t].strict && decl.is_empty() {
                    decl
                } else if tables[t].strict {
                    declared(&mut rng, true, class)
                } else {
                    decl
                };
                let name = col_names[t].fresh(&mut rng, "ref");
                tables[t].cols.push(Col {
                    name,
                    decl,
                    class,
                    not_null,
                    role: Role::Fk { fk, part },
                    extra: String::new(),
                });
                cols.push(tables[t].cols.len() - 1);
            }
            let actions = [
                "",
                " ON DELETE CASCADE",
                " ON DELETE SET NULL",
                " ON DELETE RESTRICT",
                " ON UPDATE CASCADE",
                " ON DELETE NO ACTION",
            ];
            let mut tail = actions[rng.random_range(0..actions.len())].to_string();
            if rng.random_bool(0.3) {
                tail.push_str(" DEFERRABLE INITIALLY DEFERRED");
            }
            tables[t].fks.push(Fk {
                parent,
                cols,
                not_null,
                unique: k.not_null_keys && rng.random_bool(0.2),
                name_parent_columns: rng.random_bool(0.5),
                tail,
            });
        }
    }

    // Data columns, copies under CHECKs, generated columns.
    for t in 0..n_tables {
        let want = rng.random_range(1..=k.max_columns.max(1));
        while tables[t].cols.len() < want.min(96) {
            let class = random_class(&mut rng);
            let strict = tables[t].strict;
            let decl = declared(&mut rng, strict, class);
            let not_null = rng.random_bool(0.15);
            let mut extra = String::new();
            if class == Class::Text && rng.random_bool(0.2) {
                extra.push_str(" COLLATE NOCASE");
            }
            if rng.random_bool(0.1) {
                extra.push_str(" DEFAULT 42");
            }
            let name = col_names[t].fresh(&mut rng, "col");
            tables[t].cols.push(Col {
                name,
                decl,
                class,
                not_null,
                role: Role::Data,
                extra,
            });
        }
        if k.extras {
            // A copy of a key column, tied to it by a CHECK: a placeholder breaks it.
            let fk_cols: Vec<usize> = (0..tables[t].cols.len())
                .filter(|&c| matches!(tables[t].cols[c].role, Role::Fk { part: 0, .. }))
                .collect();
            for c in fk_cols {
                if tables[t].cols.len() >= 98 || !rng.random_bool(0.5) {
                    continue;
                }
                let of = tables[t].cols[c].clone();
                let name = col_names[t].fresh(&mut rng, "copy");
                tables[t]
                    .checks
                    .push(format!("CHECK ({} IS {})", quote(&of.name), quote(&name)));
                tables[t].cols.push(Col {
                    name,
                    decl: of.decl.clone(),
                    class: of.class,
                    not_null: false,
                    role: Role::Copy(c),
                    extra: String::new(),
                });
            }
            let data: Vec<usize> = (0..tables[t].cols.len())
                .filter(|&c| tables[t].cols[c].role == Role::Data)
                .collect();
            if !data.is_empty() && tables[t].cols.len() < 99 && rng.random_bool(0.4) {
                let of = quote(&tables[t].cols[data[rng.random_range(0..data.len())]].name);
                let (decl, expr) = match rng.random_range(0..3) {
                    0 => ("TEXT", format!("typeof({of}) || 'x'")),
                    1 => ("INTEGER", format!("length({of})")),
                    _ => ("TEXT", format!("coalesce(typeof({of}), 'none')")),
                };
                let stored = if rng.random_bool(0.5) {
                    "STORED"
                } else {
                    "VIRTUAL"
                };
                let name = col_names[t].fresh(&mut rng, "gen");
                tables[t].cols.push(Col {
                    name,
                    decl: decl.into(),
                    class: Class::Any,
                    not_null: false,
                    role: Role::Generated,
                    extra: format!(" GENERATED ALWAYS AS ({expr}) {stored}"),
                });
            }
            if !data.is_empty() && rng.random_bool(0.3) {
                let of = quote(&tables[t].cols[data[0]].name);
                tables[t]
                    .checks
                    .push(format!("CHECK (typeof({of}) <> 'unknown')"));
            }
        }
    }

    // Row counts: a table referred to by a NOT NULL key of a table with rows has rows.
    if k.max_rows > 0 {
        loop {
            let mut changed = false;
            for t in 0..n_tables {
                if tables[t].rows == 0 {
                    continue;
                }
                for f in 0..tables[t].fks.len() {
                    let p = tables[t].fks[f].parent;
                    if tables[t].fks[f].not_null && tables[p].rows == 0 {
                        tables[p].rows = 1;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    } else {
        for t in &mut tables {
            t.rows = 0;
        }
    }
    // A UNIQUE key needs a parent row for each child row.
    for t in 0..n_tables {
        for f in 0..tables[t].fks.len() {
            let p = tables[t].fks[f].parent;
            if tables[t].fks[f].unique && tables[t].rows > tables[p].rows {
                tables[t].fks[f].unique = false;
            }
        }
    }

    // Rows: keys, data, then foreign keys from the parents' keys.
    let mut big_budget = if k.big_values { 3 } else { 0 };
    for t in 0..n_tables {
        let salt = rng.random::<u64>();
        let rows = tables[t].rows;
        let mut data = Vec::with_capacity(rows);
        for i in 0..rows {
            let mut row = Vec::with_capacity(tables[t].cols.len());
            for c in &tables[t].cols {
                row.push(match c.role {
                    Role::Key(part) => key_value(c.class, part, i, salt),
                    Role::Data => value_of(&mut rng, c.class, c.not_null),
                    _ => Cell::Null,
                });
            }
            data.push(row);
        }
        if big_budget > 0 && rows > 0 && rng.random_bool(0.5) {
            let blobs: Vec<usize> = (0..tables[t].cols.len())
                .filter(|&c| {
                    tables[t].cols[c].role == Role::Data
                        && matches!(
                            tables[t].cols[c].class,
                            Class::Blob | Class::Any | Class::Text
                        )
                })
                .collect();
            if let Some(&c) = blobs.first() {
                big_budget -= 1;
                let r = rng.random_range(0..rows);
                let others: usize =
                    data[r].iter().map(Cell::size).sum::<usize>() - data[r][c].size();
                let size = rng.random_range(
                    100_000
                        ..=1_990_000usize
                            .saturating_sub(others + 200 * tables[t].cols.len())
                            .max(100_001),
                );
                data[r][c] = if tables[t].cols[c].class == Class::Text {
                    Cell::Text((0..size).map(|i| b"abc\0\xff"[i % 5]).collect())
                } else {
                    Cell::Blob((0..size).map(|_| rng.random()).collect())
                };
            }
        }
        tables[t].data = data;
    }
    for t in 0..n_tables {
        for f in 0..tables[t].fks.len() {
            let fk = tables[t].fks[f].clone();
            let parent_rows = tables[fk.parent].rows;
            let parent_keys: Vec<Vec<Cell>> = (0..parent_rows)
                .map(|r| {
                    tables[fk.parent]
                        .keys
                        .iter()
                        .map(|&c| tables[fk.parent].data[r][c].clone())
                        .collect()
                })
                .collect();
            let mut order: Vec<usize> = (0..parent_rows).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for i in 0..tables[t].rows {
                let null = parent_rows == 0 || (!fk.not_null && rng.random_bool(0.2));
                let pick = if fk.unique {
                    order[i]
                } else {
                    rng.random_range(0..parent_rows.max(1))
                };
                for (part, &c) in fk.cols.iter().enumerate() {
                    tables[t].data[i][c] = if null {
                        Cell::Null
                    } else {
                        parent_keys[pick][part].clone()
                    };
                }
            }
        }
        for c in 0..tables[t].cols.len() {
            if let Role::Copy(of) = tables[t].cols[c].role {
                for i in 0..tables[t].rows {
                    tables[t].data[i][c] = tables[t].data[i][of].clone();
                }
            }
        }
    }

    // Objects created after the data.
    let mut after = Vec::new();
    if k.extras {
        for t in 0..n_tables {
            let tbl = &tables[t];
            let data: Vec<&Col> = tbl.cols.iter().filter(|c| c.role == Role::Data).collect();
            if data.is_empty() {
                continue;
            }
            let c = quote(&data[rng.random_range(0..data.len())].name);
            let table = quote(&tbl.name);
            match rng.random_range(0..4) {
                0 => after.push(format!(
                    "CREATE INDEX {} ON {table} ({c} DESC)",
                    quote(&names.fresh(&mut rng, "index"))
                )),
                1 => after.push(format!(
                    "CREATE INDEX {} ON {table} (length({c})) WHERE {c} IS NOT NULL",
                    quote(&names.fresh(&mut rng, "index"))
                )),
                2 if !tbl.keys.is_empty() => after.push(format!(
                    "CREATE UNIQUE INDEX {} ON {table} ({}, {c})",
                    quote(&names.fresh(&mut rng, "index")),
                    quote(&tbl.cols[tbl.keys[0]].name)
                )),
                _ => {}
            }
            if rng.random_bool(0.4) {
                after.push(format!(
                    "CREATE VIEW {} AS SELECT {c} AS \"value\", typeof({c}) AS \"type\" FROM {table} WHERE {c} IS NOT NULL",
                    quote(&names.fresh(&mut rng, "view"))
                ));
            }
            if rng.random_bool(0.3) {
                let other = &tables[rng.random_range(0..n_tables)];
                if let Some(target) = other.cols.iter().find(|c| c.role == Role::Data) {
                    after.push(format!(
                        "CREATE TRIGGER {} AFTER INSERT ON {table} BEGIN \
                         INSERT INTO {} ({}) VALUES (NEW.{c}); \
                         UPDATE {table} SET {c} = {c} WHERE 0; END",
                        quote(&names.fresh(&mut rng, "trigger")),
                        quote(&other.name),
                        quote(&target.name)
                    ));
                }
            }
        }
        if rng.random_bool(0.4) {
            let name = quote(&names.fresh(&mut rng, "search"));
            after.push(format!(
                "CREATE VIRTUAL TABLE {name} USING fts5(title, body)"
            ));
            for i in 0..rng.random_range(0..40) {
                after.push(format!(
                    "INSERT INTO {name} (rowid, title, body) VALUES ({}, 'title {i} ünï', 'body of row {i}, words ' || {i} * 7)",
                    i * 3 + 1
                ));
            }
        }
        // External content over a table with an INTEGER PRIMARY KEY and a TEXT column.
        if let Some(t) = tables.iter().find(|t| {
            t.kind == Kind::Alias
                && t.cols
                    .iter()
                    .any(|c| c.role == Role::Data && c.class == Class::Text)
        }) {
            if rng.random_bool(0.4) {
                let text = t
                    .cols
                    .iter()
                    .find(|c| c.role == Role::Data && c.class == Class::Text)
                    .expect("found");
                let name = names.fresh(&mut rng, "external");
                after.push(format!(
                    "CREATE VIRTUAL TABLE {} USING fts5({}, content={}, content_rowid={})",
                    quote(&name),
                    quote(&text.name),
                    quote_literal(&t.name),
                    quote_literal(&t.cols[t.keys[0]].name)
                ));
                after.push(format!(
                    "INSERT INTO {q}({q}) VALUES ('rebuild')",
                    q = quote(&name)
                ));
            }
        }
    }
    // The planner's statistics, as applications leave them (`ANALYZE`, `PRAGMA optimize`), in
    // half the cases; drawn last, so a case's other choices stay what its seed made them. The
    // SQLite here writes `sqlite_stat4` too, which D1 lacks: dropped, as a SQLite built without
    // SQLITE_ENABLE_STAT4 (most) never makes it.
    if rng.random_bool(0.5) {
        after.push("ANALYZE".into());
        after.push("DROP TABLE IF EXISTS sqlite_stat4".into());
    }
    Database { tables, after }
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn create_table_sql(t: &Tbl, tables: &[Tbl]) -> String {
    let mut defs: Vec<String> = Vec::new();
    for c in &t.cols {
        let mut def = quote(&c.name);
        if !c.decl.is_empty() {
            def.push(' ');
            def.push_str(&c.decl);
        }
        if t.kind == Kind::Alias && c.role == Role::Key(0) {
            def.push_str(" PRIMARY KEY");
            if t.autoincrement {
                def.push_str(" AUTOINCREMENT");
            }
        }
        if c.not_null && c.role != Role::Generated {
            def.push_str(" NOT NULL");
        }
        def.push_str(&c.extra);
        defs.push(def);
    }
    if matches!(t.kind, Kind::RowidKeyed | Kind::WithoutRowid) {
        let keys: Vec<String> = t.keys.iter().map(|&k| quote(&t.cols[k].name)).collect();
        defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    }
    for fk in &t.fks {
        let cols: Vec<String> = fk.cols.iter().map(|&c| quote(&t.cols[c].name)).collect();
        let parent = &tables[fk.parent];
        let mut def = format!(
            "FOREIGN KEY ({}) REFERENCES {}",
            cols.join(", "),
            quote(&parent.name)
        );
        if fk.name_parent_columns {
            let pcols: Vec<String> = parent
                .keys
                .iter()
                .map(|&k| quote(&parent.cols[k].name))
                .collect();
            def.push_str(&format!(" ({})", pcols.join(", ")));
        }
        def.push_str(&fk.tail);
        defs.push(def);
        if fk.unique {
            defs.push(format!("UNIQUE ({})", cols.join(", ")));
        }
    }
    defs.extend(t.checks.iter().cloned());
    let mut options = Vec::new();
    if t.kind == Kind::WithoutRowid {
        options.push("WITHOUT ROWID");
    }
    if t.strict {
        options.push("STRICT");
    }
    format!(
        "CREATE TABLE {} (\n  {}\n){}",
        quote(&t.name),
        defs.join(",\n  "),
        if options.is_empty() {
            String::new()
        } else {
            format!(" {}", options.join(", "))
        }
    )
}

/// Writes the database of `knobs` to `path`; checks it is consistent (keys, integrity).
fn build(knobs: &Knobs, path: &Path) -> Result<String, String> {
    build_sqlite(knobs, path).map_err(|e| match e {
        Built::Sql(e) => e.to_string(),
        Built::At(text) => text,
    })
}

enum Built {
    Sql(rusqlite::Error),
    At(String),
}

impl From<rusqlite::Error> for Built {
    fn from(e: rusqlite::Error) -> Built {
        Built::Sql(e)
    }
}

fn build_sqlite(knobs: &Knobs, path: &Path) -> Result<String, Built> {
    let db = generate(knobs);
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    let mut ddl = String::new();
    let tx = conn.transaction()?;
    for t in &db.tables {
        let sql = create_table_sql(t, &db.tables);
        tx.execute_batch(&sql)
            .map_err(|e| Built::At(annotate(e, &sql)))?;
        let _ = writeln!(ddl, "{sql};");
    }
    for t in &db.tables {
        let inserted: Vec<usize> = (0..t.cols.len())
            .filter(|&c| t.cols[c].role != Role::Generated)
            .collect();
        if inserted.is_empty() || t.data.is_empty() {
            continue;
        }
        let names: Vec<String> = inserted.iter().map(|&c| quote(&t.cols[c].name)).collect();
        let marks = vec!["?"; inserted.len()].join(",");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({marks})",
            quote(&t.name),
            names.join(",")
        );
        let mut stmt = tx.prepare(&sql)?;
        for row in &t.data {
            let cells: Vec<&Cell> = inserted.iter().map(|&c| &row[c]).collect();
            stmt.execute(rusqlite::params_from_iter(cells))
                .map_err(|e| {
                    let cells: Vec<String> = row
                        .iter()
                        .map(|c| format!("{c:?}").chars().take(40).collect())
                        .collect();
                    Built::At(annotate(e, &format!("{sql} -- {cells:?}")))
                })?;
        }
    }
    for t in &db.tables {
        if t.autoincrement && !t.data.is_empty() {
            tx.execute(
                "UPDATE sqlite_sequence SET seq = seq + 17 WHERE name = ?1",
                [&t.name],
            )?;
        }
    }
    for sql in &db.after {
        tx.execute_batch(sql)
            .map_err(|e| Built::At(annotate(e, sql)))?;
        let _ = writeln!(ddl, "{sql};");
    }
    tx.commit()?;
    let violations: i64 =
        conn.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })?;
    assert_eq!(
        violations, 0,
        "the generator made a database with foreign-key violations:\n{ddl}"
    );
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    assert_eq!(ok, "ok");
    Ok(ddl)
}

fn annotate(e: rusqlite::Error, sql: &str) -> String {
    let short: String = sql.chars().take(3000).collect();
    format!("{e}\n  in: {short}")
}

// ---------------------------------------------------------------------------------------------
// Running cases against the local D1.

/// Local D1 servers with fresh databases: a new server when one runs out. Two kinds: workerd
/// alone, and workerd behind the front end delaying each request by 0 to `JITTER_MS` (so the
/// requests a run keeps in flight reach D1 in another order than they were sent, as over a
/// network: a write sent before another may be executed after it).
#[derive(Default)]
struct Pool {
    servers: [Option<LocalD1>; 2],
    next: [usize; 2],
    generation: [usize; 2],
    generations: usize,
}

const DATABASES_PER_SERVER: usize = 48;
const JITTER_MS: u32 = 30;

impl Pool {
    fn database(&mut self, jittered: bool) -> (&LocalD1, String) {
        let k = jittered as usize;
        if self.servers[k].is_none() || self.next[k] == DATABASES_PER_SERVER {
            self.servers[k] = None;
            self.generations += 1;
            self.generation[k] = self.generations;
            let ids: Vec<String> = (0..DATABASES_PER_SERVER)
                .map(|i| format!("gen{}-{i}", self.generations))
                .collect();
            self.servers[k] = Some(if jittered {
                LocalD1::start(&ids, Some(&format!("jitter_ms={JITTER_MS}")))
            } else {
                LocalD1::unlogged(&ids)
            });
            self.next[k] = 0;
        }
        self.next[k] += 1;
        let id = format!("gen{}-{}", self.generation[k], self.next[k] - 1);
        (self.servers[k].as_ref().expect("started"), id)
    }
}

/// The `sqlite_master` of a D1 database file, without D1's own objects and `sqlite_sequence`'s
/// table (which D1 may hold from its own bookkeeping).
fn schema_without_d1s(path: &Path) -> Vec<(String, String, String, Option<String>)> {
    schema_of(path)
}

/// One case: build, migrate with full validation, roll back with full validation, compare.
fn run_case(knobs: &Knobs, pool: &Mutex<Pool>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let source = dir.path().join("source.sqlite");
    let ddl = build(knobs, &source).map_err(|e| format!("building the source: {e}"))?;
    let fail = |what: &str, detail: String| {
        Err(format!(
            "{what}\n{detail}\nschema:\n{ddl}\nreplay: D1M_FUZZ_REPLAY={} cargo test --test tests random_schemas -- --nocapture",
            knobs.replay_text()
        ))
    };
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    // Half the cases reach D1 through a network's jitter.
    let (d1, db) = pool.database(knobs.seed % 2 == 1);
    let common = |run: Run| {
        run.env("MIGRATION_VALIDATE_ALL_ROWS", "true")
            .env("MIGRATION_REQUEST_BYTES", "100000")
            .env("MIGRATION_BATCH_SIZE", "64")
            .env("MIGRATION_QUIET", "true")
    };
    let out = common(Run::new(d1, &db, &source))
        .env("MIGRATION_STATE_DIR", dir.path().join("state-forward"))
        .output();
    if !out.status.success() {
        return fail(
            "the forward run failed",
            String::from_utf8_lossy(&out.stderr).into(),
        );
    }
    let diff = exact_diff(&source, d1.file(&db));
    if !diff.is_empty() {
        return fail("D1 differs from the source", diff.join("\n"));
    }
    if let Err(e) = same_fts5_indexes(&source, d1.file(&db), |check| {
        let (status, body) = d1.post(&db, serde_json::json!({ "sql": check }), Some(TOKEN));
        (status == 200)
            .then_some(())
            .ok_or_else(|| body.to_string())
    }) {
        return fail("D1's FTS5 index differs from the source's", e);
    }
    let (a, b) = (schema_of(&source), schema_without_d1s(d1.file(&db)));
    if a != b {
        return fail(
            "D1's sqlite_master differs",
            format!("source {a:#?}\nD1 {b:#?}"),
        );
    }
    let back = dir.path().join("back.sqlite");
    let out = common(Run::new(d1, &db, &back))
        .env("MIGRATION_DIRECTION", "d1-to-sqlite")
        .env("MIGRATION_STATE_DIR", dir.path().join("state-rollback"))
        .output();
    if !out.status.success() {
        return fail(
            "the rollback failed",
            String::from_utf8_lossy(&out.stderr).into(),
        );
    }
    let diff = exact_diff(&source, &back);
    if !diff.is_empty() {
        return fail(
            "the rolled-back file differs from the source",
            diff.join("\n"),
        );
    }
    if let Err(e) = same_fts5_indexes(&source, &back, |check| integrity_check(&back, check)) {
        return fail("the rolled-back FTS5 index differs from the source's", e);
    }
    // The tool's own indexes, built the same way on D1 and in the file, are byte-identical:
    // the rolled-back file is D1's copy, segments included.
    let diff = sqldiff(d1.file(&db), &back);
    if !diff.is_empty() {
        return fail("the rolled-back file differs from D1", diff.join("\n"));
    }
    let c = schema_of(&back);
    if a != c {
        return fail(
            "the rolled-back sqlite_master differs",
            format!("source {a:#?}\nback {c:#?}"),
        );
    }
    Ok(())
}

/// The FTS5 tables of a database file.
fn fts5_tables(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND sql LIKE 'CREATE VIRTUAL TABLE%' AND sql LIKE '%USING fts5%' ORDER BY name",
        )
        .unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

/// `sqldiff` of two files, every table compared row by row, except the segments of FTS5
/// indexes (`<name>_data`, `<name>_idx`), which `same_fts5_indexes` compares by content. D1
/// refuses writes to shadow tables, so its index is what FTS5 builds from the rows, and how
/// FTS5 splits an index into segments records the source's history (see README, "FTS5
/// indexes"). Their `_docsize`, `_config` and `_content` tables are compared exactly.
fn exact_diff(a: &Path, b: &Path) -> Vec<String> {
    let segments: Vec<String> = fts5_tables(a)
        .iter()
        .flat_map(|t| [format!("{t}_data"), format!("{t}_idx")])
        .flat_map(|t| [format!("\"{}\"", t.replace('"', "\"\"")), t])
        .collect();
    let of_segments = |line: &str| {
        segments.iter().any(|t| {
            [
                format!("UPDATE {t} SET "),
                format!("DELETE FROM {t} WHERE "),
                format!("INSERT INTO {t}("),
                format!("INSERT INTO {t} "),
            ]
            .iter()
            .any(|p| line.starts_with(p.as_str()))
        })
    };
    sqldiff(a, b)
        .into_iter()
        .filter(|l| !of_segments(l))
        .collect()
}

/// Every FTS5 index of `b` holds what the source's holds: FTS5's own `'integrity-check'` (rank
/// 1: an external content table's rows included) passes on both, run on `b` by `check`, and
/// every term's every occurrence (term, row, column, offset: fts5vocab's `instance` rows, which
/// decide every MATCH answer) is the same.
fn same_fts5_indexes(
    a: &Path,
    b: &Path,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(), String> {
    for table in fts5_tables(a) {
        let q = quote(&table);
        let sql = format!("INSERT INTO {q}({q}, rank) VALUES ('integrity-check', 1)");
        integrity_check(a, &sql).map_err(|e| format!("the source's {table}: {e}"))?;
        check(&sql).map_err(|e| format!("{table}: {e}"))?;
        let (x, y) = (instances(a, &table), instances(b, &table));
        if x != y {
            let first = x.iter().zip(&y).position(|(p, q)| p != q);
            return Err(format!(
                "{table}: {} occurrences against {}; first difference at {first:?}",
                x.len(),
                y.len()
            ));
        }
    }
    Ok(())
}

fn integrity_check(path: &Path, sql: &str) -> Result<(), String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.execute_batch(sql).map_err(|e| e.to_string())
}

/// An FTS5 table's index as (term, rowid, column, offset), in order.
fn instances(path: &Path, table: &str) -> Vec<(String, i64, String, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE temp.index_instances USING fts5vocab(main, {}, 'instance')",
        quote_literal(table)
    ))
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT term, doc, col, offset FROM temp.index_instances")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_legal_databases_round_trip_exactly() {
    let pool = Mutex::new(Pool::default());
    if let Ok(replay) = std::env::var("D1M_FUZZ_REPLAY") {
        let knobs = Knobs::parse(&replay);
        eprintln!("replaying {knobs:?}");
        if let Err(e) = run_case(&knobs, &pool) {
            panic!("{e}");
        }
        return;
    }
    let cases = env_number("D1M_FUZZ_CASES", 32) as u32;
    let seed = env_number("D1M_FUZZ_SEED", 0x5eed);
    let budget = Duration::from_secs(env_number("D1M_FUZZ_SECONDS", 150));
    let verbose = std::env::var("D1M_FUZZ_VERBOSE").is_ok();
    eprintln!("random schemas: {cases} cases from D1M_FUZZ_SEED={seed}, within {budget:?}");
    let started = Instant::now();
    let ran = std::sync::atomic::AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: env_number("D1M_FUZZ_SHRINK", 48) as u32,
        ..Config::default()
    });
    let result = runner.run(&knobs(), |k| {
        if started.elapsed() > budget {
            return Ok(());
        }
        let n = ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if verbose {
            eprintln!(
                "case {n} ({:.0} s): {}",
                started.elapsed().as_secs_f64(),
                k.replay_text()
            );
        }
        run_case(&k, &pool).map_err(TestCaseError::fail)
    });
    eprintln!(
        "random schemas: {} cases run in {:.0} s",
        ran.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, minimal)) => panic!(
            "a random database did not round-trip (D1M_FUZZ_SEED={seed}); smallest case found: {minimal:?}\n{reason}"
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_generator_is_deterministic_and_every_database_it_makes_is_legal() {
    // Cheap, without D1: 40 databases built twice from the same knobs are byte-identical in
    // schema and data, and SQLite accepts each (keys consistent, integrity ok).
    let mut runner = TestRunner::new(Config {
        cases: 40,
        rng_seed: RngSeed::Fixed(7),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&knobs(), |mut k| {
            k.big_values = false;
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a.sqlite"), dir.path().join("b.sqlite"));
            let ddl_a = build(&k, &a).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let ddl_b = build(&k, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ddl_a, ddl_b);
            prop_assert!(sqldiff(&a, &b).is_empty());
            Ok(())
        })
        .unwrap();
}

/// Found by the random schemas: an external-content FTS5 index the source rebuilt while its
/// content table had an index covering the indexed column. FTS5's 'rebuild' reads the content
/// table in whatever order the query planner picks (here that index's), and starts a new segment
/// each time the rowid goes down: four segments in the source, one on D1 and in the rolled-back
/// file, where the tool rebuilds. Same rows, same terms at the same places: the copy is exact
/// everywhere else and the indexes hold the same occurrences and pass FTS5's integrity check.
#[test]
fn an_fts5_index_the_source_split_into_segments_round_trips_by_content() {
    let knobs = Knobs::parse("1638000546042221861,1,54,17,1,0,1,0,1,0,0");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite");
    build(&knobs, &source).unwrap();
    let conn = rusqlite::Connection::open(&source).unwrap();
    let segments: i64 = conn
        .query_row(
            "SELECT count(DISTINCT segid) FROM external160_idx",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(segments > 1, "the source's index holds {segments} segment");
    let pool = Mutex::new(Pool::default());
    if let Err(e) = run_case(&knobs, &pool) {
        panic!("{e}");
    }
}
