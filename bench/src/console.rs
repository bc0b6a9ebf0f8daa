//! The console's latency bench: a day of generated flows in ClickHouse (the chdb front), the
//! console's topology and explorer answers timed beside ClickHouse asked directly in the same run.
//!
//! The rows are made by ClickHouse itself (`INSERT ... SELECT ... FROM numbers()`), so the
//! project's materialized views fill every rollup exactly as the sink's inserts would. The
//! floor is the chdb front's bare round trip (`SELECT 1`); the baseline is the ready query
//! `topology_edges.sql` over the same day on the raw table (what a topology costs without
//! rollups).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_testkit::{free_port, http_to, repo_root, Chdb, ChildGuard};

use crate::probe::ClickHouse;
use crate::progress::Progress;

/// What `flowlens-bench console` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Generated rows, spread evenly over the last 24 h.
    pub rows: u64,
    /// Timed repetitions of every request (the first is a warm-up, not counted).
    pub repeats: u32,
    /// The console binary.
    pub console: PathBuf,
    /// Where console.md goes.
    pub out: PathBuf,
}

/// Rows per INSERT ... SELECT (each stays well inside the HTTP timeout with every view).
const CHUNK: u64 = 1_000_000;
/// Namespaces, workloads per namespace and pods per workload of the generated cluster.
const NAMESPACES: u64 = 20;
const WORKLOADS: u64 = 8;
const PODS: u64 = 3;
/// External addresses (198.51.100.0/24 and 203.0.113.0/24, documentation ranges) that pods talk to.
const EXTERNAL: u64 = 500;

/// One timed request: its name, what answered, and the wall times in milliseconds.
struct Timing {
    name: String,
    answered_by: String,
    ms: Vec<f64>,
}

impl Timing {
    fn median(&self) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn max(&self) -> f64 {
        self.ms.iter().copied().fold(0.0, f64::max)
    }
}

/// Runs the bench and writes `<out>/console.md`.
pub fn run(opts: &Options, progress: &Progress) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.console.exists(),
        "{} is missing: build it first (cargo build --release -p flowlens-console)",
        opts.console.display()
    );
    let chdb = Chdb::start();
    let clickhouse = ClickHouse::new(&chdb.url(), "default", "", "")?;
    progress.say("applying the migrations".into());
    for (file, sql) in flowlens_sink::migrate::EMBEDDED {
        for statement in flowlens_sink::migrate::split_statements(sql) {
            clickhouse
                .query(&statement)
                .with_context(|| format!("migration {file}"))?;
        }
    }
    let now = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?).as_secs();
    let generated = Instant::now();
    let bar = progress.bar(opts.rows, "rows generated");
    let mut done = 0;
    while done < opts.rows {
        let n = CHUNK.min(opts.rows - done);
        clickhouse.query(&generate(done, n, opts.rows, now))?;
        done += n;
        bar.set_position(done);
    }
    bar.finish();
    let generate_s = generated.elapsed().as_secs_f64();
    let counts = clickhouse.query(
        "SELECT (SELECT count() FROM flows), (SELECT count() FROM flows_topology_1m), \
         (SELECT count() FROM flows_topology_1h) FORMAT TSV",
    )?;

    let dir = tempfile::tempdir()?;
    let port = free_port();
    let log = dir.path().join("console.log");
    let mut console = ChildGuard::spawn(
        "flowlens-console",
        std::process::Command::new(&opts.console)
            .env(
                "FLOWLENS_CONSOLE__CONSOLE__LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env("FLOWLENS_CONSOLE__CLICKHOUSE__URL", chdb.url())
            .env(
                "FLOWLENS_CONSOLE__TELEMETRY__METRICS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
        &log,
    );
    flowlens_testkit::wait_port(port, &mut console, &log, Duration::from_secs(20));

    let day = (now - 86_400, now);
    let hour = (now - 3_600, now);
    let mut timings = vec![
        time_request(
            opts,
            "SELECT 1 (the chdb front's round trip: the floor)",
            || clickhouse_ms(&chdb, "", "SELECT 1"),
        )?,
        time_request(
            opts,
            "ready query topology_edges.sql, 24 h, raw table (no rollup)",
            || {
                let sql =
                    std::fs::read_to_string(repo_root().join("sql/queries/topology_edges.sql"))?;
                clickhouse_ms(
                    &chdb,
                    "param_minutes=1440&param_limit=500&param_namespace=",
                    &format!("{sql}\nFORMAT Null"),
                )
                .map(|(ms, _)| (ms, "flows".to_string()))
            },
        )?,
    ];
    for (name, path) in [
        (
            "console topology, 24 h, by workload",
            api("topology", day, "group=workload"),
        ),
        (
            "console topology, 24 h, by pod",
            api("topology", day, "group=pod"),
        ),
        (
            "console topology, 1 h, by workload",
            api("topology", hour, "group=workload"),
        ),
        (
            "console explorer, 24 h, src_namespace × dst_namespace",
            api(
                "explore",
                day,
                "dims=src_namespace,dst_namespace&metric=bytes",
            ),
        ),
        (
            "console explorer, 1 h, src_workload × dst_port",
            api("explore", hour, "dims=src_workload,dst_port&metric=bytes"),
        ),
    ] {
        timings.push(time_request(opts, name, || console_ms(port, &path))?);
    }
    console.assert_running(&log);
    let report = render(opts, generate_s, counts.trim(), &timings);
    std::fs::create_dir_all(&opts.out)?;
    let file = opts.out.join("console.md");
    std::fs::write(&file, &report)?;
    println!("{report}");
    progress.say(format!("wrote {}", file.display()));
    Ok(())
}

/// `INSERT ... SELECT` of `n` rows starting at row `first` of `total`, row i ending at
/// now - 86,400 s * i / total: a steady day. Side A is a pod; side B a pod of another workload
/// (90 %) or an external address (10 %).
fn generate(first: u64, n: u64, total: u64, now: u64) -> String {
    format!(
        "INSERT INTO flows (time_flow_start, time_flow_end, time_exported, host, if_name, direction, \
           proto, src_addr, dst_addr, src_port, dst_port, packets, bytes, reverse_packets, reverse_bytes, \
           sampling_rate, src_namespace, src_workload, src_workload_kind, src_pod, src_node, \
           dst_namespace, dst_workload, dst_workload_kind, dst_pod, dst_node, locality, \
           rtt_ns, retransmits, drops, end_reason, tcp_flags) \
         SELECT t - toIntervalSecond(5), t, t, src_node, 'eth0', 'egress', \
           if(w % 5 = 0, 17, 6), \
           toIPv6(IPv4NumToString(toUInt32(167772160 + src_pod_n))), \
           if(external, toIPv6(IPv4NumToString(toUInt32(if(i % 2 = 0, 3325256704, 3405803776) + i % {EXTERNAL} % 250))), \
              toIPv6(IPv4NumToString(toUInt32(167772160 + dst_pod_n)))), \
           toUInt16(32768 + i % 28000), if(w % 5 = 0, 53, toUInt16(8000 + dw % 100)), \
           toUInt64(1 + i % 40), toUInt64(100 + (i * 7919) % 60000), toUInt64(1 + i % 30), toUInt64(60 + (i * 104729) % 90000), \
           1, ns, wl, 'Deployment', pod, src_node, \
           if(external, '', dns), if(external, '', dwl), if(external, '', 'Deployment'), if(external, '', dpod), \
           if(external, '', concat('node-', toString(dst_pod_n % 20))), if(external, 'external', 'cluster'), \
           toUInt64(100000 + (i * 31) % 5000000), toUInt64(i % 97 = 0), toUInt64(i % 211 = 0), \
           ['fin', 'rst', 'idle', ''][1 + i % 4], 27 \
         FROM (SELECT number AS i, \
             toDateTime64({now}, 9) - toIntervalNanosecond(toUInt64(86400e9 * number / {total})) AS t, \
             number % {workloads} AS w, \
             (w * 7 + 1 + intDiv(number, 3) % 3) % {workloads} AS dw, \
             w * {PODS} + number % {PODS} AS src_pod_n, \
             dw * {PODS} + intDiv(number, 7) % {PODS} AS dst_pod_n, \
             number % 10 = 9 AS external, \
             concat('ns-', toString(intDiv(w, {WORKLOADS}))) AS ns, \
             concat('app-', toString(w % {WORKLOADS})) AS wl, \
             concat(wl, '-', toString(src_pod_n % {PODS})) AS pod, \
             concat('ns-', toString(intDiv(dw, {WORKLOADS}))) AS dns, \
             concat('app-', toString(dw % {WORKLOADS})) AS dwl, \
             concat(dwl, '-', toString(dst_pod_n % {PODS})) AS dpod, \
             concat('node-', toString(src_pod_n % 20)) AS src_node \
           FROM numbers({first}, {n}))",
        workloads = NAMESPACES * WORKLOADS,
    )
}

fn api(endpoint: &str, (from, to): (u64, u64), rest: &str) -> String {
    format!("/api/{endpoint}?from={from}&to={to}&{rest}")
}

/// One request to the console: (ms, the table that answered).
fn console_ms(port: u16, path: &str) -> anyhow::Result<(f64, String)> {
    let start = Instant::now();
    let (status, body) = http_to(
        &format!("127.0.0.1:{port}"),
        "GET",
        path,
        "",
        Duration::from_secs(120),
    )?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status == 200, "console {status} for {path}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    let table = json["table"].as_str().unwrap_or("?").to_string();
    Ok((ms, table))
}

/// One query to ClickHouse directly, with URL parameters `params`: (ms, "").
fn clickhouse_ms(chdb: &Chdb, params: &str, sql: &str) -> anyhow::Result<(f64, String)> {
    let start = Instant::now();
    let (status, body) = http_to(
        &format!("127.0.0.1:{}", chdb.port),
        "POST",
        &format!("/?{params}"),
        sql,
        Duration::from_secs(120),
    )?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status == 200, "ClickHouse {status}: {body}");
    Ok((ms, String::new()))
}

fn time_request(
    opts: &Options,
    name: &str,
    mut once: impl FnMut() -> anyhow::Result<(f64, String)>,
) -> anyhow::Result<Timing> {
    let (_, answered_by) = once().with_context(|| name.to_string())?;
    let mut ms = Vec::new();
    for _ in 0..opts.repeats.max(1) {
        ms.push(once()?.0);
    }
    Ok(Timing {
        name: name.into(),
        answered_by,
        ms,
    })
}

fn render(opts: &Options, generate_s: f64, counts: &str, timings: &[Timing]) -> String {
    let mut md = String::new();
    let mut counts = counts.split('\t');
    let mut next = || counts.next().unwrap_or("?").to_string();
    let (raw, m1, h1) = (next(), next(), next());
    let _ = writeln!(md, "# Console latency: a day of flows\n");
    let _ = writeln!(
        md,
        "`cargo build --release -p flowlens-console -p flowlens-bench && target/release/flowlens-bench console --rows {}`\n",
        opts.rows
    );
    let _ = writeln!(
        md,
        "{}, {}\n",
        crate::probe::machine(),
        crate::probe::loadavg()
    );
    let _ = writeln!(
        md,
        "{raw} rows in `flows` over the last 24 h ({} namespaces × {} workloads × {} pods, \
         10 % of conversations to {EXTERNAL} external addresses), generated by ClickHouse in {generate_s:.0} s; \
         the views made {m1} rows of `flows_topology_1m` and {h1} of `flows_topology_1h`. \
         ClickHouse is chdb-core 26.9 behind the project's Python HTTP front. Wall time of each request \
         from this process, {} repetitions after one warm-up.\n",
        NAMESPACES, WORKLOADS, PODS, opts.repeats
    );
    let _ = writeln!(md, "| request | answered by | median ms | max ms |");
    let _ = writeln!(md, "|---|---|---:|---:|");
    for t in timings {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} |",
            t.name,
            if t.answered_by.is_empty() {
                "—"
            } else {
                &t.answered_by
            },
            t.median(),
            t.max()
        );
    }
    md
}

/// The console binary beside this one (`target/<profile>/flowlens-console`).
pub fn sibling_console() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join("flowlens-console")
}
