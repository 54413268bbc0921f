//! The two sides of a run that compares, by direction: the SQLite file and the D1 database, each
//! discovered and labelled source or target. Validation and sync both start here.

use crate::config::{Config, Direction};
use crate::d1::D1Client;
use crate::discover::{discover, discover_expecting, select_tables, Schema};
use crate::error::Result;
use crate::remote::{D1Catalog, D1Side};
use crate::source::{open_read_only, SqliteCatalog, SqliteSide};
use crate::transform::source_schema;
use crate::validate::{Options, RowSide};

pub struct Sides<'a> {
    pub sqlite: SqliteSide,
    pub d1: D1Side<'a>,
    /// The source's schema, less the tables the configuration leaves out.
    pub source_schema: Schema,
    pub target_schema: Schema,
    pub direction: Direction,
}

impl<'a> Sides<'a> {
    /// Opens the SQLite file read-only, reads both catalogs, and applies `MIGRATION_TABLES` /
    /// `MIGRATION_EXCLUDE_TABLES` to the source (and, forward, `MIGRATION_TRANSFORM`).
    pub fn open(config: &Config, client: &'a D1Client) -> Result<Sides<'a>> {
        let mut sides = Sides::unread(config, client)?;
        let (expected, sequence, statistics) = sides.catalog_wanted();
        let d1_schema = discover_expecting(&D1Catalog(client), &expected, sequence, statistics)?;
        if sides.direction == Direction::SqliteToD1 {
            sides.target_schema = d1_schema;
        } else {
            sides.source_schema = d1_schema;
            select_tables(
                &mut sides.source_schema,
                &config.tables,
                &config.exclude_tables,
            )?;
        }
        Ok(sides)
    }

    /// Both sides with D1's catalog not read yet (its schema empty): forward, validation reads
    /// it along with D1's counts and sampled rows (`validate::validate_along`).
    pub fn unread(config: &Config, client: &'a D1Client) -> Result<Sides<'a>> {
        let forward = config.direction == Direction::SqliteToD1;
        let sqlite_label = if forward {
            "source (SQLite)"
        } else {
            "target (SQLite)"
        };
        let conn = open_read_only(config.source_file())?;
        // Forward, the source is seen as the transform (if any) presents it, tables selected.
        let (sqlite, sqlite_schema) = if forward {
            let transformed = source_schema(&conn, &config.reshape())?;
            let side = SqliteSide::new(config.source_file(), sqlite_label)?
                .reading(transformed.reads())
                .computing(transformed.computed_tables());
            (side, transformed.schema)
        } else {
            (
                SqliteSide::new(&config.sqlite_path, sqlite_label)?,
                discover(&SqliteCatalog(&conn))?,
            )
        };
        let d1 = D1Side {
            client,
            label: if forward {
                "target (D1)"
            } else {
                "source (D1)"
            },
        };
        // The SQLite side's schema stands in the place of its role; D1's is read later.
        let (source_schema, target_schema) = if forward {
            (sqlite_schema, Schema::default())
        } else {
            (Schema::default(), sqlite_schema)
        };
        Ok(Sides {
            sqlite,
            d1,
            source_schema,
            target_schema,
            direction: config.direction,
        })
    }

    /// What D1's catalog is read for (see `discover_expecting`): forward, D1 is expected to hold
    /// the source's tables (their columns are asked for with the catalog's lists, in one round
    /// trip), and its `sqlite_sequence` when the source has one. The planner's statistics are
    /// compared (a warning when they differ): forward, D1's when the source has some (asked for
    /// in the same round trip); back, always (D1's come with its tables' columns).
    pub fn catalog_wanted(&self) -> (Vec<String>, bool, bool) {
        if self.direction != Direction::SqliteToD1 {
            return (Vec::new(), false, true);
        }
        let expected = self
            .source_schema
            .tables
            .iter()
            .map(|t| t.name.clone())
            .collect();
        (
            expected,
            !self.source_schema.sequence.is_empty(),
            !self.source_schema.stat1.is_empty(),
        )
    }

    pub fn source(&self) -> &dyn RowSide {
        match self.direction {
            Direction::SqliteToD1 => &self.sqlite,
            Direction::D1ToSqlite => &self.d1,
        }
    }

    pub fn target(&self) -> &dyn RowSide {
        match self.direction {
            Direction::SqliteToD1 => &self.d1,
            Direction::D1ToSqlite => &self.sqlite,
        }
    }
}

/// What validation (and sync's difference engine) is asked to do.
pub fn options(config: &Config, all_rows: bool) -> Options {
    Options {
        sample_size: config.sample_size,
        seed: config.sample_seed,
        all_rows,
        page: 20_000,
        max_examples: 10,
        segments: config.concurrency,
    }
}
