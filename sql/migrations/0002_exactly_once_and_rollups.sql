-- 0002_exactly_once_and_rollups: Kafka provenance + insert deduplication on `flows`, columns for
-- retransmits/drops (filled by a later collector, 0 until then), and the per-minute / per-hour
-- rollups fed by materialized views. ClickHouse >= 24.8 (checked with chdb-core 26.9.0).
-- Statements are separated by a line holding only a semicolon, every statement is idempotent
-- (IF NOT EXISTS / MODIFY SETTING), so the file can be re-applied safely.
--
-- Exactly-once: the sink inserts one batch per Kafka partition with
-- insert_deduplication_token = '<topic>/<partition>/<first offset>-<last offset>' and
-- deduplicate_blocks_in_dependent_materialized_views = 1, the deduplication windows below make
-- a replayed batch a no-op in `flows` and in every rollup. kafka_* columns record where each row
-- came from, the sink reads max(kafka_offset) per partition after a restart or rebalance to cut
-- the first replayed batch exactly where the lost one ended (see sink/src/run.rs).
--
-- Retention (defaults, `flowlens-sink migrate` re-applies [retention] from its config):
--   flows 30 days, *_1m rollups 90 days, *_1h rollups 400 days.
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS retransmits UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'TCP retransmitted segments in the interval (0 until the collector reports them)',
    ADD COLUMN IF NOT EXISTS drops UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'packets of the flow dropped by the kernel in the interval (0 until the collector reports them)',
    ADD COLUMN IF NOT EXISTS kafka_topic LowCardinality(String) DEFAULT '' COMMENT 'Kafka topic the record was read from (sink provenance)',
    ADD COLUMN IF NOT EXISTS kafka_partition UInt16 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'Kafka partition the record was read from',
    ADD COLUMN IF NOT EXISTS kafka_offset UInt64 DEFAULT 0 CODEC(Delta, ZSTD(1)) COMMENT 'Kafka offset of the record (unique per topic and partition)'
;
ALTER TABLE flows ADD INDEX IF NOT EXISTS kafka_offset_minmax kafka_offset TYPE minmax GRANULARITY 1
;
ALTER TABLE flows MODIFY SETTING non_replicated_deduplication_window = 1000
;
-- ---------------------------------------------------------------------------------------------
-- Per interface: host, interface, direction, protocol.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS flows_iface_1m
(
    time        DateTime CODEC(Delta, ZSTD(1)) COMMENT 'start of the minute (UTC) of time_flow_end',
    host        LowCardinality(String),
    if_name     LowCardinality(String),
    direction   Enum8('ingress' = 0, 'egress' = 1),
    proto       UInt8,
    bytes       UInt64 CODEC(T64, ZSTD(1)),
    packets     UInt64 CODEC(T64, ZSTD(1)),
    flows       UInt64 CODEC(T64, ZSTD(1)) COMMENT 'flow records summed',
    retransmits UInt64 CODEC(T64, ZSTD(1)),
    drops       UInt64 CODEC(T64, ZSTD(1))
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, host, if_name, direction, proto)
TTL time + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per minute and interface (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE TABLE IF NOT EXISTS flows_iface_1h AS flows_iface_1m
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, host, if_name, direction, proto)
TTL time + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per hour and interface (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_iface_1m_mv TO flows_iface_1m AS
SELECT toStartOfMinute(time_flow_end) AS time, host, if_name, direction, proto,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows,
       sum(retransmits) AS retransmits, sum(drops) AS drops
FROM flows
GROUP BY time, host, if_name, direction, proto
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_iface_1h_mv TO flows_iface_1h AS
SELECT toStartOfHour(time_flow_end) AS time, host, if_name, direction, proto,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows,
       sum(retransmits) AS retransmits, sum(drops) AS drops
FROM flows
GROUP BY time, host, if_name, direction, proto
;
-- ---------------------------------------------------------------------------------------------
-- Per Kubernetes pair: namespace, workload, pod, service and node of both ends, protocol,
-- destination port (service port). new_connections counts flow records with SYN and no ACK.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS flows_k8s_1m
(
    time            DateTime CODEC(Delta, ZSTD(1)) COMMENT 'start of the minute (UTC) of time_flow_end',
    src_namespace   LowCardinality(String),
    src_workload    LowCardinality(String),
    src_pod         LowCardinality(String),
    src_service     LowCardinality(String),
    src_node        LowCardinality(String),
    dst_namespace   LowCardinality(String),
    dst_workload    LowCardinality(String),
    dst_pod         LowCardinality(String),
    dst_service     LowCardinality(String),
    dst_node        LowCardinality(String),
    proto           UInt8,
    dst_port        UInt16,
    bytes           UInt64 CODEC(T64, ZSTD(1)),
    packets         UInt64 CODEC(T64, ZSTD(1)),
    flows           UInt64 CODEC(T64, ZSTD(1)),
    new_connections UInt64 CODEC(T64, ZSTD(1)) COMMENT 'flow records with SYN set and ACK not set',
    retransmits     UInt64 CODEC(T64, ZSTD(1)),
    drops           UInt64 CODEC(T64, ZSTD(1))
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, src_namespace, src_workload, dst_namespace, dst_workload, src_service, dst_service, src_pod, dst_pod, src_node, dst_node, proto, dst_port)
TTL time + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per minute and Kubernetes pair (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE TABLE IF NOT EXISTS flows_k8s_1h AS flows_k8s_1m
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, src_namespace, src_workload, dst_namespace, dst_workload, src_service, dst_service, src_pod, dst_pod, src_node, dst_node, proto, dst_port)
TTL time + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per hour and Kubernetes pair (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_k8s_1m_mv TO flows_k8s_1m AS
SELECT toStartOfMinute(time_flow_end) AS time,
       src_namespace, src_workload, src_pod, src_service, src_node,
       dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows,
       countIf(bitAnd(tcp_flags, 18) = 2) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops
FROM flows
GROUP BY time, src_namespace, src_workload, src_pod, src_service, src_node,
         dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_k8s_1h_mv TO flows_k8s_1h AS
SELECT toStartOfHour(time_flow_end) AS time,
       src_namespace, src_workload, src_pod, src_service, src_node,
       dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows,
       countIf(bitAnd(tcp_flags, 18) = 2) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops
FROM flows
GROUP BY time, src_namespace, src_workload, src_pod, src_service, src_node,
         dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port
;
-- ---------------------------------------------------------------------------------------------
-- Per protocol and port: the service side of a flow is the lower of the two ports
-- (server ports are usually the well-known/registered lower one), 0 for port-less protocols.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS flows_port_1m
(
    time      DateTime CODEC(Delta, ZSTD(1)) COMMENT 'start of the minute (UTC) of time_flow_end',
    proto     UInt8,
    port      UInt16 COMMENT 'least(src_port, dst_port)',
    direction Enum8('ingress' = 0, 'egress' = 1),
    bytes     UInt64 CODEC(T64, ZSTD(1)),
    packets   UInt64 CODEC(T64, ZSTD(1)),
    flows     UInt64 CODEC(T64, ZSTD(1))
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, proto, port, direction)
TTL time + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per minute, protocol and service port (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE TABLE IF NOT EXISTS flows_port_1h AS flows_port_1m
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, proto, port, direction)
TTL time + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'flows per hour, protocol and service port (SummingMergeTree: always query with sum() ... GROUP BY)'
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_port_1m_mv TO flows_port_1m AS
SELECT toStartOfMinute(time_flow_end) AS time, proto, least(src_port, dst_port) AS port, direction,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows
FROM flows
GROUP BY time, proto, port, direction
;
CREATE MATERIALIZED VIEW IF NOT EXISTS flows_port_1h_mv TO flows_port_1h AS
SELECT toStartOfHour(time_flow_end) AS time, proto, least(src_port, dst_port) AS port, direction,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows
FROM flows
GROUP BY time, proto, port, direction
;
