//! Capacity model: from the per-record CPU costs measured by a bench run to the partitions,
//! enricher/sink instances and ClickHouse shards needed for N nodes × F flow records/s each.
//! See bench/CAPACITY.md for the reasoning behind each rule.

use serde::Serialize;

/// Measured costs, CPU seconds per million records (from a run's sustained phase).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Costs {
    pub enricher_cpu_s_per_m: f64,
    pub sink_cpu_s_per_m: f64,
    pub broker_cpu_s_per_m: f64,
    pub clickhouse_cpu_s_per_m: f64,
    pub raw_record_bytes: f64,
    pub enriched_record_bytes: f64,
}

impl Costs {
    /// Reads the sustained phase of a report JSON written by `flowlens-bench run`.
    pub fn from_report(json: &serde_json::Value) -> anyhow::Result<Self> {
        let costs = json["sustained"]["costs"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("report has no sustained.costs"))?;
        let find = |prefix: &str| -> anyhow::Result<f64> {
            costs
                .iter()
                .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .and_then(|c| c["cpu_s_per_million"].as_f64())
                .ok_or_else(|| anyhow::anyhow!("report has no cost for `{prefix}`"))
        };
        let raw = json["codec"]["raw_bytes_avg"]
            .as_f64()
            .or(json["record_bytes"].as_f64())
            .unwrap_or(150.0);
        let enriched = json["codec"]["enriched_bytes_avg"]
            .as_f64()
            .unwrap_or(raw * 1.75);
        Ok(Self {
            enricher_cpu_s_per_m: find("enricher")?,
            sink_cpu_s_per_m: find("sink")?,
            broker_cpu_s_per_m: find("broker")?,
            clickhouse_cpu_s_per_m: find("ClickHouse")?,
            raw_record_bytes: raw,
            enriched_record_bytes: enriched,
        })
    }
}

/// What the deployment looks like.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Params {
    pub nodes: u64,
    /// Flow records per second per node (after the collector's scan interval aggregation).
    pub flows_per_node_s: f64,
    /// Cores of one enricher / sink instance (its CPU limit).
    pub cores_per_instance: f64,
    /// Fraction of a core a stage may use in steady state (headroom for bursts, catch-up).
    pub target_utilisation: f64,
    /// Records/s one partition is planned for (one consumer reads a partition at a time).
    pub records_per_partition_s: f64,
    /// Cores of one ClickHouse shard (replica).
    pub clickhouse_cores_per_shard: f64,
    /// Rows/s one shard is planned for; when set, it replaces the measured ClickHouse cost
    /// (which is the chdb stand-in's on a development machine).
    pub clickhouse_rows_per_shard_s: Option<f64>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            nodes: 1000,
            flows_per_node_s: 200.0,
            cores_per_instance: 2.0,
            target_utilisation: 0.6,
            records_per_partition_s: 20_000.0,
            clickhouse_cores_per_shard: 16.0,
            clickhouse_rows_per_shard_s: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    pub nodes: u64,
    pub records_per_s: f64,
    pub enricher_cores: f64,
    pub enricher_instances: u64,
    pub sink_cores: f64,
    pub sink_instances: u64,
    pub partitions: u64,
    pub broker_cores: f64,
    pub kafka_mb_per_s: f64,
    pub clickhouse_cores: f64,
    pub clickhouse_shards: u64,
}

fn ceil(x: f64) -> u64 {
    (x - 1e-9).ceil().max(1.0) as u64
}

/// The rules (CAPACITY.md): cores = rate × cost / utilisation; instances = cores / cores per
/// instance; partitions ≥ rate / per-partition rate and ≥ 2 × the larger consumer group, rounded
/// up to a multiple of 6 (even spreading over 1, 2, 3 or 6 consumers); shards = ClickHouse
/// cores / cores per shard.
pub fn plan(costs: &Costs, p: &Params) -> Plan {
    let rate = p.nodes as f64 * p.flows_per_node_s;
    let cores = |cost: f64| rate * cost / 1e6 / p.target_utilisation;
    let enricher_cores = cores(costs.enricher_cpu_s_per_m);
    let sink_cores = cores(costs.sink_cpu_s_per_m);
    let enricher_instances = ceil(enricher_cores / p.cores_per_instance);
    let sink_instances = ceil(sink_cores / p.cores_per_instance);
    let by_rate = ceil(rate / p.records_per_partition_s);
    let by_groups = 2 * enricher_instances.max(sink_instances);
    let partitions = by_rate.max(by_groups).div_ceil(6) * 6;
    let clickhouse_cores = cores(costs.clickhouse_cpu_s_per_m);
    Plan {
        nodes: p.nodes,
        records_per_s: rate,
        enricher_cores,
        enricher_instances,
        sink_cores,
        sink_instances,
        partitions,
        broker_cores: cores(costs.broker_cpu_s_per_m),
        // Written once and read once per topic: raw in, raw out + enriched in, enriched out.
        kafka_mb_per_s: rate * (costs.raw_record_bytes + costs.enriched_record_bytes) / 1e6,
        clickhouse_cores,
        clickhouse_shards: match p.clickhouse_rows_per_shard_s {
            Some(per_shard) => ceil(rate / per_shard),
            None => ceil(clickhouse_cores / p.clickhouse_cores_per_shard),
        },
    }
}

/// A markdown table of plans.
pub fn table(costs: &Costs, p: &Params, nodes: &[u64]) -> String {
    let mut out = format!(
        "Costs (CPU s per 1M records): enricher {:.2}, sink {:.2}, broker {:.2}, ClickHouse {:.2}; \
         records {:.0} B raw, {:.0} B enriched.\n\
         Per node {} flow records/s; instances of {} cores at {:.0} % utilisation; {} records/s \
         per partition; ClickHouse shards: {}.\n\n",
        costs.enricher_cpu_s_per_m,
        costs.sink_cpu_s_per_m,
        costs.broker_cpu_s_per_m,
        costs.clickhouse_cpu_s_per_m,
        costs.raw_record_bytes,
        costs.enriched_record_bytes,
        p.flows_per_node_s,
        p.cores_per_instance,
        p.target_utilisation * 100.0,
        p.records_per_partition_s,
        match p.clickhouse_rows_per_shard_s {
            Some(r) => format!("{r:.0} rows/s each (given)"),
            None => format!("{} cores each at the measured cost", p.clickhouse_cores_per_shard),
        },
    );
    out.push_str(
        "| nodes | records/s | partitions | enricher cores (instances) | sink cores (instances) \
         | broker cores* | Kafka MB/s written (before lz4) | ClickHouse cores* (shards) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in nodes {
        let pl = plan(costs, &Params { nodes: *n, ..*p });
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.1} ({}) | {:.1} ({}) | {:.1} | {:.1} | {:.1} ({}) |\n",
            pl.nodes,
            pl.records_per_s,
            pl.partitions,
            pl.enricher_cores,
            pl.enricher_instances,
            pl.sink_cores,
            pl.sink_instances,
            pl.broker_cores,
            pl.kafka_mb_per_s,
            pl.clickhouse_cores,
            pl.clickhouse_shards
        ));
    }
    out.push_str(
        "\n\\* broker and ClickHouse costs are those of this machine's local services (tansu; the \
         chdb engine behind a Python HTTP front, or clickhouse-server 18.16 without rollups); \
         Apache Kafka and a current ClickHouse cluster cost differently — measure them with the \
         same harness on the real cluster (see CAPACITY.md).\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            enricher_cpu_s_per_m: 10.0,
            sink_cpu_s_per_m: 8.0,
            broker_cpu_s_per_m: 6.0,
            clickhouse_cpu_s_per_m: 4.0,
            raw_record_bytes: 100.0,
            enriched_record_bytes: 135.0,
        }
    }

    #[test]
    fn plan_scales_with_nodes() {
        let p = Params {
            nodes: 10_000,
            flows_per_node_s: 100.0,
            ..Default::default()
        };
        let pl = plan(&costs(), &p);
        assert_eq!(pl.records_per_s, 1e6);
        // 1e6/s × 10 s/M / 0.6 = 16.7 cores -> 9 instances of 2 cores.
        assert!((pl.enricher_cores - 16.67).abs() < 0.01);
        assert_eq!(pl.enricher_instances, 9);
        assert_eq!(pl.sink_instances, 7);
        // max(1e6 / 20k = 50, 2 × 9 = 18) -> 54 (multiple of 6).
        assert_eq!(pl.partitions, 54);
        let given = plan(
            &costs(),
            &Params {
                clickhouse_rows_per_shard_s: Some(300_000.0),
                ..p
            },
        );
        assert_eq!(given.clickhouse_shards, 4);
        let small = plan(&costs(), &Params { nodes: 10, ..p });
        assert_eq!((small.enricher_instances, small.sink_instances), (1, 1));
        assert_eq!(small.partitions, 6);
        assert_eq!(small.clickhouse_shards, 1);
    }

    #[test]
    fn costs_come_from_a_report() {
        let mut g = crate::gen::Generator::new(Default::default(), "bench_x", 1, 3);
        let codec = crate::codec::codec_costs(&mut g, 2000).unwrap();
        assert!(codec.enriched_bytes_avg > codec.raw_bytes_avg && codec.raw_bytes_avg > 50.0);
        let cost = |name: &str, v: f64| serde_json::json!({"name": name, "cpu_s_per_million": v});
        let report = serde_json::json!({
            "record_bytes": 118,
            "codec": codec,
            "sustained": {"costs": [
                cost("load generator", 1.0), cost("broker (tansu)", 2.0), cost("enricher", 3.0),
                cost("sink", 4.0), cost("ClickHouse (chdb front)", 5.0)
            ]}
        });
        let c = Costs::from_report(&report).unwrap();
        assert_eq!(
            (
                c.broker_cpu_s_per_m,
                c.enricher_cpu_s_per_m,
                c.sink_cpu_s_per_m,
                c.clickhouse_cpu_s_per_m
            ),
            (2.0, 3.0, 4.0, 5.0)
        );
        assert_eq!(c.enriched_record_bytes, codec.enriched_bytes_avg);
        assert!(Costs::from_report(&serde_json::json!({})).is_err());
    }
}
