"""The rules of the design as pure functions of state: which decisions fire now.

Each rule looks at one subject in one window and returns a `Decision` only the first time
its condition holds there: the `decision_id` is a hash of (rule, subject, window start,
level) and the caller's `fired` set (persisted with the state) remembers it, so a replay
neither repeats a decision nor invents a new id. Task rules run per event (a loop must be
stopped on the call that proves it); agent rules run once per agent per batch; budget rules
of cross-partition subjects (user, team, global) run in the merger.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from functools import lru_cache
from typing import Any

from schemas.contract import Decision, Limits, UsageEvent
from schemas.money import format_usd
from schemas.clock import Clock
from schemas.calendar import HOUR_MS
from streams.rules_config import Ladder, RulesConfig, SpikeParams, TaskLadder, WindowLadder
from streams.state import HASHES_CAP, TOOLS_CAP, TURNS_CAP, AgentState, TaskState
from streams.windows import hour_start

# rule → (severity, action); estimate_overrun has two levels.
RULE_TABLE: dict[str, tuple[str, str]] = {
    "daily_budget_exceeded": ("P1", "pause_noncritical"),
    "agent_budget_exceeded": ("P1", "pause_agent"),
    "agent_spike": ("P2", "investigate"),
    "runaway_detected": ("P1", "kill_task"),
    "loop_detected": ("P1", "kill_task"),
    "estimate_overrun:warn": ("P2", "notify"),
    "estimate_overrun:kill": ("P1", "kill_task"),
    "budget_forecast": ("P3", "notify"),
    "user_budget_exceeded": ("P2", "throttle"),
    "step_overrun": ("P3", "notify"),
    "tool_cycle_detected": ("P1", "kill_task"),
    "no_progress_detected": ("P1", "kill_task"),
    "retry_storm_detected": ("P1", "kill_task"),
    "user_spike": ("P2", "investigate"),
    "model_spike": ("P2", "investigate"),
}


def decision_id(rule: str, subject: str, window_start: int, level: str = "") -> str:
    raw = f"{rule}|{subject}|{window_start}|{level}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@lru_cache(maxsize=8192)
def _cached_id(rule: str, who: str, window_start: int, level: str) -> str:
    """Agent rules ask for the same ids batch after batch (is today's already fired?)."""
    return decision_id(rule, who, window_start, level)


class Emitter:
    """Builds decisions for one subject and records them in the subject's `fired` map."""

    def __init__(self, config: RulesConfig, now_ms: Clock) -> None:
        self.config = config
        self.now_ms = now_ms

    @staticmethod
    def id_of(rule: str, scope: str, subject: str, window_start: int, level: str = "", agent_id: str = "") -> str:
        """Task ids are only unique per agent, so a task's decision hashes the agent in."""
        who = f"{scope}:{agent_id}/{subject}" if scope == "task" else f"{scope}:{subject}"
        return _cached_id(rule, who, window_start, level)

    def fired(self, fired: MutableMapping[str, int], rule: str, scope: str, subject: str, window_start: int,
              level: str = "") -> bool:
        """Whether this window's decision was already emitted (checked before building a new one)."""
        return self.id_of(rule, scope, subject, window_start, level) in fired

    def emit(
        self,
        fired: MutableMapping[str, int],
        rule: str,
        *,
        scope: str,
        subject: str,
        window: str,
        window_start: int,
        observed: int,
        limit: int,
        unit: str,
        message: str,
        level: str = "",
        agent_id: str = "",
        task_id: str = "",
        trigger_event_id: str = "",
        action: str | None = None,
    ) -> Decision | None:
        did = self.id_of(rule, scope, subject, window_start, level, agent_id)
        if did in fired:
            return None
        now = self.now_ms()
        fired[did] = now
        severity, default_action = RULE_TABLE[f"{rule}:{level}" if level in ("warn", "kill") else rule]
        return Decision(
            decision_id=did, ts_ms=now, rule=rule, severity=severity, action=action or default_action,  # type: ignore[arg-type]
            scope=scope, subject=subject, observed=observed, limit=limit, unit=unit,  # type: ignore[arg-type]
            window=window, message=message[:1024], trigger_event_id=trigger_event_id,
            policy_version=self.config.version, agent_id=agent_id, task_id=task_id,
        )


# The budget periods: (Limits fields in tokens and nano-USD, the adjective in messages). A week
# or month decision's id has the period as its level: a week can start on the day's start.
PERIODS: dict[str, tuple[str, str, str]] = {
    "day": ("daily_tokens", "daily_nano_usd", "daily"),
    "week": ("weekly_tokens", "weekly_nano_usd", "weekly"),
    "month": ("monthly_tokens", "monthly_nano_usd", "monthly"),
}


def period_limits(limits: Limits, period: str) -> Limits:
    """The period's limits as daily-shaped Limits, so `_over` reads one pair of fields."""
    tokens_field, nano_field, _ = PERIODS[period]
    return Limits(daily_tokens=getattr(limits, tokens_field), daily_nano_usd=getattr(limits, nano_field))


def _over(total_tokens: int, total_nano: int, limits: Limits, factor: float = 1.0) -> tuple[int, int, str] | None:
    """(observed, limit, unit) of the first exceeded daily limit, or None."""
    if limits.daily_tokens is not None and total_tokens > limits.daily_tokens * factor:
        return total_tokens, limits.daily_tokens, "tokens"
    if limits.daily_nano_usd is not None and total_nano > limits.daily_nano_usd * factor:
        return total_nano, limits.daily_nano_usd, "usd"
    return None


def _show(amount: int, unit: str) -> str:
    return f"${format_usd(amount)}" if unit == "usd" else f"{amount} tokens"


def forecast(total: int, day_start: int, day_end: int, at_ms: int, min_fraction: float) -> int | None:
    """Linear end-of-day projection from the pace so far; None too early in the day."""
    length = day_end - day_start
    elapsed = at_ms - day_start
    if length <= 0 or elapsed <= 0 or elapsed < length * min_fraction:
        return None
    return total * length // elapsed


# --- escalation ladders ---------------------------------------------------------------------


def _note(step: int, steps: list[str], why: str) -> str:
    """What the message says of the step: nothing for a one-step ladder (messages as before)."""
    return "" if len(steps) == 1 else f" [step {step}/{len(steps)}: {steps[step - 1]}; {why}]"


def task_step(task: TaskState, rule: str, params: TaskLadder) -> tuple[int, str, str]:
    """(step, action, note) of a task rule whose condition holds on this event: the step climbs
    once per `escalate_every` events the condition held on (counted in the task's `holds`)."""
    holds = task.holds[rule] = task.holds.get(rule, 0) + 1
    steps = params.steps(RULE_TABLE[rule][1])
    step = min(len(steps), 1 + (holds - 1) // params.escalate_every)
    why = "first detection" if holds == 1 else f"condition held on {holds} events"
    return step, steps[step - 1], _note(step, steps, why)


def window_step(ladders: MutableMapping[str, tuple[int, int]], key: str, rule: str, params: WindowLadder,
                at_ms: int) -> tuple[int, str, str]:
    """(step, action, note) of a windowed rule firing at event time `at_ms`: one step above its
    previous firing's when that was within `escalate_within_ms`, else step 1; recorded in `ladders`."""
    steps = params.steps(RULE_TABLE[rule][1])
    previous = ladders.get(key)
    if previous is not None and 0 <= at_ms - previous[1] <= params.escalate_within_ms:
        step = min(len(steps), previous[0] + 1)
        why = f"fired again {(at_ms - previous[1]) // 60_000} min after step {previous[0]}"
    else:
        step, why = 1, "first firing"
    ladders[key] = (step, at_ms)
    return step, steps[step - 1], _note(step, steps, why)


def downgrade_target(config: RulesConfig, rule: str) -> str:
    """The model a `downgrade_model` decision of `rule` switches to ("" when the rule has no ladder)."""
    params = getattr(config.rules, rule, None)
    return params.downgrade_to if isinstance(params, Ladder) else ""


# --- spikes (agents here, users and models in the merger) ------------------------------------


def baseline(hours: Mapping[int, int], at_ms: int, params: SpikeParams) -> tuple[int, int] | None:
    """(median tokens, hours counted) of the active hours among the `baseline_hours` complete hours
    before the one of `at_ms`; None with fewer than `min_hours` of them."""
    current = hour_start(at_ms)
    lo = current - params.baseline_hours * HOUR_MS
    prior = sorted(v for k, v in hours.items() if lo <= k < current and v > 0)
    if len(prior) < params.min_hours:
        return None
    return prior[(len(prior) - 1) // 2], len(prior)


def sliding_hour(hours: Mapping[int, int], at_ms: int) -> int:
    """The last hour's tokens from hour buckets alone (users and models keep no minutes): the
    current hour so far plus the share of the previous hour the sliding hour still covers,
    assuming the previous hour's tokens were spread evenly."""
    current = hour_start(at_ms)
    covered = HOUR_MS - (at_ms - current)
    return hours.get(current, 0) + hours.get(current - HOUR_MS, 0) * covered // HOUR_MS


def spike(hours: Mapping[int, int], observed: int, at_ms: int, hourly_limit: int | None,
          params: SpikeParams) -> tuple[int, str] | None:
    """(the level exceeded, what it is) when `observed`, the last hour's tokens, is a spike: over
    `factor` x the hourly limit, else over `baseline_factor` x the subject's own baseline (with at
    least `min_tokens`); None otherwise. One function for agents, users and models."""
    if hourly_limit is not None and observed > hourly_limit * params.factor:
        return hourly_limit, f"{params.factor:g}x its hourly limit of {hourly_limit}"
    if observed < params.min_tokens or observed == 0:
        return None
    found = baseline(hours, at_ms, params)
    if found is None:
        return None
    base, n = found
    if observed > base * params.baseline_factor:
        return base, f"{params.baseline_factor:g}x its baseline of {base} (median of {n} active hours)"
    return None


# --- task rules (per event) ---------------------------------------------------------------


class _TaskFired(dict[str, int]):
    """Adapter: a task's `fired` list seen as the mapping `Emitter.emit` records into."""

    def __init__(self, task: TaskState) -> None:
        super().__init__((k, 0) for k in task.fired)
        self._task = task

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(key, value)
        self._task.fired.append(key)


def _simhash(value: str) -> int:
    """The event's SimHash as an int; -1 when absent or beyond 64 bits (the contract bounds only
    its digits)."""
    if not value:
        return -1
    n = int(value)
    return n if n < 1 << 64 else -1


def _loop(config: RulesConfig, task: TaskState, event: UsageEvent, step: int) -> tuple[int, str] | None:
    """(repeats, what repeated) when the event closes a loop: `repeats` of one prompt_hash, of one
    (turn, tool_hash) pair, or of turns within `simhash_distance` bits of this one's SimHash
    answered with the same call, within the last `within_steps` steps. Updates the task's recent hashes and turns.

    A pair: the same call made on the same newest turn, which is what a stuck agent does. A turn
    alone repeats in legitimate work (a tool that answers "saved" to different calls), and so
    does a call alone (polling a job whose answer moves on): `bench detection` measured both
    as the main sources of false kills. A turn is its turn_hash and its result_hash: a tool
    result's numbers are masked in the one and kept in the other, so a job whose progress
    moves on (45% done, then 52%) is a new turn, for near-identical turns too."""
    params = config.rules.loop_detected
    within, need = params.within_steps, params.repeats
    found: tuple[int, str] | None = None
    if event.prompt_hash:
        hashes = task.hashes
        hashes.append((step, event.prompt_hash))
        while hashes and (hashes[0][0] <= step - within or len(hashes) > HASHES_CAP):
            hashes.pop(0)
        repeats = 0
        for s, h in hashes:
            if h == event.prompt_hash and s > step - within:
                repeats += 1
        if repeats >= need:
            found = (repeats, "prompt repeated")
    sim = _simhash(event.simhash)
    if not (event.turn_hash or event.tool_hash or sim >= 0):
        return found
    turns = task.turns
    turn = event.turn_hash + event.result_hash
    turns.append((step, turn, event.tool_hash, sim))
    while turns and (turns[0][0] <= step - within or len(turns) > TURNS_CAP):
        turns.pop(0)
    if found is not None:
        return found
    distance = params.simhash_distance if sim >= 0 else -1
    same = near = 0
    result = event.result_hash
    for s, other_turn, tool_hash, other in turns:
        if s <= step - within or tool_hash != event.tool_hash:
            continue
        if event.turn_hash and other_turn == turn:
            same += 1
        # near: the SimHashes close and, for a tool result, the same result_hash (the key's tail)
        if distance >= 0 and other >= 0 and other_turn.endswith(result) and (other ^ sim).bit_count() <= distance:
            near += 1
    if same >= need:
        return same, "same call on the same newest turn" if event.tool_hash else "same newest turn, no tool call"
    if near >= need:
        return near, f"near-identical turns, same call (SimHash within {distance} bits)"
    return None


def _cycle(tools: list[str], repeats: int, max_period: int) -> int:
    """The period (2 to `max_period`) of a block of tool calls, not all the same, that the last
    `period * repeats` calls repeat; 0 when there is none."""
    for period in range(2, max_period + 1):
        n = period * repeats
        if len(tools) < n:
            break
        tail = tools[-n:]
        if len(set(tail[:period])) > 1 and all(tail[i] == tail[i - period] for i in range(period, n)):
            return period
    return 0


def _fingerprint_hits(config: RulesConfig, task: TaskState, event: UsageEvent, name: str,
                      task_id: str) -> list[dict[str, Any]]:
    """Tool-call cycles, tool results that never change, retry storms (updating the task's memory)."""
    rules = config.rules
    hits: list[dict[str, Any]] = []
    head = f"Agent {name} may be looping: {task.tokens} tokens/task"
    cycle = rules.tool_cycle_detected
    if event.tool_hash:
        tools = task.tools
        tools.append(event.tool_hash)
        keep = min(TOOLS_CAP, cycle.repeats * cycle.max_period)
        if len(tools) > keep:
            del tools[:len(tools) - keep]
        period = _cycle(tools, cycle.repeats, cycle.max_period) if cycle.enabled else 0
        if period:
            hits.append(dict(rule="tool_cycle_detected", observed=cycle.repeats, limit=cycle.repeats, unit="tokens",
                             message=f"{head} (a cycle of {period} tool calls repeated {cycle.repeats}x "
                                     f"in task {task_id})"))
    progress = rules.no_progress_detected
    if event.result_hash:  # `results`: the latest result (with its call) and how many times in a row it came back
        seen = task.results.get(event.result_hash, 0) + 1
        task.results = {event.result_hash: seen}
        if progress.enabled and seen >= progress.repeats:
            hits.append(dict(rule="no_progress_detected", observed=seen, limit=progress.repeats, unit="tokens",
                             message=f"{head} (no progress: the same call returned the same result {seen}x in a row "
                                     f"in task {task_id})"))
    storm = rules.retry_storm_detected
    task.errors = task.errors + 1 if event.status in ("error", "retry") else 0
    if storm.enabled and task.errors >= storm.consecutive:
        hits.append(dict(rule="retry_storm_detected", observed=task.errors, limit=storm.consecutive, unit="tokens",
                         message=f"Agent {name} retry storm: {task.errors} failed or retried calls in a row "
                                 f"in task {task_id} ({task.tokens} tokens/task)"))
    return hits


def task_decisions(
    em: Emitter, agent: AgentState, task_id: str, task: TaskState, event: UsageEvent, limits: Limits
) -> list[Decision]:
    """Rules of one task after `event` was counted in it: loop, runaway, estimate, step.

    Runs on every event, so the conditions are checked first and decisions (ids, messages)
    are only built for the rules whose condition holds."""
    rules = em.config.rules
    name = agent.agent_id
    hits: list[dict[str, Any]] = []
    step = event.step if event.step is not None else task.events
    loop = _loop(em.config, task, event, step)
    if loop is not None:
        repeats, what = loop
        hits.append(dict(rule="loop_detected", observed=repeats, limit=rules.loop_detected.repeats, unit="tokens",
                         message=f"Agent {name} may be looping: {task.tokens} tokens/task "
                                 f"({what} {repeats}x within {rules.loop_detected.within_steps} steps in task {task_id})"))
    hits += _fingerprint_hits(em.config, task, event, name, task_id)
    if limits.task_tokens is not None:
        cap = limits.task_tokens * rules.runaway_detected.factor
        if task.tokens > cap:
            hits.append(dict(rule="runaway_detected", observed=task.tokens, limit=limits.task_tokens, unit="tokens",
                             message=f"Agent {name} runaway: task {task_id} used {task.tokens} tokens, over "
                                     f"{rules.runaway_detected.factor:g}x its {limits.task_tokens}-token task limit"))
    # the task's own estimate compares with all its tokens; else the calls that carried a per-call
    # estimate compare with the sum of those estimates; else, with neither, the estimate learned
    # from the agent's completed tasks (of this type) compares with all its tokens
    learned = False
    if task.task_estimate:
        estimate, used = task.task_estimate, task.tokens
    elif task.est_tokens:
        estimate, used = task.est_tokens, task.est_observed
    else:
        estimate, used, learned = task.learned_estimate, task.tokens, True
    if estimate > 0:
        est = rules.estimate_overrun
        ratio = used / estimate
        level = "kill" if ratio > est.kill else "warn" if ratio > est.warn else ""
        if level:
            kind = "learned estimate" if learned else "estimate"
            hits.append(dict(rule="estimate_overrun", level=level, observed=used, limit=estimate,
                             unit="tokens", message=f"Agent {name} task {task_id} used {used} tokens, "
                                                    f"{ratio:.1f}x its {kind} of {estimate}"))
    if limits.step_tokens is not None and task.step_tokens > limits.step_tokens and rules.step_overrun.enabled:
        hits.append(dict(rule="step_overrun", level=f"step{task.step}", observed=task.step_tokens,
                         limit=limits.step_tokens, unit="tokens",
                         message=f"Agent {name} task {task_id} step {task.step} used {task.step_tokens} tokens "
                                 f"(step limit {limits.step_tokens})"))
    if not hits:
        return []
    fired = _TaskFired(task)
    out: list[Decision | None] = []
    for hit in hits:
        params = getattr(rules, hit["rule"])
        if isinstance(params, TaskLadder):
            step, hit["action"], note = task_step(task, hit["rule"], params)
            hit["message"] += note
            if step > 1:
                hit["level"] = f"step{step}"
        if hit.get("level") == "kill":
            warn_id = em.id_of("estimate_overrun", "task", task_id, task.first_ts, "warn", name)
            if warn_id not in fired:
                fired[warn_id] = 0  # straight to kill: the warning is implied, never sent after it
        out.append(em.emit(fired, scope="task", subject=task_id, window="task", window_start=task.first_ts,
                           agent_id=name, task_id=task_id, trigger_event_id=event.event_id, **hit))
    return [d for d in out if d is not None]


# --- agent rules (per batch) --------------------------------------------------------------


def agent_decisions(em: Emitter, agent: AgentState, limits: Limits, at_ms: int, trigger_event_id: str) -> list[Decision]:
    """Daily budget, hourly spike and forecast of one agent, as of event time `at_ms`."""
    rules = em.config.rules
    c = agent.counter
    name = agent.agent_id
    out: list[Decision | None] = []
    common = {"scope": "agent", "subject": name, "agent_id": name, "trigger_event_id": trigger_event_id}
    tokens, nano = c.day_total(at_ms), c.day_total(at_ms, "usd")
    over = _over(tokens, nano, limits)
    critical = agent.criticality == "critical"
    for period, (_, _, adjective) in PERIODS.items():
        start, end, p_tokens, p_nano = c.period(period)
        level = "" if period == "day" else period
        p_over = _over(p_tokens, p_nano, period_limits(limits, period)) if start <= at_ms < end else None
        if not p_over or not rules.agent_budget_exceeded.enabled or em.fired(
                agent.fired, "agent_budget_exceeded", "agent", name, start, level):
            continue
        observed, limit, unit = p_over
        out.append(em.emit(agent.fired, "agent_budget_exceeded", window=period, window_start=start, level=level,
                           observed=observed, limit=limit, unit=unit, action="notify" if critical else None,
                           message=f"Agent {name} is over its {adjective} budget: {_show(observed, unit)} of "
                                   f"{_show(limit, unit)}" + (" (critical: not paused)" if critical else ""), **common))
    params = rules.agent_spike
    if params.enabled and not em.fired(agent.fired, "agent_spike", "agent", name, hour_start(at_ms)):
        hour_tokens = c.last_hour(at_ms)
        found = spike(c.hours, hour_tokens, at_ms, limits.hourly_tokens, params)
        if found is not None:
            level, basis = found
            _, action, note = window_step(agent.ladders, "agent_spike", "agent_spike", params, at_ms)
            if critical and action == "pause_agent":
                action, note = "notify", note + " (critical: not paused)"
            out.append(em.emit(agent.fired, "agent_spike", window="hour", window_start=hour_start(at_ms),
                               observed=hour_tokens, limit=level, unit="tokens", action=action,
                               message=f"Agent {name} spiked: {hour_tokens} tokens in the last hour, over "
                                       f"{basis}{note}", **common))
    if not over:
        out.append(_forecast(em, agent.fired, tokens, nano, c.day_start, c.day_end, at_ms, limits, common))
    return [d for d in out if d is not None]


def _forecast(
    em: Emitter, fired: MutableMapping[str, int], tokens: int, nano: int, day_start: int, day_end: int,
    at_ms: int, limits: Limits, common: dict[str, str],
) -> Decision | None:
    params = em.config.rules.budget_forecast
    for total, limit, unit in ((tokens, limits.daily_tokens, "tokens"), (nano, limits.daily_nano_usd, "usd")):
        if not limit:
            continue
        projected = forecast(total, day_start, day_end, at_ms, params.min_elapsed_fraction)
        if projected is not None and projected > limit * params.threshold:
            if em.fired(fired, "budget_forecast", common["scope"], common["subject"], day_start):
                return None
            return em.emit(fired, "budget_forecast", window="day", window_start=day_start, observed=projected,
                           limit=limit, unit=unit,
                           message=f"{common['scope'].capitalize()} {common['subject']} is on pace for "
                                   f"{_show(projected, unit)} today, over {params.threshold:.0%} of its "
                                   f"{_show(limit, unit)} daily budget", **common)
    return None


# --- cross-partition budgets (merger) ---------------------------------------------------------


def dim_decisions(
    em: Emitter, fired: MutableMapping[str, int], dim: str, subject: str, limits: Limits,
    windows: dict[str, tuple[int, int, int, int]], at_ms: int,
) -> list[Decision]:
    """Global and team budgets (pause_noncritical), user budgets (throttle), per day, week and
    month (`windows`: period -> (start, end, tokens, nano)), and the daily forecast."""
    rules = em.config.rules
    common = {"scope": dim, "subject": subject}
    out: list[Decision | None] = []
    label = "Global" if dim == "global" else f"{dim.capitalize()} {subject}"
    day_over = None
    for period, (_, _, adjective) in PERIODS.items():
        start, _end, tokens, nano = windows[period]
        over = _over(tokens, nano, period_limits(limits, period))
        if period == "day":
            day_over = over
        if not over:
            continue
        observed, limit, unit = over
        level = "" if period == "day" else period
        if dim == "user" and rules.user_budget_exceeded.enabled:
            out.append(em.emit(fired, "user_budget_exceeded", window=period, window_start=start, level=level,
                               observed=observed, limit=limit, unit=unit,
                               message=f"User {subject} is over the {adjective} budget: {_show(observed, unit)} of "
                                       f"{_show(limit, unit)}; throttling", **common))
        elif dim in ("global", "team") and rules.daily_budget_exceeded.enabled:
            out.append(em.emit(fired, "daily_budget_exceeded", window=period, window_start=start, level=level,
                               observed=observed, limit=limit, unit=unit,
                               message=f"{label} {adjective} budget exceeded: {_show(observed, unit)} of "
                                       f"{_show(limit, unit)}; pausing noncritical agents", **common))
    if not day_over:
        day_start, day_end, tokens, nano = windows["day"]
        out.append(_forecast(em, fired, tokens, nano, day_start, day_end, at_ms, limits, common))
    return [d for d in out if d is not None]


def dim_spike(
    em: Emitter, fired: MutableMapping[str, int], ladders: MutableMapping[str, tuple[int, int]], dim: str,
    subject: str, limits: Limits | None, hours: Mapping[int, int], at_ms: int,
) -> Decision | None:
    """`user_spike` / `model_spike`: the subject's last hour (all partitions' hour buckets summed)
    against its hourly limit and its own baseline, as `agent_spike` judges an agent."""
    rule = f"{dim}_spike"
    params: SpikeParams = getattr(em.config.rules, rule)
    if not params.enabled or em.fired(fired, rule, dim, subject, hour_start(at_ms)):
        return None
    observed = sliding_hour(hours, at_ms)
    found = spike(hours, observed, at_ms, limits.hourly_tokens if limits else None, params)
    if found is None:
        return None
    level, basis = found
    _, action, note = window_step(ladders, f"{rule}|{subject}", rule, params, at_ms)
    return em.emit(fired, rule, scope=dim, subject=subject, window="hour", window_start=hour_start(at_ms),
                   observed=observed, limit=level, unit="tokens", action=action,
                   message=f"{dim.capitalize()} {subject} spiked: about {observed} tokens in the last hour, over "
                           f"{basis}{note}")
