//! The error types at the tool's boundaries, and how each maps to an exit status.
//!
//! Exit statuses: 0 success, 2 bad configuration or input (nothing written), 3 validation found
//! differences, 1 any other failure. No error ever carries the API token.

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong talking to D1's HTTP API.
#[derive(Debug, Error)]
pub enum D1Error {
    #[error("D1 refused the API token (HTTP {status}): {message}; check CLOUDFLARE_API_TOKEN, its D1 permissions, and that CLOUDFLARE_ACCOUNT_ID is the account it belongs to")]
    Auth { status: u16, message: String },
    #[error("D1 database not found (HTTP 404): {message}; check MIGRATION_D1_DATABASE_ID and CLOUDFLARE_ACCOUNT_ID")]
    NotFound { message: String },
    #[error("the API has no route for this request ({message}): check MIGRATION_D1_API_URL (the API's base, as https://api.cloudflare.com/client/v4), CLOUDFLARE_ACCOUNT_ID and MIGRATION_D1_DATABASE_ID")]
    NoRoute { message: String },
    #[error("D1 rejected the SQL: {message}")]
    Sql { message: String },
    #[error("D1 answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// A read whose answer D1 (or the API before it) found too large: its isolate's memory, an
    /// HTTP 413, an HTML page saying so. The reader asks again for a smaller page.
    #[error("D1 found the answer too large: {message}")]
    TooLarge { message: String },
    #[error("cannot reach the D1 API at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("gave up after {attempts} attempts; last: {last}")]
    RetriesExhausted { attempts: u32, last: String },
    #[error("D1's answer could not be read: {0}")]
    BadAnswer(String),
}

impl D1Error {
    /// Whether D1 refused a request by resetting the database for a broken constraint, which it
    /// does to every request in flight beside the one that broke it (D1_FACTS): perhaps
    /// another request's fault.
    pub fn reset_by_a_constraint(&self) -> bool {
        matches!(self, D1Error::Sql { message } if message.contains("was reset and rolled back"))
    }

    /// The error of an answer that refused a request: by D1's codes first (7000 "No route for
    /// that URI" and 7003 "Could not route to ...": a wrong base URL or a malformed id, whatever
    /// the HTTP status), then by status. `statement`: the request carried SQL.
    pub fn refused(status: u16, message: String, statement: bool) -> D1Error {
        if message.contains("[code 7000]") || message.contains("[code 7003]") {
            return D1Error::NoRoute { message };
        }
        match status {
            401 | 403 => D1Error::Auth { status, message },
            404 => D1Error::NotFound { message },
            400 if statement => D1Error::Sql { message },
            _ => D1Error::Http { status, message },
        }
    }

    /// True when the error says the input (token, database id, URL) is wrong, not the run.
    pub fn is_bad_input(&self) -> bool {
        match self {
            D1Error::Auth { .. } | D1Error::NotFound { .. } | D1Error::NoRoute { .. } => true,
            D1Error::RetriesExhausted { last, .. } => last.starts_with("cannot connect"),
            _ => false,
        }
    }
}

/// The tool's top-level error.
#[derive(Debug, Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("source database {path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: Box<Error>,
    },
    #[error("table {table}, row {key}: {message}")]
    Row {
        table: String,
        key: String,
        message: String,
    },
    #[error(transparent)]
    D1(#[from] D1Error),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("validation found differences: {0}")]
    Differences(String),
    #[error("tables that failed (MIGRATION_CONTINUE_ON_ERROR went on without them): {}", .0.join(", "))]
    TablesFailed(Vec<String>),
}

impl Error {
    /// Wraps an error with the table it happened in.
    pub fn in_table(self, table: &str) -> Error {
        match self {
            e @ (Error::Table { .. } | Error::Row { .. }) => e,
            e => Error::Table {
                table: table.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// Whether the error is a read's answer D1 found too large ([`D1Error::TooLarge`]), in a
    /// table or not: the page is asked for again, smaller.
    pub fn is_too_large(&self) -> bool {
        match self {
            Error::D1(D1Error::TooLarge { .. }) => true,
            Error::Table { source, .. } => source.is_too_large(),
            _ => false,
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Source { .. } | Error::Refused(_) => 2,
            Error::D1(e) if e.is_bad_input() => 2,
            Error::Table { source, .. } => source.exit_code(),
            Error::Differences(_) => 3,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
