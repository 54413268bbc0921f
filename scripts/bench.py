#!/usr/bin/env python3
"""The benchmark behind scripts/bench. Runs each case as a child process and measures its wall
time and peak resident memory (wait4), against a local D1 started for the purpose."""
import json, os, shutil, sqlite3, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/d1-migrator")
DATASET = os.path.join(ROOT, "../shared/datasets/northwind.db")
TOKEN = "bench-token"
PEERS = "--peers" in sys.argv
SYNC = "--sync" in sys.argv
# `--latency`: only the latency table (forward, full validation, rollback at 0, 100 and 250 ms per
# answer), for Northwind and a generated database of BENCH_LATENCY_LARGE_MB (0: none).
LATENCY = "--latency" in sys.argv
LATENCIES = [int(v) for v in os.environ.get("BENCH_LATENCIES", "0,100,250").split(",")]
LATENCY_LARGE_MB = int(os.environ.get("BENCH_LATENCY_LARGE_MB", "200"))
# BENCH_LATENCY_NORTHWIND=0 leaves Northwind out (the generated database alone, e.g. 1 GB), and
# BENCH_LATENCY_PHASES picks the runs (default all three, comma-separated; without forward, the
# database the others read is copied once, untimed).
LATENCY_LARGE_REPEAT = int(os.environ.get("BENCH_LATENCY_LARGE_REPEAT", "1"))
LATENCY_NORTHWIND = os.environ.get("BENCH_LATENCY_NORTHWIND", "1") != "0"
LATENCY_PHASES = [p.strip() for p in os.environ.get("BENCH_LATENCY_PHASES", "forward,full validation,rollback").split(",")]
if set(LATENCY_PHASES) - {"forward", "full validation", "rollback"}:
    raise SystemExit(f"BENCH_LATENCY_PHASES: {LATENCY_PHASES}; the phases are forward, full validation, rollback")
LARGE_MB = int(os.environ.get("BENCH_LARGE_MB", "1024"))
# Northwind runs are repeated and the median kept: this machine's speed drifts between runs.
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
PEER_DATASET = os.environ.get("BENCH_PEER_DATASET", DATASET)
work = tempfile.mkdtemp(prefix="d1-bench-")


def start_d1(ids, faults=None, persist="d1"):
    env = dict(os.environ, LOCAL_D1_PORT="0", LOCAL_D1_PERSIST=os.path.join(work, persist),
               LOCAL_D1_DATABASES=",".join(ids), LOCAL_D1_TOKEN=TOKEN)
    env.pop("LOCAL_D1_FAULTS", None)
    if faults:
        env["LOCAL_D1_FAULTS"] = faults
    proc = subprocess.Popen([os.path.join(ROOT, "scripts/local-d1")], env=env, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " ready at " in line:
            url = line.split(" ready at ")[1].split()[0]
            files = {i: d["file"] for i, d in json.loads(line.split("databases=")[1]).items()}
            return proc, url, files
    raise SystemExit("the local D1 did not start")


def timed(cmd, env=None, cwd=None):
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    err = proc.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{cmd[0]} failed ({code}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def migrator(url, db, sqlite_path, **extra):
    report = os.path.join(work, f"report-{db}-{len(os.listdir(work))}.json")
    env = dict(os.environ, CLOUDFLARE_ACCOUNT_ID="bench", CLOUDFLARE_API_TOKEN=TOKEN, MIGRATION_D1_API_URL=url,
               MIGRATION_D1_DATABASE_ID=db, MIGRATION_SQLITE_PATH=sqlite_path, MIGRATION_QUIET="true",
               MIGRATION_REPORT=report, MIGRATION_STATE_DIR=os.path.join(work, f"state-{db}"),
               MIGRATION_RATE_LIMIT="0", **{k: str(v) for k, v in extra.items()})
    wall, rss = timed([BIN], env=env)
    with open(report) as f:
        return wall, rss, json.load(f)


def rows_and_bytes(path):
    conn = sqlite3.connect(path)
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    rows = sum(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names)
    return rows, os.path.getsize(path)


results = []


def literal(v):
    """A value as `.dump` writes it."""
    if v is None:
        return "NULL"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, bytes):
        return "X'" + v.hex() + "'"
    return "'" + v.replace("'", "''") + "'"


def data_request_kb(report):
    """Average SQL per data request (the tables' requests, not catalog reads or DDL)."""
    sent = sum(t["bytes_sent"] for t in report["tables"])
    requests = sum(t["requests"] for t in report["tables"])
    return round(sent / requests / 1000) if requests else None


def record(name, wall, rss, rows, nbytes, requests, kb=None):
    results.append({"run": name, "wall_s": round(wall, 2), "rows_per_s": round(rows / wall),
                    "mb_per_s": round(nbytes / wall / 1e6, 1), "requests": requests, "kb_per_request": kb,
                    "peak_rss_mb": round(rss)})
    print(f"  measured: {results[-1]}", file=sys.stderr, flush=True)


def d1_sql(url, db, statements):
    """Runs statements on the local D1 as one request (changes made on D1 after a switch)."""
    import urllib.request
    body = json.dumps({"batch": [{"sql": s} for s in statements]}).encode()
    req = urllib.request.Request(f"{url}/accounts/bench/d1/database/{db}/raw", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as answer:
        return [r["meta"]["changes"] for r in json.load(answer)["result"]]


# About 1% of Northwind's 624k rows: updates, new parents (customers, orders) with children (order
# lines), and deletes of children and of parents with theirs.
FORWARD_CHANGES = [
    "UPDATE [Order Details] SET UnitPrice = UnitPrice + 1 WHERE (OrderID * 7 + ProductID) % 200 = 0",
    "DELETE FROM [Order Details] WHERE (OrderID * 7 + ProductID) % 400 = 7",
    "UPDATE Orders SET ShipName = ShipName || ' (re-routed)', Freight = Freight + 0.5 WHERE OrderID % 100 = 0",
    "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < 10) "
    "INSERT INTO Customers (CustomerID, CompanyName, Country) SELECT 'NEW' || value, 'New company ' || value, 'Nowhere' FROM n",
    "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < 100) "
    "INSERT INTO Orders (OrderID, CustomerID, EmployeeID, OrderDate, Freight, ShipName) "
    "SELECT 900000 + value, 'NEW' || (1 + value % 10), 1 + value % 9, '2026-11-29', value, 'new order' FROM n",
    "INSERT INTO [Order Details] SELECT o.OrderID, p.ProductID, 9.5, 2, 0 FROM Orders o JOIN Products p "
    "WHERE o.OrderID > 900000 AND p.ProductID <= 10",
    "DELETE FROM [Order Details] WHERE OrderID IN (SELECT OrderID FROM Orders WHERE OrderID % 500 = 3)",
    "DELETE FROM Orders WHERE OrderID % 500 = 3",
]
# Changes made on D1 after the switch, for the backward sync.
BACKWARD_CHANGES = [
    "UPDATE [Order Details] SET Quantity = Quantity + 1 WHERE (OrderID * 3 + ProductID) % 300 = 0",
    "INSERT INTO Orders (OrderID, CustomerID, EmployeeID, OrderDate, ShipName) VALUES (950001, 'ALFKI', 1, '2026-12-01', 'on D1')",
    "INSERT INTO [Order Details] VALUES (950001, 1, 18, 3, 0), (950001, 2, 19, 1, 0.5)",
    "DELETE FROM [Order Details] WHERE (OrderID * 3 + ProductID) % 600 = 11",
    "UPDATE Customers SET Phone = '+1 555 0100' WHERE CustomerID < 'C'",
]


def sqldiff_lines(text):
    """sqldiff's lines, less those about D1's own tables (`_cf_*`, never copied)."""
    out, in_cf = [], False
    for line in text.splitlines():
        lower = line.lower()
        if in_cf or lower.startswith("create table _cf_"):
            in_cf = not line.rstrip().endswith(");")
            continue
        if "_cf_" not in lower:
            out.append(line)
    return out


def sync_bench():
    """Forward and backward sync after ~1% of Northwind changes (issue 16's targets)."""
    ids = ["warmup", "sync"]
    d1, url, files = start_d1(ids)
    try:
        sample = os.path.join(work, "sample.sqlite")
        subprocess.run([BIN, "generate", "sample", sample, "--scale", "5"], check=True)
        migrator(url, "warmup", sample)
        nw_rows, nw_bytes = rows_and_bytes(DATASET)
        wall, rss, copy = migrator(url, "sync", DATASET, MIGRATION_VALIDATE="false")
        record("migrator forward, Northwind (the full copy)", wall, rss, nw_rows, nw_bytes, copy["http_requests"])
        wall, rss, same = migrator(url, "sync", DATASET, MIGRATION_MODE="sync", MIGRATION_SYNC_DELETE="true")
        record("migrator sync, identical databases", wall, rss, nw_rows, nw_bytes, same["http_requests"])
        changed = os.path.join(work, "changed.sqlite")
        shutil.copy(DATASET, changed)
        conn = sqlite3.connect(changed)
        for sql in FORWARD_CHANGES:
            conn.execute(sql)
        conn.commit()
        changed_rows = conn.total_changes
        conn.close()
        # Interleaved, so that both meet the same load on this shared machine: a full validation,
        # the forward sync of the changes, then (untimed) a sync back to Northwind as it was.
        validations, syncs = [], []
        for _ in range(REPEAT):
            validations.append(migrator(url, "sync", DATASET, MIGRATION_MODE="validate",
                                        MIGRATION_VALIDATE_ALL_ROWS="true"))
            syncs.append(migrator(url, "sync", changed, MIGRATION_MODE="sync", MIGRATION_SYNC_DELETE="true"))
            migrator(url, "sync", DATASET, MIGRATION_MODE="sync", MIGRATION_SYNC_DELETE="true")
        migrator(url, "sync", changed, MIGRATION_MODE="sync", MIGRATION_SYNC_DELETE="true")
        vwall, vrss, v = sorted(validations, key=lambda r: r[0])[len(validations) // 2]
        record("migrator full validation, Northwind", vwall, vrss, nw_rows, nw_bytes, v["http_requests"])
        wall, rss, fwd = sorted(syncs, key=lambda r: r[0])[len(syncs) // 2]
        record(f"migrator sync forward, {changed_rows} rows changed", wall, rss, nw_rows, nw_bytes, fwd["http_requests"])
        fwd_diff = subprocess.run(["sqldiff", changed, files["sync"]], capture_output=True, text=True).stdout
        fwd_diff = sqldiff_lines(fwd_diff)
        back_changed = sum(d1_sql(url, "sync", BACKWARD_CHANGES))
        back = os.path.join(work, "back.sqlite")
        backs = []
        for _ in range(REPEAT):
            shutil.copy(changed, back)
            backs.append(migrator(url, "sync", back, MIGRATION_DIRECTION="d1-to-sqlite", MIGRATION_MODE="sync",
                                  MIGRATION_SYNC_DELETE="true"))
        bwall, brss, bwd = sorted(backs, key=lambda r: r[0])[len(backs) // 2]
        record(f"migrator sync backward, {back_changed} rows changed on D1", bwall, brss, nw_rows, nw_bytes,
               bwd["http_requests"])
        back_diff = subprocess.run(["sqldiff", back, files["sync"]], capture_output=True, text=True).stdout
        back_diff = sqldiff_lines(back_diff)
    finally:
        d1.terminate()
        d1.wait()
    print_results()
    sent = fwd["bytes_sent"] / copy["bytes_sent"]
    written = fwd["d1_rows_written"] / changed_rows
    print(f"forward sync: {fwd['bytes_sent']:,} bytes sent = {sent:.2%} of the full copy's {copy['bytes_sent']:,} "
          f"(target <= 5%); D1 rows written {fwd['d1_rows_written']:,} = {written:.2f}x the {changed_rows:,} rows changed "
          f"(target <= 2x); wall {results[3]['wall_s']} s = {results[3]['wall_s'] / results[2]['wall_s']:.2f}x the full validation's "
          f"{round(vwall, 2)} s (target <= 1.3x); sqldiff lines after it: {len(fwd_diff)} {fwd_diff[:3]}")
    print(f"bytes sent: full validation {v['bytes_sent']:,}, identical sync {same['bytes_sent']:,}, forward sync "
          f"{fwd['bytes_sent']:,} of which SQL of its writes {sum(t['bytes_sent'] for t in fwd['tables']):,}")
    print(f"identical databases: D1 rows written {same['d1_rows_written']} (target 0)")
    print(f"backward sync: sqldiff lines after it: {len(back_diff)} {back_diff[:3]} (target 0); D1 rows written {bwd['d1_rows_written']}")
    print(f"medians of {REPEAT} (validation and forward sync interleaved). D1 rows read: validation "
          f"{v['d1_rows_read']:,}, forward sync {fwd['d1_rows_read']:,}")


def print_results():
    print(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB")
    print(f"{'run':<56} {'wall s':>8} {'rows/s':>10} {'MB/s':>7} {'requests':>9} {'KB/request':>11} {'peak RSS MB':>12}")
    for r in results:
        fmt = lambda v: "-" if v is None else str(v)
        print(f"{r['run']:<56} {fmt(r['wall_s']):>8} {fmt(r['rows_per_s']):>10} {fmt(r['mb_per_s']):>7} {fmt(r['requests']):>9} {fmt(r.get('kb_per_request')):>11} {fmt(r['peak_rss_mb']):>12}")


if not os.path.exists(DATASET):
    raise SystemExit(f"{DATASET} is absent: the benchmark needs ../shared/datasets beside the checkout")
if SYNC:
    sync_bench()
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0)


def latency_table():
    """Forward, full validation and rollback at each latency, each against a local D1 behind the
    Node front end (`latency_ms` delays every answer; 0 goes through the same front end, so the
    ratios measure the latency alone). One local D1 per latency runs at once, and each repeat
    runs every latency in turn, so that the load of this shared machine, which drifts over
    minutes, weighs on every latency alike. Northwind runs BENCH_REPEAT times, median kept."""
    cases = [("Northwind", DATASET, REPEAT)] if LATENCY_NORTHWIND else []
    if LATENCY_LARGE_MB:
        large = os.path.join(work, "large.sqlite")
        subprocess.run([BIN, "generate", "large", large, "--scale", str(LATENCY_LARGE_MB)], check=True)
        cases.append((f"generated {os.path.getsize(large) // 1_000_000} MB", large, LATENCY_LARGE_REPEAT))
    sample = os.path.join(work, "sample.sqlite")
    subprocess.run([BIN, "generate", "sample", sample, "--scale", "5"], check=True)
    servers = {}
    try:
        for latency in LATENCIES:
            ids = ["warmup"] + [f"db{i}" for i in range(len(cases))]
            servers[latency] = start_d1(ids, f"latency_ms={latency}", persist=f"d1-{latency}")
            migrator(servers[latency][1], "warmup", sample)
        runs = {}
        for i, (name, path, repeat) in enumerate(cases):
            back = os.path.join(work, "latency-rollback.sqlite")
            for n in range(repeat):
                # Every other repeat runs the latencies in the reverse order: a run slowed by the
                # one before it (its writes still being flushed to disk) is not always the same.
                for latency in LATENCIES if n % 2 == 0 else LATENCIES[::-1]:
                    url = servers[latency][1]
                    db = f"db{i}"
                    # A fresh database for each repeat: drop what the last one wrote. Without a
                    # timed forward run, a copy the other phases read is made once, untimed.
                    if "forward" in LATENCY_PHASES or n == 0:
                        wipe(url, db)
                        shutil.rmtree(os.path.join(work, f"state-{db}"), ignore_errors=True)
                    if "forward" not in LATENCY_PHASES and n == 0:
                        migrator(url, db, path, MIGRATION_VALIDATE="false")
                    for phase in LATENCY_PHASES:
                        if phase == "forward":
                            run = migrator(url, db, path, MIGRATION_VALIDATE="false")
                        elif phase == "full validation":
                            run = migrator(url, db, path, MIGRATION_MODE="validate", MIGRATION_VALIDATE_ALL_ROWS="true")
                        else:
                            if os.path.exists(back):
                                os.remove(back)
                            run = migrator(url, db, back, MIGRATION_DIRECTION="d1-to-sqlite", MIGRATION_VALIDATE="false")
                        runs.setdefault((name, phase, latency), []).append(run)
                        wall, rss, r = run
                        snap = (r.get("source_snapshot") or {}).get("duration_ms")
                        print(f"  measured: {name} {phase} at {latency} ms: {wall:.2f} s, {r['http_requests']} "
                              f"requests, {rss:.0f} MB, window peak {r['writes_window_peak']}"
                              + (f", snapshot {snap / 1000:.1f} s" if snap is not None else "")
                              + f" (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
                    if os.path.exists(back):
                        os.remove(back)
    finally:
        for d1, _, _ in servers.values():
            d1.terminate()
            d1.wait()
    table = {}
    for key, list_ in runs.items():
        list_ = sorted(list_, key=lambda run: run[0])
        wall, _, report = list_[len(list_) // 2]
        table[key] = (wall, max(run[1] for run in list_), report)
    print(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    head = "".join(f" {str(l) + ' ms':>9}" for l in LATENCIES)
    print(f"{'run':<44}{head} {'ratio':>7} {'requests':>12} {'peak RSS MB':>12}")
    for name, _, _ in cases:
        for phase in LATENCY_PHASES:
            walls = [table[(name, phase, l)][0] for l in LATENCIES]
            ratio = walls[-1] / walls[0]
            requests = "/".join(str(table[(name, phase, l)][2]["http_requests"]) for l in LATENCIES)
            rss = max(table[(name, phase, l)][1] for l in LATENCIES)
            print(f"{name + ' ' + phase:<44}" + "".join(f" {w:>9.2f}" for w in walls) +
                  f" {ratio:>6.2f}x {requests:>12} {rss:>12.0f}")
    print(f"ratio: wall time at {LATENCIES[-1]} ms over {LATENCIES[0]} ms (medians of {REPEAT} Northwind runs and "
          f"{LATENCY_LARGE_REPEAT} of the generated database, "
          f"latencies interleaved). Targets (issue 19): Northwind each within 1.5x, the large database within 1.3x; "
          f"requests no more than before (Northwind 36 / 67 / 50).")


def wipe(url, db):
    """Empties a database of the local D1 between repeated forward runs."""
    import urllib.request
    def post(statements):
        body = json.dumps({"batch": [{"sql": s} for s in statements]}).encode()
        req = urllib.request.Request(f"{url}/accounts/bench/d1/database/{db}/raw", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            return json.load(resp)
    rows = post(["SELECT type, name FROM sqlite_schema WHERE name NOT LIKE '\\_cf\\_%' ESCAPE '\\' "
                 "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND type IN ('table', 'view')"])
    names = rows["result"][0]["results"]["rows"]
    drops = [f'DROP {t.upper()} IF EXISTS "{n}"' for t, n in names if t == "view"]
    drops += [f'DROP TABLE IF EXISTS "{n}"' for t, n in names if t == "table"]
    if drops:
        post(["PRAGMA defer_foreign_keys = on"] + drops)


if LATENCY:
    try:
        latency_table()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0)
ids = (["warmup", "engine", "large", "large-import"] + [f"nw{i}" for i in range(REPEAT)]
       + [f"nwi{i}" for i in range(REPEAT)] + (["peer"] if PEERS else []))
d1, url, files = start_d1(ids)
try:
    # A first, untimed run, so that no timed run pays for the engine's start.
    sample = os.path.join(work, "sample.sqlite")
    subprocess.run([BIN, "generate", "sample", sample, "--scale", "5"], check=True)
    migrator(url, "warmup", sample)
    nw_rows, nw_bytes = rows_and_bytes(DATASET)
    def median_of(runs):
        """The run of median wall time, with the largest peak memory of all."""
        runs = sorted(runs, key=lambda run: run[0])
        wall, _, report = runs[len(runs) // 2]
        return wall, max(run[1] for run in runs), report

    forward = [migrator(url, f"nw{i}", DATASET, MIGRATION_VALIDATE="false") for i in range(REPEAT)]
    wall, rss, r = median_of(forward)
    record("migrator forward, Northwind", wall, rss, nw_rows, nw_bytes, r["http_requests"], data_request_kb(r))
    od = next(t for t in r["tables"] if t["table"] == "Order Details")
    imported = [migrator(url, f"nwi{i}", DATASET, MIGRATION_VALIDATE="false", MIGRATION_METHOD="import")
                for i in range(REPEAT)]
    wall, rss, ri = median_of(imported)
    record("migrator forward by import, Northwind", wall, rss, nw_rows, nw_bytes, ri["http_requests"])
    wall, rss, r = median_of([migrator(url, "nw0", DATASET, MIGRATION_MODE="validate", MIGRATION_VALIDATE_ALL_ROWS="true")
                              for _ in range(REPEAT)])
    record("migrator full validation, Northwind", wall, rss, nw_rows, nw_bytes, r["http_requests"])
    back = os.path.join(work, "rollback.sqlite")

    def rollback():
        if os.path.exists(back):
            os.remove(back)
        return migrator(url, "nw0", back, MIGRATION_DIRECTION="d1-to-sqlite", MIGRATION_VALIDATE="false")
    wall, rss, r = median_of([rollback() for _ in range(REPEAT)])
    record("migrator rollback, Northwind", wall, rss, nw_rows, nw_bytes, r["http_requests"])

    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/engine_limit.py"), url, "engine", TOKEN, DATASET,
                          "Order Details", "2500", "8", "2", " ON CONFLICT DO NOTHING"], capture_output=True, text=True, check=True)
    engine = json.loads(out.stdout)
    results.append({"run": "engine limit, Order Details (pre-built statements)", "wall_s": engine["seconds"],
                    "rows_per_s": engine["rows_per_s"], "mb_per_s": round(engine["bytes"] / engine["seconds"] / 1e6, 1),
                    "requests": engine["requests"], "kb_per_request": round(engine["bytes"] / engine["requests"] / 1000),
                    "peak_rss_mb": None})
    results.append({"run": "migrator, Order Details alone (from its report)", "wall_s": round(od["duration_ms"] / 1000, 2),
                    "rows_per_s": round(od["rows_written"] / (od["duration_ms"] / 1000)), "mb_per_s": None,
                    "requests": od["requests"], "kb_per_request": round(od["bytes_sent"] / od["requests"] / 1000),
                    "peak_rss_mb": None})

    large = os.path.join(work, "large.sqlite")
    subprocess.run([BIN, "generate", "large", large, "--scale", str(LARGE_MB)], check=True)
    l_rows, l_bytes = rows_and_bytes(large)
    wall, rss, r = migrator(url, "large", large, MIGRATION_VALIDATE="false")
    record(f"migrator forward, generated {l_bytes // 1_000_000} MB", wall, rss, l_rows, l_bytes, r["http_requests"],
           data_request_kb(r))
    wall, rss, ri = migrator(url, "large-import", large, MIGRATION_VALIDATE="false", MIGRATION_METHOD="import")
    record(f"migrator forward by import, generated {l_bytes // 1_000_000} MB", wall, rss, l_rows, l_bytes,
           ri["http_requests"])
    wall, rss, r = migrator(url, "large", large, MIGRATION_MODE="validate", MIGRATION_VALIDATE_ALL_ROWS="true")
    record(f"migrator full validation, generated {l_bytes // 1_000_000} MB", wall, rss, l_rows, l_bytes,
           r["http_requests"])
    large_back = os.path.join(work, "large-rollback.sqlite")
    wall, rss, r = migrator(url, "large", large_back, MIGRATION_DIRECTION="d1-to-sqlite", MIGRATION_VALIDATE="false")
    record(f"migrator rollback, generated {l_bytes // 1_000_000} MB", wall, rss, l_rows, l_bytes, r["http_requests"])
    os.remove(large_back)

    if PEERS:
        peers = os.path.join(ROOT, "scripts/bench-peers")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=peers, check=True)
        node = os.path.join(ROOT, "scripts/local-d1-server/node_modules/.bin/node")
        wrangler = os.path.join(peers, "node_modules/wrangler/bin/wrangler.js")
        project = os.path.join(work, "wrangler-project")
        os.makedirs(project)
        with open(os.path.join(project, "wrangler.toml"), "w") as f:
            f.write('name = "bench"\ncompatibility_date = "2026-07-01"\n[[d1_databases]]\nbinding = "DB"\n'
                    'database_name = "bench"\ndatabase_id = "bench"\n')
        # The dump as the official guide makes it (`.dump`, BEGIN/COMMIT stripped), reordered so
        # that it succeeds: schema first, then each table's rows in catalog order, with foreign
        # keys checked at the end of wrangler's single transaction.
        conn = sqlite3.connect(PEER_DATASET)
        schema = conn.execute("SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid").fetchall()
        tables = [n for t, n, _ in schema if t == "table" and not n.startswith("sqlite_")]
        dump = os.path.join(project, "dump.sql")
        with open(dump, "w") as f:
            f.write("PRAGMA defer_foreign_keys = true;\n")
            for t, n, sql in schema:
                if t == "table" and not n.startswith("sqlite_"):
                    f.write(sql + ";\n")
            for n in tables:
                q = '"' + n.replace('"', '""') + '"'
                for row in conn.execute(f"SELECT * FROM {q}"):
                    f.write(f"INSERT INTO {q} VALUES(" + ",".join(literal(v) for v in row) + ");\n")
            for t, n, sql in schema:
                if t in ("index", "view", "trigger"):
                    f.write(sql + ";\n")
        env = dict(os.environ, PATH=os.path.dirname(node) + os.pathsep + os.environ["PATH"], WRANGLER_SEND_METRICS="false", CI="true")
        wall, rss = timed([node, wrangler, "d1", "execute", "DB", "--local", "--file", dump, "--yes"], env=env, cwd=project)
        p_rows, p_bytes = rows_and_bytes(PEER_DATASET)
        record(f"wrangler d1 execute --local --file ({os.path.basename(PEER_DATASET)} dump, reordered)", wall, rss, p_rows, p_bytes, None)
finally:
    d1.terminate()
    d1.wait()

print_results()
fwd = results[0]["wall_s"]
print(f"migrator Order Details / engine limit: {results[4]['wall_s'] / results[3]['wall_s']:.2f}x")
print(f"large / Northwind throughput (MB/s): {results[5]['mb_per_s'] / results[0]['mb_per_s']:.2f}")
if PEERS:
    print(f"wrangler path / migrator forward: {results[-1]['wall_s'] / fwd:.0f}x faster")
print(f"Northwind runs: median of {REPEAT}. Targets (issue 8): forward, full validation and rollback of Northwind "
      f"<= 3 s each: {', '.join(str(r['wall_s']) + ' s' for r in results[:3])}; peak RSS <= 150 MB: "
      f"{max(r['peak_rss_mb'] for r in results if r['run'].startswith('migrator') and r['peak_rss_mb'])} MB at most "
      f"(migrator runs).")
shutil.rmtree(work, ignore_errors=True)
