-- Repeated prompt_hash inside one task: every call after the first of a (task, hash) is
-- counted as redundant; its cost is the estimate. A (task, hash) is attributed to the agent
-- of its first call.
-- Candidates first: tasks where some prompt_hash may repeat, i.e. fewer distinct prompt_key
-- than rows (uniqUpTo counts exactly up to 100), or more than 100 rows. task_key/prompt_key
-- are insert-time hashes (schema.sql), 0 exactly when the string is empty; their collisions
-- and replays only add candidates. Only the candidates' events are then deduplicated
-- exactly, by the sorting key FINAL collapses on, keeping the latest version's cost (argMax by
-- ingested_ms; the other columns are the same in every copy of an event), and grouped by
-- the task and hash strings.
SELECT
    agent_id,
    count() AS groups,
    sum(calls - 1) AS redundant_calls,
    sum(cost - first_cost) AS nano_usd
FROM
(
    SELECT toString(argMin(agent_id, (at_ms, event_id, agent_id))) AS agent_id, count() AS calls,
           sum(cost_nano) AS cost, argMin(cost_nano, (at_ms, event_id)) AS first_cost
    FROM
    (
        SELECT event_id, agent_id, any(task_id) AS task, any(prompt_hash) AS hash,
               toUnixTimestamp64Milli(any(ts)) AS at_ms, argMax(nano_usd, ingested_ms) AS cost_nano
        FROM {db}.usage_events
        WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
          AND task_key != 0 AND prompt_key != 0 {filters}
          AND task_key IN
          (
              SELECT task_key
              FROM {db}.usage_events
              WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
                AND task_key != 0 AND prompt_key != 0 {filters}
              GROUP BY task_key
              HAVING count() > 100 OR uniqUpTo(100)(prompt_key) < count()
          )
        GROUP BY toStartOfDay(ts), agent_id, event_id
    )
    GROUP BY task, hash
    HAVING calls > 1
)
GROUP BY agent_id
ORDER BY nano_usd DESC, agent_id
