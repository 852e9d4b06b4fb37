"""Build, publish and read budget policies (the CLI side of `budget.policies`)."""
from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops.kafka.settings import client_options_from_env
from ops.kafka.topics import POLICIES
from schemas.codec import BadInput, decode_policy, encode
from schemas.contract import Limits, Policy, policy_key
from schemas.money import format_usd, usd_to_nanos
from streams.clock import system_ms
from streams.rules_config import ConfigError, RulesConfig, apply_policy


class PolicyError(ValueError):
    """The flags do not make one valid policy; the message names the flag."""


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
        raise PolicyError("give exactly one of --agent, --user, --team, --global, --default-agent, --rule")
    scope, subject = scopes[0]
    if criticality not in (None, "critical", "normal"):
        raise PolicyError(f"--criticality: expected critical or normal, got {criticality!r}")
    if scope == "rule":
        parsed: dict[str, float] = {}
        for item in params or []:
            name, sep, value = item.partition("=")
            try:
                parsed[name.strip()] = float(value)
            except ValueError:
                raise PolicyError(f"--param: expected name=number, got {item!r}") from None
            if not sep or not name.strip():
                raise PolicyError(f"--param: expected name=number, got {item!r}")
        policy = Policy(policy_id=policy_key(scope, subject), ts_ms=system_ms(), scope="rule", subject=subject,
                        params=parsed, deleted=delete, author=author)
        try:
            apply_policy(RulesConfig(), policy)  # validates the rule name and its params
        except ConfigError as err:
            raise PolicyError(str(err)) from None
        return policy
    try:
        nano = usd_to_nanos(daily_usd) if daily_usd is not None else None
    except ValueError as err:
        raise PolicyError(f"--daily-usd: {err}") from None
    limits = Limits(daily_tokens=daily_tokens, daily_nano_usd=nano, hourly_tokens=hourly_tokens,
                    task_tokens=task_tokens, step_tokens=step_tokens, criticality=criticality)  # type: ignore[arg-type]
    if not delete and limits == Limits():
        raise PolicyError("give at least one limit (--daily-tokens, --daily-usd, ...) or --delete")
    return Policy(policy_id=policy_key(scope, subject), ts_ms=system_ms(), scope=scope, subject=subject,  # type: ignore[arg-type]
                  limits=None if delete else limits, deleted=delete, author=author)


async def publish(bootstrap: str, policy: Policy, topic_prefix: str = "") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_options_from_env())
    await producer.start()
    try:
        await producer.send_and_wait(topic_prefix + POLICIES, encode(policy), key=policy.policy_id.encode())
    finally:
        await producer.stop()


async def read_policies(bootstrap: str, topic_prefix: str = "") -> list[Policy]:
    """Every policy on the (compacted) topic, oldest first."""
    name = topic_prefix + POLICIES
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **client_options_from_env())
    await consumer.start()
    out: list[Policy] = []
    try:
        await consumer.topics()
        parts = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        if not parts:
            return out
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        while any(await consumer.position(tp) < end[tp] for tp in parts):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    if r.value is not None:
                        try:
                            out.append(decode_policy(r.value))
                        except BadInput:
                            continue
    finally:
        await consumer.stop()
    return out


async def effective_config(bootstrap: str, base: RulesConfig, topic_prefix: str = "") -> RulesConfig:
    config = base
    for policy in await read_policies(bootstrap, topic_prefix):
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
