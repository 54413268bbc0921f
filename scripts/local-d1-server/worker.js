// D1's REST API shape over a real D1 binding (miniflare / workerd).
//
// Serves, for each configured database id:
//   POST /client/v4/accounts/{account}/d1/database/{id}/query
//   POST /client/v4/accounts/{account}/d1/database/{id}/raw
// Body: {"sql", "params"} or {"batch": [{"sql", "params"}, ...]}. A whole request runs as one
// D1 batch, i.e. one transaction, as on Cloudflare. Answers use Cloudflare's v4 envelope.
//
// Configuration comes from the launcher (local-d1.mjs) through bindings:
//   TOKEN      the bearer token accepted
//   ACCOUNT    the account id accepted ("" accepts any)
//   DATABASES  JSON object {database_id: binding_name}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const route = url.pathname.match(
      /^\/client\/v4\/accounts\/([^/]+)\/d1\/database\/([^/]+)\/(query|raw)\/?$/,
    );
    if (!route) {
      return envelope(404, [{ code: 7003, message: "No route for that URI" }]);
    }
    const [, account, databaseId, format] = route;

    const auth = request.headers.get("authorization");
    if (!auth) {
      return envelope(401, [{ code: 10000, message: "Authentication error" }]);
    }
    if (auth !== `Bearer ${env.TOKEN}`) {
      return envelope(403, [{ code: 10000, message: "Authentication error" }]);
    }
    if (env.ACCOUNT && account !== env.ACCOUNT) {
      return envelope(403, [{ code: 10000, message: "Authentication error" }]);
    }
    if (request.method !== "POST") {
      return envelope(405, [{ code: 10405, message: "Method not allowed" }]);
    }

    const bindingName = JSON.parse(env.DATABASES)[databaseId];
    if (!bindingName) {
      return envelope(404, [{ code: 7404, message: "The database " + databaseId + " could not be found" }]);
    }
    const db = env[bindingName];

    let body;
    try {
      body = await request.json();
    } catch (e) {
      return envelope(400, [{ code: 7400, message: "The request is malformed: " + e.message }]);
    }
    const items = Array.isArray(body.batch) ? body.batch : [body];

    const local = { served_by_colo: "LOCAL", served_by_primary: true, served_by_region: "LOCAL" };
    let queries;
    try {
      queries = [];
      for (const item of items) {
        if (typeof item.sql !== "string") throw new Error("sql must be a string");
        const parts = splitStatements(item.sql);
        const params = Array.isArray(item.params) ? item.params : [];
        if (parts.length === 0) throw new Error("No SQL statements detected.");
        if (parts.length > 1 && params.length > 0) {
          throw new Error("When executing multiple SQL statements in a single call, only the last statement can have parameters.");
        }
        for (const part of parts) queries.push({ sql: part, params: params.map(toBindValue) });
      }
    } catch (e) {
      return sqlError(e);
    }

    // The whole request goes to the D1 Durable Object as one transaction, through the binding's
    // own fetcher: rows come back as arrays (duplicate column names kept, columns even for zero
    // rows) with every statement's meta (rows_read, rows_written, ...), as Cloudflare answers.
    let answer;
    try {
      const response = await db.fetcher.fetch("http://d1/query?resultsFormat=ROWS_AND_COLUMNS", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(queries),
      });
      answer = await response.json();
    } catch (e) {
      return sqlError(e);
    }
    if (!Array.isArray(answer)) {
      return sqlError(answer && answer.error ? answer.error : "the D1 engine gave no answer");
    }
    const result = answer.map((r) => ({
      success: true,
      results: format === "raw" ? r.results : toObjects(r.results),
      meta: { ...r.meta, ...local },
    }));
    return envelope(200, [], result);
  },
};

// Params arrive as JSON: strings, numbers, null, booleans, or arrays of bytes for BLOBs (which
// the engine takes as they are).
function toBindValue(value) {
  if (typeof value === "boolean") return value ? 1 : 0;
  return value;
}

function toObjects({ columns, rows }) {
  return rows.map((row) => Object.fromEntries(columns.map((c, i) => [c, row[i]])));
}

function sqlError(e) {
  const message = String(e && e.message ? e.message : e).replace(/^D1_(EXEC_)?ERROR:\s*/, "");
  return envelope(400, [{ code: 7500, message }], [], { "cf-d1": "err=7500" });
}

function envelope(status, errors, result = [], headers = {}) {
  return new Response(
    JSON.stringify({ result, success: errors.length === 0, errors, messages: [] }),
    { status, headers: { "content-type": "application/json", ...headers } },
  );
}

// Splits SQL text into statements on top-level semicolons, the way D1's API does server-side,
// keeping quoted text, comments and CREATE TRIGGER ... BEGIN ... END bodies whole. It jumps from
// one character that matters to the next with a native regex, so a megabyte of INSERT values
// (digits, commas, parentheses) costs little.
const INTERESTING = /['"`[;A-Za-z_]|--|\/\*/g;
const WORD = /[A-Za-z0-9_$]*/y;

export function splitStatements(sql) {
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
