//! Sink throughput per core of sink CPU: decode (Avro single-object → RowBinary bytes in the
//! batch buffer, `decode::write_row`) and insert (LZ4 over HTTP into ClickHouse, one INSERT per
//! batch with its deduplication token, `Inserter::write_encoded`), as the sink does them, measured separately with the process's CPU time
//! (getrusage: user + system, all threads), so ClickHouse's own work is not counted.
//! The Native rewrite the insert does by default (`NativeLayout::write_block`) is also timed
//! alone, without a server.
//!
//! ```text
//! scripts/stack/stack.sh start     # or any ClickHouse >= 24.8 HTTP endpoint
//! cargo run --release -p flowlens-sink --example throughput -- [URL] [ROWS] [BATCH]
//! ```
//! Defaults: http://127.0.0.1:18123, 1,000,000 rows, 50,000 rows per batch; a 4th argument
//! `novalidate` skips the one-time column type check (clickhouse.validation = false). Uses the database
//! `bench_sink` (created, migrated, and emptied first). Prints a Markdown table row.

use std::time::{Duration, Instant};

use flowlens_sink::config::ClickHouseConfig;
use flowlens_sink::insert::Inserter;
use flowlens_sink::row::{sample_flow_at, FlowRow};
use flowlens_testkit::cpu_time;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:18123".into());
    let n: usize = args.get(2).map_or(Ok(1_000_000), |s| s.parse())?;
    let batch: usize = args.get(3).map_or(Ok(50_000), |s| s.parse())?;
    // "novalidate": clickhouse.validation = false (no column type check before the first insert).
    let validation = args.get(4).map(String::as_str) != Some("novalidate");

    // Input: n encoded records, as the sink receives them from Kafka (recent times: TTL).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let base = (now - 3600) * 1_000_000_000;
    let messages: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut buf = Vec::with_capacity(256);
            flowlens_schemas::encode(&sample_flow_at(i as u32, base), &mut buf).unwrap();
            buf
        })
        .collect();
    let avg_len = messages.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;

    // The generic decoder (apache-avro `Value`), on a sample, for comparison.
    let sample = n.min(100_000);
    let cpu0 = cpu_time(libc::RUSAGE_SELF);
    for m in &messages[..sample] {
        let flow = flowlens_schemas::decode::<flowlens_schemas::EnrichedFlow>(m)?;
        std::hint::black_box(FlowRow::try_from(flow)?);
    }
    let generic_per_core = sample as f64 / (cpu_time(libc::RUSAGE_SELF) - cpu0).as_secs_f64();

    // Decode: what `Sink::handle` does per record: Avro → RowBinary appended to the batch.
    let (cpu0, wall0) = (cpu_time(libc::RUSAGE_SELF), Instant::now());
    let mut batches: Vec<(Vec<u8>, usize)> = Vec::new();
    for (k, chunk) in messages.chunks(batch).enumerate() {
        let mut data = Vec::with_capacity(chunk.len() * 256);
        for (j, m) in chunk.iter().enumerate() {
            let offset = (k * batch + j) as i64;
            let at = flowlens_sink::decode::Position {
                topic: "flowlens.flows.enriched",
                partition: 0,
                offset,
                stream: [1; 16],
                timestamp_ms: 1_700_000_000_000 + offset,
            };
            flowlens_sink::decode::write_row(m, &at, &mut data)
                .map_err(|(_, e)| anyhow::anyhow!(e))?;
        }
        batches.push((data, chunk.len()));
    }
    let (decode_cpu, decode_wall) = (cpu_time(libc::RUSAGE_SELF) - cpu0, wall0.elapsed());

    // The Native rewrite the insert does when the table's types were checked, alone (no
    // server): every batch as one block, for the migrations' column types.
    let types: Vec<(String, String)> = flowlens_sink::row::COLUMN_TYPES
        .iter()
        .map(|(name, accepted)| (name.to_string(), accepted[0].to_owned()))
        .collect();
    let layout = flowlens_sink::row::NativeLayout::for_table(&types)
        .ok_or_else(|| anyhow::anyhow!("no Native layout for the migrations' columns"))?;
    let cpu0 = cpu_time(libc::RUSAGE_SELF);
    let mut block = Vec::new();
    for (data, rows) in &batches {
        block.clear();
        layout.write_block(data, *rows, &mut block)?;
    }
    let native_cpu = cpu_time(libc::RUSAGE_SELF) - cpu0;

    // Insert: one INSERT per batch with its token, into a fresh database.
    let config = ClickHouseConfig {
        url: url.clone(),
        database: "bench_sink".into(),
        timeout_ms: 600_000,
        validation,
        ..Default::default()
    };
    let migrations = flowlens_sink::migrate::embedded()?;
    flowlens_sink::migrate::apply(&config, &migrations).await?;
    let inserter = Inserter::new(&config)?;
    inserter
        .client()
        .query("TRUNCATE TABLE flows")
        .execute()
        .await?;
    let (cpu0, wall0) = (cpu_time(libc::RUSAGE_SELF), Instant::now());
    for (k, (data, len)) in batches.iter().enumerate() {
        let token = format!("bench/0/{}-{}", k * batch, k * batch + len - 1);
        inserter.write_encoded(data, *len, Some(&token)).await?;
    }
    let (insert_cpu, insert_wall) = (cpu_time(libc::RUSAGE_SELF) - cpu0, wall0.elapsed());
    let stored: u64 = inserter
        .client()
        .query("SELECT count() FROM flows")
        .fetch_one()
        .await?;
    anyhow::ensure!(stored == n as u64, "{stored} rows stored, {n} inserted");

    let per_core = |cpu: Duration| n as f64 / cpu.as_secs_f64();
    println!("generic decoder (apache-avro Value + FlowRow::try_from): {generic_per_core:.0} rows/s/core");
    println!(
        "Native rewrite (NativeLayout::write_block, no server): {:.3} µs per row",
        native_cpu.as_secs_f64() * 1e6 / n as f64
    );
    let total_cpu = decode_cpu + insert_cpu;
    println!(
        "| rows | batch | avg record | decode CPU | insert CPU (sink side) | decode rows/s/core | insert rows/s/core | sink rows/s/core | decode share | insert wall (incl. ClickHouse) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {batch} | {avg_len:.0} B | {:.2} s ({:.2} s wall) | {:.2} s | {:.0} | {:.0} | {:.0} | {:.0} % | {:.2} s ({:.0} rows/s) |",
        decode_cpu.as_secs_f64(),
        decode_wall.as_secs_f64(),
        insert_cpu.as_secs_f64(),
        per_core(decode_cpu),
        per_core(insert_cpu),
        per_core(total_cpu),
        100.0 * decode_cpu.as_secs_f64() / total_cpu.as_secs_f64(),
        insert_wall.as_secs_f64(),
        n as f64 / insert_wall.as_secs_f64(),
    );
    Ok(())
}
