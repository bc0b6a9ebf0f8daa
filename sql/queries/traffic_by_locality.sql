-- Traffic by locality over the last {minutes:UInt32} minutes (flows_k8s_1m): the enricher's
-- locality of each flow ('node': both ends on the same node, 'cluster': both in the cluster on
-- different or unknown nodes or through a ClusterIP, 'external': one end outside the cluster;
-- '(unknown)' for flows without it: no Kubernetes metadata, neither end known, or rolled up
-- before migration 0003), and same/cross namespace ('unknown' when a side has none). Bytes
-- and packets count both directions, duplicate records are not counted (migration 0004).
-- Bytes and packets are the rollup's estimates under 1:N sampling (counted * sampling_rate,
-- exact at 1:1, migration 0006; minutes rolled up before it hold counted values and
-- max_sampling_rate 0); max_sampling_rate is the highest N of the rows summed.
-- Parameters: minutes (UInt32), namespace (String: rows with either end in that Kubernetes
-- namespace; '' = all).
SELECT
    if(locality = '', '(unknown)', locality) AS locality,
    multiIf(src_namespace = '' OR dst_namespace = '', 'unknown',
            src_namespace = dst_namespace, 'same-namespace', 'cross-namespace') AS namespaces,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(flows) AS flows,
    max(max_sampling_rate) AS max_sampling_rate
FROM flows_k8s_1m
WHERE time >= toStartOfMinute(now() - toIntervalMinute({minutes:UInt32}))
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY locality, namespaces
ORDER BY locality, namespaces
