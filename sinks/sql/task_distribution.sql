-- Cost per task: exact percentiles (ClickHouse quantileExact: the value at index
-- floor(level * n) of the sorted costs) and the share of spend in the top 1% of tasks
-- (ceil(n / 100) most expensive). A fat tail means loops.
SELECT
    count() AS tasks,
    sum(cost) AS total_nano,
    quantilesExact(0.5, 0.9, 0.99)(cost) AS q,
    max(cost) AS max_nano,
    arraySum(arraySlice(arrayReverseSort(groupArray(cost)), 1, toUInt64(ceil(count() / 100)))) AS top1pct_nano
FROM
(
    SELECT task_id, sum(nano_usd) AS cost
    FROM {db}.usage_events FINAL
    WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') AND task_id != '' {filters}
    GROUP BY task_id
)
