-- The latest budget decisions, newest first.
SELECT decision_id, ts_ms, rule, severity, action, scope, subject, toString(agent_id) AS agent_id, task_id,
       observed, limit, unit, window, message, trigger_event_id, policy_version
FROM {db}.decisions FINAL
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
ORDER BY ts_ms DESC, decision_id
LIMIT {limit:UInt32}
