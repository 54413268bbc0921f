//! The source as one consistent copy: before a run from SQLite (a copy, a sync, a validation, a
//! dry run) reads anything, the source
//! file is copied page by page in one read transaction (SQLite's backup API) into the state
//! folder, and every reader of the run (discovery, the table readers, validation) opens that
//! copy. An application writing the file meanwhile cannot tear the copy: every table is read as
//! of one moment, so a child row never arrives without its parent, and no reader waits on the
//! application's locks after the copy is taken.
//!
//! In WAL mode the application's writers are not held back at all; in rollback-journal mode its
//! commits wait while the pages are copied (the file's size at the disk's speed). The source's
//! `PRAGMA data_version` is read right after the copy and at the end of the run: when another
//! connection committed in between, the run says so (D1 holds the source as of the copy; a sync
//! brings the later writes). Fed by `run`; its path goes to every stage through
//! `Config::source_file`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::log;
use crate::source::{open_read_only, LeftBeside, LOCK_WAIT};

/// The consistent copy of a source for one run, removed when dropped.
pub struct Snapshot {
    dir: PathBuf,
    path: PathBuf,
    /// Held while the run lasts: a folder whose lock is free belongs to a run that is gone.
    _lock: File,
    /// The source, kept open (no transaction) to tell whether it changed since the copy; none
    /// when its files were copied as they are (see [`Snapshot::take`]).
    watch: Option<Connection>,
    version: i64,
    pub report: SnapshotReport,
}

/// The copy, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SnapshotReport {
    /// When the copy was taken: D1 receives the source as it was then.
    pub taken_at_unix_ms: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    /// Another connection committed to the source after the copy (an application still
    /// writing): its later writes are not on D1.
    pub source_changed: bool,
}

impl Snapshot {
    /// Copies `source` into a new folder of `state_dir`, in one read transaction. Folders of
    /// runs that are gone (killed before they removed theirs) are removed first.
    pub fn take(source: &Path, state_dir: &Path) -> Result<Snapshot> {
        let started = Instant::now();
        // A file SQLite cannot read in place (a WAL file in a read-only folder, a hot journal)
        // is copied with the file beside it, and read (or rolled back) there.
        let left = Connection::open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()
            .and_then(|c| crate::source::unreadable_in_place(source, &c));
        let watch = match left {
            None => Some(open_read_only(source)?),
            Some(_) => None,
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io {
                path: path.clone(),
                source,
            }
        };
        crate::state::create_state_dir(state_dir)?;
        remove_abandoned(state_dir);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = state_dir.join(format!("snapshot-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        // The lock file is locked under another name and then renamed: another run (or another
        // line of a manifest) cleaning the folder sees a lock only once it is held.
        let lock_path = dir.join("lock");
        let making = dir.join("lock.new");
        let lock = File::create(&making).map_err(io(&making))?;
        lock.try_lock()
            .map_err(|e| io(&making)(std::io::Error::other(e.to_string())))?;
        std::fs::rename(&making, &lock_path).map_err(io(&lock_path))?;
        let path = dir.join("source.sqlite");
        let mut snapshot = Snapshot {
            dir,
            path,
            _lock: lock,
            watch,
            version: 0,
            report: SnapshotReport::default(),
        };
        match &snapshot.watch {
            Some(watch) => {
                snapshot.copy(watch, source)?;
                snapshot.version = data_version(watch)?;
            }
            None => snapshot.copy_files(source, left.expect("a file left beside"))?,
        }
        snapshot.report.taken_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        snapshot.report.bytes = std::fs::metadata(&snapshot.path).map_or(0, |m| m.len());
        snapshot.report.duration_ms = started.elapsed().as_millis() as u64;
        log::info(&format!(
            "source copied as of now into the state folder ({:.1} MB in {:.2} s): the run reads this one consistent copy",
            snapshot.report.bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        ));
        Ok(snapshot)
    }

    /// Every page in one step: one read transaction on the source, so the copy is of one moment.
    fn copy(&self, watch: &Connection, source: &Path) -> Result<()> {
        let failed = |message: String| Error::Source {
            path: source.to_path_buf(),
            message,
        };
        let mut dst = Connection::open(&self.path).map_err(|e| {
            failed(format!(
                "cannot write its copy in MIGRATION_STATE_DIR ({}): {e}",
                self.path.display()
            ))
        })?;
        // The copy lives as long as the run and is taken again by the next one (a killed run's
        // is removed as abandoned): it needs no journal, nor a sync to the disk, which on a
        // fleet's many small sources cost more than copying their pages.
        dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
            .map_err(|e| failed(format!("preparing its copy: {e}")))?;
        let backup = Backup::new(watch, &mut dst).map_err(|e| failed(e.to_string()))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match backup.step(-1) {
                Ok(StepResult::Done) => return Ok(()),
                Ok(StepResult::Busy | StepResult::Locked) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(StepResult::Busy | StepResult::Locked) => {
                    return Err(failed(format!(
                        "the database is locked by another writer (waited {} s); retry when it is free",
                        LOCK_WAIT.as_secs()
                    )))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(failed(format!(
                        "copying it into MIGRATION_STATE_DIR ({}) failed: {e}; \
                         MIGRATION_SNAPSHOT=false reads the file itself (it must not change during the run)",
                        self.path.display()
                    )))
                }
            }
        }
    }

    /// The source file and the file `left` beside it copied as they are, for SQLite to read
    /// them here: a hot journal is rolled back on the copy, as SQLite does on opening it.
    fn copy_files(&self, source: &Path, left: LeftBeside) -> Result<()> {
        let failed = |message: String| Error::Source {
            path: source.to_path_buf(),
            message,
        };
        let beside = |path: &Path| {
            let mut p = path.as_os_str().to_owned();
            p.push(left.suffix());
            PathBuf::from(p)
        };
        for (from, to) in [
            (source.to_path_buf(), self.path.clone()),
            (beside(source), beside(&self.path)),
        ] {
            std::fs::copy(&from, &to).map_err(|e| {
                failed(format!(
                    "copying {} into MIGRATION_STATE_DIR failed: {e}",
                    from.display()
                ))
            })?;
        }
        if left == LeftBeside::HotJournal {
            Connection::open(&self.path)
                .and_then(|c| {
                    c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .map_err(|e| {
                    failed(format!("rolling back its -journal on the copy failed: {e}"))
                })?;
            log::warn(&format!(
                "{}-journal held a transaction an application left unfinished: it was rolled back \
                 on the run's copy, as SQLite does on opening the file (the source is left as it is)",
                source.display()
            ));
        }
        open_read_only(&self.path).map(drop)
    }

    /// The copy every stage reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether another connection committed to the source since the copy; the report is
    /// completed with it.
    pub fn finish(&mut self) -> SnapshotReport {
        self.report.source_changed = self
            .watch
            .as_ref()
            .is_some_and(|w| data_version(w).is_ok_and(|now| now != self.version));
        if self.report.source_changed {
            log::warn(
                "the source changed while it was copied (another connection committed): D1 holds it \
                 as of the snapshot this run took; MIGRATION_MODE=sync brings the later writes",
            );
        }
        self.report.clone()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

/// Removes the snapshot folders in `state_dir` whose lock no run holds.
/// A snapshot folder without its lock this long after it was made was left by a killed run.
const MAKING: Duration = Duration::from_secs(60);

fn remove_abandoned(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let named = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("snapshot-"));
        if !named || !dir.is_dir() {
            continue;
        }
        let abandoned = match File::open(dir.join("lock")) {
            Ok(lock) => lock.try_lock().is_ok(),
            // No lock yet: a snapshot being made now, unless the folder is old (a run killed
            // while making it).
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > MAKING)),
        };
        if abandoned {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_the_source_and_goes_with_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("s.sqlite");
        let conn = Connection::open(&source).unwrap();
        conn.execute_batch(
            "PRAGMA encoding = 'UTF-16be'; PRAGMA user_version = 7;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'é');",
        )
        .unwrap();
        let state = dir.path().join("state");
        // A folder a killed run left behind is removed.
        std::fs::create_dir_all(state.join("snapshot-old")).unwrap();
        std::fs::write(state.join("snapshot-old/lock"), "").unwrap();
        let mut snap = Snapshot::take(&source, &state).unwrap();
        assert!(!state.join("snapshot-old").exists());
        let copy = Connection::open(snap.path()).unwrap();
        let (v, encoding, version): (String, String, i64) = copy
            .query_row(
                "SELECT (SELECT v FROM t), (SELECT * FROM pragma_encoding), (SELECT * FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (v.as_str(), encoding.as_str(), version),
            ("é", "UTF-16be", 7)
        );
        // A second run at once keeps its own folder and leaves this one alone.
        let other = Snapshot::take(&source, &state).unwrap();
        assert!(snap.path().exists() && other.path().exists());
        assert!(!snap.finish().source_changed);
        conn.execute("INSERT INTO t VALUES (2, 'x')", []).unwrap();
        assert!(snap.finish().source_changed);
        let folder = snap.path().parent().unwrap().to_path_buf();
        drop(snap);
        assert!(!folder.exists());
    }

    /// Found by the fleet bench: lines of a manifest taking their snapshots at once removed
    /// each other's folders (one saw another's before its lock was held), failing with
    /// "lock: No such file or directory" or "cannot write its copy".
    #[test]
    fn snapshots_taken_at_once_in_one_state_folder_keep_each_others_folders() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("s.sqlite");
        Connection::open(&source)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
            .unwrap();
        let state = dir.path().join("state");
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        let snap = Snapshot::take(&source, &state).expect("a snapshot");
                        assert!(snap.path().exists());
                        let n: i64 = Connection::open(snap.path())
                            .unwrap()
                            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                            .unwrap();
                        assert_eq!(n, 1);
                    }
                });
            }
        });
    }
}
