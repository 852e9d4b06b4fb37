-- Runaway tasks: killed by a decision, or past the task token limit. The spend after the
-- kill decision or after the task crossed its limit is the estimate.
SELECT
    agent_id,
    count() AS tasks,
    sum(wasted) AS nano_usd
FROM
(
    SELECT e.task_id AS task_id, toString(any(e.agent_id)) AS agent_id,
           sumIf(e.nano_usd, (k.kill_ts > 0 AND e.ts_ms >= k.kill_ts) OR e.cum_tokens > {task_limit:UInt64}) AS wasted
    FROM
    (
        SELECT task_id, agent_id, ts_ms, nano_usd,
               sum(tokens) OVER (PARTITION BY task_id ORDER BY ts_ms, event_id ROWS UNBOUNDED PRECEDING) AS cum_tokens
        FROM {db}.usage_events FINAL
        WHERE ts_ms >= {start_ms:Int64} AND ts_ms < {end_ms:Int64} AND task_id != '' {filters}
    ) AS e
    LEFT JOIN
    (
        SELECT task_id, min(ts_ms) AS kill_ts
        FROM {db}.decisions FINAL
        WHERE action = 'kill_task' AND task_id != '' AND ts_ms < {end_ms:Int64}
        GROUP BY task_id
    ) AS k ON e.task_id = k.task_id
    GROUP BY task_id
    HAVING wasted > 0
)
GROUP BY agent_id
ORDER BY nano_usd DESC, agent_id
