"""Budgets and rule thresholds: the YAML rules file, and live changes from `budget.policies`.

The file is read once at start; each Policy event then replaces one budget (or one rule's
parameters) and bumps `version`, which every decision carries as `policy_version`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml
from msgspec import Meta, Struct


from schemas.contract import Limits, Policy
from schemas.errors import ConfigError
from schemas.money import usd_to_nanos

Factor = Annotated[float, Meta(gt=0)]


class RunawayParams(Struct, forbid_unknown_fields=True):
    factor: Factor = 3.0


class LoopParams(Struct, forbid_unknown_fields=True):
    repeats: Annotated[int, Meta(ge=2)] = 5
    within_steps: Annotated[int, Meta(ge=1)] = 20


class EstimateParams(Struct, forbid_unknown_fields=True):
    warn: Factor = 2.0
    kill: Factor = 2.5


class SpikeParams(Struct, forbid_unknown_fields=True):
    factor: Factor = 2.0


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


class Budgets(Struct, forbid_unknown_fields=True):
    global_: Limits = msgspec.field(name="global", default_factory=Limits)
    default_agent: Limits = msgspec.field(default_factory=Limits)
    agents: dict[str, Limits] = {}
    users: dict[str, Limits] = {}
    teams: dict[str, Limits] = {}


class RulesConfig(Struct, forbid_unknown_fields=True):
    timezone: str = "UTC"
    budgets: Budgets = msgspec.field(default_factory=Budgets)
    rules: RuleSettings = msgspec.field(default_factory=RuleSettings)
    version: int = 0  # bumped by every applied policy

    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def agent_limits(self, agent_id: str) -> Limits:
        """The agent's own budget, with unset fields taken from `default_agent`."""
        own = self.budgets.agents.get(agent_id)
        if own is None:
            return self.budgets.default_agent
        return _overlay(self.budgets.default_agent, own)


def _overlay(base: Limits, top: Limits) -> Limits:
    merged = msgspec.structs.asdict(base)
    merged.update({k: v for k, v in msgspec.structs.asdict(top).items() if v is not None})
    return Limits(**merged)


def _usd_fields_to_nanos(limits: Any, where: str) -> Any:
    """YAML says `daily_usd: 5.00`; the wire and the state keep integer nano-dollars."""
    if not isinstance(limits, dict):
        return limits
    out = dict(limits)
    if "daily_usd" in out:
        try:
            out["daily_nano_usd"] = usd_to_nanos(out.pop("daily_usd"))
        except ValueError as err:
            raise ConfigError(f"{where}.daily_usd", str(err)) from None
    return out


def _normalize_budgets(raw: dict[str, Any]) -> dict[str, Any]:
    budgets = dict(raw.get("budgets") or {})
    for key in ("global", "default_agent"):
        if key in budgets:
            budgets[key] = _usd_fields_to_nanos(budgets[key] or {}, f"budgets.{key}")
    for group in ("agents", "users", "teams"):
        members = budgets.get(group) or {}
        if not isinstance(members, dict):
            raise ConfigError(f"budgets.{group}", "expected a mapping of name to limits")
        budgets[group] = {name: _usd_fields_to_nanos(lim or {}, f"budgets.{group}.{name}") for name, lim in members.items()}
    return {**raw, "budgets": budgets}


def parse_rules(raw: dict[str, Any] | None) -> RulesConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("rules file", "expected a mapping at the top level")
    try:
        config = msgspec.convert(_normalize_budgets(raw), RulesConfig, strict=False)
    except msgspec.ValidationError as err:
        raise ConfigError("rules file", str(err)) from None
    try:
        config.tz()
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("timezone", f"unknown time zone {config.timezone!r}") from None
    return config


def load_rules(path: Path | str | None) -> RulesConfig:
    """The rules file, or the defaults (`streams/rules.default.yaml`, beside this module) when none is given."""
    try:
        if path is None:
            text = resources.files("streams").joinpath("rules.default.yaml").read_text()
        else:
            text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"rules file {path}", str(err.strerror)) from None
    try:
        return parse_rules(yaml.safe_load(text))
    except yaml.YAMLError as err:
        raise ConfigError(f"rules file {path}", f"not valid YAML ({err})") from None


def apply_policy(config: RulesConfig, policy: Policy) -> RulesConfig:
    """A new config with the policy applied (pure: the caller swaps it in and logs the change)."""
    budgets = config.budgets
    rules = config.rules
    limits = policy.limits or Limits()
    if policy.scope == "global":
        budgets = msgspec.structs.replace(budgets, global_=Limits() if policy.deleted else limits)
    elif policy.scope == "default_agent":
        budgets = msgspec.structs.replace(budgets, default_agent=Limits() if policy.deleted else limits)
    elif policy.scope in ("agent", "user", "team"):
        group_name = {"agent": "agents", "user": "users", "team": "teams"}[policy.scope]
        group = dict(getattr(budgets, group_name))
        if policy.deleted:
            group.pop(policy.subject, None)
        else:
            group[policy.subject] = limits
        budgets = msgspec.structs.replace(budgets, **{group_name: group})
    elif policy.scope == "rule":
        current = getattr(rules, policy.subject, None)
        if current is None:
            raise ConfigError("subject", f"unknown rule {policy.subject!r}")
        try:
            updated = msgspec.convert({**msgspec.structs.asdict(current), **policy.params}, type(current), strict=False)
        except msgspec.ValidationError as err:
            raise ConfigError("params", str(err)) from None
        rules = msgspec.structs.replace(rules, **{policy.subject: updated})
    return msgspec.structs.replace(config, budgets=budgets, rules=rules, version=config.version + 1)
