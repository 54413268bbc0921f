#!/usr/bin/env python3
"""Many databases in one run (MIGRATION_MANIFEST), against one database holding the same rows.

Generates BENCH_TENANTS tenant files (default 200) of a shop schema (customers, products,
orders, order lines), sized log-uniformly between tens of KB and BENCH_TENANT_MAX_KB (default
2048), and one file holding every tenant's rows. Then:
  1. against a local D1 as Cloudflare's edge would serve it (workerd alone, no request log in
     between): the same rows as one database, then the fleet (a manifest of the tenants by name,
     databases created by the run, MIGRATION_PARALLEL_DATABASES at once, default 16 here), then
     the fleet again (a rerun writes nothing); wall time, rows/s, requests, peak RSS, the ratio;
     and the engine's own floor: creating as many databases and sending each one trivial query;
  2. against a second local D1 with a request log, the fleet again into new databases with the
     rate limit binding (BENCH_RATE_LIMIT requests per BENCH_RATE_WINDOW seconds, default 150
     per 10: MIGRATION_RATE_WINDOW scales Cloudflare's 5 minutes down so the bench is short), and
     the most requests any window of the log holds, against that limit."""
import csv, json, math, os, random, shutil, sqlite3, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/d1-migrator")
TOKEN = "bench-token"
TENANTS = int(os.environ.get("BENCH_TENANTS", "200"))
MAX_KB = int(os.environ.get("BENCH_TENANT_MAX_KB", "2048"))
RATE_LIMIT = int(os.environ.get("BENCH_RATE_LIMIT", "150"))
RATE_WINDOW = int(os.environ.get("BENCH_RATE_WINDOW", "10"))
PARALLEL = os.environ.get("MIGRATION_PARALLEL_DATABASES", "16")
work = tempfile.mkdtemp(prefix="d1-bench-fleet-")

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, tenant INTEGER NOT NULL, name TEXT NOT NULL, email TEXT);
CREATE TABLE products (id INTEGER PRIMARY KEY, tenant INTEGER NOT NULL, title TEXT NOT NULL, price REAL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant INTEGER NOT NULL,
  customer_id INTEGER NOT NULL REFERENCES customers(id), placed_at TEXT, note TEXT);
CREATE TABLE order_lines (order_id INTEGER NOT NULL REFERENCES orders(id),
  product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER, PRIMARY KEY (order_id, product_id))
  WITHOUT ROWID;
CREATE INDEX orders_customer ON orders(customer_id);
"""


def fill(conn, tenant, kb, ids, rng):
    """About `kb` KB of one tenant's rows; `ids` keeps keys unique across tenants."""
    customers = max(2, kb // 2)
    products = max(2, kb // 8)
    orders = max(2, kb)
    c0, p0, o0 = ids["c"], ids["p"], ids["o"]
    conn.executemany("INSERT INTO customers VALUES (?,?,?,?)",
                     [(c0 + i, tenant, f"customer {i} of {tenant}", f"c{i}@t{tenant}.example") for i in range(customers)])
    conn.executemany("INSERT INTO products VALUES (?,?,?,?)",
                     [(p0 + i, tenant, f"product {i}", round(rng.uniform(1, 500), 2)) for i in range(products)])
    conn.executemany("INSERT INTO orders VALUES (?,?,?,?,?)",
                     [(o0 + i, tenant, c0 + rng.randrange(customers), f"2026-{1 + i % 12:02}-01T10:00:00Z",
                       "x" * rng.randrange(0, 400)) for i in range(orders)])
    lines = {(o0 + rng.randrange(orders), p0 + rng.randrange(products)) for _ in range(orders * 2)}
    conn.executemany("INSERT INTO order_lines VALUES (?,?,?)", [(o, p, rng.randrange(1, 9)) for o, p in lines])
    ids["c"] += customers
    ids["p"] += products
    ids["o"] += orders
    return customers + products + orders + len(lines)


def start_d1(name, log=None):
    env = dict(os.environ, LOCAL_D1_PORT="0", LOCAL_D1_PERSIST=os.path.join(work, name), LOCAL_D1_DATABASES="single",
               LOCAL_D1_TOKEN=TOKEN, LOCAL_D1_SPARE=str(2 * TENANTS + 8))
    env.pop("LOCAL_D1_FAULTS", None)
    env.pop("LOCAL_D1_LOG", None)
    if log:
        env["LOCAL_D1_LOG"] = log
    proc = subprocess.Popen([os.path.join(ROOT, "scripts/local-d1")], env=env, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " ready at " in line:
            return proc, line.split(" ready at ")[1].split()[0]
    raise SystemExit("the local D1 did not start")


def engine_cpu(proc):
    """CPU seconds the local D1 (node and workerd, its child) has used so far: workerd runs every
    database's SQL on one thread, so this bounds how fast any client can go."""
    pids, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(k) for k in f.read().split()]
        except OSError:
            pass
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def floor(url):
    """Creates TENANTS databases and sends each one trivial query, PARALLEL at once: what the
    engine itself costs per database, whatever the client."""
    from concurrent.futures import ThreadPoolExecutor
    import urllib.request

    def call(path, body):
        req = urllib.request.Request(f"{url}/accounts/bench/d1/database{path}", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
        return json.load(urllib.request.urlopen(req))

    def one(i):
        uuid = call("", {"name": f"floor-{i}"})["result"]["uuid"]
        call(f"/{uuid}/raw", {"sql": "SELECT 1"})

    start = time.time()
    with ThreadPoolExecutor(int(PARALLEL)) as pool:
        list(pool.map(one, range(TENANTS)))
    return time.time() - start


def timed(env, d1=None):
    """Wall seconds and peak RSS of one run; with `d1` (the local D1's process) also the CPU
    seconds of the migrator and of the local D1 during it."""
    start = time.time()
    engine = engine_cpu(d1) if d1 else 0
    proc = subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the migrator failed:\n{err[-3000:]}")
    used = (usage.ru_utime + usage.ru_stime, engine_cpu(d1) - engine) if d1 else None
    return wall, usage.ru_maxrss / 1024, used


def base_env(url, **extra):
    env = dict(os.environ, CLOUDFLARE_ACCOUNT_ID="bench", CLOUDFLARE_API_TOKEN=TOKEN, MIGRATION_D1_API_URL=url,
               MIGRATION_QUIET="true", MIGRATION_STATE_DIR=os.path.join(work, "state"), MIGRATION_RATE_LIMIT="0",
               MIGRATION_PARALLEL_DATABASES=PARALLEL)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def main():
    rng = random.Random(7)
    single = os.path.join(work, "single.sqlite")
    one = sqlite3.connect(single)
    one.executescript(SCHEMA)
    ids = {"c": 1, "p": 1, "o": 1}
    manifest = os.path.join(work, "tenants.csv")
    total_rows = 0
    with open(manifest, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sqlite_path", "database"])
        for t in range(TENANTS):
            kb = int(math.exp(rng.uniform(math.log(20), math.log(MAX_KB))))
            path = os.path.join(work, f"tenant-{t}.sqlite")
            conn = sqlite3.connect(path)
            conn.executescript(SCHEMA)
            before = dict(ids)
            total_rows += fill(conn, t, kb, ids, random.Random(t))
            conn.commit()
            conn.close()
            ids_after = dict(ids)
            ids.update(before)
            fill(one, t, kb, ids, random.Random(t))
            assert ids == ids_after
            out.writerow([os.path.basename(path), f"tenant-{t}"])
    one.commit()
    one.close()
    total_mb = sum(os.path.getsize(os.path.join(work, f"tenant-{t}.sqlite")) for t in range(TENANTS)) / 1e6
    d1, url = start_d1("d1")
    results = []
    try:
        report = os.path.join(work, "single.json")
        env = base_env(url, MIGRATION_SQLITE_PATH=single, MIGRATION_D1_DATABASE_ID="single", MIGRATION_REPORT=report)
        wall, rss, used = timed(env, d1)
        r = json.load(open(report))
        results.append(("one database, same rows", wall, rss, r["http_requests"], used))
        report = os.path.join(work, "fleet.json")
        env = base_env(url, MIGRATION_MANIFEST=manifest, MIGRATION_CREATE_DATABASES="true", MIGRATION_REPORT=report)
        wall, rss, used = timed(env, d1)
        r = json.load(open(report))
        assert r["totals"]["ok"] == TENANTS, r["totals"]
        results.append((f"fleet, {TENANTS} databases", wall, rss, r["totals"]["http_requests"], used))
        per_line = {}
        for d in r["databases"]:
            for p in d["report"]["phases"]:
                per_line[p["phase"]] = per_line.get(p["phase"], 0) + p["requests"]
        report = os.path.join(work, "fleet-again.json")
        again, _, _ = timed(base_env(url, MIGRATION_MANIFEST=manifest, MIGRATION_REPORT=report))
        r2 = json.load(open(report))
        before = engine_cpu(d1)
        engine = floor(url)
        engine_floor_cpu = engine_cpu(d1) - before
    finally:
        d1.terminate()
        d1.wait()
    # The rate limit binding, measured from a request log, into databases of a second D1.
    log = os.path.join(work, "requests.jsonl")
    d1, url = start_d1("d1-logged", log)
    try:
        limited, _, _ = timed(base_env(url, MIGRATION_MANIFEST=manifest, MIGRATION_CREATE_DATABASES="true",
                                    MIGRATION_STATE_DIR=os.path.join(work, "state-limited"),
                                    MIGRATION_RATE_LIMIT=RATE_LIMIT, MIGRATION_RATE_WINDOW=RATE_WINDOW))
    finally:
        d1.terminate()
        d1.wait()
    with open(log) as f:
        times = sorted(json.loads(line)["t"] for line in f)
    window_ms = RATE_WINDOW * 1000
    peak, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window_ms:
            j += 1
        peak = max(peak, i - j + 1)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {TENANTS} tenants, "
          f"{total_rows:,} rows, {total_mb:.1f} MB in all; {PARALLEL} databases at once")
    print(f"{'run':<32} {'wall s':>8} {'rows/s':>10} {'requests':>9} {'peak RSS MB':>12} {'CPU s: migrator':>16} {'local D1':>9}")
    for name, wall, rss, requests, (mine, engine_s) in results:
        print(f"{name:<32} {wall:>8.2f} {round(total_rows / wall):>10} {requests:>9} {round(rss):>12} {mine:>16.2f} {engine_s:>9.2f}")
    print(f"fleet / one database: {results[1][1] / results[0][1]:.2f}x (target <= 1.5x); peak RSS {round(results[1][2])} MB "
          f"(target < 200 MB)")
    print(f"requests per manifest line: {', '.join(f'{k} {v / TENANTS:.2f}' for k, v in per_line.items())} "
          f"(and creating its database: 1)")
    print(f"the engine alone: creating {TENANTS} databases and one trivial query to each: {engine:.2f} s, "
          f"local D1 CPU {engine_floor_cpu:.2f} s "
          f"(one database + that = {(results[0][1] + engine) / results[0][1]:.2f}x one database)")
    print(f"rerun of the finished fleet: {again:.2f} s, {r2['totals']['http_requests']} requests, "
          f"D1 rows written {r2['totals']['d1_rows_written']}")
    print(f"rate limit {RATE_LIMIT} per {RATE_WINDOW} s (MIGRATION_RATE_WINDOW): the fleet took {limited:.1f} s for "
          f"{len(times)} requests; most in any {RATE_WINDOW} s of the request log: {peak} "
          f"({'kept' if peak <= RATE_LIMIT else 'EXCEEDED'})")
    shutil.rmtree(work, ignore_errors=True)


main()
