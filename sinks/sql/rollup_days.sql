-- Rebuild rollup_daily for the UTC days in [start_ms, end_ms) from their (closed, rebuilt)
-- hours; sums of the hours' sums, the days' task sets merged exactly.
INSERT INTO {db}.rollup_daily
SELECT
    toStartOfDay(bucket) AS day,
    agent_id, model, user_id, team, provider,
    sum(events), sum(errors), sum(unpriced_events), sum(input_tokens), sum(output_tokens),
    sum(cache_read_tokens), sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(tokens),
    sum(nano_usd), sum(cache_savings_nano), sum(cache_write_premium_nano),
    uniqExactMergeState(tasks),
    {built_ms} AS built_ms
FROM {db}.rollup_hourly FINAL
WHERE bucket >= toDateTime(intDiv({start_ms}, 1000), 'UTC') AND bucket < toDateTime(intDiv({end_ms}, 1000), 'UTC')
GROUP BY day, agent_id, model, user_id, team, provider
