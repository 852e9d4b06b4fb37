"""Budgets and rule thresholds: the YAML rules file, and live changes from `budget.policies`.

The file is read once at start; each Policy event then changes one budget (or one rule's
parameters) and bumps `version`, which every decision carries as `policy_version`. What the
file said is kept beside (`file_budgets`, `file_rules`) so that deleting an override goes
back to it. `apply_policy` documents the two meanings of a Policy (overlay or replace).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml
from msgspec import Meta, Struct


from schemas.calendar import HOUR_MS
from schemas.contract import Limits, Policy
from schemas.codec import bad_input
from schemas.errors import ConfigError
from schemas.money import usd_to_nanos

Factor = Annotated[float, Meta(gt=0)]


class Ladder(Struct, forbid_unknown_fields=True):
    """A rule's escalation ladder. `ladder`: the action of each step, comma-separated
    (`notify,downgrade_model,pause_agent`; the rules file also takes a YAML list); "" is the
    rule's one action of the rules table, a one-step ladder, so a config without a ladder keeps
    its meaning. `downgrade_to`: the model a `downgrade_model` step switches the agent to (the
    client applies it only to dearer models). A string, so a live policy can set it
    (`--param ladder=notify,kill_task`)."""

    ladder: str = ""
    downgrade_to: str = ""
    STEPS: ClassVar[tuple[str, ...]] = ()  # the actions a step of this rule may take

    def __post_init__(self) -> None:
        steps = [s.strip() for s in self.ladder.split(",")] if self.ladder.strip() else []
        for step in steps:
            if step not in self.STEPS:
                raise ValueError(f"ladder step {step!r} is not one of {', '.join(self.STEPS)}")
        if "downgrade_model" in steps and not self.downgrade_to:
            raise ValueError("a downgrade_model step needs downgrade_to (the cheaper model)")
        self.ladder = ",".join(steps)

    def steps(self, default: str) -> list[str]:
        """The actions of the steps; [`default`] without a ladder."""
        return self.ladder.split(",") if self.ladder else [default]


class TaskLadder(Ladder, forbid_unknown_fields=True):
    """A task rule's ladder climbs with the evidence: one step further each time the rule's
    condition holds on `escalate_every` more events of the task (a loop repeating again, a
    cycle going round again, one more failed call)."""

    escalate_every: Annotated[int, Meta(ge=1)] = 1
    STEPS: ClassVar[tuple[str, ...]] = ("notify", "investigate", "throttle", "downgrade_model", "pause_agent",
                                        "kill_task")


class WindowLadder(Ladder, forbid_unknown_fields=True):
    """A windowed rule (one decision per hour at most) climbs when it fires again within
    `escalate_within_ms` (event time) of its previous firing for the same subject; after a
    quiet spell it starts again at step 1."""

    escalate_within_ms: Annotated[int, Meta(ge=0)] = 3 * HOUR_MS
    STEPS: ClassVar[tuple[str, ...]] = ("notify", "investigate", "throttle", "downgrade_model", "pause_agent")


class RunawayParams(TaskLadder, forbid_unknown_fields=True):
    factor: Factor = 3.0


class LoopParams(TaskLadder, forbid_unknown_fields=True):
    """`repeats` of one prompt_hash, or of one call on one newest turn (turn_hash and tool_hash
    together), within `within_steps` steps of a task is a loop; so are `repeats` turns whose
    SimHashes lie within `simhash_distance` bits of each other, answered with the same call
    (near-identical turns; -1: off)."""

    # bench detection: 5 kills 1 of 175 jobs polled until done (5 polls at 99%); 6 none, but 7 calls to a kill
    repeats: Annotated[int, Meta(ge=2)] = 5
    within_steps: Annotated[int, Meta(ge=1)] = 20
    simhash_distance: Annotated[int, Meta(ge=-1, le=32)] = 3


class ToolCycleParams(TaskLadder, forbid_unknown_fields=True):
    """The task's last tool calls (by tool_hash) are a block of 2 to `max_period` calls, not all
    the same, repeated `repeats` times in a row (A B A B A B)."""

    repeats: Annotated[int, Meta(ge=2, le=16)] = 2
    max_period: Annotated[int, Meta(ge=2, le=8)] = 4
    enabled: bool = True


class NoProgressParams(TaskLadder, forbid_unknown_fields=True):
    """The same call returning the same tool result (result_hash) `repeats` times in a row in one
    task (events without a tool result do not break the run). The same call: result_hash carries
    the call that produced the result, so a batch of writes that all answer "ok" is progress; in a
    row: so is a tool answering "saved" now and then."""

    repeats: Annotated[int, Meta(ge=2)] = 5
    enabled: bool = True


class RetryStormParams(TaskLadder, forbid_unknown_fields=True):
    """`consecutive` events of a task in a row with status error or retry."""

    consecutive: Annotated[int, Meta(ge=2)] = 5
    enabled: bool = True


class EstimateParams(Struct, forbid_unknown_fields=True):
    """`warn` / `kill`: the ladder's factors over a task's estimate. A task with no estimate of
    its own is judged against a learned one once its agent has `learn_min_tasks` completed tasks
    (of its task_type, else of any type; 0: never learn): quantile `learn_quantile` of their
    sizes. p95 by default, because a kill at 2.5x of p95 hits almost no normal task (a lognormal
    task size with sigma 1 passes it 0.5% of the time, with sigma 0.5 0.03%; at p90, 1.4%),
    while a runaway still stops at a few times the usual size. Only completed tasks teach (status
    `ok`, or idle; not killed or failed ones), so a new task_type much bigger than the agent's
    other tasks is killed against the agent's sizes until it is given an estimate of its own
    (`task(id, estimated_tokens=..., task_type=...)`) for its first `learn_min_tasks` tasks.
    A task with no event for `task_idle_ms` (event time) ends when the agent's tasks are next
    swept (when it starts a new task)."""

    warn: Factor = 2.0
    kill: Factor = 2.5
    learn_min_tasks: Annotated[int, Meta(ge=0)] = 20
    learn_quantile: Annotated[float, Meta(gt=0, le=1)] = 0.95
    task_idle_ms: Annotated[int, Meta(ge=0)] = 30 * 60 * 1000  # 0: tasks end only by task_end (or eviction)


class SpikeParams(WindowLadder, forbid_unknown_fields=True):
    """A spike: the last hour's tokens over `factor` x the subject's hourly limit, or (with or
    without a limit) over `baseline_factor` x its own baseline: the median of its active hours
    (hours with usage) among the `baseline_hours` complete hours before the current one, once
    there are `min_hours` of them. A last hour under `min_tokens` is never a spike against the
    baseline, so a quiet subject's first burst is not one. The median, not the mean: one
    earlier spike does not raise the bar, and hours an agent sleeps through do not lower it."""

    factor: Factor = 2.0
    baseline_factor: Factor = 5.0
    baseline_hours: Annotated[int, Meta(ge=1, le=47)] = 24
    min_hours: Annotated[int, Meta(ge=1, le=47)] = 3
    min_tokens: Annotated[int, Meta(ge=0)] = 10_000
    enabled: bool = True


class UserSpikeParams(SpikeParams, forbid_unknown_fields=True):
    STEPS: ClassVar[tuple[str, ...]] = ("notify", "investigate", "throttle")  # throttles the user's agents


class ModelSpikeParams(SpikeParams, forbid_unknown_fields=True):
    STEPS: ClassVar[tuple[str, ...]] = ("notify", "investigate")  # a model has no agents of its own to act on


class ForecastParams(Struct, forbid_unknown_fields=True):
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.9
    min_elapsed_fraction: Annotated[float, Meta(ge=0, le=1)] = 0.05  # no forecast from the first minutes of a day


class EnabledParams(Struct, forbid_unknown_fields=True):
    enabled: bool = True


class RuleSettings(Struct, forbid_unknown_fields=True):
    runaway_detected: RunawayParams = msgspec.field(default_factory=RunawayParams)
    loop_detected: LoopParams = msgspec.field(default_factory=LoopParams)
    estimate_overrun: EstimateParams = msgspec.field(default_factory=EstimateParams)
    agent_spike: SpikeParams = msgspec.field(default_factory=SpikeParams)
    budget_forecast: ForecastParams = msgspec.field(default_factory=ForecastParams)
    daily_budget_exceeded: EnabledParams = msgspec.field(default_factory=EnabledParams)
    agent_budget_exceeded: EnabledParams = msgspec.field(default_factory=EnabledParams)
    user_budget_exceeded: EnabledParams = msgspec.field(default_factory=EnabledParams)
    step_overrun: EnabledParams = msgspec.field(default_factory=EnabledParams)
    tool_cycle_detected: ToolCycleParams = msgspec.field(default_factory=ToolCycleParams)
    no_progress_detected: NoProgressParams = msgspec.field(default_factory=NoProgressParams)
    retry_storm_detected: RetryStormParams = msgspec.field(default_factory=RetryStormParams)
    user_spike: UserSpikeParams = msgspec.field(default_factory=UserSpikeParams)
    model_spike: ModelSpikeParams = msgspec.field(default_factory=ModelSpikeParams)


class Budgets(Struct, forbid_unknown_fields=True):
    global_: Limits = msgspec.field(name="global", default_factory=Limits)
    default_agent: Limits = msgspec.field(default_factory=Limits)
    agents: dict[str, Limits] = {}
    users: dict[str, Limits] = {}
    teams: dict[str, Limits] = {}


LIMIT_FIELDS: tuple[str, ...] = Limits.__struct_fields__
_BASELINE_KEYS = ("file_budgets", "file_rules")


class RulesConfig(Struct, forbid_unknown_fields=True):
    timezone: str = "UTC"
    budgets: Budgets = msgspec.field(default_factory=Budgets)
    rules: RuleSettings = msgspec.field(default_factory=RuleSettings)
    version: int = 0  # bumped by every applied policy
    # what the rules file said (set by parse_rules, never by the file itself): a deleted
    # override goes back to it; None (a config built in code): the built-in defaults
    file_budgets: Budgets | None = None
    file_rules: RuleSettings | None = None

    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def agent_limits(self, agent_id: str) -> Limits:
        """The agent's own budget, with unset fields taken from `default_agent`."""
        own = self.budgets.agents.get(agent_id)
        if own is None:
            return self.budgets.default_agent
        return overlay_limits(self.budgets.default_agent, own)


def overlay_limits(base: Limits, top: Limits) -> Limits:
    """`base` with every field `top` sets replaced."""
    merged = msgspec.structs.asdict(base)
    merged.update({k: v for k, v in msgspec.structs.asdict(top).items() if v is not None})
    return Limits(**merged)


def _usd_fields_to_nanos(limits: Any, where: str) -> Any:
    """YAML says `daily_usd: 5.00` (`weekly_usd`, `monthly_usd`); the wire and the state keep
    integer nano-dollars."""
    if not isinstance(limits, dict):
        return limits
    out = dict(limits)
    for period in ("daily", "weekly", "monthly"):
        if f"{period}_usd" in out:
            try:
                out[f"{period}_nano_usd"] = usd_to_nanos(out.pop(f"{period}_usd"))
            except ValueError as err:
                raise ConfigError(f"{where}.{period}_usd", str(err)) from None
    return out


def _limits(raw: Any, where: str) -> Limits:
    """One budget entry; an error names the entry's full path (msgspec says only `agents[...]`)."""
    try:
        return msgspec.convert(_usd_fields_to_nanos(raw or {}, where), Limits, strict=False)
    except msgspec.ValidationError as err:
        found = bad_input(err)
        raise ConfigError(f"{where}.{found.field}" if found.field not in ("", "$") else where, found.reason) from None


def _normalize_budgets(raw: dict[str, Any]) -> dict[str, Any]:
    budgets = raw.get("budgets") or {}
    if not isinstance(budgets, dict):
        raise ConfigError("budgets", "expected a mapping")
    budgets = dict(budgets)
    for key in ("global", "default_agent"):
        if key in budgets:
            budgets[key] = _limits(budgets[key], f"budgets.{key}")
    for group in ("agents", "users", "teams"):
        members = budgets.get(group) or {}
        if not isinstance(members, dict):
            raise ConfigError(f"budgets.{group}", "expected a mapping of name to limits")
        budgets[group] = {name: _limits(lim, f"budgets.{group}.{name}") for name, lim in members.items()}
    return {**raw, "budgets": budgets}


def _normalize_ladders(raw: dict[str, Any]) -> dict[str, Any]:
    """A ladder written as a YAML list (`ladder: [notify, kill_task]`) as the string the rule keeps."""
    rules = raw.get("rules")
    if not isinstance(rules, dict):
        return raw
    out = dict(rules)
    for name, params in rules.items():
        if isinstance(params, dict) and isinstance(params.get("ladder"), list):
            out[name] = {**params, "ladder": ",".join(str(step) for step in params["ladder"])}
    return {**raw, "rules": out}


def parse_rules(raw: dict[str, Any] | None) -> RulesConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("rules file", "expected a mapping at the top level")
    for key in _BASELINE_KEYS:
        if key in raw:
            raise ConfigError(key, "not a rules file setting")
    try:
        config = msgspec.convert(_normalize_ladders(_normalize_budgets(raw)), RulesConfig, strict=False)
    except msgspec.ValidationError as err:
        found = bad_input(err)
        raise ConfigError(found.field if found.field not in ("", "$") else "rules file", found.reason) from None
    try:
        config.tz()
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("timezone", f"unknown time zone {config.timezone!r}") from None
    return msgspec.structs.replace(config, file_budgets=config.budgets, file_rules=config.rules)


def load_rules(path: Path | str | None) -> RulesConfig:
    """The rules file, or the defaults (`streams/rules.default.yaml`, beside this module) when none is given."""
    try:
        if path is None:
            text = resources.files("streams").joinpath("rules.default.yaml").read_text()
        else:
            text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"rules file {path}", str(err.strerror)) from None
    source = f"rules file {path or 'streams/rules.default.yaml'}"
    try:
        return parse_rules(yaml.safe_load(text))
    except yaml.YAMLError as err:
        raise ConfigError(source, f"not valid YAML ({err})") from None
    except ConfigError as err:
        line = _line_of(text, err.field)
        raise ConfigError(f"{source}{f' line {line}' if line else ''}: {err.field}", err.reason) from None


def _line_of(text: str, field: str) -> int | None:
    """The 1-based line of the deepest key of dotted `field` found in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in field.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


_GROUPS = {"agent": "agents", "user": "users", "team": "teams"}


def budget_entry(budgets: Budgets, scope: str, subject: str) -> Limits | None:
    """The entry a budget policy's key names (None: an agent, user or team without one)."""
    if scope == "global":
        return budgets.global_
    if scope == "default_agent":
        return budgets.default_agent
    return getattr(budgets, _GROUPS[scope]).get(subject)


def _with_entry(budgets: Budgets, scope: str, subject: str, limits: Limits | None) -> Budgets:
    if scope == "global":
        return msgspec.structs.replace(budgets, global_=limits or Limits())
    if scope == "default_agent":
        return msgspec.structs.replace(budgets, default_agent=limits or Limits())
    group = dict(getattr(budgets, _GROUPS[scope]))
    if limits is None or limits == Limits():
        group.pop(subject, None)  # an empty entry is no entry: an agent falls back to default_agent
    else:
        group[subject] = limits
    return msgspec.structs.replace(budgets, **{_GROUPS[scope]: group})


def without_fields(limits: Limits, names: list[str] | tuple[str, ...]) -> Limits:
    unknown = [n for n in names if n not in LIMIT_FIELDS]
    if unknown:
        raise ConfigError("unset", f"unknown budget field {unknown[0]!r} (one of {', '.join(LIMIT_FIELDS)})")
    return msgspec.structs.replace(limits, **{n: None for n in names})


def apply_policy(config: RulesConfig, policy: Policy) -> RulesConfig:
    """A new config with the policy applied (pure: the caller swaps it in and logs the change).

    `policy.overlay` (what `budget set|unset|delete` publish): its `limits` are laid over the
    subject's current entry (rules file + earlier policies), field by field; the fields in
    `unset` are removed; `deleted` puts the rules file's entry back. Without `overlay` (records
    from before it existed) a policy keeps its first meaning: `limits` replace the whole entry
    and `deleted` removes it. Rule params are always laid over the rule's current settings;
    with `overlay`, `unset` params and `deleted` go back to the rules file's values.
    """
    budgets = config.budgets
    rules = config.rules
    if policy.scope == "rule":
        current = getattr(rules, policy.subject, None)
        if current is None:
            raise ConfigError("subject", f"unknown rule {policy.subject!r}")
        from_file = getattr(config.file_rules or RuleSettings(), policy.subject)
        values = {**msgspec.structs.asdict(current), **policy.params}
        if policy.overlay and policy.deleted:
            values = msgspec.structs.asdict(from_file)
        elif policy.overlay:
            for name in policy.unset:
                if name not in values:
                    raise ConfigError("unset", f"rule {policy.subject} has no param {name!r}")
                values[name] = getattr(from_file, name)
        try:
            updated = msgspec.convert(values, type(current), strict=False)
        except msgspec.ValidationError as err:
            raise ConfigError("params", str(err)) from None
        rules = msgspec.structs.replace(rules, **{policy.subject: updated})
    elif policy.scope in ("global", "default_agent", *_GROUPS):
        limits = policy.limits or Limits()
        if not policy.overlay:
            entry: Limits | None = None if policy.deleted else limits
        elif policy.deleted:
            entry = budget_entry(config.file_budgets or Budgets(), policy.scope, policy.subject)
        else:
            current_entry = budget_entry(budgets, policy.scope, policy.subject) or Limits()
            entry = without_fields(overlay_limits(current_entry, limits), policy.unset)
        budgets = _with_entry(budgets, policy.scope, policy.subject, entry)
    return msgspec.structs.replace(config, budgets=budgets, rules=rules, version=config.version + 1)
