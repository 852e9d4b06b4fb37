"""Sub-agent trees: an agent's or task's inclusive cost, itself plus every descendant's.

Pure (no I/O); `sinks.queries.top_inclusive` reads the edges and costs from ClickHouse. A node
is one (agent_id, task_id) of the usage rows; a row whose `parent_agent_id` is set makes the
edge (parent_agent_id, parent_task_id) -> (agent_id, task_id). The inclusive cost of a key (an
agent, or a task id) is its direct cost plus the direct cost of every node reachable from its
own nodes that is not its own: its own nodes are already in its direct cost, each descendant
counts once however many paths reach it (a diamond), and the walk never enters a node twice,
so a cycle (an agent that calls back into its caller) ends where it closes.

Why a walk in Python and not ClickHouse's `WITH RECURSIVE`: the recursive CTE enumerates
paths (a row per path, with the path's array to cut cycles), so diamonds multiply its rows,
while the walk visits each node once per key. On chains, where every node has one path, the
two give the same answers in comparable time (`budgetwarden bench subagents`, README Performance).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

Node = tuple[str, str]  # (agent_id, task_id)
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
    """The edges of one window, with each child node's direct cost in it. Nodes are numbered
    once (ints hash and compare cheaper than (agent, task) pairs in the walks)."""

    def __init__(self, edges: Iterable[tuple[Node, Node]], costs: Mapping[Node, Cost]) -> None:
        self._ids: dict[Node, int] = {}
        self.nodes: list[Node] = []
        self.children: list[list[int]] = []
        self.edges = 0
        for parent, child in edges:
            self.children[self._id(parent)].append(self._id(child))
            self.edges += 1
        self.costs = [costs.get(node, Cost()) for node in self.nodes]
        self._roots: dict[str, dict[str, list[int]]] = {}

    def _id(self, node: Node) -> int:
        found = self._ids.get(node)
        if found is None:
            found = self._ids[node] = len(self.nodes)
            self.nodes.append(node)
            self.children.append([])
        return found

    def roots(self, by: str) -> dict[str, list[int]]:
        """The nodes that have sub-agents, by the key that owns them (the keys whose inclusive
        cost can exceed their direct one)."""
        if by not in KEYS:
            raise ValueError(f"inclusive cost is by {' or '.join(KEYS)}, got {by!r}")
        found = self._roots.get(by)
        if found is None:
            found = self._roots[by] = {}
            for i, node in enumerate(self.nodes):
                if self.children[i]:
                    found.setdefault(owner(node, by), []).append(i)
        return found

    def reachable(self, roots: Iterable[int]) -> set[int]:
        """Every node reachable from `roots` by one edge or more, each once (cycles cut)."""
        children = self.children
        seen: set[int] = set()
        stack = [child for root in roots for child in children[root]]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(children[node])
        return seen

    def inclusive(self, key: str, by: str) -> Inclusive:
        """What `key`'s descendants (not its own nodes) add to its direct cost."""
        side = 0 if by == "agent" else 1
        nodes, costs = self.nodes, self.costs
        events = tokens = nano = 0
        agents: set[str] = set()
        for i in self.reachable(self.roots(by).get(key, ())):
            node = nodes[i]
            if node[side] != key:
                cost = costs[i]
                events, tokens, nano = events + cost.events, tokens + cost.tokens, nano + cost.nano_usd
                agents.add(node[0])
        return Inclusive(Cost(events, tokens, nano), frozenset(agents))
