//! Sending requests to D1 and acknowledging them: what the query senders and the import path
//! share. A request D1 refuses is split down to the row at fault, which is rejected (to the
//! reject file) or named in the error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::config::{BadRow, Config};
use crate::d1::{D1Client, Failure};
use crate::error::{D1Error, Error, Result};
use crate::log;
use crate::pack::{Request, Statement};

/// What sending needs of a load: where requests go, the settings, where refused rows are written.
pub struct Outlet<'a> {
    pub config: &'a Config,
    pub client: &'a D1Client,
    pub rejects: &'a Rejects,
}

/// The reject file: one JSON line per row D1 refused, with a statement that re-inserts it.
pub struct Rejects {
    path: std::path::PathBuf,
    file: std::sync::Mutex<Option<std::fs::File>>,
    count: std::sync::atomic::AtomicU64,
}

impl Rejects {
    pub fn new(path: std::path::PathBuf) -> Rejects {
        Rejects {
            path,
            file: std::sync::Mutex::new(None),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn write(&self, table: &str, key: &str, reason: &str, sql: &str) -> Result<()> {
        use std::io::Write;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = self.file.lock().expect("reject file lock");
        if file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(io)?,
            );
        }
        let line = serde_json::json!({"table": table, "key": key, "reason": reason, "sql": sql});
        writeln!(file.as_mut().expect("opened"), "{line}").map_err(io)?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A request on its way to a sender, with where to say how it went.
pub(crate) struct Job<'l> {
    pub table: String,
    pub seq: u64,
    pub request: Request,
    pub ack: Sender<(u64, Ack)>,
    /// Set once the request has left for D1 (or never will): see
    /// [`D1Client::execute_posted`].
    pub posted: Option<Arc<AtomicBool>>,
    /// Sent right behind requests it needs that D1 may not have committed yet (the CREATE of
    /// its table, its parents' rows): tried once, and when D1 refuses it (nothing of it was
    /// written: one request, one transaction) it goes back to its table as [`Ack::Behind`].
    pub early: bool,
    /// Who hears how far it got, and the work item it belongs to.
    pub listener: Option<(&'l dyn Listener, usize)>,
}

/// Hears when a job's request leaves for D1 and when D1 has committed it: the loader's record
/// of how far each table has got, which the requests going right behind it read.
pub(crate) trait Listener: Sync {
    fn on_its_way(&self, item: usize, seq: u64);
    fn committed(&self, item: usize, seq: u64);
}

/// How a job went.
pub(crate) enum Ack {
    /// Sent (every row committed or rejected), or failed.
    Done(Result<Sent>),
    /// An early request D1 refused: its table sends it again, as an ordinary request, once
    /// what it needs is committed; only then is a failure its own.
    Behind { request: Request, reason: String },
}

#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub rows: u64,
    /// Rows too large for one statement, appended in pieces.
    pub large_rows: u64,
    pub failed: u64,
    pub statements: u64,
    pub bytes: u64,
    pub requests: u64,
}

impl Sent {
    /// Counts statements D1 has committed.
    pub fn committed(&mut self, sqls: &[&str]) {
        self.statements += sqls.len() as u64;
        self.bytes += sqls.iter().map(|s| s.len() as u64).sum::<u64>();
    }
}

/// Sends one job's request through the query path and answers its table with what was sent.
pub(crate) fn send_job(out: &Outlet<'_>, job: Job<'_>) {
    let (seq, listener) = (job.seq, job.listener);
    let on_its_way = || {
        if let Some(posted) = &job.posted {
            posted.store(true, Ordering::SeqCst);
        }
        if let Some((l, item)) = listener {
            l.on_its_way(item, seq);
        }
    };
    let request = Outgoing {
        statements: &job.request.statements,
        relax_checks: job.request.relax_checks,
        posted: (job.posted.is_some() || listener.is_some()).then_some(&on_its_way),
        whole: true,
    };
    let mut sent = Sent::default();
    let result = if job.early {
        // Once: refused, it goes back to its table.
        let sqls: Vec<&str> = request.statements.iter().map(|s| s.sql.as_str()).collect();
        sent.requests += 1;
        let relaxed = relaxed(&sqls, request.relax_checks);
        match out.client.execute_posted(&relaxed, &on_its_way) {
            Ok(_) => {
                sent.committed(&sqls);
                Ok(())
            }
            Err(f) => {
                out.client.phases.record(|p| p.sent_again += 1);
                let reason = f.error.to_string();
                let _ = job.ack.send((
                    seq,
                    Ack::Behind {
                        request: job.request,
                        reason,
                    },
                ));
                return;
            }
        }
    } else {
        send_statements(out, &job.table, request, &mut sent)
    };
    let result = result.map(|()| {
        if let Some((l, item)) = listener {
            l.committed(item, seq);
        }
        sent.rows = job.request.rows as u64;
        sent.large_rows = job.request.large_rows as u64;
        sent
    });
    on_its_way();
    let _ = job.ack.send((seq, Ack::Done(result)));
}

/// A request's statements on their way.
#[derive(Clone, Copy)]
struct Outgoing<'s> {
    statements: &'s [Statement],
    /// CHECK constraints are not enforced within the request (its rows carry placeholders the
    /// update pass replaces).
    relax_checks: bool,
    /// Called as it leaves for D1: see [`Job::posted`].
    posted: Option<&'s dyn Fn()>,
    /// The request as packed, not a part of one D1 refused.
    whole: bool,
}

impl<'s> Outgoing<'s> {
    /// Some of the statements, sent the same way.
    fn part<'p>(&self, statements: &'p [Statement]) -> Outgoing<'p>
    where
        's: 'p,
    {
        Outgoing {
            statements,
            whole: false,
            ..*self
        }
    }
}

/// Sends `sqls` (as `sqls_sent`: relaxed or not) with none of the run's other requests in
/// flight, counting them in `sent` once committed: D1 fails the requests beside one that breaks a
/// constraint with that one's message, so only a request refused alone is refused for itself.
fn send_alone(
    out: &Outlet<'_>,
    sqls: &[&str],
    sqls_sent: &[&str],
    sent: &mut Sent,
) -> std::result::Result<(), Failure> {
    sent.requests += 1;
    out.client.execute_alone(sqls_sent)?;
    sent.committed(sqls);
    Ok(())
}

/// Sends statements as one request. When D1 says they are too large, or rejects them, sends
/// halves instead, down to the single row at fault, which is then rejected (to the reject file,
/// when the configuration says so) or named in the error.
fn send_statements(
    out: &Outlet<'_>,
    table: &str,
    request: Outgoing<'_>,
    sent: &mut Sent,
) -> Result<()> {
    let Outgoing {
        statements,
        relax_checks,
        posted,
        whole,
    } = request;
    let sqls: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
    sent.requests += 1;
    let sqls_sent = relaxed(&sqls, relax_checks);
    let answer = match posted {
        Some(posted) => out.client.execute_posted(&sqls_sent, posted),
        None => out.client.execute(&sqls_sent),
    };
    match answer {
        Ok(_) => {
            sent.committed(&sqls);
            Ok(())
        }
        Err(Failure { error, shrink }) => {
            let splittable = shrink || matches!(error, D1Error::Sql { .. });
            if !splittable {
                return Err(error.into());
            }
            // Its own failure, sent alone.
            let mut alone_failed = None;
            if whole && error.reset_by_a_constraint() {
                // Perhaps another's: the whole request goes again alone before any of it is
                // split or blamed (one request more, not the halves'). Only the whole request:
                // refused alone, its rows are at fault, and its parts are split as before, down
                // to the row, which goes alone before it is blamed.
                out.client.phases.record(|p| p.sent_again += 1);
                match send_alone(out, &sqls, &sqls_sent, sent) {
                    Ok(()) => return Ok(()),
                    Err(f) if f.shrink || matches!(f.error, D1Error::Sql { .. }) => {
                        alone_failed = Some(f.error)
                    }
                    Err(f) => return Err(f.error.into()),
                }
            }
            if statements.len() > 1 {
                let (a, b) = statements.split_at(statements.len() / 2);
                send_statements(out, table, request.part(a), sent)?;
                return send_statements(out, table, request.part(b), sent);
            }
            if let Some((a, b)) = statements[0].split() {
                send_statements(out, table, request.part(&[a]), sent)?;
                return send_statements(out, table, request.part(&[b]), sent);
            }
            let statement = &statements[0];
            // Before a row is blamed, it is sent once more alone: a request that breaks a
            // constraint makes D1 fail the requests in flight beside it with its own message.
            let alone = [statement.sql.as_str()];
            let error = match alone_failed {
                Some(error) => error,
                None => match send_alone(out, &alone, &relaxed(&alone, relax_checks), sent) {
                    Ok(()) => return Ok(()),
                    Err(Failure { error, .. }) => error,
                },
            };
            let key = statement
                .single_key()
                .map(str::to_string)
                .unwrap_or_else(|| row_text(&statement.sql));
            let reason = match &error {
                D1Error::Sql { message } => message.clone(),
                other => other.to_string(),
            };
            if out.config.on_bad_row == BadRow::Skip && statement.row_count() == 1 {
                log::warn(&format!(
                    "table {table}, row {key}: rejected by D1: {reason}"
                ));
                sent.failed += 1;
                return out.rejects.write(table, &key, &reason, &statement.sql);
            }
            Err(Error::Row {
                table: table.to_string(),
                key,
                message: format!("D1 rejected the row: {reason}"),
            })
        }
    }
}

/// The statements, between `PRAGMA ignore_check_constraints` on and off when `relax`. The
/// setting belongs to D1's connection, not to the request, so every such request ends it.
pub(crate) fn relaxed<'a>(sqls: &[&'a str], relax: bool) -> Vec<&'a str> {
    if !relax {
        return sqls.to_vec();
    }
    let mut out = Vec::with_capacity(sqls.len() + 2);
    out.push("PRAGMA ignore_check_constraints = on");
    out.extend_from_slice(sqls);
    out.push("PRAGMA ignore_check_constraints = off");
    out
}

/// The row tuple of a one-row insert (or the statement), cut short, to name a row in an error.
fn row_text(sql: &str) -> String {
    let text = sql.find(" VALUES ").map(|at| &sql[at + 8..]).unwrap_or(sql);
    let text = text.trim_end_matches(" ON CONFLICT DO NOTHING");
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_named_by_its_tuple() {
        assert_eq!(
            row_text("INSERT INTO \"t\" (rowid,\"a\") VALUES (5,'x') ON CONFLICT DO NOTHING"),
            "(5,'x')"
        );
    }
}
