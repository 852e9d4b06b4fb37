-- Spend per local day (time zone {tz}) since start_ms (burn rate and forecasts are computed from these).
SELECT
    toUnixTimestamp(toStartOfDay(ts, {tz:String})) * 1000 AS day_ms,
    count() AS events,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd
FROM {db}.usage_events FINAL
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') {filters}
GROUP BY day_ms
ORDER BY day_ms
