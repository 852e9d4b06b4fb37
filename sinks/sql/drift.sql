-- Model mix: each model's cost and tokens in the current window and the one before it.
SELECT
    toString(model) AS key,
    sumIf(nano_usd, ts_ms >= {start_ms:Int64}) AS cur_nano,
    sumIf(nano_usd, ts_ms < {start_ms:Int64}) AS prev_nano,
    sumIf(tokens, ts_ms >= {start_ms:Int64}) AS cur_tokens,
    sumIf(tokens, ts_ms < {start_ms:Int64}) AS prev_tok
FROM {db}.usage_events FINAL
WHERE ts >= fromUnixTimestamp64Milli({prev_start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') {filters}
GROUP BY key
ORDER BY cur_nano DESC, key
