-- budgetwarden ClickHouse schema. Applied idempotently at start (every statement is IF NOT EXISTS).
-- {db} is the database; {ttl} the raw events' TTL clause or nothing (BUDGETWARDEN_TTL_DAYS), {rollup_ttl}
-- and {audit_ttl} the rollups' and the decisions' (BUDGETWARDEN_ROLLUP_TTL_DAYS); sinks/store.py fills them.
-- TTLs apply to tables created with them (an existing table: ALTER TABLE ... MODIFY TTL).
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
-- Sub-agents (contract v1's optional parent fields; '' = none): who a row's agent and task worked
-- for. Added by ALTER so that older stores get them (their old rows read ''); the inclusive-cost
-- queries (sinks/subagents.py, sql/subagent_edges.sql) read them from raw rows.
ALTER TABLE {db}.usage_events ADD COLUMN IF NOT EXISTS parent_agent_id LowCardinality(String) DEFAULT '';
ALTER TABLE {db}.usage_events ADD COLUMN IF NOT EXISTS parent_task_id String DEFAULT '';
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
{audit_ttl};

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
{audit_ttl};

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

-- Rollups: one row per (bucket, agent, model, user, team, provider) with the sums every
-- usage query needs, hourly and daily (UTC buckets). Exact by construction, not by insert
-- hygiene: sinks/rollups.py REBUILDS an hour from `usage_events FINAL` (and a day from its
-- hours) once the hour has closed, and again whenever a late or replayed event lands in a
-- closed hour; a rebuilt row replaces the previous version (ReplacingMergeTree on built_ms),
-- so duplicates, replays and retried inserts can never count twice. (The materialized views
-- they replace summed rows as inserted: a retried batch counted twice, issue 16 item 6.)
-- Queries read rollups below `rollup_state`'s watermark and raw rows above it (the open
-- hour). `tasks` holds the exact set of non-empty task ids (merged with uniqExactMerge).
CREATE TABLE IF NOT EXISTS {db}.rollup_hourly
(
    bucket DateTime('UTC'),
    agent_id LowCardinality(String),
    model LowCardinality(String),
    user_id LowCardinality(String),
    team LowCardinality(String),
    provider LowCardinality(String),
    events UInt64,
    errors UInt64,
    unpriced_events UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    cache_write_1h_tokens UInt64,
    tokens UInt64,
    nano_usd Int64,
    cache_savings_nano Int64,
    cache_write_premium_nano Int64,
    tasks AggregateFunction(uniqExact, String),
    built_ms Int64
)
ENGINE = ReplacingMergeTree(built_ms)
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, agent_id, model, user_id, team, provider)
{rollup_ttl};

CREATE TABLE IF NOT EXISTS {db}.rollup_daily AS {db}.rollup_hourly
ENGINE = ReplacingMergeTree(built_ms)
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, agent_id, model, user_id, team, provider)
{rollup_ttl};

-- The same per task and session (their own table: as many keys as tasks, so the per-model
-- cube above stays small): `top --by task|session` and the task distribution read it.
CREATE TABLE IF NOT EXISTS {db}.rollup_tasks_hourly
(
    bucket DateTime('UTC'),
    task_id String,
    session_id String,
    agent_id LowCardinality(String),
    user_id LowCardinality(String),
    team LowCardinality(String),
    events UInt64,
    errors UInt64,
    unpriced_events UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    cache_write_1h_tokens UInt64,
    tokens UInt64,
    nano_usd Int64,
    cache_savings_nano Int64,
    cache_write_premium_nano Int64,
    built_ms Int64
)
ENGINE = ReplacingMergeTree(built_ms)
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, task_id, session_id, agent_id, user_id, team)
{rollup_ttl};

-- Everything strictly before rolled_until_ms (an hour start) is in rollup_hourly, and every
-- whole UTC day before it in rollup_daily. It only grows; readers take max().
CREATE TABLE IF NOT EXISTS {db}.rollup_state
(
    name LowCardinality(String),
    rolled_until_ms Int64,
    built_ms Int64
)
ENGINE = ReplacingMergeTree(built_ms)
ORDER BY name;

-- Usage per hour for Grafana's panels (ops/grafana): rollup_hourly below the watermark, raw
-- rows (deduplicated, grouped by hour) from it on; a panel filters and groups on `bucket`.
CREATE OR REPLACE VIEW {db}.usage_hours AS
SELECT bucket, agent_id, model, user_id, team, provider, events, errors, unpriced_events, input_tokens,
       output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, tokens, nano_usd,
       cache_savings_nano, cache_write_premium_nano
FROM {db}.rollup_hourly FINAL
WHERE bucket < (SELECT toDateTime(intDiv(max(rolled_until_ms), 1000), 'UTC') FROM {db}.rollup_state)
UNION ALL
SELECT toStartOfHour(ts) AS bucket, agent_id, model, user_id, team, provider, count() AS events,
       countIf(status = 'error') AS errors, sum(unpriced) AS unpriced_events, sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens,
       sum(cache_write_tokens) AS cache_write_tokens, sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
       sum(tokens) AS tokens, sum(nano_usd) AS nano_usd, sum(cache_savings_nano) AS cache_savings_nano,
       sum(cache_write_premium_nano) AS cache_write_premium_nano
FROM {db}.usage_events FINAL
WHERE ts >= (SELECT fromUnixTimestamp64Milli(max(rolled_until_ms), 'UTC') FROM {db}.rollup_state)
GROUP BY bucket, agent_id, model, user_id, team, provider;

-- The same per task for Grafana's cost-per-task panel: rollup_tasks_hourly below the watermark,
-- raw rows from it on.
CREATE OR REPLACE VIEW {db}.task_hours AS
SELECT bucket, task_id, session_id, agent_id, user_id, team, events, tokens, nano_usd
FROM {db}.rollup_tasks_hourly FINAL
WHERE bucket < (SELECT toDateTime(intDiv(max(rolled_until_ms), 1000), 'UTC') FROM {db}.rollup_state)
UNION ALL
SELECT toStartOfHour(ts) AS bucket, task_id, session_id, agent_id, user_id, team, count() AS events,
       sum(tokens) AS tokens, sum(nano_usd) AS nano_usd
FROM {db}.usage_events FINAL
WHERE ts >= (SELECT fromUnixTimestamp64Milli(max(rolled_until_ms), 'UTC') FROM {db}.rollup_state) AND task_id != ''
GROUP BY bucket, task_id, session_id, agent_id, user_id, team;

-- The summing views of earlier versions double-counted retried inserts; their data is
-- derived only, so they go (rollup_* are rebuilt from usage_events at the next start).
DROP VIEW IF EXISTS {db}.usage_daily_mv;
DROP VIEW IF EXISTS {db}.usage_hourly_mv;
DROP TABLE IF EXISTS {db}.usage_daily;
DROP TABLE IF EXISTS {db}.usage_hourly;

-- Inserts carry insert_deduplication_token (the batch's Kafka offsets, sinks/batch.py): a
-- retried or ambiguous insert of the same rows is applied once. Non-replicated MergeTree
-- remembers tokens only with a window.
ALTER TABLE {db}.usage_events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.decisions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.control_commands MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.policies MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.dead_letters MODIFY SETTING non_replicated_deduplication_window = 1000;

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
