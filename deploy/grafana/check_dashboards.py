#!/usr/bin/env python3
"""Offline checks of the Grafana dashboards in deploy/grafana/dashboards (used by
scripts/check-deploy.sh; standard library only).

  check_dashboards.py [--clickhouse http://127.0.0.1:PORT]
  check_dashboards.py --emit-sql


* every dashboard is valid JSON with a unique uid, panels have unique ids and a gridPos;
* every panel/target data source uid is one provisioned in deploy/grafana/provisioning;
* every ClickHouse query runs against --clickhouse (a server or the chdb front with
  sql/migrations applied) after the plugin's macros are replaced by concrete expressions:
  a column that the `flows` table does not have fails here;
* every `flowlens_*` metric in a PromQL expression is one the services register
  (`metrics::counter!/gauge!/histogram!("...")` in collector/, enricher/, sink/, runtime/).

Prints `  ok    ...` / `  FAIL  ...` lines; exits 1 if anything failed.

--emit-sql checks nothing: it prints every ClickHouse query of the dashboards with the macros
replaced, as a JSON list of {"dashboard", "panel", "refId", "sql"}, for tests that run them
on known data and check their values (testkit crate `dashboard_queries`, used by
sink/tests/queries.rs and collector/tests/end_to_end_sampling.rs).
"""

import argparse
import glob
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
failures = 0


def say(good, msg):
    global failures
    failures += not good
    print(("  ok    " if good else "  FAIL  ") + msg)


def provisioned_uids():
    uids = set()
    for path in glob.glob(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/*.yml")):
        for line in open(path):
            m = re.match(r"\s*uid:\s*(\S+)", line)
            if m:
                uids.add(m.group(1))
    return uids


def registered_metrics():
    names = set()
    for sub in ("collector/src", "enricher/src", "sink/src", "runtime/src"):
        for path in glob.glob(os.path.join(ROOT, sub, "**/*.rs"), recursive=True):
            text = open(path).read()
            names.update(re.findall(r'(?:counter|gauge|histogram)!\(\s*"(flowlens_[a-z0-9_]+)"', text))
    return names


# The grafana-clickhouse-datasource macros used by the dashboards, with concrete stand-ins
# (time range: the last hour; interval: 60 s).
MACROS = [
    (r"\$__timeFilter\(([^)]+)\)", r"(\1 >= toDateTime(now() - 3600) AND \1 <= toDateTime(now()))"),
    (r"\$__timeInterval\(([^)]+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)"),
    (r"\$__interval_s\b", "60"),
]


def concrete(sql):
    for pattern, repl in MACROS:
        sql = re.sub(pattern, repl, sql)
    return sql


def run_clickhouse(url, sql):
    req = urllib.request.Request(url + "/", data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return True, resp.read().decode()
    except urllib.error.HTTPError as e:
        return False, e.read().decode(errors="replace")[:400]
    except OSError as e:
        return False, str(e)


def dashboard_files():
    return sorted(glob.glob(os.path.join(ROOT, "deploy/grafana/dashboards/*.json")))


def emit_sql():
    out = []
    for path in dashboard_files():
        for p in json.load(open(path)).get("panels", []):
            for t in p.get("targets", []):
                if "rawSql" in t:
                    out.append({"dashboard": os.path.relpath(path, ROOT), "panel": p.get("title"),
                                "refId": t.get("refId"), "sql": concrete(t["rawSql"])})
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clickhouse", help="ClickHouse HTTP URL with sql/migrations applied")
    ap.add_argument("--emit-sql", action="store_true",
                    help="print the ClickHouse queries with macros replaced (JSON), check nothing")
    args = ap.parse_args()
    if args.emit_sql:
        return emit_sql()

    uids = provisioned_uids()
    say(bool(uids), f"provisioned data sources: {sorted(uids)}")
    metrics = registered_metrics()
    say(bool(metrics), f"{len(metrics)} metric names registered by the services")
    seen_uids = set()
    files = dashboard_files()
    say(bool(files), f"{len(files)} dashboards")
    for path in files:
        name = os.path.relpath(path, ROOT)
        try:
            dash = json.load(open(path))
        except ValueError as e:
            say(False, f"{name}: not JSON: {e}")
            continue
        uid = dash.get("uid")
        say(bool(uid) and uid not in seen_uids, f"{name}: uid {uid!r} set and unique")
        seen_uids.add(uid)
        ids = [p.get("id") for p in dash.get("panels", [])]
        say(len(ids) == len(set(ids)) and all(ids), f"{name}: {len(ids)} panels with unique ids")
        for p in dash.get("panels", []):
            title = p.get("title", "?")
            where = f"{name} / {title}"
            if "gridPos" not in p:
                say(False, f"{where}: no gridPos")
            for t in p.get("targets", []):
                ds = (t.get("datasource") or p.get("datasource") or {}).get("uid")
                if ds not in uids:
                    say(False, f"{where}: data source uid {ds!r} is not provisioned")
                    continue
                if "rawSql" in t:
                    if not args.clickhouse:
                        print(f"  skip  {where}: no --clickhouse to run the query against")
                        continue
                    sql = concrete(t["rawSql"])
                    left = re.findall(r"\$\w+", sql)
                    if left:
                        say(False, f"{where} [{t['refId']}]: macro(s) not replaced by the check: {left}")
                        continue
                    good, out = run_clickhouse(args.clickhouse, sql + "\nFORMAT TSV")
                    rows = len(out.splitlines()) if good else 0
                    say(good, f"{where} [{t['refId']}]: runs on ClickHouse ({rows} rows)"
                        + ("" if good else f": {out.strip()}"))
                elif "expr" in t:
                    used = set(re.findall(r"\bflowlens_[a-z0-9_]+", t["expr"]))
                    unknown = sorted(
                        m for m in used
                        if m not in metrics and re.sub(r"_(bucket|sum|count)$", "", m) not in metrics
                    )
                    say(not unknown, f"{where} [{t['refId']}]: metrics {sorted(used)} registered"
                        + (f"; unknown: {unknown}" if unknown else ""))
                else:
                    say(False, f"{where}: target without rawSql or expr")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
