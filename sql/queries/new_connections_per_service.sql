-- New connections per destination service over the last {minutes:UInt32} minutes
-- (flows_k8s_1m): records where side A opened a TCP connection (flows.tcp_start: A's SYN
-- without ACK, or a SYN from both sides, i.e. the handshake in the record), and how many
-- distinct client pods made them. A SYN seen on two interfaces counts once: the second
-- interface's record is marked duplicate and not rolled up (migration 0004; before it, such a
-- SYN counted twice). Under 1:N sampling a connection is counted only when its SYN was
-- sampled (and side A is the side whose packet was sampled first): the counts are what the
-- samples showed, a lower bound, not an estimate; max_sampling_rate is the highest N of the
-- rollup rows (1 = every packet counted, 0 = rolled up before migration 0006).
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    concat(dst_namespace, '/', dst_service) AS service,
    sum(new_connections) AS new_connections,
    round(new_connections / {minutes:UInt32}, 3) AS per_minute,
    uniqExactIf(src_pod, flows_k8s_1m.new_connections > 0 AND src_pod != '') AS client_pods,
    max(max_sampling_rate) AS max_sampling_rate
FROM flows_k8s_1m
WHERE time >= toStartOfMinute(now() - toIntervalMinute({minutes:UInt32}))
  AND dst_service != ''
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY service
HAVING new_connections > 0
ORDER BY new_connections DESC, service
LIMIT {limit:UInt32}
