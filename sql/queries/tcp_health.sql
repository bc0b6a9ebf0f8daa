-- TCP health per server over the last {minutes:UInt32} minutes (raw flows): for each side B
-- of TCP conversations (the server: namespace/service, else namespace/workload, else
-- namespace/pod, else the IP address), the connections opened (tcp_start), the round-trip
-- time percentiles (exact) and maximum in milliseconds over the records that carry one
-- (rtt_ns > 0; 0 when none), retransmitted segments and their ratio to the packets of both
-- directions, kernel drops with the reasons seen (sorted), and resets. Rows with duplicate = 1 are
-- left out. Under 1:N sampling the ratio's packets are estimated (est_* = counted *
-- sampling_rate) while retransmits and drops are counted on every event (never sampled);
-- records, connections and resets count what the sampled packets showed (a SYN or RST not
-- sampled is not seen: lower bounds). max_sampling_rate is the highest N of the rows.
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    multiIf(dst_service != '', concat(dst_namespace, '/', dst_service),
            dst_workload != '', concat(dst_namespace, '/', dst_workload),
            dst_pod != '', concat(dst_namespace, '/', dst_pod),
            replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS server,
    count() AS flows,
    countIf(tcp_start) AS connections,
    round(quantileExactIf(0.5)(rtt_ns, rtt_ns > 0) / 1e6, 3) AS rtt_p50_ms,
    round(quantileExactIf(0.9)(rtt_ns, rtt_ns > 0) / 1e6, 3) AS rtt_p90_ms,
    round(maxIf(rtt_ns, rtt_ns > 0) / 1e6, 3) AS rtt_max_ms,
    sum(retransmits) AS retransmits,
    round(retransmits / sum(est_packets + est_reverse_packets), 4) AS retransmit_ratio,
    sum(drops) AS drops,
    arraySort(arrayFilter(r -> r != '', groupUniqArray(drop_reason))) AS drop_reasons,
    countIf(bitAnd(bitOr(tcp_flags, reverse_tcp_flags), 4) != 0) AS resets,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
  AND proto = 6 AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY server
ORDER BY retransmits + drops DESC, flows DESC, server
LIMIT {limit:UInt32}
