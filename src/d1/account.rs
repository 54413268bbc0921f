//! D1's endpoints around the query ones, on the same client (token, retry policy, rate limit):
//! the account's databases (list and find by name, get, create, delete) and Time Travel
//! bookmarks. Names resolve to database ids here; `config` resolves them from wrangler's config.

use std::time::Instant;

use serde::Deserialize;
use serde_json::Value as Json;

use super::{classify, transport_message, ApiMessage, D1Client, Verdict};
use crate::error::D1Error;
use crate::log;

/// One D1 database as the API describes it (`GET …/d1/database/{id}`; a list gives fewer fields).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DatabaseInfo {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub num_tables: Option<u64>,
    /// Bytes.
    #[serde(default)]
    pub file_size: Option<u64>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: Option<Json>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Debug, Deserialize)]
struct ResultInfo {
    #[serde(default)]
    total_count: Option<u64>,
}

/// Databases listed per request.
const PER_PAGE: usize = 100;

impl D1Client {
    /// `{api}/accounts/{account}/d1/database`
    fn databases_url(&self) -> String {
        format!(
            "{}/accounts/{}/d1/database",
            self.endpoint.api_url.trim_end_matches('/'),
            self.endpoint.account_id
        )
    }

    /// The account's databases whose name contains `name` (all of them for `None`), every page.
    pub fn list_databases(&self, name: Option<&str>) -> Result<Vec<DatabaseInfo>, D1Error> {
        let mut all = Vec::new();
        for page in 1.. {
            let mut url = format!("{}?page={page}&per_page={PER_PAGE}", self.databases_url());
            if let Some(name) = name {
                url.push_str("&name=");
                url.push_str(&percent_encode(name));
            }
            let (result, info) = self.api("GET", &url, None)?;
            let items: Vec<DatabaseInfo> = serde_json::from_value(result)
                .map_err(|e| D1Error::BadAnswer(format!("database list: {e}")))?;
            let got = items.len();
            all.extend(items);
            let total = info.and_then(|i| i.total_count);
            if got < PER_PAGE || total.is_some_and(|t| all.len() as u64 >= t) {
                break;
            }
        }
        Ok(all)
    }

    /// The database named exactly `name`, if the account has one.
    pub fn find_database(&self, name: &str) -> Result<Option<DatabaseInfo>, D1Error> {
        Ok(self
            .list_databases(Some(name))?
            .into_iter()
            .find(|d| d.name == name))
    }

    /// One database by id (or name): its size, tables and version.
    pub fn get_database(&self, id_or_name: &str) -> Result<DatabaseInfo, D1Error> {
        let url = format!("{}/{}", self.databases_url(), percent_encode(id_or_name));
        let (result, _) = self.api("GET", &url, None)?;
        serde_json::from_value(result).map_err(|e| D1Error::BadAnswer(format!("database: {e}")))
    }

    /// This client's database.
    pub fn database_info(&self) -> Result<DatabaseInfo, D1Error> {
        self.get_database(&self.endpoint.database_id)
    }

    /// Creates a database; D1 refuses a name already taken (code 7502).
    pub fn create_database(&self, name: &str) -> Result<DatabaseInfo, D1Error> {
        let body = serde_json::json!({ "name": name }).to_string();
        let (result, _) = self.api("POST", &self.databases_url(), Some(&body))?;
        serde_json::from_value(result)
            .map_err(|e| D1Error::BadAnswer(format!("created database: {e}")))
    }

    /// Deletes a database by id.
    pub fn delete_database(&self, id: &str) -> Result<(), D1Error> {
        let url = format!("{}/{}", self.databases_url(), percent_encode(id));
        self.api("DELETE", &url, None).map(|_| ())
    }

    /// The Time Travel bookmark of this client's database now: restoring it
    /// (`wrangler d1 time-travel restore <db> --bookmark=<b>`) brings the database back to this
    /// moment.
    pub fn bookmark(&self) -> Result<String, D1Error> {
        let url = format!(
            "{}/{}/time_travel/bookmark",
            self.databases_url(),
            percent_encode(&self.endpoint.database_id)
        );
        let (result, _) = self.api("GET", &url, None)?;
        result["bookmark"]
            .as_str()
            .filter(|b| !b.is_empty())
            .map(str::to_string)
            .ok_or_else(|| D1Error::BadAnswer(format!("no bookmark in {result}")))
    }

    /// One API call with this client's retry policy and rate limit: the `result` and
    /// `result_info` of a successful answer.
    fn api(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Result<(Json, Option<ResultInfo>), D1Error> {
        let mut attempt = 0u32;
        loop {
            self.wait_for_rate_limit();
            self.counters
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sent_at = Instant::now();
            let (verdict, outcome) = self.api_attempt(method, url, body);
            log::debug(&format!(
                "{method} {url}: {verdict:?} in {} ms",
                sent_at.elapsed().as_millis()
            ));
            match verdict {
                Verdict::Success => return outcome,
                Verdict::Retry { reason, after } if attempt < self.policy.max_retries => {
                    let delay = self.backoff(attempt).max(after.unwrap_or_default());
                    log::info(&format!(
                        "retrying {method} of the D1 API in {} ms: {reason}",
                        delay.as_millis()
                    ));
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Verdict::Retry { reason, .. } => {
                    return Err(D1Error::RetriesExhausted {
                        attempts: attempt + 1,
                        last: reason,
                    })
                }
                _ => return outcome,
            }
        }
    }

    fn api_attempt(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> (Verdict, Result<(Json, Option<ResultInfo>), D1Error>) {
        let auth = format!("Bearer {}", self.endpoint.token.expose());
        let response = match (method, body) {
            ("POST", body) => self
                .agent
                .post(url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or("{}")),
            ("DELETE", _) => self.agent.delete(url).header("Authorization", &auth).call(),
            _ => self.agent.get(url).header("Authorization", &auth).call(),
        };
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                let message = transport_message(&e);
                let error = D1Error::Unreachable {
                    url: self.endpoint.api_url.clone(),
                    message: message.clone(),
                };
                let verdict = Verdict::Retry {
                    reason: message,
                    after: None,
                };
                return (verdict, Err(error));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let text = match response.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => {
                let message = transport_message(&e);
                let verdict = Verdict::Retry {
                    reason: message.clone(),
                    after: None,
                };
                return (verdict, Err(D1Error::BadAnswer(message)));
            }
        };
        let page: Page = match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(_) => {
                let snippet: String = text.chars().take(200).collect();
                let verdict = classify(status, std::slice::from_ref(&snippet), retry_after);
                let message = snippet;
                return (verdict, Err(D1Error::Http { status, message }));
            }
        };
        if page.success && (200..300).contains(&status) {
            let result = page.result.unwrap_or(Json::Null);
            return (Verdict::Success, Ok((result, page.result_info)));
        }
        let mut messages: Vec<String> = page
            .errors
            .iter()
            .map(|e| format!("{} [code {}]", e.message, e.code))
            .collect();
        if messages.is_empty() {
            messages.push(format!("HTTP {status} without an error message"));
        }
        let verdict = match classify(status, &messages, retry_after) {
            // A refused management call is not a statement to split.
            Verdict::Shrink { .. } => Verdict::Fail,
            v => v,
        };
        let message = messages.join("; ");
        let error = match status {
            401 | 403 => D1Error::Auth { status, message },
            404 => D1Error::NotFound { message },
            _ => D1Error::Http { status, message },
        };
        (verdict, Err(error))
    }
}

/// Percent-encodes a path segment or query value (RFC 3986's unreserved characters stay).
fn percent_encode(s: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(percent_encode("my-db_1.x~"), "my-db_1.x~");
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
