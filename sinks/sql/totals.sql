-- Totals over [start_ms, end_ms): one row (the usage source (sql/usage_source.sql)).
SELECT
    sum(events) AS events,
    uniqExact(agent_id) AS agents,
    uniqExactMerge(tasks) AS tasks,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd,
    sum(unpriced_events) AS unpriced_events
FROM ({usage})
WHERE 1 {filters}
