//! Writes a run's report: `<name>.md` (tables, the reproducing command, plots), `<name>.json`
//! (every number, input of the capacity calculator) and PNG plots drawn with plotters.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::monitor::Sample;
use crate::results::{Report, StageCost};

/// Fonts tried for plot text (Debian: fonts-dejavu-core); `FLOWLENS_BENCH_FONT` goes first.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a TTF as plotters' "sans-serif" (ab_glyph backend: no fontconfig/freetype).
pub(crate) fn register_font() -> anyhow::Result<()> {
    use std::sync::OnceLock;
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let env = std::env::var("FLOWLENS_BENCH_FONT").ok();
        let path = env
            .iter()
            .map(String::as_str)
            .chain(FONTS.iter().copied())
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!(
                    "no font for the plots: install fonts-dejavu-core or set FLOWLENS_BENCH_FONT \
                     to a .ttf (tried {FONTS:?})"
                )
            })?;
        let bytes: &'static [u8] = Box::leak(
            std::fs::read(path)
                .map_err(|e| format!("{path}: {e}"))?
                .into_boxed_slice(),
        );
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TTF"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

fn rate(v: Option<f64>) -> String {
    v.map_or("–".into(), |r| format!("{r:.0}"))
}

fn cost_table(out: &mut String, costs: &[StageCost]) {
    out.push_str(
        "| process | records/s over the phase | CPU s | CPU s per 1M records | max RSS (MiB) |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|\n");
    for c in costs {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.0} |",
            c.name,
            rate(c.records_per_s),
            c.cpu_s,
            c.cpu_s_per_million,
            mib(c.max_rss_bytes)
        );
    }
}

/// The markdown text of a report; plot file names relative to it.
pub fn markdown(r: &Report, name: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# flowlens bench: {name}\n");
    header(&mut o, r);
    summary(&mut o, r);
    phase_tables(&mut o, r);
    codec_table(&mut o, r);
    let _ = writeln!(o, "\n![throughput]({name}-throughput.png)\n");
    let _ = writeln!(o, "![consumer lag]({name}-lag.png)\n");
    let _ = writeln!(o, "![latency]({name}-latency.png)\n");
    let _ = writeln!(o, "![cpu]({name}-cpu.png)\n");
    method(&mut o);
    o
}

/// The run's circumstances: machine, load, services, topics, the command, the notes.
fn header(o: &mut String, r: &Report) {
    if r.quick {
        let _ = writeln!(
            o,
            "> **Smoke run (`--quick`)**: counts are far too small for rates, ratios or latencies \
             to mean anything (start-up and batch timers dominate). It checks that the harness \
             works end to end and that nothing is lost. Use the full run for numbers.\n"
        );
    }
    let _ = writeln!(o, "- machine: {}", r.machine);
    let _ = writeln!(o, "- finished: {}", r.started_utc);
    let _ = writeln!(
        o,
        "- load average (1/5/15 min) before: {}, after: {} (other work on the machine shares the cores)",
        r.load_before, r.load_after
    );
    let _ = writeln!(
        o,
        "- {}; the load generator and both stages run on this machine",
        r.services
    );
    let _ = writeln!(
        o,
        "- topics: {} partitions; records (Avro single-object) {:.0} bytes raw, {:.0} bytes \
         enriched on average",
        r.partitions, r.codec.raw_bytes_avg, r.codec.enriched_bytes_avg
    );
    let _ = writeln!(
        o,
        "- sink batch.max_age_ms: {}",
        r.sink_batch_age_ms.map_or_else(
            || {
                let default = flowlens_sink::config::BatchConfig::default().max_age_ms;
                format!("default ({default})")
            },
            |a| a.to_string()
        )
    );
    let _ = writeln!(o, "- reproduce: `{}`", r.command);
    for note in &r.notes {
        let _ = writeln!(o, "- {note}");
    }
    o.push('\n');
}

/// The summary table: throughput against the broker alone, cores, latency, losses.
fn summary(o: &mut String, r: &Report) {
    let l = &r.losses;
    let verdict = if l.missing == 0 && l.delivery_failures == 0 {
        "**zero losses**"
    } else {
        "**LOSSES**"
    };
    let _ = writeln!(o, "## Summary\n");
    o.push_str("| measure | value |\n|---|---:|\n");
    let _ = writeln!(
        o,
        "| broker alone, produce + consume concurrently (records/s; best of {}: {}) | {:.0} |",
        r.baseline.repeats.len(),
        r.baseline
            .repeats
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.baseline.pass_through_per_s
    );
    let _ = writeln!(
        o,
        "| broker alone, produce only (records/s) | {:.0} |",
        r.baseline.produce_only_per_s
    );
    let _ = writeln!(
        o,
        "| pipeline at saturation, produce → row in ClickHouse (records/s) | {:.0} |",
        r.saturation.end_to_end_per_s
    );
    let _ = writeln!(
        o,
        "| **pipeline / broker alone** (target ≥ 80 %) | **{:.0} %** |",
        r.ratio_to_broker * 100.0
    );
    let per_record = |costs: &[StageCost]| costs.iter().map(|c| c.cpu_s_per_million).sum::<f64>();
    let _ = writeln!(
        o,
        "| CPU per record, all processes: broker alone / pipeline at saturation (µs) | {:.2} / {:.2} |",
        per_record(&r.baseline.costs),
        per_record(&r.saturation.costs)
    );
    let _ = writeln!(
        o,
        "| **pipeline / broker alone per CPU second** (the ratio when both get the same cores: its ceiling on shared cores) | **{:.0} %** |",
        r.ratio_per_cpu * 100.0
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    for (phase, cpu) in [
        ("broker alone", &r.baseline.cpu),
        ("pipeline at saturation", &r.saturation.cpu),
        ("sustained", &r.sustained.cpu),
    ] {
        let _ = writeln!(
            o,
            "| cores used in phase \"{phase}\": the run's processes / the whole machine (of {cores}; the difference is other work) | {:.2} / {:.2} |",
            cpu.run_cores, cpu.machine_cores
        );
    }
    for c in &r.saturation.costs {
        if let (Some(rate), "enricher" | "sink") = (c.records_per_s, c.name.as_str()) {
            let _ = writeln!(
                o,
                "| {} stage at saturation ({:.0} records/s) / broker alone | {:.0} % |",
                c.name,
                rate,
                rate / r.baseline.pass_through_per_s * 100.0
            );
        }
    }
    for (stage, floor, what) in [
        (
            "enricher",
            &r.floors.relay,
            "a relay through its Kafka clients and settings, no decoding, join or encoding",
        ),
        (
            "sink",
            &r.floors.consume,
            "consuming only, with its consumer's settings, no decoding and no INSERT",
        ),
    ] {
        let _ = writeln!(
            o,
            "| the {stage}'s Kafka floor: {what} (µs of CPU per record, at {:.0} records/s) | {:.2} |",
            floor.records_per_s(),
            floor.us_per_record()
        );
        if let Some(c) = r.saturation.costs.iter().find(|c| c.name == stage) {
            let _ = writeln!(
                o,
                "| {stage} at saturation: µs of CPU per record / above its floor | {:.2} / {:.2} |",
                c.cpu_s_per_million,
                c.cpu_s_per_million - floor.us_per_record()
            );
        }
    }
    let _ = writeln!(
        o,
        "| sustained rate (records/s, for {:.0} s) | {:.0} |",
        r.sustained.records as f64 / r.sustained.target_rate.max(1.0),
        r.sustained.target_rate
    );
    let _ = writeln!(
        o,
        "| end-to-end latency at the sustained rate, p50 / p99 / max (ms) | {:.0} / {:.0} / {:.0} |",
        r.sustained.latency_ms_p50, r.sustained.latency_ms_p99, r.sustained.latency_ms_max
    );
    let _ = writeln!(
        o,
        "| end-to-end latency at saturation (backlog included), p50 / p99 / max (ms) | {:.0} / {:.0} / {:.0} |",
        r.saturation.latency_ms_p50, r.saturation.latency_ms_p99, r.saturation.latency_ms_max
    );
    let _ = writeln!(
        o,
        "| records sent / rows in ClickHouse / unique ids / missing / duplicates | {} / {} / {} / {} / {} → {verdict} |",
        l.sent, l.rows, l.unique_ids, l.missing, l.duplicates
    );
    let _ = writeln!(
        o,
        "| delivery failures / dead-lettered | {} / {:.0} |\n",
        l.delivery_failures,
        l.dead_lettered.abs()
    );
}

/// Per-process costs of each phase.
fn phase_tables(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "## Broker alone ({} records, {:.1} s; the best repetition)\n",
        r.baseline.records, r.baseline.seconds
    );
    cost_table(o, &r.baseline.costs);
    let _ = writeln!(
        o,
        "\n## Pipeline at saturation ({} records, {:.1} s)\n",
        r.saturation.records, r.saturation.seconds
    );
    cost_table(o, &r.saturation.costs);
    let _ = writeln!(
        o,
        "\n## Sustained rate ({:.0} records/s, {} records, {:.1} s)\n",
        r.sustained.target_rate, r.sustained.records, r.sustained.seconds
    );
    cost_table(o, &r.sustained.costs);
}

/// The codec costs measured in the load generator's process.
fn codec_table(o: &mut String, r: &Report) {
    let c = &r.codec;
    let _ = writeln!(
        o,
        "\n## Where a record's CPU goes outside Kafka and ClickHouse\n\n\
         Single thread, in the load generator's process before the services start, over {} \
         generated records (µs per record; the stages' CPU per record above is the same unit):\n\n\
         | stage | step | path | µs per record |\n|---|---|---|---:|\n\
         | load generator | RawFlow → Avro (`flowlens_schemas::encode`) | generic (the collector has its own encoder) | {:.2} |\n\
         | enricher | Avro → RawFlow (`reader::raw_flow`) | **as it runs** | {:.2} |\n\
         | enricher | interface join + EnrichedFlow written straight to Avro (`join::Joined::new(..).encode`) | **as it runs** | {:.2} |\n\
         | sink | Avro → RowBinary row (`decode::write_row`) | **as it runs** | {:.2} |\n\
         | sink | Avro → `FlowRow` (`decode::flow_row`) | fast decoder, owned row | {:.2} |\n\
         | enricher | Avro → RawFlow (`flowlens_schemas::decode`) | generic, replaced | {:.2} |\n\
         | enricher | EnrichedFlow → Avro (`flowlens_schemas::encode`) | generic, replaced | {:.2} |\n\
         | sink | Avro → EnrichedFlow (`flowlens_schemas::decode`) | generic, replaced | {:.2} |\n\
         | sink | `FlowRow::try_from(EnrichedFlow)` | generic, replaced | {:.2} |\n\n\
         The stages' paths add up to {:.2} µs (enricher) and {:.2} µs (sink) per record; the rest \
         of their measured CPU is the Kafka clients (fetch, decompress, produce, compress, \
         acknowledgements, offsets), batching, LZ4 and HTTP.",
        c.records,
        c.encode_raw_us,
        c.enricher_decode_raw_us,
        c.enricher_join_encode_us,
        c.sink_write_row_us,
        c.sink_flow_row_us,
        c.decode_raw_us,
        c.encode_enriched_us,
        c.decode_enriched_us,
        c.to_row_us,
        c.enricher_decode_raw_us + c.enricher_join_encode_us,
        c.sink_write_row_us,
    );
}

/// How the numbers are measured.
fn method(o: &mut String) {
    let age = flowlens_sink::config::BatchConfig::default().max_age_ms;
    let _ = write!(
        o,
        "## How it is measured\n\n\
         - Records are synthetic raw flows (Zipf-distributed hosts, pods, services and ports; \
         Pareto packet counts; 30 % IPv6) produced with the collector's producer settings; each \
         carries its sequence number in `time_flow_start` (run base + n ns), so the loss check \
         counts distinct ids in ClickHouse, exactly.\n\
         - The ClickHouse engine is named above (`--clickhouse chdb|server18`); the loss check \
         and the latency run on it with its own types (DateTime64 on chdb, Int64 ns/ms in the \
         18.16 table).\n\
         - The enricher and the sink each run in their own process (`flowlens-bench stage ...`, \
         calling `flowlens_enricher::run` / `flowlens_sink::run` with their default settings); \
         CPU seconds and RSS come from /proc for every process; records/s per stage from the \
         stages' own Prometheus counters.\n\
         - Consumer lag: records produced (acknowledged) minus the consumer group's committed \
         offsets (enricher on the raw topic; sink on the enriched topic, against the enricher's \
         output count).\n\
         - Latency: `time_inserted` (set by ClickHouse when the row is written) minus \
         `time_exported` (set by the load generator when it sends): flow exported → row visible. \
         A collector adds up to its scan interval before that. The sink's batch age \
         (`batch.max_age_ms`, default {age}) dominates it at moderate rates.\n\
         - The ratio compares the pipeline (two broker hops, decode/join/encode, ClickHouse \
         inserts) with one broker hop and no processing, in the same run, on the same cores. \
         Its per-CPU form divides the CPU per record (all processes) of the broker-alone phase \
         by the pipeline's: what the throughput ratio is when both phases get the same cores, \
         whatever share other work leaves them (the \"cores used\" rows).\n",
    );
}

fn rates(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    // Samples taken back to back at a phase boundary would turn /proc's 10 ms CPU ticks into
    // spikes: keep samples at least 200 ms apart.
    let mut kept: Vec<&Sample> = Vec::new();
    for s in samples {
        if kept.last().is_none_or(|k| s.t_s - k.t_s >= 0.2) {
            kept.push(s);
        }
    }
    kept.windows(2)
        .filter(|w| w[1].t_s > w[0].t_s)
        .map(|w| {
            (
                w[1].t_s,
                ((f(w[1]) - f(w[0])) / (w[1].t_s - w[0].t_s)).max(0.0),
            )
        })
        .collect()
}

type Series = (String, Vec<(f64, f64)>);

/// Colours of the series, in order (the same in every plot).
pub(crate) const PALETTE: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// A chart of the bench's plots: f64 on both axes, drawn into a PNG.
pub(crate) type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws the series' legend, boxed, in the upper right corner.
pub(crate) fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

fn line_chart(path: &Path, title: &str, y_label: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_label)
        .y_label_formatter(&|v| {
            if *v >= 10_000.0 {
                format!("{:.0}k", v / 1000.0)
            } else if *v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .draw()?;
    for (i, (label, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// Writes `<dir>/<name>.md`, `.json` and the plots; returns the markdown path.
pub fn write(r: &Report, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    register_font()?;
    let s = &r.samples;
    line_chart(
        &dir.join(format!("{name}-throughput.png")),
        "Throughput per stage (warm-up, baseline, saturation, sustained)",
        "records/s",
        &[
            ("produced (acked)".into(), rates(s, |x| x.produced as f64)),
            ("enricher out".into(), rates(s, |x| x.enricher_out)),
            ("sink inserted".into(), rates(s, |x| x.sink_inserted)),
        ],
    )?;
    line_chart(
        &dir.join(format!("{name}-lag.png")),
        "Consumer lag (records not yet committed)",
        "records",
        &[
            (
                "enricher group, raw topic".into(),
                s.iter().map(|x| (x.t_s, x.lag_enricher)).collect(),
            ),
            (
                "sink group, enriched topic".into(),
                s.iter().map(|x| (x.t_s, x.lag_sink)).collect(),
            ),
        ],
    )?;
    line_chart(
        &dir.join(format!("{name}-latency.png")),
        "End-to-end latency at the sustained rate (exported -> row in ClickHouse)",
        "ms",
        &[
            (
                "p50".into(),
                r.latency.iter().map(|p| (p.t_s, p.p50_ms)).collect(),
            ),
            (
                "p99".into(),
                r.latency.iter().map(|p| (p.t_s, p.p99_ms)).collect(),
            ),
            (
                "max".into(),
                r.latency.iter().map(|p| (p.t_s, p.max_ms)).collect(),
            ),
        ],
    )?;
    let cpu: Vec<Series> = r
        .processes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), rates(s, |x| x.cpu_s[i])))
        .collect();
    line_chart(
        &dir.join(format!("{name}-cpu.png")),
        "CPU per process (cores; this machine has 2)",
        "cores",
        &cpu,
    )?;
    let md = dir.join(format!("{name}.md"));
    std::fs::write(&md, markdown(r, name))?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(r)?,
    )?;
    Ok(md)
}
