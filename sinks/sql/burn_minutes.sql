-- Spend per minute over [start_ms, end_ms) (the dashboard's burn-rate chart). Minutes with
-- no events are absent; the caller fills the gaps with zeros. Raw rows (the last hour or so):
-- bounded on `ts` so the primary key skips every other day.
SELECT
    intDiv(ts_ms, 60000) * 60000 AS minute_ms,
    count() AS events,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd
FROM {db}.usage_events FINAL
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') {filters}
GROUP BY minute_ms
ORDER BY minute_ms
