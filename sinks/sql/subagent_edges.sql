-- Sub-agent edges over [start_ms, end_ms), for sinks/subagents.py: one row per child node (an
-- agent and task whose rows name a parent) with its direct usage in the window (all its rows,
-- whether they name the parent or not) and the distinct (parent agent, parent task) pairs its
-- rows name. One pass over the raw rows (the rollups keep no parents; a CTE read twice was 2x
-- slower). No {filters}: a descendant counts whatever its user, team or model. At most
-- {max_edges} child nodes (sinks/queries.py refuses a window that reaches it).
SELECT toString(agent_id) AS agent_id, task_id, count() AS events, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd,
       groupUniqArrayIf((toString(parent_agent_id), parent_task_id), parent_agent_id != '') AS parents
FROM {db}.usage_events FINAL
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
GROUP BY agent_id, task_id
HAVING notEmpty(parents)
LIMIT {max_edges:UInt32}
