-- 0004_conversations: the columns of EnrichedFlow version 3 (schemas/avro/enriched_flow.avsc:
-- one record per conversation with reverse counters, end reason, RTT, drops with bytes and
-- reason, the local processes of both ends, the tunnel link and the duplicate flag), and the
-- rollups recomputed with the new semantics. ClickHouse >= 24.8 (checked with chdb-core
-- 26.9.0). Statements are separated by a line holding only a semicolon, every statement is
-- idempotent (IF NOT EXISTS, COMMENT COLUMN, DROP VIEW IF EXISTS + CREATE of the same view),
-- so the file can be re-applied safely.
--
-- Record shape since EnrichedFlow v3: src_* is side A (the initiator), dst_* side B; packets,
-- bytes and tcp_flags count A->B, reverse_* count B->A, direction is the direction of the A->B
-- packets at the interface. A conversation's total is bytes + reverse_bytes. duplicate = 1 marks
-- packets already counted in another row of the same host (the same packets on another
-- interface, or a tunnel's outer record): totals over a host, a pod pair, a service or a port
-- sum only duplicate = 0. Rows written before this migration, or from version 1/2 records, hold
-- 0 / '' / '::' / false in the new columns (one direction per row, nothing marked duplicate).
--
-- Nulls: a null process is pid 0, comm '', cgroup 0; a null outer address is '::' (IPv6 with a
-- default rather than Nullable(IPv6): no null map to store or to handle in queries, and '::' is
-- never a real outer address; tunnel = '' tells the same).
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS reverse_packets UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'packets B->A (from dst to src) in the interval; 0 for one-direction rows (before EnrichedFlow v3)',
    ADD COLUMN IF NOT EXISTS reverse_bytes UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'bytes B->A in the interval (L2 frame lengths, like bytes)',
    ADD COLUMN IF NOT EXISTS reverse_tcp_flags UInt16 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'OR of the TCP flags seen B->A in the interval',
    ADD COLUMN IF NOT EXISTS end_reason LowCardinality(String) DEFAULT '' COMMENT 'why this row is the last of its conversation: fin, rst, idle, shutdown; empty = still open (an interval export)',
    ADD COLUMN IF NOT EXISTS rtt_ns UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'smoothed TCP round-trip time of a local socket at its last sample in the interval (ns), 0 = unknown',
    ADD COLUMN IF NOT EXISTS drop_bytes UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'bytes of the packets counted in drops',
    ADD COLUMN IF NOT EXISTS drop_reason LowCardinality(String) DEFAULT '' COMMENT 'kernel drop reason of the last drop in the interval (e.g. NETFILTER_DROP), empty = no drop',
    ADD COLUMN IF NOT EXISTS src_pid UInt32 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'process id owning the source (side A) socket on the collector host, 0 = not a local socket or unknown',
    ADD COLUMN IF NOT EXISTS src_comm LowCardinality(String) DEFAULT '' COMMENT 'command name of that process, empty = unknown',
    ADD COLUMN IF NOT EXISTS src_cgroup_id UInt64 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'cgroup v2 id of that process (ties the flow to a container), 0 = unknown',
    ADD COLUMN IF NOT EXISTS dst_pid UInt32 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'process id owning the destination (side B) socket on the collector host, 0 = not a local socket or unknown',
    ADD COLUMN IF NOT EXISTS dst_comm LowCardinality(String) DEFAULT '' COMMENT 'command name of that process, empty = unknown',
    ADD COLUMN IF NOT EXISTS dst_cgroup_id UInt64 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'cgroup v2 id of that process, 0 = unknown',
    ADD COLUMN IF NOT EXISTS tunnel LowCardinality(String) DEFAULT '' COMMENT 'vxlan, geneve or gre when the row is the inner flow of a tunnel, empty = plain flow',
    ADD COLUMN IF NOT EXISTS tunnel_id UInt32 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'VXLAN/Geneve VNI or GRE key, 0 = none',
    ADD COLUMN IF NOT EXISTS outer_src_addr IPv6 DEFAULT '::' CODEC(ZSTD(1)) COMMENT 'source address of the outer (tunnel) packets carrying A->B, :: = no tunnel',
    ADD COLUMN IF NOT EXISTS outer_dst_addr IPv6 DEFAULT '::' CODEC(ZSTD(1)) COMMENT 'destination address of the outer (tunnel) packets carrying A->B, :: = no tunnel',
    ADD COLUMN IF NOT EXISTS duplicate Bool DEFAULT false CODEC(ZSTD(1)) COMMENT 'the packets are already counted in another row of the same host and interval: sum only duplicate = 0 for totals'
;
ALTER TABLE flows
    COMMENT COLUMN retransmits 'TCP segments retransmitted by a local socket of the conversation in the interval (either side), 0 before EnrichedFlow v3',
    COMMENT COLUMN drops 'packets of the conversation (either direction) dropped by the kernel of the collector host in the interval, 0 before EnrichedFlow v3',
    COMMENT COLUMN packets 'packets A->B (src to dst) in the interval, as counted (multiply by sampling_rate to estimate)',
    COMMENT COLUMN bytes 'bytes A->B (src to dst) in the interval, as counted (multiply by sampling_rate to estimate)',
    COMMENT COLUMN direction 'direction of the A->B packets at the interface (B->A went the other way)'
;
-- tcp_start: the row holds the opening of a TCP connection by side A: A's flags are a SYN
-- without ACK, or both sides sent a SYN (the handshake, SYN then SYN-ACK, in one interval).
-- The same rule as the enricher's roles (enricher/src/kubernetes/classify.rs). An ALIAS: no
-- storage, computed when read (rows of any age), not written by the sink.
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS tcp_start Bool ALIAS proto = 6 AND bitAnd(tcp_flags, 2) != 0 AND (bitAnd(tcp_flags, 16) = 0 OR bitAnd(reverse_tcp_flags, 2) != 0) COMMENT 'the row holds a TCP connection opened by side A (SYN without ACK, or SYN on both sides)'
;
-- ---------------------------------------------------------------------------------------------
-- Rollups. (In the views, `rec` names a row of flows: the sums are aliased like its columns.)
-- Their tables keep their data; new sum columns are added (a SummingMergeTree sums
-- every numeric column outside its key), the per-interface tables get `duplicate` appended to
-- their key, and the six materialized views are dropped and created again with the new
-- queries (their target tables are untouched). Rows inserted between a DROP and its CREATE
-- would miss that rollup: apply this migration with the sinks stopped, as `flowlens-sink
-- migrate` or the sink's migrate_on_start (before it consumes) do.
--
-- Per interface (flows_iface_*): traffic as each interface carried it, per direction. A row
-- counts twice: its A->B packets under its direction and its B->A packets (reverse_*) under
-- the opposite direction (not at all when B sent nothing). flows (records), retransmits and
-- drops are counted once, on the A->B direction. Duplicate rows are kept (an interface that
-- carried packets also counted elsewhere did carry them) but flagged in the key: sum only
-- duplicate = 0 for host totals.
-- Per Kubernetes pair (flows_k8s_*): both directions of the conversation under (A, B) = (src,
-- dst), i.e. bytes = bytes + reverse_bytes; reverse_bytes/reverse_packets keep the B->A share.
-- Duplicate rows are skipped. new_connections counts tcp_start rows; rtt_ns_sum / rtt_samples
-- give the mean RTT of the rows that had one; drop_bytes is added.
-- Per port (flows_port_*): per direction like the interface rollup (A->B under direction,
-- B->A under the opposite one), duplicate rows skipped; port is still least(src_port,
-- dst_port), so rows before and after this migration mean the same.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE flows_iface_1m
    ADD COLUMN IF NOT EXISTS duplicate Bool COMMENT 'rows of flows with duplicate = 1 (packets also counted on another interface of the host), false before migration 0004' AFTER proto,
    MODIFY ORDER BY (time, host, if_name, direction, proto, duplicate)
;
ALTER TABLE flows_iface_1h
    ADD COLUMN IF NOT EXISTS duplicate Bool COMMENT 'rows of flows with duplicate = 1 (packets also counted on another interface of the host), false before migration 0004' AFTER proto,
    MODIFY ORDER BY (time, host, if_name, direction, proto, duplicate)
;
ALTER TABLE flows_k8s_1m
    ADD COLUMN IF NOT EXISTS reverse_bytes UInt64 CODEC(T64, ZSTD(1)) COMMENT 'the B->A (dst to src) share of bytes, 0 before migration 0004',
    ADD COLUMN IF NOT EXISTS reverse_packets UInt64 CODEC(T64, ZSTD(1)) COMMENT 'the B->A (dst to src) share of packets, 0 before migration 0004',
    ADD COLUMN IF NOT EXISTS drop_bytes UInt64 CODEC(T64, ZSTD(1)) COMMENT 'bytes of the dropped packets',
    ADD COLUMN IF NOT EXISTS rtt_ns_sum UInt64 CODEC(T64, ZSTD(1)) COMMENT 'sum of rtt_ns over the rows that had one (mean RTT = rtt_ns_sum / rtt_samples)',
    ADD COLUMN IF NOT EXISTS rtt_samples UInt64 CODEC(T64, ZSTD(1)) COMMENT 'rows with rtt_ns > 0'
;
ALTER TABLE flows_k8s_1h
    ADD COLUMN IF NOT EXISTS reverse_bytes UInt64 CODEC(T64, ZSTD(1)) COMMENT 'the B->A (dst to src) share of bytes, 0 before migration 0004',
    ADD COLUMN IF NOT EXISTS reverse_packets UInt64 CODEC(T64, ZSTD(1)) COMMENT 'the B->A (dst to src) share of packets, 0 before migration 0004',
    ADD COLUMN IF NOT EXISTS drop_bytes UInt64 CODEC(T64, ZSTD(1)) COMMENT 'bytes of the dropped packets',
    ADD COLUMN IF NOT EXISTS rtt_ns_sum UInt64 CODEC(T64, ZSTD(1)) COMMENT 'sum of rtt_ns over the rows that had one (mean RTT = rtt_ns_sum / rtt_samples)',
    ADD COLUMN IF NOT EXISTS rtt_samples UInt64 CODEC(T64, ZSTD(1)) COMMENT 'rows with rtt_ns > 0'
;
DROP VIEW IF EXISTS flows_iface_1m_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_iface_1m_mv TO flows_iface_1m AS
SELECT toStartOfMinute(time_flow_end) AS time, host, if_name,
       CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction, proto, duplicate,
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows,
       sum(leg.5) AS retransmits, sum(leg.6) AS drops
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.bytes, rec.packets, 1, rec.retransmits, rec.drops),
            (1 - toInt8(rec.direction), rec.reverse_bytes, rec.reverse_packets, 0, 0, 0)] AS leg
WHERE leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0
GROUP BY time, host, if_name, direction, proto, duplicate
;
DROP VIEW IF EXISTS flows_iface_1h_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_iface_1h_mv TO flows_iface_1h AS
SELECT toStartOfHour(time_flow_end) AS time, host, if_name,
       CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction, proto, duplicate,
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows,
       sum(leg.5) AS retransmits, sum(leg.6) AS drops
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.bytes, rec.packets, 1, rec.retransmits, rec.drops),
            (1 - toInt8(rec.direction), rec.reverse_bytes, rec.reverse_packets, 0, 0, 0)] AS leg
WHERE leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0
GROUP BY time, host, if_name, direction, proto, duplicate
;
DROP VIEW IF EXISTS flows_k8s_1m_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_k8s_1m_mv TO flows_k8s_1m AS
SELECT toStartOfMinute(time_flow_end) AS time,
       src_namespace, src_workload, src_pod, src_service, src_node,
       dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality,
       sum(rec.bytes + rec.reverse_bytes) AS bytes, sum(rec.packets + rec.reverse_packets) AS packets,
       count() AS flows, countIf(tcp_start) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops,
       sum(rec.reverse_bytes) AS reverse_bytes, sum(rec.reverse_packets) AS reverse_packets,
       sum(drop_bytes) AS drop_bytes, sum(rtt_ns) AS rtt_ns_sum, countIf(rtt_ns > 0) AS rtt_samples
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
       sum(rec.bytes + rec.reverse_bytes) AS bytes, sum(rec.packets + rec.reverse_packets) AS packets,
       count() AS flows, countIf(tcp_start) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops,
       sum(rec.reverse_bytes) AS reverse_bytes, sum(rec.reverse_packets) AS reverse_packets,
       sum(drop_bytes) AS drop_bytes, sum(rtt_ns) AS rtt_ns_sum, countIf(rtt_ns > 0) AS rtt_samples
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
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.bytes, rec.packets, 1),
            (1 - toInt8(rec.direction), rec.reverse_bytes, rec.reverse_packets, 0)] AS leg
WHERE NOT duplicate AND (leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0)
GROUP BY time, proto, port, direction
;
DROP VIEW IF EXISTS flows_port_1h_mv
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_port_1h_mv TO flows_port_1h AS
SELECT toStartOfHour(time_flow_end) AS time, proto, least(src_port, dst_port) AS port,
       CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction,
       sum(leg.2) AS bytes, sum(leg.3) AS packets, sum(leg.4) AS flows
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.bytes, rec.packets, 1),
            (1 - toInt8(rec.direction), rec.reverse_bytes, rec.reverse_packets, 0)] AS leg
WHERE NOT duplicate AND (leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0)
GROUP BY time, proto, port, direction
;
