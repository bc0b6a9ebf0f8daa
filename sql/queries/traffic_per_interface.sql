-- Bytes, packets and flow records per host / interface / direction in the last
-- {minutes:UInt32} minutes, with the average rate over that window.
SELECT
    host,
    if_name,
    direction,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    count() AS flows,
    round(bytes * 8 / ({minutes:UInt32} * 60), 1) AS avg_bits_per_s  -- bytes = the sum above
FROM flows
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
GROUP BY host, if_name, direction
ORDER BY host, if_name, direction
