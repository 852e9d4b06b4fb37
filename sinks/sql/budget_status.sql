-- Budget vs actual in one pass: tokens and cost per agent, user and team, and the global
-- total, over [start_ms, end_ms) (today in the rules' time zone). `scope` is agent | user |
-- team | global, `key` the subject ('' for global). FINAL: every event_id counted once.
SELECT
    d.1 AS scope,
    d.2 AS key,
    count() AS events,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd
FROM {db}.usage_events FINAL
ARRAY JOIN [('agent', toString(agent_id)), ('user', toString(user_id)), ('team', toString(team)), ('global', '')] AS d
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
GROUP BY scope, key
