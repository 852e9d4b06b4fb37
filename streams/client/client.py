"""`BudgetClient`: publish usage without slowing the agent, obey control commands.

Recording (`record*`) builds the event, fills `event_id` / `ts_ms` / task / step and puts it
on the publisher's bounded queue; encoding and sending happen in the background
(`publisher.py`). Control commands arrive through `ControlSubscriber` and are applied by
`handle_command`, which tests and the end-to-end harness may also call directly.

Kill: a `kill_task` for a running `task()` block cancels the asyncio task running the
block; the `CancelledError` raised at its next await is turned into `TaskKilled` when the
block exits. A `kill_task` without `task_id` kills every running task of the agent, and a
killed task id is remembered so entering it again raises `TaskKilled` at once. Code that
does not await can poll `check()`.

Pause / throttle / downgrade: see `state.py`. `task()` entry waits while paused
(`pause_mode="wait"`, until `resume_agent` or the pause's `expires_ms`) or raises
`AgentPaused` (`pause_mode="raise"`), then applies the throttle delay; `before_call()`
applies the throttle delay before any single model call. `record*` never waits.

Admission (`admission=True`, opt-in): `before_call()` also reserves the call's estimate from
the client's allowance (`allowance.Wallet`, granted by the worker's granting service,
`streams.admission`) and the call's recorded usage settles it. Where a USD budget applies,
it reserves the estimate priced for `before_call(model=...)` too (`Wallet.price`: the model
a downgrade in force makes the agent call, `model_for`; no model: the last one recorded;
unknown: the catalog's dearest prices), and settles on the recorded call priced as the
processor prices it. Asks for more go out in the
background when the allowance runs low; the call path never waits on the network, except by
this rule: when the allowance cannot cover the estimate and the service has not said the
budget is exhausted, the call waits for the pending answer up to `admission_wait_s`; if none
comes in that time, or the answer granted nothing without being final (a service in its
quiet time), it proceeds unadmitted (`admission_stats["unadmitted"]`), and later calls
proceed without waiting until the service grants again. With a final answer it raises
`BudgetExceeded` naming the budget.

Control loss (`on_control_loss`): when the state and control feed has not been heard for
`control_loss_after_s`, `"pause"` makes the agent paused until it is heard again,
`"continue"` (default) only logs it. `health()` says which state the client is in.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import os
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import msgspec
import structlog

from schemas.clock import Clock, system_ms
from schemas.codec import decode_admission_grant, decode_agent_state, encode
from schemas.contract import (FLEET_KEY, MAX_NAME_LEN, MAX_NANO_USD, MAX_TOKENS, AdmissionGrant, AdmissionRequest,
                              ControlCommand, TaskEnd, UsageEvent, team_key)
from schemas.errors import BadInput, InputError
from schemas.topics import Topics
from schemas.normalize import CanonicalUsage, normalize
from schemas.pricing import PriceCatalog
from streams.client.control import (DEFAULT_GRACE_MS, DEFAULT_MAX_AGE_MS, DEFAULT_MAX_SKEW_MS, DEFAULT_TTL_MS,
                                    ControlGate, ControlSubscriber)
from streams.client.allowance import DEFAULT_ESTIMATE, Wallet
from streams.client.errors import AgentPaused, BudgetExceeded, TaskKilled
from streams.client.fingerprint import fingerprint
from streams.client.optimizer import TokenEstimator
from streams.client.publisher import KafkaSender, Publisher, Sender
from streams.client.spill import DEFAULT_MAX_BYTES, SpillQueue
from streams.client.state import AgentState, FeedHealth
from streams.kafka import KafkaSecurity, read_compacted
from streams.settings import Environment

log = structlog.get_logger(__name__)

_KILLED_MEMORY = 1_000
_RESERVED_MEMORY = 256  # open reservations per task scope (or outside tasks)

Callback = Callable[[ControlCommand], Awaitable[None] | None]
_current_scope: contextvars.ContextVar[TaskScope | None] = contextvars.ContextVar("budgetwarden_task", default=None)


def default_spill_dir(base: Path, agent_id: str) -> Path:
    """`<base>/<agent>` (base: `$BUDGETWARDEN_SPILL_DIR`, else `./var/spill`); use one directory per process."""
    return base / "".join(c if c.isalnum() or c in "-_." else "_" for c in agent_id)


class Parent(NamedTuple):
    """The agent, and its task, that a sub-agent works for: stamped on each of the sub-agent's
    usage events (`parent_agent_id`, `parent_task_id`) so queries can add its cost to the
    parent's inclusive cost (`sinks.subagents`). `BudgetClient.child()` fills it; a sub-agent
    in another process gets the two ids from its caller and passes `parent=(agent_id, task_id)`."""

    agent_id: str
    task_id: str = ""

    def checked(self) -> Parent:
        """Itself, or InputError naming the field the processor would dead-letter the events for."""
        for field, value in (("parent_agent_id", self.agent_id), ("parent_task_id", self.task_id)):
            if not isinstance(value, str) or len(value) > MAX_NAME_LEN:
                raise InputError(field, f"expected a str of at most {MAX_NAME_LEN} characters")
        if self.task_id and not self.agent_id:
            raise InputError("parent_agent_id", "a parent task needs its agent")
        return self


class TaskScope:
    """One unit of work (`async with bw.task(...)`): attributes events, numbers steps, can be killed.
    On exit it queues a `task_end` (status `killed` after TaskKilled, `error` when the block
    raised, else `ok`), from which the processor learns the agent's task sizes."""

    def __init__(self, client: BudgetClient, task_id: str, estimated_tokens: int | None,
                 task_type: str | None = None) -> None:
        self.client = client
        self.task_id = task_id
        self.estimated_tokens = estimated_tokens  # the whole task's estimate
        self.task_type = task_type or ""  # stamped on its events and its task_end
        self.call_estimate: int | None = None  # the next call's, from `before_call(estimated_tokens=...)`
        self.reserved: deque[tuple[int, int]] = deque()  # admission: (tokens, nano-USD) reserved, settled by records
        self.killed: ControlCommand | None = None
        self._steps = itertools.count()
        self._asyncio_task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._token: contextvars.Token[TaskScope | None] | None = None

    def next_step(self) -> int:
        return next(self._steps)

    def check(self) -> None:
        if self.killed is not None:
            raise TaskKilled(self.task_id, self.killed.reason, self.killed.decision_id)

    def kill(self, cmd: ControlCommand) -> None:
        """Mark killed and cancel the asyncio task running the block (if it is one)."""
        if self.killed is not None:
            return
        self.killed = cmd
        task = self._asyncio_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            self._cancel_requested = True
            task.cancel(f"budgetwarden kill_task {cmd.decision_id}")

    async def __aenter__(self) -> TaskScope:
        await self.client._admit(self.task_id)
        self._asyncio_task = asyncio.current_task()
        self._token = _current_scope.set(self)
        self.client._scopes.add(self)
        return self

    def end(self, status: Literal["ok", "error", "killed"]) -> TaskEnd | None:
        """Queue this task's `task_end` (never blocks; never raises into the agent's block)."""
        client = self.client
        try:
            event = TaskEnd(event_id=client.new_event_id(), ts_ms=client._now_ms(), agent_id=client.agent_id,
                            task_id=self.task_id, task_type=self.task_type, status=status)
            client.publisher.submit(event)  # type: ignore[arg-type]  # the publisher ships any usage.events message
        except Exception as err:  # noqa: BLE001 - the processor's idle sweep ends the task anyway
            log.warning("client.task_end.failed", task_id=self.task_id, error=repr(err))
            return None
        return event

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self.client._scopes.discard(self)
        if self._token is not None:
            _current_scope.reset(self._token)
        self.end("killed" if self.killed is not None else "error" if exc is not None else "ok")
        if self.killed is None:
            return False
        if self._cancel_requested:
            task = self._asyncio_task
            assert task is not None
            if not isinstance(exc, asyncio.CancelledError):
                try:  # our cancel has not been delivered yet (no await since): absorb it here
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    pass
            if task.uncancel() > 0 and isinstance(exc, asyncio.CancelledError):
                return False  # someone else cancelled this task too: let that through
        raise TaskKilled(self.task_id, self.killed.reason, self.killed.decision_id) from None


class BudgetClient:
    """Async client; use as `async with BudgetClient(...) as bw:`. See the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        agent_id: str,
        *,
        user_id: str = "",
        team: str = "",
        session_id: str = "",
        criticality: Literal["critical", "normal"] = "normal",
        spill_dir: str | Path | None = None,
        spill_max_bytes: int = DEFAULT_MAX_BYTES,
        queue_size: int = 10_000,
        pause_mode: Literal["wait", "raise"] = "wait",
        control_key: str | bytes | None = None,
        partitions: int | None = None,
        follow_control: bool = True,
        control_grace_ms: int = DEFAULT_GRACE_MS,
        control_max_age_ms: int = DEFAULT_MAX_AGE_MS,
        control_max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        control_default_ttl_ms: int = DEFAULT_TTL_MS,
        flush_timeout_s: float = 5.0,
        on_kill: Callback | None = None,
        on_pause: Callback | None = None,
        on_resume: Callback | None = None,
        on_downgrade: Callback | None = None,
        on_throttle: Callback | None = None,
        on_command: Callback | None = None,
        sender: Sender | None = None,
        catalog: PriceCatalog | None = None,
        now_ms: Clock = system_ms,
        kafka: KafkaSecurity | None = None,
        topics: Topics = Topics(),
        state_timeout_s: float = 10.0,
        admission: bool = False,
        admission_default_estimate: int = DEFAULT_ESTIMATE,
        admission_wait_s: float = 1.0,
        admission_sender: Sender | None = None,
        on_control_loss: Literal["pause", "continue"] = "continue",
        control_loss_after_s: float = 30.0,
        parent: Parent | tuple[str, str] | None = None,
    ) -> None:
        """Unset `control_key`, `spill_dir` and `kafka` come from the environment (`streams.settings`).
        `control_*_ms`: the `ControlGate` limits (defaults: grace 60 s, max age 15 min, max clock
        skew 5 min, default expiry 24 h of a pause/throttle/downgrade sent without one).
        `admission`: reserve each call's estimate from an allowance (module docstring); a call
        without `before_call(estimated_tokens=...)` reserves the learned per-call estimate
        (`Wallet.estimate`), else `admission_default_estimate`. `admission_sender` replaces
        the Kafka producer of `admission.requests` (benchmarks). `parent`: the agent and task this
        agent works for as a sub-agent (`Parent`; `child()` sets it)."""
        if pause_mode not in ("wait", "raise"):
            raise ValueError(f"pause_mode must be 'wait' or 'raise', got {pause_mode!r}")
        self.feed = FeedHealth(now_ms, int(control_loss_after_s * 1000), on_control_loss)
        self.bootstrap = bootstrap
        self.agent_id = agent_id
        self.user_id = user_id
        self.team = team
        self.session_id = session_id
        self.parent = Parent(*parent).checked() if parent else Parent("")
        self.criticality = criticality
        self.pause_mode = pause_mode
        self.flush_timeout_s = flush_timeout_s
        self.estimator = TokenEstimator()
        self._now_ms = now_ms
        env = Environment.read()
        options = (kafka or env.kafka).client_options()
        key = control_key if control_key is not None else env.control_key
        self._control_key = key.encode() if isinstance(key, str) else key
        self._callbacks = {"kill_task": on_kill, "pause_agent": on_pause, "resume_agent": on_resume,
                           "downgrade_model": on_downgrade, "throttle": on_throttle}
        self._on_command = on_command
        self.state = AgentState(now_ms, catalog)
        self.spill = SpillQueue(spill_dir or default_spill_dir(env.spill_dir, agent_id), max_bytes=spill_max_bytes)
        self.publisher = Publisher(sender or KafkaSender(bootstrap, topics.usage, **options), self.spill,
                                   queue_size=queue_size)
        self._kafka = kafka or env.kafka
        self._topics = topics
        self._state_timeout_s = state_timeout_s
        self._gate = ControlGate(agent_id, self._control_key, now_ms, control_grace_ms,
                                 max_age_ms=control_max_age_ms, max_skew_ms=control_max_skew_ms,
                                 default_ttl_ms=control_default_ttl_ms)
        self.wallet = (Wallet(now_ms, default_estimate=admission_default_estimate, catalog=catalog)
                       if admission else None)
        self.admission_wait_s = admission_wait_s
        self.reserved: deque[tuple[int, int]] = deque()  # admission: outside tasks, as `TaskScope.reserved`
        self.admission_stats = {"admitted": 0, "refused": 0, "unadmitted": 0, "asks": 0, "grants": 0}
        self._answered = asyncio.Event()
        self._no_wait = False  # the service is silent, or answered "nothing now" (quiet): proceed at once
        self._last_ask = (0, False)  # the newest request: its ts_ms, and whether it asked for tokens
        self._requests: Sender | None = None
        if admission:
            self._requests = admission_sender or KafkaSender(bootstrap, topics.admission_requests, **options)
        self._subscriber: ControlSubscriber | None = None
        if follow_control:
            also = {topics.admission_grants: self._grant_raw} if admission else {}
            self._subscriber = ControlSubscriber(bootstrap, self._gate, self.handle_command, partitions,
                                                 topics.control, also, self.feed.alive,
                                                 probe_s=min(5.0, control_loss_after_s / 3), **options)
        self._scopes: set[TaskScope] = set()
        self._killed_ids: OrderedDict[str, ControlCommand] = OrderedDict()
        self._resumed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._id_prefix = f"{now_ms():x}{os.urandom(6).hex()}-"
        self.holder = self._id_prefix[:-1] if admission else ""  # this instance's lease, stamped on its usage
        self._lost_logged = False
        self._seq = itertools.count()
        self.call_estimate: int | None = None  # the next call outside a task, from `before_call(estimated_tokens=...)`

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> BudgetClient:
        """Start publishing; with `follow_control`, follow `agent.control` and, before returning,
        apply what `agent.state` says this agent must still obey (a pause, a kill, ...)."""
        await self.publisher.start()
        if self._subscriber is not None:
            await self._subscriber.start()  # first: what is sent while the state is read is not missed
            await self._restore_state()
        if self._requests is not None:
            try:
                await asyncio.wait_for(self._requests.start(), self._state_timeout_s)
            except Exception as err:  # noqa: BLE001 - offline: calls proceed unadmitted (module docstring)
                log.warning("client.admission.unreachable", agent_id=self.agent_id, error=repr(err))
            self._ask_if_due()  # the first allowance, before the first call needs it
        log.info("client.started", agent_id=self.agent_id, signed_control=self._control_key is not None,
                 control_partition=self._subscriber.partition if self._subscriber else None)
        return self

    def state_keys(self) -> set[str]:
        """The `agent.state` keys this agent obeys: its own, the fleet's and its team's."""
        return {self.agent_id, FLEET_KEY} | ({team_key(self.team)} if self.team else set())

    async def _restore_state(self) -> None:
        keys = self.state_keys()
        found: dict[str, bytes] = {}

        def keep(key: bytes | None, value: bytes | None) -> None:
            name = key.decode("utf-8", "replace") if key is not None else ""
            if name in keys:
                if value is None:
                    found.pop(name, None)
                else:
                    found[name] = value

        try:
            await asyncio.wait_for(read_compacted(self.bootstrap, self._topics.state, keep, security=self._kafka),
                                   self._state_timeout_s)
        except Exception as err:  # noqa: BLE001 - offline: start anyway, live commands still apply
            log.warning("client.state.unreachable", agent_id=self.agent_id, error=repr(err))
            return
        self.feed.alive()
        for key, raw in sorted(found.items()):
            for cmd in self.restorable(key, raw):
                self.handle_command(cmd)

    def restorable(self, key: str, raw: bytes) -> list[ControlCommand]:
        """The commands of one `agent.state` record this agent must apply: genuine ones (the
        gate checks signatures and expiry), and from the fleet's or team's key only pauses, only
        for a noncritical agent."""
        try:
            record = decode_agent_state(raw)
        except BadInput as err:
            log.warning("client.state.refused", key=key, field=err.field, reason=err.reason)
            return []
        out = []
        for cmd in record.commands:
            if key != self.agent_id and (cmd.command != "pause_agent" or self.criticality == "critical"):
                continue
            refusal = self._gate.refusal(cmd, state_key=key)
            if refusal is not None:
                log.warning("client.state.refused", key=key, why=refusal, command=cmd.command,
                            decision_id=cmd.decision_id)
                continue
            out.append(self._gate.effective(cmd))  # with the default expiry when it has none
        return out

    async def close(self) -> None:
        if self._requests is not None and self.wallet is not None:
            returned = self.wallet.release()
            if any(returned):  # give the rest back now rather than when the lease lapses
                await self._send(self._request((0, 0), returned), 2.0)
            await self._requests.stop()
        if self._subscriber is not None:
            await self._subscriber.stop()
        await self.publisher.close(self.flush_timeout_s)

    async def __aenter__(self) -> BudgetClient:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything recorded so far was acknowledged by the broker."""
        return await self.publisher.flush(timeout_s)

    @property
    def control_partition(self) -> int | None:
        return self._subscriber.partition if self._subscriber else None

    # tasks ----------------------------------------------------------------------------------
    def task(self, task_id: str, estimated_tokens: int | None = None, task_type: str | None = None) -> TaskScope:
        """`async with bw.task(id, estimated_tokens=..., task_type=...)`: without an estimate, the
        processor judges the task against the sizes it learned of the agent's `task_type` tasks."""
        return TaskScope(self, task_id, estimated_tokens, task_type)

    def child(self, agent_id: str, **options: Any) -> BudgetClient:
        """A client for a sub-agent working for this agent (and its current task, if any):
        `async with bw.child("researcher") as sub:`. Its events carry this agent's id and task
        id as their parent; it follows its own control commands. It inherits the broker, user,
        team, session, criticality, pause mode, control key, clock and topics; `options` (any
        `BudgetClient` argument) override them."""
        scope = self.current_task()
        inherited: dict[str, Any] = dict(
            user_id=self.user_id, team=self.team, session_id=self.session_id, criticality=self.criticality,
            pause_mode=self.pause_mode, control_key=self._control_key, now_ms=self._now_ms, kafka=self._kafka,
            topics=self._topics, flush_timeout_s=self.flush_timeout_s, state_timeout_s=self._state_timeout_s,
            parent=Parent(self.agent_id, scope.task_id if scope is not None else ""))
        return BudgetClient(self.bootstrap, agent_id, **{**inherited, **options})

    def current_task(self) -> TaskScope | None:
        scope = _current_scope.get()
        return scope if scope is not None and scope.client is self else None

    def check(self) -> None:
        """Raise TaskKilled if the current task was killed (for code that polls)."""
        scope = self.current_task()
        if scope is not None:
            scope.check()

    def killed(self, task_id: str) -> ControlCommand | None:
        """The `kill_task` that killed `task_id`, if one did (for gateways that gate calls, not blocks)."""
        return self._killed_ids.get(task_id)

    async def _admit(self, task_id: str) -> None:
        """Gate a new task: killed id -> TaskKilled; paused -> wait or AgentPaused; then throttle."""
        killed = self._killed_ids.get(task_id)
        if killed is not None:
            raise TaskKilled(task_id, killed.reason, killed.decision_id)
        await self._obey()

    async def _obey(self) -> None:
        """Paused (or blind with on_control_loss="pause") -> wait for the resume (or AgentPaused
        with pause_mode="raise"); then the throttle's delay."""
        while (pause := self.state.paused()) is not None or self._blind():
            if self.pause_mode == "raise":
                if pause is None:
                    raise AgentPaused(self.agent_id, f"control feed lost since {self.feed.lost_since()} (on_control_loss=pause)")
                raise AgentPaused(self.agent_id, pause.reason, pause.expires_ms)
            self._resumed.clear()
            timeout = 1.0 if pause is None else None if pause.expires_ms is None else max(
                0.0, (pause.expires_ms - self._now_ms()) / 1000)
            try:
                await asyncio.wait_for(self._resumed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        delay = self.state.throttle_ms()
        if delay:
            await asyncio.sleep(delay / 1000)

    async def before_call(self, estimated_tokens: int | None = None, model: str | None = None) -> None:
        """Call before each model call, in a task or not. Raises TaskKilled in a killed task;
        while the agent is paused waits for the resume (or raises AgentPaused with
        pause_mode="raise"); sleeps for the throttle delay in force; and remembers
        `estimated_tokens` as the next recorded call's own estimate. With admission it reserves
        the estimate, and under a USD budget its price for `model` (module docstring), or
        raises BudgetExceeded. Local: no network hop."""
        scope = self.current_task()
        if scope is not None:
            scope.check()
        if self.state.pause is not None or self.state.throttle is not None or self._blind():
            await self._obey()  # nothing in force (the usual case) needs no coroutine
        owner = scope or self
        if estimated_tokens is not None:
            owner.call_estimate = estimated_tokens
        if self.wallet is not None:
            estimate = estimated_tokens if estimated_tokens is not None else self.wallet.estimate()
            if not self._reserved(owner, estimate, model):
                await self.admit_call(owner, estimate, model)

    # admission ------------------------------------------------------------------------------
    async def admit_call(self, owner: TaskScope | BudgetClient, estimated_tokens: int | None = None,
                         model: str | None = None) -> None:
        """Reserve one call's estimate (the module docstring's rule); `owner`'s next record settles it."""
        wallet = self.wallet
        assert wallet is not None
        estimate = estimated_tokens if estimated_tokens is not None else wallet.estimate()
        deadline: float | None = None
        while not self._reserved(owner, estimate, model):
            refusal = wallet.refusal
            if refusal is not None:
                self.admission_stats["refused"] += 1
                needed = self._nano(estimate, model) if refusal.unit == "nano_usd" else estimate
                raise BudgetExceeded(refusal.scope, refusal.subject, refusal.remaining, needed, refusal.period,
                                     refusal.unit)
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + (0.0 if self._no_wait else self.admission_wait_s)
            left = deadline - loop.time()
            if left <= 0:
                if not self._no_wait:
                    log.warning("client.admission.silent", agent_id=self.agent_id, waited_s=self.admission_wait_s)
                self._no_wait = True
                self.admission_stats["unadmitted"] += 1
                return
            self._answered.clear()
            try:
                await asyncio.wait_for(self._answered.wait(), left)
            except asyncio.TimeoutError:
                pass

    def _nano(self, estimate: int, model: str | None) -> int:
        """The nano-USD a call reserves: 0 while no USD budget applies, else its price."""
        wallet = self.wallet
        assert wallet is not None
        if not wallet.usd:
            return 0
        return wallet.price(self.state.model_for(model) if model else None, estimate)

    def _reserved(self, owner: TaskScope | BudgetClient, estimate: int, model: str | None = None) -> bool:
        """Reserve `estimate` (and its price) from the allowance held, then ask ahead when due;
        False: not covered."""
        assert self.wallet is not None
        nano = self._nano(estimate, model)
        ok = self.wallet.reserve(estimate, nano)
        self._ask_if_due()
        if not ok:
            return False
        if len(owner.reserved) >= _RESERVED_MEMORY:  # calls never recorded: their reservations stay spent
            owner.reserved.popleft()
        owner.reserved.append((estimate, nano))
        self.admission_stats["admitted"] += 1
        return True

    def _request(self, asked: tuple[int, int], returned: tuple[int, int] = (0, 0)) -> AdmissionRequest:
        """A request for `asked` and giving back `returned`, each (tokens, nano-USD)."""
        assert self.wallet is not None
        request = AdmissionRequest(holder=self.holder, agent_id=self.agent_id, ts_ms=self.wallet.asking(),
                                   user_id=self.user_id, team=self.team, asked=min(asked[0], MAX_TOKENS),
                                   returned=min(returned[0], MAX_TOKENS), asked_nano=min(asked[1], MAX_NANO_USD),
                                   returned_nano=min(returned[1], MAX_NANO_USD))
        self._last_ask = (request.ts_ms, any(asked))
        return request

    def _ask_if_due(self) -> None:
        """Ask for more in the background when the wallet says so (never awaited on the call path)."""
        assert self.wallet is not None
        asked = self.wallet.want()
        if asked is None:
            return
        self.admission_stats["asks"] += 1
        task = asyncio.ensure_future(self._send(self._request(asked), 5.0))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send(self, request: AdmissionRequest, timeout_s: float) -> None:
        assert self._requests is not None
        try:
            await asyncio.wait_for(self._requests.send(request.agent_id.encode(), encode(request)), timeout_s)
        except Exception as err:  # noqa: BLE001 - the wallet asks again after its retry interval
            log.debug("client.admission.ask_failed", error=repr(err))

    def _grant_raw(self, raw: bytes | None) -> None:
        """One record of the grants partition (other agents' too): book this instance's."""
        try:
            grant = decode_admission_grant(raw)
        except BadInput as err:
            log.warning("client.admission.bad_grant", field=err.field, reason=err.reason)
            return
        if grant.holder == self.holder:
            self.on_grant(grant)

    def on_grant(self, grant: AdmissionGrant) -> None:
        """Book an answer of the granting service and wake calls waiting for one."""
        if self.wallet is None:
            return
        self.wallet.granted(grant, grant.request_ts_ms)
        self.admission_stats["grants"] += 1
        if grant.granted or grant.granted_nano or grant.final:
            self._no_wait = False
        elif self._last_ask == (grant.request_ts_ms, True):  # it asked for tokens and got none: a quiet service
            self._no_wait = True
        self._answered.set()

    def _settle(self, owner: TaskScope | BudgetClient, event: UsageEvent) -> None:
        if self.wallet is not None:
            self.wallet.settle(owner.reserved.popleft() if owner.reserved else (0, 0), event)

    # control loss ---------------------------------------------------------------------------
    def _blind(self) -> bool:
        """Is the feed lost? Logs the change either way; True only with on_control_loss="pause"."""
        if self._subscriber is None:
            return False  # follow_control=False: nothing to lose
        lost = self.feed.lost_since() is not None
        if lost != self._lost_logged:
            self._lost_logged = lost
            if lost:
                log.warning("client.control.lost", agent_id=self.agent_id, since_ms=self.feed.last_ok_ms,
                            on_control_loss=self.feed.on_loss)
            else:
                log.info("client.control.heard", agent_id=self.agent_id)
        return lost and self.feed.on_loss == "pause"

    def health(self) -> dict[str, Any]:
        """The feed's state (`FeedHealth.report`: ok or lost since when, paused by the loss) and,
        with admission, the allowance held and whether the service refused."""
        self._blind()
        out: dict[str, Any] = dict(self.feed.report()) if self._subscriber is not None else {"feed": "not followed"}
        if self.wallet is not None:
            refusal = self.wallet.refusal
            out["admission"] = {**self.admission_stats, "balance": self.wallet.balance,
                                "balance_nano_usd": self.wallet.balance_nano if self.wallet.usd else None,
                                "priced_as_dearest": sorted(self.wallet.priced_as_dearest),
                                "refused_by": f"{refusal.scope}:{refusal.subject}:{refusal.period}" if refusal else None,
                                "proceeding_unadmitted": self._no_wait}
        return out

    def model_for(self, model: str) -> str:
        """The model to call instead of `model` while a downgrade is in force (else `model`)."""
        return self.state.model_for(model)

    # control --------------------------------------------------------------------------------
    def handle_command(self, cmd: ControlCommand) -> None:
        """Apply an admitted command (already gated) and run the agent's callbacks."""
        if cmd.command == "kill_task":
            targets = [s for s in self._scopes if not cmd.task_id or s.task_id == cmd.task_id]
            if cmd.task_id:
                self._killed_ids[cmd.task_id] = cmd
                if len(self._killed_ids) > _KILLED_MEMORY:
                    self._killed_ids.popitem(last=False)
            for scope in targets:
                scope.kill(cmd)
        else:
            self.state.apply(cmd)
            if cmd.command == "resume_agent" or self.state.paused() is None:
                self._resumed.set()
        for callback in (self._callbacks.get(cmd.command), self._on_command):
            if callback is not None:
                self._run_callback(callback, cmd)

    def _run_callback(self, callback: Callback, cmd: ControlCommand) -> None:
        try:
            result = callback(cmd)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._background.add(task)
                task.add_done_callback(self._callback_done)
        except Exception:  # noqa: BLE001 - the agent's cleanup must not break control handling
            log.exception("client.callback.failed", command=cmd.command)

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)  # type: ignore[arg-type]
        if not task.cancelled() and task.exception() is not None:
            log.error("client.callback.failed", error=repr(task.exception()))

    # recording ------------------------------------------------------------------------------
    def new_event_id(self) -> str:
        """Unique per client instance: start time + random prefix, then a counter (cheaper than uuid4)."""
        return f"{self._id_prefix}{next(self._seq):x}"

    def submit(self, event: UsageEvent) -> None:
        """Queue an event as-is (never blocks); `record()` fills ids and attribution first."""
        self.publisher.submit(event)

    def usage_event(
        self,
        usage: CanonicalUsage,
        model: str,
        provider: str,
        scope: TaskScope | None,
        *,
        prompt_hash: str = "",
        tool: str = "",
        status: Literal["ok", "error", "retry"] = "ok",
        step: int | None = None,
        estimated_tokens: int | None = None,
        tags: dict[str, str] | None = None,
        event_id: str | None = None,
        ts_ms: int | None = None,
        prompt_chars: int | None = None,
        messages: Any = None,
        tool_calls: Any = None,
        turn_hash: str = "",
        tool_hash: str = "",
        result_hash: str = "",
        simhash: str | int = "",
    ) -> UsageEvent:
        """Build one event with this client's attribution; `scope` supplies task_id, step and estimate.

        `messages` (the conversation sent) and `tool_calls` (those the model asked for) are reduced
        to fingerprints of the newest turn (`streams.client.fingerprint`); only the hashes are sent.
        Fingerprints passed explicitly win over derived ones."""
        if messages is not None or tool_calls is not None:
            try:
                fp = fingerprint(messages, tool_calls)
            except Exception:  # noqa: BLE001 - a message shape it cannot read never fails the agent's call
                log.warning("fingerprint_failed", exc_info=True)
            else:
                turn_hash, tool_hash = turn_hash or fp.turn_hash, tool_hash or fp.tool_hash
                result_hash, simhash = result_hash or fp.result_hash, simhash or fp.simhash
        if prompt_chars:
            self.estimator.observe(prompt_chars, usage.input_tokens + usage.cache_read_tokens
                                   + usage.cache_write_tokens + usage.cache_write_1h_tokens)
        owner = scope if scope is not None else self
        if estimated_tokens is None:
            estimated_tokens, owner.call_estimate = owner.call_estimate, None
        task_id, task_estimate, task_type = "", None, ""
        if scope is not None:
            task_id, task_estimate, task_type = scope.task_id, scope.estimated_tokens, scope.task_type
            if step is None:
                step = scope.next_step()
        event = UsageEvent(
            event_id=event_id or self.new_event_id(),
            ts_ms=ts_ms or self._now_ms(),
            agent_id=self.agent_id,
            model=model,
            provider=provider,  # type: ignore[arg-type]
            task_id=task_id,
            session_id=self.session_id,
            user_id=self.user_id,
            team=self.team,
            step=step,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            estimated_tokens=estimated_tokens,
            task_estimated_tokens=task_estimate,
            criticality=self.criticality,
            status=status,
            prompt_hash=prompt_hash,
            tool=tool,
            tags=tags or {},
            task_type=task_type,
            turn_hash=turn_hash,
            tool_hash=tool_hash,
            result_hash=result_hash,
            simhash=str(simhash & 0xFFFF_FFFF_FFFF_FFFF) if isinstance(simhash, int) else simhash,
            holder=self.holder,
            parent_agent_id=self.parent.agent_id,
            parent_task_id=self.parent.task_id,
        )
        self._settle(owner, event)
        return event

    def record_nowait(self, provider: str, usage: Any, model: str, scope: TaskScope | None = None,
                      **fields: Any) -> UsageEvent:
        """Normalize a provider usage object and queue the event (sync; the async `record_*` call this)."""
        canonical = normalize(provider, usage)
        wire_provider = "openai" if provider.startswith("openai") else "google" if provider == "gemini" else provider
        event = self.usage_event(canonical, model, wire_provider, scope if scope is not None else self.current_task(),
                                 **fields)
        self.publisher.submit(event)
        return event

    def complete_event(self, event: UsageEvent, scope: TaskScope | None = None) -> UsageEvent:
        """Fill a missing event_id / ts_ms and, inside a task, task_id / step / estimate."""
        changes: dict[str, Any] = {}
        if not event.event_id:
            changes["event_id"] = self.new_event_id()
        if not event.ts_ms:
            changes["ts_ms"] = self._now_ms()
        if scope is not None and not event.task_id:
            changes["task_id"] = scope.task_id
            if event.step is None:
                changes["step"] = scope.next_step()
            if event.task_estimated_tokens is None and scope.estimated_tokens is not None:
                changes["task_estimated_tokens"] = scope.estimated_tokens
            if not event.task_type and scope.task_type:
                changes["task_type"] = scope.task_type
        if self.parent.agent_id and not event.parent_agent_id:
            changes["parent_agent_id"], changes["parent_task_id"] = self.parent
        if self.holder and not event.holder:
            changes["holder"] = self.holder
            self._settle(scope if scope is not None else self, event)
        return msgspec.structs.replace(event, **changes) if changes else event

    async def record(self, event: UsageEvent) -> UsageEvent:
        """Queue a ready event (e.g. `UsageEvent(event_id="", ts_ms=0, ...)`), completed by `complete_event`."""
        event = self.complete_event(event, self.current_task())
        self.publisher.submit(event)
        return event

    async def record_openai(self, usage: Any, model: str, **fields: Any) -> UsageEvent:
        """OpenAI Chat Completions or Responses `usage` (dict or SDK object); `provider="azure"` for Azure.

        Every `record_*` takes the `usage_event` fields, among them `messages=` and `tool_calls=`
        (fingerprinted on the agent, only hashes sent) and `prompt_hash=`."""
        provider = fields.pop("provider", "openai")
        return self.record_nowait(provider, usage, model, **fields)

    async def record_anthropic(self, usage: Any, model: str, **fields: Any) -> UsageEvent:
        """Anthropic Messages `usage`; `provider="bedrock"` for Bedrock (InvokeModel or Converse shapes)."""
        provider = fields.pop("provider", "anthropic")
        return self.record_nowait(provider, usage, model, **fields)

    async def record_gemini(self, usage: Any, model: str, **fields: Any) -> UsageEvent:
        """Gemini `usageMetadata` (REST camelCase or google-genai snake_case)."""
        return self.record_nowait("google", usage, model, **fields)

    @property
    def stats(self) -> dict[str, int]:
        p = self.publisher
        return {"queued": p.queued, "sent": p.sent, "spilled_on_full": p.spilled_on_full,
                "spilled_on_error": p.spilled_on_error, "spill_bytes": self.spill.pending(),
                "spill_dropped": self.spill.dropped}
