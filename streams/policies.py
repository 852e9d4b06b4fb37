"""Build, publish and read budget policies (the CLI side of `budget.policies`)."""
from __future__ import annotations

from typing import Any

import msgspec

from schemas.clock import system_ms
from schemas.codec import decode_policy, encode
from schemas.contract import Limits, Policy, policy_key
from schemas.errors import BadInput, ConfigError, PolicyError
from schemas.money import format_usd, usd_to_nanos
from schemas.topics import Topics
from streams.kafka import KafkaSecurity, produce_one, read_compacted
from streams.rules_config import LIMIT_FIELDS, RulesConfig, apply_policy, budget_entry, overlay_limits, without_fields


FIELD_ALIASES = {"daily_usd": "daily_nano_usd", "weekly_usd": "weekly_nano_usd", "monthly_usd": "monthly_nano_usd"}
Value = bool | int | float | str


def field_name(name: str) -> str:
    """`hourly-tokens`, `--hourly-tokens` or `hourly_tokens` → `hourly_tokens`; `daily_usd` → `daily_nano_usd`."""
    plain = name.strip().lstrip("-").replace("-", "_")
    return FIELD_ALIASES.get(plain, plain)


def build_policy(
    *, agent: str | None = None, user: str | None = None, team: str | None = None, global_: bool = False,
    default_agent: bool = False, rule: str | None = None, params: list[str] | None = None,
    daily_tokens: int | None = None, daily_usd: str | None = None, hourly_tokens: int | None = None,
    weekly_tokens: int | None = None, weekly_usd: str | None = None, monthly_tokens: int | None = None,
    monthly_usd: str | None = None, task_tokens: int | None = None, step_tokens: int | None = None, criticality: str | None = None,
    unset: list[str] | None = None, delete: bool = False, author: str = "cli", reason: str = "",
) -> Policy:
    """The change one command asks for (`overlay`: only the fields given, and those to unset).

    Applied as is it changes just those fields; `merge_change` turns it into the record to
    publish (the key's whole override, since the topic is compacted).
    """
    scopes = [(s, n) for s, n in (("agent", agent), ("user", user), ("team", team), ("rule", rule)) if n] + \
             [(s, "") for s, on in (("global", global_), ("default_agent", default_agent)) if on]
    if len(scopes) != 1:
        raise PolicyError("", "give exactly one of --agent, --user, --team, --global, --default-agent, --rule")
    scope, subject = scopes[0]
    if criticality not in (None, "critical", "normal"):
        raise PolicyError("--criticality", f"expected critical or normal, got {criticality!r}")
    unset_fields = sorted({field_name(f) for f in unset or []})
    common: dict[str, Any] = {"policy_id": policy_key(scope, subject), "ts_ms": system_ms(), "scope": scope,
                              "subject": subject, "deleted": delete, "author": author, "reason": reason,
                              "overlay": True, "unset": [] if delete else unset_fields}
    if scope == "rule":
        parsed: dict[str, float | str] = {}
        for item in params or []:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise PolicyError("--param", f"expected name=value, got {item!r}")
            try:
                parsed[name.strip()] = float(value)
            except ValueError:  # text: a ladder (notify,kill_task) or a model; the rule checks it
                parsed[name.strip()] = value.strip()
        _check_change(delete, bool(parsed), unset_fields, set(parsed), "--param k=v")
        policy = _valid(Policy(params={} if delete else parsed, changed=sorted({*parsed, *unset_fields}), **common))
        try:
            apply_policy(RulesConfig(), policy)  # validates the rule name, its params and the unset ones
        except ConfigError as err:
            raise PolicyError(err.field, err.reason) from None
        return policy
    nanos: dict[str, int | None] = {}
    for flag, usd in (("daily", daily_usd), ("weekly", weekly_usd), ("monthly", monthly_usd)):
        try:
            nanos[flag] = usd_to_nanos(usd) if usd is not None else None
        except ValueError as err:
            raise PolicyError(f"--{flag}-usd", str(err)) from None
    limits = Limits(daily_tokens=daily_tokens, daily_nano_usd=nanos["daily"], hourly_tokens=hourly_tokens,
                    weekly_tokens=weekly_tokens, weekly_nano_usd=nanos["weekly"], monthly_tokens=monthly_tokens,
                    monthly_nano_usd=nanos["monthly"], task_tokens=task_tokens, step_tokens=step_tokens, criticality=criticality)  # type: ignore[arg-type]
    given = set(_fields(limits))
    try:
        without_fields(Limits(), unset_fields)
    except ConfigError as err:
        raise PolicyError("--field", err.reason) from None
    _check_change(delete, bool(given), unset_fields, given, "a limit (--daily-tokens, --daily-usd, ...)")
    return _valid(Policy(limits=None if delete or not given else limits, changed=sorted(given | set(unset_fields)),
                         **common))


def _check_change(delete: bool, sets: bool, unset: list[str], given: set[str], what: str) -> None:
    if delete and (sets or unset):
        raise PolicyError("--delete", "removes the whole override: give no fields with it")
    if not delete and not sets and not unset:
        raise PolicyError("", f"give at least {what}, a field to unset, or --delete")
    if both := given & set(unset):
        raise PolicyError("--field", f"{sorted(both)[0]} is both set and unset")


def _valid(policy: Policy) -> Policy:
    """The policy as the processor will decode it (bounds: name and text lengths), or PolicyError."""
    try:
        return decode_policy(encode(policy))
    except BadInput as err:
        raise PolicyError(err.field, err.reason) from None


def _fields(limits: Limits | None) -> dict[str, Value]:
    return {} if limits is None else {k: v for k, v in msgspec.structs.asdict(limits).items() if v is not None}


def override_of(record: Policy | None) -> tuple[Limits, list[str], dict[str, float]]:
    """A key's current override as (fields set, fields unset, rule params), in `overlay` form.

    A record from before `overlay` replaced the whole entry, which is the same as setting its
    fields and unsetting every other one; its delete removed the entry (every field unset).
    """
    if record is None or (record.deleted and record.overlay):
        return Limits(), [], {}
    if record.scope == "rule":
        return Limits(), sorted(record.unset) if record.overlay else [], dict(record.params)
    limits = Limits() if record.deleted else (record.limits or Limits())
    if record.overlay:
        return limits, sorted(record.unset), {}
    return limits, sorted(f for f in LIMIT_FIELDS if getattr(limits, f) is None), {}


def in_force(config: RulesConfig, scope: str, subject: str) -> dict[str, Value]:
    """What applies to a key now: a rule's params, or a budget's limits (an agent's with the
    `default_agent` fields it lacks), unset fields left out."""
    if scope == "rule":
        current = getattr(config.rules, subject, None)
        return {} if current is None else dict(msgspec.structs.asdict(current))
    if scope == "agent":
        return _fields(config.agent_limits(subject))
    return _fields(budget_entry(config.budgets, scope, subject))


def fold(base: RulesConfig, policies: list[Policy]) -> RulesConfig:
    """`base` with every policy applied in order (one the config refuses is skipped, as the processor does)."""
    config = base
    for policy in policies:
        try:
            config = apply_policy(config, policy)
        except ConfigError:
            continue
    return config


def merge_change(policies: list[Policy], change: Policy, base: RulesConfig) -> Policy:
    """The record to publish for `change`: the key's whole override after it (the latest record
    on that key with the change laid over it), with the audit of the change: `changed`, and
    `before` / `after` in force (`base` and `policies` before; the record applied after)."""
    previous = next((p for p in reversed(policies) if p.policy_id == change.policy_id), None)
    limits, unset, params = override_of(previous)
    if change.deleted:
        record = msgspec.structs.replace(
            change, limits=None, params={}, unset=[],
            changed=sorted({*_fields(limits), *unset, *params}) if previous is not None else [])
    elif change.scope == "rule":
        params = {k: v for k, v in {**params, **change.params}.items() if k not in change.unset}
        unset_all = sorted((set(unset) - set(change.params)) | set(change.unset))
        record = msgspec.structs.replace(change, params=params, unset=unset_all)
    else:
        given = _fields(change.limits)
        merged = without_fields(overlay_limits(limits, change.limits or Limits()), change.unset)
        unset_all = sorted((set(unset) - set(given)) | set(change.unset))
        record = msgspec.structs.replace(change, limits=merged if merged != Limits() else None, unset=unset_all)
    before = fold(base, policies)
    after = apply_policy(before, record)
    return _valid(msgspec.structs.replace(
        record, before=in_force(before, change.scope, change.subject), after=in_force(after, change.scope, change.subject)))


async def publish(bootstrap: str, policy: Policy, topics: Topics = Topics(),
                  security: KafkaSecurity = KafkaSecurity()) -> None:
    await produce_one(bootstrap, topics.policies, policy.policy_id.encode(), encode(policy), security)


async def read_policies(bootstrap: str, topics: Topics = Topics(),
                        security: KafkaSecurity = KafkaSecurity()) -> list[Policy]:
    """Every readable policy on the (compacted) topic, oldest first."""
    out: list[Policy] = []

    def collect(_key: bytes | None, value: bytes | None) -> None:
        if value is not None:
            try:
                out.append(decode_policy(value))
            except BadInput:
                pass

    await read_compacted(bootstrap, topics.policies, collect, security=security)
    return out


async def effective_config(bootstrap: str, base: RulesConfig, topics: Topics = Topics(),
                           security: KafkaSecurity = KafkaSecurity()) -> RulesConfig:
    """The limits in force now: `base` (the rules file) with every published policy applied."""
    return fold(base, await read_policies(bootstrap, topics, security))


async def publish_change(bootstrap: str, change: Policy, base: RulesConfig, topics: Topics = Topics(),
                         security: KafkaSecurity = KafkaSecurity()) -> Policy:
    """Read the topic, merge `change` into its key's override (`merge_change`), publish that
    record and return it. Two commands racing on one key: the later record wins."""
    record = merge_change(await read_policies(bootstrap, topics, security), change, base)
    await publish(bootstrap, record, topics, security)
    return record


def render_rows(config: RulesConfig) -> list[dict[str, Any]]:
    b = config.budgets
    rows = [("global", "", b.global_), ("default_agent", "", b.default_agent)]
    rows += [("agent", k, config.agent_limits(k)) for k in sorted(b.agents)]
    rows += [("user", k, v) for k, v in sorted(b.users.items())] + [("team", k, v) for k, v in sorted(b.teams.items())]
    return [
        {"scope": scope, "subject": subject, "daily_tokens": lim.daily_tokens,
         "daily_usd": format_usd(lim.daily_nano_usd) if lim.daily_nano_usd is not None else None,
         "weekly_tokens": lim.weekly_tokens,
         "weekly_usd": format_usd(lim.weekly_nano_usd) if lim.weekly_nano_usd is not None else None,
         "monthly_tokens": lim.monthly_tokens,
         "monthly_usd": format_usd(lim.monthly_nano_usd) if lim.monthly_nano_usd is not None else None,
         "hourly_tokens": lim.hourly_tokens, "task_tokens": lim.task_tokens, "step_tokens": lim.step_tokens,
         "criticality": lim.criticality}
        for scope, subject, lim in rows
    ]
