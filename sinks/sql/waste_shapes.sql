-- Per agent and priced model: how many calls were "simple" (small output and context) and
-- their tokens, plus context and caching totals. The waste report prices these in Python
-- against the catalog (cheaper model, missed cache reads). `simple` is computed once per row.
-- Grouped on agent_price_key ("<len>:<provider><len>:<model><agent>", schema.sql), one
-- LowCardinality key, then split back into its three parts.
SELECT
    substring(rest, position(rest, ':') + 1 + model_len) AS agent_id,
    substring(key, position(key, ':') + 1, provider_len) AS provider,
    substring(rest, position(rest, ':') + 1, model_len) AS model,
    * EXCEPT (key, provider_len, rest, model_len)
FROM
(
    SELECT
        toString(agent_price_key) AS key,
        toUInt64(substring(key, 1, position(key, ':') - 1)) AS provider_len,
        substring(key, position(key, ':') + 1 + provider_len) AS rest,
        toUInt64(substring(rest, 1, position(rest, ':') - 1)) AS model_len,
        count() AS events,
        sum(nano_usd) AS all_nano_usd,
        countIf(simple) AS simple_events,
        sumIf(nano_usd, simple) AS simple_nano_usd,
        sumIf(input_tokens, simple) AS simple_input_tokens,
        sumIf(output_tokens, simple) AS simple_output_tokens,
        sumIf(cache_read_tokens, simple) AS simple_cache_read_tokens,
        sumIf(cache_write_tokens, simple) AS simple_cache_write_tokens,
        sumIf(cache_write_1h_tokens, simple) AS simple_cache_write_1h_tokens,
        sum(input_tokens) AS all_input_tokens,
        sum(cache_read_tokens) AS all_cache_read_tokens,
        sum(cache_write_tokens + cache_write_1h_tokens) AS all_cache_write_tokens,
        countIf(input_tokens > {bloat_tokens:UInt64}) AS bloated_events,
        toInt64(intDiv(sum(toInt128(greatest(toInt64(input_tokens) - {bloat_tokens:Int64}, 0)) * input_rate) + 500000, 1000000)) AS bloat_nano_usd
    FROM
    (
        SELECT agent_price_key, nano_usd, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
               cache_write_1h_tokens, input_rate,
               output_tokens <= {simple_output:UInt64} AND input_tokens + cache_read_tokens + cache_write_tokens + cache_write_1h_tokens <= {simple_context:UInt64} AS simple
        FROM {db}.usage_events FINAL
        WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
          AND unpriced = 0 {filters}
    )
    GROUP BY agent_price_key
)
