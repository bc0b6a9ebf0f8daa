-- Service-to-service traffic matrix over the last {minutes:UInt32} minutes (flows_k8s_1m).
-- Each side is namespace/service, else namespace/workload (clients rarely have a service),
-- else '(external)'; src is the initiator, bytes and packets count both directions, duplicate
-- records are not counted (migration 0004). Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
-- Bytes and packets are the rollup's estimates under 1:N sampling (counted * sampling_rate,
-- exact at 1:1, migration 0006; minutes rolled up before it hold counted values and
-- max_sampling_rate 0); max_sampling_rate is the highest N of the rows summed.
SELECT
    multiIf(src_service != '', concat(src_namespace, '/', src_service),
            src_workload != '', concat(src_namespace, '/', src_workload), '(external)') AS src,
    multiIf(dst_service != '', concat(dst_namespace, '/', dst_service),
            dst_workload != '', concat(dst_namespace, '/', dst_workload), '(external)') AS dst,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(flows) AS flows,
    max(max_sampling_rate) AS max_sampling_rate
FROM flows_k8s_1m
WHERE time >= toStartOfMinute(now() - toIntervalMinute({minutes:UInt32}))
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY src, dst
ORDER BY bytes DESC, src, dst
LIMIT {limit:UInt32}
