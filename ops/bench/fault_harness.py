"""Shared machinery of the fault tests and the fault benchmarks (`bench rebalance`, `bench faults`):
a seeded fleet, the ground truth of what was sent, `budgetwarden worker` as a subprocess that can
be killed, and the end-of-run comparisons.

Every test or run sends events, breaks something, and then asks the same questions: do the
processor's per-agent totals and ClickHouse's equal what was sent (tokens and nano-dollars,
one row per unique event_id), and was no decision published twice?
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ops.fleet.calls import task_calls
from ops.fleet.profiles import DEMO_FLEET, AgentProfile
from schemas.clock import system_ms as now_ms
from schemas.topics import DEADLETTER, DECISIONS, USAGE
from schemas.codec import decode_decision
from schemas.contract import UsageEvent
from schemas.normalize import normalize
from schemas.pricing import PriceCatalog
from schemas.calendar import Calendar
from sinks.http_json import read_api_token

T = TypeVar("T")

# Small limits so a few hundred events make decisions (budgets, runaway tasks, loops) to check.
RULES = """
timezone: UTC
budgets:
  default_agent: {daily_tokens: 400000, task_tokens: 20000}
rules:
  loop_detected: {repeats: 5, within_steps: 20}
"""
WIRE_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "google": "google"}


def today_start(at_ms: int | None = None) -> int:
    return Calendar("UTC").day_start(at_ms or now_ms())


# --- the seeded fleet ------------------------------------------------------------------------

def fleet_events(n: int, seed: int = 7, *, spread_ms: int = 10 * 60_000, tag: str = "",
                 profiles: Sequence[AgentProfile] = DEMO_FLEET) -> list[UsageEvent]:
    """`n` events of the demo fleet's agents, round robin, each agent working through its tasks
    (provider-shaped usage normalized as the client does), timestamps rising over the last
    `spread_ms` of today. Same seed, same events, except the per-run `tag` in ids."""
    tag = tag or uuid.uuid4().hex[:8]
    end = now_ms()
    start = max(end - spread_ms, today_start(end))
    streams = {p.agent_id: _agent_calls(p, random.Random(f"{seed}:{p.agent_id}")) for p in profiles}
    by_id = {p.agent_id: p for p in profiles}
    out: list[UsageEvent] = []
    for i in range(n):
        profile = profiles[i % len(profiles)]
        call = next(streams[profile.agent_id])
        usage = normalize(by_id[call.agent_id].provider, call.usage)
        out.append(UsageEvent(
            event_id=f"{tag}-{i}", ts_ms=start + (end - start) * i // max(1, n), agent_id=call.agent_id,
            task_id=call.task_id, user_id=call.user_id, team=call.team, step=call.step, model=call.model,
            provider=WIRE_PROVIDER[call.provider], input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,  # type: ignore[arg-type]
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens, estimated_tokens=call.estimated_tokens,
            prompt_hash=call.prompt_hash, tool=call.tool, criticality=by_id[call.agent_id].criticality,
        ))
    return out


def _agent_calls(profile: AgentProfile, rng: random.Random) -> Any:
    task_no = 0
    while True:
        task_no += 1
        yield from task_calls(profile, rng, task_no)


# --- ground truth ----------------------------------------------------------------------------

@dataclass
class Truth:
    """Per-agent totals of the unique events sent (first copy of an event_id wins)."""

    tokens: Counter[str] = field(default_factory=Counter)
    nano: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    ids: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, events: Iterable[UsageEvent], since_ms: int | None = None) -> Truth:
        """Only events at or after `since_ms` count (the processor's "today")."""
        truth = cls()
        price = PriceCatalog.default().price
        for e in events:
            if e.event_id in truth.ids:
                continue
            truth.ids.add(e.event_id)
            if since_ms is not None and e.ts_ms < since_ms:
                continue
            truth.tokens[e.agent_id] += (e.input_tokens + e.output_tokens + e.cache_read_tokens + e.cache_write_tokens
                                         + e.cache_write_1h_tokens)
            truth.nano[e.agent_id] += price(e.model, e.provider, e.ts_ms, e.input_tokens, e.output_tokens,
                                            e.cache_read_tokens, e.cache_write_tokens, e.cache_write_1h_tokens).nano_usd
            truth.events[e.agent_id] += 1
        return truth

    def totals(self) -> dict[str, tuple[int, int]]:
        return {a: (self.tokens[a], self.nano[a]) for a in self.tokens}


def processor_totals(status: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {a: (s["tokens_today"], s["nano_usd_today"]) for a, s in status.get("agents", {}).items()
            if s["tokens_today"] or s["nano_usd_today"]}


STORE_TOTALS = ("SELECT agent_id, toInt64(sum(tokens)) AS tokens, toInt64(sum(nano_usd)) AS nano, count() AS n "
                "FROM {db}.usage_events FINAL GROUP BY agent_id")


def store_totals(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {r["agent_id"]: (int(r["tokens"]), int(r["nano"])) for r in rows}


def store_count(rows: list[dict[str, Any]]) -> int:
    return sum(int(r["n"]) for r in rows)


# --- Kafka -----------------------------------------------------------------------------------

def prefix() -> str:
    return f"flt{uuid.uuid4().hex[:8]}."


async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[str | None, bytes]]) -> list[tuple[int, int]]:
    """Sends in order; returns each message's (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key.encode() if key else None) for key, value in messages]
        return [(meta.partition, meta.offset) for meta in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, quiet_s: float = 1.0, timeout_s: float = 20.0,
                     committed_only: bool = False) -> list[bytes]:
    """Every message on the topic, from the start until it has been quiet for `quiet_s`."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False,
                                isolation_level="read_committed" if committed_only else "read_uncommitted")
    await consumer.start()
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out += [r.value for r in records]
                last = time.monotonic()
    finally:
        await consumer.stop()
    return out


async def eventually(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float = 30.0,
                     every_s: float = 0.3) -> T:
    """Poll until `done(value)`; returns the last value either way (the test asserts on it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every_s)


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll a condition on this process's own objects; returns whether it came true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --- the worker --------------------------------------------------------------------------------

def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


class WorkerProcess:
    """`budgetwarden worker` in a subprocess on topics under `topic_prefix`; logs in `log_path`."""

    def __init__(self, bootstrap: str, directory: Path, topic_prefix: str, *, app_id: str | None = None,
                 only: str | None = None, exactly_once: bool = False, rules: str = RULES,
                 env: dict[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.dir = directory
        self.data_dir = directory / "var"
        self.prefix = topic_prefix
        self.app_id = app_id or topic_prefix.rstrip(".")
        self.only = only
        self.exactly_once = exactly_once
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_url = ""
        directory.mkdir(parents=True, exist_ok=True)
        self.rules = directory / "rules.yaml"
        self.rules.write_text(rules)
        self.log_path = directory / "worker.log"

    @property
    def runs_processor(self) -> bool:
        return self.only in (None, "processor")

    @property
    def runs_sink(self) -> bool:
        return self.only in (None, "sink")

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("budgetwarden")
        cmd = [str(exe), "worker", "--bootstrap", self.bootstrap, "--rules", str(self.rules), "--data-dir",
               str(self.data_dir), "--http-port", "0", "--app-id", self.app_id, "--topic-prefix", self.prefix]
        if self.only:
            cmd += ["--only", self.only]
        if self.exactly_once:
            cmd.append("--exactly-once")
        return cmd

    def launch(self) -> None:
        """Start without waiting (the security tests watch a worker that cannot come up)."""
        for stale in ("processor.json", "worker.json"):
            (self.data_dir / stale).unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env})

    async def start(self, timeout_s: float = 60.0) -> WorkerProcess:
        self.launch()
        ready = [self.data_dir / "processor.json"] * self.runs_processor + [self.data_dir / "worker.json"] * self.runs_sink
        deadline = time.monotonic() + timeout_s
        while not all(_readable_json(p) for p in ready):  # exists is not enough: caught half-written once
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, "worker did not start:\n" + self.log_tail()
            await asyncio.sleep(0.2)
        if self.runs_sink:
            self.http_url = json.loads((self.data_dir / "worker.json").read_text())["http_url"]
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "processor.json").read_text())

    async def status_when(self, check: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0) -> dict[str, Any]:
        async def fetch() -> dict[str, Any]:
            return self.status()

        return await eventually(fetch, check, timeout_s)

    @property
    def api_headers(self) -> dict[str, str]:
        """The worker's API token (BUDGETWARDEN_API_TOKEN, else the one it generated into its data dir)."""
        token = read_api_token(self.data_dir, self.env.get("BUDGETWARDEN_API_TOKEN"))
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def sql(self, query: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(headers=self.api_headers) as session:
            async with session.get(self.http_url + "/api/sql", params={"q": query}) as resp:
                body = await resp.json()
        assert "rows" in body, body
        return body["rows"]

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait, timeout_s)
        return code

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # the comparisons -------------------------------------------------------------------------

    async def processor_matches(self, truth: Truth, timeout_s: float = 40.0) -> dict[str, tuple[int, int]]:
        """As `processor_matches`; on a mismatch the worker logs its tasks' stacks, and the error shows
        the log's tail (a stall is seen there)."""
        try:
            return await processor_matches(self.status, truth, timeout_s)
        except AssertionError as err:
            before = self.log_path.stat().st_size if self.log_path.exists() else 0
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGUSR1)  # mode's worker logs every task's stack
                await asyncio.sleep(2)
            raise AssertionError(f"{err}\n--- {self.log_path} (tail) ---\n{self.log_diagnosis(before)}") from None

    def log_diagnosis(self, dump_at: int, chars: int = 4000) -> str:
        """The log's tail before the stack dump, then the dump's stacks without their locals (the
        dump is long: the task stacks, not the tail of its last locals, show where it waits)."""
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        before, dump = data[:dump_at].decode(errors="replace"), data[dump_at:].decode(errors="replace")
        stacks = [line for line in dump.splitlines()
                  if line.startswith(("Stack for", "  File ")) or line.startswith("    ") and "await" in line]
        return before[-chars:] + "\n--- task stacks ---\n" + "\n".join(stacks)[-2 * chars:]

    async def store_matches(self, truth: Truth, timeout_s: float = 40.0) -> tuple[dict[str, tuple[int, int]], int]:
        return await store_matches(self.sql, truth, timeout_s=timeout_s)

    async def decisions_unique(self, strict: bool) -> int:
        return await decisions_unique(self.bootstrap, self.prefix + DECISIONS, self.sql, strict)

    @property
    def usage_topic(self) -> str:
        return self.prefix + USAGE

    @property
    def deadletter_topic(self) -> str:
        return self.prefix + DEADLETTER


# --- the comparisons (processor status, any store reachable through `sql`) ---------------------

Sql = Callable[[str], Awaitable[list[dict[str, Any]]]]


async def processor_matches(status: Callable[[], dict[str, Any]], truth: Truth,
                            timeout_s: float = 40.0) -> dict[str, tuple[int, int]]:
    async def fetch() -> dict[str, tuple[int, int]]:
        return processor_totals(status())

    got = await eventually(fetch, lambda got: got == truth.totals(), timeout_s)
    want = truth.totals()
    diff = {a: (got.get(a), want.get(a)) for a in set(got) | set(want) if got.get(a) != want.get(a)}
    assert got == want, f"processor totals differ from what was sent (agent: (got, want)): {diff}"
    assert status()["stats"]["offset_gaps"] == 0, "the consumer skipped usage messages (see usage.offset_gap)"
    return got


async def store_matches(sql: Sql, truth: Truth, database: str = "budgetwarden",
                        timeout_s: float = 40.0) -> tuple[dict[str, tuple[int, int]], int]:
    async def fetch() -> tuple[dict[str, tuple[int, int]], int]:
        rows = await sql(STORE_TOTALS.format(db=database))
        return store_totals(rows), store_count(rows)

    want = (truth.totals(), len(truth.ids))
    got = await eventually(fetch, lambda got: got == want, timeout_s)
    assert got == want, "ClickHouse totals / row count differ from what was sent"
    return got


async def decisions_unique(bootstrap: str, topic: str, sql: Sql, strict: bool, database: str = "budgetwarden") -> int:
    """Decisions were made, ClickHouse holds each once, and the topic repeats none when `strict`.

    At-least-once may re-publish a decision a crash interrupted, with the SAME id (ids are
    deterministic), which the idempotent sink absorbs; exactly-once must not repeat it at all
    (read with read_committed). Returns how many repeats the topic holds."""
    published = [decode_decision(v).decision_id for v in await read_topic(bootstrap, topic, committed_only=strict)]
    unique = set(published)
    assert unique, "the fleet's budgets should have produced decisions"
    if strict:
        assert len(published) == len(unique), "a decision was published twice"

    async def fetch() -> list[str]:
        return [r["decision_id"] for r in await sql(f"SELECT decision_id FROM {database}.decisions FINAL")]

    stored = await eventually(fetch, lambda got: len(got) >= len(unique), 20.0)
    assert sorted(stored) == sorted(unique), "ClickHouse should hold every published decision exactly once"
    return len(published) - len(unique)
