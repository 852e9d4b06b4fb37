"""Processes: liveness and process-group signals (the local stack, the worker, and the CLI finding the store owner)."""
from __future__ import annotations

import os
import signal
import time


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie child of ours is reaped and counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return False


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def stop_group(pid: int, timeout_s: float) -> bool:
    """SIGTERM the process group, SIGKILL after `timeout_s`; False when it was not running."""
    if not pid_alive(pid):
        return False
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        kill_group(pid)
    return True


def kill_group(pid: int) -> None:
    signal_group(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)
