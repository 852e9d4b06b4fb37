"""The merger: sums the partitions' snapshots of user/team/model/global totals and runs the
budgets that span partitions (daily_budget_exceeded, user_budget_exceeded, budget_forecast)
and the spikes of users and models (user_spike, model_spike, from the summed hour buckets).

It keeps, per subject, the latest snapshot from each source partition (replaced only by one
with an equal or larger offset watermark), so replayed or duplicated rollups change nothing
and totals stay exact. Known agents (criticality, team, last seen) come with the rollups and
decide who a `pause_noncritical` reaches.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
from msgspec import Struct

from schemas.contract import FLEET_KEY, ControlCommand, Decision, Limits, team_key
from schemas.clock import Clock, system_ms
from streams.commands import commands_for
from streams.rules import PERIODS, Emitter, dim_decisions, dim_spike
from streams.rules_config import RulesConfig
from streams.state import AgentInfo, DimState, Rollup, decode_info, encode_state
from streams.status import percent, period_status
from streams.windows import merged

SUBJECT_PREFIX = b"m|"
AGENT_PREFIX = b"i|"
FIRED_KEY = b"fired"
LADDERS_KEY = b"ladders"  # written since escalation ladders; absent in older changelogs (empty then)
FIRED_KEPT_MS = 3 * 86_400_000
SPIKE_DIMS = ("user", "model")
AGENT_TTL_MS = 48 * 3_600_000  # an agent unseen this long is no longer paused by fleet actions


class MergedSubject(Struct, array_like=True):
    dim: str
    subject: str
    parts: dict[int, DimState] = {}


_subject_decoder = msgspec.msgpack.Decoder(MergedSubject)
_fired_decoder = msgspec.msgpack.Decoder(dict[str, int])
_ladders_decoder = msgspec.msgpack.Decoder(dict[str, tuple[int, int]])


@dataclass
class MergeOutput:
    decisions: list[Decision] = field(default_factory=list)
    commands: list[ControlCommand] = field(default_factory=list)
    writes: list[tuple[bytes, bytes]] = field(default_factory=list)


class Merger:
    def __init__(self, config: RulesConfig, now_ms: Clock = system_ms, control_key: bytes | None = None) -> None:
        self.now_ms = now_ms
        self.control_key = control_key
        self.subjects: dict[tuple[str, str], MergedSubject] = {}
        self.agents: dict[str, AgentInfo] = {}
        self.fired: dict[str, int] = {}
        self.ladders: dict[str, tuple[int, int]] = {}  # "rule|subject" -> (last step, event time)
        self.recent: deque[Decision] = deque(maxlen=100)
        self.set_config(config)

    def set_config(self, config: RulesConfig) -> None:
        self.config = config
        self.emitter = Emitter(config, self.now_ms)

    def restore(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            if key.startswith(SUBJECT_PREFIX):
                s = _subject_decoder.decode(value)
                self.subjects[(s.dim, s.subject)] = s
            elif key.startswith(AGENT_PREFIX):
                info = decode_info(value)
                self.agents[info.agent_id] = info
            elif key == FIRED_KEY:
                self.fired = _fired_decoder.decode(value)
            elif key == LADDERS_KEY:
                self.ladders = _ladders_decoder.decode(value)

    def limits(self, dim: str, subject: str) -> Limits | None:
        b = self.config.budgets
        if dim == "global":
            return b.global_
        group = {"user": b.users, "team": b.teams}.get(dim)
        return group.get(subject) if group is not None else None

    def apply(self, rollups: Sequence[Rollup]) -> MergeOutput:
        out = MergeOutput()
        touched: dict[tuple[str, str], MergedSubject] = {}
        for r in rollups:
            for info in r.agents:
                known = self.agents.get(info.agent_id)
                if known is None or info.last_ts >= known.last_ts or info.criticality != known.criticality:
                    self.agents[info.agent_id] = info
                    out.writes.append((AGENT_PREFIX + info.agent_id.encode(), encode_state(info)))
            for snap in r.dims:
                key = (snap.dim, snap.subject)
                subject = self.subjects.get(key)
                if subject is None:
                    subject = self.subjects[key] = MergedSubject(dim=snap.dim, subject=snap.subject)
                current = subject.parts.get(r.source)
                if current is not None and current.upto > snap.upto:
                    continue  # an older snapshot (replay): the newer one stands
                subject.parts[r.source] = snap
                touched[key] = subject
        fired_before = len(self.fired)
        for (dim, name), subject in touched.items():
            out.writes.append((b"%b%b|%b" % (SUBJECT_PREFIX, dim.encode(), name.encode()), encode_state(subject)))
            limits = self.limits(dim, name)
            spikes = dim in SPIKE_DIMS
            if not limits and not spikes:
                continue
            counters = [p.counter for p in subject.parts.values()]
            windows = {period: merged(counters, period) for period in PERIODS}
            at_ms = max(c.last_ts for c in counters)
            found = dim_decisions(self.emitter, self.fired, dim, name, limits, windows, at_ms) if limits else []
            if spikes:
                hours: dict[int, int] = {}
                for c in counters:
                    for k, v in c.hours.items():
                        hours[k] = hours.get(k, 0) + v
                spiked = dim_spike(self.emitter, self.fired, self.ladders, dim, name, limits, hours, at_ms)
                if spiked is not None:
                    found.append(spiked)
            for d in found:
                self.recent.append(d)
                out.decisions.append(d)
                state_key = FLEET_KEY if dim == "global" else team_key(name) if dim == "team" else ""
                out.commands.extend(commands_for(d, targets=self._targets(dim, subject, at_ms), expires_ms=windows[d.window][1] if d.window in windows else windows["day"][1],
                                                 control_key=self.control_key, state_key=state_key))
        if len(self.fired) != fired_before:
            cutoff = self.now_ms() - FIRED_KEPT_MS
            self.fired = {k: v for k, v in self.fired.items() if v >= cutoff}
            out.writes.append((FIRED_KEY, encode_state_dict(self.fired)))
            # a spike's step is kept as long as its decision id (ladder times are event times)
            newest = max((ts for _, ts in self.ladders.values()), default=0)
            self.ladders = {k: v for k, v in self.ladders.items() if v[1] >= newest - FIRED_KEPT_MS}
            out.writes.append((LADDERS_KEY, msgspec.msgpack.encode(self.ladders)))
        return out

    def _targets(self, dim: str, subject: MergedSubject, at_ms: int) -> list[AgentInfo]:
        """Agents a fleet action reaches: all recent ones (global), or those seen for the team/user."""
        if dim == "global":
            return [a for a in self.agents.values() if a.last_ts >= at_ms - AGENT_TTL_MS]
        names = {a for part in subject.parts.values() for a in part.agents}
        if dim == "team":
            names |= {a.agent_id for a in self.agents.values() if a.team == subject.subject}
        return [self.agents.get(n) or AgentInfo(agent_id=n, criticality="normal", team="", last_ts=at_ms) for n in names]

    def status(self) -> dict[str, dict[str, Any]]:
        """Today's totals per subject, and this week's and month's where they have a limit (see
        streams.status for the shape)."""
        result: dict[str, dict[str, Any]] = {}
        now = self.now_ms()
        for (dim, name), subject in sorted(self.subjects.items()):
            counters = [p.counter for p in subject.parts.values()]
            _, _, tokens, nano = merged(counters, "day")
            limits = self.limits(dim, name) or Limits()
            result["global" if dim == "global" else f"{dim}:{name}"] = {
                "tokens_today": tokens, "nano_usd_today": nano, "daily_tokens": limits.daily_tokens,
                "daily_nano_usd": limits.daily_nano_usd, "percent": percent(tokens, nano, limits),
                "periods": period_status(partial(merged, counters), limits, now),
            }
        return result


def encode_state_dict(fired: dict[str, int]) -> bytes:
    return msgspec.msgpack.encode(fired)
