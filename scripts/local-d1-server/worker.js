// D1's REST API over Cloudflare's own D1 engine (miniflare / workerd).
//
// Serves, under /client/v4/accounts/{account}/d1/database:
//   GET    ?name=&page=&per_page=              list databases (V4 page pagination)
//   POST   {"name"}                            create a database (takes one of the spare bindings)
//   GET    /{id or name}[?fields=a,b]          get one: uuid, name, version, num_tables, file_size...
//   DELETE /{id}                               delete one
//   POST   /{id}/query, /{id}/raw              {"sql", "params"} or {"batch": [{"sql", "params"}...]}
//   POST   /{id}/import                        action init | ingest | poll (D1's import flow)
//   GET    /{id}/time_travel/bookmark[?timestamp=]
//   POST   /{id}/time_travel/restore           refused: Time Travel restore is not emulated
// and PUT /local-d1/upload/{id}/{etag}?nonce= (the import's "presigned" upload URL), and
// POST /client/v4/graphql (the analytics query `wrangler d1 info` makes).
//
// Statements go to the database's Durable Object (miniflare's D1DatabaseObject) through the D1
// binding's own fetcher, with the result format D1 uses for each endpoint: /raw gets columns from
// the statement (zero-row results, duplicate and integer-like names intact) and every statement,
// single or batched, has its full `meta`. A whole request runs as one transaction, as on
// Cloudflare. Answers use Cloudflare's v4 envelope.
//
// Configuration comes from the launcher (local-d1.mjs):
//   TOKEN     the bearer token accepted
//   ACCOUNT   the account id accepted ("" accepts any)
//   REGISTRY  JSON {databases: [{id, name, binding, created_at}], spare: [{id, binding}]}
//   LAUNCHER  a service in the launcher that persists created and deleted databases
//   TIME_TRAVEL  "off": the time_travel routes do not exist (an API without Time Travel)

const REGION = "WNAM"; // one of D1's region names (WNAM, ENAM, WEUR, EEUR, APAC, OC)
const COLO = "LOCAL";

let registry = null; // {byId: Map, spare: [], boot}
function load(env) {
  if (registry) return registry;
  const parsed = JSON.parse(env.REGISTRY);
  const boot = Date.now();
  registry = { byId: new Map(), spare: parsed.spare.slice(), boot };
  for (const d of parsed.databases) registry.byId.set(d.id, newState(d, boot));
  return registry;
}

function newState(d, boot) {
  return {
    id: d.id, name: d.name, binding: d.binding, created_at: d.created_at,
    version: 0, // bumped whenever a request changes the database
    history: [[boot, 0]], // [time ms, version] for bookmarks at a timestamp
    importing: null, // the import job, if any
    stats: { readQueries: 0, writeQueries: 0, rowsRead: 0, rowsWritten: 0 },
  };
}

function findDatabase(reg, idOrName) {
  const byId = reg.byId.get(idOrName);
  if (byId) return byId;
  for (const d of reg.byId.values()) if (d.name === idOrName) return d;
  return null;
}

export default {
  async fetch(request, env) {
    const reg = load(env);
    const url = new URL(request.url);
    const upload = url.pathname.match(/^\/local-d1\/upload\/([^/]+)\/([0-9a-f]{32})$/);
    if (upload) return putUpload(reg, request, url, upload[1], upload[2]);

    const auth = request.headers.get("authorization");
    if (!auth) return envelope(401, [{ code: 10000, message: "Authentication error" }]);
    if (auth !== `Bearer ${env.TOKEN}`) return envelope(403, [{ code: 10000, message: "Authentication error" }]);

    if (url.pathname.replace(/\/$/, "") === "/client/v4/graphql" && request.method === "POST") {
      return graphql(reg, request);
    }
    const route = url.pathname.match(/^\/client\/v4\/accounts\/([^/]+)\/d1\/database(?:\/([^/]+)(?:\/(.+?))?)?\/?$/);
    if (!route) return noRoute();
    const [, account, idOrName, rest] = route;
    if (env.ACCOUNT && account !== env.ACCOUNT) {
      return envelope(403, [{ code: 10000, message: "Authentication error" }]);
    }
    const method = request.method;
    if (!idOrName) {
      if (method === "GET") return listDatabases(reg, url);
      if (method === "POST") return createDatabase(reg, env, request);
      return notAllowed();
    }
    const db = findDatabase(reg, decodeURIComponent(idOrName));
    if (!db) return notFound(idOrName);
    if (!rest) {
      if (method === "GET") return getDatabase(env, db, url);
      if (method === "DELETE") return deleteDatabase(reg, env, db);
      return notAllowed();
    }
    if (rest === "query" || rest === "raw") {
      if (method !== "POST") return notAllowed();
      return runQuery(env, db, request, rest);
    }
    if (rest === "import") {
      if (method !== "POST") return notAllowed();
      return importAction(env, db, request, url);
    }
    if (rest.startsWith("time_travel/") && env.TIME_TRAVEL === "off") return noRoute();
    if (rest === "time_travel/bookmark") {
      if (method !== "GET") return notAllowed();
      return bookmarkAt(db, url);
    }
    if (rest === "time_travel/restore") {
      if (method !== "POST") return notAllowed();
      return envelope(400, [{ code: 7500, message: "Time Travel restore is not supported by the local D1 (scripts/local-d1)" }]);
    }
    return noRoute();
  },
};

// ---- database endpoints ----

function summary(db) {
  return { uuid: db.id, name: db.name, version: "production", created_at: db.created_at, jurisdiction: null };
}

function listDatabases(reg, url) {
  const page = Number(url.searchParams.get("page") ?? 1);
  const perPage = Number(url.searchParams.get("per_page") ?? 1000);
  if (!Number.isInteger(page) || page < 1 || !Number.isInteger(perPage) || perPage < 1 || perPage > 10000) {
    return envelope(400, [{ code: 7400, message: "The request is malformed: page must be 1 or more, per_page from 1 to 10000" }]);
  }
  const name = url.searchParams.get("name");
  const all = [...reg.byId.values()].filter((d) => name === null || d.name.includes(name));
  const items = all.slice((page - 1) * perPage, page * perPage).map(summary);
  return envelope(200, [], items, {}, { page, per_page: perPage, count: items.length, total_count: all.length });
}

async function getDatabase(env, db, url) {
  const info = await describe(env, db);
  if (info.error) return sqlError(info.error);
  const fields = url.searchParams.get("fields");
  if (fields) {
    const keep = new Set(fields.split(",").map((s) => s.trim()));
    return envelope(200, [], Object.fromEntries(Object.entries(info).filter(([k]) => keep.has(k))));
  }
  return envelope(200, [], info);
}

async function describe(env, db) {
  const answer = await send(env, db, [{
    sql: "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
  }], "ROWS_AND_COLUMNS", false);
  if (!answer.success) return { error: answer.error };
  const [{ results, meta }] = answer.results;
  return {
    ...summary(db),
    num_tables: results.rows[0][0],
    file_size: meta.size_after,
    running_in_region: REGION,
    read_replication: { mode: "disabled" },
  };
}

async function createDatabase(reg, env, request) {
  let body;
  try {
    body = await request.json();
  } catch (e) {
    return malformed(e.message);
  }
  const name = body && body.name;
  if (typeof name !== "string" || !/^[a-z0-9][a-z0-9_-]{0,63}$/i.test(name)) {
    return envelope(400, [{ code: 7400, message: "The request is malformed: name must be 1-64 letters, digits, '-' or '_'" }]);
  }
  if (findDatabase(reg, name)) {
    return envelope(400, [{ code: 7502, message: "A database with that name already exists" }]);
  }
  const slot = reg.spare.shift();
  if (!slot) {
    return envelope(400, [{ code: 7406, message: "Maximum number of databases reached (the local D1 has no spare binding left: raise LOCAL_D1_SPARE)" }]);
  }
  const db = newState({ ...slot, name, created_at: new Date().toISOString() }, Date.now());
  const saved = await env.LAUNCHER.fetch("http://launcher/created", {
    method: "POST", body: JSON.stringify({ id: db.id, name: db.name, created_at: db.created_at }),
  });
  if (!saved.ok) {
    reg.spare.unshift(slot);
    return envelope(500, [{ code: 7500, message: "could not record the new database: " + await saved.text() }]);
  }
  reg.byId.set(db.id, db);
  return envelope(200, [], { ...summary(db), num_tables: 0, file_size: 0, created_in_region: REGION });
}

async function deleteDatabase(reg, env, db) {
  const saved = await env.LAUNCHER.fetch("http://launcher/deleted", {
    method: "POST", body: JSON.stringify({ id: db.id }),
  });
  if (!saved.ok) return envelope(500, [{ code: 7500, message: "could not delete the database: " + await saved.text() }]);
  reg.byId.delete(db.id);
  return envelope(200, [], null);
}

// ---- statements ----

// Posts statements to the database's Durable Object, as the D1 binding does, in one transaction.
async function send(env, db, queries, format, counted = true) {
  let answer, parsed;
  try {
    answer = await env[db.binding].fetcher.fetch(`http://d1/query?resultsFormat=${format}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(queries),
    });
    parsed = await answer.json();
  } catch (e) {
    // e.g. the Durable Object reset after a constraint violation
    return { success: false, error: String(e && e.message ? e.message : e) };
  }
  if (Array.isArray(parsed)) {
    if (counted) noteChanges(db, parsed);
    return { success: true, results: parsed };
  }
  return { success: false, error: parsed.error ?? `D1 answered HTTP ${answer.status}` };
}

function noteChanges(db, results) {
  let changed = false;
  for (const r of results) {
    changed ||= r.meta.changed_db;
    const writes = r.meta.rows_written > 0 || r.meta.changed_db;
    db.stats[writes ? "writeQueries" : "readQueries"]++;
    db.stats.rowsRead += r.meta.rows_read;
    db.stats.rowsWritten += r.meta.rows_written;
  }
  if (changed) {
    db.version++;
    db.history.push([Date.now(), db.version]);
    if (db.history.length > 10_000) db.history.splice(1, 5_000);
  }
}

function d1Meta(meta) {
  return {
    served_by_colo: COLO,
    served_by_primary: true,
    served_by_region: REGION,
    duration: meta.duration,
    changes: meta.changes,
    last_row_id: meta.last_row_id,
    changed_db: meta.changed_db,
    size_after: meta.size_after,
    rows_read: meta.rows_read,
    rows_written: meta.rows_written,
    timings: { sql_duration_ms: meta.duration },
  };
}

async function runQuery(env, db, request, format) {
  let body;
  try {
    body = await request.json();
  } catch (e) {
    return malformed(e.message);
  }
  const items = body && Array.isArray(body.batch) ? body.batch : [body];
  let queries;
  try {
    queries = toQueries(items);
  } catch (e) {
    return sqlError(e.message);
  }
  const answer = await send(env, db, queries, format === "raw" ? "ROWS_AND_COLUMNS" : "ARRAY_OF_OBJECTS");
  if (!answer.success) return sqlError(answer.error);
  return envelope(200, [], answer.results.map((r) => ({ success: true, results: r.results, meta: d1Meta(r.meta) })));
}

// One {sql, params} per statement: D1's API splits each `sql` on top-level semicolons itself.
function toQueries(items) {
  const queries = [];
  for (const item of items) {
    if (!item || typeof item.sql !== "string") throw new Error("sql must be a string");
    const parts = splitStatements(item.sql);
    const params = Array.isArray(item.params) ? item.params.map(toParam) : [];
    if (parts.length === 0) throw new Error("No SQL statements detected.");
    if (parts.length > 1 && params.length > 0) {
      throw new Error("When executing multiple SQL statements in a single call, only the last statement can have parameters.");
    }
    for (const sql of parts) queries.push(params.length ? { sql, params } : { sql });
  }
  return queries;
}

// Params arrive as JSON: strings, numbers, null, booleans, or arrays of bytes for BLOBs.
function toParam(value) {
  if (typeof value === "boolean") return value ? 1 : 0;
  return value;
}

// ---- Time Travel ----

async function bookmark(db, version) {
  // Opaque and ordered like D1's: the server's start, the database's version, then a digest.
  const hex = (n, w) => n.toString(16).padStart(w, "0").slice(-w);
  const boot = Math.floor(registry.boot / 1000);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(`${db.id}/${boot}/${version}`));
  const tail = [...new Uint8Array(digest).subarray(0, 16)].map((b) => hex(b, 2)).join("");
  return `${hex(boot, 8)}-${hex(version, 8)}-00000000-${tail}`;
}

async function bookmarkAt(db, url) {
  const timestamp = url.searchParams.get("timestamp");
  if (timestamp === null || timestamp === "") return envelope(200, [], { bookmark: await bookmark(db, db.version) });
  const at = /^\d+$/.test(timestamp) ? Number(timestamp) * 1000 : Date.parse(timestamp);
  if (!Number.isFinite(at)) {
    return envelope(400, [{ code: 7400, message: `The request is malformed: timestamp ${timestamp} is not an ISO 8601 date or a Unix time` }]);
  }
  // The version in force at that time; before this server started, the state it started with.
  let version = db.history[0][1];
  for (const [t, v] of db.history) {
    if (t > at) break;
    version = v;
  }
  return envelope(200, [], { bookmark: await bookmark(db, version) });
}

// ---- import ----

const uploads = new Map(); // `${db id}/${etag}` -> {nonce, text, md5}

async function importAction(env, db, request, url) {
  let body;
  try {
    body = await request.json();
  } catch (e) {
    return malformed(e.message);
  }
  const action = body && body.action;
  if (action === "init") {
    if (typeof body.etag !== "string" || !/^[0-9a-f]{32}$/.test(body.etag)) {
      return malformed("etag must be the file's MD5 as 32 hex digits");
    }
    const key = `${db.id}/${body.etag}`;
    const uploaded = uploads.get(key);
    if (uploaded && uploaded.md5 === body.etag) {
      // Already uploaded: D1 starts processing it and answers as a poll would.
      return startImport(env, db, key);
    }
    const nonce = crypto.randomUUID();
    uploads.set(key, { nonce, text: null, md5: null });
    const filename = `${db.id}-${body.etag}.sql`;
    return envelope(200, [], {
      success: true,
      filename,
      upload_url: `${url.origin}/local-d1/upload/${db.id}/${body.etag}?nonce=${nonce}`,
    });
  }
  if (action === "ingest") {
    if (typeof body.etag !== "string") return malformed("etag is required");
    const key = `${db.id}/${body.etag}`;
    const uploaded = uploads.get(key);
    if (!uploaded || uploaded.text === null) {
      return envelope(200, [], { success: false, error: "File not found. Upload it first (action: init)." });
    }
    if (uploaded.md5 !== body.etag) {
      return envelope(200, [], { success: false, error: `The uploaded file's MD5 is ${uploaded.md5}, not ${body.etag}.` });
    }
    return startImport(env, db, key);
  }
  if (action === "poll") {
    const job = db.importing;
    if (!job || job.polled) return envelope(200, [], { success: false, error: "Not currently importing anything." });
    if (typeof body.current_bookmark === "string" && body.current_bookmark !== job.at_bookmark) {
      return envelope(200, [], { success: false, error: "Not currently importing anything." });
    }
    return pollAnswer(db, job, 1000);
  }
  return malformed("action must be init, ingest or poll");
}

async function startImport(env, db, key) {
  if (db.importing && !db.importing.done) {
    return envelope(200, [], { success: false, error: "An import is already running on this database." });
  }
  const { text } = uploads.get(key);
  const job = { at_bookmark: await bookmark(db, db.version), done: false, polled: false, answer: null, messages: [] };
  db.importing = job;
  job.promise = runImport(env, db, text, job).then(
    (answer) => { job.answer = answer; job.done = true; },
    (e) => { job.answer = { status: "error", errors: [String(e && e.message ? e.message : e)] }; job.done = true; },
  );
  uploads.delete(key);
  // D1 waits about a second before answering, in case the import is quick.
  return pollAnswer(db, job, 1000);
}

async function runImport(env, db, text, job) {
  let queries;
  try {
    queries = splitStatements(text).map((sql) => ({ sql }));
  } catch (e) {
    return { status: "error", errors: [e.message] };
  }
  if (queries.length === 0) return { status: "error", errors: ["No SQL statements detected."] };
  job.messages.push(`Importing ${queries.length} statements`);
  // One transaction: a failed import leaves the database as it was.
  const answer = await send(env, db, queries, "NONE");
  if (!answer.success) return { status: "error", errors: [answer.error] };
  const meta = { duration: 0, changes: 0, last_row_id: 0, changed_db: false, size_after: 0, rows_read: 0, rows_written: 0 };
  for (const r of answer.results) {
    meta.duration += r.meta.duration;
    meta.changes += r.meta.changes;
    meta.rows_read += r.meta.rows_read;
    meta.rows_written += r.meta.rows_written;
    meta.changed_db ||= r.meta.changed_db;
    meta.last_row_id = r.meta.last_row_id;
    meta.size_after = r.meta.size_after;
  }
  meta.served_by = "local-d1";
  job.messages.push(`Imported ${queries.length} statements`);
  return {
    status: "complete",
    result: { final_bookmark: await bookmark(db, db.version), num_queries: queries.length, meta },
  };
}

async function pollAnswer(db, job, waitMs) {
  if (!job.done) await Promise.race([job.promise, new Promise((r) => setTimeout(r, waitMs))]);
  const messages = job.messages.splice(0);
  const base = { success: true, type: "import", at_bookmark: job.at_bookmark, messages };
  if (!job.done) return envelope(200, [], { ...base, status: "active" });
  job.polled = true;
  if (job.answer.status === "error") {
    return envelope(200, [], { ...base, status: "error", error: job.answer.errors.join("\n"), errors: job.answer.errors });
  }
  return envelope(200, [], { ...base, ...job.answer });
}

async function putUpload(reg, request, url, dbId, etag) {
  const entry = uploads.get(`${dbId}/${etag}`);
  if (request.method !== "PUT") return new Response("Method not allowed", { status: 405 });
  if (!entry || url.searchParams.get("nonce") !== entry.nonce) {
    return new Response("<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>", {
      status: 403, headers: { "content-type": "application/xml" },
    });
  }
  const bytes = new Uint8Array(await request.arrayBuffer());
  const digest = await crypto.subtle.digest("MD5", bytes);
  entry.md5 = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  entry.text = new TextDecoder().decode(bytes);
  return new Response(null, { status: 200, headers: { etag: `"${entry.md5}"` } });
}

// ---- analytics, as `wrangler d1 info` asks for them ----

async function graphql(reg, request) {
  let body;
  try {
    body = await request.json();
  } catch (e) {
    return Response.json({ data: null, errors: [{ message: "failed to parse the request: " + e.message }] });
  }
  const filters = body?.variables?.filter?.AND ?? [];
  const id = filters.map((f) => f.databaseId).find(Boolean);
  const db = id && findDatabase(reg, id);
  const groups = db ? [{
    sum: { ...db.stats },
    dimensions: { datetimeHour: new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000).toISOString() },
  }] : [];
  return Response.json({ data: { viewer: { accounts: [{ d1AnalyticsAdaptiveGroups: groups }] } }, errors: null });
}

// ---- envelope and errors ----

function sqlError(message) {
  const text = String(message).replace(/^D1_(EXEC_)?ERROR:\s*/, "");
  return envelope(400, [{ code: 7500, message: text }], [], { "cf-d1": "err=7500" });
}

function malformed(message) {
  return envelope(400, [{ code: 7400, message: "The request is malformed: " + message }]);
}

function notFound(id) {
  return envelope(404, [{ code: 7404, message: `The database ${id} could not be found` }]);
}

function noRoute() {
  return envelope(400, [{ code: 7000, message: "No route for that URI" }]);
}

function notAllowed() {
  return envelope(405, [{ code: 10405, message: "Method not allowed" }]);
}

function envelope(status, errors, result = [], headers = {}, resultInfo = undefined) {
  const body = { result, success: errors.length === 0, errors, messages: [] };
  if (resultInfo) body.result_info = resultInfo;
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

// Splits SQL text into statements on top-level semicolons, the way D1's API does server-side,
// keeping quoted text, comments and CREATE TRIGGER ... BEGIN ... END bodies whole. It jumps from
// one character that matters to the next with a native regex, so a megabyte of INSERT values
// (digits, commas, parentheses) costs little.
const INTERESTING = /['"`[;A-Za-z_]|--|\/\*/g;
const WORD = /[A-Za-z0-9_$]*/y;

export function splitStatements(sql) {
  // No semicolon anywhere (most batch items): one statement, nothing to scan.
  if (!sql.includes(";")) {
    const text = sql.trim();
    return text && !onlyComments(text) ? [text] : [];
  }
  const out = [];
  let start = 0;
  let depth = 0; // BEGIN/CASE ... END nesting inside a trigger body
  let inTrigger = false;
  let words = []; // first words of the current statement
  const n = sql.length;
  const flush = (end) => {
    const text = sql.slice(start, end).trim();
    if (text && !onlyComments(text)) out.push(text);
    start = end + 1;
    depth = 0;
    inTrigger = false;
    words = [];
  };
  let i = 0;
  while (i < n) {
    INTERESTING.lastIndex = i;
    const m = INTERESTING.exec(sql);
    if (!m) break;
    i = m.index;
    const c = m[0];
    if (c === "'" || c === '"' || c === "`") {
      i = skipQuoted(sql, i + 1, c);
    } else if (c === "[") {
      const close = sql.indexOf("]", i + 1);
      i = close < 0 ? n : close + 1;
    } else if (c === "--") {
      const nl = sql.indexOf("\n", i);
      i = nl < 0 ? n : nl + 1;
    } else if (c === "/*") {
      const close = sql.indexOf("*/", i + 2);
      i = close < 0 ? n : close + 2;
    } else if (c === ";") {
      if (depth === 0) flush(i);
      i++;
    } else {
      WORD.lastIndex = i + 1;
      WORD.exec(sql);
      const j = WORD.lastIndex;
      if (words.length < 4 || inTrigger) {
        const word = sql.slice(i, j).toUpperCase();
        if (words.length < 4) {
          words.push(word);
          if (words[0] === "CREATE" && words.includes("TRIGGER")) inTrigger = true;
        }
        if (inTrigger) {
          if (word === "BEGIN" || word === "CASE") depth++;
          else if (word === "END" && depth > 0) depth--;
        }
      }
      i = j;
    }
  }
  flush(n);
  return out;
}

function skipQuoted(sql, from, quote) {
  let i = from;
  for (;;) {
    const close = sql.indexOf(quote, i);
    if (close < 0) return sql.length;
    if (sql[close + 1] === quote) { i = close + 2; continue; }
    return close + 1;
  }
}

function onlyComments(text) {
  return text.replace(/--[^\n]*(\n|$)/g, "").replace(/\/\*[\s\S]*?\*\//g, "").trim() === "";
}
