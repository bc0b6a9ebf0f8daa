//! What ClickHouse holds after the phases: the exact loss count (every record carries a unique
//! id, `time_flow_start` = run base + sequence number, in ns) and the end-to-end latency of each
//! phase's rows (`time_inserted`, the server's clock, − `time_exported`, the load generator's,
//! the same clock).

use std::ops::Range;

use crate::probe::ClickHouse;
use crate::results::{LatencyPoint, Losses, Phase};
use crate::services::Engine;

/// The run's rows in ClickHouse.
pub struct Stored<'a> {
    pub clickhouse: &'a ClickHouse,
    pub engine: Engine,
    pub run_id: &'a str,
    /// The id of sequence number 0.
    pub base_ns: i64,
}

impl Stored<'_> {
    /// SQL for "`time_flow_start` is the id of one of `seqs`".
    fn ids(&self, seqs: &Range<u64>) -> String {
        format!(
            "time_flow_start >= {} AND time_flow_start < {}",
            self.engine.id(self.base_ns + seqs.start as i64),
            self.engine.id(self.base_ns + seqs.end as i64)
        )
    }

    /// Rows and distinct ids of the run's records `0 .. sent`: every id must be there exactly
    /// once. `acked`, `delivery_failures` and `dead_lettered` are the producer's and the
    /// stages' own counts.
    pub fn losses(
        &self,
        sent: u64,
        (acked, delivery_failures): (u64, u64),
        dead_lettered: f64,
    ) -> anyhow::Result<Losses> {
        let run_id = self.run_id;
        let id_range = format!("{} AND startsWith(host, '{run_id}-')", self.ids(&(0..sent)));
        let counts = self.clickhouse.numbers(&format!(
            "SELECT count(), uniqExact(time_flow_start) FROM flows WHERE {id_range} FORMAT TSV"
        ))?;
        let (rows, unique_ids) = (counts[0] as u64, counts[1] as u64);
        Ok(Losses {
            sent,
            acked,
            delivery_failures,
            rows,
            unique_ids,
            missing: sent.saturating_sub(unique_ids),
            duplicates: rows.saturating_sub(unique_ids),
            dead_lettered,
        })
    }

    /// Sets the latency quantiles of `phase` from the rows of records `seqs`.
    pub fn phase_latency(&self, phase: &mut Phase, seqs: Range<u64>) -> anyhow::Result<()> {
        let lat = self.engine.latency_ms();
        let v = self.clickhouse.numbers(&format!(
            "SELECT quantileExact(0.5)({lat}), quantileExact(0.99)({lat}), max({lat}) \
             FROM flows WHERE {} FORMAT TSV",
            self.ids(&seqs)
        ))?;
        (
            phase.latency_ms_p50,
            phase.latency_ms_p99,
            phase.latency_ms_max,
        ) = (v[0], v[1], v[2]);
        Ok(())
    }

    /// Latency of the rows of records `seqs` per second of export time, counted from
    /// `exported_from` (the load generator's clock, ns).
    pub fn latency_series(
        &self,
        seqs: Range<u64>,
        exported_from: i64,
    ) -> anyhow::Result<Vec<LatencyPoint>> {
        let lat = self.engine.latency_ms();
        let exported_ns = self.engine.exported_ns();
        let series = self.clickhouse.query(&format!(
            "SELECT intDiv({exported_ns} - {exported_from}, 1000000000) AS s, \
             quantileExact(0.5)({lat}), quantileExact(0.99)({lat}), max({lat}) \
             FROM flows WHERE {} \
             GROUP BY s ORDER BY s FORMAT TSV",
            self.ids(&seqs)
        ))?;
        Ok(series
            .lines()
            .filter_map(|l| {
                let v: Vec<f64> = l.split('\t').filter_map(|x| x.parse().ok()).collect();
                (v.len() == 4).then(|| LatencyPoint {
                    t_s: v[0],
                    p50_ms: v[1],
                    p99_ms: v[2],
                    max_ms: v[3],
                })
            })
            .collect())
    }
}
