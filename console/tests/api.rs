//! The API against the ClickHouse 26.9 engine (chdb front) with the schema of
//! `flowlens-sink migrate` and a few known rows: every answer is checked against SQL over the raw
//! `flows` table written here, not against the console's own queries. The same edges come from
//! the raw table, the per-minute and the per-hour rollups.

mod common;

use std::collections::BTreeMap;

use common::{now, numbers, sql, Console};
use flowlens_testkit::Chdb;
use serde_json::Value;

const DB: &str = "flowlens_console";

/// One flow row; the fields the tests set, the others keep the table's defaults.
#[derive(Clone)]
struct Row {
    t: u64,
    src: End,
    dst: End,
    src_addr: &'static str,
    dst_addr: &'static str,
    ports: (u16, u16),
    proto: u8,
    bytes: (u64, u64),
    packets: (u64, u64),
    sampling: u32,
    rtt_ns: u64,
    retransmits: u32,
    drops: (u32, &'static str),
    end_reason: &'static str,
    service: &'static str,
    if_name: &'static str,
    duplicate: bool,
}

/// (namespace, workload, kind, pod, node) of an end.
type End = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const WEB1: End = ("default", "web", "Deployment", "web-1", "n1");
const WEB2: End = ("default", "web", "Deployment", "web-2", "n2");
const DB0: End = ("default", "db", "StatefulSet", "db-0", "n2");
const DNS: End = ("kube-system", "coredns", "Deployment", "coredns-abc", "n1");
const PROM: End = ("monitoring", "", "", "prom-0", "n1");
const NONE: End = ("", "", "", "", "");

impl Row {
    fn new(t: u64, src: End, dst: End) -> Self {
        Row {
            t,
            src,
            dst,
            src_addr: "10.1.0.1",
            dst_addr: "10.1.0.2",
            ports: (40000, 80),
            proto: 6,
            bytes: (0, 0),
            packets: (1, 1),
            sampling: 1,
            rtt_ns: 0,
            retransmits: 0,
            drops: (0, ""),
            end_reason: "",
            service: "",
            if_name: "eth0",
            duplicate: false,
        }
    }

    fn values(&self) -> String {
        let (s, d) = (self.src, self.dst);
        format!(
            "(toDateTime64({}, 9, 'UTC'), 'h1', '{}', toIPv6('{}'), toIPv6('{}'), {}, {}, {}, {}, {}, {}, {}, {}, \
             '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', {}, {}, {}, '{}', '{}', {})",
            self.t, self.if_name, self.src_addr, self.dst_addr, self.ports.0, self.ports.1,
            self.proto, self.bytes.0, self.bytes.1, self.packets.0, self.packets.1, self.sampling,
            s.0, s.1, s.2, s.3, s.4, d.0, d.1, d.2, d.3, d.4, self.service,
            if s.3.is_empty() || d.3.is_empty() { "external" } else { "cluster" },
            self.rtt_ns, self.retransmits, self.drops.0, self.drops.1, self.end_reason,
            self.duplicate,
        )
    }
}

/// Inserts the rows: flows in the last hour before `to`, one two days before.
fn insert(chdb: &Chdb, to: u64) {
    let t = |ago: u64| to - ago;
    let mut rows = Vec::new();
    let mut r = Row::new(t(3000), WEB1, DB0);
    (
        r.ports,
        r.bytes,
        r.packets,
        r.rtt_ns,
        r.retransmits,
        r.end_reason,
    ) = ((40001, 5432), (1000, 4000), (10, 20), 2_000_000, 1, "fin");
    rows.push(r.clone());
    let mut dup = r.clone();
    dup.duplicate = true;
    dup.if_name = "cni0";
    rows.push(dup);
    let mut r = Row::new(t(2400), WEB2, DB0);
    (
        r.ports,
        r.bytes,
        r.packets,
        r.sampling,
        r.rtt_ns,
        r.drops,
        r.end_reason,
    ) = (
        (40002, 5432),
        (500, 1500),
        (5, 15),
        2,
        4_000_000,
        (3, "NETFILTER_DROP"),
        "rst",
    );
    r.src_addr = "10.1.0.3";
    rows.push(r);
    let mut r = Row::new(t(1800), WEB1, NONE);
    (r.dst_addr, r.ports, r.proto, r.bytes, r.packets) =
        ("8.8.8.8", (5353, 53), 17, (100, 200), (1, 1));
    rows.push(r);
    let mut r = Row::new(t(1200), WEB1, NONE);
    (r.dst_addr, r.ports, r.bytes, r.packets, r.rtt_ns) =
        ("10.9.0.5", (40003, 443), (300, 700), (3, 7), 1_000_000);
    rows.push(r);
    let mut r = Row::new(t(900), WEB2, DNS);
    (r.ports, r.proto, r.bytes, r.packets, r.service) =
        ((5454, 53), 17, (80, 160), (1, 1), "kube-dns");
    rows.push(r);
    let mut r = Row::new(t(600), NONE, WEB1);
    (r.src_addr, r.ports, r.bytes, r.packets) = ("10.9.0.7", (50000, 22), (50, 0), (1, 0));
    rows.push(r);
    let mut r = Row::new(t(300), PROM, WEB1);
    (r.ports, r.bytes, r.packets, r.rtt_ns) = ((41000, 8080), (60, 600), (1, 2), 1_000_000);
    rows.push(r);
    let mut r = Row::new(t(2 * 86_400), WEB1, DB0);
    (r.ports, r.bytes, r.packets) = ((40005, 5432), (7, 0), (1, 0));
    rows.push(r);
    let values: Vec<String> = rows.iter().map(Row::values).collect();
    sql(
        chdb,
        DB,
        &format!(
            "INSERT INTO flows (time_flow_end, host, if_name, src_addr, dst_addr, src_port, dst_port, proto, \
             bytes, reverse_bytes, packets, reverse_packets, sampling_rate, \
             src_namespace, src_workload, src_workload_kind, src_pod, src_node, \
             dst_namespace, dst_workload, dst_workload_kind, dst_pod, dst_node, dst_service, locality, \
             rtt_ns, retransmits, drops, drop_reason, end_reason, duplicate) VALUES {}",
            values.join(", ")
        ),
    );
}

/// The SQL of each node id of the data set under the workload grouping, for end `{e}`:
/// written from the data, not from the console's expressions.
fn node_condition(id: &str) -> &'static str {
    match id {
        "default/web" => "{e}_namespace = 'default' AND {e}_workload = 'web'",
        "default/db" => "{e}_namespace = 'default' AND {e}_workload = 'db'",
        "kube-system/coredns" => "{e}_namespace = 'kube-system' AND {e}_workload = 'coredns'",
        "monitoring/prom-0" => "{e}_namespace = 'monitoring' AND {e}_pod = 'prom-0'",
        "8.8.8.8" => "{e}_pod = '' AND IPv6NumToString({e}_addr) = '::ffff:8.8.8.8'",
        "office" => "{e}_pod = '' AND startsWith(IPv6NumToString({e}_addr), '::ffff:10.9.')",
        other => panic!("unexpected node {other}"),
    }
}

/// `sum(bytes), sum(packets), flows, retransmits, drops, mean RTT ms, max sampling` over the raw
/// table for `from..to` and `condition`.
fn oracle(chdb: &Chdb, from: u64, to: u64, condition: &str) -> Vec<f64> {
    numbers(&sql(
        chdb,
        DB,
        &format!(
            "SELECT sum(est_bytes + est_reverse_bytes), sum(est_packets + est_reverse_packets), \
             count(), sum(retransmits), sum(drops), if(countIf(rtt_ns > 0) = 0, nan, \
             sumIf(rtt_ns, rtt_ns > 0) / countIf(rtt_ns > 0) / 1e6), max(sampling_rate) \
             FROM flows WHERE duplicate = 0 AND toUnixTimestamp(time_flow_end) >= {from} \
             AND toUnixTimestamp(time_flow_end) < {to} AND {condition} FORMAT TabSeparated"
        ),
    ))
}

/// The edges of a topology answer by (source, target), each with its numbers as the oracle
/// gives them.
fn edges(topology: &Value) -> BTreeMap<(String, String), Vec<f64>> {
    topology["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_f64().unwrap_or(f64::NAN);
            (
                (
                    e["source"].as_str().unwrap().to_owned(),
                    e["target"].as_str().unwrap().to_owned(),
                ),
                vec![
                    n("bytes"),
                    n("packets"),
                    n("flows"),
                    n("retransmits"),
                    n("drops"),
                    n("rtt_ms"),
                    n("max_sampling_rate"),
                ],
            )
        })
        .collect()
}

fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x.is_nan() && y.is_nan()) || (x - y).abs() < 1e-9)
}

/// Checks every edge of `topology` against SQL over flows in `from..to` (plus `extra`), and
/// that the edges add up to everything in range.
fn check_edges(chdb: &Chdb, topology: &Value, from: u64, to: u64, extra: &str) {
    let got = edges(topology);
    assert!(!got.is_empty(), "{topology}");
    let mut sum = 0.0;
    for ((s, t), numbers) in &got {
        let condition = format!(
            "({}) AND ({}){extra}",
            node_condition(s).replace("{e}", "src"),
            node_condition(t).replace("{e}", "dst")
        );
        let want = oracle(chdb, from, to, &condition);
        assert!(
            same(numbers, &want),
            "{s} -> {t}: {numbers:?} != SQL {want:?}\n{topology}"
        );
        sum += numbers[0];
    }
    let all = oracle(chdb, from, to, &format!("1{extra}"));
    assert_eq!(sum, all[0], "edges do not add up to the total: {topology}");
}

fn pairs(topology: &Value) -> Vec<(String, String)> {
    edges(topology).into_keys().collect()
}

fn pair(s: &str, t: &str) -> (String, String) {
    (s.to_owned(), t.to_owned())
}

/// Topology on the raw table, the per-minute rollup with its whole hours from the hourly one
/// (a range longer than `console.raw_max_range_s`) and the per-hour rollup (over 7 days) against
/// SQL over `flows`;
/// node kinds and groups; a filter; a raw-only filter forcing the raw table; the limit.
/// Explorer totals and series; flow details of a node and of an edge.
#[test]
fn answers_match_sql_over_the_flows_table() {
    if common::skip() {
        return;
    }
    let chdb = Chdb::start();
    common::migrate(&chdb, DB);
    let to = now() / 3600 * 3600 + 3600;
    let to_min = now() / 60 * 60 + 60;
    // Rows end at most 300 s before `to_min`, the range ends after now: nothing is cut.
    insert(&chdb, to_min);
    let console = Console::start(
        &format!(
            "[console]\nraw_max_range_s = 3600\n\
             [[console.groups]]\nname = \"office\"\ncidr = \"10.9.0.0/16\"\n\
             [[console.groups]]\nname = \"shadowed\"\ncidr = \"10.0.0.0/8\"\n\
             [clickhouse]\nurl = \"{}\"\ndatabase = \"{DB}\"\n",
            chdb.url()
        ),
        &[],
    );
    let web_edges = vec![
        pair("default/web", "8.8.8.8"),
        pair("default/web", "default/db"),
        pair("default/web", "kube-system/coredns"),
        pair("default/web", "office"),
        pair("monitoring/prom-0", "default/web"),
        pair("office", "default/web"),
    ];

    // Raw, minute rollup, hour rollup: the same edges, each equal to SQL over flows.
    for (from, to, table) in [
        (to_min - 3600, to_min, "flows"),
        (to_min - 7200, to_min, "flows_topology_1h+1m"),
        (to - 8 * 86_400, to, "flows_topology_1h"),
    ] {
        let t = console.json(&format!("/api/topology?from={from}&to={to}"));
        assert_eq!(t["table"], table, "{t}");
        assert_eq!(pairs(&t), web_edges, "{t}");
        check_edges(&chdb, &t, from, to, "");
        let kinds: BTreeMap<&str, (&str, &str)> = t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap(),
                    (
                        n["kind"].as_str().unwrap(),
                        n["namespace"].as_str().unwrap(),
                    ),
                )
            })
            .collect();
        assert_eq!(kinds["default/web"], ("Deployment", "default"));
        assert_eq!(kinds["default/db"], ("StatefulSet", "default"));
        assert_eq!(kinds["monitoring/prom-0"], ("Pod", "monitoring"));
        assert_eq!(kinds["office"], ("Group", ""));
        assert_eq!(kinds["8.8.8.8"], ("External", ""));
    }
    // The row two days old is in the hourly range only.
    let hourly = console.json(&format!("/api/topology?from={}&to={to}", to - 8 * 86_400));
    let recent = console.json(&format!("/api/topology?from={}&to={to_min}", to_min - 3600));
    let bytes = |t: &Value| edges(t)[&pair("default/web", "default/db")][0];
    assert_eq!(bytes(&hourly), bytes(&recent) + 7.0);

    // group=namespace names nodes by namespace.
    let t = console.json(&format!(
        "/api/topology?from={}&to={to_min}&group=namespace",
        to_min - 3600
    ));
    let ids: Vec<&str> = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for id in ["default", "kube-system", "monitoring", "office", "8.8.8.8"] {
        assert!(ids.contains(&id), "{id} missing: {t}");
    }

    // A filter changes the answer, on the raw table and on the rollup alike.
    for from in [to_min - 3600, to_min - 7200] {
        let t = console.json(&format!(
            "/api/topology?from={from}&to={to_min}&protocol=udp"
        ));
        assert_eq!(
            pairs(&t),
            [
                pair("default/web", "8.8.8.8"),
                pair("default/web", "kube-system/coredns")
            ],
            "{t}"
        );
        check_edges(&chdb, &t, from, to_min, " AND proto = 17");
    }
    // A filter only the raw table has makes a long range read it.
    let t = console.json(&format!(
        "/api/topology?from={}&to={to_min}&service=kube-dns",
        to_min - 7200
    ));
    assert_eq!(t["table"], "flows");
    assert_eq!(pairs(&t), [pair("default/web", "kube-system/coredns")]);
    // At most `limit` edges, the heaviest.
    let t = console.json(&format!(
        "/api/topology?from={}&to={to_min}&limit=1",
        to_min - 3600
    ));
    assert_eq!(pairs(&t), [pair("default/web", "default/db")]);

    // Explorer: totals and per-key totals equal SQL sums; every step has a point.
    let (from, to2) = (to_min - 3600, to_min);
    let e = console.json(&format!(
        "/api/explore?from={from}&to={to2}&dims=src_namespace,dst_namespace&metric=bytes"
    ));
    assert_eq!(e["table"], "flows");
    assert_eq!(e["step"], 60);
    let all = oracle(&chdb, from, to2, "1");
    assert_eq!(e["total"].as_f64().unwrap(), all[0], "{e}");
    for s in e["series"].as_array().unwrap() {
        let key: Vec<&str> = s["key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let want = oracle(
            &chdb,
            from,
            to2,
            &format!(
                "src_namespace = '{}' AND dst_namespace = '{}'",
                key[0], key[1]
            ),
        );
        assert_eq!(s["total"].as_f64().unwrap(), want[0], "{key:?}: {e}");
        let points = s["points"].as_array().unwrap();
        assert_eq!(points.len(), 60, "{s}");
        let sum: f64 = points.iter().map(|p| p[1].as_f64().unwrap()).sum();
        assert_eq!(sum, want[0]);
    }
    // The top key, then "Other" with the rest: the total stays.
    let e = console.json(&format!(
        "/api/explore?from={from}&to={to2}&dims=dst_port&limit=1&metric=flows"
    ));
    let series = e["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{e}");
    assert_eq!(series[1]["key"], serde_json::json!(["Other"]));
    assert_eq!(e["total"].as_f64().unwrap(), all[2], "{e}");
    // Filtered, and on the per-minute rollup.
    let e = console.json(&format!(
        "/api/explore?from={from}&to={to2}&dims=proto&namespace=kube-system"
    ));
    let want = oracle(
        &chdb,
        from,
        to2,
        "(src_namespace = 'kube-system' OR dst_namespace = 'kube-system')",
    );
    assert_eq!(e["total"].as_f64().unwrap(), want[0], "{e}");
    assert_eq!(e["series"][0]["key"], serde_json::json!(["udp"]));
    let e = console.json(&format!(
        "/api/explore?from={}&to={to2}&dims=src_group,dst_group",
        to2 - 7200
    ));
    assert_eq!(e["table"], "flows_topology_1m");
    assert_eq!(
        e["total"].as_f64().unwrap(),
        oracle(&chdb, to2 - 7200, to2, "1")[0],
        "{e}"
    );
    let keys: Vec<Value> = e["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].clone())
        .collect();
    assert!(
        keys.contains(&serde_json::json!(["default/web-1", "office"])),
        "{e}"
    );
    // A dimension only the raw table has.
    let e = console.json(&format!(
        "/api/explore?from={}&to={to2}&dims=if_name",
        to2 - 7200
    ));
    assert_eq!(e["table"], "flows");

    // Flow details of a node: totals, flows, ports, RTT and drops equal SQL.
    let d = console.json(&format!("/api/flows?from={from}&to={to2}&node=default/db"));
    let cond = node_condition("default/db");
    let either = format!(
        "(({}) OR ({}))",
        cond.replace("{e}", "src"),
        cond.replace("{e}", "dst")
    );
    let want = oracle(&chdb, from, to2, &either);
    assert_eq!(d["totals"]["bytes"].as_f64().unwrap(), want[0], "{d}");
    assert_eq!(d["totals"]["packets"].as_f64().unwrap(), want[1], "{d}");
    assert_eq!(d["totals"]["flows"].as_f64().unwrap(), want[2], "{d}");
    assert_eq!(d["flows"].as_array().unwrap().len() as f64, want[2]);
    assert_eq!(d["flows"][0]["bytes"], 5000, "largest first: {d}");
    assert_eq!(d["flows"][0]["dst"], "10.1.0.2:5432");
    assert_eq!(d["flows"][0]["end_reason"], "fin");
    assert_eq!(d["ports"][0]["port"], 5432);
    assert_eq!(d["ports"][0]["proto"], "tcp");
    assert_eq!(d["ports"][0]["bytes"].as_f64().unwrap(), want[0]);
    assert_eq!(d["rtt_ms"]["mean"].as_f64().unwrap(), want[5]);
    assert_eq!(
        d["drop_reasons"],
        serde_json::json!([{"reason": "NETFILTER_DROP", "drops": 3}])
    );
    // ... and of an edge.
    let d = console.json(&format!(
        "/api/flows?from={from}&to={to2}&source=default/web&target=8.8.8.8"
    ));
    assert_eq!(d["flows"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["flows"][0]["dst"], "8.8.8.8:53");
    assert_eq!(d["flows"][0]["proto"], "udp");
    assert_eq!(d["totals"]["bytes"], 300);
    assert!(d["rtt_ms"]["mean"].is_null(), "{d}");
}
