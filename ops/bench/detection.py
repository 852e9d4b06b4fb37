"""`budgetwarden bench detection`: how well the loop rules catch loops, on labelled traces.

Every trace line (one model call, `ops.bench.detection_traces`) goes through what the client
does with `record_openai(..., messages=..., tool_calls=...)` (the provider's usage normalized,
the newest turn fingerprinted: `streams.client.fingerprint`) and then through the processor's
`Engine` with a fake clock, no broker. A `kill_task` stops the task at that call, as the
client's TaskKilled does: its later lines are skipped. Two runs over the same traces:

- `rules`: the shipped rule thresholds (streams/rules.default.yaml), events carrying the
  fingerprints and no prompt_hash;
- `baseline`: what existed before fingerprints: a prompt_hash of the whole conversation on
  every event, `loop_detected` at its thresholds of then (5 repeats within 20 steps), no other
  detector (retry storms off).

Both runs isolate detection: no task, step, hourly or daily budget and no learned estimates
(those stop runaways by size, whatever their shape, and are measured by `bench estimates`).

Measured per run and per detector (the rule that killed the task first): recall on loop tasks
(killed at or after the loop's first step), false kills (ok tasks killed, %), the median number
of looping calls made until the kill (the kill's step - loop_start + 1), and the dollars the
task spent until the kill; beside them, what the loops cost when nothing stops them.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from schemas.clock import FakeClock
from schemas.codec import encode
from schemas.contract import Limits, UsageEvent
from schemas.errors import InputError
from schemas.money import format_usd
from schemas.normalize import normalize
from schemas.pricing import PriceCatalog
from streams.client.fingerprint import fingerprint
from streams.engine import Engine, RawMessage
from streams.rules_config import Budgets, RulesConfig, load_rules

Lines = Callable[[], Iterable[dict[str, Any]]]
TARGETS = {"recall": 95.0, "false_kill_pct": 0.5, "median_steps_to_kill": 6}
BASELINE_LOOP = {"repeats": 5, "within_steps": 20}  # loop_detected as shipped before fingerprints


def _configs() -> dict[str, RulesConfig]:
    shipped = load_rules(None)
    rules = shipped.rules
    budgets = Budgets(default_agent=Limits(daily_tokens=10**15))
    detection = msgspec.structs.replace(
        shipped, budgets=budgets, rules=msgspec.structs.replace(
            rules, estimate_overrun=msgspec.structs.replace(rules.estimate_overrun, learn_min_tasks=0)))
    baseline = msgspec.structs.replace(detection, rules=msgspec.structs.replace(
        detection.rules, retry_storm_detected=msgspec.structs.replace(rules.retry_storm_detected, enabled=False),
        loop_detected=msgspec.structs.replace(rules.loop_detected, **BASELINE_LOOP)))
    return {"rules": detection, "baseline": baseline}


def _label(value: Any) -> tuple[str, str, int]:
    """(label, kind, loop_start) of a label: "loop" | "ok", or the generator's object."""
    if isinstance(value, str):
        return value, "", 0
    return value["label"], value.get("kind") or "", value.get("loop_start") or 0


def _prompt_hash(messages: Any) -> str:
    raw = json.dumps(messages, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


def _event(line: dict[str, Any], n: int, baseline: bool) -> UsageEvent:
    provider = line.get("provider", "openai")
    usage = normalize(provider, line.get("usage") or {})
    extra: dict[str, Any]
    if baseline:
        extra = {"prompt_hash": _prompt_hash(line.get("messages"))}
    else:
        extra = fingerprint(line.get("messages"), line.get("tool_calls")).fields()
    return UsageEvent(
        event_id=f"ev{n}", ts_ms=line["ts_ms"], agent_id=line["agent_id"], model=line["model"],
        provider=provider, task_id=line["task_id"], step=line.get("step"), status=line.get("status") or "ok",
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens, cache_write_1h_tokens=usage.cache_write_1h_tokens, **extra)


def _nano(line: dict[str, Any], catalog: PriceCatalog) -> int:
    """What one call cost (nano-USD), from its provider usage object."""
    provider = line.get("provider", "openai")
    u = normalize(provider, line.get("usage") or {})
    return catalog.price(line["model"], provider, line["ts_ms"], u.input_tokens, u.output_tokens,
                         u.cache_read_tokens, u.cache_write_tokens, u.cache_write_1h_tokens).nano_usd


def replay(lines: Iterable[dict[str, Any]], config: RulesConfig, baseline: bool,
           catalog: PriceCatalog) -> tuple[dict[str, dict[str, Any]], int]:
    """Per task: killed, at_step, rule, nano (spent until the kill, or in all), and the event count."""
    clock = FakeClock()
    engine = Engine(config, clock, catalog)
    tasks: dict[str, dict[str, Any]] = {}
    n = 0
    for number, line in enumerate(lines, 1):
        try:
            task = tasks.setdefault(line["task_id"], {"killed": False, "at_step": None, "rule": None, "nano": 0})
            if task["killed"]:
                continue  # the client raised TaskKilled: the agent made no more calls in this task
            ev = _event(line, n + 1, baseline)
            nano = _nano(line, catalog)
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as err:
            raise InputError(f"trace line {number}", f"{type(err).__name__}: {err}"[:300]) from None
        n += 1
        if ev.ts_ms > clock.now:
            clock.now = ev.ts_ms
        task["nano"] += nano
        out = engine.process([RawMessage(ev.agent_id.encode(), encode(ev), "usage.events", 0, n)])
        for d in out.decisions:
            if d.action == "kill_task" and d.task_id == ev.task_id and not task["killed"]:
                task.update(killed=True, at_step=ev.step, rule=d.rule)
    return tasks, n


def _median(values: list[int]) -> float | None:
    return statistics.median(values) if values else None


def _usd(nano: float | None) -> str | None:
    return None if nano is None else format_usd(int(nano))


def score(tasks: dict[str, dict[str, Any]], labels: dict[str, Any]) -> dict[str, Any]:
    """Recall, false kills, steps and dollars to the kill: overall, per detector, per loop kind."""
    groups: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    loops = oks = caught = false_kills = early = 0
    for task_id, value in labels.items():
        label, kind, start = _label(value)
        t = tasks.get(task_id)
        if t is None:
            continue
        rule = t["rule"] or "(not killed)"
        if label == "loop":
            loops += 1
            groups["kind:" + (kind or "loop")]["loops"].append(task_id)
            if t["killed"] and t["at_step"] is not None and t["at_step"] < start:
                early += 1
            elif t["killed"]:
                caught += 1
                steps = t["at_step"] - start + 1
                for g in (groups["all"], groups[rule], groups["kind:" + (kind or "loop")]):
                    g["steps"].append(steps)
                    g["nano"].append(t["nano"])
            else:
                groups["all"]["missed_nano"].append(t["nano"])
        else:
            oks += 1
            groups["kind:" + (kind or "ok")]["oks"].append(task_id)
            if t["killed"]:
                false_kills += 1
                groups[rule]["false"].append(task_id)
                groups["kind:" + (kind or "ok")]["false"].append(task_id)
    detectors = {
        rule: {"loops_killed": len(g["steps"]), "false_kills": len(g["false"]),
               "median_steps_to_kill": _median(g["steps"]), "median_usd_before_kill": _usd(_median(g["nano"]))}
        for rule, g in sorted(groups.items()) if not rule.startswith("kind:") and rule != "all"}
    kinds = {}
    for name, g in sorted(groups.items()):
        if not name.startswith("kind:"):
            continue
        if g["loops"]:
            kinds[name[5:]] = {"label": "loop", "tasks": len(g["loops"]), "killed": len(g["steps"]),
                               "median_steps_to_kill": _median(g["steps"])}
        else:
            kinds[name[5:]] = {"label": "ok", "tasks": len(g["oks"]), "false_kills": len(g["false"])}
    a = groups["all"]
    return {
        "loop_tasks": loops, "ok_tasks": oks, "loops_killed": caught, "killed_before_loop": early,
        "recall": round(100 * caught / loops, 2) if loops else None,
        "false_kills": false_kills, "false_kill_pct": round(100 * false_kills / oks, 2) if oks else None,
        "median_steps_to_kill": _median(a["steps"]),
        "median_usd_before_kill": _usd(_median(a["nano"])), "usd_before_kills": _usd(sum(a["nano"])),
        "usd_in_missed_loops": _usd(sum(a["missed_nano"])),
        "detectors": detectors, "kinds": kinds,
    }


def run(lines: Lines, labels: dict[str, Any], progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Both runs over the traces `lines()` yields (called once per run); the result for `--json`."""
    catalog = PriceCatalog.default()
    configs = _configs()
    progress("replaying the traces through the fingerprints and the rules")
    tasks, events = replay(lines(), configs["rules"], False, catalog)
    progress("replaying them again through the whole-prompt-hash baseline")
    base_tasks, _ = replay(lines(), configs["baseline"], True, catalog)
    unchecked = sum(_nano(line, catalog) for line in lines()
                    if _label(labels.get(line["task_id"], "ok"))[0] == "loop")
    rules, base = score(tasks, labels), score(base_tasks, labels)
    return {
        "recall": rules["recall"], "false_kill_pct": rules["false_kill_pct"],
        "median_steps_to_kill": rules["median_steps_to_kill"],
        "baseline_recall": base["recall"], "baseline_false_kill_pct": base["false_kill_pct"],
        "baseline_median_steps_to_kill": base["median_steps_to_kill"],
        "targets": TARGETS, "events": events, "usd_in_loops_unchecked": _usd(unchecked),
        "rules": rules, "baseline": base,
        "per_task": {tid: {"killed": t["killed"], "at_step": t["at_step"], "rule": t["rule"]}
                     for tid, t in sorted(tasks.items())},
    }


