-- budgetwarden ClickHouse schema. Applied idempotently at start (every statement is IF NOT EXISTS).
-- {db} is the database, {ttl} a TTL clause or nothing (BUDGETWARDEN_TTL_DAYS).
-- Same DDL on chDB and on a ClickHouse server.

CREATE DATABASE IF NOT EXISTS {db};

-- One row per model call. ReplacingMergeTree keyed by event_id (inside ORDER BY) collapses
-- duplicates on merge; exact queries read it with FINAL. Cost is priced at ingest (nano-USD).
CREATE TABLE IF NOT EXISTS {db}.usage_events
(
    event_id String,
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC'),
    agent_id LowCardinality(String),
    task_id String,
    session_id String,
    user_id LowCardinality(String),
    team LowCardinality(String),
    step Int64,                      -- -1 when the event has no step
    model LowCardinality(String),
    provider LowCardinality(String),
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    cache_write_1h_tokens UInt64,
    tokens UInt64,                   -- sum of the five buckets
    estimated_tokens Int64,          -- -1 when absent
    criticality LowCardinality(String),
    status LowCardinality(String),
    prompt_hash String,
    tool LowCardinality(String),
    tags Map(String, String),
    nano_usd Int64,
    unpriced UInt8,
    price_version LowCardinality(String),
    price_model LowCardinality(String),     -- catalog model the price came from ('' when unpriced)
    price_provider LowCardinality(String),
    input_rate Int64,                -- nano-USD per 1M uncached input tokens at ingest (0 when unpriced)
    cache_savings_nano Int64,        -- what cache reads saved vs the input rate
    cache_write_premium_nano Int64,  -- what cache writes cost above the input rate
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_ms Int64
)
ENGINE = ReplacingMergeTree(ingested_ms)
PARTITION BY toYYYYMM(ts)
ORDER BY (toStartOfDay(ts), agent_id, event_id)
{ttl};

-- Query keys computed at insert (MATERIALIZED: never inserted, not in SELECT *). Added by
-- ALTER so that stores created before them get them too; their old parts compute them on read.
-- task_key / prompt_key: 0 exactly when task_id / prompt_hash is empty, else an odd hash.
-- waste_redundant.sql finds candidate tasks on them (8 + 4 bytes a row) instead of hashing
-- 10M strings a query; collisions only add candidates, which are checked on the strings.
ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS task_key UInt64 MATERIALIZED if(task_id = '', 0, bitOr(cityHash64(task_id), 1));
ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS prompt_key UInt32
        MATERIALIZED if(prompt_hash = '', 0, bitOr(toUInt32(cityHash64(prompt_hash) % 4294967296), 1));
-- agent_price_key: (priced provider, priced model, agent) as one LowCardinality string,
-- length-prefixed so it splits back exactly; waste_shapes.sql groups on this one dictionary
-- key instead of three LowCardinality columns (which ClickHouse groups as serialized strings).
ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS agent_price_key LowCardinality(String)
        MATERIALIZED concat(toString(length(price_provider)), ':', price_provider,
                            toString(length(price_model)), ':', price_model, agent_id);
-- Merges go column by column (vertical) whatever their size. The default merges parts that
-- add up to fewer than 131,072 rows horizontally, every column of every part at once: with
-- this table's ~40 columns a 6-part merge of 1.3 MB took 162 MB (system.merges), the sink's
-- largest memory step in the soak; vertical, the largest merge of the same load took 27 MB.
ALTER TABLE {db}.usage_events MODIFY SETTING
    vertical_merge_algorithm_min_rows_to_activate = 1,
    vertical_merge_algorithm_min_columns_to_activate = 1;

CREATE TABLE IF NOT EXISTS {db}.decisions
(
    decision_id String,
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC'),
    rule LowCardinality(String),
    severity LowCardinality(String),
    action LowCardinality(String),
    scope LowCardinality(String),
    subject String,
    agent_id LowCardinality(String),
    task_id String,
    observed Int64,
    limit Int64,
    unit LowCardinality(String),
    window String,
    message String,
    trigger_event_id String,
    policy_version Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (decision_id)
{ttl};

CREATE TABLE IF NOT EXISTS {db}.control_commands
(
    decision_id String,
    command LowCardinality(String),
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC'),
    agent_id LowCardinality(String),
    task_id String,
    model String,
    reason String,
    expires_ms Int64,
    delay_ms Int64,
    signed UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (agent_id, decision_id, command)
{ttl};

-- The audit trail of budget changes (the Kafka topic is compacted; this table keeps history).
-- limits/params/unset_fields: the key's whole override after the change; changed_fields, the
-- fields the command named; fields_before/after, what was in force (`budgetwarden budget history`).
CREATE TABLE IF NOT EXISTS {db}.policies
(
    policy_id String,
    ts_ms Int64,
    scope LowCardinality(String),
    subject String,
    limits String,                   -- JSON of the Limits struct
    params String,                   -- JSON of the rule params
    deleted UInt8,
    author String,
    overlay UInt8,                   -- 1: limits are laid over the entry, 0 (older records): they replace it
    unset_fields String,             -- JSON list
    changed_fields String,           -- JSON list
    fields_before String,            -- JSON object
    fields_after String,             -- JSON object
    reason String
)
ENGINE = ReplacingMergeTree
ORDER BY (policy_id, ts_ms);

-- The audit columns on a table created before them (a no-op on a new one).
ALTER TABLE {db}.policies
    ADD COLUMN IF NOT EXISTS overlay UInt8,
    ADD COLUMN IF NOT EXISTS unset_fields String,
    ADD COLUMN IF NOT EXISTS changed_fields String,
    ADD COLUMN IF NOT EXISTS fields_before String,
    ADD COLUMN IF NOT EXISTS fields_after String,
    ADD COLUMN IF NOT EXISTS reason String;

-- Bad input from either path (the sink's own decoder and the processor's usage.deadletter)
-- collapses on the original message's coordinates.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    topic LowCardinality(String),
    partition Int32,
    offset Int64,
    event_id String,                 -- set when ClickHouse rejected one event of a message
    ts_ms Int64,
    reason String,
    field String,
    key String,
    raw String                       -- base64 of the original bytes
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset, event_id);

-- Rollups maintained by ClickHouse: one row per (dimension, key, bucket). They see rows as
-- inserted, so a duplicate that slipped past the writer's recent-id filter is counted twice
-- here until nothing; exact answers come from usage_events FINAL.
CREATE TABLE IF NOT EXISTS {db}.usage_hourly
(
    bucket DateTime('UTC'),
    dimension LowCardinality(String),
    key String,
    events UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    cache_write_1h_tokens UInt64,
    tokens UInt64,
    nano_usd Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (dimension, bucket, key)
{rollup_ttl};

CREATE TABLE IF NOT EXISTS {db}.usage_daily AS {db}.usage_hourly
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (dimension, bucket, key)
{rollup_ttl};

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_hourly_mv TO {db}.usage_hourly AS
SELECT toStartOfHour(ts) AS bucket, d.1 AS dimension, d.2 AS key,
       count() AS events, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
       sum(cache_write_1h_tokens) AS cache_write_1h_tokens, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd
FROM {db}.usage_events
ARRAY JOIN [('agent', toString(agent_id)), ('user', toString(user_id)), ('team', toString(team)),
            ('model', toString(model)), ('task', task_id)] AS d
GROUP BY bucket, dimension, key;

-- Daily from hourly (a cascade: the hourly MV's output blocks feed this one), so an insert
-- aggregates its events once rather than twice; sums of sums are the same totals.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_daily_mv TO {db}.usage_daily AS
SELECT toStartOfDay(bucket) AS bucket, dimension, key,
       sum(events) AS events, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
       sum(cache_write_1h_tokens) AS cache_write_1h_tokens, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd
FROM {db}.usage_hourly
GROUP BY bucket, dimension, key;

-- Price catalogs loaded for re-pricing (one row per catalog version, model, valid_from).
CREATE TABLE IF NOT EXISTS {db}.prices
(
    catalog_version String,
    provider LowCardinality(String),
    model String,
    valid_from_ms Int64,
    input Int64,
    output Int64,
    cache_read Int64,
    cache_write Int64,
    cache_write_1h Int64,
    version String
)
ENGINE = ReplacingMergeTree
ORDER BY (catalog_version, provider, model, valid_from_ms);
