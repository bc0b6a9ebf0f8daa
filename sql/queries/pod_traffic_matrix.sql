-- Pod-to-pod traffic matrix over the last {minutes:UInt32} minutes, from the per-minute
-- Kubernetes rollup (flows_k8s_1m). src is the initiator (side A), dst side B; bytes and
-- packets count both directions of the conversations (the rollup's reverse_* columns hold the
-- B->A share), duplicate records are not in the rollup (migration 0004). A side without a
-- known pod is '(unknown)'. Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
-- Bytes and packets are the rollup's estimates under 1:N sampling (counted * sampling_rate,
-- exact at 1:1, migration 0006; minutes rolled up before it hold counted values and
-- max_sampling_rate 0); max_sampling_rate is the highest N of the rows summed.
SELECT
    if(src_pod = '', '(unknown)', concat(src_namespace, '/', src_pod)) AS src,
    if(dst_pod = '', '(unknown)', concat(dst_namespace, '/', dst_pod)) AS dst,
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
