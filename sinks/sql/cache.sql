-- Did caching pay off? Per {dim}: hit rate = cache reads / all input-side tokens;
-- savings = reads x (input - cache_read price); premium = writes x (write - input price);
-- both computed per event at ingest in exact nano-USD. the usage source (sql/usage_source.sql).
SELECT
    toString({dim}) AS key,
    sum(events) AS events,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(cache_savings_nano) AS savings_nano,
    sum(cache_write_premium_nano) AS write_premium_nano,
    savings_nano - write_premium_nano AS net_nano,
    if(input_tokens + cache_read_tokens + cache_write_tokens + cache_write_1h_tokens = 0, 0,
       cache_read_tokens / (input_tokens + cache_read_tokens + cache_write_tokens + cache_write_1h_tokens)) AS hit_rate
FROM ({usage})
WHERE 1 {filters}
GROUP BY key
ORDER BY net_nano DESC, key
