//! Checkpoints of a forward run, in `MIGRATION_STATE_DIR`: per table, the key up to which every
//! row is known to be committed on D1 (a key, never a row offset), and which phases are done.
//!
//! A rerun reads the checkpoint and starts each table after its key; rows beyond it that D1
//! already has are skipped by the idempotent inserts, so there is no duplicate and no gap. A
//! checkpoint written for another source, target or configuration is refused. The file is
//! replaced atomically (write, then rename), so a kill at any point leaves a readable checkpoint.

use std::collections::BTreeMap;
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
    pub database_id: String,
    pub tables: Vec<String>,
    pub exclude_tables: Vec<String>,
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
    #[serde(default)]
    pub inserted: bool,
    #[serde(default)]
    pub deferred_done: bool,
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
}

/// The checkpoint of one run, shared by its workers.
pub struct State {
    path: PathBuf,
    inner: Mutex<Checkpoint>,
}

impl State {
    /// Opens the checkpoint in `dir`, or starts one. Refuses one written for another run.
    pub fn open(dir: &Path, fingerprint: Fingerprint) -> Result<State> {
        let path = dir.join("checkpoint.json");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let checkpoint = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let found: Checkpoint = serde_json::from_str(&text).map_err(|e| {
                    Error::Refused(format!(
                        "the checkpoint {} cannot be read ({e}); remove it to start over",
                        path.display()
                    ))
                })?;
                if found.fingerprint != fingerprint {
                    return Err(Error::Refused(format!(
                        "the checkpoint in {} belongs to another migration ({}); \
                         set MIGRATION_STATE_DIR to another folder, or remove that one to start over",
                        dir.display(),
                        difference(&found.fingerprint, &fingerprint)
                    )));
                }
                found
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                Checkpoint {
                    version: 1,
                    fingerprint,
                    tables: BTreeMap::new(),
                    phases: Vec::new(),
                    complete: false,
                }
            }
            Err(e) => return Err(io(e)),
        };
        let state = State {
            path,
            inner: Mutex::new(checkpoint),
        };
        state.save()?;
        Ok(state)
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

    pub fn committed_up_to(&self, name: &str, key: &[Value]) -> Result<()> {
        self.update(|c| {
            c.tables.entry(name.to_string()).or_default().after =
                Some(key.iter().map(store).collect())
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

    pub fn set_complete(&self) -> Result<()> {
        self.update(|c| c.complete = true)
    }
}

fn difference(a: &Fingerprint, b: &Fingerprint) -> String {
    if a.source != b.source {
        format!("source {} there, {} here", a.source, b.source)
    } else if a.database_id != b.database_id || a.api_url != b.api_url {
        format!(
            "D1 database {} there, {} here",
            a.database_id, b.database_id
        )
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
            database_id: db.into(),
            tables: vec![],
            exclude_tables: vec![],
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
        state.committed_up_to("t", &key).unwrap();
        drop(state);
        let again = State::open(dir.path(), fp("one")).unwrap();
        let back = again.resume_after("t").unwrap();
        assert_eq!(back[0], key[0]);
        assert_eq!(back[2], key[2]);
        assert!(matches!(back[1], Value::Real(r) if r.to_bits() == (-0.0f64).to_bits()));
    }

    #[test]
    fn a_checkpoint_of_another_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        State::open(dir.path(), fp("one")).unwrap();
        let e = State::open(dir.path(), fp("two"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("belongs to another migration"), "{e}");
        assert!(e.contains("D1 database one there, two here"), "{e}");
    }
}
