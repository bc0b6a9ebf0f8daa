//! `flowlens-bench`: `run` (the load test, writes a report), `capacity` (the calculator),
//! `plot-collector` (the collector benchmark's plot) and the
//! hidden `stage` subcommand the harness uses to run the enricher or the sink in a process of
//! its own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flowlens_bench::capacity::{self, Costs, Params};
use flowlens_bench::gen::Shape;
use flowlens_bench::services::{ClickHouseTarget, Engine};
use flowlens_bench::{report, run};
use flowlens_runtime::telemetry::{init_logging, init_metrics};
use flowlens_runtime::{load_config, Shutdown};

/// Load tests and capacity planning for the flowlens pipeline.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Starts tansu and a ClickHouse (the chdb front, or clickhouse-server 18.16), runs the
    /// broker baseline, the pipeline at saturation and at a sustained rate, and writes
    /// <out>/<name>.md, .json and PNG plots.
    Run(RunArgs),
    /// Partitions, enricher/sink instances and ClickHouse shards for N nodes × F flows/s, from
    /// the costs measured by a run.
    Capacity(CapacityArgs),
    /// Draws the collector benchmark's table (written by bench/collector/run.sh) as a PNG.
    PlotCollector {
        /// The table.
        #[arg(long, default_value = "bench/results/collector.md")]
        input: PathBuf,
        /// The plot.
        #[arg(long, default_value = "bench/results/collector.png")]
        output: PathBuf,
    },
    /// Times the console's topology and explorer over a day of generated flows in ClickHouse
    /// (the chdb front) beside ClickHouse asked directly, and writes <out>/console.md.
    Console {
        /// Generated rows, spread over the last 24 h.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Timed repetitions of every request (after one warm-up).
        #[arg(long, default_value_t = 5)]
        repeats: u32,
        /// The console binary [default: flowlens-console beside this binary].
        #[arg(long)]
        console: Option<PathBuf>,
        /// Directory of the report.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// No progress messages.
        #[arg(long)]
        no_progress: bool,
    },
    /// (internal) runs one stage from FLOWLENS_<STAGE>__* variables, like its own binary.
    #[command(hide = true)]
    Stage { name: String },
    /// (internal) the floor under the enricher: relays `records` records of `from` to `to`
    /// through the enricher's clients and settings, then prints its CPU (bench/src/relay.rs).
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        from: String,
        /// Without it, only consumes.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        group: String,
        #[arg(long)]
        records: u64,
    },
    /// (internal) HTTP relay to clickhouse-server 18.16 that drops the INSERT settings it does
    /// not know (see bench/src/server18.rs).
    #[command(hide = true)]
    SettingsFilter {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A smoke run of a few seconds (small counts; numbers are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Records of the baseline and of the saturation phase [default: 2000000, quick: 5000]: a
    /// saturation phase long enough to be the pipeline's work rather than its filling and
    /// draining (batches of up to 50,000 rows per partition, 1 s of batch age).
    #[arg(long)]
    records: Option<u64>,
    /// Repetitions of the broker-alone baseline, the best kept [default: 3, quick: 1].
    #[arg(long)]
    baseline_repeats: Option<u32>,
    /// Length of the sustained phase in seconds [default: 60, quick: 2].
    #[arg(long)]
    duration: Option<f64>,
    /// Sustained rate in records/s; 0 = 60 % of the measured saturation throughput.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Distinct nodes (hosts) in the synthetic traffic.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Share of IPv6 flows.
    #[arg(long, default_value_t = 0.3)]
    ipv6_share: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sampling period of the time series (ms).
    #[arg(long, default_value_t = 500)]
    sample_ms: u64,
    /// The sink's batch.max_age_ms [default: the sink's default, quick: 500].
    #[arg(long)]
    sink_batch_age_ms: Option<u64>,
    /// An existing Kafka cluster (host:port,...) instead of a local tansu. The run creates
    /// topics named bench_<pid>_..._{raw,interfaces,enriched,dlq,baseline} and deletes them at
    /// the end.
    #[arg(long)]
    brokers: Option<String>,
    /// The local ClickHouse engine: `chdb` (ClickHouse 26.9 engine behind the Python HTTP
    /// front, the project's migrations with their rollups) or `server18` (Debian's native
    /// clickhouse-server 18.16, the byte-compatible table of sql/clickhouse18/flows_minimal.sql,
    /// no rollups). The report's default name gets a `-server18` suffix for the latter.
    #[arg(long, value_enum, default_value_t = Engine::Chdb)]
    clickhouse: Engine,
    /// An existing ClickHouse (http://host:port) instead of the local chdb front; the sink
    /// creates the `flows` table there if missing. Rows of the run stay (host bench_<pid>_...).
    #[arg(long)]
    clickhouse_url: Option<String>,
    #[arg(long, default_value = "default")]
    clickhouse_database: String,
    #[arg(long, default_value = "")]
    clickhouse_user: String,
    #[arg(
        long,
        env = "FLOWLENS_BENCH_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    clickhouse_password: String,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Report name (files <name>.md, <name>.json, <name>-*.png).
    #[arg(long)]
    name: Option<String>,
    /// No progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, clap::Args)]
struct CapacityArgs {
    /// Report JSON of a run whose sustained-phase costs are used.
    #[arg(long, default_value = "bench/results/full.json")]
    results: PathBuf,
    /// Node counts to plan for (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10u64, 100, 1000, 10000])]
    nodes: Vec<u64>,
    /// Flow records per second per node.
    #[arg(long, default_value_t = 200.0)]
    flows_per_node: f64,
    #[arg(long, default_value_t = 2.0)]
    cores_per_instance: f64,
    #[arg(long, default_value_t = 0.6)]
    utilisation: f64,
    #[arg(long, default_value_t = 20000.0)]
    records_per_partition: f64,
    #[arg(long, default_value_t = 16.0)]
    clickhouse_cores_per_shard: f64,
    /// Plan ClickHouse shards by rows/s per shard instead of the measured (stand-in) cost.
    #[arg(long)]
    clickhouse_rows_per_shard: Option<f64>,
    /// Take the ClickHouse cost from this report instead (e.g. a `--clickhouse server18` run:
    /// a native server rather than the chdb engine behind its Python front).
    #[arg(long)]
    clickhouse_from: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => bench(args),
        Cmd::Capacity(args) => plan(args),
        Cmd::PlotCollector { input, output } => plot_collector(&input, &output),
        Cmd::Console {
            rows,
            repeats,
            console,
            out,
            no_progress,
        } => flowlens_bench::console::run(
            &flowlens_bench::console::Options {
                rows,
                repeats,
                console: console.unwrap_or_else(flowlens_bench::console::sibling_console),
                out,
            },
            &flowlens_bench::progress::Progress::new(!no_progress),
        ),
        Cmd::Stage { name } => stage(&name),
        Cmd::Relay {
            brokers,
            from,
            to,
            group,
            records,
        } => flowlens_bench::relay::relay(&brokers, &from, to.as_deref(), &group, records),
        Cmd::SettingsFilter { listen, upstream } => flowlens_bench::server18::serve_filter(
            &listen,
            &upstream,
            flowlens_bench::server18::UNKNOWN_TO_18,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowlens-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(a: RunArgs) -> anyhow::Result<()> {
    // The reproducing command goes into the report: never a password.
    let mut shown = Vec::new();
    let mut hide_next = false;
    for arg in std::env::args().skip(1) {
        if hide_next {
            shown.push("***".to_string());
            hide_next = false;
        } else if arg == "--clickhouse-password" {
            hide_next = true;
            shown.push(arg);
        } else if arg.starts_with("--clickhouse-password=") {
            shown.push("--clickhouse-password=***".into());
        } else {
            shown.push(arg);
        }
    }
    let command = format!(
        "cargo run --release -p flowlens-bench -- {}",
        shown.join(" ")
    );
    let opts = run::Options {
        records: a.records.unwrap_or(if a.quick { 5_000 } else { 2_000_000 }),
        duration_s: a.duration.unwrap_or(if a.quick { 2.0 } else { 60.0 }),
        baseline_repeats: a.baseline_repeats.unwrap_or(if a.quick { 1 } else { 3 }),
        rate: a.rate,
        partitions: a.partitions,
        warmup: if a.quick { 500 } else { 5_000 },
        sample_ms: if a.quick {
            a.sample_ms.min(250)
        } else {
            a.sample_ms
        },
        sink_batch_age_ms: a.sink_batch_age_ms.or(a.quick.then_some(500)),
        seed: a.seed,
        shape: Shape {
            hosts: a.hosts,
            ipv6_share: a.ipv6_share,
            ..Default::default()
        },
        out_dir: a.out.clone(),
        command,
        progress: !a.no_progress,
        quick: a.quick,
        brokers: a.brokers.clone(),
        clickhouse: a.clickhouse_url.clone().map(|url| ClickHouseTarget {
            url,
            database: a.clickhouse_database.clone(),
            user: a.clickhouse_user.clone(),
            password: a.clickhouse_password.clone(),
        }),
        engine: a.clickhouse,
    };
    let name = a.name.unwrap_or_else(|| {
        let base = if a.quick { "quick" } else { "full" };
        match a.clickhouse {
            Engine::Chdb => base.to_string(),
            Engine::Server18 => format!("{base}-server18"),
        }
    });
    let r = run::run(&opts)?;
    let md = report::write(&r, &opts.out_dir, &name)?;
    println!(
        "pipeline {:.0} records/s = {:.0} % of the broker alone ({:.0}/s); sustained {:.0}/s: \
         latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; sent {}, missing {}, duplicates {}",
        r.saturation.end_to_end_per_s,
        r.ratio_to_broker * 100.0,
        r.baseline.pass_through_per_s,
        r.sustained.target_rate,
        r.sustained.latency_ms_p50,
        r.sustained.latency_ms_p99,
        r.sustained.latency_ms_max,
        r.losses.sent,
        r.losses.missing,
        r.losses.duplicates
    );
    println!("report: {}", md.display());
    anyhow::ensure!(
        r.losses.missing == 0 && r.losses.delivery_failures == 0,
        "records were lost: {:?}",
        r.losses
    );
    Ok(())
}

fn plot_collector(input: &std::path::Path, output: &std::path::Path) -> anyhow::Result<()> {
    use flowlens_bench::collector_plot;
    let table =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let rows = collector_plot::parse(&table).with_context(|| format!("in {}", input.display()))?;
    collector_plot::draw(&rows, output)?;
    println!("wrote {}", output.display());
    Ok(())
}

fn plan(a: CapacityArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.results).with_context(|| {
        format!(
            "reading {} (run `flowlens-bench run` first)",
            a.results.display()
        )
    })?;
    let mut costs = Costs::from_report(&serde_json::from_str(&text)?)?;
    if let Some(path) = &a.clickhouse_from {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        costs.clickhouse_cpu_s_per_m =
            Costs::from_report(&serde_json::from_str(&text)?)?.clickhouse_cpu_s_per_m;
        println!(
            "ClickHouse cost from {} (the other costs from {}).\n",
            path.display(),
            a.results.display()
        );
    }
    let params = Params {
        nodes: 0,
        flows_per_node_s: a.flows_per_node,
        cores_per_instance: a.cores_per_instance,
        target_utilisation: a.utilisation,
        records_per_partition_s: a.records_per_partition,
        clickhouse_cores_per_shard: a.clickhouse_cores_per_shard,
        clickhouse_rows_per_shard_s: a.clickhouse_rows_per_shard,
    };
    print!("{}", capacity::table(&costs, &params, &a.nodes));
    Ok(())
}

/// One stage with its configuration from the environment, exactly as its binary loads it.
fn stage(name: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.on_signals()?;
        match name {
            "enricher" => {
                let config: flowlens_enricher::Config =
                    load_config(None, flowlens_enricher::config::ENV_PREFIX)?;
                init_logging(&config.telemetry);
                init_metrics(&config.telemetry)?;
                flowlens_enricher::run(config, shutdown).await
            }
            "sink" => {
                let config = flowlens_sink::Config::load(None)?;
                init_logging(&config.telemetry);
                init_metrics(&config.telemetry)?;
                flowlens_sink::run(config, shutdown).await
            }
            other => anyhow::bail!("unknown stage `{other}` (enricher or sink)"),
        }
    })
}
