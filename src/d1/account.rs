//! D1's endpoints around the query ones, on the same client (token, retry policy, rate limit):
//! the account's databases (list and find by name, get, create, delete), Time Travel
//! bookmarks, and the import flow. Names resolve to database ids here; `config` resolves them from wrangler's config.

use std::time::Instant;

use serde::Deserialize;
use serde_json::Value as Json;

use super::{classify, retry_after, transport_message, unreachable, ApiMessage, D1Client, Verdict};
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

/// What a completed import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOutcome {
    pub num_queries: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub final_bookmark: Option<String>,
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

    /// Creates a database, with an optional location hint (`primary_location_hint`: wnam, enam,
    /// weur, eeur, apac, oc); D1 refuses a name already taken (code 7502).
    pub fn create_database(
        &self,
        name: &str,
        location: Option<&str>,
    ) -> Result<DatabaseInfo, D1Error> {
        let mut body = serde_json::json!({ "name": name });
        if let Some(hint) = location {
            body["primary_location_hint"] = hint.into();
        }
        let body = body.to_string();
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

    /// Loads `sql` through D1's import flow: `init` with the file's MD5, `PUT` to the
    /// `upload_url` (whose `ETag` must be that MD5), `ingest`, then `poll` until D1 says
    /// `complete` or `error`. D1 runs the file as one unit: an error leaves the database as it
    /// was, and comes back as [`D1Error::Sql`] with D1's message.
    pub fn import(&self, sql: &str) -> Result<ImportOutcome, D1Error> {
        use md5::{Digest, Md5};
        let etag: String = Md5::digest(sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let url = format!(
            "{}/{}/import",
            self.databases_url(),
            percent_encode(&self.endpoint.database_id)
        );
        let post = |body: Json| -> Result<Json, D1Error> {
            let (result, _) = self.api("POST", &url, Some(&body.to_string()))?;
            Ok(result)
        };
        let init = post(serde_json::json!({"action": "init", "etag": etag}))?;
        let mut answer = match init["upload_url"].as_str() {
            // The same file was uploaded before: D1 processes it and answers as a poll.
            None => init.clone(),
            Some(upload_url) => {
                self.upload(upload_url, sql, &etag)?;
                let filename = init["filename"].clone();
                post(serde_json::json!({"action": "ingest", "etag": etag, "filename": filename}))?
            }
        };
        loop {
            if answer["success"] == Json::Bool(false) {
                let message = answer["error"]
                    .as_str()
                    .unwrap_or("import failed")
                    .to_string();
                return Err(D1Error::Sql { message });
            }
            match answer["status"].as_str() {
                Some("complete") => {
                    let result = &answer["result"];
                    for (counter, field) in [
                        (&self.counters.rows_read, "rows_read"),
                        (&self.counters.rows_written, "rows_written"),
                    ] {
                        let n = result["meta"][field].as_u64().unwrap_or(0);
                        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok(ImportOutcome {
                        num_queries: result["num_queries"].as_u64().unwrap_or(0),
                        rows_read: result["meta"]["rows_read"].as_u64().unwrap_or(0),
                        rows_written: result["meta"]["rows_written"].as_u64().unwrap_or(0),
                        final_bookmark: result["final_bookmark"].as_str().map(str::to_string),
                    });
                }
                Some("error") => {
                    let message = match (&answer["error"], answer["errors"].as_array()) {
                        (Json::String(e), _) => e.clone(),
                        (_, Some(errors)) => errors
                            .iter()
                            .map(|e| e.as_str().map(str::to_string).unwrap_or(e.to_string()))
                            .collect::<Vec<_>>()
                            .join("; "),
                        _ => answer.to_string(),
                    };
                    return Err(D1Error::Sql { message });
                }
                _ => {
                    for line in answer["messages"].as_array().into_iter().flatten() {
                        log::debug(&format!("D1 import: {}", line.as_str().unwrap_or_default()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let bookmark = answer["at_bookmark"].clone();
                    answer =
                        post(serde_json::json!({"action": "poll", "current_bookmark": bookmark}))?;
                }
            }
        }
    }

    /// `PUT`s the file to the import's upload URL (presigned: no token), checking the `ETag`.
    fn upload(&self, upload_url: &str, sql: &str, etag: &str) -> Result<(), D1Error> {
        let mut attempt = 0u32;
        loop {
            let counted = self.sending(sql.len(), attempt);
            let outcome = self.agent.put(upload_url).send(sql.as_bytes());
            drop(counted);
            let verdict = match outcome {
                Ok(response) if response.status().as_u16() == 200 => {
                    let got = response
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_string();
                    if got == etag {
                        return Ok(());
                    }
                    format!("the upload's ETag is {got:?}, not the file's MD5 {etag}")
                }
                Ok(response) => format!("the upload answered HTTP {}", response.status()),
                Err(e) => transport_message(&e),
            };
            if attempt >= self.policy.max_retries {
                return Err(D1Error::RetriesExhausted {
                    attempts: attempt + 1,
                    last: verdict,
                });
            }
            log::info(&format!("retrying the import's upload: {verdict}"));
            std::thread::sleep(self.backoff(attempt));
            attempt += 1;
        }
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
            let counted = self.sending(body.map_or(0, str::len), attempt);
            let sent_at = Instant::now();
            let (verdict, outcome) = self.api_attempt(method, url, body);
            drop(counted);
            log::debug(&format!(
                "{method} {url}: {verdict:?} in {} ms",
                sent_at.elapsed().as_millis()
            ));
            match verdict {
                Verdict::Success => return outcome,
                Verdict::Retry { reason, after } if attempt < self.policy.max_retries => {
                    let delay = self.backoff(attempt).max(after.unwrap_or_default());
                    if let Some(after) = after {
                        // The API's limit is the run's: every thread waits it out.
                        self.rate.pause(after);
                    }
                    self.counters
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                let (verdict, error) = unreachable(&self.endpoint.api_url, &e);
                return (verdict, Err(error));
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
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
        let error = D1Error::refused(status, message, false);
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
