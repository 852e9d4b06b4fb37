-- Rebuild rollup_hourly for the hours in [start_ms, end_ms) from the deduplicated raw rows
-- (FINAL: every event_id once). The new rows carry built_ms and replace the hours' previous
-- versions (ReplacingMergeTree). Run by sinks/rollups.py; {start_ms}, {end_ms}, {built_ms}
-- are integers it fills in.
INSERT INTO {db}.rollup_hourly
SELECT
    toStartOfHour(ts) AS hour,
    agent_id, model, user_id, team, provider,
    count() AS events,
    countIf(status = 'error') AS errors,
    sum(unpriced) AS unpriced_events,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd,
    sum(cache_savings_nano) AS cache_savings_nano,
    sum(cache_write_premium_nano) AS cache_write_premium_nano,
    uniqExactStateIf(task_id, task_id != '') AS tasks,
    {built_ms} AS built_ms
FROM {db}.usage_events FINAL
WHERE ts >= fromUnixTimestamp64Milli({start_ms}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms}, 'UTC')
GROUP BY hour, agent_id, model, user_id, team, provider
