#!/usr/bin/env python3
"""The local D1 engine's ingest limit: pre-built multi-row INSERTs of one table, posted with
nothing else in the way (no reading, no packing while timing). Prints one JSON line.

usage: engine_limit.py API_URL DATABASE_ID TOKEN SOURCE.sqlite TABLE [rows_per_statement] [statements_per_request] [in_flight] [suffix]
The other tables of SOURCE are created and loaded first (untimed), so foreign keys hold.
"""
import json, sqlite3, urllib.error, sys, threading, time, urllib.request

api, db_id, token, source, table = sys.argv[1:6]
rows_per_stmt = int(sys.argv[6]) if len(sys.argv) > 6 else 2500
stmts_per_req = int(sys.argv[7]) if len(sys.argv) > 7 else 8
in_flight = int(sys.argv[8]) if len(sys.argv) > 8 else 2
suffix = sys.argv[9] if len(sys.argv) > 9 else ""
url = f"{api}/accounts/bench/d1/database/{db_id}/raw"

def post(statements):
    body = json.dumps({"batch": [{"sql": "PRAGMA defer_foreign_keys = on"}] + [{"sql": s} for s in statements]}).encode()
    req = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            out = json.load(r)
    except urllib.error.HTTPError as e:
        raise SystemExit(e.read().decode()[:500])
    if not out["success"]:
        raise SystemExit(out)

def lit(v):
    if v is None: return "NULL"
    if isinstance(v, int): return str(v)
    if isinstance(v, float): return repr(v)
    if isinstance(v, bytes): return "X'" + v.hex() + "'"
    return "'" + v.replace("'", "''") + "'"

def statements_of(conn, name):
    q = '"' + name.replace('"', '""') + '"'
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({q})")]
    collist = ",".join('"' + c.replace('"', '""') + '"' for c in cols)
    rows = conn.execute(f"SELECT rowid, * FROM {q} ORDER BY rowid").fetchall()
    out, tuples, size = [], [], 0
    head = f"INSERT INTO {q} (rowid,{collist}) VALUES "
    for r in rows:
        t = "(" + ",".join(lit(v) for v in r) + ")"
        if tuples and (len(tuples) >= rows_per_stmt or size + len(t) + len(head) + len(suffix) > 99000):
            out.append(head + ",".join(tuples) + suffix)
            tuples, size = [], 0
        tuples.append(t)
        size += len(t) + 1
    if tuples:
        out.append(head + ",".join(tuples) + suffix)
    return out, len(rows)

conn = sqlite3.connect(source)
tables = [r for r in conn.execute("SELECT name, sql FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
post([sql for _, sql in tables])
# The other tables in one request: one transaction, so foreign keys hold whatever the order.
post([s for name, _ in tables if name != table for s in statements_of(conn, name)[0]])
stmts, n = statements_of(conn, table)
requests = [stmts[i:i + stmts_per_req] for i in range(0, len(stmts), stmts_per_req)]
nbytes = sum(len(s) for s in stmts)
lock = threading.Lock()
def worker():
    while True:
        with lock:
            if not requests: return
            r = requests.pop(0)
        post(r)
count = len(requests)
start = time.time()
threads = [threading.Thread(target=worker) for _ in range(in_flight)]
for t in threads: t.start()
for t in threads: t.join()
secs = time.time() - start
print(json.dumps({"table": table, "rows": n, "requests": count, "bytes": nbytes, "seconds": round(secs, 3), "rows_per_s": round(n / secs)}))
