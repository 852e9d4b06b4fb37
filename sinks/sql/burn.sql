-- Spend per local day (time zone {tz}) since start_ms (burn rate and forecasts are computed
-- from these). the usage source (sql/usage_source.sql) (its rows never straddle a local midnight).
SELECT
    toUnixTimestamp(toStartOfDay(bucket, {tz:String})) * 1000 AS day_ms,
    sum(events) AS events,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd
FROM ({usage})
WHERE 1 {filters}
GROUP BY day_ms
ORDER BY day_ms
