-- Totals over [start_ms, end_ms): one row.
SELECT
    count() AS events,
    uniqExact(agent_id) AS agents,
    uniqExactIf(task_id, task_id != '') AS tasks,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd,
    sum(unpriced) AS unpriced_events
FROM {db}.usage_events FINAL
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') {filters}
