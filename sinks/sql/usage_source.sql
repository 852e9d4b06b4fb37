-- The usage of some time ranges as exact partial sums, for the queries that select FROM it
-- (sinks/queries.py fills it in): whole UTC days from rollup_daily, whole hours from
-- rollup_hourly, and the rest (the open hour, window edges off the hour) from the raw rows,
-- grouped here into the same columns. Every range comes from sinks/queries.py usage_source:
-- rolled-up ranges end at or before rollup_state's watermark, so rollups and raw rows never
-- overlap and never leave a gap. Queries aggregate these rows with sum(), uniqExactMerge(tasks)
-- for distinct tasks. The hours come from rollup_hourly (keys agent, model, user, team,
-- provider) or, for a query on tasks or sessions, from rollup_tasks_hourly (keys task, session,
-- agent, user, team; no days then); a key a part lacks is ''. A query on both kinds of keys
-- reads raw rows only. `bucket` is the start of the row's day, hour or quarter hour (raw rows:
-- every time zone's midnight falls on a quarter hour).
SELECT bucket, agent_id, model, user_id, team, provider, '' AS task_id, '' AS session_id,
       events, errors, unpriced_events, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       cache_write_1h_tokens, tokens, nano_usd, cache_savings_nano, cache_write_premium_nano, tasks
FROM {db}.rollup_daily FINAL
WHERE {daily_ranges}
UNION ALL
SELECT bucket, {hourly_keys},
       events, errors, unpriced_events, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       cache_write_1h_tokens, tokens, nano_usd, cache_savings_nano, cache_write_premium_nano, {hourly_tasks}
FROM {db}.{hourly_table} FINAL
WHERE {hourly_ranges}
UNION ALL
SELECT toDateTime(toStartOfFifteenMinutes(ts), 'UTC') AS bucket, agent_id, model, user_id, team, provider, task_id, session_id,
       count() AS events, countIf(status = 'error') AS errors, sum(unpriced) AS unpriced_events,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
       sum(cache_write_1h_tokens) AS cache_write_1h_tokens, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd,
       sum(cache_savings_nano) AS cache_savings_nano, sum(cache_write_premium_nano) AS cache_write_premium_nano,
       uniqExactStateIf(task_id, task_id != '') AS tasks
FROM {db}.usage_events FINAL
WHERE {raw_ranges}
GROUP BY bucket, agent_id, model, user_id, team, provider, task_id, session_id
