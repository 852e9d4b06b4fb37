"""Persisted per-agent and per-dimension state, as msgspec structs (msgpack on the changelog).

Recovery is exact because every persisted record carries its own watermark: `upto` maps a
source partition to the next offset not yet applied, so an event replayed after a crash is
applied to a record only if that record had not already seen it, whichever prefix of the
changelog survived. `seen` (hashed event_id → position) catches duplicates a producer sent
twice at different offsets; it is bounded, so it covers recent duplicates (retries), not
all of history.
"""
from __future__ import annotations

import hashlib
import math

import msgspec
from msgspec import Struct

from streams.windows import Counter

SEEN_CAP = 512  # recent event ids remembered per agent (producer retries; replays use offsets)
TASKS_CAP = 256  # live tasks remembered per agent (least recently active evicted)
SESSIONS_CAP = 64
FIRED_CAP = 512
HASHES_CAP = 256  # recent (step, prompt_hash) per task, for loop detection
TURNS_CAP = 256  # recent (step, turn_hash, tool_hash, simhash) per task (also cut to loop_detected.within_steps)
TOOLS_CAP = 128  # recent tool_hash per task, for tool-call cycles (also cut to repeats x max_period)
AGENTS_PER_DIM_CAP = 64
POS_SHIFT = 44  # position = partition << 44 | offset
TYPES_CAP = 16  # task types whose sizes an agent learns (least recently ended forgotten)
SIZE_GAMMA = 1.1  # task size buckets: (GAMMA^(i-1), GAMMA^i]; a bucket's value is within 4.8% of its members
SIZE_WINDOW = 500  # tasks per half of a size sketch: it describes the last 500-1,000 ended tasks
_LOG_GAMMA = math.log(SIZE_GAMMA)


def position(partition: int, offset: int) -> int:
    return (partition << POS_SHIFT) | offset


def id_hash(event_id: str) -> int:
    """Stable 63-bit hash (Python's hash() changes per process, so it cannot be persisted)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


class TaskState(Struct, array_like=True):
    first_ts: int
    last_ts: int
    tokens: int = 0
    nano: int = 0
    events: int = 0
    est_tokens: int = 0  # sum of per-call estimates
    est_observed: int = 0  # tokens of the calls that carried an estimate
    step: int = -1
    step_tokens: int = 0
    hashes: list[tuple[int, str]] = []  # recent (step, prompt_hash)
    fired: list[str] = []  # decision ids already emitted for this task
    killed: bool = False
    task_estimate: int = 0  # the whole task's estimate (`task(estimated_tokens=...)`); 0: none given
    task_type: str = ""
    learned_estimate: int = 0  # from the sizes of the agent's ended tasks (of this type), set once; 0: none
    ended: bool = False  # a task_end (or the idle sweep) ended it: its size was learned, or never will be
    turns: list[tuple[int, str, str, int]] = []  # recent (step, turn_hash + result_hash, tool_hash, simhash or -1)
    tools: list[str] = []  # recent tool_hash, oldest first (tool-call cycles)
    results: dict[str, int] = {}  # result_hash (it carries its call) of the latest tool result -> times in a row
    errors: int = 0  # consecutive events with status error / retry (retry storms)
    holds: dict[str, int] = {}  # rule -> events of the task its condition held on (ladder evidence; one per rule)


class TaskSizes(Struct, array_like=True):
    """Sizes (tokens) of ended tasks: a streaming quantile sketch in a few hundred bytes.

    A log-bucket histogram (DDSketch's idea without its protobuf): a task of `n` tokens counts in
    bucket `ceil(log_GAMMA(n))`, so any quantile is read back within (GAMMA-1)/(GAMMA+1) = 4.8%
    of a true member's size, whatever the distribution; a lognormal's tasks fill a few dozen
    buckets (msgpack: ~3-5 bytes each). Two halves of SIZE_WINDOW tasks each (`current` fills,
    then becomes `previous`): the sketch forgets tasks older than 500-1,000 ends, so an agent
    whose tasks grow is judged on what it does now, and the counts stay exact integers (no
    decay factor, no rounding) and deterministic on replay."""

    current: dict[int, int] = {}  # bucket -> tasks
    count: int = 0
    previous: dict[int, int] = {}
    previous_count: int = 0

    @property
    def total(self) -> int:
        return self.count + self.previous_count

    def add(self, tokens: int) -> None:
        if self.count >= SIZE_WINDOW:
            self.previous, self.previous_count = self.current, self.count
            self.current, self.count = {}, 0
        b = math.ceil(math.log(tokens) / _LOG_GAMMA) if tokens > 0 else -1  # -1: tasks of 0 tokens
        self.current[b] = self.current.get(b, 0) + 1
        self.count += 1

    def quantile(self, q: float) -> int:
        """The size at quantile `q` (0 when empty): the value of the bucket holding the
        ceil(q * total)-th smallest task."""
        total = self.total
        if not total:
            return 0
        merged = dict(self.previous)
        for b, n in self.current.items():
            merged[b] = merged.get(b, 0) + n
        rank = max(1, math.ceil(q * total))
        seen = 0
        for b in sorted(merged):
            seen += merged[b]
            if seen >= rank:
                return 0 if b < 0 else max(1, round(2 * SIZE_GAMMA ** b / (SIZE_GAMMA + 1)))
        return 0  # not reached


class AgentState(Struct, array_like=True):
    agent_id: str
    criticality: str = "normal"
    team: str = ""
    counter: Counter = msgspec.field(default_factory=Counter)
    tasks: dict[str, TaskState] = {}
    sessions: dict[str, int] = {}  # session_id → tokens
    fired: dict[str, int] = {}  # decision_id → ts_ms
    seen: dict[int, int] = {}  # id_hash(event_id) → position of its message
    upto: dict[int, int] = {}  # partition → next offset to apply
    events: int = 0
    duplicates: int = 0
    paused_until: int = 0
    sizes: TaskSizes = msgspec.field(default_factory=TaskSizes)  # every ended task of the agent
    type_sizes: dict[str, TaskSizes] = {}  # per task_type, least recently ended first (TYPES_CAP)
    ladders: dict[str, tuple[int, int]] = {}  # windowed rule -> (its last step, event time it fired); one per rule

    def remember(self, h: int, pos: int) -> None:
        seen = self.seen
        seen[h] = pos
        if len(seen) > SEEN_CAP:
            del seen[next(iter(seen))]

    def task(self, task_id: str, ts_ms: int) -> TaskState:
        """The task, moved to the end of `tasks`: the dict's order is least recently active first,
        so evicting at the cap is O(1) (a scan for the oldest `last_ts` cost 40 µs per new task)."""
        tasks = self.tasks
        task = tasks.pop(task_id, None)
        if task is None:
            if len(tasks) >= TASKS_CAP:
                del tasks[next(iter(tasks))]
            task = TaskState(first_ts=ts_ms, last_ts=ts_ms)
        tasks[task_id] = task
        return task

    def learn(self, tokens: int, task_type: str) -> None:
        """A task of `tokens` tokens completed: into the agent's sizes and its type's."""
        self.sizes.add(tokens)
        if task_type:
            types = self.type_sizes
            sizes = types.pop(task_type, None)
            if sizes is None:
                sizes = TaskSizes()
                if len(types) >= TYPES_CAP:
                    del types[next(iter(types))]
            types[task_type] = sizes
            sizes.add(tokens)

    def estimate(self, task_type: str, min_tasks: int, q: float) -> int:
        """The learned size of a task of `task_type`: quantile `q` of the type's ended tasks once
        there are `min_tasks` of them, else of all the agent's; 0 until the agent has that many."""
        sizes = self.type_sizes.get(task_type) if task_type else None
        if sizes is None or sizes.total < min_tasks:
            sizes = self.sizes
            if sizes.total < min_tasks:
                return 0
        return sizes.quantile(q)

    def add_session(self, session_id: str, tokens: int) -> None:
        sessions = self.sessions
        if session_id in sessions:
            sessions[session_id] += tokens
            return
        if len(sessions) >= SESSIONS_CAP:
            del sessions[next(iter(sessions))]
        sessions[session_id] = tokens

    def mark_fired(self, decision_id: str, ts_ms: int) -> None:
        fired = self.fired
        fired[decision_id] = ts_ms
        if len(fired) > FIRED_CAP:
            del fired[next(iter(fired))]


class DimState(Struct, array_like=True):
    """One cross-partition subject (user, team, model, global) as counted by ONE partition."""

    dim: str
    subject: str
    partition: int
    counter: Counter = msgspec.field(default_factory=Counter)
    agents: list[str] = []  # agents seen for this subject (for throttle / team pauses)
    upto: int = 0  # next offset of `partition` to apply

    def add_agent(self, agent_id: str) -> None:
        if agent_id not in self.agents:
            self.agents.append(agent_id)
            if len(self.agents) > AGENTS_PER_DIM_CAP:
                del self.agents[0]


class AgentInfo(Struct, array_like=True):
    """What the merger needs to know about an agent to pause it (or not)."""

    agent_id: str
    criticality: str
    team: str
    last_ts: int


class Rollup(Struct, tag="rollup", tag_field="type", array_like=True):
    """A partition's absolute per-subject totals, published every flush interval.

    Absolute snapshots (not deltas) make merging idempotent: a replayed rollup replaces a
    snapshot with the same one, and an older one (smaller `upto`) is ignored.
    """

    source: int
    ts_ms: int
    dims: list[DimState]
    agents: list[AgentInfo]


_agent_encoder = msgspec.msgpack.Encoder()
_agent_decoder = msgspec.msgpack.Decoder(AgentState)
_dim_decoder = msgspec.msgpack.Decoder(DimState)
_task_decoder = msgspec.msgpack.Decoder(TaskState)
_seen_decoder = msgspec.msgpack.Decoder(dict[int, int])
_rollup_decoder = msgspec.msgpack.Decoder(Rollup)
_info_decoder = msgspec.msgpack.Decoder(AgentInfo)


def encode_state(state: Struct | dict[int, int]) -> bytes:
    return _agent_encoder.encode(state)


def decode_agent(raw: bytes) -> AgentState:
    return _agent_decoder.decode(raw)


def decode_dim(raw: bytes) -> DimState:
    return _dim_decoder.decode(raw)


def decode_seen(raw: bytes) -> dict[int, int]:
    return _seen_decoder.decode(raw)


def decode_task(raw: bytes) -> TaskState:
    return _task_decoder.decode(raw)


def decode_rollup(raw: bytes) -> Rollup:
    return _rollup_decoder.decode(raw)


def decode_info(raw: bytes) -> AgentInfo:
    return _info_decoder.decode(raw)
