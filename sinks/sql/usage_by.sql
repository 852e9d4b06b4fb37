-- Usage and cost by one dimension over [start_ms, end_ms), most expensive first.
-- {dim} is agent_id | user_id | team | model | task_id | session_id; {filters} adds
-- `AND <column> = {f_<column>:String}` per filter. FINAL: every event_id counted once.
-- Windows bound the materialized `ts` (ts_ms at millisecond precision, so exactly the same
-- rows) so the primary key (toStartOfDay(ts)) and the monthly partitions skip what lies
-- outside; every query here does this.
SELECT
    toString({dim}) AS key,
    count() AS events,
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
GROUP BY key
ORDER BY nano_usd DESC, tokens DESC, key
LIMIT {limit:UInt32}
