"""The read-only SQL endpoint's first guard (the second is `readonly = 1` on the session)."""
from __future__ import annotations

import re

from schemas.errors import InputError

ALLOWED = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


class RefusedSQL(InputError):
    """A statement the read-only endpoint does not run; `field` is "sql"."""


def check_read_only(sql: str) -> str:
    """The statement without a trailing `;`, or RefusedSQL saying why.

    Only one statement, and it must start with SELECT, WITH, SHOW or DESCRIBE. A `;`
    anywhere else (even inside a string literal) is refused rather than parsed.
    """
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise RefusedSQL("sql", "empty query")
    if ";" in text:
        raise RefusedSQL("sql", "only one statement is allowed")
    head = _COMMENTS.sub(" ", text).lstrip().split(None, 1)
    keyword = head[0].upper().rstrip("(") if head else ""
    if keyword not in ALLOWED:
        raise RefusedSQL("sql", f"read-only endpoint: {keyword or 'this statement'} is refused (SELECT, WITH, SHOW, DESCRIBE only)")
    return text
