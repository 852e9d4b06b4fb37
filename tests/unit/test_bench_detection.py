"""`bench detection`: the labelled trace generator writes the documented format, and the bench
replays it through the client's fingerprints and the engine, beside the whole-prompt-hash rule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.bench.detection import run, score
from ops.bench.detection_traces import LOOP_KINDS, OK_KINDS, generate, read, write
from schemas.errors import InputError
from streams.client.fingerprint import fingerprint


def test_generated_traces_follow_the_format_and_prompts_grow() -> None:
    lines, labels = generate(18, loop_share=0.5, seed=3)
    assert {v["kind"] for v in labels.values()} == set(LOOP_KINDS) | set(OK_KINDS)
    assert {v["label"] for v in labels.values()} == {"loop", "ok"}
    for line in lines:
        assert {"agent_id", "task_id", "step", "ts_ms", "model", "provider", "messages", "usage", "status"} <= set(line)
        for call in line.get("tool_calls", []):
            assert set(call) == {"name", "arguments"} and isinstance(json.loads(call["arguments"]), dict)
    stuck = [line for line in lines if labels[line["task_id"]]["kind"] == "stuck_call"]
    start = labels[stuck[0]["task_id"]]["loop_start"]
    loop = [line for line in stuck if line["task_id"] == stuck[0]["task_id"] and line["step"] >= start + 1]
    assert len(loop[1]["messages"]) == len(loop[0]["messages"]) + 2  # one call and its result per turn
    prints = {(fingerprint(x["messages"], x["tool_calls"]).turn_hash, x["tool_calls"][0]["arguments"]) for x in loop}
    assert len(prints) == 1  # the same call on the same (normalized) answer, every turn


def test_files_round_trip_and_plain_labels_are_read(tmp_path: Path) -> None:
    lines, labels = generate(10, seed=5)
    write(lines, labels, str(tmp_path / "t.jsonl"), str(tmp_path / "l.json"))
    again, labels_again = read(str(tmp_path / "t.jsonl"), str(tmp_path / "l.json"))
    assert list(again) == lines and labels_again == labels
    plain = {tid: v["label"] for tid, v in labels.items()}  # the documented {task_id: "loop" | "ok"}
    tasks = {tid: {"killed": v["label"] == "loop", "at_step": 9, "rule": "loop_detected", "nano": 5}
             for tid, v in labels.items()}
    scored = score(tasks, plain)
    assert scored["recall"] == 100.0 and scored["false_kill_pct"] == 0.0 and scored["median_steps_to_kill"] == 10


def test_the_bench_kills_stuck_loops_spares_ok_tasks_and_beats_the_baseline() -> None:
    """Every loop kind but critic rephrasings (paraphrases: README, Known issues) is killed; no
    ok task is (a poll whose arguments change is killed, a job whose progress moves is not)."""
    lines, labels = generate(45, loop_share=1 / 3, seed=11)
    result = run(lambda: iter(lines), labels)
    per_task = result["per_task"]
    assert set(per_task) == set(labels)
    for tid, label in labels.items():
        t = per_task[tid]
        if label["kind"] in ("stuck_call", "tool_cycle", "retry_storm", "no_progress_poll"):
            assert t["killed"] and t["at_step"] >= label["loop_start"], (tid, t)
        if label["label"] == "ok":
            assert not t["killed"], (tid, t)
    assert result["false_kill_pct"] == 0.0 and result["recall"] > result["baseline_recall"]
    assert set(result) >= {"recall", "false_kill_pct", "median_steps_to_kill", "baseline_recall", "per_task"}


def test_a_trace_line_that_is_not_a_model_call_names_its_line() -> None:
    lines, labels = generate(2, seed=1)
    broken = [*lines[:3], {"task_id": lines[0]["task_id"], "agent_id": "a"}]
    with pytest.raises(InputError, match="trace line 4: NormalizeError: usage"):
        run(lambda: iter(broken), labels)
