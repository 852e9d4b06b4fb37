"""Masking secrets before anything is logged or shown (pure: used by log setup and settings).

Values under secret-looking keys are masked, and inside any string, whatever the key:
- the password of a URL's userinfo, `scheme://user:password@host` and `scheme://:password@host`.
  A password may hold `/`, `?` or `@` (unencoded, as people write them): it runs to the last
  `@` before the query (`?`) or fragment (`#`), or to the last `@` of the URL when none is
  before them. `host:port/...` without an `@` before its query is not taken for credentials;
- the values of secret-looking parameters, `name=value` with a name such as `password`,
  `token`, `key`, `secret`, `signature` or ending in `_token`, `-key`, ... (query strings,
  `key=value` connection strings, exception messages); the value runs to `&`, `#` or whitespace.
Masking errs on the side of hiding too much: a URL whose query holds an `@` and whose
password holds a `?` loses more than its password.
"""
from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

SECRET_KEYS = re.compile(
    r"(passw|secret|sasl_plain|api_key|apikey|control_key|authorization|credential|private_key|^key$|_key$|token_value)",
    re.IGNORECASE,
)
# `scheme://user:` (user may be empty) and the rest of the URL, up to whitespace
_URL_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s:/?#@\[\]]*:)(?P<rest>\S*)", re.IGNORECASE)
_PORT = re.compile(r"\d*(?:[/?#]|$)")  # `host:8080/...`: a port, not a password
_SECRET_PARAM = re.compile(
    r"(?<![\w.-])(?P<name>(?:[\w.-]*[_.-])?(?:password|passwd|passphrase|pwd|pass|secret|token|key|apikey|"
    r"accesskey|secretkey|signature|sig|credentials?|auth))=(?P<value>[^&#\s]*)",
    re.IGNORECASE,
)
MASK = "***"


def _mask_userinfo(m: re.Match[str]) -> str:
    rest = m["rest"]
    end = len(rest)
    for stop in ("?", "#"):
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    cut = rest.rfind("@", 0, end)  # the password runs to the last `@` before the query or fragment
    if cut < 0:
        if _PORT.match(rest):
            return m[0]  # `scheme://host:8080/...`, an `@` only in its query: no userinfo
        cut = rest.rfind("@")  # the password holds a `?` or `#`
    if cut < 0:
        return m[0]  # no userinfo
    return f"{m['head']}{MASK}{rest[cut:]}"


def redact_text(text: str) -> str:
    """`text` with URL passwords and secret-looking `name=value` parameters masked."""
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m['name']}={MASK}" if m["value"] else m[0], text)
    if "://" in text:
        text = _URL_USERINFO.sub(_mask_userinfo, text)
    return text


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: MASK if SECRET_KEYS.search(str(k)) else redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor; also used by tests through `capture_logs` configuration."""
    for key, value in list(event_dict.items()):
        event_dict[key] = MASK if SECRET_KEYS.search(key) else redact_value(value)
    return event_dict
