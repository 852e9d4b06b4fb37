-- The writer's usage_events insert on chDB. Each event arrives as its canonical JSON
-- (msgspec, from the validated struct; fields equal to their default are left out, so the
-- contract's non-empty defaults come back with ifNull) next to what only Python knows: the
-- catalog entry that prices it (its rates in nano-USD per 1M tokens, 0 when unpriced) and
-- the Kafka coordinates. ClickHouse parses the JSON and does the arithmetic of
-- `schemas.pricing.cost_nanos` and `sinks.rows.cache_effect`: Int128 sums (tokens x rate
-- passes Int64), ONE half-up rounding per figure, and floor division like Python's `//`
-- (intDiv truncates toward zero; a cache write premium can be negative).
-- {settings}: the insert's deduplication token (sinks/chdb_store.py dedup_settings) or nothing.
INSERT INTO {db}.usage_events
(
    event_id, ts_ms, agent_id, task_id, session_id, user_id, team, step, model, provider,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, tokens,
    estimated_tokens, criticality, status, prompt_hash, tool, tags, nano_usd, unpriced, price_version,
    price_model, price_provider, input_rate, cache_savings_nano, cache_write_premium_nano,
    kafka_partition, kafka_offset, ingested_ms, parent_agent_id, parent_task_id
)
{settings}
SELECT
    e.event_id, e.ts_ms, e.agent_id, e.task_id, e.session_id, e.user_id, e.team, ifNull(e.step, -1),
    e.model, ifNull(e.provider, 'other'),
    e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens, e.cache_write_1h_tokens,
    e.input_tokens + e.output_tokens + e.cache_read_tokens + e.cache_write_tokens + e.cache_write_1h_tokens,
    ifNull(e.estimated_tokens, -1), ifNull(e.criticality, 'normal'), ifNull(e.status, 'ok'), e.prompt_hash,
    e.tool, e.tags,
    toInt64(intDiv(cost + 500000, 1000000) - ((cost + 500000) % 1000000 < 0)) AS nano_usd,
    unpriced, price_version, price_model, price_provider, input_rate,
    toInt64(intDiv(saved + 500000, 1000000) - ((saved + 500000) % 1000000 < 0)) AS cache_savings_nano,
    toInt64(intDiv(extra + 500000, 1000000) - ((extra + 500000) % 1000000 < 0)) AS cache_write_premium_nano,
    kafka_partition, kafka_offset, ingested_ms, e.parent_agent_id, e.parent_task_id
FROM
(
    SELECT
        *,
        toInt128(e.input_tokens) * input_rate + toInt128(e.output_tokens) * output_rate
            + toInt128(e.cache_read_tokens) * cache_read_rate + toInt128(e.cache_write_tokens) * cache_write_rate
            + toInt128(e.cache_write_1h_tokens) * cache_write_1h_rate AS cost,
        toInt128(e.cache_read_tokens) * (input_rate - cache_read_rate) AS saved,
        toInt128(e.cache_write_tokens) * (cache_write_rate - input_rate)
            + toInt128(e.cache_write_1h_tokens) * (cache_write_1h_rate - input_rate) AS extra
    FROM
    (
        SELECT
            JSONExtract(raw, 'Tuple(event_id String, ts_ms Int64, agent_id String, model String,
                provider Nullable(String), task_id String, session_id String, user_id String, team String,
                step Nullable(Int64), input_tokens UInt64, output_tokens UInt64, cache_read_tokens UInt64,
                cache_write_tokens UInt64, cache_write_1h_tokens UInt64, estimated_tokens Nullable(Int64),
                criticality Nullable(String), status Nullable(String), prompt_hash String, tool String,
                tags Map(String, String), parent_agent_id String, parent_task_id String)') AS e,
            *
        FROM Python(bw_arrow_batch)
    )
)
