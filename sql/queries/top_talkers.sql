-- Top conversations' address pairs by bytes in the last {minutes:UInt32} minutes: src is the
-- initiator (side A), dst side B, and bytes/packets count both directions (A->B + B->A),
-- estimated under 1:N sampling (est_* = counted * sampling_rate, exact at 1:1), and
-- max_sampling_rate is the highest N of the rows summed (1 = every packet counted).
-- Rows with duplicate = 1 (packets already counted in another row of the host) are left out.
-- Parameters: minutes (UInt32), limit (UInt32), namespace (String: rows with either end in that
-- Kubernetes namespace; '' = all). IPv4 (IPv4-mapped) addresses are shown as dotted quads,
-- e.g. 10.0.0.1 instead of ::ffff:10.0.0.1.
SELECT
    replaceRegexpOne(IPv6NumToString(src_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1') AS src,
    replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1') AS dst,
    sum(est_bytes + est_reverse_bytes) AS bytes,
    sum(est_packets + est_reverse_packets) AS packets,
    count() AS flows,
    groupUniqArray(5)(proto) AS protos,
    anyIf(src_pod, src_pod != '') AS src_pod,
    anyIf(dst_pod, dst_pod != '') AS dst_pod,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32}) AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY src_addr, dst_addr
ORDER BY bytes DESC, src, dst
LIMIT {limit:UInt32}
