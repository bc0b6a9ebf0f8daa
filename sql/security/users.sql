-- Least-privilege roles and users for flowlens (ClickHouse >= 24.8 with SQL access control,
-- i.e. access_management enabled for the admin applying this file). Not a migration: it holds
-- credentials, so an administrator applies it once per cluster, with the values substituted
-- from the environment, never written into the repository:
--
--   export FLOWLENS_DB=default
--   export FLOWLENS_SINK_PASSWORD_SHA256=$(printf %s "$SINK_PASSWORD" | sha256sum | cut -d' ' -f1)
--   export FLOWLENS_ANALYST_PASSWORD_SHA256=$(printf %s "$ANALYST_PASSWORD" | sha256sum | cut -d' ' -f1)
--   export FLOWLENS_MIGRATOR_PASSWORD_SHA256=$(printf %s "$MIGRATOR_PASSWORD" | sha256sum | cut -d' ' -f1)
--   envsubst < sql/security/users.sql | clickhouse-client --multiquery
--
-- Only SHA-256 hashes reach ClickHouse and its query log. Every statement is idempotent.
--
-- Roles:
--   flowlens_writer   - the sink at run time: INSERT into `flows` only. The rollups are filled
--                       by the materialized views with their definer's rights (ClickHouse's
--                       default SQL SECURITY DEFINER for materialized views since 24.2), so the
--                       sink needs no grant on them. It also reads: the three kafka_* columns
--                       of `flows` (restart recovery, see sink/src/run.rs), `schema_migrations`
--                       (version check) and the column list of `flows` (row validation).
--   flowlens_reader   - analysts and dashboards: SELECT on the flowlens database, nothing else.
--   flowlens_migrator - `flowlens-sink migrate`: creates and alters the flowlens tables/views.
-- Users: flowlens_sink (writer, with sink.migrate_on_start = false), flowlens_analyst
-- (reader, readonly = 2: may set query settings, cannot write), flowlens_migrate (migrator).
CREATE ROLE IF NOT EXISTS flowlens_writer
;
GRANT INSERT ON ${FLOWLENS_DB}.flows TO flowlens_writer
;
GRANT SELECT(kafka_topic, kafka_partition, kafka_offset) ON ${FLOWLENS_DB}.flows TO flowlens_writer
;
GRANT SELECT ON ${FLOWLENS_DB}.schema_migrations TO flowlens_writer
;
GRANT SHOW COLUMNS ON ${FLOWLENS_DB}.flows TO flowlens_writer
;
CREATE ROLE IF NOT EXISTS flowlens_reader
;
GRANT SELECT ON ${FLOWLENS_DB}.* TO flowlens_reader
;
CREATE ROLE IF NOT EXISTS flowlens_migrator
;
GRANT CREATE DATABASE ON ${FLOWLENS_DB}.* TO flowlens_migrator
;
GRANT CREATE TABLE, CREATE VIEW, DROP VIEW, ALTER TABLE, ALTER VIEW, SELECT, INSERT, SHOW ON ${FLOWLENS_DB}.* TO flowlens_migrator
;
CREATE USER IF NOT EXISTS flowlens_sink
    IDENTIFIED WITH sha256_hash BY '${FLOWLENS_SINK_PASSWORD_SHA256}'
    DEFAULT ROLE flowlens_writer
;
GRANT flowlens_writer TO flowlens_sink
;
CREATE USER IF NOT EXISTS flowlens_analyst
    IDENTIFIED WITH sha256_hash BY '${FLOWLENS_ANALYST_PASSWORD_SHA256}'
    DEFAULT ROLE flowlens_reader
    SETTINGS readonly = 2
;
GRANT flowlens_reader TO flowlens_analyst
;
CREATE USER IF NOT EXISTS flowlens_migrate
    IDENTIFIED WITH sha256_hash BY '${FLOWLENS_MIGRATOR_PASSWORD_SHA256}'
    DEFAULT ROLE flowlens_migrator
;
GRANT flowlens_migrator TO flowlens_migrate
;
