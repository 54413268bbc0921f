// Cloudflare's wrangler (4, pinned in ../package.json) against the local D1, through
// CLOUDFLARE_API_BASE_URL: where wrangler and our server disagree, the server is wrong. Run by
// tests/suite/conformance.rs with node's test runner, given LOCAL_D1_URL (…/client/v4),
// LOCAL_D1_TOKEN, LOCAL_D1_ACCOUNT and LOCAL_D1_DATABASE (an empty database, its id also its name).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const wranglerJs = path.join(here, "..", "node_modules", "wrangler", "bin", "wrangler.js");
const env = process.env;
const db = env.LOCAL_D1_DATABASE;

// A project folder with the database bound as DB, and wrangler's own files kept inside it.
const project = fs.mkdtempSync(path.join(os.tmpdir(), "wrangler-conformance-"));
fs.writeFileSync(path.join(project, "wrangler.toml"), [
  'name = "conformance"',
  'compatibility_date = "2026-07-01"',
  "[[d1_databases]]",
  'binding = "DB"',
  `database_name = "${db}"`,
  `database_id = "${db}"`,
  'migrations_dir = "migrations"',
  "",
].join("\n"));

function wrangler(...args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [wranglerJs, ...args], {
      cwd: project,
      maxBuffer: 64 << 20,
      env: {
        PATH: env.PATH,
        HOME: project,
        XDG_CONFIG_HOME: path.join(project, ".config"),
        CLOUDFLARE_API_BASE_URL: env.LOCAL_D1_URL,
        CLOUDFLARE_API_TOKEN: env.LOCAL_D1_TOKEN,
        CLOUDFLARE_ACCOUNT_ID: env.LOCAL_D1_ACCOUNT,
        // Nothing leaves this machine: no metrics, error reports or update checks (the banner's).
        WRANGLER_SEND_METRICS: "false",
        WRANGLER_SEND_ERROR_REPORTS: "false",
        WRANGLER_HIDE_BANNER: "true",
        CI: "true",
        NO_COLOR: "1",
      },
    }, (error, stdout, stderr) => resolve({ code: error ? error.code ?? 1 : 0, stdout, stderr }));
  });
}

async function ok(...args) {
  const run = await wrangler(...args);
  assert.equal(run.code, 0, `wrangler ${args.join(" ")} failed:\n${run.stdout}\n${run.stderr}`);
  return run;
}

// wrangler's --json output, less any log lines printed before it.
function json(stdout) {
  return JSON.parse(stdout.slice(stdout.search(/^[[{]/m)));
}

test("d1 execute --remote --command: several statements through /query", async () => {
  const { stdout } = await ok("d1", "execute", "DB", "--remote", "--json", "--command",
    "CREATE TABLE w(id INTEGER PRIMARY KEY, v); INSERT INTO w(v) VALUES ('one'), (x'00ff'); SELECT * FROM w");
  const results = json(stdout);
  assert.equal(results.length, 3);
  assert.equal(results[1].meta.changes, 2);
  assert.deepEqual(results[2].results, [{ id: 1, v: "one" }, { id: 2, v: [0, 255] }]);
  const failed = await wrangler("d1", "execute", "DB", "--remote", "--command", "SELECT * FROM missing");
  assert.notEqual(failed.code, 0);
  assert.match(failed.stdout + failed.stderr, /no such table: missing/);
  assert.match(failed.stdout + failed.stderr, /7500/);
});

test("d1 execute --remote --file: the import flow (init, upload, ingest, poll)", async () => {
  const lines = ["CREATE TABLE f(id INTEGER PRIMARY KEY, v TEXT);"];
  for (let i = 0; i < 1000; i++) lines.push(`INSERT INTO f VALUES (${i}, 'it''s ${i}; not a split');`);
  fs.writeFileSync(path.join(project, "data.sql"), lines.join("\n"));
  const { stdout } = await ok("d1", "execute", "DB", "--remote", "--yes", "--file", "data.sql");
  assert.match(stdout, /Executed 1001 queries/);
  const count = json((await ok("d1", "execute", "DB", "--remote", "--json", "--command",
    "SELECT count(*) AS n, (SELECT v FROM f WHERE id = 999) AS last FROM f")).stdout);
  assert.deepEqual(count[0].results, [{ n: 1000, last: "it's 999; not a split" }]);

  // A failing file leaves the database as it was.
  fs.writeFileSync(path.join(project, "bad.sql"), "INSERT INTO f VALUES (5000, 'x');\nINSERT INTO nope VALUES (1);\n");
  const bad = await wrangler("d1", "execute", "DB", "--remote", "--yes", "--file", "bad.sql");
  assert.notEqual(bad.code, 0, bad.stdout);
  assert.match(bad.stdout + bad.stderr, /no such table: nope/);
  const after = json((await ok("d1", "execute", "DB", "--remote", "--json", "--command",
    "SELECT count(*) AS n FROM f")).stdout);
  assert.deepEqual(after[0].results, [{ n: 1000 }]);
});

test("d1 info: size, tables, and the analytics query", async () => {
  await ok("d1", "execute", "DB", "--remote", "--command", "CREATE TABLE IF NOT EXISTS info_t(x)");
  const info = json((await ok("d1", "info", "DB", "--json")).stdout);
  assert.equal(info.uuid, db);
  assert.equal(info.name, db);
  assert.ok(info.num_tables >= 1, JSON.stringify(info));
  assert.ok(info.database_size > 0, JSON.stringify(info));
  assert.equal(typeof info.read_queries_24h, "number");
  assert.equal(typeof info.rows_written_24h, "number");
});

test("d1 list: the database is listed", async () => {
  const list = json((await ok("d1", "list", "--json")).stdout);
  assert.ok(list.some((d) => d.uuid === db && d.name === db), JSON.stringify(list));
});

test("d1 create and delete", async () => {
  const made = await ok("d1", "create", "wrangler-made");
  assert.match(made.stdout, /Successfully created DB 'wrangler-made'/);
  const taken = await wrangler("d1", "create", "wrangler-made");
  assert.notEqual(taken.code, 0);
  assert.match(taken.stdout + taken.stderr, /A database with that name already exists/);
  await ok("d1", "delete", "wrangler-made", "--skip-confirmation");
  const list = json((await ok("d1", "list", "--json")).stdout);
  assert.ok(!list.some((d) => d.name === "wrangler-made"));
});

test("d1 migrations apply --remote: applies each migration once", async () => {
  fs.mkdirSync(path.join(project, "migrations"), { recursive: true });
  fs.writeFileSync(path.join(project, "migrations", "0001_init.sql"), "CREATE TABLE m(x);\nINSERT INTO m VALUES (1);\n");
  fs.writeFileSync(path.join(project, "migrations", "0002_more.sql"), "INSERT INTO m VALUES (2);\n");
  await ok("d1", "migrations", "apply", "DB", "--remote");
  const again = await ok("d1", "migrations", "apply", "DB", "--remote");
  assert.match(again.stdout, /No migrations to apply/);
  const rows = json((await ok("d1", "execute", "DB", "--remote", "--json", "--command",
    "SELECT (SELECT group_concat(x) FROM m) AS m, (SELECT count(*) FROM d1_migrations) AS applied")).stdout);
  assert.deepEqual(rows[0].results, [{ m: "1,2", applied: 2 }]);
});

test("d1 time-travel info: the bookmark", async () => {
  const { stdout } = await ok("d1", "time-travel", "info", "DB", "--json");
  const answer = json(stdout);
  assert.equal(typeof answer.bookmark, "string", stdout);
});
