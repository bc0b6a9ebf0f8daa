-- Kernel drops by reason over the last {minutes:UInt32} minutes (raw flows, every protocol):
-- per host, drop reason (the kernel's skb drop reason of the last drop in each record, e.g.
-- NETFILTER_DROP) and destination (side B: namespace/service, else namespace/workload, else
-- namespace/pod, else the IP address), the packets and bytes dropped and the records that
-- dropped (`rec` names a row: drops is also the sum's alias). Rows with duplicate = 1 are
-- left out. Drops are counted by a kernel tracepoint on every drop, also under 1:N packet
-- sampling: these are exact counts, never multiplied by sampling_rate.
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    host,
    drop_reason,
    multiIf(dst_service != '', concat(dst_namespace, '/', dst_service),
            dst_workload != '', concat(dst_namespace, '/', dst_workload),
            dst_pod != '', concat(dst_namespace, '/', dst_pod),
            replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS dst,
    sum(drops) AS drops,
    sum(drop_bytes) AS drop_bytes,
    count() AS flows
FROM flows AS rec
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
  AND rec.drops > 0 AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY host, drop_reason, dst
ORDER BY drops DESC, host, drop_reason, dst
LIMIT {limit:UInt32}
