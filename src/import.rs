//! The import method (`MIGRATION_METHOD=import`): the sink that takes the requests `produce`
//! packs (the same exact literal encoding as the query method) and, instead of posting each to
//! `/raw`, gathers them into SQL files of `MIGRATION_IMPORT_MB` and loads each through D1's
//! import flow (`D1Client::import`). D1 runs a file as one unit, so each request is answered
//! once its file is committed, and the checkpoint advances per file: a killed run resumes at the
//! next file. A file D1 refuses is sent again request by request through the query path, which
//! finds the row at fault (rejected or named as with the query method).

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::Error;
use crate::log;
use crate::pack::Statement;
use crate::send::{send_job, Ack, Job, Outlet, Sent};

/// How long the importer waits for another request before loading a file that is not full:
/// tables wait for their requests' answers before their children start.
const IDLE: Duration = Duration::from_millis(250);

/// An import file being filled with whole requests.
pub struct SqlFile {
    text: String,
    statements: usize,
}

impl Default for SqlFile {
    fn default() -> Self {
        SqlFile::new()
    }
}

impl SqlFile {
    /// Foreign keys are checked at the end of the file, as at the end of a query request.
    const HEADER: &'static str = "PRAGMA defer_foreign_keys = on;\n";

    pub fn new() -> SqlFile {
        SqlFile {
            text: SqlFile::HEADER.to_string(),
            statements: 0,
        }
    }

    /// Appends statements, one per line, each ending with `;`.
    pub fn push(&mut self, statements: &[Statement]) {
        for s in statements {
            self.text.push_str(s.sql.trim_end().trim_end_matches(';'));
            self.text.push_str(";\n");
        }
        self.statements += statements.len();
    }

    pub fn is_empty(&self) -> bool {
        self.statements == 0
    }

    /// Bytes of SQL.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The import method's single sender (an import blocks the database, so one at a time): fills
/// files from `jobs` and answers each job once its file is loaded.
pub(crate) fn importer(out: &Outlet<'_>, jobs: Receiver<Job<'_>>) {
    let mut file = SqlFile::new();
    let mut waiting: Vec<Job<'_>> = Vec::new();
    loop {
        let next = jobs.recv_timeout(IDLE);
        let idle = matches!(next, Err(RecvTimeoutError::Timeout));
        let closed = matches!(next, Err(RecvTimeoutError::Disconnected));
        if let Ok(job) = next {
            // Rows with placeholders (see `send::send_statements`) between the CHECK pragmas.
            let relax = job.request.relax_checks;
            if relax {
                file.push(&[Statement::plain(
                    "PRAGMA ignore_check_constraints = on".into(),
                )]);
            }
            file.push(&job.request.statements);
            if relax {
                file.push(&[Statement::plain(
                    "PRAGMA ignore_check_constraints = off".into(),
                )]);
            }
            waiting.push(job);
        }
        if !file.is_empty() && (idle || closed || file.len() >= out.config.import_bytes) {
            load_file(out, std::mem::take(&mut file), &mut waiting);
        }
        if closed {
            break;
        }
    }
}

/// Loads one file and answers its jobs.
fn load_file(out: &Outlet<'_>, file: SqlFile, waiting: &mut Vec<Job<'_>>) {
    let jobs = std::mem::take(waiting);
    log::debug(&format!(
        "importing {} statements ({} bytes) of {} requests",
        file.statements,
        file.len(),
        jobs.len()
    ));
    match out.client.import(file.text()) {
        Ok(_) => {
            for job in jobs {
                let sqls: Vec<&str> = job
                    .request
                    .statements
                    .iter()
                    .map(|s| s.sql.as_str())
                    .collect();
                let mut sent = Sent {
                    rows: job.request.rows as u64,
                    large_rows: job.request.large_rows as u64,
                    ..Sent::default()
                };
                sent.committed(&sqls);
                let _ = job.ack.send((job.seq, Ack::Done(Ok(sent))));
            }
        }
        Err(crate::error::D1Error::Sql { message }) => {
            // Nothing of the file was written: its requests go through the query path, which
            // splits down to the row at fault.
            log::warn(&format!(
                "D1 refused an import file ({message}); sending its {} requests as queries to find the row at fault",
                jobs.len()
            ));
            for job in jobs {
                send_job(out, job);
            }
        }
        Err(e) => {
            let message = e.to_string();
            let mut first = Some(Error::from(e));
            for job in jobs {
                let error = first
                    .take()
                    .unwrap_or_else(|| Error::Refused(format!("the import failed: {message}")));
                let _ = job.ack.send((job.seq, Ack::Done(Err(error))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_defers_foreign_keys_and_ends_every_statement() {
        let mut file = SqlFile::new();
        assert!(file.is_empty());
        file.push(&[
            Statement::plain("INSERT INTO t VALUES (1, 'a;b')".into()),
            Statement::plain("INSERT INTO t VALUES (2, 'c');".into()),
        ]);
        assert_eq!(
            file.text(),
            "PRAGMA defer_foreign_keys = on;\nINSERT INTO t VALUES (1, 'a;b');\nINSERT INTO t VALUES (2, 'c');\n"
        );
        assert!(!file.is_empty());
    }
}
