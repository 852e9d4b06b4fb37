"""The SQL the project ships in `sinks/sql/*.sql`: named queries, the schema, the usage insert.

Kept as files so `budgetwarden sql` users can read and adapt them; loaded once each.
"""
from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def sql_text(name: str) -> str:
    """`sinks/sql/<name>.sql` as shipped."""
    return resources.files("sinks").joinpath(f"sql/{name}.sql").read_text()
