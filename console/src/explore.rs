//! `GET /api/explore`: bytes, packets or flows over time split by one to three dimensions; the
//! top `limit` keys by total as series (every step of the range present, zeros filled), the
//! rest summed into one "Other" series, and the total over everything.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::clickhouse::Params;
use crate::error::{ApiError, ApiResult};
use crate::filter::{Measure, QueryString, Range, Table, PROTOCOL_NAME_SQL};
use crate::node::NodeSql;
use crate::server::App;

#[derive(Debug, Serialize)]
pub struct Explore {
    pub table: &'static str,
    pub step: u64,
    pub metric: &'static str,
    pub series: Vec<Series>,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub key: Vec<String>,
    pub total: u64,
    /// `[unix_s, value]` for every step of the range.
    pub points: Vec<(u64, u64)>,
}

/// The dimensions a key can be made of.
pub const DIMENSIONS: &[&str] = &[
    "src_namespace",
    "dst_namespace",
    "src_workload",
    "dst_workload",
    "src_pod",
    "dst_pod",
    "src_service",
    "dst_service",
    "src_node",
    "dst_node",
    "src_group",
    "dst_group",
    "proto",
    "dst_port",
    "locality",
    "host",
    "if_name",
];

/// The SQL of dimension `dim` and whether only the raw table has it.
fn dimension(dim: &str, nodes: &NodeSql) -> Option<(String, bool)> {
    Some(match dim {
        "src_group" => (nodes.pod_or_group("src"), false),
        "dst_group" => (nodes.pod_or_group("dst"), false),
        "proto" => (PROTOCOL_NAME_SQL.to_owned(), false),
        "dst_port" => ("toString(dst_port)".into(), false),
        "src_service" | "dst_service" | "if_name" => (format!("toString({dim})"), true),
        d if DIMENSIONS.contains(&d) => (format!("toString({d})"), false),
        _ => return None,
    })
}

/// Seconds between points: 60 up to 6 h, 300 up to 2 days, 3600 beyond.
pub fn step_for(range: &Range) -> u64 {
    match range.seconds() {
        s if s <= 6 * 3600 => 60,
        s if s <= 2 * 86_400 => 300,
        _ => 3600,
    }
}

#[derive(Debug, Deserialize)]
struct PointRow {
    key: Vec<String>,
    t: u64,
    v_sum: u64,
}

pub async fn handler(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Explore>> {
    let mut q = QueryString::parse(raw.as_deref());
    let range = q.range()?;
    let dims: Vec<String> = q
        .one("dims")?
        .unwrap_or_else(|| "src_namespace".into())
        .split(',')
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .collect();
    if dims.is_empty() || dims.len() > 3 {
        return Err(ApiError::bad(
            "`dims`: give 1 to 3 dimensions, comma separated",
        ));
    }
    let (metric, measure) = match q.one("metric")?.as_deref().unwrap_or("bytes") {
        "bytes" => ("bytes", Measure::Bytes),
        "packets" => ("packets", Measure::Packets),
        "flows" => ("flows", Measure::Flows),
        other => {
            return Err(ApiError::bad(format!(
                "`metric={other}`: expected bytes, packets or flows"
            )))
        }
    };
    let limit = q.number("limit", 10, 1, 100)?;
    let filters = q.filters()?;

    let mut p = Params::default();
    let nodes = NodeSql::new(&app.groups, &mut p);
    let mut exprs = Vec::new();
    let mut dims_need_raw = false;
    for d in &dims {
        let (sql, raw_only) = dimension(d, &nodes).ok_or_else(|| {
            ApiError::bad(format!(
                "`dims`: unknown dimension `{d}` (one of {})",
                DIMENSIONS.join(", ")
            ))
        })?;
        dims_need_raw |= raw_only;
        exprs.push(sql);
    }
    let table = Table::choose(
        range.seconds(),
        app.raw_max_range_s,
        dims_need_raw || filters.need_raw(),
    );
    let step = step_for(&range);
    let key = format!("[{}]", exprs.join(", "));
    let other = format!("[{}]", vec!["'Other'"; dims.len()].join(", "));
    let value = table.measure(measure);
    // The WHERE is written twice (outer rows, inner top keys), each with its own bound values.
    let outer_where = filters.where_sql(table, &range, &mut p);
    let inner_where = filters.where_sql(table, &range, &mut p);
    let sql = format!(
        "SELECT key, t, sum(v) AS v_sum FROM (\n\
         SELECT if({key} IN (\n\
           SELECT top_key FROM (SELECT {key} AS top_key, sum({value}) AS top_total\n\
           FROM {table} WHERE {inner_where}\n\
           GROUP BY top_key ORDER BY top_total DESC, top_key LIMIT {limit})\n\
         ), {key}, {other}) AS key,\n\
         intDiv(toUInt32({time}), {step}) * {step} AS t, {value} AS v\n\
         FROM {table} WHERE {outer_where})\n\
         GROUP BY key, t",
        table = table.name(),
        time = table.time_column(),
    );
    let rows: Vec<PointRow> = app.clickhouse.rows("explore", &sql, &p).await?;
    let series = series(rows, &range, step, dims.len());
    Ok(Json(Explore {
        table: table.name(),
        step,
        metric,
        total: series.iter().map(|s| s.total).sum(),
        series,
    }))
}

/// The rows as series: the keys by total (largest first, "Other" last), every step of the
/// range present.
fn series(rows: Vec<PointRow>, range: &Range, step: u64, arity: usize) -> Vec<Series> {
    let first = range.from / step * step;
    let steps: Vec<u64> = (0..)
        .map(|i| first + i * step)
        .take_while(|t| *t < range.to)
        .collect();
    let other = vec!["Other".to_owned(); arity];
    let mut by_key: HashMap<Vec<String>, HashMap<u64, u64>> = HashMap::new();
    for r in rows {
        *by_key.entry(r.key).or_default().entry(r.t).or_default() += r.v_sum;
    }
    let mut out: Vec<Series> = by_key
        .into_iter()
        .map(|(key, values)| Series {
            total: values.values().sum(),
            points: steps
                .iter()
                .map(|t| (*t, values.get(t).copied().unwrap_or(0)))
                .collect(),
            key,
        })
        .collect();
    out.sort_by(|a, b| {
        (a.key == other)
            .cmp(&(b.key == other))
            .then_with(|| b.total.cmp(&a.total))
            .then_with(|| a.key.cmp(&b.key))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_range() {
        assert_eq!(step_for(&Range { from: 0, to: 3600 }), 60);
        assert_eq!(
            step_for(&Range {
                from: 0,
                to: 86_400
            }),
            300
        );
        assert_eq!(
            step_for(&Range {
                from: 0,
                to: 7 * 86_400
            }),
            3600
        );
    }

    #[test]
    fn series_fill_every_step_and_put_other_last() {
        let row = |k: &str, t, v_sum| PointRow {
            key: vec![k.into()],
            t,
            v_sum,
        };
        let rows = vec![
            row("a", 60, 5),
            row("Other", 120, 100),
            row("b", 120, 7),
            row("b", 0, 1),
        ];
        let s = series(rows, &Range { from: 30, to: 150 }, 60, 1);
        let keys: Vec<&str> = s.iter().map(|s| s.key[0].as_str()).collect();
        assert_eq!(keys, ["b", "a", "Other"]);
        assert_eq!(s[0].points, [(0, 1), (60, 0), (120, 7)]);
        assert_eq!(s[0].total, 8);
    }
}
