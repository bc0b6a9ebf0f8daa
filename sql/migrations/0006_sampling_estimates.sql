-- 0006_sampling_estimates: totals that estimate the real traffic under 1:N packet sampling.
-- ClickHouse >= 24.8 (checked with chdb-core 26.9.0). Statements are separated by a line
-- holding only a semicolon, every statement is idempotent (IF NOT EXISTS, COMMENT COLUMN,
-- DROP VIEW IF EXISTS + CREATE of the same view), so the file can be re-applied safely.
--
-- With collector.sampling = N the kernel counts each packet with probability 1/N, independently
-- (bpf_get_prandom_u32() % N == 0, one draw for all segments of a GSO/GRO super-packet), and
-- every record carries sampling_rate = N. packets, bytes and reverse_* in `flows` stay as
-- counted, and counted * sampling_rate is an unbiased estimate of the traffic (for n real
-- packets the packet estimate has standard deviation sqrt(n * (N - 1))). Only packets and bytes
-- are sampled: retransmits, drops and drop_bytes come from kernel tracepoints that see every
-- event, so they are never multiplied. Record counts (flows) and what the sampled packets'
-- flags show (tcp_start, new_connections, resets) are counts of what was sampled, not
-- estimates.
--
-- flows: est_packets, est_bytes, est_reverse_packets, est_reverse_bytes are ALIAS columns (no
-- storage, computed when read, rows of any age) = the counted column * sampling_rate, a rate
-- below 1 (not written by flowlens) read as 1. Sum them for totals: sum(est_bytes +
-- est_reverse_bytes) WHERE NOT duplicate.
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS est_packets UInt64 ALIAS packets * greatest(sampling_rate, 1) COMMENT 'estimated packets A->B: packets * sampling_rate (sum this for totals)',
    ADD COLUMN IF NOT EXISTS est_bytes UInt64 ALIAS bytes * greatest(sampling_rate, 1) COMMENT 'estimated bytes A->B: bytes * sampling_rate (sum this for totals)',
    ADD COLUMN IF NOT EXISTS est_reverse_packets UInt64 ALIAS reverse_packets * greatest(sampling_rate, 1) COMMENT 'estimated packets B->A: reverse_packets * sampling_rate',
    ADD COLUMN IF NOT EXISTS est_reverse_bytes UInt64 ALIAS reverse_bytes * greatest(sampling_rate, 1) COMMENT 'estimated bytes B->A: reverse_bytes * sampling_rate'
;
ALTER TABLE flows
    COMMENT COLUMN sampling_rate '1-in-N packet sampling the packets, bytes and reverse_* of the row were counted under, 1 = every packet (est_* = counted * sampling_rate)'
;
-- ---------------------------------------------------------------------------------------------
-- Rollups. bytes, packets (and the Kubernetes rollups' reverse_*) become estimates: the views
-- sum est_* instead of the counted columns. max_sampling_rate keeps the highest rate of the
-- rows summed into a rollup row (SimpleAggregateFunction(max): SummingMergeTree merges it with
-- max, not sum): 1 = exact, N = estimates from 1:N sampling (standard deviation of the packets
-- at most sqrt(packets * (N - 1))), 0 = rolled up before this migration, when bytes and packets
-- were summed as counted. Retransmits, drops, drop_bytes, flows, new_connections and the RTT
-- sums are unchanged. The six views are dropped and created again (a view's columns are fixed
-- when it is created, MODIFY QUERY cannot add max_sampling_rate). Rows inserted between a DROP
-- and its CREATE would miss that rollup: apply this migration with the sinks stopped, as
-- `flowlens-sink migrate` and the sink's migrate_on_start (before it consumes) do.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE flows_iface_1m
    ADD COLUMN IF NOT EXISTS max_sampling_rate SimpleAggregateFunction(max, UInt32) COMMENT 'highest 1:N sampling of the rows summed here: 1 = exact, N = bytes and packets estimated from 1:N samples, 0 = rolled up before migration 0006 (as counted)',
    COMMENT COLUMN bytes 'estimated bytes (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN packets 'estimated packets (counted * sampling_rate, as counted before migration 0006)'
;
ALTER TABLE flows_iface_1h
    ADD COLUMN IF NOT EXISTS max_sampling_rate SimpleAggregateFunction(max, UInt32) COMMENT 'highest 1:N sampling of the rows summed here: 1 = exact, N = bytes and packets estimated from 1:N samples, 0 = rolled up before migration 0006 (as counted)',
    COMMENT COLUMN bytes 'estimated bytes (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN packets 'estimated packets (counted * sampling_rate, as counted before migration 0006)'
;
ALTER TABLE flows_k8s_1m
    ADD COLUMN IF NOT EXISTS max_sampling_rate SimpleAggregateFunction(max, UInt32) COMMENT 'highest 1:N sampling of the rows summed here: 1 = exact, N = bytes and packets estimated from 1:N samples, 0 = rolled up before migration 0006 (as counted)',
    COMMENT COLUMN bytes 'estimated bytes of both directions (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN packets 'estimated packets of both directions (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN reverse_bytes 'the B->A (dst to src) share of bytes, estimated like bytes',
    COMMENT COLUMN reverse_packets 'the B->A (dst to src) share of packets, estimated like packets'
;
ALTER TABLE flows_k8s_1h
    ADD COLUMN IF NOT EXISTS max_sampling_rate SimpleAggregateFunction(max, UInt32) COMMENT 'highest 1:N sampling of the rows summed here: 1 = exact, N = bytes and packets estimated from 1:N samples, 0 = rolled up before migration 0006 (as counted)',
    COMMENT COLUMN bytes 'estimated bytes of both directions (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN packets 'estimated packets of both directions (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN reverse_bytes 'the B->A (dst to src) share of bytes, estimated like bytes',
    COMMENT COLUMN reverse_packets 'the B->A (dst to src) share of packets, estimated like packets'
;
ALTER TABLE flows_port_1m
    ADD COLUMN IF NOT EXISTS max_sampling_rate SimpleAggregateFunction(max, UInt32) COMMENT 'highest 1:N sampling of the rows summed here: 1 = exact, N = bytes and packets estimated from 1:N samples, 0 = rolled up before migration 0006 (as counted)',
    COMMENT COLUMN bytes 'estimated bytes (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN packets 'estimated packets (counted * sampling_rate, as counted before migration 0006)'
;
ALTER TABLE flows_port_1h
    ADD COLUMN IF NOT EXISTS max_sampling_rate SimpleAggregateFunction(max, UInt32) COMMENT 'highest 1:N sampling of the rows summed here: 1 = exact, N = bytes and packets estimated from 1:N samples, 0 = rolled up before migration 0006 (as counted)',
    COMMENT COLUMN bytes 'estimated bytes (counted * sampling_rate, as counted before migration 0006)',
    COMMENT COLUMN packets 'estimated packets (counted * sampling_rate, as counted before migration 0006)'
;
DROP VIEW IF EXISTS flows_iface_1m_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_iface_1m_mv TO flows_iface_1m AS
SELECT toStartOfMinute(time_flow_end) AS time, host, if_name,
       CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction, proto, duplicate,
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows,
       sum(leg.5) AS retransmits, sum(leg.6) AS drops, max(sampling_rate) AS max_sampling_rate
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.est_bytes, rec.est_packets, 1, rec.retransmits, rec.drops),
            (1 - toInt8(rec.direction), rec.est_reverse_bytes, rec.est_reverse_packets, 0, 0, 0)] AS leg
WHERE leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0
GROUP BY time, host, if_name, direction, proto, duplicate
;
DROP VIEW IF EXISTS flows_iface_1h_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_iface_1h_mv TO flows_iface_1h AS
SELECT toStartOfHour(time_flow_end) AS time, host, if_name,
       CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction, proto, duplicate,
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows,
       sum(leg.5) AS retransmits, sum(leg.6) AS drops, max(sampling_rate) AS max_sampling_rate
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.est_bytes, rec.est_packets, 1, rec.retransmits, rec.drops),
            (1 - toInt8(rec.direction), rec.est_reverse_bytes, rec.est_reverse_packets, 0, 0, 0)] AS leg
WHERE leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0
GROUP BY time, host, if_name, direction, proto, duplicate
;
DROP VIEW IF EXISTS flows_k8s_1m_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_k8s_1m_mv TO flows_k8s_1m AS
SELECT toStartOfMinute(time_flow_end) AS time,
       src_namespace, src_workload, src_pod, src_service, src_node,
       dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality,
       sum(rec.est_bytes + rec.est_reverse_bytes) AS bytes,
       sum(rec.est_packets + rec.est_reverse_packets) AS packets,
       count() AS flows, countIf(tcp_start) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops,
       sum(rec.est_reverse_bytes) AS reverse_bytes, sum(rec.est_reverse_packets) AS reverse_packets,
       sum(drop_bytes) AS drop_bytes, sum(rtt_ns) AS rtt_ns_sum, countIf(rtt_ns > 0) AS rtt_samples,
       max(sampling_rate) AS max_sampling_rate
FROM flows AS rec
WHERE NOT duplicate
GROUP BY time, src_namespace, src_workload, src_pod, src_service, src_node,
         dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality
;
DROP VIEW IF EXISTS flows_k8s_1h_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_k8s_1h_mv TO flows_k8s_1h AS
SELECT toStartOfHour(time_flow_end) AS time,
       src_namespace, src_workload, src_pod, src_service, src_node,
       dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality,
       sum(rec.est_bytes + rec.est_reverse_bytes) AS bytes,
       sum(rec.est_packets + rec.est_reverse_packets) AS packets,
       count() AS flows, countIf(tcp_start) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops,
       sum(rec.est_reverse_bytes) AS reverse_bytes, sum(rec.est_reverse_packets) AS reverse_packets,
       sum(drop_bytes) AS drop_bytes, sum(rtt_ns) AS rtt_ns_sum, countIf(rtt_ns > 0) AS rtt_samples,
       max(sampling_rate) AS max_sampling_rate
FROM flows AS rec
WHERE NOT duplicate
GROUP BY time, src_namespace, src_workload, src_pod, src_service, src_node,
         dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality
;
DROP VIEW IF EXISTS flows_port_1m_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_port_1m_mv TO flows_port_1m AS
SELECT toStartOfMinute(time_flow_end) AS time, proto, least(src_port, dst_port) AS port,
       CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction,
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows,
       max(sampling_rate) AS max_sampling_rate
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.est_bytes, rec.est_packets, 1),
            (1 - toInt8(rec.direction), rec.est_reverse_bytes, rec.est_reverse_packets, 0)] AS leg
WHERE NOT duplicate AND (leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0)
GROUP BY time, proto, port, direction
;
DROP VIEW IF EXISTS flows_port_1h_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_port_1h_mv TO flows_port_1h AS
SELECT toStartOfHour(time_flow_end) AS time, proto, least(src_port, dst_port) AS port,
       CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction,
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows,
       max(sampling_rate) AS max_sampling_rate
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.est_bytes, rec.est_packets, 1),
            (1 - toInt8(rec.direction), rec.est_reverse_bytes, rec.est_reverse_packets, 0)] AS leg
WHERE NOT duplicate AND (leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0)
GROUP BY time, proto, port, direction
;
