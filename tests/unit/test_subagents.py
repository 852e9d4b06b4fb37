"""The sub-agent walk (`sinks.subagents`): inclusive = direct + each descendant once, cycles cut."""
from __future__ import annotations

import pytest

from sinks.subagents import Cost, Tree


def _tree(edges: list[tuple[tuple[str, str], tuple[str, str]]], nano: dict[tuple[str, str], int]) -> Tree:
    return Tree(edges, {node: Cost(1, 10 * n, n) for node, n in nano.items()})


def test_three_levels_add_up_and_a_leaf_adds_nothing() -> None:
    tree = _tree([(("A", "t1"), ("B", "t2")), (("B", "t2"), ("C", "t3")), (("B", "t2"), ("D", "t4"))],
                 {("B", "t2"): 20, ("C", "t3"): 300, ("D", "t4"): 4000})
    a, b, c = tree.inclusive("A", "agent"), tree.inclusive("B", "agent"), tree.inclusive("C", "agent")
    assert (a.cost, a.subagents) == (Cost(3, 43_200, 4320), {"B", "C", "D"})
    assert (b.cost.nano_usd, b.subagents) == (4300, {"C", "D"})
    assert (c.cost, c.subagents) == (Cost(), frozenset())
    assert tree.inclusive("t1", "task").cost.nano_usd == 4320  # the same tree by task id
    assert set(tree.roots("agent")) == {"A", "B"} and tree.edges == 3


def test_a_diamond_counts_the_shared_descendant_once() -> None:
    tree = _tree([(("A", "t"), ("B", "b")), (("A", "t"), ("C", "c")), (("B", "b"), ("D", "d")),
                  (("C", "c"), ("D", "d")), (("A", "t"), ("B", "b"))],  # and the same edge twice
                 {("B", "b"): 1, ("C", "c"): 10, ("D", "d"): 100})
    assert tree.inclusive("A", "agent").cost.nano_usd == 111


def test_cycles_are_cut_and_the_keys_own_nodes_never_count_twice() -> None:
    # A -> B -> A (another task of A) -> C, and B -> B (a self-loop)
    tree = _tree([(("A", "a1"), ("B", "b")), (("B", "b"), ("A", "a2")), (("A", "a2"), ("C", "c")),
                  (("B", "b"), ("B", "b")), (("C", "c"), ("A", "a1"))],
                 {("B", "b"): 10, ("A", "a2"): 1000, ("C", "c"): 100})
    a = tree.inclusive("A", "agent")
    assert a.cost.nano_usd == 110  # B and C; A's own a2 is in A's direct cost already
    assert a.subagents == {"B", "C"}
    b = tree.inclusive("B", "agent")
    assert b.cost.nano_usd == 1100 and b.subagents == {"A", "C"}  # A's a2 and C (a1 has no cost as a child here)


def test_a_child_in_the_parents_own_task_is_not_added_by_task() -> None:
    tree = _tree([(("A", "t1"), ("B", "t1")), (("B", "t1"), ("C", "t9"))], {("B", "t1"): 5, ("C", "t9"): 7})
    assert tree.inclusive("t1", "task").cost.nano_usd == 7  # B's t1 rows are t1's direct cost
    assert tree.inclusive("A", "agent").cost.nano_usd == 12


def test_only_agent_and_task_have_inclusive_cost() -> None:
    with pytest.raises(ValueError, match="agent or task"):
        _tree([], {}).inclusive("m", "model")
