-- HTTP latency and errors per server over the last {minutes:UInt32} minutes (raw flows): for
-- each server (side B, the end that answered: namespace/workload, else namespace/pod, else the
-- IP address) of the records that carried HTTP/1.x, the requests, the final responses, the
-- responses matched to their request (answered), the latency percentiles in milliseconds
-- (request line to status line; exact: the value at position level * n of the sorted latencies
-- of http_latencies_us, over every record's array; 0 when nothing was answered), the mean over
-- every answered response (http_latency_sum_ns / http_answered), the maximum, and the error
-- ratio: final responses with a 4xx or 5xx status over all final responses (0 without
-- responses). A record keeps the first 64 latencies of its interval: the percentiles are exact
-- while each record's http_answered <= 64, over the first 64 of each interval beyond. Rows with
-- duplicate = 1 are left out. Under 1:N packet sampling the figures are what the sampled
-- packets showed (a response is matched only when its request was sampled too), never
-- multiplied by sampling_rate (max_sampling_rate: the highest N of the rows, 1 = exact).
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    multiIf(dst_workload != '', concat(dst_namespace, '/', dst_workload),
            dst_pod != '', concat(dst_namespace, '/', dst_pod),
            replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS server,
    sum(http_requests) AS requests,
    sum(http_responses) AS responses,
    sum(http_answered) AS answered,
    if(answered = 0, 0, round(quantileExactArray(0.5)(http_latencies_us) / 1e3, 3)) AS latency_p50_ms,
    if(answered = 0, 0, round(quantileExactArray(0.99)(http_latencies_us) / 1e3, 3)) AS latency_p99_ms,
    if(answered = 0, 0, round(sum(http_latency_sum_ns) / answered / 1e6, 3)) AS latency_mean_ms,
    round(max(http_latency_max_ns) / 1e6, 3) AS latency_max_ms,
    if(responses = 0, 0, round((sum(http_4xx) + sum(http_5xx)) / responses, 4)) AS error_ratio,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
  AND http_requests + http_responses > 0 AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY server
ORDER BY latency_p99_ms DESC, server
LIMIT {limit:UInt32}
