-- Re-price a period under the catalog version loaded into `prices`: the price in force at
-- each event's time (ASOF), one half-up rounding per event, exactly like ingest.
SELECT
    toString(e.model) AS key,
    count() AS events,
    sum(e.nano_usd) AS nano_usd,
    sum(if(p.valid_from_ms > 0, toInt64(intDiv(
        toInt128(e.input_tokens) * p.input + toInt128(e.output_tokens) * p.output
        + toInt128(e.cache_read_tokens) * p.cache_read + toInt128(e.cache_write_tokens) * p.cache_write
        + toInt128(e.cache_write_1h_tokens) * p.cache_write_1h + 500000, 1000000)), 0)) AS repriced_nano_usd,
    countIf(p.valid_from_ms = 0) AS unpriced_events
FROM
(
    SELECT model, ts_ms, nano_usd, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           cache_write_1h_tokens,
           lower(if(price_model != '', toString(price_model), toString(model))) AS price_name,
           lower(if(price_provider != '', toString(price_provider), toString(provider))) AS price_prov
    FROM {db}.usage_events FINAL
    WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') {filters}
) AS e
ASOF LEFT JOIN
(
    SELECT lower(model) AS price_name, lower(provider) AS price_prov, valid_from_ms, input, output,
           cache_read, cache_write, cache_write_1h
    FROM {db}.prices FINAL
    WHERE catalog_version = {catalog_version:String}
) AS p
ON e.price_name = p.price_name AND e.price_prov = p.price_prov AND e.ts_ms >= p.valid_from_ms
GROUP BY key
ORDER BY repriced_nano_usd DESC, key
