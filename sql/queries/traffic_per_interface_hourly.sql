-- Bytes, packets and flow records per hour, host, interface and direction over the last
-- {hours:UInt32} hours, from the hourly rollup (flows_iface_1h, kept 400 days by default),
-- with the same meaning as traffic_per_interface.sql: both directions of each conversation
-- under their own direction, duplicate rows included and shown in duplicate_bytes (`rollup`
-- names a row: bytes is also the sum's alias).
-- Parameter: hours (UInt32).
SELECT
    time,
    host,
    if_name,
    direction,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(flows) AS flows,
    sumIf(rollup.bytes, duplicate) AS duplicate_bytes
FROM flows_iface_1h AS rollup
WHERE time >= toStartOfHour(now() - toIntervalHour({hours:UInt32}))
GROUP BY time, host, if_name, direction
ORDER BY time, host, if_name, direction
