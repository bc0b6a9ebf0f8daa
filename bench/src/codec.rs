//! Single-thread CPU cost of the per-record work outside Kafka and ClickHouse, measured in the
//! harness's own process on the run's record shapes (the report's codec table).

use std::time::Instant;

use serde::Serialize;

use crate::gen::Generator;
use crate::produce::now_ns;

/// Single-thread CPU cost of the per-record work outside Kafka and ClickHouse, measured in this
/// process on the run's own records: what the load generator, the enricher and the sink spend
/// before any I/O, both on the paths the stages run now (hand-written decoders and encoders)
/// and on the generic `flowlens_schemas` codec they replaced.
#[derive(Debug, Clone, Serialize)]
pub struct CodecCosts {
    pub records: u64,
    /// Mean encoded sizes (single-object encoding), raw and enriched (as the enricher writes
    /// them: interface fields joined).
    pub raw_bytes_avg: f64,
    pub enriched_bytes_avg: f64,
    /// Generic Avro encode of a RawFlow: the load generator's path (the collector has its own
    /// hand-written encoder, not measured here).
    pub encode_raw_us: f64,
    /// Generic Avro decode of a RawFlow (the enricher's path before its fast decoder).
    pub decode_raw_us: f64,
    /// The enricher's RawFlow decoder (`flowlens_schemas::reader::raw_flow`).
    pub enricher_decode_raw_us: f64,
    /// The enricher's join with the interface cache and its direct encode of the EnrichedFlow
    /// (`join::Joined::new(..).encode`, no Kubernetes metadata: as the bench runs it).
    pub enricher_join_encode_us: f64,
    /// Generic Avro encode of an EnrichedFlow (the enricher's path before the direct encoder).
    pub encode_enriched_us: f64,
    /// Generic Avro decode of an EnrichedFlow.
    pub decode_enriched_us: f64,
    /// EnrichedFlow -> FlowRow (the generic row conversion with range checks).
    pub to_row_us: f64,
    /// Payload -> FlowRow through the sink's decoder (`flowlens_sink::decode::flow_row`).
    pub sink_flow_row_us: f64,
    /// Payload -> RowBinary bytes, the sink's path (`flowlens_sink::decode::write_row`).
    pub sink_write_row_us: f64,
}

/// Times the codec steps over `n` generated records.
pub fn codec_costs(generator: &mut Generator, n: u64) -> anyhow::Result<CodecCosts> {
    use flowlens_enricher::interfaces::InterfaceCache;
    use flowlens_enricher::join::Joined;
    use flowlens_schemas::{decode, encode, EnrichedFlow, RawFlow};
    let now = now_ns();
    let records: Vec<RawFlow> = (0..n).map(|i| generator.record(i, now)).collect();
    let per = |start: Instant| start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    let mut raws = Vec::with_capacity(records.len());
    for r in &records {
        let mut buf = Vec::with_capacity(128);
        encode(r, &mut buf)?;
        raws.push(buf);
    }
    let encode_raw_us = per(t);
    drop(records);
    let t = Instant::now();
    let decoded: Vec<RawFlow> = raws.iter().map(|b| decode(b)).collect::<Result<_, _>>()?;
    let decode_raw_us = per(t);
    let t = Instant::now();
    let fast: Vec<RawFlow> = raws
        .iter()
        .map(|b| flowlens_schemas::reader::raw_flow(b))
        .collect::<Result<_, _>>()?;
    let enricher_decode_raw_us = per(t);
    anyhow::ensure!(fast == decoded, "the enricher's decoder disagrees");
    let mut cache = InterfaceCache::default();
    for iface in generator.interfaces(now) {
        cache.upsert(iface);
    }
    let t = Instant::now();
    let mut bufs = Vec::with_capacity(fast.len());
    for raw in &fast {
        let mut buf = Vec::with_capacity(320);
        Joined::new(raw, &cache, None).encode(&mut buf)?;
        bufs.push(buf);
    }
    let enricher_join_encode_us = per(t);
    drop(fast);
    let enriched: Vec<EnrichedFlow> = decoded
        .into_iter()
        .map(|r| {
            let mut e = EnrichedFlow::from_raw(r);
            e.if_name = "eth0".into();
            e.if_kind = "device".into();
            e
        })
        .collect();
    let t = Instant::now();
    let mut generic = Vec::with_capacity(enriched.len());
    for e in &enriched {
        let mut buf = Vec::with_capacity(256);
        encode(e, &mut buf)?;
        generic.push(buf);
    }
    let encode_enriched_us = per(t);
    drop(generic);
    // From here on, the enricher's own output.
    let t = Instant::now();
    let back: Vec<EnrichedFlow> = bufs.iter().map(|b| decode(b)).collect::<Result<_, _>>()?;
    let decode_enriched_us = per(t);
    let t = Instant::now();
    let mut rows = 0usize;
    for e in back {
        rows += flowlens_sink::FlowRow::try_from(e).is_ok() as usize;
    }
    let to_row_us = per(t);
    let t = Instant::now();
    let fast_rows = bufs
        .iter()
        .filter(|b| flowlens_sink::decode::flow_row(b).is_ok())
        .count();
    let sink_flow_row_us = per(t);
    let mut out = Vec::with_capacity(1 << 20);
    let t = Instant::now();
    let mut written = 0usize;
    for (i, b) in bufs.iter().enumerate() {
        if out.len() > (1 << 20) - 1024 {
            out.clear(); // a batch's buffer, reused
        }
        let at = flowlens_sink::decode::Position {
            topic: "flowlens.flows.enriched",
            partition: 0,
            offset: i as i64,
            stream: [1; 16],
            timestamp_ms: 1_700_000_000_000,
        };
        written += flowlens_sink::decode::write_row(b, &at, &mut out).is_ok() as usize;
    }
    let sink_write_row_us = per(t);
    for (what, got) in [
        ("row conversion", rows),
        ("the sink's decoder", fast_rows),
        ("the sink's RowBinary path", written),
    ] {
        anyhow::ensure!(
            got == n as usize,
            "{what} refused {} records",
            n as usize - got
        );
    }
    let raw_bytes_avg = raws.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    let enriched_bytes_avg = bufs.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    Ok(CodecCosts {
        records: n,
        raw_bytes_avg,
        enriched_bytes_avg,
        encode_raw_us,
        decode_raw_us,
        enricher_decode_raw_us,
        enricher_join_encode_us,
        encode_enriched_us,
        decode_enriched_us,
        to_row_us,
        sink_flow_row_us,
        sink_write_row_us,
    })
}
