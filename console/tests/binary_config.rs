//! Every configuration key through the real `flowlens-console` binary (file and environment):
//! refused values stop it with exit 2 naming the key; accepted ones show in what it serves, what
//! ClickHouse saw, what its own metrics and logs say.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run_to_end, text, Console};
use flowlens_testkit::{free_port, Chdb};

/// Each refused value exits 2 before serving, naming its key.
#[test]
fn refused_values_stop_the_binary_naming_the_key() {
    let missing = "/nonexistent/console-password";
    for (toml, env, key) in [
        (
            "[console]\nlisten = \"nowhere\"\n",
            vec![],
            "console.listen",
        ),
        ("[console]\ntoken = \"\"\n", vec![], "console.token"),
        (
            "",
            vec![("FLOWLENS_CONSOLE__CONSOLE__TOKEN", "  ")],
            "console.token",
        ),
        (
            "[[console.groups]]\nname = \"lan\"\ncidr = \"10.0.0.0/40\"\n",
            vec![],
            "console.groups[0].cidr",
        ),
        (
            "[[console.groups]]\nname = \" \"\ncidr = \"10.0.0.0/8\"\n",
            vec![],
            "console.groups[0].name",
        ),
        (
            "[[console.stages]]\nname = \"sink\"\nurl = \"localhost:9103\"\n",
            vec![],
            "console.stages[0].url",
        ),
        (
            "[[console.stages]]\nname = \"\"\nurl = \"http://127.0.0.1:9103/metrics\"\n",
            vec![],
            "console.stages[0].name",
        ),
        (
            "[console]\nraw_max_range_s = 0\n",
            vec![],
            "console.raw_max_range_s",
        ),
        (
            "",
            vec![("FLOWLENS_CONSOLE__CONSOLE__SCRAPE_INTERVAL_MS", "5")],
            "console.scrape_interval_ms",
        ),
        (
            "[clickhouse]\nurl = \"https://ch:8443\"\n",
            vec![],
            "clickhouse.url",
        ),
        (
            "",
            vec![("FLOWLENS_CONSOLE__CLICKHOUSE__DATABASE", "a-b")],
            "clickhouse.database",
        ),
        ("[clickhouse]\nuser = \"\"\n", vec![], "clickhouse.user"),
        (
            "[clickhouse]\npassword = \"x\"\npassword_file = \"/etc/hostname\"\n",
            vec![],
            "clickhouse.password_file",
        ),
        (
            &*format!("[clickhouse]\npassword_file = \"{missing}\"\n"),
            vec![],
            "clickhouse.password_file",
        ),
        (
            "[clickhouse]\ntimeout_ms = 0\n",
            vec![],
            "clickhouse.timeout_ms",
        ),
        (
            "[telemetry]\nmetrics_listen = \"x\"\n",
            vec![],
            "telemetry.metrics_listen",
        ),
        (
            "[telemetry]\nlog_format = \"xml\"\n",
            vec![],
            "telemetry.log_format",
        ),
        ("[console]\ntokn = \"x\"\n", vec![], "tokn"),
    ] {
        let out = run_to_end(toml, &env);
        assert_eq!(out.status.code(), Some(2), "{toml} {env:?}: {}", text(&out));
        assert!(text(&out).contains(key), "{toml} {env:?}: {}", text(&out));
    }
}

/// `console.token` (from the environment) guards /api/* and not the page; bad input is a 400
/// naming the parameter; a ClickHouse that is not there (`clickhouse.url`) is a 502; the
/// console's own metrics on `telemetry.metrics_listen` count the requests by endpoint and
/// status and the query time; `telemetry.log_format` and `log_level` shape its log.
#[test]
fn token_bad_input_metrics_and_logs() {
    let (closed, metrics) = (free_port(), free_port());
    let console = Console::start(
        &format!(
            "[clickhouse]\nurl = \"http://127.0.0.1:{closed}\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\nlog_format = \"json\"\n\
             log_level = \"warn,flowlens_console=debug\"\n"
        ),
        &[("FLOWLENS_CONSOLE__CONSOLE__TOKEN", "s3cret-t0ken")],
    );
    let token = Some("s3cret-t0ken");
    assert_eq!(console.get("/api/health", None).0, 401);
    assert_eq!(console.get("/api/health", Some("wrong")).0, 401);
    let (status, body) = console.get("/api/topology", Some("s3cret-t0ken-longer"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(
        console.get("/api/health", token),
        (200, "{\"stages\":[]}".into())
    );
    for (path, needle) in [("/", "<"), ("/app.js", ""), ("/style.css", "")] {
        let (status, body) = console.get(path, None);
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(needle), "{path}: {body}");
    }

    for (path, needle) in [
        ("/api/topology?from=20&to=10", "from=20"),
        ("/api/topology?from=abc", "from=abc"),
        ("/api/topology?group=team", "group=team"),
        ("/api/topology?limit=0", "limit=0"),
        ("/api/topology?colour=rtt", "colour"),
        ("/api/topology?protocol=tcpp", "protocol=tcpp"),
        ("/api/topology?ip=10.0.0.0/99", "ip"),
        ("/api/explore?dims=a,b", "`a`"),
        ("/api/explore?dims=proto,host,if_name,src_pod", "dims"),
        ("/api/explore?metric=rtt", "metric=rtt"),
        ("/api/flows?from=10&to=20", "node="),
        ("/api/flows?node=a&source=b", "node="),
    ] {
        let (status, body) = console.get(path, token);
        assert_eq!(status, 400, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    let (status, body) = console.get("/api/topology", token);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(&format!("127.0.0.1:{closed}")), "{body}");

    let (status, scraped) = common::get(metrics, "/metrics", None);
    assert_eq!(status, 200);
    for needle in [
        "flowlens_console_requests_total{endpoint=\"/api/health\",status=\"401\"} 2",
        "flowlens_console_requests_total{endpoint=\"/api/health\",status=\"200\"} 1",
        "flowlens_console_requests_total{endpoint=\"/api/topology\",status=\"400\"}",
        "flowlens_console_requests_total{endpoint=\"/api/topology\",status=\"502\"} 1",
        "flowlens_console_clickhouse_query_seconds",
    ] {
        assert!(scraped.contains(needle), "{needle}:\n{scraped}");
    }

    let log = console.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(
        log.contains("\"DEBUG\"") && log.contains("/api/topology"),
        "{log}"
    );
    assert!(!log.contains("s3cret-t0ken"), "{log}");
}

/// A Prometheus endpoint whose counter grows by 10 per scrape and whose gauge is 42.
fn fake_stage() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let scrapes = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let n = scrapes.fetch_add(1, Ordering::Relaxed) + 1;
            let body = format!(
                "# TYPE flowlens_sink_rows_inserted_total counter\n\
                 flowlens_sink_rows_inserted_total{{table=\"flows\"}} {}\n\
                 # TYPE flowlens_consumer_lag_records gauge\n\
                 flowlens_consumer_lag_records{{partition=\"0\"}} 40\n\
                 flowlens_consumer_lag_records{{partition=\"1\"}} 2\n",
                n * 10
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// `console.stages` are scraped every `console.scrape_interval_ms`: a stage that answers is up
/// with its counter's rate and its gauge summed over labels; one that does not is down with
/// the reason.
#[test]
fn health_scrapes_the_stages() {
    let (up, down) = (fake_stage(), free_port());
    let console = Console::start(
        &format!(
            "[console]\nscrape_interval_ms = 200\n\
             [[console.stages]]\nname = \"sink\"\nurl = \"http://127.0.0.1:{up}/metrics\"\n\
             [[console.stages]]\nname = \"enricher\"\nurl = \"http://127.0.0.1:{down}/metrics\"\n\
             [clickhouse]\nurl = \"http://127.0.0.1:{down}\"\n"
        ),
        &[],
    );
    let start = Instant::now();
    let health = loop {
        let h = console.json("/api/health");
        if h["stages"][0]["rates"]["flowlens_sink_rows_inserted_total"].is_number() {
            break h;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no rates: {h}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let sink = &health["stages"][0];
    assert_eq!(sink["name"], "sink");
    assert_eq!(sink["up"], true);
    assert!(sink["error"].is_null());
    assert_eq!(sink["values"]["flowlens_consumer_lag_records"], 42.0);
    // 10 per scrape, one scrape per 200 ms: 50/s (scheduling moves it a little).
    let rate = sink["rates"]["flowlens_sink_rows_inserted_total"]
        .as_f64()
        .unwrap();
    assert!((20.0..=100.0).contains(&rate), "{rate}: {health}");
    let enricher = &health["stages"][1];
    assert_eq!(enricher["name"], "enricher");
    assert_eq!(enricher["up"], false);
    assert!(
        enricher["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{health}"
    );
}

/// `clickhouse.user`, `password` (environment) and `password_file` reach ClickHouse (a front
/// that requires them): with them the query gets past authentication to the missing
/// `clickhouse.database`, whose error ClickHouse names (502); a wrong password is refused. A
/// server that never answers costs `clickhouse.timeout_ms`.
#[test]
fn clickhouse_credentials_database_and_timeout() {
    if common::skip() {
        return;
    }
    const PASSWORD: &str = "analyst-Pa55";
    let chdb = Chdb::start_with_auth("flowlens_analyst", PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let base = format!(
        "[clickhouse]\nurl = \"{}\"\nuser = \"flowlens_analyst\"\ndatabase = \"no_such_db\"\n",
        chdb.url()
    );
    let from_file = format!("{base}password_file = \"{}\"\n", file.display());
    for (toml, env) in [
        (
            base.as_str(),
            vec![("FLOWLENS_CONSOLE__CLICKHOUSE__PASSWORD", PASSWORD)],
        ),
        (from_file.as_str(), vec![]),
    ] {
        let console = Console::start(toml, &env);
        let (status, body) = console.get("/api/topology", None);
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("no_such_db"), "{body}");
        assert!(!body.contains("AUTHENTICATION_FAILED"), "{body}");
        assert!(!console.log_text().contains(PASSWORD));
    }
    let console = Console::start(
        &base,
        &[("FLOWLENS_CONSOLE__CLICKHOUSE__PASSWORD", "wrong")],
    );
    let (status, body) = console.get("/api/explore", None);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("AUTHENTICATION_FAILED"), "{body}");

    // A server that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let console = Console::start(
        &format!("[clickhouse]\nurl = \"http://127.0.0.1:{port}\"\ntimeout_ms = 300\n"),
        &[],
    );
    let start = Instant::now();
    let (status, body) = console.get("/api/flows?node=x", None);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("300ms"), "{body}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// `console.listen` from the file, and from the environment over the file; SIGTERM stops the
/// binary cleanly.
#[test]
fn listen_from_the_file_and_the_environment() {
    let (file_port, env_port) = (free_port(), free_port());
    let toml = format!(
        "[console]\nlisten = \"127.0.0.1:{file_port}\"\n[clickhouse]\nurl = \"http://127.0.0.1:1\"\n"
    );
    let mut console = Console::start_on(&toml, &[], file_port);
    assert_eq!(console.get("/", None).0, 200);
    assert!(
        console.stop(),
        "no clean exit on SIGTERM: {}",
        console.log_text()
    );
    let listen = format!("127.0.0.1:{env_port}");
    let console = Console::start_on(
        &toml,
        &[("FLOWLENS_CONSOLE__CONSOLE__LISTEN", listen.as_str())],
        env_port,
    );
    assert_eq!(console.get("/", None).0, 200);
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err());
}
