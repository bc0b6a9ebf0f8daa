//! `GET /api/flows`: the details of a topology node (`node=<id>`) or edge (`source=<id>` and
//! `target=<id>`), always from the raw table: the largest flows, the top destination ports, RTT
//! mean and quantiles, drop reasons and totals.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::clickhouse::Params;
use crate::error::{ApiError, ApiResult};
use flowlens_schemas::protocol_name;

use crate::filter::{QueryString, Table};
use crate::net::show_endpoint;
use crate::node::{Grouping, NodeSql};
use crate::server::App;
use crate::topology::mean_rtt_ms;

#[derive(Debug, Serialize)]
pub struct Details {
    pub flows: Vec<Flow>,
    pub ports: Vec<Port>,
    pub rtt_ms: Rtt,
    pub drop_reasons: Vec<DropReason>,
    pub totals: Totals,
}

#[derive(Debug, Serialize)]
pub struct Flow {
    pub time_end: String,
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub bytes: u64,
    pub packets: u64,
    pub rtt_ms: Option<f64>,
    pub end_reason: String,
    pub retransmits: u64,
    pub drops: u64,
}

#[derive(Debug, Serialize)]
pub struct Port {
    pub proto: String,
    pub port: u16,
    pub bytes: u64,
    pub flows: u64,
}

#[derive(Debug, Serialize)]
pub struct Rtt {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DropReason {
    #[serde(alias = "d_reason")]
    pub reason: String,
    #[serde(alias = "d_drops")]
    pub drops: u64,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

#[derive(Deserialize)]
struct FlowRow {
    time_end: String,
    src_ip: String,
    src_port: u16,
    dst_ip: String,
    dst_port: u16,
    proto: u8,
    f_bytes: u64,
    f_packets: u64,
    rtt_ns: u64,
    f_end_reason: String,
    f_retransmits: u64,
    f_drops: u64,
}

#[derive(Deserialize)]
struct PortRow {
    proto: u8,
    dst_port: u16,
    p_bytes: u64,
    p_flows: u64,
}

#[derive(Deserialize)]
struct SummaryRow {
    s_bytes: u64,
    s_packets: u64,
    s_flows: u64,
    rtt_sum: u64,
    rtt_samples: u64,
    rtt_q: Vec<f64>,
}

const BYTES: &str = "est_bytes + est_reverse_bytes";
const PACKETS: &str = "est_packets + est_reverse_packets";

pub async fn handler(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Details>> {
    let mut q = QueryString::parse(raw.as_deref());
    let range = q.range()?;
    let grouping = Grouping::parse(q.one("group")?.as_deref())?;
    let node = q.one("node")?;
    let (source, target) = (q.one("source")?, q.one("target")?);
    let filters = q.filters()?;

    let mut p = Params::default();
    let nodes = NodeSql::new(&app.groups, &mut p);
    let (src_id, dst_id) = (nodes.id("src", grouping), nodes.id("dst", grouping));
    let selection = match (node, source, target) {
        (Some(n), None, None) => {
            let n = p.bind("String", n);
            format!("({src_id} = {n} OR {dst_id} = {n})")
        }
        (None, Some(s), Some(t)) => {
            let (s, t) = (p.bind("String", s), p.bind("String", t));
            format!("({src_id} = {s} AND {dst_id} = {t})")
        }
        _ => {
            return Err(ApiError::bad(
                "give either `node=<id>` or both `source=<id>` and `target=<id>`",
            ))
        }
    };
    let filter = filters.where_sql(Table::Raw, &range, &mut p);
    let w = format!("{filter}\n  AND {selection}");

    let flows_sql = format!(
        "SELECT formatDateTime(time_flow_end, '%Y-%m-%dT%H:%i:%SZ', 'UTC') AS time_end,\n\
         IPv6NumToString(src_addr) AS src_ip, src_port, IPv6NumToString(dst_addr) AS dst_ip,\n\
         dst_port, proto, {BYTES} AS f_bytes, {PACKETS} AS f_packets, rtt_ns,\n\
         toString(end_reason) AS f_end_reason, toUInt64(retransmits) AS f_retransmits,\n\
         toUInt64(drops) AS f_drops\n\
         FROM flows WHERE {w}\nORDER BY f_bytes DESC, time_flow_end DESC LIMIT 100"
    );
    let ports_sql = format!(
        "SELECT proto, dst_port, sum({BYTES}) AS p_bytes, count() AS p_flows\n\
         FROM flows WHERE {w}\nGROUP BY proto, dst_port ORDER BY p_bytes DESC, dst_port LIMIT 10"
    );
    let summary_sql = format!(
        "SELECT sum({BYTES}) AS s_bytes, sum({PACKETS}) AS s_packets, count() AS s_flows,\n\
         sum(rtt_ns) AS rtt_sum, countIf(rtt_ns > 0) AS rtt_samples,\n\
         quantilesExactIf(0.5, 0.99)(toFloat64(rtt_ns), rtt_ns > 0) AS rtt_q\n\
         FROM flows WHERE {w}"
    );
    let drops_sql = format!(
        "SELECT toString(drop_reason) AS d_reason, sum(drops) AS d_drops\n\
         FROM flows WHERE {w} AND drops > 0\nGROUP BY d_reason ORDER BY d_drops DESC, d_reason LIMIT 20"
    );
    let ch = &app.clickhouse;
    let (flows, ports, summary, drop_reasons) = futures::try_join!(
        ch.rows::<FlowRow>("flows", &flows_sql, &p),
        ch.rows::<PortRow>("flows", &ports_sql, &p),
        ch.rows::<SummaryRow>("flows", &summary_sql, &p),
        ch.rows::<DropReason>("flows", &drops_sql, &p),
    )?;
    let summary = summary.into_iter().next().unwrap_or(SummaryRow {
        s_bytes: 0,
        s_packets: 0,
        s_flows: 0,
        rtt_sum: 0,
        rtt_samples: 0,
        rtt_q: Vec::new(),
    });
    let quantile = |i: usize| {
        (summary.rtt_samples > 0)
            .then(|| summary.rtt_q.get(i).map(|ns| ns / 1e6))
            .flatten()
    };
    Ok(Json(Details {
        flows: flows
            .into_iter()
            .map(|f| Flow {
                time_end: f.time_end,
                src: show_endpoint(&f.src_ip, f.src_port),
                dst: show_endpoint(&f.dst_ip, f.dst_port),
                proto: protocol_name(f.proto),
                bytes: f.f_bytes,
                packets: f.f_packets,
                rtt_ms: (f.rtt_ns > 0).then(|| f.rtt_ns as f64 / 1e6),
                end_reason: f.f_end_reason,
                retransmits: f.f_retransmits,
                drops: f.f_drops,
            })
            .collect(),
        ports: ports
            .into_iter()
            .map(|r| Port {
                proto: protocol_name(r.proto),
                port: r.dst_port,
                bytes: r.p_bytes,
                flows: r.p_flows,
            })
            .collect(),
        rtt_ms: Rtt {
            mean: mean_rtt_ms(summary.rtt_sum, summary.rtt_samples),
            p50: quantile(0),
            p99: quantile(1),
        },
        drop_reasons,
        totals: Totals {
            bytes: summary.s_bytes,
            packets: summary.s_packets,
            flows: summary.s_flows,
        },
    }))
}
