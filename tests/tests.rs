//! d1-migrator's integration tests, all against the real local D1 (`scripts/local-d1`).
//!
//! Table of contents:
//! - `local_d1`: the local D1 server speaks D1's REST API, enforces D1's limits, injects faults.
//! - `conformance`: Cloudflare's own clients (the `cloudflare` SDK, wrangler 4) drive the local
//!   D1: queries, raw, databases, import, Time Travel, errors.
//! - `account`: the client finds databases by name, reads, creates and deletes them, takes
//!   Time Travel bookmarks.
//! - `forward`: SQLite → D1 copies are exact (`sqldiff`), under faults too, and bad input is
//!   refused before anything is written.
//! - `existing_schema`: D1's schema made first by the application's migrations (reformatted,
//!   reordered, a column of its own, wrangler's history) is filled as it exists; a table that
//!   does not fit is refused before any write, one line per column.
//! - `import`: MIGRATION_METHOD=import copies exactly with no rows through queries; a killed
//!   run resumes at the next file; a refused file finds its bad row.
//! - `validate`: clean copies pass; each kind of tampering is caught and named.
//! - `rollback`: D1 → SQLite round trips are exact; existing files are refused, completed or
//!   replaced as asked.
//! - `dry_run`: writes nothing; finds each D1 problem by name and key; predicts the real run.
//! - `sync`: only what differs is written, in both directions; foreign keys, large values and
//!   triggers respected; killed syncs converge; the dry run lists and writes nothing.
//! - `fleet`: many databases from one manifest: created by name, copied exactly, a rerun does
//!   nothing, one broken line fails alone, every line checked before any write, fleet rollback.
//! - `interface`: bars on a terminal, plain lines in logs, the summary, `--help`, the report schema.
//! - `checkpoints`: many migrations from one state folder, each with its own checkpoint; a
//!   second run of the same migration at once is refused; an emptied target is copied again.
//! - `resilience`: killed runs resume exactly; bad rows stop the run or go to the reject file;
//!   corrupt and locked sources are refused; the source is never changed; the token never leaks.
//! - `transform`: renamed, dropped, computed and filtered tables and columns arrive as the
//!   transformed source (`sqldiff`), validate, and bad transforms are refused before any write.
//! - `shapes`: NOT NULL foreign-key cycles and tables at the column limit migrate, validate in
//!   full and roll back exactly.
//! - `random_schemas`: random legal databases (proptest) migrate, validate in full and roll back
//!   `sqldiff`-identical, with the same `sqlite_master`.
//! - `sources`: sources a new user brings that the rest lacked (INTEGER PRIMARY KEY DESC, columns
//!   named like the rowid, UTF-16, odd page sizes, R*Tree, user_version, an application writing
//!   during the copy): exact copies, or refusals naming the object before any write.
//! - `network`: over a slow network, writes keep more in flight, reads keep pages of several
//!   tables in flight, a 429 holds back the whole run, a request too large is split, the objects
//!   after the data leave guarded before the other requests' answers (and again, after them,
//!   when they overtook one), the tables' requests go right behind the request creating them
//!   and a child's behind its parent's rows (and again, once those are committed, when they
//!   arrived first).

#[path = "suite/harness.rs"]
mod harness;

#[path = "suite/local_d1.rs"]
mod local_d1;

#[path = "suite/conformance.rs"]
mod conformance;

#[path = "suite/account.rs"]
mod account;

#[path = "suite/forward.rs"]
mod forward;

#[path = "suite/existing_schema.rs"]
mod existing_schema;

#[path = "suite/import.rs"]
mod import;

#[path = "suite/validate.rs"]
mod validate;

#[path = "suite/rollback.rs"]
mod rollback;

#[path = "suite/checkpoints.rs"]
mod checkpoints;

#[path = "suite/resilience.rs"]
mod resilience;

#[path = "suite/dry_run.rs"]
mod dry_run;

#[path = "suite/sync.rs"]
mod sync;

#[path = "suite/fleet.rs"]
mod fleet;

#[path = "suite/interface.rs"]
mod interface;

#[path = "suite/network.rs"]
mod network;
#[path = "suite/shapes.rs"]
mod shapes;
#[path = "suite/sources.rs"]
mod sources;
#[path = "suite/transform.rs"]
mod transform;

#[path = "suite/random_schemas.rs"]
mod random_schemas;
