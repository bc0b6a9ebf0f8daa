-- 0005_record_identity: what identifies a stored record across crashes and resets of Kafka, and
-- the aggregate projections the sink reads it back from (ARCHITECTURE.md, Delivery).
-- ClickHouse >= 24.8 (checked with chdb-core 26.9.0). Statements are separated by a line
-- holding only a semicolon, every statement is idempotent (IF NOT EXISTS), so the file can be
-- re-applied safely.
--
-- A row's identity is its origin: (origin_stream, origin_partition, origin_offset), where it
-- first entered a flowlens Kafka stream (EnrichedFlow v4 `origin`; for records without one, the
-- enriched topic's own position). kafka_stream names the incarnation of the enriched topic the
-- sink read the row from (its Kafka topic id, or a derived id: runtime/src/incarnation.rs), so
-- that (kafka_topic, kafka_partition, kafka_stream, kafka_offset) never names two records after
-- a topic is re-created or a broker starts its offsets again. kafka_timestamp is the enriched
-- record's broker timestamp: at assignment the sink checks that the record now at the highest
-- stored offset is the stored one.
--
-- Rows stored before this migration have zeros here (stream 00..00): the sink treats them as
-- another incarnation. Apply it with the sinks stopped (SIGTERM: they insert and commit what they
-- hold), as for 0004, so that no uncommitted batch is replayed across the upgrade.
--
-- The projections are written in the same part as the rows (as atomic as the rows): the
-- recovery queries read a few aggregated rows per part instead of scanning flows (which is
-- ORDER BY time). MATERIALIZE builds them for parts written before (a mutation, once).
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS kafka_stream FixedString(16) DEFAULT '' COMMENT 'incarnation of the Kafka topic the sink read the row from (topic id, big-endian UUID bytes, or a derived id)',
    ADD COLUMN IF NOT EXISTS kafka_timestamp DateTime64(3) DEFAULT 0 CODEC(Delta, ZSTD(1)) COMMENT 'broker timestamp of the Kafka record the row was read from (UTC, ms)',
    ADD COLUMN IF NOT EXISTS origin_topic LowCardinality(String) DEFAULT '' COMMENT 'name of the stream the record first entered (for people; the raw topic)',
    ADD COLUMN IF NOT EXISTS origin_stream FixedString(16) DEFAULT '' COMMENT 'incarnation of that stream: with origin_partition and origin_offset, the identity of the record',
    ADD COLUMN IF NOT EXISTS origin_partition Int32 DEFAULT 0 CODEC(ZSTD(1)) COMMENT 'partition of the origin stream',
    ADD COLUMN IF NOT EXISTS origin_offset Int64 DEFAULT 0 CODEC(Delta, ZSTD(1)) COMMENT 'offset of the record in the origin stream partition'
;
ALTER TABLE flows ADD PROJECTION IF NOT EXISTS kafka_positions
(
    SELECT kafka_topic, kafka_partition, kafka_stream,
           max(kafka_offset),
           argMax(kafka_timestamp, kafka_offset),
           argMax(origin_stream, kafka_offset),
           argMax(origin_partition, kafka_offset),
           argMax(origin_offset, kafka_offset)
    GROUP BY kafka_topic, kafka_partition, kafka_stream
)
;
ALTER TABLE flows ADD PROJECTION IF NOT EXISTS origin_positions
(
    SELECT kafka_topic, kafka_partition, origin_stream, origin_partition, max(origin_offset)
    GROUP BY kafka_topic, kafka_partition, origin_stream, origin_partition
)
;
ALTER TABLE flows MATERIALIZE PROJECTION kafka_positions
;
ALTER TABLE flows MATERIALIZE PROJECTION origin_positions
;
