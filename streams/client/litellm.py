"""LiteLLM integration: a `CustomLogger` that publishes every call's usage and refuses the calls
budgetwarden forbids. Needs the optional extra: `pip install 'budgetwarden[litellm]'`.

SDK (the guard runs on `acompletion`, where LiteLLM awaits `async_pre_call_deployment_hook`
before every call; its sync `completion` swallows a pre-call hook's errors, so there call
`before_call()` yourself):

    bw = await BudgetClient(bootstrap, "research-bot", pause_mode="raise").start()
    litellm.callbacks = [BudgetwardenLogger(bw)]

Proxy (`config.yaml`: `litellm_settings: callbacks: custom_callbacks.budgetwarden`, with
`budgetwarden = BudgetwardenLogger(agent_id="llm-gateway")` in custom_callbacks.py): the client
is built from the environment (`streams.settings`) and started on the proxy's loop at the first
call; `async_pre_call_hook` guards each request.

Usage comes from LiteLLM's standard logging payload (`kwargs["standard_logging_object"]`): its
OpenAI-shaped `usage_object` is normalized (`schemas.normalize.from_litellm`: cache reads and
writes taken out of `prompt_tokens`), the virtual key travels only as a SHA-256 hash, and
team, user, key alias, model group and request tags go into the event's attribution. The
event id derives from LiteLLM's call id, so a call logged twice counts once. Nothing here
raises into LiteLLM's logging: an unreadable payload is logged and skipped.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from litellm.exceptions import BudgetExceededError
from litellm.integrations.custom_logger import CustomLogger

from schemas.clock import system_ms
from schemas.contract import MAX_ID_LEN, MAX_NAME_LEN, UsageEvent
from schemas.errors import BudgetwardenError
from schemas.litellm_import import map_provider
from schemas.normalize import from_litellm
from streams.client.client import BudgetClient
from streams.settings import Environment

__all__ = ["BudgetwardenLogger", "Refused", "usage_event"]

log = structlog.get_logger(__name__)

TASK_KEY = "task_id"  # request metadata naming the budgetwarden task a call belongs to
_CHECKED = "budgetwarden_checked"  # set by the proxy hook so the deployment hook does not gate twice
_KEY_HASH = re.compile(r"^[0-9a-f]{64}$")


class Refused(BudgetExceededError):
    """LiteLLM's budget error, raised by the guard: a refused call is no usage to publish."""


def _text(value: Any, limit: int = MAX_NAME_LEN) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def key_hash(key: Any) -> str:
    """LiteLLM's `user_api_key_hash` (SHA-256 hex) as is; anything else (a raw `sk-...` key passed
    by hand) is hashed here, so no secret ever leaves in an event."""
    text = _text(key, 10_000)
    if not text:
        return ""
    return text if _KEY_HASH.match(text) else hashlib.sha256(text.encode()).hexdigest()


def request_metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The metadata the caller sent with the request (SDK `metadata=`, or the proxy request's)."""
    params = kwargs.get("litellm_params")
    for source in (params.get("metadata") if isinstance(params, Mapping) else None, kwargs.get("metadata"),
                   kwargs.get("litellm_metadata")):
        if isinstance(source, Mapping):
            return source
    return {}


def usage_event(payload: Mapping[str, Any], agent_id: str, *, usage: Any = None,
                request: Mapping[str, Any] | None = None,
                criticality: Literal["critical", "normal"] = "normal") -> UsageEvent:
    """The usage event of one LiteLLM call from its `StandardLoggingPayload` (a dict).

    `usage`: the response's `Usage` when the payload carries no `usage_object`; without either
    the payload's `prompt_tokens` / `completion_tokens` count (a failed call: usually 0).
    `request`: the metadata sent with the request (`task_id`, `user`), by default the payload's
    `requester_metadata`."""
    meta = payload.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    if request is None:
        sent = meta.get("requester_metadata")
        request = sent if isinstance(sent, Mapping) else {}
    found = meta.get("usage_object") or usage or {"prompt_tokens": payload.get("prompt_tokens") or 0,
                                                  "completion_tokens": payload.get("completion_tokens") or 0}
    tokens = from_litellm(found)
    call_id = _text(payload.get("litellm_call_id")) or _text(payload.get("id"))
    end = payload.get("endTime")
    tags = {
        "litellm.key": key_hash(meta.get("user_api_key_hash")),
        "litellm.key_alias": _text(meta.get("user_api_key_alias")),
        "litellm.model_group": _text(payload.get("model_group")),
        "litellm.tags": _text(",".join(t for t in payload.get("request_tags") or () if isinstance(t, str))),
    }
    return UsageEvent(
        event_id=f"litellm-{call_id}"[:MAX_ID_LEN] if call_id else f"litellm-{system_ms()}-{id(payload)}",
        ts_ms=int(end * 1000) if isinstance(end, (int, float)) and end > 0 else system_ms(),
        agent_id=agent_id,
        model=_text(payload.get("model")) or "unknown",
        provider=map_provider(_text(payload.get("custom_llm_provider"))),  # type: ignore[arg-type]
        task_id=_text(request.get(TASK_KEY)),
        session_id=_text(payload.get("session_id")),
        user_id=_text(meta.get("user_api_key_user_id")) or _text(payload.get("end_user"))
        or _text(meta.get("user_api_key_end_user_id")) or _text(request.get("user")),
        team=_text(meta.get("user_api_key_team_alias")) or _text(meta.get("user_api_key_team_id")),
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        cache_read_tokens=tokens.cache_read_tokens,
        cache_write_tokens=tokens.cache_write_tokens,
        cache_write_1h_tokens=tokens.cache_write_1h_tokens,
        criticality=criticality,
        status="ok" if payload.get("status") == "success" else "error",
        tags={k: v for k, v in tags.items() if v},
    )


class BudgetwardenLogger(CustomLogger):
    """Publishes each LiteLLM call's usage through a `BudgetClient` and gates calls with its
    `before_call` (pause, throttle, kill of the request's `task_id`, and whatever else the client
    checks), refusing with LiteLLM's `BudgetExceededError`."""

    def __init__(self, client: BudgetClient | None = None, *, agent_id: str = "litellm-gateway",
                 bootstrap: str | None = None, **client_options: Any) -> None:
        """With `client` (started by its owner) it is used as is. Without, one is built at the
        first async call from the environment, `pause_mode="raise"` unless `client_options` say
        otherwise (a gateway answers at once rather than holding requests)."""
        super().__init__()
        self._client = client
        self._agent_id = client.agent_id if client is not None else agent_id
        self._bootstrap = bootstrap
        self._options = {"pause_mode": "raise", **client_options}
        self._starting: asyncio.Lock | None = None

    @property
    def agent_id(self) -> str:
        return self._agent_id

    async def client(self) -> BudgetClient:
        """The client; built and started on the running loop the first time (proxy use)."""
        if self._client is not None:
            return self._client
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._client is None:
                bootstrap = self._bootstrap or Environment.read().bootstrap
                self._client = await BudgetClient(bootstrap, self._agent_id, **self._options).start()
        return self._client

    # usage ------------------------------------------------------------------------------
    def _publish(self, client: BudgetClient, kwargs: Mapping[str, Any], response: Any) -> None:
        payload = kwargs.get("standard_logging_object")
        if not isinstance(payload, Mapping):
            log.warning("litellm.no_logging_payload", agent_id=self._agent_id)
            return
        if isinstance(kwargs.get("exception"), Refused):
            return
        request = dict(request_metadata(kwargs))
        if isinstance(kwargs.get("user"), str):  # the SDK's `user=` argument (the end user)
            request.setdefault("user", kwargs["user"])
        try:
            event = usage_event(payload, self._agent_id, usage=getattr(response, "usage", None),
                                request=request, criticality=client.criticality)
        except (BudgetwardenError, ValueError, TypeError) as err:
            log.warning("litellm.usage_unreadable", agent_id=self._agent_id, error=f"{type(err).__name__}: {err}"[:300])
            return
        client.submit(client.complete_event(event))  # with admission: stamps the holder, settles a reservation

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self._publish(await self.client(), kwargs, response_obj)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self._publish(await self.client(), kwargs, response_obj)

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Sync `completion`: needs a client given at construction (e.g. `SyncBudgetClient(...).client`)."""
        if self._client is not None:
            self._publish(self._client, kwargs, response_obj)
        else:
            log.warning("litellm.sync_call_without_client", agent_id=self._agent_id)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.log_success_event(kwargs, response_obj, start_time, end_time)

    # the guard ----------------------------------------------------------------------------
    async def guard(self, metadata: Mapping[str, Any], model: str | None = None) -> None:
        """Raise `BudgetExceededError` when budgetwarden forbids the call (its `task_id` killed,
        the agent paused, admission refused, ...); sleeps a throttle's delay. Local state only:
        no network hop. `model` is what admission prices under a USD budget."""
        client = await self.client()
        task_id = _text(metadata.get(TASK_KEY))
        killed = client.killed(task_id) if task_id else None
        try:
            if killed is not None:
                raise BudgetwardenError(f"task {task_id!r} killed: {killed.reason}")
            await client.before_call(model=model)
        except BudgetwardenError as err:
            log.info("litellm.refused", agent_id=self._agent_id, task_id=task_id, reason=str(err))
            raise Refused(current_cost=0.0, max_budget=0.0, message=f"budgetwarden: {err}",
                          entity_type="agent", entity_id=self._agent_id) from None

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        """Proxy: every request, before routing."""
        metadata = data.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else data.setdefault("metadata", {})
        await self.guard(metadata, _text(data.get("model")) or None)
        metadata[_CHECKED] = True
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        """SDK `acompletion` (and the proxy, where the request was already gated)."""
        metadata = request_metadata(kwargs)
        if not metadata.get(_CHECKED):
            await self.guard(metadata, _text(kwargs.get("model")) or None)
        return None
