//! The web console in headless Chromium, on flows carried through the whole pipeline from known
//! traffic: UDP from pod shop/web (namespace A) to pod shop/db (B's IPv4 address, ports 5432 and
//! 53) and to B's IPv6 address, which no pod has and the console's `console.groups` names
//! "lab-net". The collector binary, the enricher (Kubernetes from a snapshot) and the sink fill
//! ClickHouse (the 26.9 engine behind the chdb front); `flowlens-console` serves the page.
//!
//! What the page shows is checked against SQL over the raw `flows` table written here: node
//! names, edge bytes, the explorer's total before and after a filter typed into the page, the
//! details of a clicked node, and the health of the collector's metrics endpoint. The view state
//! lives in the URL: a copied URL reopens the same numbers. Screenshots go to
//! `$FLOWLENS_CONSOLE_SCREENSHOTS` when set (docs/ holds the committed ones).

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{pod, replica_set, write_snapshot};
use common::{require_root, send_udp_between, Pipeline};
use flowlens_testkit::{
    free_port, http, stage_binary, unique, wait_port, Browser, Chdb, ChildGuard, NetnsPair, Tansu,
};
use serde_json::json;

/// (destination port, datagrams, payload bytes, to B's IPv6 address)
const TRAFFIC: [(u16, u64, usize, bool); 3] = [
    (5432, 200, 500, false),
    (53, 20, 60, false),
    (9000, 50, 300, true),
];
const WAIT: Duration = Duration::from_secs(30);

fn scalar(clickhouse: &Chdb, sql: &str) -> u64 {
    let (status, body) = http(clickhouse.port, "POST", "/", sql);
    assert_eq!(status, 200, "{sql}: {body}");
    body.trim().parse().unwrap_or(0)
}

/// Total bytes of both directions in `flows` for `condition` (the oracle of every number below).
fn bytes_where(clickhouse: &Chdb, host: &str, condition: &str) -> u64 {
    scalar(
        clickhouse,
        &format!(
            "SELECT sum(est_bytes + est_reverse_bytes) FROM flows \
             WHERE host = '{host}' AND NOT duplicate AND ({condition})"
        ),
    )
}

/// A screenshot of the page as docs/console-<name>.png shows it, when
/// `$FLOWLENS_CONSOLE_SCREENSHOTS` names a directory.
fn shot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("FLOWLENS_CONSOLE_SCREENSHOTS").map(PathBuf::from) {
        browser.screenshot(&dir.join(format!("console-{name}.png")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_pipelines_flows_as_sql_counts_them() {
    require_root();
    let broker = Tansu::start();
    let clickhouse = Chdb::start();
    let pair = std::sync::Arc::new(NetnsPair::new("w"));
    let host = unique("console-node");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.json");
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 3_600;
    // A is shop/web (both its addresses); B's IPv4 address is shop/db, its IPv6 address is no pod.
    write_snapshot(
        &snapshot,
        vec![
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": host, "uid": "uid-node"}}),
            replica_set("web", "6b8c"),
            replica_set("db", "5d4f"),
            pod(
                "web",
                "6b8c",
                &host,
                &[pair.ip_a.to_string(), pair.ip6_a.to_string()],
                an_hour_ago,
            ),
            pod("db", "5d4f", &host, &[pair.ip_b.to_string()], an_hour_ago),
        ],
    );
    let mut pipeline = Pipeline::new(&broker.broker(), &clickhouse.url(), &pair, &host);
    pipeline.enricher.kubernetes.source = flowlens_enricher::kubernetes::config::Source::Snapshot;
    pipeline.enricher.kubernetes.snapshot_path = snapshot.display().to_string();
    let mut pipeline = pipeline.start_with_collector_binary().await;
    let collector_metrics = pipeline.collector_process().metrics_port;

    let p = pair.clone();
    tokio::task::spawn_blocking(move || {
        for (port, n, payload, v6) in TRAFFIC {
            let (a, b): (IpAddr, IpAddr) = if v6 {
                (p.ip6_a.into(), p.ip6_b.into())
            } else {
                (p.ip_a.into(), p.ip_b.into())
            };
            send_udp_between(&p, a, b, n, payload, port);
        }
    })
    .await
    .unwrap();
    // Every conversation is in ClickHouse once each has a row.
    let started = Instant::now();
    while scalar(
        &clickhouse,
        &format!("SELECT uniqExact(dst_port) FROM flows WHERE host = '{host}' AND dst_port IN (5432, 53, 9000)"),
    ) < 3
    {
        assert!(started.elapsed() < Duration::from_secs(60), "rows never arrived");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The collector scans every 500 ms and the sink flushes every 500 ms: later rows of the same
    // conversations are in after a few more cycles.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The console, configured through a file and the environment.
    let port = free_port();
    let config = dir.path().join("console.toml");
    std::fs::write(
        &config,
        format!(
            "[console]\nlisten = \"127.0.0.1:{port}\"\n\
             groups = [{{ name = \"lab-net\", cidr = \"{}/128\" }}]\n\
             stages = [{{ name = \"collector\", url = \"http://127.0.0.1:{collector_metrics}/metrics\" }}]\n\
             scrape_interval_ms = 1000\n",
            pair.ip6_b
        ),
    )
    .unwrap();
    let log = dir.path().join("console.log");
    let mut console = ChildGuard::spawn(
        "flowlens-console",
        std::process::Command::new(stage_binary("flowlens-console", "flowlens-console"))
            .arg("--config")
            .arg(&config)
            .env("FLOWLENS_CONSOLE__CLICKHOUSE__URL", clickhouse.url()),
        &log,
    );
    wait_port(port, &mut console, &log, WAIT);
    let base = format!("http://127.0.0.1:{port}");
    // Health, while the collector runs: its endpoint is up, with a packet rate once the console
    // has scraped it twice (the page refreshes every 5 s).
    let b = base.clone();
    let (health, packet_rate, browser) = tokio::task::spawn_blocking(move || {
        let browser = Browser::start();
        browser.goto(&format!("{b}/?view=health"));
        browser.wait_text("#status", "ready", WAIT);
        let row = "table#health tr[data-stage=\"collector\"]";
        let rate = |b: &Browser| b.find(&format!("{row} td.rate-in")).attr("data-value");
        let started = Instant::now();
        while rate(&browser).unwrap_or_default().is_empty() && started.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(250));
        }
        shot(&browser, "health");
        (browser.find(row).text(), rate(&browser), browser)
    })
    .await
    .unwrap();
    assert!(health.contains("up"), "health row: {health}");
    let packet_rate: f64 = packet_rate
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no packet rate in the health row: {health}"));
    assert!(packet_rate >= 0.0, "{packet_rate}");

    // The collector stops (a last scan), and the rows stop changing: the page and the SQL below
    // then read the same rows (the namespaces' own IPv6 neighbour traffic goes on otherwise).
    pipeline.stop_collector().await;
    let mut last = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = (
            scalar(&clickhouse, "SELECT count() FROM flows"),
            bytes_where(&clickhouse, &host, "1"),
        );
        if now == last {
            break;
        }
        last = now;
    }

    let web_db = bytes_where(
        &clickhouse,
        &host,
        "src_workload = 'web' AND dst_workload = 'db'",
    );
    let web_lab = bytes_where(
        &clickhouse,
        &host,
        &format!(
            "src_workload = 'web' AND dst_addr = toIPv6('{}')",
            pair.ip6_b
        ),
    );
    let all = bytes_where(&clickhouse, &host, "1");
    let dns = bytes_where(&clickhouse, &host, "src_port = 53 OR dst_port = 53");
    assert!(web_db > 0 && web_lab > 0 && dns > 0 && dns < all);

    let checks = tokio::task::spawn_blocking(move || {
        let shot = |name: &str| shot(&browser, name);

        // Topology: the three ends by name, the edges' bytes as SQL sums them.
        browser.goto(&format!("{base}/?view=topology&range=1h"));
        browser.wait_text("#status", "ready", WAIT);
        let ids: Vec<String> = browser
            .find_all("g.node")
            .iter()
            .filter_map(|n| n.attr("data-id"))
            .collect();
        for id in ["shop/web", "shop/db", "lab-net"] {
            assert!(ids.iter().any(|i| i == id), "node {id} not among {ids:?}");
        }
        let edge = |source: &str, target: &str| -> u64 {
            browser
                .find(&format!(
                    "path.edge[data-source=\"{source}\"][data-target=\"{target}\"]"
                ))
                .attr("data-bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or_else(|| panic!("edge {source} -> {target} has no data-bytes"))
        };
        assert_eq!(
            edge("shop/web", "shop/db"),
            web_db,
            "edge shop/web -> shop/db"
        );
        assert_eq!(
            edge("shop/web", "lab-net"),
            web_lab,
            "edge shop/web -> lab-net"
        );
        let lab = browser.find("g.node[data-id=\"lab-net\"]");
        assert_eq!(lab.attr("data-kind").as_deref(), Some("Group"));
        shot("topology");

        // A click on shop/db: its flows and ports, selection kept in the URL.
        browser.find("g.node[data-id=\"shop/db\"]").click();
        browser.wait_for("#details table#details-ports", WAIT);
        browser.wait_text("#status", "ready", WAIT);
        let ports = browser.find("table#details-ports").text();
        for port in ["5432", "53"] {
            assert!(
                ports.contains(port),
                "port {port} not in the details: {ports}"
            );
        }
        assert!(
            !browser.find_all("table#details-flows tr").is_empty(),
            "no flows listed for shop/db"
        );
        assert!(
            browser.current_url().contains("sel="),
            "{}",
            browser.current_url()
        );
        shot("details");

        // Explorer by destination port: the total, then a filter typed into the page.
        browser.goto(&format!(
            "{base}/?view=explorer&range=1h&dims=dst_port&metric=bytes"
        ));
        browser.wait_text("#status", "ready", WAIT);
        let total = |b: &Browser| -> u64 {
            b.find("#explore-total")
                .attr("data-value")
                .and_then(|v| v.parse().ok())
                .expect("#explore-total has data-value")
        };
        let before = total(&browser);
        let series_before = browser.find_all("path.area").len();
        let filter = browser.find("input#filter");
        filter.clear();
        filter.send_keys("port=53\n");
        browser.wait_text("#status", "ready", WAIT);
        let started = Instant::now();
        while total(&browser) == before && started.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = total(&browser);
        let series_after = browser.find_all("path.area").len();
        let filtered_url = browser.current_url();
        assert!(filtered_url.contains("port=53"), "{filtered_url}");
        // The same URL opened again shows the same numbers.
        browser.goto(&filtered_url);
        browser.wait_text("#status", "ready", WAIT);
        let reopened = total(&browser);

        // Two dimensions: a sankey from the client workloads to the ports.
        browser.goto(&format!(
            "{base}/?view=explorer&range=1h&dims=src_workload,dst_port&metric=bytes"
        ));
        browser.wait_text("#status", "ready", WAIT);
        assert!(
            !browser.find_all("svg#sankey path.sankey-link").is_empty(),
            "no sankey links"
        );
        shot("explorer");
        (before, series_before, after, series_after, reopened)
    })
    .await
    .unwrap();
    let (before, series_before, after, series_after, reopened) = checks;
    // This ClickHouse holds only this test's rows, all of the last hour.
    assert_eq!(before, all, "explorer total");
    assert_eq!(after, dns, "explorer total with port=53");
    assert_eq!(reopened, after, "the copied URL shows the filtered view");
    assert!(
        series_after < series_before,
        "the filter left {series_after} of {series_before} series"
    );

    console.assert_running(&log);
    pipeline.stop().await;
}
