"""GET a JSON answer from the worker's HTTP API: the CLI, the demo and the local stack share it."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from schemas.errors import BudgetwardenError


class ApiError(BudgetwardenError):
    """The API answered with an error (its message), or could not be reached."""


def get_json(base: str, path: str, timeout_s: float = 60.0, **params: Any) -> Any:
    """`base + path?params` as parsed JSON; None-valued params are left out."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = f"{base.rstrip('/')}{path}" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
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
