-- Model mix: each model's cost and tokens in the current window and the one before it.
-- the usage source (sql/usage_source.sql) over both windows, split at start_ms (no row straddles it).
SELECT
    toString(model) AS key,
    sumIf(nano_usd, bucket >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')) AS cur_nano,
    sumIf(nano_usd, bucket < fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')) AS prev_nano,
    sumIf(tokens, bucket >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')) AS cur_tokens,
    sumIf(tokens, bucket < fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')) AS prev_tok
FROM ({usage})
WHERE 1 {filters}
GROUP BY key
ORDER BY cur_nano DESC, key
