//! User-space export cost of the collector: Avro encoding of `RawFlow` with the generic
//! apache-avro encoder vs the hand-written one (`flowlens_collector::encode`), then publishing a
//! whole scan's records to a real Kafka-protocol broker (tansu, started here) the way the
//! collector does, with the process's CPU time (getrusage: user + system, all threads, so
//! librdkafka's compression and I/O threads count; the broker is another process) and its
//! resident memory.
//!
//! ```text
//! cargo build --release -p flowlens-collector --example export_throughput
//! $CARGO_TARGET_DIR/release/examples/export_throughput [FLOWS] [MODE] [MAX_IN_FLIGHT] [BROKER]
//! ```
//! FLOWS: records per scan (default 1,000,000). MODE, all through the collector's
//! `Publisher::publish_flows` (hand-written encoder, at most MAX_IN_FLIGHT records queued,
//! default `publish::DEFAULT_MAX_IN_FLIGHT`) except `old`:
//! * `counting` (default): `Publisher::from_config`, delivery reports counted per call;
//! * `futures`: `Publisher::new(FutureProducer)`, one delivery future per record;
//! * `old`: the naive publish path, the baseline (generic encoder, every record queued at once,
//!   then all delivery futures awaited);
//! * `stream`: like `counting`, but the records are made one at a time while publishing
//!   (`Publisher::publish_flow_iter`), never all in memory: CPU includes making them;
//! * `trickle`: `counting`, FLOWS records every 2 s for 20 s (10 scans): CPU share of a core,
//!   background threads included (a quiet node's 16 flows); `trickle-futures` the same
//!   through `Publisher::new(FutureProducer)`.
//!
//! BROKER: use this broker (host:port) instead of starting tansu. Producer settings are the
//! collector's (`KafkaConfig::producer_config`: idempotent, acks=all, lz4, linger 20 ms). Run one
//! mode per process: resident memory freed by one run would hide the next one's peak. Results:
//! bench/results/collector-export.md.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowlens_collector::encode::encode_raw_flow;
use flowlens_collector::publish::{Delivery, Publisher, DEFAULT_MAX_IN_FLIGHT};
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_schemas::{encode, ip_to_v6, Direction, Process, RawFlow};
use flowlens_testkit::cpu_time;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A `kB` line of /proc/self/status, in MB.
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One conversation as the collector would report it: mostly IPv4 TCP/UDP, some IPv6 and ICMP,
/// some ended, some with a local process.
fn realistic(i: u32, base_ns: i64) -> RawFlow {
    let proto = match i % 20 {
        0 => 1,
        1..=6 => 17,
        _ => 6,
    };
    let (src_addr, dst_addr) = if i.is_multiple_of(5) {
        (
            Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i)),
            "2001:db8:ffff::53".parse().unwrap(),
        )
    } else {
        (
            ip_to_v6(Ipv4Addr::from(0x0a00_0000 + i).into()),
            ip_to_v6(Ipv4Addr::new(10, 96, (i % 7) as u8, 10).into()),
        )
    };
    let packets = i64::from(i % 97) + 1;
    let start = base_ns + i64::from(i % 2_000) * 1_000_000;
    RawFlow {
        host: "node-17.cluster.example".into(),
        ifindex: 2 + (i % 3) as i32,
        direction: if i.is_multiple_of(2) {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        time_flow_start_ns: start,
        time_flow_end_ns: start + 1_500_000_000,
        time_exported_ns: base_ns + 2_000_000_000,
        etype: if src_addr.to_ipv4_mapped().is_some() {
            0x0800
        } else {
            0x86DD
        },
        vlan_id: 0,
        proto,
        src_addr,
        dst_addr,
        src_port: if proto == 1 {
            0
        } else {
            32_768 + (i % 28_000) as i32
        },
        dst_port: match proto {
            1 => 0,
            17 => 53,
            _ => 443,
        },
        icmp_type: if proto == 1 { 8 } else { 0 },
        icmp_code: 0,
        tcp_flags: if proto == 6 { 0x1b } else { 0 },
        packets,
        bytes: packets * 870,
        sampling_rate: 1,
        reverse_packets: packets - 1,
        reverse_bytes: (packets - 1) * 1_200,
        reverse_tcp_flags: if proto == 6 { 0x12 } else { 0 },
        end_reason: match (proto, i % 10) {
            (6, 0) => "fin".into(),
            (6, 1) => "rst".into(),
            (_, 2) => "idle".into(),
            _ => String::new(),
        },
        rtt_ns: if proto == 6 {
            150_000 + i64::from(i % 1_000) * 100
        } else {
            0
        },
        retransmits: i64::from(proto == 6 && i.is_multiple_of(50)),
        src_process: (i % 10 == 3).then(|| Process {
            pid: 1_000 + (i % 30_000) as i32,
            comm: "envoy".into(),
            cgroup_id: 12_345 + i64::from(i % 40),
        }),
        ..RawFlow::default()
    }
}

/// The naive publish path (the baseline): generic encoder, every record queued, then every future.
async fn publish_old(producer: &FutureProducer, topic: &str, flows: &[RawFlow]) -> Delivery {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let mut pending = Vec::with_capacity(flows.len());
    let mut buf = Vec::with_capacity(256);
    for flow in flows {
        buf.clear();
        encode(flow, &mut buf).unwrap();
        loop {
            match producer.send_result(FutureRecord::<str, [u8]>::to(topic).payload(&buf)) {
                Ok(f) => break pending.push(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err((e, _)) => panic!("producing: {e}"),
            }
        }
    }
    let mut outcome = Delivery::default();
    for r in futures::future::join_all(pending).await {
        match r {
            Ok(Ok(_)) => outcome.delivered += 1,
            _ => outcome.failed += 1,
        }
    }
    outcome
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let mode = args.get(2).map_or("counting", String::as_str).to_owned();
    anyhow::ensure!(
        [
            "counting",
            "futures",
            "old",
            "stream",
            "trickle",
            "trickle-futures"
        ]
        .contains(&mode.as_str()),
        "MODE is `counting`, `futures`, `old`, `stream`, `trickle` or `trickle-futures`"
    );
    let max_in_flight: usize = args
        .get(3)
        .map_or(Ok(DEFAULT_MAX_IN_FLIGHT), |s| s.parse())?;

    let base_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    let mut flows: Vec<RawFlow> = (0..n).map(|i| realistic(i, base_ns)).collect();

    // Same bytes both ways (checked on every record, untimed).
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut total_len = 0usize;
    for f in &flows {
        a.clear();
        b.clear();
        encode(f, &mut a)?;
        encode_raw_flow(f, &mut b)?;
        anyhow::ensure!(a == b, "encoders differ on {f:?}");
        total_len += b.len();
    }
    anyhow::ensure!(
        flowlens_collector::encode::is_fast(),
        "hand-written path not active"
    );

    // Encoding alone, one thread, into a reused buffer (what the publisher does per record).
    let time_encoder = |fast: bool| -> anyhow::Result<f64> {
        let mut buf = Vec::with_capacity(512);
        let cpu0 = cpu_time(libc::RUSAGE_THREAD);
        for f in &flows {
            buf.clear();
            if fast {
                encode_raw_flow(f, &mut buf)?;
            } else {
                encode(f, &mut buf)?;
            }
            std::hint::black_box(&buf);
        }
        Ok((cpu_time(libc::RUSAGE_THREAD) - cpu0).as_nanos() as f64 / f64::from(n))
    };
    let generic_ns = time_encoder(false)?;
    let fast_ns = time_encoder(true)?;
    // getrusage counts in 1-4 ms steps: too coarse for a handful of records.
    if n >= 10_000 {
        println!(
            "encode {n} records ({:.0} B avg): generic {generic_ns:.0} ns/record, \
             hand-written {fast_ns:.0} ns/record, {:.1}x",
            total_len as f64 / f64::from(n),
            generic_ns / fast_ns
        );
    }
    if mode == "stream" {
        // Made again while publishing; give the memory back first.
        flows = Vec::new();
        // SAFETY: no arguments beyond the padding to keep; returns freed heap to the system.
        unsafe { libc::malloc_trim(0) };
    }

    // Publishing through a real broker.
    let tansu;
    let broker = match args.get(4) {
        Some(b) => b.clone(),
        None => {
            tansu = flowlens_testkit::Tansu::start();
            tansu.broker()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let topic = flowlens_testkit::unique("export_bench");
    let kafka = KafkaConfig {
        brokers: vec![broker.clone()],
        ..KafkaConfig::default()
    };
    runtime.block_on(kafka.ensure_topics(&[(&topic, false)]))?;
    // `futures` and `old` share one FutureProducer (`old` warms up through the publisher).
    let producer: Option<FutureProducer> = match mode.as_str() {
        "futures" | "old" | "trickle-futures" => Some(kafka.producer_config().create()?),
        _ => None,
    };
    let publisher = match &producer {
        None => Publisher::from_config(&kafka.producer_config(), &topic, "unused")?,
        Some(p) => Publisher::new(p.clone(), &topic, "unused"),
    }
    .with_max_in_flight(max_in_flight);
    // Warm-up: connections, metadata, producer id.
    let warm =
        runtime.block_on(publisher.publish_flow_iter((0..1_000).map(|i| realistic(i, base_ns))))?;
    anyhow::ensure!(warm.failed == 0, "warm-up: {warm:?}");

    if mode.starts_with("trickle") {
        let scans = 10;
        let (cpu0, wall0) = (cpu_time(libc::RUSAGE_SELF), Instant::now());
        runtime.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            for _ in 0..scans {
                tick.tick().await;
                let d = publisher.publish_flows(&flows).await?;
                anyhow::ensure!(d.delivered == u64::from(n) && d.failed == 0, "{d:?}");
            }
            tick.tick().await;
            anyhow::Ok(())
        })?;
        let (cpu, wall) = (cpu_time(libc::RUSAGE_SELF) - cpu0, wall0.elapsed());
        println!("| flows per scan | mode | scans | wall | process CPU | share of a core |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| {n} | {mode} | {scans} every 2 s | {:.1} s | {:.1} ms | {:.3} % |",
            wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e3,
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
        return Ok(());
    }

    // Peak resident memory of the publish itself: reset the high-water mark, sample VmRSS too.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_mb("VmRSS:");
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_kb = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak_kb) = (sampling.clone(), peak_kb.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let mb = status_mb("VmRSS:");
                peak_kb.fetch_max((mb * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (cpu0, wall0) = (cpu_time(libc::RUSAGE_SELF), Instant::now());
    let delivery = runtime.block_on(async {
        match mode.as_str() {
            "old" => Ok(publish_old(producer.as_ref().expect("old mode"), &topic, &flows).await),
            "stream" => {
                publisher
                    .publish_flow_iter((0..n).map(|i| realistic(i, base_ns)))
                    .await
            }
            _ => publisher.publish_flows(&flows).await,
        }
    })?;
    let (cpu, wall) = (cpu_time(libc::RUSAGE_SELF) - cpu0, wall0.elapsed());
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let hwm = status_mb("VmHWM:");
    let peak = (peak_kb.load(Ordering::Relaxed) as f64 / 1024.0).max(hwm);
    anyhow::ensure!(
        delivery.delivered == u64::from(n) && delivery.failed == 0,
        "{delivery:?}"
    );
    let in_flight = if mode == "old" {
        "all".into()
    } else {
        max_in_flight.to_string()
    };
    println!(
        "| flows | mode | in flight | delivered | wall | records/s | process CPU | CPU µs/record | RSS before | peak RSS during publish |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {mode} | {in_flight} | {} | {:.2} s | {:.0} | {:.2} s | {:.2} | {rss_before:.0} MB | {peak:.0} MB (+{:.0}) |",
        delivery.delivered,
        wall.as_secs_f64(),
        f64::from(n) / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / f64::from(n),
        peak - rss_before,
    );
    drop(publisher);
    drop(producer);
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
