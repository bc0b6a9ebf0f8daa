-- Service-to-service traffic matrix over the last {minutes:UInt32} minutes (flows_k8s_1m).
-- Each side is namespace/service, else namespace/workload (clients rarely have a service),
-- else '(external)'; src is the initiator, bytes and packets count both directions, duplicate
-- records are not counted (migration 0004). Parameters: minutes (UInt32), limit (UInt32).
SELECT
    multiIf(src_service != '', concat(src_namespace, '/', src_service),
            src_workload != '', concat(src_namespace, '/', src_workload), '(external)') AS src,
    multiIf(dst_service != '', concat(dst_namespace, '/', dst_service),
            dst_workload != '', concat(dst_namespace, '/', dst_workload), '(external)') AS dst,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(flows) AS flows
FROM flows_k8s_1m
WHERE time >= toStartOfMinute(now() - toIntervalMinute({minutes:UInt32}))
GROUP BY src, dst
ORDER BY bytes DESC, src, dst
LIMIT {limit:UInt32}
