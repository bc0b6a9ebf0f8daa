-- The flows table for Debian's clickhouse-server 18.16 (scripts/stack/clickhouse18.sh), with
-- types whose RowBinary encoding is byte-identical to sql/migrations/0001_flows.sql plus the
-- columns of 0002 (kafka_*, retransmits, drops), 0003 (EnrichedFlow v2), 0004 (EnrichedFlow
-- v3), 0005 (record identity) and 0007 (DNS) the sink writes, in FlowRow order, so the sink's exact
-- RowBinary rows can be inserted into a genuine (old) server:
--   DateTime64(9) -> Int64 (ns since epoch)      DateTime64(3) -> Int64 (ms since epoch)
--   IPv6 -> FixedString(16) (network order)       LowCardinality(String) -> String
--   Bool -> UInt8 (one byte 0/1)                  Enum8, FixedString(16), Int32, Int64,
--                                                 Array(UInt32) kept.
-- No projections (18.16 has none): the sink's recovery queries read the table itself, which is
-- fine for the small tables this server holds in tests and the bench.
-- No TTL, CODEC, COMMENT or ALIAS column (tcp_start; 18.16 has none of the first three).
-- The crate must use `.with_validation(false)` (18.16 has no RowBinaryWithNamesAndTypes).
-- Test use only: not a migration, never applied by the sink.
CREATE TABLE IF NOT EXISTS flows
(
    time_flow_start   Int64,
    time_flow_end     Int64,
    time_exported     Int64,
    time_inserted     Int64 DEFAULT toInt64(toUInt32(now())) * 1000,
    host              String,
    ifindex           UInt32,
    if_name           String,
    if_mac            String,
    if_kind           String,
    if_netns          String,
    direction         Enum8('ingress' = 0, 'egress' = 1),
    etype             UInt16,
    vlan_id           UInt16,
    proto             UInt8,
    src_addr          FixedString(16),
    dst_addr          FixedString(16),
    src_port          UInt16,
    dst_port          UInt16,
    icmp_type         UInt8,
    icmp_code         UInt8,
    tcp_flags         UInt16,
    packets           UInt64,
    bytes             UInt64,
    sampling_rate     UInt32,
    src_pod           String,
    src_namespace     String,
    src_workload      String,
    src_workload_kind String,
    src_node          String,
    src_service       String,
    dst_pod           String,
    dst_namespace     String,
    dst_workload      String,
    dst_workload_kind String,
    dst_node          String,
    dst_service       String,
    kafka_topic       String,
    kafka_partition   UInt16,
    kafka_offset      UInt64,
    src_pod_uid       String,
    dst_pod_uid       String,
    src_role          String,
    dst_role          String,
    locality          String,
    if_pod            String,
    if_namespace      String,
    reverse_packets   UInt64,
    reverse_bytes     UInt64,
    reverse_tcp_flags UInt16,
    end_reason        String,
    rtt_ns            UInt64,
    retransmits       UInt32,
    drops             UInt32,
    drop_bytes        UInt64,
    drop_reason       String,
    src_pid           UInt32,
    src_comm          String,
    src_cgroup_id     UInt64,
    dst_pid           UInt32,
    dst_comm          String,
    dst_cgroup_id     UInt64,
    tunnel            String,
    tunnel_id         UInt32,
    outer_src_addr    FixedString(16),
    outer_dst_addr    FixedString(16),
    duplicate         UInt8,
    kafka_stream      FixedString(16),
    kafka_timestamp   Int64,
    origin_topic      String,
    origin_stream     FixedString(16),
    origin_partition  Int32,
    origin_offset     Int64,
    dns_queries       UInt32,
    dns_responses     UInt32,
    dns_noerror       UInt32,
    dns_nxdomain      UInt32,
    dns_servfail      UInt32,
    dns_refused       UInt32,
    dns_other_rcode   UInt32,
    dns_answered      UInt32,
    dns_latency_sum_ns UInt64,
    dns_latency_max_ns UInt64,
    dns_latencies_us  Array(UInt32),
    dns_last_query    String,
    dns_last_query_type UInt16
)
ENGINE = MergeTree
PARTITION BY toDate(toDateTime(intDiv(time_flow_end, 1000000000)))
ORDER BY (intDiv(time_flow_end, 300000000000), host, if_name, direction, proto, src_addr, dst_addr)
;
