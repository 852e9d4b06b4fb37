-- Rebuild rollup_tasks_hourly for the hours in [start_ms, end_ms) from the deduplicated raw
-- rows, like rollup_hours.sql (sinks/rollups.py fills in the integers).
INSERT INTO {db}.rollup_tasks_hourly
SELECT
    toStartOfHour(ts) AS hour,
    task_id, session_id, agent_id, user_id, team,
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
    {built_ms} AS built_ms
FROM {db}.usage_events FINAL
WHERE ts >= fromUnixTimestamp64Milli({start_ms}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms}, 'UTC')
GROUP BY hour, task_id, session_id, agent_id, user_id, team
