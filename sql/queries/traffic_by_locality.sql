-- Traffic by locality over the last {minutes:UInt32} minutes (flows_k8s_1m): same node,
-- cross node, or external (a side with no known node), and same/cross namespace ('unknown'
-- when a side has none). Parameter: minutes (UInt32).
SELECT
    multiIf(src_node = '' OR dst_node = '', 'external',
            src_node = dst_node, 'same-node', 'cross-node') AS locality,
    multiIf(src_namespace = '' OR dst_namespace = '', 'unknown',
            src_namespace = dst_namespace, 'same-namespace', 'cross-namespace') AS namespaces,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(flows) AS flows
FROM flows_k8s_1m
WHERE time >= toStartOfMinute(now() - toIntervalMinute({minutes:UInt32}))
GROUP BY locality, namespaces
ORDER BY locality, namespaces
