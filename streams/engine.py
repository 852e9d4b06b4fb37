"""The partition engine: a batch of raw `usage.events` messages in, everything to send out.

No Faust here. The Faust agent hands over the messages of one `take_events` batch; the
engine decodes them (bad ones become dead letters, the rest of the batch goes on), dedupes,
prices, counts every dimension, runs the rules and returns decisions, control commands,
dead letters and the encoded state records to write ONCE per batch. Per-agent and per-task
state lives here; user/team/model/global totals are counted per source partition and leave
as `Rollup` snapshots for the merger (streams/merger.py).
"""
from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.codec import BadInput, UsageDecoder
from schemas.contract import ControlCommand, Decision, DeadLetter, Limits, UsageEvent
from schemas.pricing import PriceCatalog
from streams.clock import Clock, system_ms
from streams.commands import commands_for
from streams.rules import Emitter, agent_decisions, task_decisions
from streams.rules_config import RulesConfig
from streams.status import agent_status
from streams.state import (
    AgentInfo,
    AgentState,
    DimState,
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
from streams.windows import DayCalendar

AGENT_PREFIX = b"a|"
DIM_PREFIX = b"d|"
TASK_PREFIX = b"t|"
SEEN_PREFIX = b"s|"
RECENT_DECISIONS = 100


@dataclass(slots=True)
class RawMessage:
    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int


@dataclass
class EngineOutput:
    decisions: list[Decision] = field(default_factory=list)
    commands: list[ControlCommand] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    writes: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (partition, key, value)
    counted: int = 0
    duplicates: int = 0


def agent_key(agent_id: str) -> bytes:
    return AGENT_PREFIX + agent_id.encode()


def task_key(agent_id: str, task_id: str) -> bytes:
    return b"%b%b\x00%b" % (TASK_PREFIX, agent_id.encode(), task_id.encode())


def dim_key(partition: int, dim: str, subject: str) -> bytes:
    return b"%b%d|%b|%b" % (DIM_PREFIX, partition, dim.encode(), subject.encode())


def dead_letter(msg: RawMessage, err: BadInput, now_ms: int) -> DeadLetter:
    return DeadLetter(
        ts_ms=now_ms, reason=err.reason[:1024], field=err.field, topic=msg.topic, partition=msg.partition,
        offset=msg.offset, raw=base64.b64encode(msg.value).decode(),
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
        self.control_key = control_key
        self.agents: dict[str, AgentState] = {}
        self.dims: dict[tuple[int, str, str], DimState] = {}
        self.recent: deque[Decision] = deque(maxlen=RECENT_DECISIONS)
        self._dirty_dims: dict[tuple[int, str, str], DimState] = {}
        self._dirty_infos: dict[int, dict[str, AgentInfo]] = {}
        self._dirty_seen: dict[str, tuple[AgentState, int]] = {}
        self._decode = UsageDecoder(now_ms).decode
        self.set_config(config)

    def set_config(self, config: RulesConfig) -> None:
        """Swap in new budgets/rules (a policy arrived); limits are re-derived lazily."""
        self.config = config
        self.calendar = DayCalendar(config.tz())
        self.emitter = Emitter(config, self.now_ms)
        self._limits: dict[str, Limits] = {}

    def limits(self, agent_id: str) -> Limits:
        found = self._limits.get(agent_id)
        if found is None:
            found = self._limits[agent_id] = self.config.agent_limits(agent_id)
        return found

    def restore(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Load records recovered from the changelog; every dimension is re-announced to the merger."""
        n = 0
        tasks: list[tuple[str, str, TaskState]] = []
        seen: list[tuple[str, dict[int, int]]] = []
        for key, value in items:
            if key.startswith(AGENT_PREFIX):
                state = decode_agent(value)
                self.agents[state.agent_id] = state
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
        for agent_id, ids in seen:
            self.agents.setdefault(agent_id, AgentState(agent_id=agent_id)).seen = ids
        return n

    # --- the hot path ----------------------------------------------------------------------

    def process(self, messages: Sequence[RawMessage]) -> EngineOutput:
        out = EngineOutput()
        touched: dict[str, tuple[AgentState, int, str]] = {}  # agent → (state, max ts, last event id)
        seen_agents: dict[str, tuple[AgentState, int]] = {}  # agent → (state, partition) to persist
        seen_dims: dict[tuple[int, str, str], DimState] = {}
        self._touched_tasks: dict[tuple[str, str], tuple[TaskState, int]] = {}
        price = self.catalog.price
        calendar = self.calendar
        em = self.emitter
        for msg in messages:
            try:
                events = self._decode(msg.value)
            except BadInput as err:
                out.dead_letters.append((msg.key, dead_letter(msg, err, self.now_ms())))
                continue
            p, o = msg.partition, msg.offset
            pos = position(p, o)
            gates: dict[Any, bool] = {}
            for ev in events:
                agent_id = ev.agent_id
                agent = self.agents.get(agent_id)
                if agent is None:
                    agent = self.agents[agent_id] = AgentState(agent_id=agent_id)
                gate = gates.get(agent_id)
                if gate is None:
                    gate = gates[agent_id] = o >= agent.upto.get(p, 0)
                    seen_agents[agent_id] = (agent, p)
                h = id_hash(ev.event_id)
                prior = agent.seen.get(h)
                if prior is not None and prior != pos:
                    out.duplicates += 1
                    if gate:
                        agent.duplicates += 1
                    continue
                tokens = ev.input_tokens + ev.output_tokens + ev.cache_read_tokens + ev.cache_write_tokens + ev.cache_write_1h_tokens
                nano = price(ev.model, ev.provider, ev.ts_ms, ev.input_tokens, ev.output_tokens, ev.cache_read_tokens,
                             ev.cache_write_tokens, ev.cache_write_1h_tokens).nano_usd
                ts = ev.ts_ms
                if gate:
                    out.counted += 1
                    agent.remember(h, pos)
                    self._count_agent(agent, ev, tokens, nano, out, p)
                    prev = touched.get(agent_id)
                    touched[agent_id] = (agent, ts if prev is None or ts > prev[1] else prev[1], ev.event_id)
                for dkey in ((p, "global", "global"), (p, "model", ev.model), (p, "user", ev.user_id), (p, "team", ev.team)):
                    if not dkey[2]:
                        continue
                    dim = self.dims.get(dkey)
                    if dim is None:
                        dim = self.dims[dkey] = DimState(dim=dkey[1], subject=dkey[2], partition=p)
                    dgate = gates.get(dkey)
                    if dgate is None:
                        dgate = gates[dkey] = o >= dim.upto
                        seen_dims[dkey] = dim
                    if dgate:
                        dim.counter.add(ts, tokens, nano, calendar, fine=False)
                        if dkey[1] != "model":
                            dim.add_agent(agent_id)
            for gkey in gates:
                if isinstance(gkey, str):
                    upto = self.agents[gkey].upto
                    if upto.get(p, 0) <= o:
                        upto[p] = o + 1
                else:
                    dim = self.dims[gkey]
                    if dim.upto <= o:
                        dim.upto = o + 1
        for agent, at_ms, trigger in touched.values():
            for d in agent_decisions(em, agent, self.limits(agent.agent_id), at_ms, trigger):
                self._decided(d, out, expires_ms=agent.counter.day_end)
        for agent_id, (agent, p) in seen_agents.items():
            # tasks are records of their own: a batch rewrites only the tasks it touched
            out.writes.append((p, agent_key(agent_id), encode_state(msgspec.structs.replace(agent, tasks={}, seen={}))))
            self._dirty_seen[agent_id] = (agent, p)
            self._dirty_infos.setdefault(p, {})[agent_id] = AgentInfo(
                agent_id=agent_id, criticality=agent.criticality, team=agent.team, last_ts=agent.counter.last_ts)
        for (agent_id, task_id), (task, p) in self._touched_tasks.items():
            out.writes.append((p, task_key(agent_id, task_id), encode_state(task)))
        for dkey, dim in seen_dims.items():
            out.writes.append((dkey[0], dim_key(*dkey), encode_state(dim)))
            self._dirty_dims[dkey] = dim
        return out

    def _count_agent(self, agent: AgentState, ev: UsageEvent, tokens: int, nano: int, out: EngineOutput, p: int) -> None:
        agent.events += 1
        agent.counter.add(ev.ts_ms, tokens, nano, self.calendar)
        limits = self.limits(agent.agent_id)
        critical = ev.criticality == "critical" or limits.criticality == "critical"
        agent.criticality = "critical" if critical else "normal"
        if ev.team:
            agent.team = ev.team
        if ev.session_id:
            agent.add_session(ev.session_id, tokens)
        if not ev.task_id:
            return
        task = agent.task(ev.task_id, ev.ts_ms)
        self._touched_tasks[(agent.agent_id, ev.task_id)] = (task, p)
        task.events += 1
        task.tokens += tokens
        task.nano += nano
        if ev.ts_ms > task.last_ts:
            task.last_ts = ev.ts_ms
        if ev.estimated_tokens is not None:
            task.est_tokens += ev.estimated_tokens
            task.est_observed += tokens
        step = ev.step if ev.step is not None else -task.events  # an unnumbered call is a step of its own
        if step != task.step:
            task.step, task.step_tokens = step, 0
        task.step_tokens += tokens
        for d in task_decisions(self.emitter, agent, ev.task_id, task, ev, limits):
            self._decided(d, out)

    def _decided(self, decision: Decision, out: EngineOutput, expires_ms: int | None = None) -> None:
        agent = self.agents[decision.agent_id]
        if decision.action == "kill_task":
            agent.tasks[decision.task_id].killed = True
        elif decision.action == "pause_agent" and expires_ms:
            agent.paused_until = expires_ms
        self.recent.append(decision)
        out.decisions.append(decision)
        out.commands.extend(commands_for(decision, expires_ms=expires_ms, control_key=self.control_key))

    # --- to the merger and the dashboard ----------------------------------------------------

    def take_seen(self) -> list[tuple[int, bytes, bytes]]:
        """Recent-id sets changed since the last call, as records to write.

        They are written every flush interval rather than every batch: they are the largest
        part of an agent's state, and replays after a crash are deduped by offset watermarks
        anyway; what a lost interval costs is missing a producer's duplicate sent across a crash.
        """
        writes = [(p, SEEN_PREFIX + a.encode(), encode_state(agent.seen)) for a, (agent, p) in self._dirty_seen.items()]
        self._dirty_seen = {}
        return writes

    def take_rollups(self) -> list[Rollup]:
        """Snapshots of the subjects changed since the last call, one Rollup per source partition."""
        by_partition: dict[int, list[DimState]] = {}
        for (p, _, _), dim in self._dirty_dims.items():
            by_partition.setdefault(p, []).append(dim)
        parts = set(by_partition) | set(self._dirty_infos)
        now = self.now_ms()
        rollups = [
            Rollup(source=p, ts_ms=now, dims=by_partition.get(p, []), agents=list(self._dirty_infos.get(p, {}).values()))
            for p in sorted(parts)
        ]
        self._dirty_dims = {}
        self._dirty_infos = {}
        return rollups

    def status(self) -> dict[str, dict[str, Any]]:
        """Per-agent budget status (see streams.status for the shape)."""
        now = self.now_ms()
        return {a: agent_status(s, self.limits(a), now) for a, s in sorted(self.agents.items())}
