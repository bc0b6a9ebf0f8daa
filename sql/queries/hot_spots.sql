-- Retransmit and drop hot spots over the last {minutes:UInt32} minutes (raw flows): per host,
-- interface and source/destination workload (else pod, else address), the retransmitted
-- segments, kernel drops and TCP resets (conversation records with RST from either side),
-- worst first, with a loss ratio over the packets of both directions. Rows with
-- duplicate = 1 are left out. Rows from before EnrichedFlow v3 have no retransmits/drops.
-- Under 1:N sampling packets are estimated (est_* = counted * sampling_rate) while
-- retransmits and drops are counted by kernel tracepoints on every event (never sampled), so
-- the loss ratio stays an estimate of the real one; resets are records whose sampled packets
-- carried a RST (a lower bound). max_sampling_rate is the highest N of the rows (1 = exact).
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    host,
    if_name,
    multiIf(src_workload != '', concat(src_namespace, '/', src_workload),
            src_pod != '', concat(src_namespace, '/', src_pod),
            replaceRegexpOne(IPv6NumToString(src_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS src,
    multiIf(dst_workload != '', concat(dst_namespace, '/', dst_workload),
            dst_pod != '', concat(dst_namespace, '/', dst_pod),
            replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS dst,
    sum(retransmits) AS retransmits,
    sum(drops) AS drops,
    countIf(bitAnd(bitOr(tcp_flags, reverse_tcp_flags), 4) != 0) AS resets,
    sum(est_packets + est_reverse_packets) AS packets,
    round((retransmits + drops) / packets, 4) AS loss_ratio,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32}) AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY host, if_name, src, dst
HAVING retransmits + drops + resets > 0
ORDER BY retransmits + drops DESC, resets DESC, host, if_name, src, dst
LIMIT {limit:UInt32}
