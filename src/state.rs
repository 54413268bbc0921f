//! Checkpoints of forward runs, in `MIGRATION_STATE_DIR`: per table, the key up to which every
//! row is known to be committed on D1 (a key, never a row offset), how many rows that is at
//! least, and which phases are done.
//!
//! One folder holds the checkpoints of many migrations side by side, one file each, named after
//! the migration's identity (the source file, the API, account and database it goes to), so
//! staging and production, or one database per tenant, run from the same folder without seeing
//! each other's. A run holds an OS lock on its migration's lock file while it runs: a second run
//! of the same migration at once is refused, and the lock of a killed run goes with its process.
//!
//! A rerun reads the checkpoint and starts each table after its key; rows beyond it that D1
//! already has are skipped by the idempotent inserts, so there is no duplicate and no gap. A
//! checkpoint of the same migration written for another source schema or table selection is
//! refused. The file is replaced atomically (write, then rename), so a kill at any point leaves a
//! readable checkpoint.

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::value::{decode_hex, write_hex, Value};

/// What a checkpoint belongs to; a rerun must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub source: String,
    pub source_schema: String,
    pub api_url: String,
    #[serde(default)]
    pub account_id: String,
    pub database_id: String,
    pub tables: Vec<String>,
    pub exclude_tables: Vec<String>,
    /// The hash of the `MIGRATION_TRANSFORM` file's content; empty without one.
    #[serde(default)]
    pub transform: String,
}

impl Fingerprint {
    /// The fingerprint of `config`'s migration, its source's schema summed up as `source_schema`.
    pub fn of(config: &crate::config::Config, source_schema: String) -> Fingerprint {
        Fingerprint {
            source: std::fs::canonicalize(&config.sqlite_path)
                .unwrap_or_else(|_| config.sqlite_path.clone())
                .display()
                .to_string(),
            source_schema,
            api_url: config.endpoint.api_url.clone(),
            account_id: config.endpoint.account_id.clone(),
            database_id: config.endpoint.database_id.clone(),
            tables: config.tables.clone(),
            exclude_tables: config.exclude_tables.clone(),
            transform: config
                .transform
                .as_ref()
                .map(|t| t.digest().to_string())
                .unwrap_or_default(),
        }
    }

    /// Which migration this is: the source file and the API, account and database it goes to.
    /// Names its checkpoint file; the rest of the fingerprint must then match.
    pub fn migration_id(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [
            &self.source,
            &self.api_url,
            &self.account_id,
            &self.database_id,
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_hex()[..16].to_string()
    }

    fn same_migration(&self, other: &Fingerprint) -> bool {
        self.migration_id() == other.migration_id()
    }
}

/// A key value as stored in the checkpoint (exact for every type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum StoredValue {
    Null,
    Integer(i64),
    Real(u64),
    Text(String),
    Blob(String),
}

fn store(v: &Value) -> StoredValue {
    let hex = |b: &[u8]| {
        let mut s = String::new();
        write_hex(b, &mut s);
        s
    };
    match v {
        Value::Null => StoredValue::Null,
        Value::Integer(i) => StoredValue::Integer(*i),
        Value::Real(r) => StoredValue::Real(r.to_bits()),
        Value::Text(b) => StoredValue::Text(hex(b)),
        Value::Blob(b) => StoredValue::Blob(hex(b)),
    }
}

fn load(v: &StoredValue) -> Option<Value> {
    Some(match v {
        StoredValue::Null => Value::Null,
        StoredValue::Integer(i) => Value::Integer(*i),
        StoredValue::Real(bits) => Value::Real(f64::from_bits(*bits)),
        StoredValue::Text(h) => Value::Text(decode_hex(h)?),
        StoredValue::Blob(h) => Value::Blob(decode_hex(h)?),
    })
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableState {
    /// Every row up to this key (inclusive) is committed on D1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Vec<StoredValue>>,
    /// At least this many rows of the table are on D1 (rows up to `after`, less rejected ones).
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub inserted: bool,
    #[serde(default)]
    pub deferred_done: bool,
}

impl TableState {
    /// Whether the checkpoint says the table holds something on D1.
    fn has_progress(&self) -> bool {
        self.after.is_some() || self.inserted || self.rows > 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    fingerprint: Fingerprint,
    #[serde(default)]
    tables: BTreeMap<String, TableState>,
    #[serde(default)]
    phases: Vec<String>,
    #[serde(default)]
    complete: bool,
    /// Triggers a sync dropped on the target (name, SQL), to be created again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dropped_triggers: Vec<(String, String)>,
}

/// What one request committed of one table: every row up to `key` (when it carried rows), `rows`
/// of them, and whether they were the table's last (`inserted`).
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub table: String,
    pub key: Option<Vec<Value>>,
    pub rows: u64,
    pub inserted: bool,
}

/// The checkpoint of one run, shared by its workers. Holds its migration's lock until dropped.
pub struct State {
    path: PathBuf,
    inner: Mutex<Checkpoint>,
    _lock: File,
}

/// The file name of the single checkpoint a state folder held before it held one per migration.
const LEGACY: &str = "checkpoint.json";

impl State {
    /// Opens the checkpoint of this migration in `dir`, or starts one, and locks it. Refuses a
    /// migration another run is working on, and a checkpoint of this migration written for
    /// another source schema or table selection.
    pub fn open(dir: &Path, fingerprint: Fingerprint) -> Result<State> {
        State::open_kind(dir, "checkpoint", fingerprint)
    }

    /// Opens the state of this migration named `kind` in `dir` (`checkpoint` for the copy;
    /// a sync keeps its own, `sync`, beside it), and locks it. Every kind takes the
    /// migration's one lock, so a sync and a copy of the same migration refuse each other.
    pub fn open_kind(dir: &Path, kind: &str, fingerprint: Fingerprint) -> Result<State> {
        let id = fingerprint.migration_id();
        let path = dir.join(format!("{kind}-{id}.json"));
        let lock_path = dir.join(format!("checkpoint-{id}.lock"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        create_state_dir(dir)?;
        let lock = lock(&lock_path, &fingerprint)?;
        if kind == "checkpoint" {
            adopt_legacy(dir, &path, &fingerprint)?;
        }
        let checkpoint = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut found: Checkpoint = serde_json::from_str(&text).map_err(|e| {
                    Error::Refused(format!(
                        "the checkpoint {} cannot be read ({e}); remove it to start over",
                        path.display()
                    ))
                })?;
                // A sync's state holds no progress, only the triggers it dropped: those stay
                // to be created again whatever tables or transform this run selects.
                if kind != "checkpoint" && found.fingerprint.same_migration(&fingerprint) {
                    found.fingerprint = fingerprint.clone();
                }
                if found.fingerprint != fingerprint {
                    return Err(Error::Refused(format!(
                        "the checkpoint {} of this migration was written for another run ({}); \
                         remove that file to start this migration over",
                        path.display(),
                        difference(&found.fingerprint, &fingerprint)
                    )));
                }
                found
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint {
                version: 1,
                fingerprint,
                tables: BTreeMap::new(),
                phases: Vec::new(),
                complete: false,
                dropped_triggers: Vec::new(),
            },
            Err(e) => return Err(io(&path)(e)),
        };
        let state = State {
            path,
            inner: Mutex::new(checkpoint),
            _lock: lock,
        };
        state.save()?;
        Ok(state)
    }

    /// Whether the checkpoint of this migration in `dir` says it is complete, read without
    /// taking its lock or writing anything (a hint: [`State::open`] decides).
    pub fn says_complete(dir: &Path, fingerprint: &Fingerprint) -> bool {
        let path = dir.join(format!("checkpoint-{}.json", fingerprint.migration_id()));
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<Checkpoint>(&text).ok())
            .is_some_and(|c| c.complete && &c.fingerprint == fingerprint)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn save(&self) -> Result<()> {
        let checkpoint = self.inner.lock().expect("state lock");
        let text = serde_json::to_string_pretty(&*checkpoint).expect("a checkpoint serialises");
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    fn update(&self, f: impl FnOnce(&mut Checkpoint)) -> Result<()> {
        f(&mut self.inner.lock().expect("state lock"));
        self.save()
    }

    pub fn is_complete(&self) -> bool {
        self.inner.lock().expect("state lock").complete
    }

    pub fn table(&self, name: &str) -> TableState {
        self.inner
            .lock()
            .expect("state lock")
            .tables
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The key after which `table` still has rows to copy.
    pub fn resume_after(&self, name: &str) -> Option<Vec<Value>> {
        self.table(name)
            .after
            .and_then(|k| k.iter().map(load).collect::<Option<Vec<_>>>())
    }

    /// Every row of `name` up to `key` is committed on D1, `rows` more of them than before.
    pub fn advanced(&self, name: &str, key: &[Value], rows: u64) -> Result<()> {
        self.update(|c| {
            let t = c.tables.entry(name.to_string()).or_default();
            t.after = Some(key.iter().map(store).collect());
            t.rows += rows;
        })
    }

    /// Records what one request committed of several tables (tables sharing a request), in one
    /// write of the checkpoint.
    pub fn committed(&self, parts: &[Committed]) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        self.update(|c| {
            for part in parts {
                let t = c.tables.entry(part.table.clone()).or_default();
                if let Some(key) = &part.key {
                    t.after = Some(key.iter().map(store).collect());
                }
                t.rows += part.rows;
                t.inserted |= part.inserted;
            }
        })
    }

    /// The tables the checkpoint says hold rows on D1, with how many at least (0 when only
    /// their being there is known).
    pub fn recorded(&self) -> Vec<(String, u64)> {
        self.inner
            .lock()
            .expect("state lock")
            .tables
            .iter()
            .filter(|(_, t)| t.has_progress())
            .map(|(name, t)| (name.clone(), t.rows))
            .collect()
    }

    /// Forgets what the checkpoint says of `name` (its target no longer holds it): the table is
    /// copied again from its start, and the phases after the data run again.
    pub fn forget(&self, name: &str) -> Result<()> {
        self.update(|c| {
            c.tables.remove(name);
            c.phases.clear();
            c.complete = false;
        })
    }

    pub fn set_inserted(&self, name: &str) -> Result<()> {
        self.update(|c| c.tables.entry(name.to_string()).or_default().inserted = true)
    }

    pub fn set_deferred_done(&self, name: &str) -> Result<()> {
        self.update(|c| c.tables.entry(name.to_string()).or_default().deferred_done = true)
    }

    pub fn phase_done(&self, phase: &str) -> bool {
        self.inner
            .lock()
            .expect("state lock")
            .phases
            .iter()
            .any(|p| p == phase)
    }

    pub fn set_phase_done(&self, phase: &str) -> Result<()> {
        self.update(|c| c.phases.push(phase.to_string()))
    }

    /// Triggers dropped on the target and not yet created again.
    pub fn dropped_triggers(&self) -> Vec<(String, String)> {
        self.inner
            .lock()
            .expect("state lock")
            .dropped_triggers
            .clone()
    }

    /// Records the triggers about to be dropped (before dropping them), or none once they are
    /// created again.
    pub fn set_dropped_triggers(&self, triggers: Vec<(String, String)>) -> Result<()> {
        self.update(|c| c.dropped_triggers = triggers)
    }

    pub fn set_complete(&self) -> Result<()> {
        self.update(|c| c.complete = true)
    }
}

/// Takes the lock of a migration, or says which process holds it.
/// Creates `MIGRATION_STATE_DIR` if it is missing; a folder that cannot be made is bad
/// configuration, named by its variable.
pub fn create_state_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Config(format!(
            "MIGRATION_STATE_DIR {}: cannot create it: {e}",
            dir.display()
        ))
    })
}

fn lock(path: &Path, fingerprint: &Fingerprint) -> Result<File> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            let holder = holder.trim();
            return Err(Error::Refused(format!(
                "another run of this migration (source {}, D1 database {}) is in progress{}: \
                 its lock {} is held; wait for it to finish (a killed run's lock goes with it)",
                fingerprint.source,
                fingerprint.database_id,
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (process {holder})")
                },
                path.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(io)?;
    Ok(file)
}

/// A folder's single checkpoint of the earlier layout becomes this migration's, when it is this
/// migration's.
fn adopt_legacy(dir: &Path, path: &Path, fingerprint: &Fingerprint) -> Result<()> {
    let legacy = dir.join(LEGACY);
    if path.exists() {
        return Ok(());
    }
    let Ok(text) = std::fs::read_to_string(&legacy) else {
        return Ok(());
    };
    let Ok(found) = serde_json::from_str::<Checkpoint>(&text) else {
        return Ok(());
    };
    let mut theirs = found.fingerprint.clone();
    if theirs.account_id.is_empty() {
        theirs.account_id = fingerprint.account_id.clone();
    }
    if theirs.same_migration(fingerprint) {
        let adopted = Checkpoint {
            fingerprint: theirs,
            ..found
        };
        let text = serde_json::to_string_pretty(&adopted).expect("a checkpoint serialises");
        std::fs::write(path, text)
            .and_then(|()| std::fs::remove_file(&legacy))
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

fn difference(a: &Fingerprint, b: &Fingerprint) -> String {
    if a.transform != b.transform {
        "the MIGRATION_TRANSFORM file (its content) differs".to_string()
    } else if a.source_schema != b.source_schema {
        "the source's schema has changed since".to_string()
    } else {
        "MIGRATION_TABLES or MIGRATION_EXCLUDE_TABLES differ".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(db: &str) -> Fingerprint {
        Fingerprint {
            source: "/data/app.sqlite".into(),
            source_schema: "h".into(),
            api_url: "http://x".into(),
            account_id: "acc".into(),
            database_id: db.into(),
            tables: vec![],
            exclude_tables: vec![],
            transform: String::new(),
        }
    }

    #[test]
    fn keys_survive_a_restart_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let key = vec![
            Value::Text(b"a\0b".to_vec()),
            Value::Real(-0.0),
            Value::Integer(i64::MIN),
        ];
        let state = State::open(dir.path(), fp("one")).unwrap();
        state.advanced("t", &key, 0).unwrap();
        drop(state);
        let again = State::open(dir.path(), fp("one")).unwrap();
        let back = again.resume_after("t").unwrap();
        assert_eq!(back[0], key[0]);
        assert_eq!(back[2], key[2]);
        assert!(matches!(back[1], Value::Real(r) if r.to_bits() == (-0.0f64).to_bits()));
    }

    #[test]
    fn migrations_from_one_folder_keep_their_own_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let one = State::open(dir.path(), fp("one")).unwrap();
        one.advanced("t", &[Value::Integer(5)], 0).unwrap();
        one.set_complete().unwrap();
        // Another database from the same folder, while the first is still open.
        let two = State::open(dir.path(), fp("two")).unwrap();
        assert!(!two.is_complete());
        assert_eq!(two.resume_after("t"), None);
        two.advanced("t", &[Value::Integer(9)], 0).unwrap();
        drop((one, two));
        let one = State::open(dir.path(), fp("one")).unwrap();
        assert!(one.is_complete());
        assert_eq!(one.resume_after("t"), Some(vec![Value::Integer(5)]));
        // Another account or API is another migration too.
        let mut other = fp("one");
        other.account_id = "other".into();
        assert!(!State::open(dir.path(), other).unwrap().is_complete());
        let mut other = fp("one");
        other.api_url = "http://y".into();
        assert!(!State::open(dir.path(), other).unwrap().is_complete());
    }

    #[test]
    fn a_second_run_of_the_same_migration_at_once_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = State::open(dir.path(), fp("one")).unwrap();
        let e = State::open(dir.path(), fp("one")).err().unwrap();
        let text = e.to_string();
        assert!(text.contains("another run of this migration"), "{text}");
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        assert_eq!(e.exit_code(), 2);
        drop(first);
        State::open(dir.path(), fp("one")).unwrap();
    }

    #[test]
    fn a_changed_schema_of_the_same_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        State::open(dir.path(), fp("one")).unwrap();
        let mut changed = fp("one");
        changed.source_schema = "other".into();
        let e = State::open(dir.path(), changed).err().unwrap().to_string();
        assert!(e.contains("the source's schema has changed since"), "{e}");
    }

    #[test]
    fn a_forgotten_table_is_copied_again_and_the_run_is_not_complete() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), fp("one")).unwrap();
        state.advanced("a", &[Value::Integer(7)], 7).unwrap();
        state.advanced("a", &[Value::Integer(9)], 2).unwrap();
        state.set_inserted("b").unwrap();
        state.set_phase_done("sequence").unwrap();
        state.set_complete().unwrap();
        assert_eq!(
            state.recorded(),
            vec![("a".to_string(), 9), ("b".to_string(), 0)]
        );
        state.forget("a").unwrap();
        assert!(!state.is_complete());
        assert!(!state.phase_done("sequence"));
        assert_eq!(state.resume_after("a"), None);
        assert!(state.table("b").inserted);
    }

    #[test]
    fn the_single_checkpoint_of_the_earlier_layout_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = fp("one");
        old.account_id = String::new();
        let legacy = Checkpoint {
            version: 1,
            fingerprint: old,
            tables: BTreeMap::new(),
            phases: vec!["sequence".into()],
            complete: true,
            dropped_triggers: Vec::new(),
        };
        std::fs::write(
            dir.path().join(LEGACY),
            serde_json::to_string(&legacy).unwrap(),
        )
        .unwrap();
        // Another migration leaves it alone; its own takes it over.
        assert!(!State::open(dir.path(), fp("two")).unwrap().is_complete());
        assert!(dir.path().join(LEGACY).exists());
        assert!(State::open(dir.path(), fp("one")).unwrap().is_complete());
        assert!(!dir.path().join(LEGACY).exists());
    }
}
