-- Budget vs actual in one pass: tokens and cost per agent, user and team, and the global
-- total, over [start_ms, end_ms) (a calendar period in the rules' time zone). `scope` is agent | user |
-- team | global, `key` the subject ('' for global). the usage source (sql/usage_source.sql).
SELECT
    d.1 AS scope,
    d.2 AS key,
    sum(events) AS events,
    sum(tokens) AS tokens,
    sum(nano_usd) AS nano_usd
FROM ({usage})
ARRAY JOIN [('agent', toString(agent_id)), ('user', toString(user_id)), ('team', toString(team)), ('global', '')] AS d
GROUP BY scope, key
