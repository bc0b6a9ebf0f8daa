-- Who talks to whom: an edge list for topology graphs over the last {minutes:UInt32} minutes
-- (raw flows). An edge goes from the initiator (side A, src) to side B (dst). A node is
-- namespace/workload, else namespace/pod, else the IP address; its kind is the workload kind,
-- 'Pod' or 'IP'. Edges carry bytes and packets of both directions, flow records, protocols
-- and destination ports (up to 10 each, sorted). Rows with duplicate = 1 are left out.
-- Bytes and packets are estimated under 1:N sampling (est_* = counted * sampling_rate, exact
-- at 1:1); max_sampling_rate is the highest N of the rows summed (1 = every packet counted).
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    multiIf(src_workload != '', concat(src_namespace, '/', src_workload),
            src_pod != '', concat(src_namespace, '/', src_pod),
            replaceRegexpOne(IPv6NumToString(src_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS source,
    multiIf(src_workload != '', toString(src_workload_kind), src_pod != '', 'Pod', 'IP') AS source_kind,
    multiIf(dst_workload != '', concat(dst_namespace, '/', dst_workload),
            dst_pod != '', concat(dst_namespace, '/', dst_pod),
            replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS target,
    multiIf(dst_workload != '', toString(dst_workload_kind), dst_pod != '', 'Pod', 'IP') AS target_kind,
    sum(est_bytes + est_reverse_bytes) AS bytes,
    sum(est_packets + est_reverse_packets) AS packets,
    count() AS flows,
    arraySort(groupUniqArray(10)(proto)) AS protos,
    arraySort(groupUniqArray(10)(dst_port)) AS dst_ports,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32}) AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY source, source_kind, target, target_kind
ORDER BY bytes DESC, source, target
LIMIT {limit:UInt32}
