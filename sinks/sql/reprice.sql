-- Re-price a period under the catalog version loaded into `prices`: the price in force at
-- each event's time (the latest valid_from at or before it), or with at_ms > 0 the price in
-- force at that one instant for every event ("history under today's prices"); one half-up
-- rounding per event, exactly like ingest. No entry, or one with valid_from <= 0, prices 0;
-- only "no entry" (valid_from 0) counts as unpriced.
-- No join over the events: the catalog's price changes inside the window cut it into
-- segments in which every (name, provider) has one price, so those few prices are looked up
-- once (ASOF, over names x providers x segments) into arrays; each event finds its entry by
-- position from its name and provider numbers (`transform` on the LowCardinality
-- dictionaries) and its segment.
WITH
    catalog AS
    (
        SELECT lower(model) AS name, lower(provider) AS prov, valid_from_ms, input, output, cache_read,
               cache_write, cache_write_1h
        FROM {db}.prices FINAL
        WHERE catalog_version = {catalog_version:String}
    ),
    (SELECT arraySort(groupUniqArray(name)) FROM catalog) AS names,
    (SELECT arraySort(groupUniqArray(prov)) FROM catalog) AS provs,
    (
        SELECT arrayConcat([{start_ms:Int64}], arraySort(groupUniqArray(valid_from_ms)))
        FROM catalog
        WHERE valid_from_ms > {start_ms:Int64} AND valid_from_ms < {end_ms:Int64}
    ) AS changes,
    if({at_ms:Int64} > 0, [{at_ms:Int64}], changes) AS segment_starts,
    -- (valid_from, input, output, cache_read, cache_write, cache_write_1h) arrays; the entry of
    -- name n, provider p and segment s is at ((n - 1) * length(provs) + p - 1) * length(segment_starts) + s.
    (
        SELECT (groupArray(valid_from_ms), groupArray(input), groupArray(output), groupArray(cache_read),
                groupArray(cache_write), groupArray(cache_write_1h))
        FROM
        (
            SELECT k.name_n, k.prov_n, k.seg_n, p.valid_from_ms AS valid_from_ms,
                   if(p.valid_from_ms > 0, p.input, 0) AS input, if(p.valid_from_ms > 0, p.output, 0) AS output,
                   if(p.valid_from_ms > 0, p.cache_read, 0) AS cache_read,
                   if(p.valid_from_ms > 0, p.cache_write, 0) AS cache_write,
                   if(p.valid_from_ms > 0, p.cache_write_1h, 0) AS cache_write_1h
            FROM
            (
                SELECT name_n, names[name_n] AS name, prov_n, provs[prov_n] AS prov, seg_n, segment_starts[seg_n] AS at_ms
                FROM system.one
                ARRAY JOIN arrayEnumerate(names) AS name_n
                ARRAY JOIN arrayEnumerate(provs) AS prov_n
                ARRAY JOIN arrayEnumerate(segment_starts) AS seg_n
            ) AS k
            ASOF LEFT JOIN catalog AS p ON k.name = p.name AND k.prov = p.prov AND k.at_ms >= p.valid_from_ms
            ORDER BY k.name_n, k.prov_n, k.seg_n
        )
    ) AS price
SELECT
    toString(model) AS key,
    count() AS events,
    sum(nano_usd) AS nano_usd,
    sum(toInt64(intDiv(
        toInt128(input_tokens) * price.2[entry] + toInt128(output_tokens) * price.3[entry]
        + toInt128(cache_read_tokens) * price.4[entry] + toInt128(cache_write_tokens) * price.5[entry]
        + toInt128(cache_write_1h_tokens) * price.6[entry] + 500000, 1000000))) AS repriced_nano_usd,
    countIf(price.1[entry] = 0) AS unpriced_events
FROM
(
    SELECT model, nano_usd, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens,
           if(price_model != '', transform(lower(price_model), names, arrayEnumerate(names), 0),
              transform(lower(model), names, arrayEnumerate(names), 0)) AS name_n,
           if(price_provider != '', transform(lower(price_provider), provs, arrayEnumerate(provs), 0),
              transform(lower(provider), provs, arrayEnumerate(provs), 0)) AS prov_n,
           if(name_n = 0 OR prov_n = 0, 0,
              ((name_n - 1) * length(provs) + prov_n - 1) * length(segment_starts)
              + if({at_ms:Int64} > 0, 1, arrayCount(t -> t <= toUnixTimestamp64Milli(ts), segment_starts))) AS entry
    FROM {db}.usage_events FINAL
    WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') {filters}
)
GROUP BY model
ORDER BY repriced_nano_usd DESC, key
