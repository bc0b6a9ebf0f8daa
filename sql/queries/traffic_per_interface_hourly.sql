-- Bytes, packets and flow records per hour, host, interface and direction over the last
-- {hours:UInt32} hours, from the hourly rollup (flows_iface_1h, kept 400 days by default),
-- with the same meaning as traffic_per_interface.sql: both directions of each conversation
-- under their own direction, duplicate rows included and shown in duplicate_bytes (`rollup`
-- names a row: bytes is also the sum's alias). The rollup's bytes and packets are estimated
-- under 1:N sampling (counted * sampling_rate, exact at 1:1, migration 0006; hours rolled up
-- before it hold counted values and max_sampling_rate 0); max_sampling_rate is the highest N.
-- Parameter: hours (UInt32).
SELECT
    time,
    host,
    if_name,
    direction,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(flows) AS flows,
    sumIf(rollup.bytes, duplicate) AS duplicate_bytes,
    max(max_sampling_rate) AS max_sampling_rate
FROM flows_iface_1h AS rollup
WHERE time >= toStartOfHour(now() - toIntervalHour({hours:UInt32}))
GROUP BY time, host, if_name, direction
ORDER BY time, host, if_name, direction
