-- 0003_enrichment_v2: the columns of EnrichedFlow version 2 (schemas/avro/enriched_flow.avsc:
-- pod UIDs, roles, locality, interface pod), and `locality` in the Kubernetes-pair rollups.
-- ClickHouse >= 24.8 (checked with chdb-core 26.9.0). Statements are separated by a line
-- holding only a semicolon, every statement is idempotent (IF NOT EXISTS, MODIFY ORDER BY and
-- MODIFY QUERY to the same definition), so the file can be re-applied safely.
--
-- Rows written before this migration, or from version 1 records, hold '' (unknown) in the new
-- columns, as do rollup rows aggregated before it.
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS src_pod_uid LowCardinality(String) DEFAULT '' COMMENT 'Kubernetes UID of the source pod (tells apart pods that reused a name or an IP, empty = unknown)',
    ADD COLUMN IF NOT EXISTS dst_pod_uid LowCardinality(String) DEFAULT '' COMMENT 'Kubernetes UID of the destination pod (empty = unknown)',
    ADD COLUMN IF NOT EXISTS src_role LowCardinality(String) DEFAULT '' COMMENT 'role of the source end: client or server (empty = undecided)',
    ADD COLUMN IF NOT EXISTS dst_role LowCardinality(String) DEFAULT '' COMMENT 'role of the destination end: client or server (empty = undecided)',
    ADD COLUMN IF NOT EXISTS locality LowCardinality(String) DEFAULT '' COMMENT 'where the flow stayed: node (both ends on one node), cluster, or external (one end outside the cluster), empty = unknown',
    ADD COLUMN IF NOT EXISTS if_pod LowCardinality(String) DEFAULT '' COMMENT 'Kubernetes pod whose network interface this is (empty = not a pod interface, or unknown)',
    ADD COLUMN IF NOT EXISTS if_namespace LowCardinality(String) DEFAULT '' COMMENT 'Kubernetes namespace of if_pod (empty = unknown)'
;
-- ---------------------------------------------------------------------------------------------
-- Kubernetes-pair rollups: locality becomes the last sorting key column (a SummingMergeTree
-- keeps one row per key, a string column outside the key would be collapsed to any one of its
-- values). A column added by an ALTER may be appended to the sorting key in the same ALTER if
-- it has no DEFAULT expression (the type's default, '', fills the existing rows). Re-applied,
-- the column exists and the key is already the new one: no change. The views' queries are
-- replaced in place (MODIFY QUERY: no window where inserts miss the rollups).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE flows_k8s_1m
    ADD COLUMN IF NOT EXISTS locality LowCardinality(String) COMMENT 'flows.locality (empty = unknown, or aggregated before migration 0003)' AFTER dst_port,
    MODIFY ORDER BY (time, src_namespace, src_workload, dst_namespace, dst_workload, src_service, dst_service, src_pod, dst_pod, src_node, dst_node, proto, dst_port, locality)
;
ALTER TABLE flows_k8s_1h
    ADD COLUMN IF NOT EXISTS locality LowCardinality(String) COMMENT 'flows.locality (empty = unknown, or aggregated before migration 0003)' AFTER dst_port,
    MODIFY ORDER BY (time, src_namespace, src_workload, dst_namespace, dst_workload, src_service, dst_service, src_pod, dst_pod, src_node, dst_node, proto, dst_port, locality)
;
ALTER TABLE flows_k8s_1m_mv MODIFY QUERY
SELECT toStartOfMinute(time_flow_end) AS time,
       src_namespace, src_workload, src_pod, src_service, src_node,
       dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows,
       countIf(bitAnd(tcp_flags, 18) = 2) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops
FROM flows
GROUP BY time, src_namespace, src_workload, src_pod, src_service, src_node,
         dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality
;
ALTER TABLE flows_k8s_1h_mv MODIFY QUERY
SELECT toStartOfHour(time_flow_end) AS time,
       src_namespace, src_workload, src_pod, src_service, src_node,
       dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality,
       sum(bytes) AS bytes, sum(packets) AS packets, count() AS flows,
       countIf(bitAnd(tcp_flags, 18) = 2) AS new_connections,
       sum(retransmits) AS retransmits, sum(drops) AS drops
FROM flows
GROUP BY time, src_namespace, src_workload, src_pod, src_service, src_node,
         dst_namespace, dst_workload, dst_pod, dst_service, dst_node, proto, dst_port, locality
;
