-- Repeated prompt_hash inside one task: every call after the first of a (task, hash) is
-- counted as redundant; its cost is the estimate.
-- Candidates first: tasks where some prompt_hash may repeat, i.e. fewer distinct hashes
-- than rows (uniqUpTo counts hashes exactly up to 100; colliding hashes and replays only add
-- candidates), or more than 100 rows. Only their events are then deduplicated exactly, by
-- the sorting key FINAL collapses on, keeping the latest version's cost (argMax by
-- ingested_ms); the other columns are the same in every copy of an event.
SELECT
    agent_id,
    count() AS groups,
    sum(calls - 1) AS redundant_calls,
    sum(cost - first_cost) AS nano_usd
FROM
(
    SELECT toString(any(agent_id)) AS agent_id, count() AS calls, sum(cost_nano) AS cost,
           argMin(cost_nano, (at_ms, event_id)) AS first_cost
    FROM
    (
        SELECT event_id, agent_id, any(task_id) AS task, any(prompt_hash) AS hash, any(ts_ms) AS at_ms,
               argMax(nano_usd, ingested_ms) AS cost_nano
        FROM {db}.usage_events
        WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
          AND task_id != '' AND prompt_hash != '' {filters}
          AND task_id IN
          (
              SELECT task_id
              FROM {db}.usage_events
              WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
                AND task_id != '' AND prompt_hash != '' {filters}
              GROUP BY task_id
              HAVING count() > 100 OR uniqUpTo(100)(prompt_hash) < count()
          )
        GROUP BY toStartOfDay(ts), agent_id, event_id
    )
    GROUP BY task, hash
    HAVING calls > 1
)
GROUP BY agent_id
ORDER BY nano_usd DESC, agent_id
