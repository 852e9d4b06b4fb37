"""A bounded on-disk queue for usage events the broker has not acknowledged.

Events are appended as JSON lines to the open segment (`seg-<seq>.jsonl`); a segment is
closed (flushed and fsynced) when it reaches `segment_bytes` or when the publisher wants to
replay it. Closed segments are replayed oldest first and deleted only after the broker
acknowledged every event in them, so a crash between send and delete re-sends a segment
(at-least-once; the processor dedupes by `event_id`) but never loses one. Files left by a
previous run are picked up at start. The total size is capped: past `max_bytes` new events
are refused (counted in `dropped` and logged) instead of filling the disk.

Thread-safe: the caller's thread appends when the in-memory queue is full while the
publisher's loop replays.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import msgspec
import structlog

from schemas.contract import UsageEvent

log = structlog.get_logger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
_PREFIX, _SUFFIX = "seg-", ".jsonl"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageEvent)


class SpillQueue:
    """Append-only JSON-lines segments under `directory`, bounded by `max_bytes` in total."""

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        existing = self._segment_paths()
        self._closed: list[Path] = existing  # left by a previous run: replay them
        self._seq = (self._seq_of(existing[-1]) + 1) if existing else 0
        self._total = sum(p.stat().st_size for p in existing)
        self._open: BinaryIO | None = None
        self._open_path: Path | None = None
        self._open_bytes = 0
        self._open_count = 0

    # writing ------------------------------------------------------------------------------
    def append(self, events: Iterable[UsageEvent]) -> int:
        """Write events; returns how many were stored (the rest are dropped: cap reached)."""
        lines = [_encoder.encode(e) + b"\n" for e in events]
        if not lines:
            return 0
        with self._lock:
            stored = 0
            for line in lines:
                if self._total + len(line) > self.max_bytes:
                    break
                if self._open is None:
                    self._open_segment()
                assert self._open is not None
                self._open.write(line)
                self._total += len(line)
                self._open_bytes += len(line)
                self._open_count += 1
                stored += 1
                if self._open_bytes >= self.segment_bytes:
                    self._rotate()
            if self._open is not None:
                self._open.flush()
            refused = len(lines) - stored
        if refused:
            self.dropped += refused
            log.error("client.spill.full", refused=refused, max_bytes=self.max_bytes, directory=str(self.directory))
        return stored

    def _open_segment(self) -> None:
        self._open_path = self.directory / f"{_PREFIX}{self._seq:012d}{_SUFFIX}"
        self._seq += 1
        self._open = open(self._open_path, "ab")
        self._open_bytes = 0
        self._open_count = 0

    def _rotate(self) -> None:
        """Close the open segment durably so it can be replayed (caller holds the lock)."""
        if self._open is None:
            return
        self._open.flush()
        os.fsync(self._open.fileno())
        self._open.close()
        assert self._open_path is not None
        self._closed.append(self._open_path)
        self._open = None
        self._open_path = None

    # replaying ----------------------------------------------------------------------------
    def pending(self) -> int:
        """Bytes waiting on disk (open and closed segments)."""
        return self._total

    def next_segment(self) -> tuple[Path, list[UsageEvent]] | None:
        """The oldest segment and its events (closing the open one if it is all there is)."""
        with self._lock:
            if not self._closed:
                self._rotate()
            if not self._closed:
                return None
            path = self._closed[0]
        events: list[UsageEvent] = []
        for n, line in enumerate(path.read_bytes().splitlines()):
            if not line:
                continue
            try:
                events.append(_decoder.decode(line))
            except msgspec.DecodeError as err:  # a torn last line after a crash
                log.warning("client.spill.bad_line", segment=path.name, line=n, error=str(err))
        return path, events

    def ack(self, path: Path) -> None:
        """The broker acknowledged every event of `path`: delete it."""
        with self._lock:
            size = path.stat().st_size if path.exists() else 0
            path.unlink(missing_ok=True)
            if path in self._closed:
                self._closed.remove(path)
            self._total -= size

    def close(self) -> None:
        """Make everything written durable; unsent events stay for the next start."""
        with self._lock:
            self._rotate()

    def _segment_paths(self) -> list[Path]:
        return sorted(self.directory.glob(f"{_PREFIX}*{_SUFFIX}"), key=self._seq_of)

    @staticmethod
    def _seq_of(path: Path) -> int:
        return int(path.name[len(_PREFIX) : -len(_SUFFIX)])
