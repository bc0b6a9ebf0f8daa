#!/usr/bin/env python3
"""ClickHouse's own CPU per row for the sink's INSERT, RowBinary against Native, same rows.

Starts Debian's clickhouse-server 18.16 (scripts/stack/clickhouse18.sh, a stack directory of its
own, its own ports) or, with `--engine chdb`, the ClickHouse 26.9 engine behind
scripts/stack/chdb_http.py (its process: the engine and the Python front), creates the `flows` table of sql/clickhouse18/flows_minimal.sql (the sink's
exact RowBinary bytes), fills it with BATCH generated rows, and has the server itself write that
batch in each format (`SELECT <the sink's columns> FORMAT RowBinary | Native`): the same rows,
encoded by ClickHouse, not by us. Then, per format and repetition (formats alternating), INSERTs
the batch INSERTS times over HTTP into an empty table and reads the server process's CPU time
(utime + stime of /proc/<pid>/stat) before the first INSERT, once the last one is acknowledged,
and once the server is quiet again (its merges of those parts: the same parts whatever the
format). Prints CPU µs per row per run and the median per format, and the HTTP wall time per
INSERT.

    python3 bench/insert_formats.py [--engine server18|chdb] [--batch 50000] [--inserts 20] [--repeats 3]

Results: bench/results/insert-formats.md. Only the Python standard library is needed.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")
# The interpreter with chdb-core (scripts/setup.sh).
CHDB_PYTHON = "/opt/flowlens-venv/bin/python"


def query(port, sql, body=None, timeout=600):
    url = f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode({"query": sql})
    # POST: a GET is read-only for ClickHouse.
    req = urllib.request.Request(url, data=b"" if body is None else body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{sql[:120]}: {e.read().decode(errors='replace').strip()}") from None


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / TICKS


def value(name, ctype):
    """A generated value of column `name` (SQL over `number`), cast to its type."""
    if ctype.startswith("FixedString"):
        expr = "toFixedString(unhex(concat(hex(rand64()), hex(rand64(1)))), 16)"
    elif ctype.startswith("Enum8"):
        expr = "if(rand() % 2 = 0, 'ingress', 'egress')"
    elif ctype == "String":
        # Names and labels from a few hundred values; half empty (no pod at that end, no
        # process, no tunnel), as in the sink's rows.
        expr = f"if(rand() % 2 = 0, '', concat('{name[:12]}-', toString(rand() % 300)))"
    elif name.startswith("time_") or name == "kafka_timestamp":
        expr = "1764000000000000000 + number * 1000000"
    elif ctype in ("UInt8", "UInt16"):
        expr = "rand() % 200"
    else:
        expr = "rand64() % 1000000"
    return f"CAST({expr} AS {ctype})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=50_000, help="rows per INSERT (the sink's default batch)")
    ap.add_argument("--inserts", type=int, default=20, help="INSERTs per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per format")
    ap.add_argument("--engine", choices=["server18", "chdb"], default="server18")
    ap.add_argument("--http-port", type=int, default=18931)
    ap.add_argument("--tcp-port", type=int, default=18932)
    args = ap.parse_args()

    stack = tempfile.mkdtemp(prefix="insert-formats-")
    try:
        if args.engine == "chdb":
            front = subprocess.Popen(
                [CHDB_PYTHON, os.path.join(REPO, "scripts/stack/chdb_http.py"),
                 "--data-dir", os.path.join(stack, "chdb"), "--port", str(args.http_port)],
                stderr=subprocess.DEVNULL)
            try:
                wait_ready(args.http_port)
                run(args, front.pid)
            finally:
                front.terminate()
                front.wait()
        else:
            env = dict(os.environ, FLOWLENS_STACK_DIR=stack,
                       FLOWLENS_CH18_HTTP_PORT=str(args.http_port),
                       FLOWLENS_CH18_TCP_PORT=str(args.tcp_port))
            script = os.path.join(REPO, "scripts/stack/clickhouse18.sh")
            subprocess.run(["bash", script, "start"], env=env, check=True)
            try:
                with open(os.path.join(stack, "clickhouse18", "clickhouse-server.pid")) as f:
                    run(args, int(f.read().strip()))
            finally:
                subprocess.run(["bash", script, "stop"], env=env)
    finally:
        shutil.rmtree(stack, ignore_errors=True)


def wait_ready(port, limit_s=60):
    deadline = time.monotonic() + limit_s
    while True:
        try:
            query(port, "SELECT 1")
            return
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run(args, pid):
    port = args.http_port
    version = query(port, "SELECT version()").decode().strip()
    ddl = open(os.path.join(REPO, "sql/clickhouse18/flows_minimal.sql")).read()
    ddl = "\n".join(line for line in ddl.splitlines() if not line.startswith("--")).strip().rstrip(";")
    query(port, "CREATE DATABASE IF NOT EXISTS formats")
    for table in ("source", "target"):
        query(port, ddl.replace("CREATE TABLE IF NOT EXISTS flows",
                                f"CREATE TABLE IF NOT EXISTS formats.{table}", 1))
    columns = [line.replace("\\'", "'").split("\t") for line in query(
        port, "SELECT name, type, default_kind FROM system.columns "
              "WHERE database = 'formats' AND table = 'source'").decode().splitlines()]
    # The sink's column list: every column without a DEFAULT (time_inserted is the server's).
    insert_columns = [(n, t) for n, t, kind in columns if kind == ""]
    names = ", ".join(n for n, _ in insert_columns)
    select = ", ".join(f"{value(n, t)} AS {n}" for n, t in insert_columns)
    query(port, f"INSERT INTO formats.source ({names}) SELECT {select} FROM system.numbers LIMIT {args.batch}")
    batches = {fmt: query(port, f"SELECT {names} FROM formats.source FORMAT {fmt}")
               for fmt in ("RowBinary", "Native")}
    for fmt, data in batches.items():
        print(f"{fmt}: {len(data)} bytes for {args.batch} rows ({len(data) / args.batch:.1f} bytes/row)")

    results = {fmt: [] for fmt in batches}
    inserts = {fmt: [] for fmt in batches}
    walls = {fmt: [] for fmt in batches}
    rows = args.batch * args.inserts
    for rep in range(args.repeats):
        for fmt, data in batches.items():
            query(port, "TRUNCATE TABLE formats.target")
            settle(pid)
            before = cpu_s(pid)
            started = time.monotonic()
            for _ in range(args.inserts):
                query(port, f"INSERT INTO formats.target ({names}) FORMAT {fmt}", body=data)
            wall = (time.monotonic() - started) / args.inserts
            acknowledged = cpu_s(pid) - before
            settle(pid)
            used = cpu_s(pid) - before
            got = int(query(port, "SELECT count() FROM formats.target").decode())
            assert got == rows, f"{fmt}: {got} rows stored, {rows} sent"
            results[fmt].append(used * 1e6 / rows)
            inserts[fmt].append(acknowledged * 1e6 / rows)
            walls[fmt].append(wall * 1e3)
            print(f"run {rep + 1} {fmt}: server CPU {acknowledged * 1e6 / rows:.2f} µs/row until "
                  f"acknowledged, {used * 1e6 / rows:.2f} µs/row with the merges after, "
                  f"{wall * 1e3:.0f} ms per INSERT of {args.batch} rows")
    print(f"\n{args.engine} (ClickHouse {version}), {args.inserts} INSERTs of {args.batch} rows per run, "
          f"{args.repeats} runs per format (median):")
    for fmt in batches:
        print(f"  {fmt:9} server CPU per row {statistics.median(inserts[fmt]):.2f} µs until "
              f"acknowledged, {statistics.median(results[fmt]):.2f} µs with the merges, "
              f"{statistics.median(walls[fmt]):.0f} ms per INSERT")


def settle(pid, quiet_s=0.5, limit_s=30):
    """Waits until the server used no CPU for `quiet_s` (merges done), at most `limit_s`."""
    deadline = time.monotonic() + limit_s
    last = cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_s(pid)
        if now - last < 0.02:
            return
        last = now


if __name__ == "__main__":
    sys.exit(main())
