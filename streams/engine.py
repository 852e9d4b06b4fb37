"""The partition engine: a batch of raw `usage.events` messages in, everything to send out.

No Faust here. The Faust agent hands over the messages of one batch; the engine decodes
them (bad ones become dead letters, the rest of the batch goes on), dedupes, prices, counts
every dimension, runs the rules and returns decisions, control commands and dead letters.
Changed records are only marked dirty: `take_writes()` encodes each of them ONCE per flush
interval, however many batches touched it (a Faust changelog write costs far more than
the event that causes it). Per-agent and per-task state lives here; user/team/model/global
totals are counted per source partition and leave as `Rollup` snapshots for the merger
(streams/merger.py).
"""
from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import structlog

from schemas.codec import BadInput, UsageDecoder
from schemas.contract import ControlCommand, Decision, DeadLetter, Limits, TaskEnd, UsageEvent
from schemas.pricing import PriceCatalog
from schemas.clock import Clock, system_ms
from streams.commands import commands_for
from streams.rules import Emitter, agent_decisions, downgrade_target, task_decisions
from streams.rules_config import RulesConfig
from streams.status import agent_status
from streams.state import (
    AgentInfo,
    AgentState,
    DimState,
    TASKS_CAP,
    Rollup,
    TaskState,
    decode_agent,
    decode_dim,
    decode_seen,
    decode_task,
    encode_state,
    id_hash,
    position,
)
from schemas.calendar import MINUTE_MS, Calendar

AGENT_PREFIX = b"a|"
DIM_PREFIX = b"d|"
TASK_PREFIX = b"t|"
SEEN_PREFIX = b"s|"
RECENT_DECISIONS = 100
UNPRICED_MEMORY = 10_000  # models reported as unpriced, remembered so each is reported once

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class RawMessage:
    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int


class Message(Protocol):
    """What the engine reads of a Kafka message (Faust's `Message` has these attributes)."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int


class _Pending:
    """One record's share of a batch: its watermark at the start of the batch, and the counts
    of its latest minute not yet added to its `Counter` (days begin on a minute, so adding a
    minute's sum at its latest instant counts exactly what adding each event would)."""

    __slots__ = ("state", "since", "calendar", "fine", "minute", "ts", "tokens", "nano", "max_ts", "trigger", "agents")

    def __init__(self, state: AgentState | DimState, since: int, calendar: Calendar, fine: bool,
                 agents: dict[str, None] | None = None) -> None:
        self.state = state
        self.since = since
        self.calendar = calendar
        self.fine = fine  # minute buckets too (agents), or hours and the day only (dims)
        self.minute = -1
        self.ts = self.tokens = self.nano = self.max_ts = 0
        self.trigger = ""
        self.agents = agents  # agents seen for a user/team/global subject, in order

    def add(self, ts: int, tokens: int, nano: int) -> None:
        minute = ts - ts % MINUTE_MS
        if minute != self.minute:
            self.flush()
            self.minute, self.ts, self.tokens, self.nano = minute, ts, tokens, nano
        else:
            self.tokens += tokens
            self.nano += nano
            if ts > self.ts:
                self.ts = ts
        if ts > self.max_ts:
            self.max_ts = ts

    def flush(self) -> None:
        if self.minute >= 0:
            self.state.counter.add(self.ts, self.tokens, self.nano, self.calendar, fine=self.fine)
            self.minute = -1


@dataclass
class EngineOutput:
    decisions: list[Decision] = field(default_factory=list)
    commands: list[ControlCommand] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    counted: int = 0
    task_ends: int = 0  # task_end events applied (not in `counted`: they carry no usage)
    duplicates: int = 0
    redelivered: int = 0  # messages handed twice by the consumer (a rebalance), skipped
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # (partition, expected offset, got)


def agent_key(agent_id: str) -> bytes:
    return AGENT_PREFIX + agent_id.encode()


def task_key(agent_id: str, task_id: str) -> bytes:
    return b"%b%b\x00%b" % (TASK_PREFIX, agent_id.encode(), task_id.encode())


def dim_key(partition: int, dim: str, subject: str) -> bytes:
    return b"%b%d|%b|%b" % (DIM_PREFIX, partition, dim.encode(), subject.encode())


def dead_letter(msg: Message, err: BadInput, now_ms: int) -> DeadLetter:
    return DeadLetter(
        ts_ms=now_ms, reason=err.reason[:1024], field=err.field, topic=msg.topic, partition=msg.partition,
        offset=msg.offset, raw=base64.b64encode(msg.value or b"").decode(),
        key=msg.key.decode(errors="replace") if msg.key else "",
    )


class Engine:
    """State and rules of the agents whose usage this process consumes."""

    def __init__(
        self,
        config: RulesConfig,
        now_ms: Clock = system_ms,
        catalog: PriceCatalog | None = None,
        control_key: bytes | None = None,
    ) -> None:
        self.now_ms = now_ms
        self.catalog = catalog or PriceCatalog.default()
        self._unpriced: dict[str, None] = {}  # models already reported unpriced, oldest first
        self.control_key = control_key
        self.agents: dict[str, AgentState] = {}
        self.dims: dict[tuple[int, str, str], DimState] = {}
        self.recent: deque[Decision] = deque(maxlen=RECENT_DECISIONS)
        self._dirty_dims: dict[tuple[int, str, str], DimState] = {}  # for the next rollup
        self._dirty_infos: dict[int, dict[str, AgentState]] = {}
        # records to write at the next `take_writes()`: agent → (state, partition), ...
        self._unsaved_agents: dict[str, tuple[AgentState, int]] = {}
        self._unsaved_tasks: dict[tuple[str, str], tuple[TaskState, int]] = {}
        self._unsaved_dims: dict[tuple[int, str, str], DimState] = {}
        self._evicted_tasks: dict[tuple[str, str], int] = {}  # tombstones to write: (agent, task) → partition
        self._homes: dict[str, int] = {}  # agent → the partition its records are written to
        # partition → the offset after the last message seen: a message above it means the consumer
        # skipped some (a lower one is a re-delivery after a seek, which `upto` handles)
        self._next_offset: dict[int, int] = {}
        self._decode = UsageDecoder(now_ms, task_ends=True).decode
        self.set_config(config)

    def set_config(self, config: RulesConfig) -> None:
        """Swap in new budgets/rules (a policy arrived); limits are re-derived lazily."""
        self.config = config
        self.calendar = Calendar(config.tz())
        self.emitter = Emitter(config, self.now_ms)
        self._limits: dict[str, Limits] = {}

    def limits(self, agent_id: str) -> Limits:
        found = self._limits.get(agent_id)
        if found is None:
            found = self._limits[agent_id] = self.config.agent_limits(agent_id)
        return found

    def restore(self, items: Iterable[tuple[bytes, bytes]], partition: int | None = None) -> int:
        """Load records recovered from the changelog (of `partition`, when known); every dimension
        is re-announced to the merger."""
        n = 0
        homes: set[str] = set()
        tasks: list[tuple[str, str, TaskState]] = []
        seen: list[tuple[str, dict[int, int]]] = []
        for key, value in items:
            if key.startswith(AGENT_PREFIX):
                state = decode_agent(value)
                self.agents[state.agent_id] = state
                homes.add(state.agent_id)
            elif key.startswith(SEEN_PREFIX):
                seen.append((key[len(SEEN_PREFIX):].decode(), decode_seen(value)))
            elif key.startswith(TASK_PREFIX):
                agent_id, _, task_id = key[len(TASK_PREFIX):].decode().partition("\x00")
                tasks.append((agent_id, task_id, decode_task(value)))
            elif key.startswith(DIM_PREFIX):
                dim = decode_dim(value)
                self.dims[(dim.partition, dim.dim, dim.subject)] = self._dirty_dims[
                    (dim.partition, dim.dim, dim.subject)] = dim
            n += 1
        for agent_id, task_id, task in tasks:  # after their agents, whatever the order of the changelog
            self.agents.setdefault(agent_id, AgentState(agent_id=agent_id)).tasks[task_id] = task
            homes.add(agent_id)
        for agent_id, ids in seen:
            self.agents.setdefault(agent_id, AgentState(agent_id=agent_id)).seen = ids
            homes.add(agent_id)
        if partition is not None:
            self._homes.update(dict.fromkeys(homes, partition))
            self._next_offset.pop(partition, None)  # a new owner starts at the committed offset
        return n

    def home(self, agent_id: str) -> int | None:
        """The partition the agent's usage comes from (and its records go to)."""
        return self._homes.get(agent_id)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the state of partitions this process no longer owns: their new owner loads it
        from the changelog, and a stale copy here would be counted on again if they came back."""
        if not partitions:
            return 0
        gone = [a for a, p in self._homes.items() if p in partitions]
        for agent_id in gone:
            del self._homes[agent_id]
            self.agents.pop(agent_id, None)
            self._unsaved_agents.pop(agent_id, None)
        self._unsaved_tasks = {k: v for k, v in self._unsaved_tasks.items() if v[1] not in partitions}
        self._evicted_tasks = {k: p for k, p in self._evicted_tasks.items() if p not in partitions}
        for dkey in [k for k in self.dims if k[0] in partitions]:
            del self.dims[dkey]
            self._unsaved_dims.pop(dkey, None)
            self._dirty_dims.pop(dkey, None)
        for p in partitions:
            self._dirty_infos.pop(p, None)
            self._next_offset.pop(p, None)
        return len(gone)

    # --- the hot path ----------------------------------------------------------------------

    def process(self, messages: Sequence[Message]) -> EngineOutput:
        """One batch. Whether a record has already applied a message (`upto`) is decided once per
        record and partition per batch, and the counts of one minute are summed before they reach
        the record's `Counter`. That needs a partition's offsets to grow within the batch, which a
        consumer breaks after a rebalance (it re-fetches from the committed offset while the
        stream's buffer still holds the first copies): an offset not above the batch's last one
        for its partition is a message already in this batch, skipped."""
        out = EngineOutput()
        subjects: dict[tuple[int, str, str], _Pending] = {}  # agents (p, "", id) and dims (p, dim, subject)
        last: dict[int, int] = {}  # partition → last offset of the batch
        price = self.catalog.price
        agents = self.agents
        task_end = TaskEnd
        next_offset = self._next_offset
        for msg in messages:
            p, o = msg.partition, msg.offset
            if o <= last.get(p, -1):  # `fresh` below is per record and batch: a second copy would pass it
                out.redelivered += 1
                continue
            last[p] = o
            expected = next_offset.get(p, o)
            if o > expected:  # the consumer skipped messages: `upto` would now pass over them for good
                out.gaps.append((p, expected, o))
            next_offset[p] = o + 1
            try:
                events = self._decode(msg.value)
            except BadInput as err:
                out.dead_letters.append((msg.key, dead_letter(msg, err, self.now_ms())))
                continue
            except Exception as exc:  # noqa: BLE001 - the codec raises only BadInput; a message never ends a batch
                log.error("engine.decode_failed", topic=msg.topic, partition=p, offset=o, error=repr(exc)[:300])
                err = BadInput("$", f"decoder failed: {type(exc).__name__}: {exc}"[:300])
                out.dead_letters.append((msg.key, dead_letter(msg, err, self.now_ms())))
                continue
            pos = position(p, o)
            for ev in events:
                agent_id = ev.agent_id
                pa = subjects.get((p, "", agent_id))
                if pa is None:
                    agent = agents.get(agent_id)
                    if agent is None:
                        agent = agents[agent_id] = AgentState(agent_id=agent_id)
                    self._homes[agent_id] = p  # before any decision of this batch: see home()
                    pa = subjects[(p, "", agent_id)] = _Pending(agent, agent.upto.get(p, 0), self.calendar, True)
                agent = pa.state
                fresh = o >= pa.since  # not yet applied to this agent (a replay after a crash is not)
                h = id_hash(ev.event_id)
                prior = agent.seen.get(h)
                if prior is not None and prior != pos:
                    out.duplicates += 1
                    if fresh:
                        agent.duplicates += 1
                    continue
                if ev.__class__ is task_end:  # deduped and replay-safe like a usage event; no usage to count
                    if fresh:
                        out.task_ends += 1
                        agent.remember(h, pos)
                        self._end_task(agent, ev, p)  # type: ignore[arg-type]
                    continue
                tokens = ev.input_tokens + ev.output_tokens + ev.cache_read_tokens + ev.cache_write_tokens + ev.cache_write_1h_tokens
                priced = price(ev.model, ev.provider, ev.ts_ms, ev.input_tokens, ev.output_tokens, ev.cache_read_tokens,
                               ev.cache_write_tokens, ev.cache_write_1h_tokens)
                nano = priced.nano_usd
                ts = ev.ts_ms
                if fresh:
                    if not priced.priced and ev.model not in self._unpriced:
                        self._unpriced_model(ev, tokens, out)
                    out.counted += 1
                    agent.remember(h, pos)
                    pa.add(ts, tokens, nano)
                    pa.trigger = ev.event_id
                    self._count_agent(agent, ev, tokens, nano, out, p)
                for dkey in ((p, "global", "global"), (p, "model", ev.model), (p, "user", ev.user_id), (p, "team", ev.team)):
                    if not dkey[2]:
                        continue
                    pd = subjects.get(dkey)
                    if pd is None:
                        pd = subjects[dkey] = self._pending_dim(dkey)
                    if o >= pd.since:
                        pd.add(ts, tokens, nano)
                        if pd.agents is not None:
                            pd.agents[agent_id] = None
        self._settle(subjects, last, out)
        return out

    def set_catalog(self, catalog: PriceCatalog) -> None:
        """Swap the price catalog (a price published on `budget.prices`): the next batch prices with
        it. A model it prices is forgotten as unpriced, so losing its price is reported again."""
        self.catalog = catalog
        self._unpriced = {m: None for m in self._unpriced if catalog.lookup(m) is None}

    def _unpriced_model(self, ev: UsageEvent, tokens: int, out: EngineOutput) -> None:
        """The first event of a model the catalog cannot price: it is counted in tokens and at $0,
        and said once (a `notify`). Its id is the model's, so a replay, a restart or another
        partition repeats the same decision; past UNPRICED_MEMORY models the oldest is forgotten."""
        self._unpriced[ev.model] = None
        if len(self._unpriced) > UNPRICED_MEMORY:
            del self._unpriced[next(iter(self._unpriced))]
        message = (f"Model {ev.model} ({ev.provider}) has no price in the catalog: agent {ev.agent_id} used "
                   f"{tokens} tokens priced $0; publish one with `budgetwarden prices publish FILE`")
        self._decided(Decision(
            decision_id=Emitter.id_of("unpriced_model", "model", ev.model, 0), ts_ms=self.now_ms(),
            rule="unpriced_model", severity="P3", action="notify", scope="model", subject=ev.model, observed=tokens,
            limit=0, unit="tokens", window="catalog", message=message[:1024], trigger_event_id=ev.event_id,
            policy_version=self.config.version, agent_id=ev.agent_id), out)

    def _pending_dim(self, dkey: tuple[int, str, str]) -> _Pending:
        dim = self.dims.get(dkey)
        if dim is None:
            dim = self.dims[dkey] = DimState(dim=dkey[1], subject=dkey[2], partition=dkey[0])
        return _Pending(dim, dim.upto, self.calendar, False, agents={} if dkey[1] != "model" else None)

    def _settle(self, subjects: dict[tuple[int, str, str], _Pending], last: dict[int, int], out: EngineOutput) -> None:
        """End of a batch: pending counts into counters, watermarks forward, agent rules, dirty marks."""
        em = self.emitter
        for (p, dim, name), pending in subjects.items():
            state = pending.state
            if dim:
                pending.flush()
                if pending.agents:
                    for agent_id in pending.agents:
                        state.add_agent(agent_id)
                if state.upto <= last[p]:
                    state.upto = last[p] + 1
                self._unsaved_dims[(p, dim, name)] = self._dirty_dims[(p, dim, name)] = state
                continue
            pending.flush()
            upto = state.upto
            if upto.get(p, 0) <= last[p]:
                upto[p] = last[p] + 1
            self._unsaved_agents[name] = (state, p)
            self._dirty_infos.setdefault(p, {})[name] = state
            if pending.trigger:
                for d in agent_decisions(em, state, self.limits(name), pending.max_ts, pending.trigger):
                    self._decided(d, out, expires_ms=state.counter.period(d.window)[1])  # a pause ends with its period

    def _count_agent(self, agent: AgentState, ev: UsageEvent, tokens: int, nano: int, out: EngineOutput, p: int) -> None:
        """Everything of an agent but its counter (see `_Pending`), and the task rules."""
        agent.events += 1
        limits = self.limits(agent.agent_id)
        critical = ev.criticality == "critical" or limits.criticality == "critical"
        agent.criticality = "critical" if critical else "normal"
        if ev.team:
            agent.team = ev.team
        if ev.session_id:
            agent.add_session(ev.session_id, tokens)
        if not ev.task_id:
            return
        tasks = agent.tasks
        if ev.task_id not in tasks:
            self._sweep(agent, ev.ts_ms, p)
            if len(tasks) >= TASKS_CAP:  # agent.task() evicts the least recently active
                evicted = (agent.agent_id, next(iter(tasks)))
                self._unsaved_tasks.pop(evicted, None)
                self._evicted_tasks[evicted] = p
        task = agent.task(ev.task_id, ev.ts_ms)
        self._evicted_tasks.pop((agent.agent_id, ev.task_id), None)
        self._unsaved_tasks[(agent.agent_id, ev.task_id)] = (task, p)
        task.events += 1
        task.tokens += tokens
        task.nano += nano
        if ev.ts_ms > task.last_ts:
            task.last_ts = ev.ts_ms
        if ev.task_estimated_tokens is not None:  # the same figure on every event of the task: kept, not summed
            task.task_estimate = ev.task_estimated_tokens
        if ev.task_type:
            task.task_type = ev.task_type
        if task.events == 1 and not task.task_estimate:  # a new task without an estimate of its own: the
            est = self.config.rules.estimate_overrun     # learned one, as of its start (once per task)
            if est.learn_min_tasks:
                task.learned_estimate = agent.estimate(task.task_type, est.learn_min_tasks, est.learn_quantile)
        if ev.estimated_tokens is not None:
            task.est_tokens += ev.estimated_tokens
            task.est_observed += tokens
        step = ev.step if ev.step is not None else -task.events  # an unnumbered call is a step of its own
        if step != task.step:
            task.step, task.step_tokens = step, 0
        task.step_tokens += tokens
        for d in task_decisions(self.emitter, agent, ev.task_id, task, ev, limits):
            self._decided(d, out)

    def _end_task(self, agent: AgentState, ev: TaskEnd, p: int) -> None:
        """A task_end: the task is over; a completed one (`ok`, not killed) teaches the agent's
        task sizes. Once only: a second task_end for the task (another event_id) finds it ended.
        A task not in state (no usage seen, or evicted) teaches nothing."""
        task = agent.tasks.get(ev.task_id)
        if task is None or task.ended:
            return
        task.ended = True
        if ev.task_type and not task.task_type:
            task.task_type = ev.task_type
        self._unsaved_tasks[(agent.agent_id, ev.task_id)] = (task, p)
        if ev.status == "ok" and not task.killed:
            agent.learn(task.tokens, task.task_type)

    def _sweep(self, agent: AgentState, now_ts: int, p: int) -> None:
        """Before a new task: the tasks with no event for `task_idle_ms` (event time, so a replay
        sweeps the same) are over. One not ended by a task_end (an agent that sends none, or one
        lost) counts as completed unless it was killed; every one leaves memory and the changelog.
        `tasks` runs least recently active first, so the sweep stops at the first live task."""
        idle = self.config.rules.estimate_overrun.task_idle_ms
        tasks = agent.tasks
        if not idle or not tasks:
            return
        cutoff = now_ts - idle
        while tasks:
            task_id = next(iter(tasks))
            task = tasks[task_id]
            if task.last_ts > cutoff:
                return
            del tasks[task_id]
            if not task.ended and not task.killed:
                agent.learn(task.tokens, task.task_type)
            key = (agent.agent_id, task_id)
            self._unsaved_tasks.pop(key, None)
            self._evicted_tasks[key] = p

    def _decided(self, decision: Decision, out: EngineOutput, expires_ms: int | None = None) -> None:
        agent = self.agents[decision.agent_id]
        if decision.action == "kill_task":
            agent.tasks[decision.task_id].killed = True
        elif decision.action == "pause_agent" and expires_ms:
            agent.paused_until = expires_ms
        self.recent.append(decision)
        out.decisions.append(decision)
        model = downgrade_target(self.config, decision.rule) if decision.action == "downgrade_model" else ""
        out.commands.extend(commands_for(decision, expires_ms=expires_ms, model=model, control_key=self.control_key))

    # --- to the merger and the dashboard ----------------------------------------------------

    def take_writes(self) -> list[tuple[int, bytes, bytes | None]]:
        """Every record changed since the last call, encoded: (table partition, key, value); value
        None deletes the record (a task evicted from memory, so the changelog does not grow with tasks).

        Tasks and recent-id sets are records of their own, so a flush rewrites only the tasks
        touched and the agent record stays small. Call it only once the decisions of the
        processed batches are published: a record carries the `fired` ids of its decisions.
        """
        writes: list[tuple[int, bytes, bytes | None]] = [
            (p, task_key(a, t), None) for (a, t), p in self._evicted_tasks.items()]
        for agent_id, (agent, p) in self._unsaved_agents.items():
            writes.append((p, agent_key(agent_id), encode_state(msgspec.structs.replace(agent, tasks={}, seen={}))))
            writes.append((p, SEEN_PREFIX + agent_id.encode(), encode_state(agent.seen)))
        writes += [(p, task_key(a, t), encode_state(task)) for (a, t), (task, p) in self._unsaved_tasks.items()]
        writes += [(dkey[0], dim_key(*dkey), encode_state(dim)) for dkey, dim in self._unsaved_dims.items()]
        self._unsaved_agents, self._unsaved_tasks, self._unsaved_dims, self._evicted_tasks = {}, {}, {}, {}
        return writes

    def take_rollups(self) -> list[Rollup]:
        """Snapshots of the subjects changed since the last call, one Rollup per source partition."""
        by_partition: dict[int, list[DimState]] = {}
        for (p, _, _), dim in self._dirty_dims.items():
            by_partition.setdefault(p, []).append(dim)
        parts = set(by_partition) | set(self._dirty_infos)
        now = self.now_ms()
        rollups = [
            Rollup(source=p, ts_ms=now, dims=by_partition.get(p, []), agents=[
                AgentInfo(agent_id=a.agent_id, criticality=a.criticality, team=a.team, last_ts=a.counter.last_ts)
                for a in self._dirty_infos.get(p, {}).values()])
            for p in sorted(parts)
        ]
        self._dirty_dims = {}
        self._dirty_infos = {}
        return rollups

    def status(self) -> dict[str, dict[str, Any]]:
        """Per-agent budget status (see streams.status for the shape)."""
        now = self.now_ms()
        return {a: agent_status(s, self.limits(a), now) for a, s in sorted(self.agents.items())}
