"""One line per kind of library complaint per window, not thousands.

While the broker is down aiokafka logs every failed connect and metadata retry: a worker wrote
67,726 such lines (7.5 MB) in a 12-second outage in CI, about 2,900 a second, so a long outage
fills the disk and buries every other line. The first line of a kind passes; the repeats of
that kind within `window_ms` are counted, and the first line after the window says how many
were dropped. A kind is the logger, the level and the message template (its arguments vary).
"""
from __future__ import annotations

import importlib
import logging

from schemas.clock import Clock, system_ms

WINDOW_MS = 10_000
NOISY_LIBRARIES = ("aiokafka",)


class RepeatFilter(logging.Filter):
    def __init__(self, window_ms: int = WINDOW_MS, clock: Clock = system_ms) -> None:
        super().__init__()
        self.window_ms = window_ms
        self.clock = clock
        self._kinds: dict[tuple[str, int, str], tuple[int, int]] = {}  # kind -> (window start, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        started, dropped = self._kinds.get(kind, (None, 0))
        if started is not None and now - started < self.window_ms:
            self._kinds[kind] = (started, dropped + 1)
            return False
        self._kinds[kind] = (now, 0)
        if dropped:
            # appended to the template: no '%' in it, so formatting with the record's args is unchanged
            record.msg = f"{record.msg} [{dropped} more like this in the last {self.window_ms // 1000} s]"
        return True


def limit_library_repeats(window_ms: int = WINDOW_MS) -> None:
    """Installs one RepeatFilter on every logger of the noisy libraries (a logger's filters apply
    only to the records it creates, so each module's logger gets it). Idempotent."""
    shared = RepeatFilter(window_ms)
    for library in NOISY_LIBRARIES:
        importlib.import_module(library)  # its modules' loggers exist once it is imported
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in NOISY_LIBRARIES:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RepeatFilter) for f in logger.filters):
                logger.addFilter(shared)
