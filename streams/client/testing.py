"""Test helpers for code that uses the client: a fake usage sender that can be down and records what it acked."""
from __future__ import annotations

import asyncio
from collections import Counter

from schemas.codec import UsageDecoder
from schemas.contract import UsageEvent


class FakeSender:
    def __init__(self, down: bool = False, fail_sends: int = 0) -> None:
        self.down = down
        self.fail_sends = fail_sends
        self.started = 0
        self.messages: list[tuple[bytes, bytes]] = []
        self._decoder = UsageDecoder()

    async def start(self) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.started += 1

    async def send(self, key: bytes, value: bytes) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("broker down")
        if self.fail_sends > 0:
            self.fail_sends -= 1
            raise ConnectionError("request timed out")
        self.messages.append((key, value))

    async def stop(self) -> None:
        pass

    def events(self) -> list[UsageEvent]:
        return [e for _, value in self.messages for e in self._decoder.decode(value)]

    def id_counts(self) -> Counter[str]:
        return Counter(e.event_id for e in self.events())
