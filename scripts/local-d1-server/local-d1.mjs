// Starts Cloudflare's D1 engine (miniflare, workerd inside) behind D1's REST API shape.
//
// worker.js serves the API over real D1 bindings. When faults (LOCAL_D1_FAULTS) or a request
// log (LOCAL_D1_LOG) are asked for, a Node HTTP front end on LOCAL_D1_PORT takes each request,
// applies the fault, logs it, and hands it on to the Worker. Faults are decided before a request
// reaches D1 (429, 5xx, drop) or after D1 has answered in full (lost), so a fault never
// half-applies a request. Otherwise workerd serves LOCAL_D1_PORT itself, as Cloudflare's edge
// would: nothing of ours in between.
//
// Databases: miniflare declares its D1 bindings when it starts, so besides the configured
// databases the Worker gets LOCAL_D1_SPARE spare bindings, each with a fresh UUID; creating a
// database (POST .../d1/database) takes one and names it. Every database, configured or created,
// is recorded in $LOCAL_D1_PERSIST/databases.json as {"<id>": {"name", "file", "created_at"}},
// and declared again on the next start, so created databases persist like configured ones.
//
// Environment:
//   LOCAL_D1_PORT       port to listen on (default 8787; 0 picks a free one)
//   LOCAL_D1_PERSIST    state folder (default .local-d1/)
//   LOCAL_D1_DATABASES  comma-separated database ids (default "local"); each is also its name
//   LOCAL_D1_SPARE      spare bindings for databases created at run time (default 16)
//   LOCAL_D1_TOKEN      bearer token accepted (default "local-dev-token")
//   LOCAL_D1_ACCOUNT    account id accepted (default: any)
//   LOCAL_D1_FAULTS     e.g. "429=0.05,500=0.05,drop=0.02,lost=0.01,latency_ms=30,seed=7,retry_after=1";
//                       jitter_ms=N delays each request a further 0 to N ms (drawn from the seed),
//                       so requests sent together reach D1 in another order, as over a network;
//                       hold_request=K holds the K-th request received (counting from 1, every
//                       method) a further hold_ms (default 2000) ms before D1 runs it, so requests
//                       sent after it reach D1 before it (logged with its `held_ms`);
//                       max_body=N refuses request bodies over N bytes with HTTP 413 and an HTML
//                       page, as Cloudflare's edge does, before D1 sees them; max_answer=N answers
//                       a query whose answer would be over N bytes with D1's error for a result
//                       too large for its isolate ("D1 DB's isolate exceeded its memory limit and
//                       was reset.", HTTP 500, code 7500), after D1 ran it (a read: nothing changes)
//   LOCAL_D1_DELAY_INTO e.g. "orders=300,regions=500": a request whose first INSERT is into that table
//                       (its name as written, without quotes) waits that many ms more before D1 runs
//                       it, so that requests sent after it reach D1 first, deterministically
//   LOCAL_D1_BESIDE_BROKEN_KEY  text: a request whose body holds the text, received while another
//                       request is in flight, fails without running as D1 fails the requests beside
//                       one that breaks a foreign key (the database is reset: HTTP 400, code 7500,
//                       "Durable Object was reset …"); sent with nothing else in flight, it runs
//   LOCAL_D1_LOG        file to append one JSON line per request to (default: none): when, method,
//                       path, bytes, fault, requests in flight, each statement's first two words
//                       (`statements`), the tables it inserts into (`into`) and a hash of its body
//                       (`body`: the first 16 hex digits of its SHA-256; a request sent twice has
//                       the same)
//   LOCAL_D1_TIME_TRAVEL  "off" removes the time_travel routes, as an API without Time Travel
//   LOCAL_D1_STOP_ON_EOF  stop when standard input closes (used by test harnesses)

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const port = Number(env.LOCAL_D1_PORT ?? 8787);
const persist = path.resolve(env.LOCAL_D1_PERSIST || ".local-d1");
const databaseIds = (env.LOCAL_D1_DATABASES || "local").split(",").map((s) => s.trim()).filter(Boolean);
const spareCount = Number(env.LOCAL_D1_SPARE ?? 16);
const token = env.LOCAL_D1_TOKEN || "local-dev-token";
const account = env.LOCAL_D1_ACCOUNT || "";
const faults = parseFaults(env.LOCAL_D1_FAULTS || "");
const logPath = env.LOCAL_D1_LOG || "";
const delayInto = parseDelays(env.LOCAL_D1_DELAY_INTO || "");
const besideBrokenKey = env.LOCAL_D1_BESIDE_BROKEN_KEY || "";

function parseDelays(text) {
  const delays = new Map();
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const at = part.lastIndexOf("=");
    const ms = Number(part.slice(at + 1));
    if (at <= 0 || !Number.isFinite(ms)) {
      console.error(`LOCAL_D1_DELAY_INTO: cannot read "${part}" (table=ms)`);
      process.exit(2);
    }
    delays.set(part.slice(0, at), ms);
  }
  return delays;
}

// The extra delay LOCAL_D1_DELAY_INTO gives a request, by the table of its first INSERT.
function delayFor(into) {
  if (!into.length) return 0;
  const name = into[0].startsWith('"') ? into[0].slice(1, -1).replaceAll('""', '"') : into[0];
  return delayInto.get(name) ?? 0;
}

function parseFaults(text) {
  const f = { p429: 0, p500: 0, p503: 0, drop: 0, lost: 0, latencyMs: 0, jitterMs: 0, seed: 1, retryAfter: 1,
    maxBody: 0, maxAnswer: 0, holdRequest: 0, holdMs: 2000 };
  const keys = { "429": "p429", "500": "p500", "503": "p503", drop: "drop", lost: "lost",
    latency_ms: "latencyMs", jitter_ms: "jitterMs", seed: "seed", retry_after: "retryAfter", max_body: "maxBody",
    max_answer: "maxAnswer", hold_request: "holdRequest", hold_ms: "holdMs" };
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [k, v] = part.split("=");
    if (!(k in keys) || v === undefined || !Number.isFinite(Number(v))) {
      console.error(`LOCAL_D1_FAULTS: cannot read "${part}" (known: ${Object.keys(keys).join(", ")})`);
      process.exit(2);
    }
    f[keys[k]] = Number(v);
  }
  return f;
}

// mulberry32: a small deterministic generator, so a seed replays the same fault sequence.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = rng(faults.seed);
// Its own generator: a seed's fault sequence is the same with or without jitter.
const jitter = rng(faults.seed ^ 0x9e3779b9);

function pickFault() {
  let r = random();
  for (const [kind, p] of [["429", faults.p429], ["500", faults.p500], ["503", faults.p503],
    ["drop", faults.drop], ["lost", faults.lost]]) {
    if (r < p) return kind;
    r -= p;
  }
  return null;
}

// The file workerd keeps a Durable Object's SQLite database in is named after its id, derived
// from the object's name (the database id) as workerd does for named objects.
function databaseFile(id) {
  const key = crypto.createHash("sha256").update("miniflare-D1DatabaseObject").digest();
  const a = crypto.createHmac("sha256", key).update(id).digest().subarray(0, 16);
  const b = crypto.createHmac("sha256", key).update(a).digest().subarray(0, 16);
  return path.join(persist, "miniflare-D1DatabaseObject", Buffer.concat([a, b]).toString("hex") + ".sqlite");
}

fs.mkdirSync(persist, { recursive: true });
const registryPath = path.join(persist, "databases.json");

// Every database: those recorded by an earlier start (created ones included), then the configured.
const databases = new Map(); // id -> {name, file, created_at}
if (fs.existsSync(registryPath)) {
  for (const [id, entry] of Object.entries(JSON.parse(fs.readFileSync(registryPath, "utf8")))) {
    // Files written before databases had names map an id to its file.
    const e = typeof entry === "string" ? { file: entry } : entry;
    databases.set(id, { name: e.name ?? id, file: databaseFile(id), created_at: e.created_at ?? new Date().toISOString() });
  }
}
for (const id of databaseIds) {
  if (!databases.has(id)) databases.set(id, { name: id, file: databaseFile(id), created_at: new Date().toISOString() });
}
function saveRegistry() {
  const tmp = registryPath + ".tmp";
  fs.writeFileSync(tmp, JSON.stringify(Object.fromEntries(databases), null, 2) + "\n");
  fs.renameSync(tmp, registryPath);
}
saveRegistry();

const declared = [...databases.entries()].map(([id, d], i) => ({ id, name: d.name, created_at: d.created_at, binding: `DB_${i}` }));
const spare = Array.from({ length: spareCount }, (_, i) => ({ id: crypto.randomUUID(), binding: `SPARE_${i}` }));

// The Worker tells us of databases it creates or deletes; we keep databases.json.
async function launcher(request) {
  const { pathname } = new URL(request.url);
  const body = await request.json();
  if (pathname === "/created") {
    databases.set(body.id, { name: body.name, file: databaseFile(body.id), created_at: body.created_at });
  } else if (pathname === "/deleted") {
    const entry = databases.get(body.id);
    databases.delete(body.id);
    if (entry) for (const suffix of ["", "-wal", "-shm"]) fs.rmSync(entry.file + suffix, { force: true });
  } else {
    return new Response("unknown launcher call", { status: 404 });
  }
  saveRegistry();
  return new Response("ok");
}

const frontEnd = Boolean(logPath || env.LOCAL_D1_FAULTS || delayInto.size || besideBrokenKey);
const mf = new Miniflare({
  modules: true,
  scriptPath: path.join(here, "worker.js"),
  modulesRoot: here,
  compatibilityDate: "2026-07-01",
  d1Databases: Object.fromEntries([...declared, ...spare].map((d) => [d.binding, d.id])),
  d1Persist: persist,
  bindings: {
    TOKEN: token,
    ACCOUNT: account,
    REGISTRY: JSON.stringify({ databases: declared, spare }),
    TIME_TRAVEL: env.LOCAL_D1_TIME_TRAVEL || "on",
  },
  serviceBindings: { LAUNCHER: launcher },
  port: frontEnd ? 0 : port,
  host: "127.0.0.1",
});
const workerUrl = await mf.ready;

// The ready line names each database at start: {"<id>": {"name", "file", "created_at"}}.
const ready = (base) => console.log(`local-d1 ready at ${base} databases=${JSON.stringify(Object.fromEntries(databases))}`);
if (!frontEnd) ready(new URL("client/v4", workerUrl).href);

const log = logPath ? fs.createWriteStream(logPath, { flags: "a" }) : null;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function firstWords(body) {
  try {
    const parsed = JSON.parse(body);
    const items = Array.isArray(parsed.batch) ? parsed.batch : [parsed];
    return items.map((it) => String(it.sql ?? "").trim().split(/\s+/).slice(0, 2).join(" ").toUpperCase());
  } catch {
    return [];
  }
}

// The tables a request inserts into, in the order of its first INSERT into each (quoted names
// as sent).
function insertsInto(body) {
  try {
    const parsed = JSON.parse(body);
    const items = Array.isArray(parsed.batch) ? parsed.batch : [parsed];
    const names = [];
    for (const it of items) {
      const m = /^\s*INSERT\s+INTO\s+("(?:[^"]|"")*"|\S+)/i.exec(String(it.sql ?? ""));
      if (m && !names.includes(m[1])) names.push(m[1]);
    }
    return names;
  } catch {
    return [];
  }
}

// Requests received and not yet answered (logged with each request as `in_flight`).
let inFlight = 0;
// Requests received and not yet answered, counted down as soon as the answer is written: a
// client that has its answer never finds its request counted (LOCAL_D1_BESIDE_BROKEN_KEY).
let unanswered = 0;
// Requests received, for hold_request.
let received = 0;

// A client that goes away mid-request (a killed run) rejects the body's reading with "aborted":
// that connection is dropped, and the server goes on serving the others.
const server = http.createServer((req, res) => {
  inFlight += 1;
  res.on("close", () => { inFlight -= 1; });
  unanswered += 1;
  handle(req, res).catch(() => req.socket.destroy()).finally(() => { unanswered -= 1; });
});

async function handle(req, res) {
  received += 1;
  const held = faults.holdRequest > 0 && received === faults.holdRequest ? faults.holdMs : 0;
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks);
  const tooLarge = faults.maxBody > 0 && body.length > faults.maxBody;
  // Counted when the body is in: what is in flight beside it then.
  const beside = besideBrokenKey && unanswered > 1 && body.includes(besideBrokenKey);
  const fault = tooLarge ? "413" : beside ? "beside_broken_key" : pickFault();
  const into = delayInto.size && req.method !== "PUT" ? insertsInto(body.toString("utf8")) : [];
  const delay = faults.latencyMs + (faults.jitterMs ? jitter() * faults.jitterMs : 0) + held + delayFor(into);
  if (delay) await sleep(delay);
  const entry = { t: Date.now(), method: req.method, path: req.url, bytes: body.length, fault, in_flight: inFlight };
  if (held) entry.held_ms = held;
  if (log) {
    entry.statements = req.method === "PUT" ? [] : firstWords(body.toString("utf8"));
    entry.into = req.method === "PUT" ? [] : insertsInto(body.toString("utf8"));
    entry.body = crypto.createHash("sha256").update(body).digest("hex").slice(0, 16);
  }
  // With max_answer, a request is logged once its answer is known (its size, and whether it
  // was refused as too large).
  const logLater = faults.maxAnswer > 0 && !fault;
  if (log && !logLater) log.write(JSON.stringify(entry) + "\n");

  if (fault === "413") {
    res.writeHead(413, { "content-type": "text/html" });
    res.end("<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n" +
      "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n");
    return;
  }
  if (fault === "beside_broken_key") {
    res.writeHead(400, { "content-type": "application/json", "cf-d1": "err=7500" });
    res.end(JSON.stringify({ result: [], success: false, messages: [], errors: [{ code: 7500, message:
      "Durable Object was reset and rolled back to its last known good state because the application " +
      "left the database in a state where constraints were violated: FOREIGN KEY constraint failed: " +
      "SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_FOREIGNKEY)" }] }));
    return;
  }
  if (fault === "drop") {
    req.socket.destroy();
    return;
  }
  if (fault === "429") {
    res.writeHead(429, { "content-type": "application/json", "retry-after": String(faults.retryAfter) });
    res.end(JSON.stringify({ result: null, success: false, messages: [],
      errors: [{ code: 971, message: "Please wait and consider throttling your request speed" }] }));
    return;
  }
  if (fault === "500" || fault === "503") {
    const message = random() < 0.5 ? "Network connection lost."
      : "Internal error in D1 DB storage caused object to be reset.";
    res.writeHead(Number(fault), { "content-type": "application/json", "cf-d1": "err=7500" });
    res.end(JSON.stringify({ result: [], success: false, messages: [], errors: [{ code: 7500, message }] }));
    return;
  }

  const answer = await mf.dispatchFetch(`http://${req.headers.host || "local-d1"}${req.url}`, {
    method: req.method,
    headers: req.headers,
    body: req.method === "GET" || req.method === "HEAD" ? undefined : body,
  });
  const text = Buffer.from(await answer.arrayBuffer());
  if (logLater) {
    entry.answer_bytes = text.length;
    const query = /\/(raw|query)$/.test(new URL(req.url, "http://local-d1").pathname);
    if (query && text.length > faults.maxAnswer) {
      entry.fault = "answer_too_large";
      if (log) log.write(JSON.stringify(entry) + "\n");
      res.writeHead(500, { "content-type": "application/json", "cf-d1": "err=7500" });
      res.end(JSON.stringify({ result: [], success: false, messages: [],
        errors: [{ code: 7500, message: "D1 DB's isolate exceeded its memory limit and was reset." }] }));
      return;
    }
    if (log) log.write(JSON.stringify(entry) + "\n");
  }
  if (fault === "lost") {
    // D1 has committed the request; the answer never arrives.
    req.socket.destroy();
    return;
  }
  const headers = { "content-type": answer.headers.get("content-type") || "application/json" };
  for (const name of ["cf-d1", "etag"]) {
    const value = answer.headers.get(name);
    if (value) headers[name] = value;
  }
  res.writeHead(answer.status, headers);
  res.end(text);
}
server.keepAliveTimeout = 60_000;

if (frontEnd) {
  server.listen(port, "127.0.0.1", () => {
    ready(`http://127.0.0.1:${server.address().port}/client/v4`);
  });
}

async function stop() {
  server.close();
  await mf.dispose();
  if (log) log.end();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
// Test harnesses hold our stdin open; when they exit, so do we.
if (env.LOCAL_D1_STOP_ON_EOF) {
  process.stdin.on("end", stop);
  process.stdin.resume();
}
