//! Loading into D1, the sink of the forward pipeline: table workers (each with its own read-only
//! connection) run `produce` and hand requests over a bounded channel to HTTP senders; tables
//! start when their parents are done, after the small tables went in one request (`bundle`
//! chooses them; the tables' CREATE statements ride at its head), and the other tables start
//! right behind that request ([`Opening`]). A child whose keys refer to the key its parent
//! loads in order starts before the parent is finished, each of its requests once the parent's
//! rows it refers to are on their way ([`Gate`]). A request that may reach D1 before what it
//! needs is committed goes early, and goes again when D1 refuses it ([`Reached`]). The
//! statements after the data may ride at the end of the load's last request ([`Tail`]), guarded
//! instead of waiting for the other requests' answers where the load's tables were created
//! empty. A request D1 refuses is split down to the row at fault, which is rejected or named.
//! The checkpoint advances over the prefix of committed requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::bundle::{self, SmallTables};
use crate::compat::MAX_ROW_BYTES;
use crate::config::{BadRow, Config, Method};
use crate::d1::D1Client;
use crate::discover::Schema;
use crate::error::{D1Error, Error, Result};
use crate::log;
use crate::pack::Request;
use crate::produce::{group_phase, pass_filter, produce, Pass, Produced, Work};
use crate::progress::{Progress, Stage};
use crate::report::TableStats;
use crate::send::{send_job, Ack, Job, Listener, Outlet, Rejects, Sent};
use crate::source::{open_read_only, to_sql};
use crate::state::State;
use crate::value::{quote_ident, Value};

/// What loading shares across tables: where rows go, how far they got, what was refused.
pub struct Loader<'a> {
    pub config: &'a Config,
    pub client: &'a D1Client,
    pub progress: &'a Progress,
    pub state: &'a State,
    pub rejects: &'a Rejects,
    /// Rows each table has to copy, counted once for the progress bars.
    pub rows: HashMap<String, u64>,
}

impl<'a> Loader<'a> {
    /// What the senders need of the load.
    pub fn outlet(&self) -> Outlet<'a> {
        Outlet {
            config: self.config,
            client: self.client,
            rejects: self.rejects,
        }
    }

    /// Chooses the small tables of `work` (and their deferred keys, from `deferred`) for one
    /// request, with `head` (the tables' CREATE statements) at its head, and marks them done
    /// in `work`: that request opens the load (see [`Opening`]), and the other tables start
    /// right behind it. None when no table is small.
    pub fn small_tables(
        &self,
        schema: &Schema,
        work: &mut [Work],
        deferred: &[Work],
        head: &[String],
    ) -> Result<Option<Small>> {
        let conn = open_read_only(self.config.source_file())?;
        let head_bytes: usize = head.iter().map(String::len).sum();
        let budget = self
            .client
            .request_bytes(self.config.limits.request_bytes)
            .saturating_sub(head_bytes);
        let tables = bundle::choose(self.config, &conn, schema, work, deferred, budget)?;
        if tables.members.is_empty() {
            return Ok(None);
        }
        // Should D1 refuse the request, the tables load on their own, parents first.
        let position = |i: usize| tables.members.iter().position(|m| m.work == i);
        let alone: Vec<Work> = tables
            .members
            .iter()
            .map(|m| {
                let mut w = work[m.work].clone();
                w.parents = w.parents.iter().filter_map(|&p| position(p)).collect();
                w
            })
            .collect();
        let names = tables
            .members
            .iter()
            .map(|m| work[m.work].shape.table.clone())
            .collect();
        for m in &tables.members {
            work[m.work].done = true;
        }
        Ok(Some(Small {
            tables,
            names,
            alone,
            head: head.to_vec(),
        }))
    }

    /// Sends the small tables' request (see [`Loader::small_tables`]); `on_its_way` is called
    /// as it leaves for D1. Marks what it sent done in the checkpoint, and returns the tables'
    /// counts and the deferred passes it sent.
    ///
    /// The tables' CREATE statements ride at the head of that request (D1 runs a request's
    /// statements in order, as one transaction): the tables are created and the small ones
    /// filled in one round trip. `create_alone` creates them on their own instead, naming the
    /// statement D1 refuses, when D1 refuses the request (nothing of it was written), before
    /// the small tables are sent again alone; refused again, each loads on its own.
    pub fn send_small_tables(
        &self,
        small: &Small,
        create_alone: impl FnOnce() -> Result<()>,
        on_its_way: &dyn Fn(),
    ) -> Result<Opened> {
        let started = std::time::Instant::now();
        let mut opened = Opened::default();
        let Small {
            tables: small_tables,
            names,
            alone,
            head,
        } = small;
        let SmallTables {
            members,
            bytes: used,
        } = small_tables;
        let sqls = small_tables.sql();
        // Each table's data, and its keys when they go along, count as their own passes would.
        let mut bars: Vec<_> = members
            .iter()
            .zip(names)
            .map(|(m, table)| {
                let rows = self.rows.get(table).copied().unwrap_or(0);
                let data = self.progress.pass(table, Stage::Data, rows);
                let keys = m
                    .deferred
                    .as_ref()
                    .map(|_| self.progress.pass(table, Stage::DeferredKeys, 0));
                (data, keys)
            })
            .collect();
        let mut request: Vec<&str> = head.iter().map(String::as_str).collect();
        request.extend(&sqls);
        // Ok(false): D1 refused the request, which wrote nothing.
        let send = |request: &[&str], on_its_way: &dyn Fn()| match self
            .client
            .execute_posted(request, on_its_way)
        {
            Ok(_) => Ok(true),
            Err(f) if f.shrink || matches!(f.error, D1Error::Sql { .. }) => {
                log::info(&format!(
                    "the small tables {} did not go in one request{} ({})",
                    names.join(", "),
                    if request.len() > sqls.len() {
                        " with the tables' CREATE statements"
                    } else {
                        ""
                    },
                    f.error
                ));
                Ok(false)
            }
            Err(f) => Err(Error::from(f.error)),
        };
        let mut sent = request.is_empty() || send(&request, on_its_way)?;
        if !sent && !head.is_empty() {
            create_alone()?;
            sent = sqls.is_empty() || send(&sqls, &|| {})?;
        }
        if !sent {
            // Their bars close at nothing; each table's own pass counts its rows.
            drop(bars);
            log::info("each small table is sent on its own");
            opened.failed = run_work(self, alone, &mut opened.stats)?;
            opened.alone = true;
            return Ok(opened);
        }
        log::debug(&format!(
            "{} small tables in one request of {used} bytes: {}",
            members.len(),
            names.join(", ")
        ));
        let elapsed = started.elapsed().as_millis() as u64;
        for (((m, share), (mut bar, keys)), table) in members
            .iter()
            .zip(small_tables.shares())
            .zip(bars.drain(..))
            .zip(names)
        {
            bar.add(share.rows_written);
            bar.add_bytes(share.bytes);
            drop(bar);
            if let (Some(mut keys), Some(request)) = (keys, m.keys()) {
                keys.add(request.rows as u64);
            }
            if let Some(request) = &m.insert {
                if let Some(key) = &request.last_key {
                    self.state.advanced(table, key, share.rows_written)?;
                }
            }
            self.state.set_inserted(table)?;
            if let Some(d) = share.deferred {
                self.state.set_deferred_done(table)?;
                opened.keys.push(d);
            }
            opened.stats.push(TableStats {
                table: table.clone(),
                rows_read: share.rows_read,
                rows_written: share.rows_written,
                statements: share.statements,
                bytes_sent: share.bytes,
                requests: share.requests,
                duration_ms: elapsed,
                ..TableStats::default()
            });
        }
        Ok(opened)
    }
}

/// The small tables chosen to open the load in one request (see [`Loader::small_tables`]).
pub struct Small {
    tables: SmallTables,
    names: Vec<String>,
    /// Their work items, to load each on its own when D1 refuses them together.
    alone: Vec<Work>,
    /// The tables' CREATE statements, at the head of the request.
    head: Vec<String>,
}

impl Small {
    /// Whether the request carries the keys of the deferred pass `d`.
    pub fn carries_keys(&self, d: usize) -> bool {
        self.tables
            .members
            .iter()
            .any(|m| m.deferred.as_ref().is_some_and(|(i, _)| *i == d))
    }
}

/// What the small tables' request did (see [`Loader::send_small_tables`]).
#[derive(Default)]
pub struct Opened {
    pub stats: Vec<TableStats>,
    /// The deferred passes (indexes into the deferred list) it sent.
    pub keys: Vec<usize>,
    /// D1 refused them together: each loaded on its own, and their keys go in their passes.
    pub alone: bool,
    /// Tables that failed on their own when `continue_on_error` let the run go on.
    pub failed: Vec<String>,
}

fn merge(into: &mut Vec<TableStats>, s: TableStats) {
    match into.iter_mut().find(|t| t.table == s.table) {
        Some(t) => {
            *t += &s;
            if s.error.is_some() {
                t.error = s.error;
            }
        }
        None => into.push(s),
    }
}

/// A foreign key of a child table to a parent still loading, which lets the child start before
/// the parent is finished: each of the child's requests goes once the parent's requests holding
/// its rows up to the largest key the request refers to are on their way, early while D1 may not
/// have committed them (D1 checks foreign keys at each request's end: one that arrives first is
/// refused whole, and goes again; see [`Reached`]). The parent loads in the order of the key
/// referred to, so the prefix on its way and the prefix committed are known.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The parent's index in the work list.
    pub parent: usize,
    /// The child's column (quoted) that holds the parent's key.
    column: String,
}

/// For each work item, its [`Gate`]s: one per foreign key to a parent in the same list, for the
/// parents to which every key of the item is one column referring to the column the parent
/// loads in order; neither table transformed, filled in several passes or one request at a
/// time. A parent without gates is waited for as a whole.
pub fn gates(schema: &Schema, work: &[Work]) -> Vec<Vec<Gate>> {
    let plain = |w: &Work| {
        w.pass == Pass::Insert
            && !w.sequential
            && w.group.is_empty()
            && !w.shape.is_virtual
            && w.shape.deferred.is_empty()
            && w.shape.anchored.is_empty()
            && w.shape.read_from == quote_ident(&w.shape.table)
    };
    work.iter()
        .map(|w| {
            let Some(table) = schema.table(&w.shape.table).filter(|_| plain(w)) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for &p in &w.parents {
                let parent_work = &work[p];
                let Some(parent) = schema
                    .table(&parent_work.shape.table)
                    .filter(|_| plain(parent_work) && parent_work.shape.key_exprs.len() == 1)
                else {
                    continue;
                };
                let keys: Vec<_> = table
                    .foreign_keys
                    .iter()
                    .filter(|fk| fk.parent.eq_ignore_ascii_case(&parent.name))
                    .collect();
                let gates: Vec<Gate> = keys
                    .iter()
                    .filter_map(|fk| {
                        let [column] = fk.columns.as_slice() else {
                            return None;
                        };
                        let referred = match fk.parent_columns.as_slice() {
                            [c] => c.clone(),
                            [] => match parent
                                .columns
                                .iter()
                                .filter(|c| c.pk > 0)
                                .collect::<Vec<_>>()
                                .as_slice()
                            {
                                [pk] => pk.name.clone(),
                                _ => return None,
                            },
                            _ => return None,
                        };
                        let column = quote_ident(column);
                        (parent_work.shape.key_exprs[0]
                            .eq_ignore_ascii_case(&quote_ident(&referred))
                            && w.shape
                                .columns
                                .iter()
                                .any(|c| c.eq_ignore_ascii_case(&column)))
                        .then_some(Gate { parent: p, column })
                    })
                    .collect();
                if !keys.is_empty() && gates.len() == keys.len() {
                    out.extend(gates);
                }
            }
            out
        })
        .collect()
}

/// How far each work item of a load has got on D1, for the requests that go right behind
/// others: a child's behind its parent's rows ([`Gate`]), and every table's behind the load's
/// opening (the small tables' request, which creates the tables: the last item). A request
/// goes once what it needs is on its way; when D1 may not have committed that yet it goes
/// early ([`Job::early`]): D1 refuses it whole when it arrives first (its table does not exist
/// yet, or a row's parent is not there at its commit), and it goes again once that is
/// committed.
struct Reached {
    items: std::sync::Mutex<Vec<Item>>,
    changed: std::sync::Condvar,
}

/// How far one work item has got.
#[derive(Clone, Default)]
struct Item {
    /// Its requests not committed yet, and those before them, in the order they were made:
    /// (sequence number, last key, on its way, committed).
    flight: std::collections::VecDeque<(u64, Option<Vec<Value>>, bool, bool)>,
    /// The key up to which D1 has committed its rows.
    committed: Option<Vec<Value>>,
    /// The key up to which every request is on its way to D1.
    on_way: Option<Vec<Value>>,
    /// The opening's one request is on its way.
    all_on_way: bool,
    /// When a request of it last left for D1.
    posted_at: Option<Instant>,
    finished: bool,
    failed: bool,
}

impl Item {
    /// Moves `committed` and `on_way` over the prefix of requests committed or on their way.
    fn recount(&mut self) {
        while self.flight.front().is_some_and(|e| e.3) {
            let (_, key, _, _) = self.flight.pop_front().expect("front");
            if key.is_some() {
                self.committed = key;
            }
        }
        for (_, key, on_way, _) in &self.flight {
            if !on_way {
                break;
            }
            if key.is_some() {
                self.on_way.clone_from(key);
            }
        }
    }

    /// Whether the item got as far as `bound` at `level` (any bound but an integer key: is
    /// finished, or for the opening, on its way).
    fn reached(&self, bound: &Value, level: Level) -> bool {
        let past = |key: &Option<Vec<Value>>| match (key.as_deref(), bound) {
            (Some([Value::Integer(k)]), Value::Integer(b)) => k >= b,
            _ => false,
        };
        self.finished
            || past(&self.committed)
            || (level == Level::OnItsWay && (self.all_on_way || past(&self.on_way)))
    }
}

/// How far a request needs another item to have got.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    /// Its requests left for D1: a request may go right behind them.
    OnItsWay,
    /// D1 committed them.
    Committed,
}

/// What a request needs that D1 may not have committed when it goes: (item, bound), as for
/// [`Reached::wait`].
type Needs = Vec<(usize, Value)>;

impl Reached {
    fn new(n: usize) -> Reached {
        Reached {
            items: std::sync::Mutex::new(vec![Item::default(); n]),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Item>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change(&self, i: usize, f: impl FnOnce(&mut Item)) {
        f(&mut self.lock()[i]);
        self.changed.notify_all();
    }

    /// What an earlier run committed (the checkpoint's key).
    fn advance(&self, i: usize, key: &[Value]) {
        self.change(i, |item| item.committed = Some(key.to_vec()));
    }

    /// Request `seq` of item `i`, with the key of its last row, is about to go.
    fn queued(&self, i: usize, seq: u64, key: Option<Vec<Value>>) {
        self.lock()[i].flight.push_back((seq, key, false, false));
    }

    fn opening_on_its_way(&self, i: usize) {
        self.change(i, |item| {
            item.all_on_way = true;
            item.posted_at = Some(Instant::now());
        });
    }

    /// When the latest request of any of `items` left for D1.
    fn posted_at(&self, items: impl Iterator<Item = usize>) -> Option<Instant> {
        let all = self.lock();
        items.filter_map(|i| all[i].posted_at).max()
    }

    fn finish(&self, i: usize, failed: bool) {
        self.change(i, |item| {
            item.finished = true;
            item.failed |= failed;
        });
    }

    fn finished(&self, i: usize) -> bool {
        self.lock()[i].finished
    }

    /// Whether item `p` has committed its rows up to the integer key `bound` (any other
    /// value: is finished), without failing.
    fn holds(&self, p: usize, bound: &Value) -> bool {
        let item = &self.lock()[p];
        !item.failed && item.reached(bound, Level::Committed)
    }

    /// Waits until item `p` has committed its rows up to the integer key `bound` (any other
    /// value: until it is finished). False when it failed, or the load stopped.
    fn wait(&self, p: usize, bound: &Value, cancel: &AtomicBool) -> bool {
        self.wait_for(p, bound, Level::Committed, cancel)
    }

    fn wait_for(&self, p: usize, bound: &Value, level: Level, cancel: &AtomicBool) -> bool {
        let mut items = self.lock();
        loop {
            let item = &items[p];
            if item.failed || cancel.load(Ordering::Relaxed) {
                return false;
            }
            if item.reached(bound, level) {
                return true;
            }
            items = self
                .changed
                .wait_timeout(items, std::time::Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Listener for Reached {
    fn on_its_way(&self, i: usize, seq: u64) {
        self.change(i, |item| {
            if let Some(e) = item.flight.iter_mut().find(|e| e.0 == seq) {
                e.2 = true;
            }
            item.posted_at = Some(Instant::now());
            item.recount();
        });
    }

    fn committed(&self, i: usize, seq: u64) {
        self.change(i, |item| {
            if let Some(e) = item.flight.iter_mut().find(|e| e.0 == seq) {
                e.2 = true;
                e.3 = true;
            }
            item.recount();
        });
    }
}

/// The load's first request, sent while the tables start right behind it: the small tables'
/// request, which creates the tables (see [`Loader::send_small_tables`]). It is given what to
/// call as the request leaves for D1. Until D1 has committed it, each table's requests go
/// early; its error stops the load. `Ok(false)`: it went another way (each small table on its
/// own): the statements after the data do not ride with the last data request.
pub struct Opening<'o>(Box<OpeningSend<'o>>);

/// What sends an [`Opening`]'s request, given what to call as it leaves.
type OpeningSend<'o> = dyn FnOnce(&dyn Fn()) -> Result<bool> + Send + 'o;

impl<'o> Opening<'o> {
    pub fn new(send: impl FnOnce(&dyn Fn()) -> Result<bool> + Send + 'o) -> Opening<'o> {
        Opening(Box::new(send))
    }
}

/// Statements that ride at the end of a load's last data request, once D1 has committed every
/// other request of the load: the DDL after the data (`sqlite_sequence`, the planner's
/// statistics, indexes, views and triggers), which then costs no round trip of its own. D1 runs
/// a request's statements in order, as one transaction, so the triggers exist only after the
/// last row is in, as when they are created alone.
///
/// Into tables this run created empty ([`Tail::guarded`]), the request goes at once, without
/// waiting for the other requests' answers, with a guard statement between its rows and the
/// tail ([`guard_sql`]): D1 fails the whole request unless it holds the last row of every other
/// request not yet answered, which, in a table that held no row before, proves that request
/// committed. When it fails, the request goes again once every other is answered.
pub struct Tail {
    statements: Vec<String>,
    sent: AtomicBool,
    guarded: bool,
}

impl Tail {
    pub fn new(statements: Vec<String>) -> Tail {
        Tail {
            statements,
            sent: AtomicBool::new(false),
            guarded: false,
        }
    }

    /// `empty`: every table the load writes was created empty by this run (no earlier attempt's
    /// rows, none of the application's), so a row's key on D1 can only come from this load's
    /// request that carries it: the tail may go guarded, before the other requests' answers.
    pub fn guarded(mut self, empty: bool) -> Tail {
        self.guarded = empty;
        self
    }

    /// Whether D1 committed the tail with the last data request. When it did not (the last
    /// request had no room for it, D1 refused them together, the load failed), the caller sends
    /// it on its own.
    pub fn sent(&self) -> bool {
        self.sent.load(Ordering::SeqCst)
    }

    fn bytes(&self) -> usize {
        self.statements.iter().map(String::len).sum()
    }
}

/// How a load ends when a [`Tail`] rides with its last request: the table worker that produces
/// the load's last request holds it back until every other table is finished, then sends it
/// with the tail; when guarded, at once, with the guard over the requests still `outstanding`.
struct Ending<'t> {
    tail: &'t Tail,
    /// Work items whose requests are not all produced yet (started or not).
    producing: std::sync::atomic::AtomicUsize,
    /// Work items not finished (every answer in), kept by the scheduler.
    unfinished: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
    /// When the tail may go guarded: the load's requests produced and not yet answered.
    outstanding: Option<std::sync::Mutex<Outstanding>>,
}

/// The requests of a load produced and not answered yet (sent, waiting to be, or failed). Its
/// size is bounded by the requests in flight and held by the table workers.
#[derive(Default)]
struct Outstanding {
    next: u64,
    requests: HashMap<u64, Pending>,
}

/// A request of [`Outstanding`].
struct Pending {
    /// The work item it belongs to.
    index: usize,
    /// The EXISTS of its last row's key (`None`: the request has no key of its own, or a NULL).
    exists: Option<String>,
    /// Set once it has left for D1, or never will (its table finished without it).
    posted: Arc<AtomicBool>,
}

/// A request's registration in [`Outstanding`].
type Registered = Option<(u64, Arc<AtomicBool>)>;

/// The guard over at most this many requests; more wait for their answers, as without one.
const GUARD_KEYS: usize = 100;

/// A statement that D1 runs without error only when every one of `exists` (EXISTS
/// subqueries) is true, and that otherwise fails at run time (not when it is prepared: it
/// depends on the data), failing the request it is in: `json()` of a text that is not JSON.
pub fn guard_sql(exists: &[String]) -> String {
    format!(
        "SELECT json(CASE WHEN {} THEN '0' ELSE 'not yet' END)",
        exists.join(" AND ")
    )
}

impl Ending<'_> {
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Outstanding>> {
        let out = self.outstanding.as_ref()?;
        Some(out.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers a request produced by work item `index` (of `shape`), when the tail may go
    /// guarded.
    fn produced(&self, index: usize, shape: &crate::pack::Shape, request: &Request) -> Registered {
        let mut out = self.lock()?;
        let id = out.next;
        out.next += 1;
        let posted = Arc::new(AtomicBool::new(false));
        let exists = request.last_key.as_ref().and_then(|k| shape.exists(k));
        out.requests.insert(
            id,
            Pending {
                index,
                exists,
                posted: posted.clone(),
            },
        );
        Some((id, posted))
    }

    /// Request `id` was answered: D1 committed it (or it was split, and its pieces were).
    fn answered(&self, id: u64) {
        if let Some(mut out) = self.lock() {
            out.requests.remove(&id);
        }
    }

    /// Work item `index` is finished: none of its requests not answered will leave any more.
    fn left(&self, index: usize) {
        if let Some(out) = self.lock() {
            for p in out.requests.values().filter(|p| p.index == index) {
                p.posted.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Waits until every request not answered but `own` has left for D1 (the tail's request,
    /// sent after them, then reaches D1 after them: its guard is met when D1 runs it), or the
    /// load stops.
    fn wait_posted(&self, own: Option<u64>, cancel: &AtomicBool) {
        loop {
            let waiting = self.lock().is_some_and(|out| {
                out.requests
                    .iter()
                    .any(|(id, p)| Some(*id) != own && !p.posted.load(Ordering::SeqCst))
            });
            if !waiting || cancel.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// The guard for the tail's request (`own`, left out): a statement that fails unless D1 has
    /// committed every other request not answered yet. `None` when there is none to guard
    /// against, or a request's key is not known, or there are too many: the tail then waits for
    /// their answers. Called once every request of the load is produced.
    fn guard(&self, own: Option<u64>, bytes: usize) -> Option<String> {
        let out = self.lock()?;
        let others: Vec<&Option<String>> = out
            .requests
            .iter()
            .filter(|(id, _)| Some(**id) != own)
            .map(|(_, p)| &p.exists)
            .collect();
        if others.is_empty() || others.len() > GUARD_KEYS {
            return None;
        }
        let exists: Option<Vec<String>> = others.into_iter().cloned().collect();
        let mut exists = exists?;
        // The same order each time, for the logs.
        exists.sort();
        Some(guard_sql(&exists)).filter(|sql| sql.len() <= bytes)
    }

    fn set_unfinished(&self, n: usize) {
        *self.unfinished.lock().unwrap_or_else(|e| e.into_inner()) = n;
        self.changed.notify_all();
    }

    /// Waits until the calling table is the only one not finished.
    fn wait_for_the_others(&self) {
        let mut n = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 1 {
            n = self.changed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs a list of table work items: tables start when their parents are done, at most
/// `parallel_tables` at once; requests go through `writes_in_flight` senders (the window of
/// writes in flight decides how many send at once; a sender waiting for room holds one request
/// packed). Returns the tables that failed when `continue_on_error` let the run go on without
/// them.
pub fn run_work(
    ctx: &Loader<'_>,
    work: &[Work],
    stats: &mut Vec<TableStats>,
) -> Result<Vec<String>> {
    run_work_then(ctx, work, stats, None, &[], None)
}

/// [`run_work`], with `tail` at the end of the last data request when it fits there (see
/// [`Tail::sent`]), children starting before their parents finish where `gates` (see
/// [`gates`]; none when empty) let them, and the tables' requests right behind `opening`.
pub fn run_work_then(
    ctx: &Loader<'_>,
    work: &[Work],
    stats: &mut Vec<TableStats>,
    tail: Option<&Tail>,
    gates: &[Vec<Gate>],
    opening: Option<Opening<'_>>,
) -> Result<Vec<String>> {
    if work.iter().all(|w| w.done) {
        if let Some(Opening(send)) = opening {
            send(&|| {})?;
        }
        return Ok(Vec::new());
    }
    let todo = work.iter().filter(|w| !w.done).count();
    // A guard proves a request committed by its last row, which only a plain insert into a
    // table created empty says.
    let guarded = |tail: &Tail| {
        tail.guarded
            && work
                .iter()
                .filter(|w| !w.done)
                .all(|w| w.pass == Pass::Insert && !w.shape.is_virtual)
    };
    let ending = tail
        .filter(|t| !t.statements.is_empty() && ctx.config.method == Method::Query)
        .map(|tail| Ending {
            tail,
            producing: std::sync::atomic::AtomicUsize::new(todo),
            unfinished: std::sync::Mutex::new(todo),
            changed: std::sync::Condvar::new(),
            outstanding: guarded(tail).then(Default::default),
        });
    let ending = ending.as_ref();
    // The last item is the opening's request.
    let head = work.len();
    let reached = Reached::new(work.len() + 1);
    if opening.is_none() {
        reached.finish(head, false);
    }
    // The opening went as planned: the statements after the data may ride.
    let planned = AtomicBool::new(true);
    for (i, w) in work.iter().enumerate() {
        if w.done {
            reached.finish(i, false);
        } else if let Some(key) = ctx.state.resume_after(&w.shape.table) {
            // What an earlier run committed (the checkpoint's key).
            if w.pass == Pass::Insert {
                reached.advance(i, &key);
            }
        }
    }
    let no_gates = vec![Vec::new(); work.len()];
    // The import method acknowledges a request when the file holding it is loaded, which may
    // wait for the child's rows: children wait for whole parents there.
    let gates = if gates.len() == work.len() && ctx.config.method == Method::Query {
        gates
    } else {
        &no_gates
    };
    let config = ctx.config;
    let cancel = AtomicBool::new(false);
    // The senders waiting for room in the window hold the requests packed ahead; the channel
    // adds one (memory: a request each, about MIGRATION_REQUEST_BYTES).
    let (job_tx, job_rx) = bounded::<Job<'_>>(1);
    let (done_tx, done_rx) = unbounded::<(usize, TableStats, Option<Error>)>();
    let mut first_error: Option<Error> = None;
    let mut failed: Vec<String> = Vec::new();

    std::thread::scope(|scope| {
        let (reached, cancel, planned) = (&reached, &cancel, &planned);
        let opened = opening.map(|Opening(send)| {
            scope.spawn(move || {
                let sent = send(&|| reached.opening_on_its_way(head));
                if sent.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                planned.store(matches!(sent, Ok(true)), Ordering::SeqCst);
                reached.finish(head, sent.is_err());
                sent
            })
        });
        // The import method loads files one at a time (an import blocks the database); a sync's
        // few rows go as queries.
        if config.method == Method::Import && work.iter().all(|w| w.pass != Pass::Sync) {
            let rx = job_rx.clone();
            scope.spawn(move || crate::import::importer(&ctx.outlet(), rx));
        } else {
            for _ in 0..config.writes_in_flight {
                let rx = job_rx.clone();
                scope.spawn(move || sender(ctx, rx));
            }
        }
        drop(job_rx);

        let mut started: Vec<bool> = work.iter().map(|w| w.done).collect();
        let mut finished = started.clone();
        let mut broken = vec![false; work.len()];
        let mut running = 0usize;
        loop {
            if first_error.is_none() {
                for i in 0..work.len() {
                    if running >= config.parallel_tables {
                        break;
                    }
                    // A parent still loading is waited for request by request where a gate
                    // allows it.
                    let ready = |p: usize| {
                        finished[p]
                            || (started[p] && !broken[p] && gates[i].iter().any(|g| g.parent == p))
                    };
                    if started[i] || !work[i].parents.iter().all(|&p| ready(p)) {
                        continue;
                    }
                    started[i] = true;
                    if work[i].parents.iter().any(|&p| broken[p]) {
                        // A parent failed: its children cannot load either.
                        finished[i] = true;
                        broken[i] = true;
                        reached.finish(i, true);
                        failed.push(work[i].shape.table.clone());
                        continue;
                    }
                    running += 1;
                    let (job_tx, done_tx) = (job_tx.clone(), done_tx.clone());
                    let item = &work[i];
                    let load = Load {
                        jobs: job_tx,
                        cancel,
                        ending,
                        reached,
                        gates,
                        index: i,
                        head,
                        planned,
                    };
                    scope.spawn(move || {
                        let (stats, error) = copy_table(ctx, item, &load);
                        let _ = done_tx.send((i, stats, error));
                    });
                }
            }
            if let Some(e) = ending {
                e.set_unfinished(finished.iter().filter(|f| !**f).count());
            }
            if running == 0 {
                break;
            }
            let (i, table_stats, error) = done_rx.recv().expect("a table worker reports");
            running -= 1;
            finished[i] = true;
            reached.finish(i, error.is_some());
            if let Some(e) = ending {
                e.set_unfinished(finished.iter().filter(|f| !**f).count());
            }
            merge(stats, table_stats);
            if let Some(e) = error {
                if config.continue_on_error {
                    log::error(&e.to_string());
                    broken[i] = true;
                    failed.push(work[i].shape.table.clone());
                } else {
                    cancel.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
        drop(job_tx);
        if let Some(Err(e)) = opened.map(|h| h.join().expect("the opening's thread")) {
            // What the tables behind it stopped for.
            first_error = Some(e);
        }
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(failed),
    }
}

/// Reads one table in batches, packs it, and sends its requests; waits for every answer.
/// Returns the table's counts, and the error that stopped it, if any.
/// What a table worker shares with the load.
struct Load<'l> {
    jobs: Sender<Job<'l>>,
    cancel: &'l AtomicBool,
    ending: Option<&'l Ending<'l>>,
    reached: &'l Reached,
    /// Every work item's gates.
    gates: &'l [Vec<Gate>],
    /// This table's index in the work list.
    index: usize,
    /// The opening's index in `reached`.
    head: usize,
    /// See [`Opening`].
    planned: &'l AtomicBool,
}

fn copy_table(ctx: &Loader<'_>, work: &Work, load: &Load<'_>) -> (TableStats, Option<Error>) {
    let mut stats = TableStats {
        table: work.shape.table.clone(),
        ..TableStats::default()
    };
    let error = copy_rows(ctx, work, load, &mut stats).err();
    if let Some(e) = &error {
        stats.error = Some(e.to_string());
    }
    (stats, error.map(|e| e.in_table(&work.shape.table)))
}

/// One table's requests on their way: how many, and the first error.
#[derive(Default)]
struct Flight {
    in_flight: usize,
    next_seq: u64,
    watermark: Watermark,
    error: Option<Error>,
    /// The [`Outstanding`] id of each request sent, by sequence number.
    ids: HashMap<u64, u64>,
    /// What each early request in flight needs (see [`Reached`]).
    needs: HashMap<u64, Needs>,
    /// Early requests D1 refused, sent again.
    again: u64,
    /// The [`Outstanding`] flag of each early request in flight, for its second sending.
    posted: HashMap<u64, Arc<AtomicBool>>,
}

/// Requests in flight of one table, in the order they were sent: the checkpoint advances over
/// the prefix D1 has committed, with the rows that prefix wrote.
#[derive(Default)]
struct Watermark {
    /// (sequence number, last key, rows written once committed).
    pending: std::collections::VecDeque<(u64, Option<Vec<Value>>, Option<u64>)>,
    /// Rows of committed requests without a key of their own, not yet in a checkpoint.
    carry: u64,
}

impl Watermark {
    fn sent(&mut self, seq: u64, last_key: Option<Vec<Value>>) {
        self.pending.push_back((seq, last_key, None));
    }

    /// `seq` was not sent after all (it goes again under another number).
    fn forget(&mut self, seq: u64) {
        self.pending.retain(|e| e.0 != seq);
    }

    /// Marks `seq` committed with the `rows` it wrote; returns the new key up to which
    /// everything is committed, and the rows written up to it since the last one returned.
    fn committed(&mut self, seq: u64, rows: u64) -> Option<(Vec<Value>, u64)> {
        if let Some(entry) = self.pending.iter_mut().find(|e| e.0 == seq) {
            entry.2 = Some(rows);
        }
        let mut key = None;
        while self.pending.front().is_some_and(|e| e.2.is_some()) {
            let (_, k, rows) = self.pending.pop_front().expect("front");
            self.carry += rows.unwrap_or(0);
            if k.is_some() {
                key = k;
            }
        }
        key.map(|k| (k, std::mem::take(&mut self.carry)))
    }
}

fn copy_rows(ctx: &Loader<'_>, work: &Work, load: &Load<'_>, stats: &mut TableStats) -> Result<()> {
    let (jobs, cancel, ending) = (&load.jobs, load.cancel, load.ending);
    let config = ctx.config;
    let started = Instant::now();
    let shape = &work.shape;
    let table = shape.table.clone();
    let conn = open_read_only(config.source_file())?;
    let filter = pass_filter(work);
    let after = match work.pass {
        Pass::Insert => ctx.state.resume_after(&table),
        Pass::SetDeferred | Pass::Sync | Pass::Anchors | Pass::Whole => None,
    };
    if after.is_some() {
        log::info(&format!(
            "{table}: resuming after key {}",
            shape.key_text_of(after.as_deref().unwrap_or_default())
        ));
    }
    let total = match work.pass {
        Pass::Sync => work.prepared.iter().map(|r| r.rows as u64).sum(),
        Pass::Anchors | Pass::Whole => 0,
        _ => ctx.rows.get(&table).copied().unwrap_or(0),
    };
    let stage = match work.pass {
        Pass::Insert if shape.is_virtual => Stage::VirtualRefill,
        Pass::Insert | Pass::Anchors | Pass::Whole => Stage::Data,
        Pass::SetDeferred => Stage::DeferredKeys,
        Pass::Sync => Stage::Differences,
    };
    // Rows too large for one statement get a line of their own, after the pass's, when there are
    // any.
    let mut large: Option<crate::progress::TableProgress<'_>> = None;
    let mut bar = ctx.progress.pass(
        &table,
        stage,
        if work.pass == Pass::SetDeferred {
            0
        } else {
            total
        },
    );
    let (ack_tx, ack_rx) = unbounded::<(u64, Ack)>();
    let mut flight = Flight::default();
    let reached = load.reached;
    // The import method answers a request once its file is loaded: nothing goes right behind
    // it (see `run_work_then`), and its requests are not followed.
    let listening = config.method == Method::Query;
    let job = |seq: u64, request: Request, early: bool, posted: Option<Arc<AtomicBool>>| Job {
        table: table.clone(),
        seq,
        request,
        ack: ack_tx.clone(),
        posted,
        early,
        listener: listening.then_some((reached as &dyn Listener, load.index)),
    };
    let mut on_ack = |(seq, ack): (u64, Ack), stats: &mut TableStats, flight: &mut Flight| match ack
    {
        Ack::Done(Ok(sent)) => {
            flight.needs.remove(&seq);
            flight.posted.remove(&seq);
            if let (Some(id), Some(ending)) = (flight.ids.remove(&seq), ending) {
                ending.answered(id);
            }
            stats.rows_written += sent.rows - sent.failed;
            stats.rows_failed += sent.failed;
            stats.statements += sent.statements;
            stats.bytes_sent += sent.bytes;
            stats.requests += sent.requests;
            bar.add(sent.rows);
            bar.add_bytes(sent.bytes);
            if sent.large_rows > 0 {
                large
                    .get_or_insert_with(|| ctx.progress.pass(&table, Stage::LargeValues, 0))
                    .add(sent.large_rows);
            }
            if work.pass == Pass::Insert {
                let written = sent.rows - sent.failed;
                if let Some((key, rows)) = flight.watermark.committed(seq, written) {
                    if let Err(e) = ctx.state.advanced(&table, &key, rows) {
                        flight.error.get_or_insert(e);
                    }
                }
            }
        }
        Ack::Done(Err(e)) => {
            // Not answered as committed: a guard still waits for it.
            flight.ids.remove(&seq);
            flight.error.get_or_insert(e);
        }
        Ack::Behind { request, reason } => {
            // It reached D1 before what it needs was committed (or failed for its own
            // reasons): it goes again once that is committed, as an ordinary request.
            stats.requests += 1;
            flight.again += 1;
            log::debug(&format!(
                "{table}: a request sent right behind the requests it needs was refused ({reason}); \
                 it goes again once they are committed"
            ));
            let needs = flight.needs.remove(&seq).unwrap_or_default();
            let posted = flight.posted.remove(&seq);
            if let Some(posted) = &posted {
                // Not on its way any more, until it goes again.
                posted.store(false, Ordering::SeqCst);
            }
            if !needs
                .iter()
                .all(|(p, bound)| reached.wait(*p, bound, cancel))
            {
                flight.ids.remove(&seq);
                flight.error.get_or_insert(stopped_behind());
            } else if jobs.send(job(seq, request, false, posted)).is_ok() {
                flight.in_flight += 1;
            }
        }
    };

    let mut gate = Gated::new(&conn, work, load, after.clone())?;
    type OnAck<'x> = dyn FnMut((u64, Ack), &mut TableStats, &mut Flight) + 'x;
    let mut send = |(request, id): (Request, Registered),
                    stats: &mut TableStats,
                    flight: &mut Flight,
                    on_ack: &mut OnAck<'_>| {
        let needs = match gate.pass(&request, cancel) {
            Ok(needs) => needs,
            Err(e) => {
                flight.error.get_or_insert(e);
                return;
            }
        };
        // Rows between the CHECK pragmas do not go early: refused between them (no such
        // table), a request would leave the setting, which is the connection's, on.
        if request.relax_checks && !needs.iter().all(|(p, b)| reached.wait(*p, b, cancel)) {
            flight.error.get_or_insert(stopped_behind());
            return;
        }
        let seq = flight.next_seq;
        flight.next_seq += 1;
        flight.watermark.sent(seq, request.last_key.clone());
        if listening {
            reached.queued(load.index, seq, request.last_key.clone());
        }
        let posted = id.map(|(id, posted)| {
            flight.ids.insert(seq, id);
            posted
        });
        let early = !needs.is_empty() && !request.relax_checks;
        if early {
            flight.needs.insert(seq, needs);
            if let Some(posted) = &posted {
                flight.posted.insert(seq, posted.clone());
            }
        }
        if jobs.send(job(seq, request, early, posted)).is_ok() {
            flight.in_flight += 1;
        }
        // A table whose rows reference each other through a NOT NULL key goes one request at a time.
        while flight.in_flight > 0 {
            let ack = if work.sequential {
                ack_rx.recv().ok()
            } else {
                ack_rx.try_recv().ok()
            };
            let Some(ack) = ack else { break };
            flight.in_flight -= 1;
            on_ack(ack, stats, flight);
        }
    };

    // With a tail to carry, each request waits for the next to be produced: the table's last
    // one may be the load's last, which carries it. Each is registered for the tail's guard
    // when it is produced, before this table counts as produced.
    let mut held: Option<(Request, Registered)> = None;
    let mut sink = |event: Produced| {
        match event {
            Produced::Read(n) => stats.rows_read += n,
            Produced::Request(request) if ending.is_some() => {
                let id = ending.and_then(|e| e.produced(load.index, shape, &request));
                if let Some(before) = held.replace((request, id)) {
                    send(before, stats, &mut flight, &mut on_ack);
                }
            }
            Produced::Request(request) => send((request, None), stats, &mut flight, &mut on_ack),
            Produced::Oversize { key, bytes, sql } => {
                let reason =
                    format!("row of {bytes} bytes is over D1's {MAX_ROW_BYTES}-byte limit");
                if config.on_bad_row == BadRow::Skip {
                    log::warn(&format!("table {table}, row {key}: {reason}"));
                    stats.rows_failed += 1;
                    ctx.rejects.write(&table, &key, &reason, &sql)?;
                } else {
                    return Err(Error::Row {
                        table: table.clone(),
                        key,
                        message: reason,
                    });
                }
            }
        }
        Ok(flight.error.is_none() && !cancel.load(Ordering::Relaxed))
    };
    // A sync's requests were prepared from its differences; the others are read and packed now.
    let produced = match work.pass {
        Pass::Sync => work.prepared.iter().try_for_each(|request| {
            if sink(Produced::Request(request.clone()))? {
                Ok(())
            } else {
                Err(Error::Refused(
                    "stopped because another table failed".into(),
                ))
            }
        }),
        _ => {
            let request_bytes = || ctx.client.request_bytes(config.limits.request_bytes);
            produce(config, &conn, work, &filter, after, &request_bytes, sink)
        }
    };
    if let Err(e) = produced {
        flight.error.get_or_insert(e);
    }
    if let Some(ending) = ending {
        // Every request of every table is produced once this count reaches 0: no table waits
        // for this one to start, and this request is the load's last.
        let last = ending.producing.fetch_sub(1, Ordering::SeqCst) == 1;
        let stopped = |flight: &Flight| flight.error.is_some() || cancel.load(Ordering::Relaxed);
        if let Some((request, id)) = held.take().filter(|_| !stopped(&flight)) {
            let room = ctx.client.request_bytes(config.limits.request_bytes);
            // A child still loading may wait for this table's last rows: they go now.
            let waited_for = load.gates.iter().enumerate().any(|(j, gates)| {
                gates.iter().any(|g| g.parent == load.index) && !load.reached.finished(j)
            });
            // The opening (the small tables' rows) is in before the objects after the data.
            let opened = |flight: &Flight| {
                reached.wait(load.head, &Value::Null, cancel)
                    && load.planned.load(Ordering::SeqCst)
                    && !stopped(flight)
            };
            let ride = last
                && !waited_for
                && opened(&flight)
                && !work.sequential
                && request.bytes + ending.tail.bytes() <= room
                && request.statements.len() + ending.tail.statements.len()
                    <= config.limits.request_statements;
            // Guarded, it goes once every other request has left, without waiting for their
            // answers; when D1 refuses it (for whatever reason: the guard found a request not
            // committed yet, or another), it goes again as unguarded.
            let guard = ride
                .then(|| {
                    let fits = request.statements.len() + ending.tail.statements.len()
                        < config.limits.request_statements;
                    let bytes = (room - request.bytes - ending.tail.bytes())
                        .min(config.limits.statement_bytes);
                    let own = id.as_ref().map(|(id, _)| *id);
                    // After every other request, and half a round trip more: a large body
                    // handed to the connection a moment before a smaller one can still reach
                    // D1 after it. D1 still has them to run meanwhile.
                    ending.wait_posted(own, cancel);
                    std::thread::sleep(settle(ctx.client.shortest_round_trip()));
                    ending.guard(own, bytes).filter(|_| fits)
                })
                .flatten();
            let request = match guard {
                None => Some(request),
                Some(guard) => {
                    let seq = flight.next_seq;
                    flight.next_seq += 1;
                    flight.watermark.sent(seq, request.last_key.clone());
                    match with_tail(ctx, &request, ending.tail, Some(&guard)) {
                        Ok(sent) => {
                            ending.tail.sent.store(true, Ordering::SeqCst);
                            on_ack((seq, Ack::Done(Ok(sent))), stats, &mut flight);
                            None
                        }
                        Err(f) => {
                            // It goes again, unguarded (its statements are idempotent, should D1
                            // have committed it and its answer been lost).
                            flight.watermark.forget(seq);
                            stats.requests += 1;
                            log::debug(&format!(
                                "{table}: the last data request with the statements after the \
                                 data did not go before the load's other requests were answered \
                                 ({}): it goes again once they are",
                                f.error
                            ));
                            Some(request)
                        }
                    }
                }
            };
            if let Some(request) = request {
                if ride {
                    // Its own answers, then the other tables' (their workers wait for theirs).
                    while flight.in_flight > 0 {
                        let ack = ack_rx.recv().expect("senders answer every job");
                        flight.in_flight -= 1;
                        on_ack(ack, stats, &mut flight);
                    }
                    ending.wait_for_the_others();
                }
                if stopped(&flight) {
                    // Not sent: the checkpoint does not cover it.
                } else if !ride {
                    send((request, id), stats, &mut flight, &mut on_ack);
                } else {
                    let seq = flight.next_seq;
                    flight.next_seq += 1;
                    flight.watermark.sent(seq, request.last_key.clone());
                    match with_tail(ctx, &request, ending.tail, None) {
                        Ok(sent) => {
                            ending.tail.sent.store(true, Ordering::SeqCst);
                            on_ack((seq, Ack::Done(Ok(sent))), stats, &mut flight);
                        }
                        Err(f) => {
                            flight.watermark.forget(seq);
                            if f.shrink || matches!(f.error, D1Error::Sql { .. }) {
                                // Refused together, which wrote nothing: the rows go alone
                                // (split down to a row at fault, as any request), the tail
                                // after the load.
                                log::info(&format!(
                                    "the last data request did not go with the statements after \
                                     the data ({}): each is sent on its own",
                                    f.error
                                ));
                                send((request, id), stats, &mut flight, &mut on_ack);
                            } else {
                                flight.error.get_or_insert(f.error.into());
                            }
                        }
                    }
                }
            }
        }
    }
    while flight.in_flight > 0 {
        let ack = ack_rx.recv().expect("senders answer every job");
        flight.in_flight -= 1;
        on_ack(ack, stats, &mut flight);
    }
    if let Some(ending) = ending {
        ending.left(load.index);
    }
    if flight.again > 0 {
        log::debug(&format!(
            "{table}: {} requests reached D1 before what they need and went again (each counts twice)",
            flight.again
        ));
    }
    let error = flight.error;
    if matches!(work.pass, Pass::SetDeferred | Pass::Anchors | Pass::Whole) {
        stats.rows_read = 0;
        stats.rows_written = 0;
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    if let Some(e) = error {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Refused(
            "stopped because another table failed".into(),
        ));
    }
    match work.pass {
        Pass::Insert => ctx.state.set_inserted(&table),
        Pass::SetDeferred => ctx.state.set_deferred_done(&table),
        Pass::Sync => Ok(()),
        Pass::Anchors | Pass::Whole => ctx.state.set_phase_done(&group_phase(&table)),
    }
}

/// A table's gates on its way: before each request, the largest key it refers to in each parent
/// still loading, read from the source over the request's rows, and the wait for the parent's
/// requests up to that key to be on their way to D1; and the wait for the load's opening to
/// be on its way. The request goes early when D1 may not have committed them yet.
struct Gated<'c> {
    /// Per gate of a parent not finished when the table started: the parent, the statements of
    /// the largest key over the rows after a key up to the last, and over every row up to it.
    open: Vec<(usize, rusqlite::Statement<'c>, rusqlite::Statement<'c>)>,
    reached: &'c Reached,
    /// The opening's index in `reached`, until D1 has committed it.
    head: Option<usize>,
    /// The key of the last row sent before (or the key the table resumes after).
    after: Option<Vec<Value>>,
}

/// How long after the last request it may need has left an early request leaves: requests
/// posted on other connections at the same moment may reach D1 in either order (the API's
/// front end, or this machine's, reads them in parallel); a request that arrives first costs a
/// second sending.
const BEHIND: std::time::Duration = std::time::Duration::from_millis(30);

fn stopped_behind() -> Error {
    Error::Refused("stopped because a request it needs failed".into())
}

impl<'c> Gated<'c> {
    fn new<'l: 'c>(
        conn: &'c rusqlite::Connection,
        work: &Work,
        load: &Load<'l>,
        after: Option<Vec<Value>>,
    ) -> Result<Gated<'c>> {
        let shape = &work.shape;
        // Rows inserted, which D1 refuses whole (no such table, a parent's row missing at the
        // commit) when they arrive before what they need: they may go behind the opening.
        // Other passes (a group's rows and keys) wait for it to be committed, as before.
        let inserts = work.pass == Pass::Insert && !shape.is_virtual && work.group.is_empty();
        let head = if load.reached.finished(load.head) {
            None
        } else if inserts {
            Some(load.head)
        } else if load.reached.wait(load.head, &Value::Null, load.cancel) {
            None
        } else {
            return Err(stopped_behind());
        };
        let keys = shape.key_exprs.join(", ");
        let marks = vec!["?"; shape.key_exprs.len()].join(", ");
        let filter = pass_filter(work);
        let filter = if filter.is_empty() {
            String::new()
        } else {
            format!(" AND ({filter})")
        };
        let mut open = Vec::new();
        for gate in &load.gates[load.index] {
            if load.reached.finished(gate.parent) {
                continue;
            }
            let max = format!(
                "SELECT max({}) FROM {} WHERE ({keys}) <= ({marks}){filter}",
                gate.column, shape.read_from
            );
            let from = format!("{max} AND ({keys}) > ({marks})");
            open.push((gate.parent, conn.prepare(&from)?, conn.prepare(&max)?));
        }
        Ok(Gated {
            open,
            reached: load.reached,
            head,
            after,
        })
    }

    /// Waits until what `request` needs (the opening, the parents' rows it refers to) is on
    /// its way to D1; returns what of it D1 may not have committed yet.
    fn pass(&mut self, request: &Request, cancel: &AtomicBool) -> Result<Needs> {
        let mut needs = Needs::new();
        if let Some(head) = self.head {
            if !self
                .reached
                .wait_for(head, &Value::Null, Level::OnItsWay, cancel)
            {
                return Err(stopped_behind());
            }
            if self.reached.holds(head, &Value::Null) {
                self.head = None;
            } else {
                needs.push((head, Value::Null));
            }
        }
        let Some(last) = &request.last_key else {
            self.behind(&needs);
            return Ok(needs); // no row of its own: pieces of a row sent before
        };
        if self.open.is_empty() {
            self.behind(&needs);
            return Ok(needs);
        }
        let mut params: Vec<rusqlite::types::Value> = last.iter().map(to_sql).collect();
        if let Some(after) = &self.after {
            params.extend(after.iter().map(to_sql));
        }
        for (parent, from, max) in &mut self.open {
            if self.reached.finished(*parent) {
                continue;
            }
            let stmt = if self.after.is_some() { from } else { max };
            let bound: Value = stmt.query_row(rusqlite::params_from_iter(&params), |r| {
                Ok(crate::source::value(r.get_ref(0)?))
            })?;
            if bound == Value::Null {
                continue;
            }
            if !self
                .reached
                .wait_for(*parent, &bound, Level::OnItsWay, cancel)
            {
                return Err(stopped_behind());
            }
            if !self.reached.holds(*parent, &bound) {
                needs.push((*parent, bound));
            }
        }
        self.after = Some(last.clone());
        self.behind(&needs);
        Ok(needs)
    }

    /// An early request leaves [`BEHIND`] after the last request it may need left.
    fn behind(&self, needs: &Needs) {
        if let Some(at) = self.reached.posted_at(needs.iter().map(|(p, _)| *p)) {
            std::thread::sleep(BEHIND.saturating_sub(at.elapsed()));
        }
    }
}

/// How long the tail's request waits after the other requests of the load have left, so that
/// they reach D1 before it: half the shortest round trip of a write (of at most 1 s), 10 ms
/// before one is measured. At a quarter, Northwind's tail at 250 ms still reached the local
/// D1 before the last 1 MB request in 3 runs of 12 on a loaded machine (none of 8 at a half),
/// and went twice.
fn settle(round_trip: Option<std::time::Duration>) -> std::time::Duration {
    let ms = std::time::Duration::from_millis;
    round_trip.map_or(ms(10), |rt| rt.min(ms(1000)) / 2)
}

/// Sends the load's last data request with the tail after its rows, in one request; with
/// `guard` (see [`guard_sql`]) between them. On failure, nothing of it was written when D1 (or
/// the API) refused it.
fn with_tail(
    ctx: &Loader<'_>,
    request: &Request,
    tail: &Tail,
    guard: Option<&str>,
) -> std::result::Result<Sent, crate::d1::Failure> {
    let rows: Vec<&str> = request.statements.iter().map(|s| s.sql.as_str()).collect();
    let mut sqls = crate::send::relaxed(&rows, request.relax_checks);
    sqls.extend(guard);
    sqls.extend(tail.statements.iter().map(String::as_str));
    ctx.client.execute(&sqls)?;
    let mut sent = Sent {
        rows: request.rows as u64,
        large_rows: request.large_rows as u64,
        requests: 1,
        ..Sent::default()
    };
    sent.committed(&rows);
    Ok(sent)
}

/// A sender thread: posts each job's request and reports back.
fn sender(ctx: &Loader<'_>, jobs: Receiver<Job<'_>>) {
    let out = ctx.outlet();
    for job in jobs {
        send_job(&out, job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tails_guard_asks_for_the_last_row_of_every_other_request_not_answered() {
        use crate::discover::{Column, Table, TableKind};
        use crate::pack::Shape;
        let table = |name: &str, kind, columns| Table {
            name: name.into(),
            sql: String::new(),
            kind,
            columns,
            foreign_keys: vec![],
            unique: vec![],
        };
        let t = Shape::new(
            &table(
                "t",
                TableKind::Rowid { rowid_alias: None },
                vec![Column::new("v", "", 0)],
            ),
            &[],
        );
        let w = Shape::new(
            &table(
                "w",
                TableKind::WithoutRowid,
                vec![Column::new("b", "INTEGER", 2), Column::new("a", "TEXT", 1)],
            ),
            &[],
        );
        let tail = Tail::new(vec!["CREATE INDEX i ON t(v)".into()]).guarded(true);
        let ending = Ending {
            tail: &tail,
            producing: std::sync::atomic::AtomicUsize::new(2),
            unfinished: std::sync::Mutex::new(2),
            changed: std::sync::Condvar::new(),
            outstanding: Some(Default::default()),
        };
        let request = |key: Option<Vec<Value>>| Request {
            last_key: key,
            ..Request::default()
        };
        let id = |r: Registered| r.map(|(id, _)| id);
        let first = id(ending.produced(0, &t, &request(Some(vec![Value::Integer(5)])))).unwrap();
        let text = Value::Text(b"o'neil".to_vec());
        ending.produced(1, &w, &request(Some(vec![text, Value::Integer(2)])));
        let own = id(ending.produced(0, &t, &request(Some(vec![Value::Integer(9)]))));
        // Every other request not answered, the tail's own left out.
        assert_eq!(
            ending.guard(own, 100_000).unwrap(),
            "SELECT json(CASE WHEN EXISTS(SELECT 1 FROM \"t\" WHERE rowid = 5) AND \
             EXISTS(SELECT 1 FROM \"w\" WHERE \"a\" = 'o''neil' AND \"b\" = 2) \
             THEN '0' ELSE 'not yet' END)"
        );
        // An answer is no longer asked for; a guard too long is none.
        ending.answered(first);
        assert_eq!(
            ending.guard(own, 100_000).unwrap(),
            "SELECT json(CASE WHEN EXISTS(SELECT 1 FROM \"w\" WHERE \"a\" = 'o''neil' \
             AND \"b\" = 2) THEN '0' ELSE 'not yet' END)"
        );
        assert_eq!(ending.guard(own, 50), None);
        // A request whose last row is not known: the tail waits for the answers.
        ending.produced(1, &w, &request(None));
        assert_eq!(ending.guard(own, 100_000), None);
        // Nothing else outstanding: nothing to guard against.
        let alone = Ending {
            outstanding: Some(Default::default()),
            ..ending
        };
        let own = id(alone.produced(0, &t, &request(Some(vec![Value::Integer(9)]))));
        assert_eq!(alone.guard(own, 100_000), None);
    }

    #[test]
    fn the_tail_settles_half_a_round_trip_of_at_most_a_second() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(settle(None), ms(10));
        assert_eq!(settle(Some(ms(370))), ms(185));
        assert_eq!(settle(Some(ms(5000))), ms(500));
    }

    #[test]
    fn the_checkpoint_advances_over_the_committed_prefix_with_its_rows() {
        let key = |k: i64| Some(vec![Value::Integer(k)]);
        let mut w = Watermark::default();
        w.sent(0, key(10));
        w.sent(1, None);
        w.sent(2, key(30));
        w.sent(3, key(40));
        // Answers out of order: nothing is checkpointed before the first request is.
        assert_eq!(w.committed(2, 10), None);
        assert_eq!(w.committed(1, 1), None);
        assert_eq!(w.committed(0, 9), Some((vec![Value::Integer(30)], 20)));
        assert_eq!(w.committed(3, 10), Some((vec![Value::Integer(40)], 10)));
    }
}
