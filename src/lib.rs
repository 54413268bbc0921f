//! d1-migrator: moves a whole SQLite database into Cloudflare D1 and back again, exactly.
//!
//! Stages, one module each: `discover` (catalog) → `transform` (MIGRATION_TRANSFORM: the schema
//! D1 receives, and the reads that reshape rows) → `plan` (load order) → `source` (reading
//! batches) → `pack` (rows to statements under D1's limits) → `produce` (a table's requests) →
//! `load` (the D1 sink: workers, senders, checkpoints; `compact` for a small database into an
//! empty one, tables sharing requests; `bundle` sends the small tables first, together) over `d1` (HTTP with retries), with
//! `target` holding the target's schema and `fit` comparing the source's with the schema D1
//! already has; then `validate`. `migrate` wires the forward run,
//! `dryrun` the same pipeline with a counting end, `rollback` the reverse one; `config` reads
//! the environment, `report` and `progress` tell what happened. `run` picks the run the
//! configuration asks for; `fleet` runs many (MIGRATION_MANIFEST), each through `run`.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod compact;
pub mod compat;
pub mod config;
pub mod d1;
pub mod diff;
pub mod discover;
pub mod dryrun;
pub mod error;
pub mod fit;
pub mod fixture;
pub mod fleet;
pub mod flow;
pub mod import;
pub mod load;
pub mod log;
pub mod migrate;
pub mod pack;
pub mod plan;
pub mod produce;
pub mod progress;
pub mod remote;
pub mod report;
pub mod rollback;
pub mod run;
pub mod send;
pub mod sides;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod sync;
pub mod target;
pub mod transform;
pub mod validate;
pub mod value;
pub mod wrangler;

pub use run::{run, run_with, set_log_level, Outcome};
