-- Spend per minute over [start_ms, end_ms) (the dashboard's burn-rate chart). Minutes with
-- no events are absent; the caller fills the gaps with zeros.
SELECT
    intDiv(ts_ms, 60000) * 60000 AS minute_ms,
    count() AS events,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd
FROM {db}.usage_events FINAL
WHERE ts_ms >= {start_ms:Int64} AND ts_ms < {end_ms:Int64} {filters}
GROUP BY minute_ms
ORDER BY minute_ms
