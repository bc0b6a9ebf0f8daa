-- 0007_dns_http: the DNS and HTTP/1.x statistics of EnrichedFlow version 5
-- (schemas/avro/enriched_flow.avsc, `dns`: what DNS traffic, UDP or TCP on port 53 or a DNS
-- port the collector is configured with, the conversation carried on this interface in the
-- interval, both directions together; `http`: the same for HTTP/1.x requests and responses on
-- the TCP ports the collector watches for HTTP).
-- ClickHouse >= 24.8 (checked with chdb-core 26.9.0). Statements are separated by a line
-- holding only a semicolon, every statement is idempotent (IF NOT EXISTS), so the file can be
-- re-applied safely.
--
-- A row without DNS (no DNS message in the interval, a record of an older version, a row
-- written before this migration) holds 0, [] and ''. The counts are per row like packets: sum
-- them over rows (WHERE NOT duplicate for totals), never take one row's figure as a
-- conversation's. dns_noerror + dns_nxdomain + dns_servfail + dns_refused + dns_other_rcode =
-- dns_responses. Latency quantiles: quantiles over arrayJoin(dns_latencies_us), exact while a
-- row's dns_answered <= 64 (the collector keeps the first 64 latencies of an interval); the
-- mean is sum(dns_latency_sum_ns) / sum(dns_answered). In a conversation the querying end is
-- usually side A (src_*), the resolver side B (dst_*). sql/queries/dns_errors_by_name.sql and
-- dns_latency.sql read these columns.
--
-- The http_* columns follow the same rules: 0, [] and '' without HTTP; http_2xx + http_3xx +
-- http_4xx + http_5xx + http_status_other = http_responses (final responses, status >= 200);
-- a response is answered when matched to the oldest unanswered request of the conversation
-- (HTTP/1.x answers in order), its latency from request line to status line. The client is
-- usually side A, the server side B. sql/queries/http_errors_by_path.sql and http_latency.sql
-- read them.
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS dns_queries UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'DNS queries (QR = 0) the conversation carried in the interval, either direction',
    ADD COLUMN IF NOT EXISTS dns_responses UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'DNS responses (QR = 1) in the interval, either direction (the five dns_* RCODE counts add up to it)',
    ADD COLUMN IF NOT EXISTS dns_noerror UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'responses with RCODE NOERROR (0)',
    ADD COLUMN IF NOT EXISTS dns_nxdomain UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'responses with RCODE NXDOMAIN (3): the name does not exist',
    ADD COLUMN IF NOT EXISTS dns_servfail UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'responses with RCODE SERVFAIL (2): the server could not answer',
    ADD COLUMN IF NOT EXISTS dns_refused UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'responses with RCODE REFUSED (5)',
    ADD COLUMN IF NOT EXISTS dns_other_rcode UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'responses with any other RCODE',
    ADD COLUMN IF NOT EXISTS dns_answered UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'responses matched by transaction id to an earlier query of the conversation in the opposite direction (each gives one latency)',
    ADD COLUMN IF NOT EXISTS dns_latency_sum_ns UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'sum of the query-to-response latencies of the answered responses (ns); mean = sum(dns_latency_sum_ns) / sum(dns_answered)',
    ADD COLUMN IF NOT EXISTS dns_latency_max_ns UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'largest of those latencies (ns), 0 = none answered',
    ADD COLUMN IF NOT EXISTS dns_latencies_us Array(UInt32) DEFAULT [] CODEC(ZSTD(1)) COMMENT 'the first 64 of those latencies in the interval (microseconds): exact quantiles while dns_answered <= 64',
    ADD COLUMN IF NOT EXISTS dns_last_query LowCardinality(String) DEFAULT '' COMMENT 'QNAME of the last query in the interval (lower-case, no trailing dot), empty = no query',
    ADD COLUMN IF NOT EXISTS dns_last_query_type UInt16 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'QTYPE of dns_last_query (1 = A, 28 = AAAA, 5 = CNAME, 33 = SRV, ...), 0 = no query',
    ADD COLUMN IF NOT EXISTS http_requests UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'HTTP/1.x requests (request lines) the conversation carried in the interval, either direction',
    ADD COLUMN IF NOT EXISTS http_responses UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'final HTTP/1.x responses (status >= 200; 1xx not counted) in the interval, either direction (the five status counts add up to it)',
    ADD COLUMN IF NOT EXISTS http_2xx UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'final responses with status 200-299',
    ADD COLUMN IF NOT EXISTS http_3xx UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'final responses with status 300-399',
    ADD COLUMN IF NOT EXISTS http_4xx UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'final responses with status 400-499 (client errors)',
    ADD COLUMN IF NOT EXISTS http_5xx UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'final responses with status 500-599 (server errors)',
    ADD COLUMN IF NOT EXISTS http_status_other UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'final responses with a status outside 200-599',
    ADD COLUMN IF NOT EXISTS http_answered UInt32 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'final responses matched to the oldest unanswered request of the conversation (each gives one latency)',
    ADD COLUMN IF NOT EXISTS http_latency_sum_ns UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'sum of the request-to-response latencies of the answered responses (ns); mean = sum(http_latency_sum_ns) / sum(http_answered)',
    ADD COLUMN IF NOT EXISTS http_latency_max_ns UInt64 DEFAULT 0 CODEC(T64, ZSTD(1)) COMMENT 'largest of those latencies (ns), 0 = none answered',
    ADD COLUMN IF NOT EXISTS http_latencies_us Array(UInt32) DEFAULT [] CODEC(ZSTD(1)) COMMENT 'the first 64 of those latencies in the interval (microseconds): exact quantiles while http_answered <= 64',
    ADD COLUMN IF NOT EXISTS http_last_method LowCardinality(String) DEFAULT '' COMMENT 'method of the last request in the interval (GET, POST, ...), empty = no request',
    ADD COLUMN IF NOT EXISTS http_last_path String DEFAULT '' CODEC(ZSTD(1)) COMMENT 'path of the last request (no query or fragment, at most 128 bytes, bytes outside printable ASCII percent-encoded), empty = no request',
    ADD COLUMN IF NOT EXISTS http_last_status UInt16 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'status of the last final response in the interval, 0 = none'
;
