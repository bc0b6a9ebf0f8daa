//! The metrics the pipeline updates for every record, as handles resolved once: a `counter!`
//! call looks its series up in the registry each time (a hash of the name and labels and a
//! lock), five of them per record.

use metrics::{Counter, Histogram};

use crate::join::Hits;

pub(super) struct RecordMetrics {
    pub(super) records_in: Counter,
    pub(super) invalid: Counter,
    pub(super) lag: Histogram,
    interface_hits: Counter,
    interface_misses: Counter,
    /// `flowlens_enricher_kubernetes_lookups_total` by end (src, dst), then result (miss, hit).
    kubernetes: [[Counter; 2]; 2],
}

impl RecordMetrics {
    /// The handles of the installed recorder (install it first).
    pub(super) fn new() -> Self {
        let lookups = |end: &'static str| {
            ["miss", "hit"].map(|result| {
                metrics::counter!("flowlens_enricher_kubernetes_lookups_total", "end" => end, "result" => result)
            })
        };
        Self {
            records_in: metrics::counter!("flowlens_enricher_records_in_total"),
            invalid: metrics::counter!("flowlens_enricher_records_invalid_total"),
            lag: metrics::histogram!("flowlens_enricher_record_lag_seconds"),
            interface_hits: metrics::counter!("flowlens_enricher_interface_join_hits_total"),
            interface_misses: metrics::counter!("flowlens_enricher_interface_join_misses_total"),
            kubernetes: [lookups("src"), lookups("dst")],
        }
    }

    /// Counts one record's join: the interface, and both ends when Kubernetes metadata is on.
    pub(super) fn joined(&self, hits: Hits, kubernetes: bool) {
        if hits.interface {
            self.interface_hits.increment(1);
        } else {
            self.interface_misses.increment(1);
        }
        if kubernetes {
            self.kubernetes[0][hits.src as usize].increment(1);
            self.kubernetes[1][hits.dst as usize].increment(1);
        }
    }
}
