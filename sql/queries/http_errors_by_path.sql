-- HTTP errors by path over the last {minutes:UInt32} minutes (raw flows): per server (side B,
-- the end that answered: namespace, workload and pod, the pod given as its IP address when
-- unknown) and path (http_last_path, the path of the last request the conversation carried in
-- each record), the final responses with a 4xx (client error) and a 5xx (server error) status,
-- with the requests and responses of the same records. Only paths with at least one such
-- error; the worst first. A record that carried several paths in one interval counts all its
-- errors under the last one: a path's figures are exact when its records carried that path
-- only. Rows with duplicate = 1 are left out. HTTP figures are counted on the packets the
-- collector counted: under 1:N packet sampling they are what the sampled packets showed, never
-- multiplied by sampling_rate (max_sampling_rate: the highest N of the rows, 1 = exact).
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    dst_namespace AS namespace,
    dst_workload AS workload,
    if(dst_pod != '', dst_pod,
       replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS pod,
    http_last_path AS path,
    sum(http_4xx) AS errors_4xx,
    sum(http_5xx) AS errors_5xx,
    sum(http_requests) AS requests,
    sum(http_responses) AS responses,
    count() AS flows,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
  AND http_4xx + http_5xx > 0 AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY namespace, workload, pod, path
ORDER BY errors_4xx + errors_5xx DESC, namespace, workload, pod, path
LIMIT {limit:UInt32}
