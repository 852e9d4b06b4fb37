-- Usage and cost by one dimension over [start_ms, end_ms), most expensive first.
-- {dim} is agent_id | user_id | team | model | provider | task_id | session_id; {filters} adds
-- `AND <column> = {f_<column>:String}` per filter. The usage source is the window's usage as exact
-- partial sums (sql/usage_source.sql: rollups for closed hours and days, raw rows for the
-- open hour; raw only when grouping or filtering by task or session).
SELECT
    toString({dim}) AS key,
    sum(events) AS events,
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
GROUP BY key
ORDER BY nano_usd DESC, tokens DESC, key
LIMIT {limit:UInt32}
