-- Runaway tasks: killed by a decision, or past the task token limit. The spend after the
-- kill decision or after the task crossed its limit is the estimate.
-- Candidates first: tasks with a kill decision, and tasks whose raw rows (replays included,
-- so a superset) pass the limit; that scan is skipped when there is no limit. Only the
-- candidates' events are deduplicated exactly (the sorting key FINAL collapses on, latest
-- cost by ingested_ms; the other columns are the same in every copy) and walked in order.
WITH
    kills AS
    (
        SELECT task_id, min(ts_ms) AS kill_ts
        FROM {db}.decisions FINAL
        WHERE action = 'kill_task' AND task_id != '' AND ts_ms < {end_ms:Int64}
        GROUP BY task_id
    ),
    over_limit AS
    (
        SELECT task_id
        FROM {db}.usage_events
        WHERE {task_limit:UInt64} < 9223372036854775807
          AND ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
          AND task_id != '' {filters}
        GROUP BY task_id
        HAVING sum(tokens) > {task_limit:UInt64}
    )
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
        SELECT task AS task_id, agent_id, at_ms AS ts_ms, cost_nano AS nano_usd,
               sum(toks) OVER (PARTITION BY task ORDER BY at_ms, event_id ROWS UNBOUNDED PRECEDING) AS cum_tokens
        FROM
        (
            SELECT event_id, agent_id, any(task_id) AS task, any(ts_ms) AS at_ms, any(tokens) AS toks,
                   argMax(nano_usd, ingested_ms) AS cost_nano
            FROM {db}.usage_events
            WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
              AND task_id != '' {filters}
              AND task_id IN (SELECT task_id FROM kills UNION DISTINCT SELECT task_id FROM over_limit)
            GROUP BY toStartOfDay(ts), agent_id, event_id
        )
    ) AS e
    LEFT JOIN kills AS k ON e.task_id = k.task_id
    GROUP BY task_id
    HAVING wasted > 0
)
GROUP BY agent_id
ORDER BY nano_usd DESC, agent_id
