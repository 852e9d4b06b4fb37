-- Repeated prompt_hash inside one task: every call after the first of a (task, hash) is
-- counted as redundant; its cost is the estimate.
SELECT
    agent_id,
    count() AS groups,
    sum(calls - 1) AS redundant_calls,
    sum(cost - first_cost) AS nano_usd
FROM
(
    SELECT toString(any(agent_id)) AS agent_id, count() AS calls, sum(nano_usd) AS cost,
           argMin(nano_usd, (ts_ms, event_id)) AS first_cost
    FROM {db}.usage_events FINAL
    WHERE ts_ms >= {start_ms:Int64} AND ts_ms < {end_ms:Int64} AND task_id != '' AND prompt_hash != '' {filters}
    GROUP BY task_id, prompt_hash
    HAVING calls > 1
)
GROUP BY agent_id
ORDER BY nano_usd DESC, agent_id
