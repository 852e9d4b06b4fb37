"""Build, publish and read budget policies (the CLI side of `budget.policies`)."""
from __future__ import annotations

from typing import Any

from schemas.clock import system_ms
from schemas.codec import decode_policy, encode
from schemas.contract import Limits, Policy, policy_key
from schemas.errors import BadInput, ConfigError, PolicyError
from schemas.money import format_usd, usd_to_nanos
from schemas.topics import Topics
from streams.kafka import KafkaSecurity, produce_one, read_compacted
from streams.rules_config import RulesConfig, apply_policy


def build_policy(
    *, agent: str | None = None, user: str | None = None, team: str | None = None, global_: bool = False,
    default_agent: bool = False, rule: str | None = None, params: list[str] | None = None,
    daily_tokens: int | None = None, daily_usd: str | None = None, hourly_tokens: int | None = None,
    task_tokens: int | None = None, step_tokens: int | None = None, criticality: str | None = None,
    delete: bool = False, author: str = "cli",
) -> Policy:
    scopes = [(s, n) for s, n in (("agent", agent), ("user", user), ("team", team), ("rule", rule)) if n] + \
             [(s, "") for s, on in (("global", global_), ("default_agent", default_agent)) if on]
    if len(scopes) != 1:
        raise PolicyError("", "give exactly one of --agent, --user, --team, --global, --default-agent, --rule")
    scope, subject = scopes[0]
    if criticality not in (None, "critical", "normal"):
        raise PolicyError("--criticality", f"expected critical or normal, got {criticality!r}")
    if scope == "rule":
        parsed: dict[str, float] = {}
        for item in params or []:
            name, sep, value = item.partition("=")
            try:
                parsed[name.strip()] = float(value)
            except ValueError:
                raise PolicyError("--param", f"expected name=number, got {item!r}") from None
            if not sep or not name.strip():
                raise PolicyError("--param", f"expected name=number, got {item!r}")
        policy = Policy(policy_id=policy_key(scope, subject), ts_ms=system_ms(), scope="rule", subject=subject,
                        params=parsed, deleted=delete, author=author)
        try:
            apply_policy(RulesConfig(), policy)  # validates the rule name and its params
        except ConfigError as err:
            raise PolicyError(err.field, err.reason) from None
        return policy
    try:
        nano = usd_to_nanos(daily_usd) if daily_usd is not None else None
    except ValueError as err:
        raise PolicyError("--daily-usd", str(err)) from None
    limits = Limits(daily_tokens=daily_tokens, daily_nano_usd=nano, hourly_tokens=hourly_tokens,
                    task_tokens=task_tokens, step_tokens=step_tokens, criticality=criticality)  # type: ignore[arg-type]
    if not delete and limits == Limits():
        raise PolicyError("", "give at least one limit (--daily-tokens, --daily-usd, ...) or --delete")
    return Policy(policy_id=policy_key(scope, subject), ts_ms=system_ms(), scope=scope, subject=subject,  # type: ignore[arg-type]
                  limits=None if delete else limits, deleted=delete, author=author)


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
    config = base
    for policy in await read_policies(bootstrap, topics, security):
        try:
            config = apply_policy(config, policy)
        except ConfigError:
            continue
    return config


def render_rows(config: RulesConfig) -> list[dict[str, Any]]:
    b = config.budgets
    rows = [("global", "", b.global_), ("default_agent", "", b.default_agent)]
    rows += [("agent", k, config.agent_limits(k)) for k in sorted(b.agents)]
    rows += [("user", k, v) for k, v in sorted(b.users.items())] + [("team", k, v) for k, v in sorted(b.teams.items())]
    return [
        {"scope": scope, "subject": subject, "daily_tokens": lim.daily_tokens,
         "daily_usd": format_usd(lim.daily_nano_usd) if lim.daily_nano_usd is not None else None,
         "hourly_tokens": lim.hourly_tokens, "task_tokens": lim.task_tokens, "step_tokens": lim.step_tokens,
         "criticality": lim.criticality}
        for scope, subject, lim in rows
    ]
