//! `GET /api/topology`: who talked to whom in a range, as nodes (workloads, pods, namespaces or
//! Kubernetes nodes, groups, external addresses) and edges from the initiator (side A) to the
//! other end, with bytes, packets, flows, retransmits, drops and mean RTT; the heaviest `limit`
//! edges.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::clickhouse::Params;
use crate::error::ApiResult;
use crate::filter::{Measure, QueryString, Range, Table};
use crate::node::{Grouping, NodeSql};
use crate::server::App;

#[derive(Debug, Serialize)]
pub struct Topology {
    pub table: &'static str,
    pub from: u64,
    pub to: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: String,
    pub namespace: String,
    /// Bytes of the edges returned that start or end here.
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    pub retransmits: u64,
    pub drops: u64,
    pub rtt_ms: Option<f64>,
    pub max_sampling_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EdgeRow {
    src_id: String,
    src_kind: String,
    src_ns: String,
    dst_id: String,
    dst_kind: String,
    dst_ns: String,
    e_bytes: u64,
    e_packets: u64,
    e_flows: u64,
    e_retransmits: u64,
    e_drops: u64,
    e_rtt_sum: u64,
    e_rtt_samples: u64,
    e_sampling_rate: u32,
}

/// The rows a topology over `range` on `table` sums, and their name in the answer. On the
/// per-minute rollup, the whole hours inside the range come from the hourly rollup instead
/// (one row per hour rather than up to sixty: the same sums, as the views add the same rows),
/// and only the minutes before the first and after the last whole hour from the minute one.
fn source(table: Table, range: &Range, p: &mut Params) -> (&'static str, String) {
    let (first_hour, end_hour) = (range.from.div_ceil(3600) * 3600, range.to / 3600 * 3600);
    if table != Table::Minute || end_hour <= first_hour {
        return (table.name(), table.name().to_string());
    }
    let (h0, h1) = (
        p.bind("UInt32", first_hour.to_string()),
        p.bind("UInt32", end_hour.to_string()),
    );
    let hours = format!("time >= toDateTime({h0}) AND time < toDateTime({h1})");
    let sql = format!(
        "(SELECT * FROM {hour} WHERE {hours}\n UNION ALL\n \
         SELECT * FROM {minute} WHERE {range} AND NOT ({hours}))",
        hour = Table::Hour.name(),
        minute = Table::Minute.name(),
        range = range.sql(Table::Minute, p),
    );
    ("flows_topology_1h+1m", sql)
}

/// Mean RTT in ms of `samples` summing to `sum_ns`, none without samples.
pub fn mean_rtt_ms(sum_ns: u64, samples: u64) -> Option<f64> {
    (samples > 0).then(|| sum_ns as f64 / samples as f64 / 1e6)
}

pub async fn handler(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Topology>> {
    let mut q = QueryString::parse(raw.as_deref());
    let range = q.range()?;
    let grouping = Grouping::parse(q.one("group")?.as_deref())?;
    let limit = q.number("limit", 500, 1, 10_000)?;
    let filters = q.filters()?;
    let table = Table::choose(range.seconds(), app.raw_max_range_s, filters.need_raw());

    let mut p = Params::default();
    let (source_name, source) = source(table, &range, &mut p);
    let nodes = NodeSql::new(&app.groups, &mut p);
    let m = |x| table.measure(x);
    let sql = format!(
        "SELECT {} AS src_id, {} AS src_kind, {} AS src_ns,\n\
         {} AS dst_id, {} AS dst_kind, {} AS dst_ns,\n\
         sum({}) AS e_bytes, sum({}) AS e_packets, sum({}) AS e_flows,\n\
         sum({}) AS e_retransmits, sum({}) AS e_drops,\n\
         sum({}) AS e_rtt_sum, sum({}) AS e_rtt_samples, max({}) AS e_sampling_rate\n\
         FROM {}\nWHERE {}\n\
         GROUP BY src_id, src_kind, src_ns, dst_id, dst_kind, dst_ns\n\
         ORDER BY e_bytes DESC, src_id, dst_id\nLIMIT {}",
        nodes.id("src", grouping),
        nodes.kind("src", grouping),
        nodes.namespace("src", grouping),
        nodes.id("dst", grouping),
        nodes.kind("dst", grouping),
        nodes.namespace("dst", grouping),
        m(Measure::Bytes),
        m(Measure::Packets),
        m(Measure::Flows),
        m(Measure::Retransmits),
        m(Measure::Drops),
        m(Measure::RttSum),
        m(Measure::RttSamples),
        m(Measure::SamplingRate),
        source,
        filters.where_sql(table, &range, &mut p),
        limit,
    );
    let rows: Vec<EdgeRow> = app.clickhouse.rows("topology", &sql, &p).await?;

    let mut by_id: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges = Vec::with_capacity(rows.len());
    for r in rows {
        for (id, kind, ns) in [
            (&r.src_id, &r.src_kind, &r.src_ns),
            (&r.dst_id, &r.dst_kind, &r.dst_ns),
        ] {
            by_id.entry(id.clone()).or_insert_with(|| Node {
                id: id.clone(),
                kind: kind.clone(),
                namespace: ns.clone(),
                bytes: 0,
            });
        }
        by_id.get_mut(&r.src_id).expect("inserted").bytes += r.e_bytes;
        if r.dst_id != r.src_id {
            by_id.get_mut(&r.dst_id).expect("inserted").bytes += r.e_bytes;
        }
        edges.push(Edge {
            source: r.src_id,
            target: r.dst_id,
            bytes: r.e_bytes,
            packets: r.e_packets,
            flows: r.e_flows,
            retransmits: r.e_retransmits,
            drops: r.e_drops,
            rtt_ms: mean_rtt_ms(r.e_rtt_sum, r.e_rtt_samples),
            max_sampling_rate: r.e_sampling_rate,
        });
    }
    let mut nodes: Vec<Node> = by_id.into_values().collect();
    nodes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.id.cmp(&b.id)));
    Ok(Json(Topology {
        table: source_name,
        from: range.from,
        to: range.to,
        nodes,
        edges,
    }))
}
