-- 0008_topology: the rollups behind the console's topology and explorer views over long ranges
-- (console/): per minute / per hour, both ends of a conversation as the console names them
-- (namespace, workload and its kind, pod, node, and the address of an end that is no pod),
-- with protocol, service port, locality and the host that saw it. ClickHouse >= 24.8 (checked
-- with chdb-core 26.9.0). Statements are separated by a line holding only a semicolon, every
-- statement is idempotent (IF NOT EXISTS), so the file can be re-applied safely.
--
-- Sums like the Kubernetes-pair rollups of 0004/0006: bytes and packets are the estimates of
-- both directions (est_bytes + est_reverse_bytes, est_packets + est_reverse_packets), flows the
-- records summed, retransmits and drops as counted, rtt_ns_sum / rtt_samples the mean RTT of
-- the rows that had one, max_sampling_rate the highest 1:N sampling of the rows summed
-- (SimpleAggregateFunction(max): merged with max, not sum). Duplicate rows are skipped.
-- src_addr / dst_addr hold the end's address only when it has no pod (src_pod = ''), '::'
-- otherwise: pod addresses change with every pod and would make one row per pod incarnation.
-- Rows of flows inserted before this migration are not rolled up (the views see new inserts
-- only); the console reads the raw table for ranges up to console.raw_max_range_s.
--
-- Retention (defaults): flows_topology_1m 90 days, flows_topology_1h 400 days, as the other
-- rollups.
CREATE TABLE IF NOT EXISTS flows_topology_1m
(
    time              DateTime CODEC(Delta, ZSTD(1)) COMMENT 'start of the minute (UTC) of time_flow_end',
    src_namespace     LowCardinality(String),
    src_workload      LowCardinality(String),
    src_workload_kind LowCardinality(String),
    src_pod           LowCardinality(String),
    src_node          LowCardinality(String),
    src_addr          IPv6 CODEC(ZSTD(1)) COMMENT 'flows.src_addr when src_pod is empty, :: otherwise',
    dst_namespace     LowCardinality(String),
    dst_workload      LowCardinality(String),
    dst_workload_kind LowCardinality(String),
    dst_pod           LowCardinality(String),
    dst_node          LowCardinality(String),
    dst_addr          IPv6 CODEC(ZSTD(1)) COMMENT 'flows.dst_addr when dst_pod is empty, :: otherwise',
    proto             UInt8,
    dst_port          UInt16,
    locality          LowCardinality(String),
    host              LowCardinality(String) COMMENT 'node (host name) whose collector saw the flow',
    bytes             UInt64 CODEC(T64, ZSTD(1)) COMMENT 'estimated bytes of both directions (est_bytes + est_reverse_bytes)',
    packets           UInt64 CODEC(T64, ZSTD(1)) COMMENT 'estimated packets of both directions (est_packets + est_reverse_packets)',
    flows             UInt64 CODEC(T64, ZSTD(1)) COMMENT 'flow records summed',
    retransmits       UInt64 CODEC(T64, ZSTD(1)),
    drops             UInt64 CODEC(T64, ZSTD(1)),
    rtt_ns_sum        UInt64 CODEC(T64, ZSTD(1)) COMMENT 'sum of rtt_ns over the rows that had one (mean RTT = rtt_ns_sum / rtt_samples)',
    rtt_samples       UInt64 CODEC(T64, ZSTD(1)) COMMENT 'rows with rtt_ns > 0',
    max_sampling_rate SimpleAggregateFunction(max, UInt32) COMMENT 'highest 1:N sampling of the rows summed here: 1 = exact, N = bytes and packets estimated from 1:N samples'
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, src_namespace, src_workload, dst_namespace, dst_workload, src_pod, dst_pod, src_addr, dst_addr, src_node, dst_node, proto, dst_port, locality, host, src_workload_kind, dst_workload_kind)
TTL time + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per minute and pair of console nodes (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE TABLE IF NOT EXISTS flows_topology_1h AS flows_topology_1m
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, src_namespace, src_workload, dst_namespace, dst_workload, src_pod, dst_pod, src_addr, dst_addr, src_node, dst_node, proto, dst_port, locality, host, src_workload_kind, dst_workload_kind)
TTL time + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per hour and pair of console nodes (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_topology_1m_mv TO flows_topology_1m AS
SELECT toStartOfMinute(time_flow_end) AS time,
       src_namespace, src_workload, src_workload_kind, src_pod, src_node,
       if(rec.src_pod = '', rec.src_addr, toIPv6('::')) AS src_addr,
       dst_namespace, dst_workload, dst_workload_kind, dst_pod, dst_node,
       if(rec.dst_pod = '', rec.dst_addr, toIPv6('::')) AS dst_addr,
       proto, dst_port, locality, host,
       sum(rec.est_bytes + rec.est_reverse_bytes) AS bytes,
       sum(rec.est_packets + rec.est_reverse_packets) AS packets,
       count() AS flows, sum(rec.retransmits) AS retransmits, sum(rec.drops) AS drops,
       sum(rec.rtt_ns) AS rtt_ns_sum, countIf(rec.rtt_ns > 0) AS rtt_samples,
       max(rec.sampling_rate) AS max_sampling_rate
FROM flows AS rec
WHERE NOT duplicate
GROUP BY time, src_namespace, src_workload, src_workload_kind, src_pod, src_node, src_addr,
         dst_namespace, dst_workload, dst_workload_kind, dst_pod, dst_node, dst_addr,
         proto, dst_port, locality, host
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_topology_1h_mv TO flows_topology_1h AS
SELECT toStartOfHour(time_flow_end) AS time,
       src_namespace, src_workload, src_workload_kind, src_pod, src_node,
       if(rec.src_pod = '', rec.src_addr, toIPv6('::')) AS src_addr,
       dst_namespace, dst_workload, dst_workload_kind, dst_pod, dst_node,
       if(rec.dst_pod = '', rec.dst_addr, toIPv6('::')) AS dst_addr,
       proto, dst_port, locality, host,
       sum(rec.est_bytes + rec.est_reverse_bytes) AS bytes,
       sum(rec.est_packets + rec.est_reverse_packets) AS packets,
       count() AS flows, sum(rec.retransmits) AS retransmits, sum(rec.drops) AS drops,
       sum(rec.rtt_ns) AS rtt_ns_sum, countIf(rec.rtt_ns > 0) AS rtt_samples,
       max(rec.sampling_rate) AS max_sampling_rate
FROM flows AS rec
WHERE NOT duplicate
GROUP BY time, src_namespace, src_workload, src_workload_kind, src_pod, src_node, src_addr,
         dst_namespace, dst_workload, dst_workload_kind, dst_pod, dst_node, dst_addr,
         proto, dst_port, locality, host
;
