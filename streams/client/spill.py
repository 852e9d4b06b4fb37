"""A bounded on-disk queue for usage events the broker has not acknowledged.

Events are appended as JSON lines to the open segment (`seg-<seq>.jsonl`); a segment is
closed (flushed and fsynced) when it reaches `segment_bytes` or when the publisher wants to
replay it. Closed segments are replayed oldest first and deleted only after the broker
acknowledged every event in them, so a crash between send and delete re-sends a segment
(at-least-once; the processor dedupes by `event_id`) but never loses one. Segments left by a
previous run are picked up at start; any other file in the directory (another name, a
directory with a segment's name) is left alone. The total size is capped: past `max_bytes`
new events are refused (counted in `dropped` and logged) instead of filling the disk.

Nothing here stops the publisher: a line that does not decode (torn by a crash, corrupted on
disk) costs only itself (logged with its 1-based line number, counted in `bad_lines`); a
segment that cannot be read (vanished, unreadable) is left where it is and skipped for this
run (`unreadable_segments`); a failing write or delete is logged, and the events a write
could not store are counted in `dropped`.

Thread-safe: the caller's thread appends when the in-memory queue is full while the
publisher's loop replays.
"""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import msgspec
import structlog

from schemas.codec import MAX_DEPTH, check_depth
from schemas.contract import TaskEnd, UsageEvent

log = structlog.get_logger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
_PREFIX, _SUFFIX = "seg-", ".jsonl"
_SEGMENT_NAME = re.compile(r"seg-(\d+)\.jsonl", re.ASCII)

_encoder = msgspec.json.Encoder()
Spilled = UsageEvent | TaskEnd  # a task scope's task_end spills with the usage around it
_decoder = msgspec.json.Decoder(Spilled)


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
        self.dropped = 0  # events refused: cap reached or the write failed
        self.bad_lines = 0  # lines skipped on replay because they did not decode
        self.unreadable_segments = 0  # segments skipped on replay because they could not be read
        self._lock = threading.Lock()
        existing, last_seq = self._scan()
        self._closed: list[Path] = [path for path, _ in existing]  # left by a previous run: replay them
        self._sizes: dict[Path, int] = dict(existing)  # bytes of each closed segment, counted in _total
        self._seq = last_seq + 1
        self._total = sum(self._sizes.values())
        self._open: BinaryIO | None = None
        self._open_path: Path | None = None
        self._open_bytes = 0
        self._open_count = 0

    # writing ------------------------------------------------------------------------------
    def append(self, events: Iterable[Spilled]) -> int:
        """Write events; returns how many were stored (the rest are dropped: cap reached or the
        write failed). Never raises for a disk error."""
        lines = [_encoder.encode(e) + b"\n" for e in events]
        if not lines:
            return 0
        failure: OSError | None = None
        with self._lock:
            stored = 0
            try:
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
            except OSError as err:  # disk full, directory gone, ...: drop, never raise on the caller's path
                failure = err
                self._rotate()  # what was written is replayed; a torn last line is skipped then
            refused = len(lines) - stored
        if refused:
            self.dropped += refused
            if failure is not None:
                log.error("client.spill.write_failed", refused=refused, error=repr(failure), directory=str(self.directory))
            else:
                log.error("client.spill.full", refused=refused, max_bytes=self.max_bytes, directory=str(self.directory))
        return stored

    def _open_segment(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{_PREFIX}{self._seq:012d}{_SUFFIX}"
        self._open = open(path, "ab")  # noqa: SIM115 - kept open across appends
        self._open_path = path
        self._seq += 1
        self._open_bytes = 0
        self._open_count = 0

    def _rotate(self) -> None:
        """Close the open segment durably so it can be replayed (caller holds the lock). Never raises."""
        handle, path = self._open, self._open_path
        if handle is None or path is None:
            return
        self._open = None
        self._open_path = None
        try:
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as err:
            log.error("client.spill.sync_failed", segment=path.name, error=repr(err))
        finally:
            try:
                handle.close()
            except OSError:
                pass
        if self._open_count:
            self._closed.append(path)
            self._sizes[path] = self._open_bytes
        else:  # nothing was written to it
            self._total -= self._open_bytes
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        self._open_bytes = 0
        self._open_count = 0

    # replaying ----------------------------------------------------------------------------
    def pending(self) -> int:
        """Bytes waiting on disk (open and closed segments)."""
        return self._total

    def next_segment(self) -> tuple[Path, list[Spilled]] | None:
        """The oldest readable segment and its events (closing the open one if it is all there
        is). Never raises for what is on disk: see the module docstring."""
        while True:
            with self._lock:
                if not self._closed:
                    self._rotate()
                if not self._closed:
                    if self._total and self._open is None:  # nothing left: never let pending() spin the publisher
                        self._total = 0
                    return None
                path = self._closed[0]
            try:
                data = path.read_bytes()
            except OSError as err:
                self._skip_unreadable(path, err)
                continue
            return path, self._decode(path, data)

    def _decode(self, path: Path, data: bytes) -> list[Spilled]:
        events: list[Spilled] = []
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                if line.count(b"{") + line.count(b"[") > MAX_DEPTH:
                    check_depth(line)  # msgspec would recurse into it
                events.append(_decoder.decode(line))
            except MemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - torn or corrupted: skip this line only
                self.bad_lines += 1
                log.warning("client.spill.bad_line", segment=path.name, line=number, error=str(err)[:200])
        return events

    def _skip_unreadable(self, path: Path, err: OSError) -> None:
        with self._lock:
            if path in self._closed:
                self._closed.remove(path)
            self._total -= self._sizes.pop(path, 0)
            self.unreadable_segments += 1
        log.error("client.spill.unreadable", segment=path.name, error=repr(err),
                  note="left on disk; retried at the next start")

    def ack(self, path: Path) -> None:
        """The broker acknowledged every event of `path`: delete it (a failed delete is logged;
        the segment is then re-sent at the next start, and deduplicated by event_id)."""
        with self._lock:
            if path in self._closed:
                self._closed.remove(path)
            self._total -= self._sizes.pop(path, 0)
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            log.error("client.spill.delete_failed", segment=path.name, error=repr(err))

    def close(self) -> None:
        """Make everything written durable; unsent events stay for the next start."""
        with self._lock:
            self._rotate()

    def _scan(self) -> tuple[list[tuple[Path, int]], int]:
        """The segment files left in the directory, oldest first, with their sizes, and the
        highest sequence number any entry's name uses (-1: none). Other names are ignored."""
        found: list[tuple[int, Path, int]] = []
        last = -1
        try:
            entries = list(os.scandir(self.directory))
        except OSError as err:
            log.error("client.spill.unreadable_directory", directory=str(self.directory), error=repr(err))
            return [], last
        for entry in entries:
            match = _SEGMENT_NAME.fullmatch(entry.name)
            if match is None:
                continue
            seq = int(match.group(1))
            last = max(last, seq)  # never reuse a name, even one a directory holds
            try:
                if not entry.is_file():
                    continue
                size = entry.stat().st_size
            except OSError:
                continue
            found.append((seq, Path(entry.path), size))
        found.sort()
        return [(path, size) for _, path, size in found], last
