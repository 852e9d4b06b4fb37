-- Sub-agent edges over [start_ms, end_ms), for sinks/subagents.py: each distinct
-- (parent agent, parent task) -> (agent, task) the usage rows name, with the child node's
-- direct usage in the window (all its rows, whether they name the parent or not). Raw rows:
-- the rollups keep no parents, and only the rows of child nodes are summed. No {filters}:
-- a descendant counts whatever its user, team or model. At most {max_edges} rows.
WITH children AS
(
    SELECT DISTINCT parent_agent_id, parent_task_id, toString(agent_id) AS agent_id, task_id
    FROM {db}.usage_events FINAL
    WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
      AND parent_agent_id != ''
)
SELECT toString(c.parent_agent_id) AS parent_agent_id, c.parent_task_id AS parent_task_id, c.agent_id AS agent_id,
       c.task_id AS task_id, n.events AS events, n.tokens AS tokens, n.nano_usd AS nano_usd
FROM children AS c
INNER JOIN
(
    SELECT toString(agent_id) AS agent_id, task_id, count() AS events, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd
    FROM {db}.usage_events FINAL
    WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
      AND (toString(agent_id), task_id) IN (SELECT agent_id, task_id FROM children)
    GROUP BY agent_id, task_id
) AS n ON n.agent_id = c.agent_id AND n.task_id = c.task_id
LIMIT {max_edges:UInt32}
