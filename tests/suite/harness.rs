//! Test harness: a real local D1 (`scripts/local-d1`) per test process or per test, the
//! migrator binary driven with a clean environment, and `sqldiff` as the judge of an exact copy.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub const TOKEN: &str = "test-token-5f1c9a";
pub const ACCOUNT: &str = "test-account";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running local D1 server, stopped when dropped.
pub struct LocalD1 {
    child: Mutex<Option<Child>>,
    stdin: Mutex<Option<ChildStdin>>,
    pub api_url: String,
    pub files: HashMap<String, PathBuf>,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
    next: AtomicUsize,
    ids: Vec<String>,
}

impl LocalD1 {
    /// Starts a server for `ids` behind the front end that logs each request (see
    /// [`LocalD1::requests`]), with `faults` (LOCAL_D1_FAULTS) if given.
    pub fn start(ids: &[String], faults: Option<&str>) -> LocalD1 {
        LocalD1::launch(ids, faults, true)
    }

    /// Like [`LocalD1::start`], with more LOCAL_D1_* variables.
    pub fn start_with(ids: &[String], vars: &[(&str, &str)]) -> LocalD1 {
        let dir = tempfile::tempdir().expect("temp dir");
        LocalD1::launch_in(dir, ids, None, true, vars)
    }

    fn launch(ids: &[String], faults: Option<&str>, logged: bool) -> LocalD1 {
        LocalD1::launch_in(
            tempfile::tempdir().expect("temp dir"),
            ids,
            faults,
            logged,
            &[],
        )
    }

    /// Stops this server and starts another on the same state folder (and request log).
    pub fn restart(self) -> LocalD1 {
        self.restart_with(None)
    }

    /// [`LocalD1::restart`] with `faults` (LOCAL_D1_FAULTS) from now on.
    pub fn restart_with(mut self, faults: Option<&str>) -> LocalD1 {
        self.stop();
        let ids = std::mem::take(&mut self.ids);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        LocalD1::launch_in(dir, &ids, faults, true, &[])
    }

    fn launch_in(
        dir: tempfile::TempDir,
        ids: &[String],
        faults: Option<&str>,
        logged: bool,
        vars: &[(&str, &str)],
    ) -> LocalD1 {
        let log = dir.path().join("requests.jsonl");
        let mut cmd = Command::new(repo().join("scripts/local-d1"));
        cmd.env("LOCAL_D1_PORT", "0")
            .env("LOCAL_D1_PERSIST", dir.path().join("state"))
            .env("LOCAL_D1_DATABASES", ids.join(","))
            .env("LOCAL_D1_TOKEN", TOKEN)
            .env("LOCAL_D1_ACCOUNT", ACCOUNT)
            .env("LOCAL_D1_STOP_ON_EOF", "1")
            .env_remove("LOCAL_D1_LOG")
            .env_remove("LOCAL_D1_FAULTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if logged {
            cmd.env("LOCAL_D1_LOG", &log);
        }
        if let Some(f) = faults {
            cmd.env("LOCAL_D1_FAULTS", f);
        }
        cmd.envs(vars.iter().copied());
        let mut child = cmd.spawn().expect("scripts/local-d1 starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(" ready at ") => break line,
                Some(Ok(_)) => continue,
                _ => panic!("scripts/local-d1 stopped before it was ready"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let api_url = ready
            .split(" ready at ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("ready line names the URL")
            .to_string();
        let files_json = ready
            .split("databases=")
            .nth(1)
            .expect("ready line names the files");
        // {"<id>": {"name", "file", "created_at"}}
        let databases: HashMap<String, serde_json::Value> =
            serde_json::from_str(files_json).expect("databases json");
        let files = databases
            .into_iter()
            .map(|(id, d)| (id, PathBuf::from(d["file"].as_str().expect("file"))))
            .collect();
        let stdin = child.stdin.take();
        LocalD1 {
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
            api_url,
            files,
            log,
            dir,
            next: AtomicUsize::new(0),
            ids: ids.to_vec(),
        }
    }

    /// A server for `ids` that workerd serves itself (no request log, no faults), for tests that
    /// need databases of their own.
    pub fn unlogged(ids: &[String]) -> LocalD1 {
        LocalD1::launch(ids, None, false)
    }

    /// The server shared by the tests of this process, with many empty databases (160: the
    /// tests took all of 128). workerd serves it with no front end of ours, as in the benchmark
    /// (so it keeps no request log).
    pub fn shared() -> &'static LocalD1 {
        static SHARED: OnceLock<LocalD1> = OnceLock::new();
        SHARED.get_or_init(|| {
            let ids: Vec<String> = (0..160).map(|i| format!("db{i}")).collect();
            LocalD1::launch(&ids, None, false)
        })
    }

    /// A database id of this server no test has used yet.
    pub fn fresh_database(&self) -> String {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        self.ids
            .get(i)
            .cloned()
            .expect("enough databases for the tests")
    }

    /// The checkpoint folder the harness gives runs against `id`.
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("state-{id}"))
    }

    pub fn file(&self, id: &str) -> &Path {
        &self.files[id]
    }

    /// Posts SQL to `/raw` and returns the whole answer (status, JSON).
    pub fn post(
        &self,
        id: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let url = format!("{}/accounts/{ACCOUNT}/d1/database/{id}/raw", self.api_url);
        // A dropped connection (fault injection) is tried again.
        let mut resp = (0..50)
            .find_map(|_| {
                let mut req = agent.post(&url).header("Content-Type", "application/json");
                if let Some(t) = token {
                    req = req.header("Authorization", &format!("Bearer {t}"));
                }
                req.send(body.to_string()).ok()
            })
            .expect("local D1 answers");
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .expect("body");
        (status, serde_json::from_str(&text).expect("JSON answer"))
    }

    /// Sends `method` to `path` (under `/client/v4`, e.g. `/accounts/{ACCOUNT}/d1/database`)
    /// with the test token and returns the status and JSON answer.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let url = format!("{}{path}", self.api_url);
        let builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json");
        let mut resp = match body {
            Some(b) => agent.run(builder.body(b.to_string()).expect("request")),
            None => agent.run(builder.body(()).expect("request")),
        }
        .expect("local D1 answers");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().expect("body");
        (status, serde_json::from_str(&text).expect("JSON answer"))
    }

    /// Runs statements as one request; panics on failure. Returns each statement's rows.
    pub fn sql(&self, id: &str, statements: &[&str]) -> Vec<serde_json::Value> {
        let batch: Vec<serde_json::Value> = statements
            .iter()
            .map(|s| serde_json::json!({ "sql": s }))
            .collect();
        let (status, body) = self.post(id, serde_json::json!({ "batch": batch }), Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        body["result"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["results"]["rows"].clone())
            .collect()
    }

    /// Asserts that database `id` holds nothing but D1's own tables: nothing was written.
    pub fn assert_untouched(&self, id: &str) {
        let tables = self.sql(
            id,
            &["SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE '\\_cf\\_%' ESCAPE '\\'"],
        );
        assert_eq!(tables[0], serde_json::json!([[0]]), "nothing was written");
    }

    /// Lines of the request log (of a server from [`LocalD1::start`]) written so far; a line
    /// the server is still writing is left for the next call.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }

    /// The request log once it has stopped growing. The server writes it through a buffered
    /// stream, so on a loaded machine the last requests' lines can come a moment after their
    /// answers (`a_dry_run_reads_the_target_and_writes_nothing` once found none).
    pub fn settled_requests(&self) -> Vec<serde_json::Value> {
        let mut seen = self.requests();
        let mut unchanged = 0;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            let again = self.requests();
            unchanged = if again.len() == seen.len() {
                unchanged + 1
            } else {
                0
            };
            seen = again;
            if unchanged == 3 {
                break;
            }
        }
        seen
    }
}

impl Drop for LocalD1 {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LocalD1 {
    fn stop(&mut self) {
        drop(self.stdin.lock().unwrap().take());
        if let Some(mut child) = self.child.lock().unwrap().take() {
            for _ in 0..50 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A migrator invocation with a clean environment pointed at a local D1 database.
pub struct Run {
    cmd: Command,
}

impl Run {
    pub fn new(d1: &LocalD1, database: &str, sqlite: &Path) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_d1-migrator"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLOUDFLARE_ACCOUNT_ID", ACCOUNT)
            .env("CLOUDFLARE_API_TOKEN", TOKEN)
            .env("MIGRATION_D1_API_URL", &d1.api_url)
            .env("MIGRATION_D1_DATABASE_ID", database)
            .env("MIGRATION_SQLITE_PATH", sqlite)
            .env("MIGRATION_MAX_RETRIES", "10")
            .env("MIGRATION_STATE_DIR", d1.state_dir(database))
            .stdin(Stdio::null());
        Run { cmd }
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Run {
        self.cmd.env(key, value);
        self
    }

    /// The command, to spawn and control by hand.
    pub fn command(self) -> Command {
        self.cmd
    }

    pub fn output(mut self) -> Output {
        self.cmd.output().expect("the migrator runs")
    }

    /// Runs and asserts success.
    pub fn ok(self) -> Output {
        let out = self.output();
        assert!(
            out.status.success(),
            "migrator failed ({:?}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `sqldiff a b`, less the lines about D1's own tables (`_cf_*`) and their statistics, which are
/// never copied.
pub fn sqldiff(a: &Path, b: &Path) -> Vec<String> {
    let out =
        Command::new("sqldiff").arg(a).arg(b).output().expect(
            "sqldiff is installed (Debian package sqlite3-tools; scripts/test installs it)",
        );
    assert!(
        out.status.success(),
        "sqldiff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = Vec::new();
    let mut in_cf_create = false;
    for line in text.lines() {
        if in_cf_create {
            in_cf_create = !line.trim_end().ends_with(");");
            continue;
        }
        let lower = line.to_lowercase();
        if lower.starts_with("create table _cf_") {
            in_cf_create = !line.trim_end().ends_with(");");
            continue;
        }
        // D1's planner statistics of its own tables (after an ANALYZE on D1).
        if lower.starts_with("insert into sqlite_stat1") && lower.contains("'_cf_") {
            continue;
        }
        if lower.contains(" _cf_")
            && (lower.starts_with("insert into")
                || lower.starts_with("drop table")
                || lower.starts_with("delete from")
                || lower.starts_with("update"))
        {
            continue;
        }
        lines.push(line.to_string());
    }
    lines
}

/// A database of the shared datasets, or `None` (with a message) when `../shared` is absent.
pub fn dataset(name: &str) -> Option<PathBuf> {
    let path = repo().join("../shared/datasets").join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} is absent (the datasets live in ../shared beside the checkout)",
            path.display()
        );
        None
    }
}

/// Writes one of the project's generated databases into `dir`.
pub fn generated(dir: &Path, kind: &str) -> PathBuf {
    let path = dir.join(format!("{kind}.sqlite"));
    let out = Command::new(env!("CARGO_BIN_EXE_d1-migrator"))
        .args(["generate", kind])
        .arg(&path)
        .output()
        .expect("generate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written"))
        .expect("report is JSON")
}

/// One of the generated databases, migrated into a fresh database of the shared local D1:
/// (database id, the folder holding the source, the source).
/// The shared server, one of its databases no test has used yet, and a folder of the test's own.
pub fn fresh() -> (&'static LocalD1, String, tempfile::TempDir) {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    (d1, db, tempfile::tempdir().unwrap())
}

pub fn migrated(kind: &str) -> (String, tempfile::TempDir, PathBuf) {
    let (d1, db, dir) = fresh();
    let source = generated(dir.path(), kind);
    Run::new(d1, &db, &source).ok();
    (db, dir, source)
}

/// The (table, key) of each line of a reject file.
pub fn rejected_keys(path: &Path) -> std::collections::BTreeSet<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["table"].as_str().unwrap().to_string(),
                v["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
