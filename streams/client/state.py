"""The agent-wide effects of control commands (pause, throttle, downgrade), as pure logic.

Kill is per task and lives with the task scopes in `client.py`; everything here is a
function of the applied commands and the injected clock, so it is tested without Kafka.

- `pause_agent` pauses until `resume_agent` or the command's `expires_ms` (absolute epoch ms).
- `throttle` adds `delay_ms` before each new call until `expires_ms`, `resume_agent`, or a
  throttle with delay_ms 0.
- `downgrade_model` makes `model_for(m)` return `cmd.model` for every model `m` that costs
  more than `cmd.model` in the price catalog (input + output per 1M tokens), and for every
  model when either side is unpriced; cheaper models are left alone, so a downgrade never
  upgrades. It lasts until `expires_ms` or `resume_agent`.
- `resume_agent` clears all three.
"""
from __future__ import annotations

from schemas.contract import ControlCommand
from schemas.pricing import PriceCatalog
from schemas.clock import Clock, system_ms


def _live(until_ms: int | None, now: int) -> bool:
    return until_ms is None or now < until_ms


class AgentState:
    def __init__(self, now_ms: Clock = system_ms, catalog: PriceCatalog | None = None) -> None:
        self._now_ms = now_ms
        self._catalog = catalog or PriceCatalog.default()
        self.pause: ControlCommand | None = None
        self.throttle: ControlCommand | None = None
        self.downgrade: ControlCommand | None = None
        self._model_memo: dict[str, str] = {}

    def apply(self, cmd: ControlCommand) -> None:
        """Record the effect of an admitted agent-wide command (kill_task is ignored here)."""
        if cmd.command == "pause_agent":
            self.pause = cmd
        elif cmd.command == "resume_agent":
            self.pause = self.throttle = self.downgrade = None
            self._model_memo.clear()
        elif cmd.command == "throttle":
            self.throttle = cmd if cmd.delay_ms else None
        elif cmd.command == "downgrade_model" and cmd.model:
            self.downgrade = cmd
            self._model_memo.clear()

    def paused(self) -> ControlCommand | None:
        """The pause in force, if any (expired pauses are forgotten)."""
        if self.pause is not None and not _live(self.pause.expires_ms, self._now_ms()):
            self.pause = None
        return self.pause

    def throttle_ms(self) -> int:
        if self.throttle is None:
            return 0
        if not _live(self.throttle.expires_ms, self._now_ms()):
            self.throttle = None
            return 0
        return self.throttle.delay_ms or 0

    def model_for(self, model: str) -> str:
        cmd = self.downgrade
        if cmd is None:
            return model
        if not _live(cmd.expires_ms, self._now_ms()):
            self.downgrade = None
            self._model_memo.clear()
            return model
        choice = self._model_memo.get(model)
        if choice is None:
            choice = cmd.model if self._pricier(model, cmd.model) else model
            self._model_memo[model] = choice
        return choice

    def _pricier(self, model: str, replacement: str) -> bool:
        a = self._catalog.lookup(model)
        b = self._catalog.lookup(replacement)
        if a is None or b is None:
            return model != replacement
        return a.input + a.output > b.input + b.output


class FeedHealth:
    """Whether the agent still hears its state and control feed (issue 15 item 7).

    `alive()` is called whenever the feed was read (the state at start, every successful
    poll or probe of `agent.control`). After `loss_after_ms` without one the feed is lost;
    with `on_loss="pause"` the agent then counts as paused until it hears the feed again
    (fail closed: a processor that cannot reach the agent cannot stop it either), with
    `"continue"` it keeps going and the client logs the loss."""

    def __init__(self, now_ms: Clock = system_ms, loss_after_ms: int = 30_000, on_loss: str = "continue") -> None:
        if on_loss not in ("pause", "continue"):
            raise ValueError(f"on_control_loss must be 'pause' or 'continue', got {on_loss!r}")
        self._now_ms = now_ms
        self.loss_after_ms = loss_after_ms
        self.on_loss = on_loss
        self.last_ok_ms = now_ms()

    def alive(self) -> None:
        self.last_ok_ms = self._now_ms()

    def lost_since(self) -> int | None:
        """When the feed was last heard, if that is `loss_after_ms` ago or more (else None)."""
        return self.last_ok_ms if self._now_ms() - self.last_ok_ms >= self.loss_after_ms else None

    def paused_by_loss(self) -> bool:
        return self.on_loss == "pause" and self.lost_since() is not None

    def report(self) -> dict[str, object]:
        """`{"feed": "ok" | "lost", "last_ok_ms", "lost_since_ms", "paused_by_loss", "on_control_loss"}`."""
        lost = self.lost_since()
        return {"feed": "ok" if lost is None else "lost", "last_ok_ms": self.last_ok_ms, "lost_since_ms": lost,
                "paused_by_loss": self.on_loss == "pause" and lost is not None, "on_control_loss": self.on_loss}
