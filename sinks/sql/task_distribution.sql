-- Cost per task: exact percentiles (ClickHouse quantileExact: the value at index
-- floor(level * n) of the sorted costs) and the share of spend in the top 1% of tasks
-- (ceil(n / 100) most expensive). A fat tail means loops. The usage source gives each task's
-- cost per hour (sql/usage_source.sql, rollup_tasks_hourly), summed here per task.
SELECT
    count() AS tasks,
    sum(cost) AS total_nano,
    quantilesExact(0.5, 0.9, 0.99)(cost) AS q,
    max(cost) AS max_nano,
    arraySum(arraySlice(arrayReverseSort(groupArray(cost)), 1, toUInt64(ceil(count() / 100)))) AS top1pct_nano
FROM
(
    SELECT task_id, sum(nano_usd) AS cost
    FROM ({usage})
    WHERE task_id != '' {filters}
    GROUP BY task_id
)
