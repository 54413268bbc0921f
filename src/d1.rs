//! The D1 HTTP client: posts statements to `/raw`, classifies every answer with one retry policy,
//! retries what is transient (with full-jitter backoff and `Retry-After`), and keeps requests
//! under Cloudflare's API rate limit and writes within the adaptive window (see `flow`), for
//! every thread of the run at once.
//!
//! It talks to `api.cloudflare.com` and to `scripts/local-d1` alike; only the base URL differs.
//! The token is only ever put in the `Authorization` header.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::D1Error;
use crate::flow::{Phases, RateLimiter, Window};
use crate::log;

mod account;
pub use account::{DatabaseInfo, ImportOutcome};

/// The API token; its `Debug` never shows it.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(token: String) -> Secret {
        Secret(token)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Where and how to reach one D1 database.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub api_url: String,
    pub account_id: String,
    pub database_id: String,
    pub token: Secret,
}

/// Retries, backoff and rate limit.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Longest `Retry-After` honoured before giving up.
    pub max_retry_after: Duration,
    pub timeout: Duration,
    /// Requests allowed per `rate_window` (0: no limit).
    pub rate_limit: usize,
    pub rate_window: Duration,
    /// The ceiling of the adaptive window of writes in flight (`MIGRATION_WRITES_IN_FLIGHT`).
    pub max_in_flight: usize,
}

impl RetryPolicy {
    /// The limiter this policy asks for: `rate_limit` requests per `rate_window`.
    pub fn limiter(&self) -> RateLimiter {
        RateLimiter::new(self.rate_limit, self.rate_window)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(300),
            timeout: Duration::from_secs(60),
            rate_limit: 1100,
            rate_window: Duration::from_secs(300),
            max_in_flight: 3,
        }
    }
}

/// What one answer means.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Success,
    /// Try the same request again (after at least `after`, when the server said so).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The request is too large for the engine: send it in smaller pieces.
    Shrink {
        reason: String,
    },
    /// It can only fail again.
    Fail,
}

const TRANSIENT: &[&str] = &[
    "network connection lost",
    "storage caused object to be reset",
    "reset because its code was updated",
    "transient issue on remote node",
    "client disconnected",
    "overloaded",
    "sqlite_busy",
    "exceeded timeout",
];

/// Whether D1 says its queue of requests is full ("D1 DB is overloaded. Too many requests
/// queued." or "... Requests queued for too long."): retried, and the window of writes halves,
/// as after a 429 (D1_FACTS: back off and send less on overloaded).
fn overloaded(messages: &str) -> bool {
    messages.to_lowercase().contains("overloaded")
}

/// What the API (or a proxy before it) answers, often as an HTML page, to a body too large.
const BODY_TOO_LARGE: &[&str] = &[
    "request entity too large",
    "payload too large",
    "request too large",
    "content too large",
];

/// Whether an answer says the request's body was too large: HTTP 413, or its words in a page
/// that is not D1's JSON.
pub fn body_too_large(status: u16, text: &str) -> bool {
    let lower = text.to_lowercase();
    status == 413 || BODY_TOO_LARGE.iter().any(|m| lower.contains(m))
}

const TOO_LARGE: &[&str] = &[
    "sqlite_nomem",
    "statement too long",
    "exceeded its memory limit",
    "exceeded its cpu time limit",
];

/// The retry policy's classification of an HTTP status and D1's error messages.
pub fn classify(status: u16, messages: &[String], retry_after: Option<Duration>) -> Verdict {
    let joined = messages.join("; ");
    let lower = joined.to_lowercase();
    if (200..300).contains(&status) && messages.is_empty() {
        return Verdict::Success;
    }
    if TOO_LARGE.iter().any(|m| lower.contains(m)) || body_too_large(status, &joined) {
        return Verdict::Shrink { reason: joined };
    }
    if status == 429 {
        return Verdict::Retry {
            reason: format!("HTTP 429 {joined}"),
            after: retry_after.or(Some(Duration::from_secs(1))),
        };
    }
    if TRANSIENT.iter().any(|m| lower.contains(m)) || (status >= 500 && !lower.contains("sqlite")) {
        return Verdict::Retry {
            reason: format!("HTTP {status} {joined}"),
            after: retry_after,
        };
    }
    Verdict::Fail
}

/// Rows and column names of one statement's result.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawResult {
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub rows: Vec<Vec<Json>>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: Option<Json>,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct StatementResult {
    #[serde(default)]
    results: Option<RawResult>,
    #[serde(default)]
    meta: Option<Meta>,
}

/// What D1 says a statement cost: the rows it read and wrote, as Cloudflare bills them.
#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    rows_read: u64,
    #[serde(default)]
    rows_written: u64,
}

/// Counters shared by every thread using the client.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// D1's `meta.rows_read` and `meta.rows_written`, summed over every answered statement.
    pub rows_read: AtomicU64,
    pub rows_written: AtomicU64,
    pub bytes_received: AtomicU64,
}

/// A D1 database behind the REST API.
pub struct D1Client {
    agent: ureq::Agent,
    endpoint: Endpoint,
    url: String,
    /// `gzip` across a network; `identity` to an API on this machine, where compressing costs
    /// both ends more CPU than the transfer it saves.
    accept_encoding: &'static str,
    policy: RetryPolicy,
    /// Every request of the run, reads included, passes the one rate limiter (shared by the
    /// clients of every database of a fleet: the limit is the token's).
    rate: Arc<RateLimiter>,
    /// Writes in flight.
    writes: Window,
    /// See [`D1Client::max_body`].
    max_body: AtomicUsize,
    /// See [`D1Client::page_bytes`].
    answer_limit: AtomicUsize,
    /// Held shared by each request in flight, and exclusively by one that must run alone.
    gate: RwLock<()>,
    pub counters: Counters,
    pub phases: Phases,
}

impl fmt::Debug for D1Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("D1Client").field("url", &self.url).finish()
    }
}

/// A request's body read by the HTTP client, which says when the client has read all of it
/// (written it to the connection).
struct Posting<'b> {
    body: &'b [u8],
    posted: &'b dyn Fn(),
}

impl std::io::Read for Posting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.body.read(buf)?;
        if self.body.is_empty() {
            (self.posted)();
        }
        Ok(n)
    }
}

/// Whether `url` names this machine (localhost or a loopback address).
fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The result of an attempt that failed, with how to proceed.
#[derive(Debug)]
pub struct Failure {
    pub error: D1Error,
    pub shrink: bool,
}

impl D1Client {
    /// Takes a place under the rate limit for one request of `bytes` (its `attempt`, 0 the
    /// first) and counts it in the run's counters and its phase. The ticket holds the place until
    /// the answer is in.
    fn sending(&self, bytes: usize, attempt: u32) -> crate::flow::Ticket<'_> {
        let (waited, counted) = self.rate.send();
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.phases.record(|p| {
            p.requests += 1;
            p.bytes_sent += bytes as u64;
            p.rate_limit_ms += waited.as_millis() as u64;
            p.retries += u64::from(attempt > 0);
        });
        counted
    }

    /// A client with a rate limiter of its own (see [`D1Client::for_database`] for clients that
    /// share one).
    pub fn new(endpoint: Endpoint, policy: RetryPolicy) -> D1Client {
        let limiter = Arc::new(policy.limiter());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(policy.timeout))
            .http_status_as_error(false)
            // A fleet's lines share the pool: room for every line's requests in flight.
            .max_idle_connections(64)
            .max_idle_connections_per_host(64)
            .build()
            .into();
        D1Client::build(endpoint, policy, limiter, agent)
    }

    /// A client of another database behind the same API and token: it shares this client's
    /// connections (no new connection, nor TLS handshake, per database) and rate limiter, and
    /// counts its own requests. A fleet's lines are clients of the fleet's account client.
    pub fn for_database(&self, endpoint: Endpoint, policy: RetryPolicy) -> D1Client {
        D1Client::build(endpoint, policy, self.rate.clone(), self.agent.clone())
    }

    fn build(
        endpoint: Endpoint,
        policy: RetryPolicy,
        limiter: Arc<RateLimiter>,
        agent: ureq::Agent,
    ) -> D1Client {
        let url = format!(
            "{}/accounts/{}/d1/database/{}/raw",
            endpoint.api_url.trim_end_matches('/'),
            endpoint.account_id,
            endpoint.database_id
        );
        let accept_encoding = if is_loopback(&endpoint.api_url) {
            "identity"
        } else {
            "gzip"
        };
        D1Client {
            agent,
            endpoint,
            url,
            accept_encoding,
            rate: limiter,
            writes: Window::new(policy.max_in_flight),
            max_body: AtomicUsize::new(usize::MAX),
            answer_limit: AtomicUsize::new(usize::MAX),
            policy,
            gate: RwLock::new(()),
            counters: Counters::default(),
            phases: Phases::default(),
        }
    }

    pub fn database_id(&self) -> &str {
        &self.endpoint.database_id
    }

    /// Counts the requests from now on toward `phase` (see [`Phases`]).
    pub fn begin_phase(&self, phase: &str) {
        self.phases.begin(phase);
    }

    /// Time every thread spent held back by the rate limit or a 429's pause.
    pub fn rate_limit_wait(&self) -> Duration {
        self.rate.waited()
    }

    /// The shortest recent round trip of a write, if any was measured: the wire's share and
    /// D1's own time, for a request that found D1 idle.
    pub fn shortest_round_trip(&self) -> Option<Duration> {
        self.writes.round_trip()
    }

    /// The largest window of writes in flight reached.
    pub fn window_peak(&self) -> usize {
        self.writes.peak()
    }

    /// The window of writes in flight now.
    pub fn window(&self) -> usize {
        self.writes.limit()
    }

    /// Runs `statements` as one request (one D1 transaction), retrying transient failures.
    /// Foreign keys are checked at the request's end. `Err(Failure { shrink: true, .. })` asks
    /// the caller to send smaller statements.
    pub fn execute<S: AsRef<str>>(&self, statements: &[S]) -> Result<Vec<RawResult>, Failure> {
        self.send(statements, true, false, None)
    }

    /// [`D1Client::execute`], calling `posted` once each attempt's body has been handed to the
    /// connection (its place in the window and under the rate limit taken): a request posted
    /// after that reaches D1 after it, as long as the wire keeps their order.
    pub fn execute_posted<S: AsRef<str>>(
        &self,
        statements: &[S],
        posted: &dyn Fn(),
    ) -> Result<Vec<RawResult>, Failure> {
        self.send(statements, true, false, Some(posted))
    }

    /// Like [`D1Client::execute`], with none of this client's other requests in flight: it
    /// waits for those to finish and holds back new ones. D1 resets the database when a request
    /// breaks a constraint, and the requests in flight beside it fail with the same message;
    /// a request sent alone fails only for its own statements.
    pub fn execute_alone<S: AsRef<str>>(
        &self,
        statements: &[S],
    ) -> Result<Vec<RawResult>, Failure> {
        let _alone = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.send(statements, true, true, None)
    }

    /// Runs read-only statements as one request, retrying transient failures; in halves when
    /// D1 or the API says the request or its answer is too large. One statement whose answer
    /// is too large (D1's isolate ran out of memory, an HTTP 413, an HTML page saying so) fails
    /// with [`D1Error::TooLarge`]: its reader asks for a smaller page (see
    /// [`D1Client::answer_too_large`]).
    pub fn read<S: AsRef<str>>(&self, statements: &[S]) -> Result<Vec<RawResult>, D1Error> {
        match self.send(statements, false, false, None) {
            Ok(results) => Ok(results),
            Err(Failure { shrink: true, .. }) if statements.len() > 1 => {
                let (a, b) = statements.split_at(statements.len() / 2);
                let mut results = self.read(a)?;
                results.extend(self.read(b)?);
                Ok(results)
            }
            // A statement too long stays so however few rows it asks for.
            Err(Failure {
                shrink: true,
                error: D1Error::Sql { message },
            }) if !message.to_lowercase().contains("statement too long") => {
                Err(D1Error::TooLarge { message })
            }
            Err(f) => Err(f.error),
        }
    }

    /// Bytes of values a page read from D1 may hold now: `wanted`, or less once D1 found an
    /// answer too large (see [`D1Client::answer_too_large`]).
    pub fn page_bytes(&self, wanted: usize) -> usize {
        wanted.min(self.answer_limit.load(Ordering::Relaxed)).max(1)
    }

    /// D1 found the answer to a page of about `bytes` of values too large: pages hold at most
    /// half that from now on, for every reader of the run (a reader asks for its page again,
    /// smaller). Pages refused at once lower the limit to about the same size, not by half
    /// each.
    pub fn answer_too_large(&self, bytes: usize) {
        let limit = (bytes / 2).max(1);
        let before = self.answer_limit.fetch_min(limit, Ordering::Relaxed);
        let now = limit.min(before);
        self.phases.record(|p| {
            p.answers_too_large += 1;
            p.page_bytes = Some(now as u64);
        });
        if limit < before {
            log::warn(&format!(
                "D1 found the answer to a page of about {} KB of values too large; pages hold at \
                 most {} KB of values from now on",
                bytes / 1000,
                limit / 1000
            ));
        }
    }

    /// The largest request body the API is known to accept (`usize::MAX` until a request was
    /// refused as too large).
    pub fn max_body(&self) -> usize {
        self.max_body.load(Ordering::Relaxed)
    }

    /// Bytes of SQL a request may carry now: `wanted` (`MIGRATION_REQUEST_BYTES`), or less once
    /// the API refused a request as too large, with room for the body's JSON around the SQL.
    /// The packer asks before each request, so that requests are packed to the lowered size
    /// for the rest of the run instead of being split after packing.
    pub fn request_bytes(&self, wanted: usize) -> usize {
        let body = self.max_body();
        wanted.min(body - body / 32).max(1)
    }

    /// `alone`: the caller holds `gate` exclusively. `posted`: see [`D1Client::execute_posted`].
    fn send<S: AsRef<str>>(
        &self,
        statements: &[S],
        defer_keys: bool,
        alone: bool,
        posted: Option<&dyn Fn()>,
    ) -> Result<Vec<RawResult>, Failure> {
        // A write's body is built once it has its place in the window: a sender waiting for
        // one holds only its statements (half the memory).
        let mut built: Option<String> = None;
        let mut attempt = 0u32;
        loop {
            // Writes take a place in the window (a request sent alone has the gate to itself).
            let slot = (defer_keys && !alone).then(|| {
                let cap = self
                    .rate
                    .in_flight_cap(self.writes.round_trip().unwrap_or(Duration::ZERO));
                self.writes.acquire(cap)
            });
            let body: &str = built.get_or_insert_with(|| batch_body(statements, defer_keys));
            let limit = self.max_body();
            if statements.len() > 1 && body.len() > limit {
                // The API refused a body this large before: the caller sends halves.
                return Err(Failure {
                    error: D1Error::Http {
                        status: 413,
                        message: format!(
                            "a request of {} bytes is over the {limit} bytes the API accepted",
                            body.len()
                        ),
                    },
                    shrink: true,
                });
            }
            let counted = self.sending(body.len(), attempt);
            let sent_at = Instant::now();
            let Answer {
                verdict,
                outcome,
                too_large,
                received,
                congested,
            } = {
                let _shared = (!alone).then(|| self.gate.read().unwrap_or_else(|e| e.into_inner()));
                self.attempt(body, defer_keys, posted)
            };
            let round_trip = sent_at.elapsed();
            drop(counted);
            self.counters
                .bytes_received
                .fetch_add(received as u64, Ordering::Relaxed);
            self.phases.record(|p| p.bytes_received += received as u64);
            if congested {
                self.writes.congested();
            } else if slot.is_some() && verdict == Verdict::Success {
                self.writes.answered(round_trip, body.len());
            } else if !defer_keys && verdict == Verdict::Success && received <= WIRE_READ_BYTES {
                // A small read's round trip is the wire's (D1 answers it at once); a page's is
                // also D1's time to read it.
                self.writes.wire(round_trip);
            }
            drop(slot);
            if log::enabled(log::Level::Debug) {
                log::debug(&format!(
                    "POST {} statements, {} bytes: {:?} in {} ms (window of writes {})",
                    statements.len(),
                    body.len(),
                    verdict,
                    round_trip.as_millis(),
                    self.writes.limit()
                ));
            }
            match verdict {
                Verdict::Success => {
                    return outcome.map_err(|error| Failure {
                        error,
                        shrink: false,
                    })
                }
                Verdict::Shrink { reason } => {
                    // A read's answer too large lowers its reader's pages, not the size of
                    // requests (see `read`).
                    if too_large && defer_keys {
                        self.refused_as_too_large(body.len());
                    }
                    return Err(Failure {
                        error: D1Error::Sql { message: reason },
                        shrink: true,
                    });
                }
                Verdict::Fail => {
                    return Err(Failure {
                        error: outcome
                            .err()
                            .unwrap_or(D1Error::BadAnswer("no error".into())),
                        shrink: false,
                    })
                }
                Verdict::Retry { reason, after } => {
                    if attempt >= self.policy.max_retries {
                        return Err(Failure {
                            error: D1Error::RetriesExhausted {
                                attempts: attempt + 1,
                                last: reason,
                            },
                            shrink: false,
                        });
                    }
                    if after.is_some_and(|a| a > self.policy.max_retry_after) {
                        return Err(Failure {
                            error: D1Error::RetriesExhausted {
                                attempts: attempt + 1,
                                last: format!("{reason} (Retry-After beyond the limit)"),
                            },
                            shrink: false,
                        });
                    }
                    let delay = self.backoff(attempt).max(after.unwrap_or_default());
                    if let Some(after) = after {
                        // The API's limit is the run's: every thread waits it out.
                        self.rate.pause(after);
                    }
                    log::info(&format!(
                        "retrying a request to D1 in {} ms (attempt {} of {}): {reason}",
                        delay.as_millis(),
                        attempt + 2,
                        self.policy.max_retries + 1
                    ));
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    // The pause itself is waited out in the rate limiter, counted as rate-limit
                    // wait for this thread as for the others (a request alone in flight, as
                    // the small tables' or a DDL request, got a 429 and no wait was counted).
                    std::thread::sleep(delay.saturating_sub(after.unwrap_or_default()));
                    attempt += 1;
                }
            }
        }
    }

    /// Runs one read-only statement and returns its rows.
    pub fn query(&self, sql: &str) -> Result<RawResult, D1Error> {
        self.read(&[sql]).map(|mut r| r.pop().unwrap_or_default())
    }

    /// `posted`: called once the body is handed to the connection.
    fn attempt(&self, body: &str, defer_keys: bool, posted: Option<&dyn Fn()>) -> Answer {
        let request = self
            .agent
            .post(&self.url)
            .header(
                "Authorization",
                &format!("Bearer {}", self.endpoint.token.expose()),
            )
            .header("Content-Type", "application/json")
            .header("Accept-Encoding", self.accept_encoding);
        let response = match posted {
            None => request.send(body),
            Some(posted) => {
                let mut reader = Posting {
                    body: body.as_bytes(),
                    posted,
                };
                request
                    .header("Content-Length", body.len())
                    .send(ureq::SendBody::from_reader(&mut reader))
            }
        };
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                let (verdict, error) = unreachable(&self.endpoint.api_url, &e);
                return Answer::failed(verdict, error, matches!(e, ureq::Error::Timeout(_)));
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        let text = match response
            .body_mut()
            .with_config()
            .limit(1 << 31)
            .read_to_string()
        {
            Ok(t) => t,
            Err(e) => {
                let message = transport_message(&e);
                return Answer::failed(
                    Verdict::Retry {
                        reason: message.clone(),
                        after: None,
                    },
                    D1Error::BadAnswer(message),
                    matches!(e, ureq::Error::Timeout(_)),
                );
            }
        };
        let received = text.len();
        let envelope: Envelope = match serde_json::from_str(&text) {
            Ok(e) => e,
            Err(_) => {
                let snippet: String = text.chars().take(200).collect();
                let verdict = classify(status, std::slice::from_ref(&snippet), retry_after);
                let mut answer = Answer::failed(
                    verdict,
                    D1Error::Http {
                        status,
                        message: snippet,
                    },
                    status == 429,
                );
                answer.received = received;
                answer.too_large = body_too_large(status, &text);
                return answer;
            }
        };
        // The answer's text is not needed once parsed: a page is not held as text and as JSON
        // while it is decoded.
        drop(text);
        let mut messages: Vec<String> = envelope
            .errors
            .iter()
            .map(|e| {
                if e.code != 0 {
                    format!("{} [code {}]", e.message, e.code)
                } else {
                    e.message.clone()
                }
            })
            .collect();
        let verdict = if envelope.success && (200..300).contains(&status) {
            Verdict::Success
        } else {
            if messages.is_empty() {
                messages.push(format!("HTTP {status} without an error message"));
            }
            classify(status, &messages, retry_after)
        };
        let outcome = if verdict == Verdict::Success {
            parse_results(envelope.result, defer_keys, &self.counters)
        } else {
            let message = messages.join("; ");
            Err(D1Error::refused(status, message, true))
        };
        let joined = messages.join("; ");
        Answer {
            verdict,
            outcome,
            too_large: body_too_large(status, &joined),
            received,
            congested: status == 429 || overloaded(&joined),
        }
    }

    /// The API refused a body of `bytes` as too large: from now on, requests of several
    /// statements over half that are split before they are sent.
    fn refused_as_too_large(&self, bytes: usize) {
        let limit = (bytes / 2).max(1);
        let before = self.max_body.fetch_min(limit, Ordering::Relaxed);
        let now = limit.min(before);
        self.phases.record(|p| {
            p.too_large += 1;
            p.max_body = Some(now as u64);
        });
        if limit < before {
            log::warn(&format!(
                "D1's API refused a request of {bytes} bytes as too large; requests are packed to \
                 at most {limit} bytes and larger ones split from now on"
            ));
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .policy
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.policy.max_delay);
        let jitter: f64 = rand::random();
        cap.mul_f64(jitter).max(Duration::from_millis(10))
    }
}

/// The largest answer to a read whose round trip tells the wire's (see [`Window::wire`]): a
/// catalog's, not a page's.
const WIRE_READ_BYTES: usize = 256 * 1024;

/// One attempt's answer: what it means, its results or error, the bytes received, and whether
/// it says the API or D1 is saturated (a 429 or a timeout).
struct Answer {
    verdict: Verdict,
    outcome: Result<Vec<RawResult>, D1Error>,
    /// The API refused the body as too large (HTTP 413, or an HTML page saying so).
    too_large: bool,
    received: usize,
    congested: bool,
}

impl Answer {
    fn failed(verdict: Verdict, error: D1Error, congested: bool) -> Answer {
        Answer {
            verdict,
            outcome: Err(error),
            too_large: false,
            received: 0,
            congested,
        }
    }
}

/// A request that got no answer: retried, and named by the API's address if it stays so.
fn unreachable(api_url: &str, e: &ureq::Error) -> (Verdict, D1Error) {
    let message = transport_message(e);
    let error = D1Error::Unreachable {
        url: api_url.to_string(),
        message: message.clone(),
    };
    let verdict = Verdict::Retry {
        reason: message,
        after: None,
    };
    (verdict, error)
}

/// The `Retry-After` header, in seconds.
fn retry_after(response: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn transport_message(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            format!("cannot connect: {e}")
        }
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("cannot connect: {io}")
        }
        other => other.to_string(),
    }
}

/// `{"batch":[{"sql":...},...]}`; for writes the deferral pragma first, so each request's
/// foreign keys are checked at its commit.
fn batch_body<S: AsRef<str>>(statements: &[S], defer_keys: bool) -> String {
    let mut items = Vec::with_capacity(statements.len() + 1);
    if defer_keys {
        items.push(serde_json::json!({"sql": "PRAGMA defer_foreign_keys = on"}));
    }
    for s in statements {
        items.push(serde_json::json!({"sql": s.as_ref()}));
    }
    serde_json::json!({ "batch": items }).to_string()
}

/// The rows of each statement (the deferral pragma's left out); D1's meta is added to `counters`.
fn parse_results(
    result: Option<Json>,
    defer_keys: bool,
    counters: &Counters,
) -> Result<Vec<RawResult>, D1Error> {
    let Some(result) = result else {
        return Ok(Vec::new());
    };
    let mut list: Vec<StatementResult> =
        serde_json::from_value(result).map_err(|e| D1Error::BadAnswer(e.to_string()))?;
    for meta in list.iter().filter_map(|r| r.meta.as_ref()) {
        counters
            .rows_read
            .fetch_add(meta.rows_read, Ordering::Relaxed);
        counters
            .rows_written
            .fetch_add(meta.rows_written, Ordering::Relaxed);
    }
    // The first result is the deferral pragma's.
    if defer_keys && !list.is_empty() {
        list.remove(0);
    }
    Ok(list
        .into_iter()
        .map(|r| r.results.unwrap_or_default())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(m: &str) -> Vec<String> {
        vec![m.to_string()]
    }

    #[test]
    fn transient_answers_are_retried() {
        assert!(matches!(
            classify(429, &msgs("slow down"), Some(Duration::from_secs(3))),
            Verdict::Retry { after: Some(a), .. } if a == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(400, &msgs("Network connection lost. [code 7500]"), None),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(
                500,
                &msgs("Internal error in D1 DB storage caused object to be reset."),
                None
            ),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(502, &msgs("<html>bad gateway"), None),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn sql_and_auth_errors_are_not_retried() {
        assert_eq!(
            classify(
                400,
                &msgs("no such table: x: SQLITE_ERROR [code 7500]"),
                None
            ),
            Verdict::Fail
        );
        assert_eq!(
            classify(403, &msgs("Authentication error [code 10000]"), None),
            Verdict::Fail
        );
        assert_eq!(
            classify(404, &msgs("not found [code 7404]"), None),
            Verdict::Fail
        );
        assert_eq!(
            classify(
                400,
                &msgs("FOREIGN KEY constraint failed: SQLITE_CONSTRAINT"),
                None
            ),
            Verdict::Fail
        );
    }

    #[test]
    fn a_body_too_large_asks_for_smaller_requests() {
        let page = "<html><head><title>413 Request Entity Too Large</title></head></html>";
        assert!(matches!(
            classify(413, &msgs(page), None),
            Verdict::Shrink { .. }
        ));
        assert!(body_too_large(413, ""));
        assert!(body_too_large(400, page));
        assert!(matches!(
            classify(400, &msgs("<html>Payload Too Large</html>"), None),
            Verdict::Shrink { .. }
        ));
        assert!(!body_too_large(400, "no such table: x"));
    }

    #[test]
    fn engine_limits_ask_for_smaller_statements() {
        assert!(matches!(
            classify(400, &msgs("out of memory: SQLITE_NOMEM"), None),
            Verdict::Shrink { .. }
        ));
        assert!(matches!(
            classify(400, &msgs("statement too long: SQLITE_TOOBIG"), None),
            Verdict::Shrink { .. }
        ));
    }

    #[test]
    fn answers_are_compressed_except_from_this_machine() {
        assert!(is_loopback("http://127.0.0.1:8787/client/v4"));
        assert!(is_loopback("http://localhost/client/v4"));
        assert!(is_loopback("http://[::1]:9000/client/v4"));
        assert!(!is_loopback("https://api.cloudflare.com/client/v4"));
        assert!(!is_loopback("http://10.0.0.5:8787/client/v4"));
        assert!(!is_loopback("https://127.0.0.1.example.com/client/v4"));
    }

    #[test]
    fn rows_read_and_written_are_summed_from_every_statement() {
        let counters = Counters::default();
        let answer = serde_json::json!([
            {"results": {"columns": [], "rows": []}, "meta": {"rows_read": 0, "rows_written": 0}},
            {"results": {"columns": ["a"], "rows": [[1]]}, "meta": {"rows_read": 7, "rows_written": 2}},
            {"results": {"columns": [], "rows": []}, "meta": {"rows_read": 1, "rows_written": 3}},
            {"results": {"columns": [], "rows": []}}
        ]);
        let rows = parse_results(Some(answer), true, &counters).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(counters.rows_read.load(Ordering::Relaxed), 8);
        assert_eq!(counters.rows_written.load(Ordering::Relaxed), 5);
    }

    /// A client of an API on this machine that answers every request with `answer` (after
    /// `delay`), with no retries and a timeout of 300 ms.
    fn client_of(answer: &'static str, delay: Duration) -> D1Client {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    let _ = stream.read(&mut buf);
                    std::thread::sleep(delay);
                    let _ = stream.write_all(answer.as_bytes());
                });
            }
        });
        let endpoint = Endpoint {
            api_url: format!("http://127.0.0.1:{port}/client/v4"),
            account_id: "a".into(),
            database_id: "d".into(),
            token: Secret::new("t".into()),
        };
        D1Client::new(
            endpoint,
            RetryPolicy {
                max_retries: 0,
                timeout: Duration::from_millis(300),
                rate_limit: 0,
                max_in_flight: 8,
                ..RetryPolicy::default()
            },
        )
    }

    #[test]
    fn a_429_or_a_timeout_halves_the_window_of_writes() {
        const TOO_MANY: &str = "HTTP/1.1 429 Too Many Requests\r\nretry-after: 0\r\n\
            content-type: application/json\r\nconnection: close\r\n\r\n\
            {\"success\":false,\"errors\":[]}";
        let limited = client_of(TOO_MANY, Duration::ZERO);
        assert_eq!(limited.window(), 2, "the window starts at two");
        assert!(limited.execute(&["INSERT INTO t VALUES (1)"]).is_err());
        assert_eq!(limited.window(), 1, "a 429 halves it");
        let slow = client_of(TOO_MANY, Duration::from_secs(2));
        assert!(slow.execute(&["INSERT INTO t VALUES (1)"]).is_err());
        assert_eq!(slow.window(), 1, "a timeout halves it");
    }

    #[test]
    fn an_overloaded_d1_halves_the_window_of_writes() {
        const OVERLOADED: &str = "HTTP/1.1 500 Internal Server Error\r\n\
            content-type: application/json\r\nconnection: close\r\n\r\n\
            {\"success\":false,\"result\":[],\"errors\":[{\"code\":7500,\
            \"message\":\"D1 DB is overloaded. Too many requests queued.\"}]}";
        let client = client_of(OVERLOADED, Duration::ZERO);
        for _ in 0..3 {
            client.writes.answered(Duration::from_millis(300), 1 << 20);
        }
        let grown = client.window();
        assert!(grown > 2, "window {grown}");
        let e = client.execute(&["INSERT INTO t VALUES (1)"]).unwrap_err();
        assert!(e.error.to_string().contains("overloaded"), "{}", e.error);
        assert_eq!(client.window(), grown / 2, "an overloaded D1 halves it");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let e = Endpoint {
            api_url: "http://x".into(),
            account_id: "a".into(),
            database_id: "d".into(),
            token: Secret::new("very-secret-token".into()),
        };
        assert!(!format!("{e:?}").contains("very-secret-token"));
    }
}
