"""`SyncBudgetClient`: the same client for agents that are not asyncio, on a background loop thread.

Recording is as cheap as in the async client (the event is queued from the caller's
thread). A thread cannot be interrupted like an asyncio task, so a `kill_task` is raised as
`TaskKilled` from the next `record_*()` (after queueing that event), `check()`, or when
the `with sbw.task(...)` block exits. `task()` entry waits while paused (or raises
`AgentPaused`) and sleeps the throttle delay, like the async client, and so does
`before_call()`.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from schemas.contract import ControlCommand, UsageEvent
from streams.client.client import BudgetClient, Parent, TaskScope

T = TypeVar("T")


class SyncBudgetClient:
    """`with SyncBudgetClient(bootstrap=..., agent_id=...) as bw:` — takes BudgetClient's arguments."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="budgetwarden-client", daemon=True)
        self._local = threading.local()
        self._client: BudgetClient | None = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def client(self) -> BudgetClient:
        if self._client is None:
            raise RuntimeError("SyncBudgetClient is not started; use `with SyncBudgetClient(...) as bw:`")
        return self._client

    def start(self) -> SyncBudgetClient:
        self._thread.start()

        async def make() -> BudgetClient:
            return await BudgetClient(**self._kwargs).start()

        self._client = self._call(make())
        return self

    def close(self) -> None:
        if self._client is not None:
            self._call(self._client.close())
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> SyncBudgetClient:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # tasks --------------------------------------------------------------------------------
    @contextmanager
    def task(self, task_id: str, estimated_tokens: int | None = None,
             task_type: str | None = None) -> Iterator[TaskScope]:
        """As the async client's `task()`; on exit it queues the task's `task_end`."""
        client = self.client
        scope = TaskScope(client, task_id, estimated_tokens, task_type)

        async def enter() -> None:
            await client._admit(task_id)
            client._scopes.add(scope)

        async def leave() -> None:
            client._scopes.discard(scope)

        self._call(enter())
        previous = getattr(self._local, "scope", None)
        self._local.scope = scope
        status: Literal["ok", "error", "killed"] = "ok"
        try:
            yield scope
        except BaseException:
            status = "error"
            raise
        finally:
            self._local.scope = previous
            self._call(leave())
            scope.end("killed" if scope.killed is not None else status)
        scope.check()

    def _scope(self) -> TaskScope | None:
        return getattr(self._local, "scope", None)

    def child(self, agent_id: str, **options: Any) -> SyncBudgetClient:
        """As the async client's `child()`: `with sbw.child("researcher") as sub:`, a client of its
        own (own loop thread) whose events name this agent and its current task as their parent.
        It takes this client's arguments except its agent, spill directory and senders."""
        scope = self._scope()
        inherited = {k: v for k, v in self._kwargs.items()
                     if k not in ("agent_id", "spill_dir", "sender", "admission_sender")}
        parent = Parent(self.client.agent_id, scope.task_id if scope is not None else "")
        return SyncBudgetClient(**{**inherited, "agent_id": agent_id, "parent": parent, **options})

    def check(self) -> None:
        scope = self._scope()
        if scope is not None:
            scope.check()

    def before_call(self, estimated_tokens: int | None = None, model: str | None = None) -> None:
        """As the async client's: TaskKilled in a killed task, waits while paused (AgentPaused
        with pause_mode="raise"), the throttle's delay, with admission reserves the call's
        estimate and, under a USD budget, its price for `model` (BudgetExceeded), then
        remembers the call's estimate. One hop to the client's loop thread."""
        scope = self._scope()
        if scope is not None:
            scope.check()
        client = self.client

        async def check() -> None:
            await client._obey()
            if client.wallet is not None:
                await client.admit_call(scope or client, estimated_tokens, model)

        self._call(check())
        if estimated_tokens is not None:
            (scope or client).call_estimate = estimated_tokens

    def health(self) -> dict[str, Any]:
        """As the async client's `health()`."""
        return self.client.health()

    def model_for(self, model: str) -> str:
        return self.client.model_for(model)

    def handle_command(self, cmd: ControlCommand) -> None:
        """Apply an (already admitted) command on the client's loop, as the subscriber does."""
        self._call(self._apply(cmd))

    async def _apply(self, cmd: ControlCommand) -> None:
        self.client.handle_command(cmd)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._call(self.client.flush(timeout_s))

    # recording ----------------------------------------------------------------------------
    def _record(self, provider: str, usage: Any, model: str, fields: dict[str, Any]) -> UsageEvent:
        scope = self._scope()
        event = self.client.record_nowait(provider, usage, model, scope, **fields)
        if scope is not None:
            scope.check()
        return event

    def record_openai(self, usage: Any, model: str, **fields: Any) -> UsageEvent:
        return self._record(fields.pop("provider", "openai"), usage, model, fields)

    def record_anthropic(self, usage: Any, model: str, **fields: Any) -> UsageEvent:
        return self._record(fields.pop("provider", "anthropic"), usage, model, fields)

    def record_gemini(self, usage: Any, model: str, **fields: Any) -> UsageEvent:
        return self._record("google", usage, model, fields)

    def record(self, event: UsageEvent) -> UsageEvent:
        event = self.client.complete_event(event, self._scope())
        self.client.submit(event)
        return event
