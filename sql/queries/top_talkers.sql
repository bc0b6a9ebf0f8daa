-- Top source/destination address pairs by bytes in the last {minutes:UInt32} minutes.
-- Parameters: minutes (UInt32), limit (UInt32). IPv4 (IPv4-mapped) addresses are shown as
-- dotted quads, e.g. 10.0.0.1 instead of ::ffff:10.0.0.1.
SELECT
    replaceRegexpOne(IPv6NumToString(src_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1') AS src,
    replaceRegexpOne(IPv6NumToString(dst_addr), '^::ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$', '\\1') AS dst,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    count() AS flows,
    groupUniqArray(5)(proto) AS protos,
    anyIf(src_pod, src_pod != '') AS src_pod,
    anyIf(dst_pod, dst_pod != '') AS dst_pod
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
GROUP BY src_addr, dst_addr
ORDER BY bytes DESC
LIMIT {limit:UInt32}
