-- DNS latency per client and resolver over the last {minutes:UInt32} minutes (raw flows): for
-- each client (side A, the end that sent the queries: namespace/workload, else namespace/pod,
-- else the IP address) and resolver (side B: namespace/service, else namespace/workload, else
-- namespace/pod, else the IP address) of the records that carried DNS, the queries, the
-- responses matched to their query (answered), the latency percentiles in milliseconds (exact:
-- the value at position level * n of the sorted latencies of dns_latencies_us, over every
-- record's array, as quantileExact over arrayJoin(dns_latencies_us) gives them without
-- multiplying the other sums; 0 when nothing was answered), the mean over every answered
-- response (dns_latency_sum_ns / dns_answered) and the maximum. A record keeps the first 64
-- latencies of its interval: the percentiles are exact while each record's dns_answered <= 64,
-- over the first 64 of each interval beyond. Rows with duplicate = 1 are left out. Under 1:N
-- packet sampling the figures are what the sampled packets showed (an answer is matched only
-- when its query was sampled too), never multiplied by sampling_rate (max_sampling_rate: the
-- highest N of the rows, 1 = exact).
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    multiIf(src_workload != '', concat(src_namespace, '/', src_workload),
            src_pod != '', concat(src_namespace, '/', src_pod),
            replaceRegexpOne(IPv6NumToString(src_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS client,
    multiIf(dst_service != '', concat(dst_namespace, '/', dst_service),
            dst_workload != '', concat(dst_namespace, '/', dst_workload),
            dst_pod != '', concat(dst_namespace, '/', dst_pod),
            replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS resolver,
    sum(dns_queries) AS queries,
    sum(dns_answered) AS answered,
    if(answered = 0, 0, round(quantileExactArray(0.5)(dns_latencies_us) / 1e3, 3)) AS latency_p50_ms,
    if(answered = 0, 0, round(quantileExactArray(0.99)(dns_latencies_us) / 1e3, 3)) AS latency_p99_ms,
    if(answered = 0, 0, round(sum(dns_latency_sum_ns) / answered / 1e6, 3)) AS latency_mean_ms,
    round(max(dns_latency_max_ns) / 1e6, 3) AS latency_max_ms,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
  AND dns_queries + dns_responses > 0 AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY client, resolver
ORDER BY latency_p99_ms DESC, client, resolver
LIMIT {limit:UInt32}
