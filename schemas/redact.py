"""Masking secrets before anything is logged or shown (pure: used by log setup and settings).

Values under secret-looking keys are masked, and credentials inside URLs
(`scheme://user:password@host`) are stripped, whatever the key.
"""
from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

SECRET_KEYS = re.compile(
    r"(passw|secret|sasl_plain|api_key|apikey|control_key|authorization|credential|private_key|^key$|_key$|token_value)",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.IGNORECASE)
MASK = "***"


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", value)
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
