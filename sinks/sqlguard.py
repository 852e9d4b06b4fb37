"""The read-only SQL endpoint's guards.

`check_read_only` is a cheap syntactic pre-check (one statement, a reading keyword first);
it is all a CLI can do before it hands the text to the owner's API. `check_select` is the
guard that decides: ClickHouse itself parses the statement (`EXPLAIN AST`, on the store's
read-only session, which parses and runs nothing), and only a plain SELECT passes: a
SELECT, WITH ... SELECT or a UNION/INTERSECT/EXCEPT of them, over tables of the store's
database (plus `system.one`, `system.tables`, `system.columns`), with no table function
(`file()`, `url()`, `remote()`, `s3()`, `Python()`, ... in any FROM or JOIN), no scalar
function that reads outside the tables (`file()`, `dictGet()`, `joinGet()`, ...), no
INTO OUTFILE, FORMAT or SETTINGS clause. `readonly = 1` on the session stays the second
guard: it stops writes to tables but not a SELECT's INTO OUTFILE or its table functions.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from schemas.errors import InputError
from sinks.store import Store

ALLOWED = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS")
# The other statements ClickHouse knows: refused as writes; any other first word is a typo.
_STATEMENTS = frozenset({
    "INSERT", "CREATE", "ALTER", "DROP", "TRUNCATE", "DELETE", "UPDATE", "RENAME", "ATTACH", "DETACH", "OPTIMIZE",
    "SET", "USE", "GRANT", "REVOKE", "KILL", "SYSTEM", "EXPLAIN", "CHECK", "EXCHANGE", "UNDROP", "BACKUP",
    "RESTORE", "WATCH", "MOVE", "REPLACE", "UNDO",
})
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)

SYSTEM_TABLES = frozenset({"system.one", "system.tables", "system.columns"})  # readable besides the project's
# Scalar functions that read something other than the query's tables (files, dictionaries,
# Join tables, the host's configuration); names compared in lower case, `dict*` by prefix.
DENIED_FUNCTIONS = frozenset({
    "file", "joinget", "joingetornull", "hascolumnintable", "catboostevaluate", "naivebayesclassifier",
    "getmacro", "getclienthttpheader", "getserversetting", "filesystemavailable", "filesystemcapacity",
    "filesystemunreserved",
})
_IN_FUNCTIONS = frozenset({"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin",
                           "globalnotnullin"})
_CHILDREN = re.compile(r" \(children \d+\)$")


class RefusedSQL(InputError):
    """A statement the read-only endpoint does not run; `field` is "sql"."""


def check_read_only(sql: str) -> str:
    """The statement without a trailing `;`, or RefusedSQL saying why (syntax only; see `check_select`).

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
        if keyword not in _STATEMENTS:
            close = difflib.get_close_matches(keyword, [*ALLOWED, *_STATEMENTS], n=1)
            raise RefusedSQL("sql", f"syntax error: {head[0] if head else ''!r} does not start a statement"
                             + (f" (did you mean {close[0]}?)" if close else ""))
        raise RefusedSQL("sql", f"read-only endpoint: {keyword or 'this statement'} is refused (SELECT, WITH, SHOW, DESCRIBE only)")
    return text


def check_select(store: Store, sql: str) -> str:
    """The statement to run, if ClickHouse parses it as a plain SELECT over the project's tables;
    otherwise RefusedSQL saying why. Runs `EXPLAIN AST` through `store` (its read-only session):
    call it where store calls belong (the store thread)."""
    text = check_read_only(sql)
    keyword = _COMMENTS.sub(" ", text).lstrip().split(None, 1)[0].upper()
    if keyword not in ("SELECT", "WITH"):
        raise RefusedSQL("sql", f"read-only endpoint: only a plain SELECT is allowed, not {keyword}")
    try:
        rows = store.query(f"EXPLAIN AST {text}", None, True)
        lines = [str(next(iter(row.values()))) for row in rows]
    except Exception as exc:  # noqa: BLE001 - ClickHouse's parse error, or a reply that is not an AST
        raise RefusedSQL("sql", _parse_failure(str(exc))) from None
    check_ast(parse_ast(lines), store.database, text)
    return text


_SYNTAX = re.compile(r"Syntax error: (?:failed at position \d+ )?(.*?)(?: \(SYNTAX_ERROR\))?$", re.S)


def _parse_failure(message: str) -> str:
    """ClickHouse's parse error as a syntax error, in its words (the position it gives counts
    `EXPLAIN AST `, so only the text at the failure is kept); any other failure as it came."""
    found = _SYNTAX.search(message.strip())
    if found is None:
        return f"ClickHouse cannot parse it: {message[:300]}"
    return f"syntax error at {found.group(1)[:300]}"


@dataclass
class Node:
    """One line of `EXPLAIN AST`: `<indent><kind> [<name>] [(alias ...)] [(children N)]`."""

    kind: str
    name: str
    children: list[Node] = field(default_factory=list)


def parse_ast(lines: list[str]) -> Node:
    """The tree of `EXPLAIN AST` text (one node per line, one space of indent per level).
    A node's name is its first word: identifiers print without quotes, literals escaped."""
    root = Node("", "")
    stack: list[tuple[int, Node]] = [(-1, root)]
    for line in lines:
        body = line.lstrip(" ")
        if not body:
            continue
        indent = len(line) - len(body)
        words = _CHILDREN.sub("", body).split(" ", 2)
        node = Node(words[0], words[1] if len(words) > 1 else "")
        while stack[-1][0] >= indent:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    if len(root.children) != 1:
        raise RefusedSQL("sql", "ClickHouse did not parse it as one statement")
    return root.children[0]


def check_ast(root: Node, database: str, sql: str) -> None:
    """RefusedSQL unless `root` is a plain SELECT that reads only `database`'s tables (see the module doc)."""
    if root.kind != "SelectWithUnionQuery":
        raise RefusedSQL("sql", f"read-only endpoint: only a plain SELECT is allowed, not {root.kind}")
    pending = [root]
    while pending:
        node = pending.pop()
        pending.extend(node.children)
        kind, name = node.kind, node.name
        if kind == "SelectWithUnionQuery" and len(node.children) != 1:
            raise RefusedSQL("sql", "INTO OUTFILE and FORMAT clauses are not allowed")
        if kind in ("Set", "SetQuery"):
            raise RefusedSQL("sql", "a SETTINGS clause is not allowed")
        if kind == "TableExpression":
            for child in node.children:
                if child.kind in ("Function", "TableFunction"):
                    raise RefusedSQL("sql", f"table function {child.name}() is not allowed")
        elif kind == "TableIdentifier":
            _check_table(name, database, sql)
        elif kind == "Function":
            lower = name.lower()
            if lower in DENIED_FUNCTIONS or lower.startswith("dict"):
                raise RefusedSQL("sql", f"function {name}() is not allowed")
            if lower in _IN_FUNCTIONS and node.children and len(node.children[0].children) == 2:
                right = node.children[0].children[1]  # `x IN db.table` reads that table
                if right.kind == "Identifier" and "." in right.name:
                    _check_table(right.name, database, sql)


def _check_table(name: str, database: str, sql: str) -> None:
    if name in SYSTEM_TABLES:
        return
    parts = name.split(".")
    if len(parts) == 2 and parts[0] == database:
        return
    if len(parts) == 1 and _is_cte(name, sql):
        return
    if len(parts) == 1:
        raise RefusedSQL("sql", f"table {name}: name its database ({database}.{name})")
    raise RefusedSQL("sql", f"table {name} is not in {database} (the endpoint reads only the project's tables)")


def _is_cte(name: str, sql: str) -> bool:
    """`name` is declared in a WITH clause of `sql` (`name AS (` ...): EXPLAIN AST does not print it."""
    pattern = rf"(?<![\w.])`?{re.escape(name)}`?\s+AS\s*\("
    return re.search(pattern, _COMMENTS.sub(" ", sql), re.I) is not None
