//! DNS and HTTP through the whole pipeline on real traffic: unbound and Python's http.server in
//! namespace B, dig and curl in A (each query and each request a conversation of its own), the
//! collector on A's veth, the enricher, the sink, ClickHouse (the 26.9 engine behind the chdb
//! front). The ready queries must then answer with exactly what dig and curl reported: NXDOMAIN
//! and SERVFAIL per name, 4xx and 5xx per path, counts, and latency percentiles within dig's and
//! curl's own times.

mod common;

use std::time::{Duration, Instant};

use common::{require_root, Pipeline};
use flowlens_testkit::{
    curl, dig, http, repo_root, unbound, unique, web_server, Chdb, Dig, NetnsPair, Tansu, Transfer,
};
use serde_json::Value;

/// (name, status dig must report)
const NAMES: [(&str, &str); 6] = [
    ("known.flowlens.test", "NOERROR"),
    ("known.flowlens.test", "NOERROR"),
    ("nope.flowlens.test", "NXDOMAIN"),
    ("nope.flowlens.test", "NXDOMAIN"),
    ("nope.flowlens.test", "NXDOMAIN"),
    ("x.broken.test", "SERVFAIL"),
];
/// (path, status curl must report)
const PATHS: [(&str, u16); 5] = [
    ("/ok/1", 200),
    ("/missing", 404),
    ("/fail", 500),
    ("/fail", 500),
    ("/ok/2", 200),
];
const WEB_PORT: u16 = 8080;

/// Ready query `file` with `params`, as JSON rows.
fn ready_query(clickhouse: &Chdb, file: &str, params: &str) -> Vec<Value> {
    let sql = std::fs::read_to_string(repo_root().join("sql/queries").join(file)).unwrap();
    let (status, body) = http(
        clickhouse.port,
        "POST",
        &format!("/?{params}&default_format=JSONEachRow&output_format_json_quote_64bit_integers=0"),
        &sql,
    );
    assert_eq!(status, 200, "{file}: {body}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn scalar(clickhouse: &Chdb, sql: &str) -> u64 {
    let (status, body) = http(clickhouse.port, "POST", "/", sql);
    assert_eq!(status, 200, "{body}");
    body.trim().parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_and_http_become_ready_query_answers() {
    require_root();
    let broker = Tansu::start();
    let clickhouse = Chdb::start();
    let pair = std::sync::Arc::new(NetnsPair::new("l"));
    let host = unique("l7-host");
    let mut pipeline = Pipeline::new(&broker.broker(), &clickhouse.url(), &pair, &host)
        .start()
        .await;

    let p = pair.clone();
    let (digs, transfers) = tokio::task::spawn_blocking(move || {
        let _resolver = unbound(
            &p.ns_b,
            p.ip_b,
            &[("broken.test", "192.0.2.1".parse().unwrap())],
        );
        let _web = web_server(&p.ns_b, p.ip_b, WEB_PORT);
        let digs: Vec<Dig> = NAMES
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                dig(
                    &p.ns_a,
                    (p.ip_a, 44_000 + i as u16),
                    (p.ip_b, 53),
                    name,
                    false,
                )
            })
            .collect();
        let transfers: Vec<Transfer> = PATHS
            .iter()
            .enumerate()
            .map(|(i, (path, _))| {
                let url = format!("http://{}:{WEB_PORT}{path}", p.ip_b);
                curl(&p.ns_a, Some(44_100 + i as u16), &[url], None).remove(0)
            })
            .collect();
        (digs, transfers)
    })
    .await
    .unwrap();
    for ((name, status), d) in NAMES.iter().zip(&digs) {
        assert_eq!(&d.status, status, "dig {name}");
    }
    for ((path, status), t) in PATHS.iter().zip(&transfers) {
        assert_eq!(t.status, *status, "curl {path}");
    }
    pipeline.stop_collector().await;

    let filter = format!("host = '{host}' AND NOT duplicate");
    let started = Instant::now();
    loop {
        let dns = scalar(
            &clickhouse,
            &format!("SELECT sum(dns_responses) FROM flows WHERE {filter}"),
        );
        let web = scalar(
            &clickhouse,
            &format!("SELECT sum(http_responses) FROM flows WHERE {filter}"),
        );
        if (dns, web) == (NAMES.len() as u64, PATHS.len() as u64) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ClickHouse holds {dns} DNS responses and {web} HTTP responses"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let params = "param_minutes=60&param_limit=100&param_namespace=";
    let client = pair.ip_a.to_string();

    // NXDOMAIN and SERVFAIL per name, as dig saw them.
    let errors = ready_query(&clickhouse, "dns_errors_by_name.sql", params);
    let rows: Vec<(String, String, u64, u64, u64)> = errors
        .iter()
        .map(|r| {
            (
                r["pod"].as_str().unwrap().to_string(),
                r["query_name"].as_str().unwrap().to_string(),
                r["nxdomain"].as_u64().unwrap(),
                r["servfail"].as_u64().unwrap(),
                r["queries"].as_u64().unwrap(),
            )
        })
        .collect();
    let count = |status: &str| NAMES.iter().filter(|(_, s)| *s == status).count() as u64;
    assert_eq!(
        rows,
        [
            (
                client.clone(),
                "nope.flowlens.test".into(),
                count("NXDOMAIN"),
                0,
                count("NXDOMAIN")
            ),
            (
                client.clone(),
                "x.broken.test".into(),
                0,
                count("SERVFAIL"),
                count("SERVFAIL")
            ),
        ],
        "dns_errors_by_name"
    );

    // Latency per client and resolver: every answer timed, the slowest no later than dig saw it.
    let latency = ready_query(&clickhouse, "dns_latency.sql", params);
    assert_eq!(latency.len(), 1, "{latency:?}");
    let row = &latency[0];
    assert_eq!(row["client"], client.as_str());
    assert_eq!(row["resolver"], pair.ip_b.to_string().as_str());
    assert_eq!(row["queries"].as_u64(), Some(NAMES.len() as u64));
    assert_eq!(row["answered"].as_u64(), Some(NAMES.len() as u64));
    // dig's millisecond loop clock was seen 2 ms under the wire's time: +5 ms.
    let slowest_dig = digs.iter().map(|d| d.query_ms).max().unwrap() as f64;
    let max = row["latency_max_ms"].as_f64().unwrap();
    println!("dns_latency: {row}; dig's slowest {slowest_dig} ms");
    assert!(
        max <= slowest_dig + 5.0 && max + 20.0 >= slowest_dig,
        "{max} ms vs dig {slowest_dig} ms"
    );
    // quantileExact over six values: p99 is the largest (listed in whole µs, the max in ns).
    let p99 = row["latency_p99_ms"].as_f64().unwrap();
    assert!((max - p99).abs() <= 0.002, "p99 {p99} ms, max {max} ms");
    assert!(row["latency_p50_ms"].as_f64().unwrap() <= max);

    http_answers(&clickhouse, params, &transfers, &pair);
    pipeline.stop().await;
}

/// The HTTP ready queries against what curl reported.
fn http_answers(clickhouse: &Chdb, params: &str, transfers: &[Transfer], pair: &NetnsPair) {
    let server = pair.ip_b.to_string();
    let errors = ready_query(clickhouse, "http_errors_by_path.sql", params);
    let rows: Vec<(String, String, u64, u64, u64)> = errors
        .iter()
        .map(|r| {
            (
                r["pod"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["errors_4xx"].as_u64().unwrap(),
                r["errors_5xx"].as_u64().unwrap(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    let count = |path: &str| PATHS.iter().filter(|(p, _)| *p == path).count() as u64;
    assert_eq!(
        rows,
        [
            (
                server.clone(),
                "/fail".into(),
                0,
                count("/fail"),
                count("/fail")
            ),
            (
                server.clone(),
                "/missing".into(),
                count("/missing"),
                0,
                count("/missing")
            ),
        ],
        "http_errors_by_path"
    );

    let latency = ready_query(clickhouse, "http_latency.sql", params);
    assert_eq!(latency.len(), 1, "{latency:?}");
    let row = &latency[0];
    println!("http_latency: {row}; curl: {transfers:?}");
    assert_eq!(row["server"], server.as_str());
    let n = PATHS.len() as u64;
    assert_eq!(
        (
            row["requests"].as_u64(),
            row["responses"].as_u64(),
            row["answered"].as_u64()
        ),
        (Some(n), Some(n), Some(n))
    );
    let errors = PATHS.iter().filter(|(_, s)| *s >= 400).count() as f64;
    assert_eq!(row["error_ratio"].as_f64(), Some(errors / n as f64));
    let slowest_curl = transfers
        .iter()
        .map(Transfer::latency_ms)
        .fold(0.0, f64::max);
    let max = row["latency_max_ms"].as_f64().unwrap();
    assert!(
        max <= slowest_curl + 1.0 && max + 20.0 >= slowest_curl,
        "{max} ms vs curl's slowest {slowest_curl} ms"
    );
    // quantileExact over five values: p99 is the largest (listed in whole µs, the max in ns).
    let p99 = row["latency_p99_ms"].as_f64().unwrap();
    assert!((max - p99).abs() <= 0.002, "p99 {p99} ms, max {max} ms");
}
