"""Sub-agent trees: an agent's or task's inclusive cost, itself plus every descendant's.

Pure (no I/O); `sinks.queries.top_inclusive` reads the edges and costs from ClickHouse. A node
is one (agent_id, task_id) of the usage rows; a row whose `parent_agent_id` is set makes the
edge (parent_agent_id, parent_task_id) -> (agent_id, task_id). The inclusive cost of a key (an
agent, or a task id) is its direct cost plus the direct cost of every node reachable from its
own nodes that is not its own: its own nodes are already in its direct cost, each descendant
counts once however many paths reach it (a diamond), and the walk never enters a node twice,
so a cycle (an agent that calls back into its caller) ends where it closes.

Why a walk in Python and not a recursive CTE: the edge table is small (one row per sub-agent
task, not per call), chDB's `WITH RECURSIVE` needs a path array per row to cut cycles and
gives no visited set across roots, and the walk is exact by construction (README, Performance).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

Node = tuple[str, str]  # (agent_id, task_id)
By = Literal["agent", "task"]
KEYS: tuple[str, ...] = ("agent", "task")


class Cost(NamedTuple):
    events: int = 0
    tokens: int = 0
    nano_usd: int = 0


class Inclusive(NamedTuple):
    """What a key's descendants add to its direct cost, and which agents they are."""

    cost: Cost
    subagents: frozenset[str]


def owner(node: Node, by: str) -> str:
    """The key a node's cost is counted under: its agent or its task id."""
    return node[0] if by == "agent" else node[1]


class Tree:
    """The edges of one window, with each child node's direct cost in it."""

    def __init__(self, edges: Iterable[tuple[Node, Node]], costs: Mapping[Node, Cost]) -> None:
        self.children: dict[Node, list[Node]] = {}
        for parent, child in edges:
            self.children.setdefault(parent, []).append(child)
        self.costs = costs
        self._roots: dict[str, dict[str, list[Node]]] = {}

    def roots(self, by: str) -> dict[str, list[Node]]:
        """The nodes that have sub-agents, by the key that owns them (the keys whose inclusive
        cost can exceed their direct one)."""
        if by not in KEYS:
            raise ValueError(f"inclusive cost is by {' or '.join(KEYS)}, got {by!r}")
        found = self._roots.get(by)
        if found is None:
            found = self._roots[by] = {}
            for node in self.children:
                found.setdefault(owner(node, by), []).append(node)
        return found

    def reachable(self, roots: Iterable[Node]) -> set[Node]:
        """Every node reachable from `roots` by one edge or more, each once (cycles cut)."""
        seen: set[Node] = set()
        stack = [child for root in roots for child in self.children.get(root, ())]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.children.get(node, ()))
        return seen

    def inclusive(self, key: str, by: str) -> Inclusive:
        """What `key`'s descendants (not its own nodes) add to its direct cost."""
        descendants = [node for node in self.reachable(self.roots(by).get(key, ())) if owner(node, by) != key]
        costs = [self.costs.get(node, Cost()) for node in descendants]
        total = Cost(sum(c.events for c in costs), sum(c.tokens for c in costs), sum(c.nano_usd for c in costs))
        return Inclusive(total, frozenset(node[0] for node in descendants))
