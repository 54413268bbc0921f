// Cloudflare's `cloudflare` npm SDK against the local D1: where the SDK and our server disagree,
// the server is wrong. Run by tests/suite/conformance.rs with node's test runner, given
// LOCAL_D1_URL (…/client/v4), LOCAL_D1_TOKEN, LOCAL_D1_ACCOUNT and LOCAL_D1_DATABASE (an empty
// database of that server, its id also its name).
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import Cloudflare from "cloudflare";

const env = process.env;
const account_id = env.LOCAL_D1_ACCOUNT;
const db = env.LOCAL_D1_DATABASE;
const cf = new Cloudflare({ apiToken: env.LOCAL_D1_TOKEN, baseURL: env.LOCAL_D1_URL, maxRetries: 0 });

const META_NUMBERS = ["duration", "changes", "last_row_id", "size_after", "rows_read", "rows_written"];
function assertMeta(meta) {
  for (const key of META_NUMBERS) assert.equal(typeof meta[key], "number", `meta.${key}: ${JSON.stringify(meta)}`);
  assert.equal(typeof meta.changed_db, "boolean");
  assert.ok(["WNAM", "ENAM", "WEUR", "EEUR", "APAC", "OC"].includes(meta.served_by_region), meta.served_by_region);
  assert.equal(typeof meta.timings.sql_duration_ms, "number");
}

test("query: rows as objects, one result per statement, full meta", async () => {
  const page = await cf.d1.database.query(db, {
    account_id,
    sql: "CREATE TABLE q(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO q(v) VALUES ('a'), ('b'); SELECT * FROM q",
  });
  assert.equal(page.result.length, 3);
  for (const r of page.result) {
    assert.equal(r.success, true);
    assertMeta(r.meta);
  }
  assert.equal(page.result[1].meta.changes, 2);
  assert.equal(page.result[1].meta.last_row_id, 2);
  assert.deepEqual(page.result[2].results, [{ id: 1, v: "a" }, { id: 2, v: "b" }]);
  const bound = await cf.d1.database.query(db, { account_id, sql: "SELECT v FROM q WHERE id = ?", params: ["2"] });
  assert.deepEqual(bound.result[0].results, [{ v: "b" }]);
});

test("raw, single body: columns from the statement, even with no rows", async () => {
  const page = await cf.d1.database.raw(db, { account_id, sql: "SELECT 1 AS a, 2 AS a, 3 AS \"1\"" });
  assert.deepEqual(page.result[0].results, { columns: ["a", "a", "1"], rows: [[1, 2, 3]] });
  assertMeta(page.result[0].meta);
  await cf.d1.database.raw(db, { account_id, sql: "CREATE TABLE IF NOT EXISTS empty(x, y)" });
  const empty = await cf.d1.database.raw(db, { account_id, sql: "SELECT * FROM empty" });
  assert.deepEqual(empty.result[0].results, { columns: ["x", "y"], rows: [] });
});

test("raw, batch body: one result per item, in one transaction", async () => {
  const page = await cf.d1.database.raw(db, {
    account_id,
    batch: [
      { sql: "CREATE TABLE rb(x)" },
      { sql: "INSERT INTO rb VALUES (?)", params: ["7"] },
      { sql: "SELECT x FROM rb" },
    ],
  });
  assert.equal(page.result.length, 3);
  assert.deepEqual(page.result[2].results, { columns: ["x"], rows: [["7"]] });
  page.result.forEach((r) => assertMeta(r.meta));
  await assert.rejects(
    cf.d1.database.raw(db, { account_id, batch: [{ sql: "INSERT INTO rb VALUES (8)" }, { sql: "INSERT INTO nope VALUES (1)" }] }),
    Cloudflare.BadRequestError,
  );
  const after = await cf.d1.database.raw(db, { account_id, sql: "SELECT count(*) FROM rb" });
  assert.deepEqual(after.result[0].results.rows, [[1]], "the failed batch left nothing");
});

test("errors surface as the SDK's error classes with D1's codes", async () => {
  const sql = await cf.d1.database.query(db, { account_id, sql: "SELECT * FROM missing" }).catch((e) => e);
  assert.ok(sql instanceof Cloudflare.BadRequestError, String(sql));
  assert.equal(sql.status, 400);
  assert.equal(sql.errors[0].code, 7500);
  assert.match(sql.errors[0].message, /no such table: missing/);

  const missing = await cf.d1.database.get("no-such-database", { account_id }).catch((e) => e);
  assert.ok(missing instanceof Cloudflare.NotFoundError, String(missing));
  assert.equal(missing.errors[0].code, 7404);

  const bad = new Cloudflare({ apiToken: "wrong", baseURL: env.LOCAL_D1_URL, maxRetries: 0 });
  const denied = await bad.d1.database.query(db, { account_id, sql: "SELECT 1" }).catch((e) => e);
  assert.ok(denied instanceof Cloudflare.PermissionDeniedError, String(denied));
  assert.equal(denied.errors[0].code, 10000);
});

test("list pages through every database and filters by name", async () => {
  const seen = [];
  for await (const d of cf.d1.database.list({ account_id, per_page: 1 })) seen.push(d);
  assert.ok(seen.length >= 2, JSON.stringify(seen));
  assert.equal(new Set(seen.map((d) => d.uuid)).size, seen.length, "no database twice");
  const page = await cf.d1.database.list({ account_id, name: db });
  assert.ok(page.result.some((d) => d.uuid === db && d.name === db), JSON.stringify(page.result));
  assert.equal(typeof page.result_info.total_count, "number");
});

test("create, get by id and by name, delete", async () => {
  const made = await cf.d1.database.create({ account_id, name: "sdk-made" });
  assert.match(made.uuid, /^[0-9a-f-]{36}$/);
  assert.equal(made.name, "sdk-made");
  const taken = await cf.d1.database.create({ account_id, name: "sdk-made" }).catch((e) => e);
  assert.ok(taken instanceof Cloudflare.BadRequestError, String(taken));
  assert.equal(taken.errors[0].code, 7502);
  await cf.d1.database.query(made.uuid, { account_id, sql: "CREATE TABLE a(x); CREATE TABLE b(x)" });
  const info = await cf.d1.database.get(made.uuid, { account_id });
  assert.equal(info.num_tables, 2);
  assert.equal(info.version, "production");
  assert.ok(info.file_size > 0);
  assert.ok(!Number.isNaN(Date.parse(info.created_at)));
  assert.equal((await cf.d1.database.get("sdk-made", { account_id })).uuid, made.uuid);
  await cf.d1.database.delete(made.uuid, { account_id });
  await assert.rejects(cf.d1.database.get(made.uuid, { account_id }), Cloudflare.NotFoundError);
});

test("timeTravel.getBookmark: moves with each write; restore is refused in D1's shape", async () => {
  const before = await cf.d1.database.timeTravel.getBookmark(db, { account_id });
  assert.equal(typeof before.bookmark, "string");
  const again = await cf.d1.database.timeTravel.getBookmark(db, { account_id });
  assert.equal(again.bookmark, before.bookmark);
  await cf.d1.database.query(db, { account_id, sql: "CREATE TABLE tt(x)" });
  const after = await cf.d1.database.timeTravel.getBookmark(db, { account_id });
  assert.notEqual(after.bookmark, before.bookmark);
  const past = await cf.d1.database.timeTravel.getBookmark(db, { account_id, timestamp: new Date(0).toISOString() });
  assert.equal(typeof past.bookmark, "string");
  await assert.rejects(
    cf.d1.database.timeTravel.restore(db, { account_id, bookmark: before.bookmark }),
    Cloudflare.BadRequestError,
  );
});

test("import: init, upload, ingest, poll", async () => {
  const sql = "CREATE TABLE imported(id INTEGER PRIMARY KEY, v TEXT);\n" +
    Array.from({ length: 500 }, (_, i) => `INSERT INTO imported VALUES (${i}, 'row ${i}');`).join("\n");
  const etag = crypto.createHash("md5").update(sql).digest("hex");
  const init = await cf.d1.database.import(db, { account_id, action: "init", etag });
  assert.ok(init.upload_url && init.filename, JSON.stringify(init));
  const put = await fetch(init.upload_url, { method: "PUT", body: sql });
  assert.equal(put.status, 200);
  assert.equal(put.headers.get("etag").replace(/"/g, ""), etag);
  let answer = await cf.d1.database.import(db, { account_id, action: "ingest", etag, filename: init.filename });
  while (answer.status !== "complete" && answer.status !== "error" && answer.success !== false) {
    answer = await cf.d1.database.import(db, { account_id, action: "poll", current_bookmark: answer.at_bookmark });
  }
  assert.equal(answer.status, "complete", JSON.stringify(answer));
  assert.equal(answer.result.num_queries, 501);
  assert.equal(answer.result.meta.rows_written >= 500, true);
  const count = await cf.d1.database.query(db, { account_id, sql: "SELECT count(*) AS n FROM imported" });
  assert.deepEqual(count.result[0].results, [{ n: 500 }]);
  const done = await cf.d1.database.import(db, { account_id, action: "poll", current_bookmark: answer.at_bookmark });
  assert.equal(done.success, false);
  assert.equal(done.error, "Not currently importing anything.");
});
