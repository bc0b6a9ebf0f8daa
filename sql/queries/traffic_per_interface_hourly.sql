-- Bytes, packets and flow records per hour, host, interface and direction over the last
-- {hours:UInt32} hours, from the hourly rollup (flows_iface_1h, kept 400 days by default).
-- Parameter: hours (UInt32).
SELECT
    time,
    host,
    if_name,
    direction,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(flows) AS flows
FROM flows_iface_1h
WHERE time >= toStartOfHour(now() - toIntervalHour({hours:UInt32}))
GROUP BY time, host, if_name, direction
ORDER BY time, host, if_name, direction
