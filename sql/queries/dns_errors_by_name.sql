-- DNS errors by query name over the last {minutes:UInt32} minutes (raw flows): per client (side
-- A, the end that sent the queries: namespace and pod, the pod given as its IP address when
-- unknown) and query name (dns_last_query, the last name the conversation asked in each
-- record), the responses that came back NXDOMAIN (the name does not exist) and SERVFAIL (the
-- server could not answer), with the queries and responses of the same records. Only names with
-- at least one such error; the worst first. A record that asked several names in one interval
-- carries all its errors under the last one: a name's figures are exact when its records asked
-- that name only. Rows with duplicate = 1 are left out. DNS figures are counted on
-- the packets the collector counted: under 1:N packet sampling they are what the sampled
-- packets showed, never multiplied by sampling_rate (max_sampling_rate: the highest N of the
-- rows, 1 = exact).
-- Parameters: minutes (UInt32), limit (UInt32),
-- namespace (String: rows with either end in that Kubernetes namespace; '' = all).
SELECT
    src_namespace AS namespace,
    if(src_pod != '', src_pod,
       replaceRegexpOne(IPv6NumToString(src_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1')) AS pod,
    dns_last_query AS query_name,
    sum(dns_nxdomain) AS nxdomain,
    sum(dns_servfail) AS servfail,
    sum(dns_queries) AS queries,
    sum(dns_responses) AS responses,
    count() AS flows,
    max(sampling_rate) AS max_sampling_rate
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
  AND dns_nxdomain + dns_servfail > 0 AND NOT duplicate
  AND ({namespace:String} = '' OR src_namespace = {namespace:String} OR dst_namespace = {namespace:String})
GROUP BY namespace, pod, query_name
ORDER BY nxdomain + servfail DESC, namespace, pod, query_name
LIMIT {limit:UInt32}
