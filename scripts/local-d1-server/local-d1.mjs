// Starts Cloudflare's D1 engine (miniflare, workerd inside) behind D1's REST API shape.
//
// worker.js runs each request over a real D1 binding. When faults (LOCAL_D1_FAULTS) or a request
// log (LOCAL_D1_LOG) are asked for, a Node HTTP front end on LOCAL_D1_PORT takes each request,
// applies the fault, logs it, and hands it on to the Worker. Faults are decided before a request
// reaches D1 (429, 5xx, drop) or after D1 has answered in full (lost), so a fault never
// half-applies a request. Otherwise workerd serves LOCAL_D1_PORT itself, as Cloudflare's edge
// would: nothing of ours in between, and responses gzip-compressed when the client accepts it.
//
// Environment:
//   LOCAL_D1_PORT       port to listen on (default 8787; 0 picks a free one)
//   LOCAL_D1_PERSIST    state folder (default .local-d1/)
//   LOCAL_D1_DATABASES  comma-separated database ids (default "local")
//   LOCAL_D1_TOKEN      bearer token accepted (default "local-dev-token")
//   LOCAL_D1_ACCOUNT    account id accepted (default: any)
//   LOCAL_D1_FAULTS     e.g. "429=0.05,500=0.05,drop=0.02,lost=0.01,latency_ms=30,seed=7,retry_after=1"
//   LOCAL_D1_LOG        file to append one JSON line per request to (default: none)
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
const token = env.LOCAL_D1_TOKEN || "local-dev-token";
const account = env.LOCAL_D1_ACCOUNT || "";
const faults = parseFaults(env.LOCAL_D1_FAULTS || "");
const logPath = env.LOCAL_D1_LOG || "";

function parseFaults(text) {
  const f = { p429: 0, p500: 0, p503: 0, drop: 0, lost: 0, latencyMs: 0, seed: 1, retryAfter: 1 };
  const keys = { "429": "p429", "500": "p500", "503": "p503", drop: "drop", lost: "lost",
    latency_ms: "latencyMs", seed: "seed", retry_after: "retryAfter" };
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

const bindings = Object.fromEntries(databaseIds.map((id, i) => [id, `DB_${i}`]));
const frontEnd = Boolean(logPath || env.LOCAL_D1_FAULTS);
fs.mkdirSync(persist, { recursive: true });
const mf = new Miniflare({
  modules: true,
  scriptPath: path.join(here, "worker.js"),
  compatibilityDate: "2026-07-01",
  d1Databases: Object.fromEntries(databaseIds.map((id, i) => [`DB_${i}`, id])),
  d1Persist: persist,
  bindings: { TOKEN: token, ACCOUNT: account, DATABASES: JSON.stringify(bindings) },
  port: frontEnd ? 0 : port,
  host: "127.0.0.1",
});
const workerUrl = await mf.ready;

// Where each database's file is (created on its first request).
const files = Object.fromEntries(databaseIds.map((id) => [id, databaseFile(id)]));
fs.writeFileSync(path.join(persist, "databases.json"), JSON.stringify(files, null, 2) + "\n");

if (!frontEnd) {
  const base = new URL("client/v4", workerUrl).href;
  console.log(`local-d1 ready at ${base} databases=${JSON.stringify(files)}`);
}

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

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks);
  const fault = pickFault();
  if (faults.latencyMs) await sleep(faults.latencyMs);
  const entry = { t: Date.now(), method: req.method, path: req.url, bytes: body.length, fault };
  if (log) {
    entry.statements = firstWords(body.toString("utf8"));
    log.write(JSON.stringify(entry) + "\n");
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

  const answer = await mf.dispatchFetch(`http://local-d1${req.url}`, {
    method: req.method,
    headers: req.headers,
    body: req.method === "GET" || req.method === "HEAD" ? undefined : body,
  });
  const text = Buffer.from(await answer.arrayBuffer());
  if (fault === "lost") {
    // D1 has committed the request; the answer never arrives.
    req.socket.destroy();
    return;
  }
  const headers = { "content-type": answer.headers.get("content-type") || "application/json" };
  const cfD1 = answer.headers.get("cf-d1");
  if (cfD1) headers["cf-d1"] = cfD1;
  res.writeHead(answer.status, headers);
  res.end(text);
});
server.keepAliveTimeout = 60_000;

if (frontEnd) {
  server.listen(port, "127.0.0.1", () => {
    const base = `http://127.0.0.1:${server.address().port}/client/v4`;
    console.log(`local-d1 ready at ${base} databases=${JSON.stringify(files)}`);
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
