-- The writer's usage_events insert on chDB. Each event arrives as its canonical JSON
-- (msgspec, from the validated struct; fields equal to their default are left out, so the
-- contract's non-empty defaults come back with ifNull) next to the columns only Python
-- knows: the price from the catalog and the Kafka coordinates. ClickHouse parses the JSON.
INSERT INTO {db}.usage_events
(
    event_id, ts_ms, agent_id, task_id, session_id, user_id, team, step, model, provider,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, tokens,
    estimated_tokens, criticality, status, prompt_hash, tool, tags, nano_usd, unpriced, price_version,
    price_model, price_provider, input_rate, cache_savings_nano, cache_write_premium_nano,
    kafka_partition, kafka_offset, ingested_ms
)
SELECT
    e.event_id, e.ts_ms, e.agent_id, e.task_id, e.session_id, e.user_id, e.team, ifNull(e.step, -1),
    e.model, ifNull(e.provider, 'other'),
    e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens, e.cache_write_1h_tokens,
    e.input_tokens + e.output_tokens + e.cache_read_tokens + e.cache_write_tokens + e.cache_write_1h_tokens,
    ifNull(e.estimated_tokens, -1), ifNull(e.criticality, 'normal'), ifNull(e.status, 'ok'), e.prompt_hash,
    e.tool, e.tags, nano_usd, unpriced, price_version,
    price_model, price_provider, input_rate, cache_savings_nano, cache_write_premium_nano,
    kafka_partition, kafka_offset, ingested_ms
FROM
(
    SELECT
        JSONExtract(raw, 'Tuple(event_id String, ts_ms Int64, agent_id String, model String,
            provider Nullable(String), task_id String, session_id String, user_id String, team String,
            step Nullable(Int64), input_tokens UInt64, output_tokens UInt64, cache_read_tokens UInt64,
            cache_write_tokens UInt64, cache_write_1h_tokens UInt64, estimated_tokens Nullable(Int64),
            criticality Nullable(String), status Nullable(String), prompt_hash String, tool String,
            tags Map(String, String))') AS e,
        *
    FROM Python(bw_arrow_batch)
)
