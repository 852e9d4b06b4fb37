"""GET a JSON answer from the worker's HTTP API (the CLI, the demo and the local stack share it),
and the API token every `/api/...` call carries.

The token is `BUDGETWARDEN_API_TOKEN` (`WorkerSettings.api_token`) or, when that is unset, the
one the worker generated at its first start into `<data-dir>/api-token` (mode 0600): the
worker creates it (`ensure_api_token`), every client on the machine reads it
(`read_api_token`). It is a secret: never log it, never put it in a URL's query.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from schemas.errors import BudgetwardenError

TOKEN_FILE = "api-token"


class ApiError(BudgetwardenError):
    """The API answered with an error (its message), or could not be reached."""


class ApiTokenError(BudgetwardenError):
    """The token file cannot be created or read."""


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def _read_token_file(path: Path, wait_s: float = 1.0) -> str | None:
    """The file's token; waits up to `wait_s` for a file another process has just created
    (O_EXCL makes it exist before its one write lands)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ApiTokenError(f"cannot read the API token in {path}: {exc.strerror}") from None
        if token or time.monotonic() >= deadline:
            return token or None
        time.sleep(0.02)


def read_api_token(data_dir: Path, configured: str | None = None) -> str | None:
    """The token a client sends: the configured one, else the worker's generated file, else None."""
    return configured or _read_token_file(token_path(data_dir))


def ensure_api_token(data_dir: Path, configured: str | None = None) -> tuple[str, bool]:
    """The worker's token and whether it was generated just now: the configured one, else the
    file's, else a new `secrets.token_urlsafe(32)` written to a file created with O_EXCL and
    mode 0600 (never readable by anyone else, not even for an instant)."""
    if configured:
        return configured, False
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        existing = _read_token_file(path)
        if not existing:
            raise ApiTokenError(f"{path} is empty: delete it (a new token is generated) "
                                "or set BUDGETWARDEN_API_TOKEN") from None
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise ApiTokenError(f"{path} is readable by other users: `chmod 600 {path}` "
                                "or delete it (a new token is generated)")
        return existing, False
    except OSError as exc:
        raise ApiTokenError(f"cannot create the API token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
        out.flush()
        os.fsync(out.fileno())
    return token, True


def get_json(base: str, path: str, timeout_s: float = 60.0, *, token: str | None = None, **params: Any) -> Any:
    """`base + path?params` as parsed JSON, with `Authorization: Bearer <token>` when a token
    is given; None-valued params are left out."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = f"{base.rstrip('/')}{path}" + (f"?{query}" if query else "")
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            body = json.loads(body).get("error", body)
        except (ValueError, AttributeError):
            pass
        raise ApiError(f"{path}: {body}") from None
    except urllib.error.URLError as exc:
        raise ApiError(f"cannot reach the worker at {base}: {exc.reason}") from None
