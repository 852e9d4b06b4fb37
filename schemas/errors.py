"""One error root for the project, and one shape for every error about bad input.

Catch `BudgetwardenError` to catch anything this project raises on purpose. Input errors
(a message, a usage object, a rules file, a policy, a CLI flag, an HTTP body) carry the
`field` that is wrong and the `reason`, so callers can show or dead-letter them apart.
"""
from __future__ import annotations


class BudgetwardenError(Exception):
    """The root of every error the project raises on purpose."""


class InputError(BudgetwardenError, ValueError):
    """Input that is not acceptable; `field` names where (a JSON path, a flag, a key), `reason` why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class BadInput(InputError):
    """A message that is not valid contract v1; `field` is a JSON path like `events[3].ts_ms`."""


class NormalizeError(InputError):
    """A provider's usage object that cannot be normalized into the canonical buckets."""


class ConfigError(InputError):
    """The rules file or a policy is invalid."""


class PolicyError(InputError):
    """Command-line flags that do not make one valid policy; `field` is the flag."""
