-- Bytes, packets and flow records per host / interface / direction in the last
-- {minutes:UInt32} minutes, with the average rate over that window: what each interface
-- carried. A row's A->B packets count under its direction, its B->A packets (reverse_*) under
-- the opposite one; records are counted once, under the A->B direction. Rows with
-- duplicate = 1 are included (the interface did carry them) and their share is shown in
-- duplicate_bytes: sum bytes - duplicate_bytes over a host's interfaces for the host's total.
-- Bytes and packets are estimated under 1:N sampling (est_* = counted * sampling_rate, exact
-- at 1:1); max_sampling_rate is the highest N of the rows summed (1 = every packet counted).
-- Parameter: minutes (UInt32).
SELECT
    host,
    if_name,
    CAST(leg.1 AS Enum8('ingress' = 0, 'egress' = 1)) AS direction,
    sum(leg.2) AS bytes,
    sum(leg.3) AS packets,
    sum(leg.4) AS flows,
    sumIf(leg.2, duplicate) AS duplicate_bytes,
    round(bytes * 8 / ({minutes:UInt32} * 60), 1) AS avg_bits_per_s,  -- bytes = the sum above
    max(sampling_rate) AS max_sampling_rate
FROM flows AS rec
ARRAY JOIN [(toInt8(rec.direction), rec.est_bytes, rec.est_packets, 1),
            (1 - toInt8(rec.direction), rec.est_reverse_bytes, rec.est_reverse_packets, 0)] AS leg
WHERE time_flow_end >= now64(9) - toIntervalMinute({minutes:UInt32})
  AND (leg.4 = 1 OR leg.3 > 0 OR leg.2 > 0)
GROUP BY host, if_name, direction
ORDER BY host, if_name, direction
