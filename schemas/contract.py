"""Wire contract v1: the messages on budgetwarden's Kafka topics, as msgspec structs.

Agents in any language produce this JSON, so the structs carry the validation (bounds,
lengths, enums) and `schemas.codec` turns msgspec's errors into one typed error that names
the field. Unknown fields are ignored; `type` is the tag that tells messages apart.
"""
from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

SCHEMA_VERSION = 1

# Bounds: anything beyond these is bad input rather than a very large bill.
MAX_TOKENS = 100_000_000  # one call; the largest context windows are ~10M tokens
MAX_NANO_USD = 10**18  # an admission ask or grant: $1e9
MAX_ID_LEN = 128
MAX_NAME_LEN = 256
MAX_TEXT_LEN = 1024
MAX_TAGS = 32
MAX_BATCH_EVENTS = 5_000
MIN_TS_MS = 946_684_800_000  # 2000-01-01; older is a unit mistake (seconds, not ms)

Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
NanoUsd = Annotated[int, Meta(ge=0, le=MAX_NANO_USD)]
EventId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LEN)]
OptName = Annotated[str, Meta(max_length=MAX_NAME_LEN)]
Text = Annotated[str, Meta(max_length=MAX_TEXT_LEN)]
TimestampMs = Annotated[int, Meta(ge=MIN_TS_MS, le=4_102_444_800_000)]  # < 2100-01-01
Version = Annotated[int, Meta(ge=1, le=1)]
Fingerprint = Annotated[str, Meta(max_length=64)]  # a client-side hash (hex); see streams/client/fingerprint.py
SimHash = Annotated[str, Meta(max_length=20, pattern="^[0-9]*$")]  # unsigned 64-bit, decimal (JSON-safe in JS)
Tags = Annotated[
    dict[Annotated[str, Meta(max_length=MAX_NAME_LEN)], Annotated[str, Meta(max_length=MAX_NAME_LEN)]],
    Meta(max_length=MAX_TAGS),
]

Provider = Literal["openai", "anthropic", "google", "bedrock", "azure", "other"]
Criticality = Literal["critical", "normal"]
CallStatus = Literal["ok", "error", "retry"]
TaskStatus = Literal["ok", "error", "killed"]
Severity = Literal["P1", "P2", "P3"]
Action = Literal[
    "allow",
    "notify",
    "investigate",
    "throttle",
    "downgrade_model",
    "pause_agent",
    "pause_noncritical",
    "kill_task",
]
Scope = Literal["agent", "task", "user", "team", "model", "global"]
Unit = Literal["tokens", "usd"]
Command = Literal["kill_task", "pause_agent", "resume_agent", "throttle", "downgrade_model"]

ACTIONS: tuple[str, ...] = Action.__args__  # type: ignore[attr-defined]
COMMANDS: tuple[str, ...] = Command.__args__  # type: ignore[attr-defined]


class UsageEvent(Struct, tag="usage", tag_field="type", kw_only=True, omit_defaults=True, gc=False):
    """One model call. `input_tokens` is UNCACHED input; cache buckets are separate.

    `gc=False`: the cycle collector never tracks it (its fields are strings, ints and a dict of
    strings, so it cannot be part of a cycle); the sink's collections per 300k events went
    1,195 -> 747 and its rows/s 96k -> 118k (`bench sink`, interleaved).
    """

    event_id: EventId
    ts_ms: TimestampMs
    agent_id: Name
    model: Name
    v: Version = SCHEMA_VERSION
    provider: Provider = "other"
    task_id: OptName = ""
    session_id: OptName = ""
    user_id: OptName = ""
    team: OptName = ""
    step: Annotated[int, Meta(ge=0, le=10_000_000)] | None = None
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    cache_write_1h_tokens: Tokens = 0
    estimated_tokens: Tokens | None = None  # this call's pre-call estimate
    task_estimated_tokens: Tokens | None = None  # the whole task's estimate, repeated on each of its events
    criticality: Criticality = "normal"
    status: CallStatus = "ok"
    prompt_hash: OptName = ""
    tool: OptName = ""
    tags: Tags = {}
    task_type: OptName = ""  # optional (v1): the kind of task (`task(id, task_type=...)`), repeated on its events
    # optional (v1): fingerprints of the newest turn, tool call and tool result (no content leaves
    # the agent); `simhash` is a 64-bit SimHash as a decimal string ("" = none; > 2^64-1 is ignored)
    turn_hash: Fingerprint = ""
    tool_hash: Fingerprint = ""
    result_hash: Fingerprint = ""
    simhash: SimHash = ""
    # optional (v1): the admission lease the call was spent from (the client instance's holder
    # id, `streams.admission`); the granting service settles that lease by the call's tokens
    holder: OptName = ""
    # optional (v1): the agent (and its task) that started this sub-agent's work (`bw.child(...)`,
    # `parent=`, or an enclosing OTLP agent span); "" = no parent. Queries sum a parent's
    # inclusive cost over them (`sinks.subagents`)
    parent_agent_id: OptName = ""
    parent_task_id: OptName = ""

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
        )


class TaskEnd(Struct, tag="task_end", tag_field="type", kw_only=True, omit_defaults=True, gc=False):
    """A task is over (sent on `usage.events` by the client's task scope on exit; key `agent_id`).

    `status`: `ok` (the block completed), `error` (it raised), `killed` (TaskKilled). The
    processor learns the sizes of completed tasks from it (estimates); `event_id` dedupes it
    like a usage event. The sink stores nothing of it."""

    event_id: EventId
    ts_ms: TimestampMs
    agent_id: Name
    task_id: Name
    status: TaskStatus
    task_type: OptName = ""
    v: Version = SCHEMA_VERSION


class UsageBatch(Struct, tag="usage_batch", tag_field="type", kw_only=True):
    """Many usage events in one Kafka message (gateways, busy agents); a task_end may travel in
    it too (the client's publisher groups whatever it queued for the agent)."""

    events: Annotated[list[UsageEvent | TaskEnd], Meta(max_length=MAX_BATCH_EVENTS)]
    v: Version = SCHEMA_VERSION


class Decision(Struct, tag="decision", tag_field="type", kw_only=True, omit_defaults=True):
    """A rule changed state. `decision_id` is deterministic so a replay emits the same id."""

    decision_id: EventId
    ts_ms: TimestampMs
    rule: Name
    severity: Severity
    action: Action
    scope: Scope
    subject: Name
    observed: int
    limit: int
    unit: Unit
    window: Name
    message: Text
    trigger_event_id: OptName = ""
    policy_version: int = 0
    agent_id: OptName = ""
    task_id: OptName = ""
    v: Version = SCHEMA_VERSION


class ControlCommand(Struct, tag="control", tag_field="type", kw_only=True, omit_defaults=True):
    """An order to one agent. `sig` is HMAC-SHA256 over the canonical body (see schemas.signing)."""

    command: Command
    agent_id: Name
    reason: Text
    decision_id: EventId
    ts_ms: TimestampMs
    task_id: OptName = ""
    model: OptName = ""
    expires_ms: int | None = None
    delay_ms: Annotated[int, Meta(ge=0, le=3_600_000)] | None = None
    sig: OptName = ""
    v: Version = SCHEMA_VERSION


FLEET_KEY = "__fleet__"  # the `agent.state` key of fleet-wide state (a global pause of noncritical agents)
MAX_STATE_COMMANDS = 256


def team_key(team: str) -> str:
    """The `agent.state` key of one team's state (a team pause of its noncritical agents)."""
    return f"__team__:{team}"


class AgentStateRecord(Struct, tag="agent_state", tag_field="type", kw_only=True, omit_defaults=True):
    """One agent's enforcement state on the compacted `agent.state` topic (key: `agent_id`, or
    `FLEET_KEY` / `team_key(team)`): the control commands still in force, as they were sent
    (signatures included), so an agent that starts reads what it must obey and can verify it."""

    agent_id: Name
    ts_ms: TimestampMs
    commands: Annotated[list[ControlCommand], Meta(max_length=MAX_STATE_COMMANDS)] = []
    v: Version = SCHEMA_VERSION


class AdmissionRequest(Struct, tag="admission_request", tag_field="type", kw_only=True, omit_defaults=True):
    """A client's ask for allowance on `admission.requests`: `asked` more tokens, after giving
    back `returned` unused ones (`asked=0`: renew or release only), and the same in nano-USD
    (`asked_nano`, `returned_nano`) for USD budgets. Key: `agent_id`."""

    holder: Name  # one client instance
    agent_id: Name
    ts_ms: TimestampMs
    user_id: OptName = ""
    team: OptName = ""
    asked: Tokens = 0
    returned: Tokens = 0
    asked_nano: NanoUsd = 0  # optional (v1)
    returned_nano: NanoUsd = 0  # optional (v1)
    v: Version = SCHEMA_VERSION


class AdmissionGrant(Struct, tag="admission_grant", tag_field="type", kw_only=True, omit_defaults=True):
    """The answer on `admission.grants` (key `agent_id`): `granted` tokens, the holder's whole
    lease valid `lease_ms` from its request (`request_ts_ms`, on the client's clock). `final`:
    nothing granted because budget `scope`/`subject` (`period`, `unit`) has nothing left to grant;
    `remaining` is that budget's limit minus its spend (-1: no admitted budget applies).
    `granted_nano` is the nano-USD grant and `usd` says a USD budget applies to the holder
    (optional, v1: without them a grant is tokens only)."""

    holder: Name
    agent_id: Name
    ts_ms: TimestampMs
    granted: Tokens = 0
    lease_ms: Annotated[int, Meta(ge=0, le=86_400_000)] = 0
    final: bool = False
    scope: OptName = ""
    subject: OptName = ""
    period: OptName = ""
    remaining: Annotated[int, Meta(ge=-1)] = -1
    request_ts_ms: int = 0  # the request's ts_ms, echoed: the client counts the lease from it
    granted_nano: NanoUsd = 0
    usd: bool = False
    unit: Literal["tokens", "nano_usd"] = "tokens"
    v: Version = SCHEMA_VERSION


class Limits(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A budget. USD limits travel as integer nano-dollars so they stay exact."""

    daily_tokens: Annotated[int, Meta(ge=0)] | None = None
    daily_nano_usd: Annotated[int, Meta(ge=0)] | None = None
    hourly_tokens: Annotated[int, Meta(ge=0)] | None = None
    weekly_tokens: Annotated[int, Meta(ge=0)] | None = None  # calendar weeks (Monday) in the rules' time zone
    weekly_nano_usd: Annotated[int, Meta(ge=0)] | None = None
    monthly_tokens: Annotated[int, Meta(ge=0)] | None = None  # calendar months in the rules' time zone
    monthly_nano_usd: Annotated[int, Meta(ge=0)] | None = None
    task_tokens: Annotated[int, Meta(ge=0)] | None = None
    step_tokens: Annotated[int, Meta(ge=0)] | None = None
    criticality: Criticality | None = None


PolicyScope = Literal["global", "default_agent", "agent", "user", "team", "rule"]


class Policy(Struct, tag="policy", tag_field="type", kw_only=True, omit_defaults=True):
    """A budget or rule setting as an event on the compacted `budget.policies` topic.

    The Kafka key is `policy_id` (`{scope}:{subject}`). For scope `rule`, `subject` is the
    rule name and `params` its settings, laid over the rule's current ones.

    `overlay` (optional, added in v1; records without it keep their first meaning):
    - true: `limits` holds only the fields this override sets, each laid over the subject's
      current entry; the fields named in `unset` are removed (a budget field: no own limit;
      a rule param: back to the rules file's value); `deleted` drops the override, back to
      the rules file's entry.
    - false (older records): `limits` replaces the subject's whole entry and `deleted`
      removes the entry (the rules file's included).
    The topic is compacted by key, so each record carries the key's whole override (every
    field set or unset so far), never only the change. The change itself is the audit trail,
    kept in ClickHouse's `policies` table: `author` (who), `reason`, `changed` (the fields
    the command named) and `before` / `after` (the subject's limits or rule params in force,
    as the publisher computed them).
    """

    policy_id: Name
    ts_ms: TimestampMs
    scope: PolicyScope
    subject: OptName = ""
    limits: Limits | None = None
    params: dict[str, float | OptName] = {}  # a str: a rule's ladder or downgrade_to
    deleted: bool = False
    author: OptName = ""
    overlay: bool = False
    unset: list[OptName] = []
    changed: list[OptName] = []
    before: dict[str, bool | int | float | str] = {}
    after: dict[str, bool | int | float | str] = {}
    reason: Text = ""
    v: Version = SCHEMA_VERSION


class DeadLetter(Struct, tag="deadletter", tag_field="type", kw_only=True, omit_defaults=True):
    """A message that failed to decode or validate, with the reason and where it came from."""

    ts_ms: int
    reason: Text
    topic: str
    partition: int
    offset: int
    raw: str  # base64 of the original bytes
    field: str = ""
    key: str = ""
    v: Version = SCHEMA_VERSION


UsageMessage = UsageEvent | UsageBatch | TaskEnd
AnyMessage = UsageEvent | UsageBatch | TaskEnd | Decision | ControlCommand | Policy | DeadLetter

TOPIC_MESSAGES: dict[str, type] = {
    "usage.events": UsageMessage,  # type: ignore[dict-item]
    "budget.decisions": Decision,
    "agent.control": ControlCommand,
    "budget.policies": Policy,
    "usage.deadletter": DeadLetter,
}


def policy_key(scope: str, subject: str = "") -> str:
    return f"{scope}:{subject}" if subject else scope
