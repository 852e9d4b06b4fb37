"""The dashboard's top-spenders panel in node against the stub DOM of test_dashboard_js: by agent
it asks for inclusive cost and shows it next to the agent's own; the share stays of own spend."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.unit.test_dashboard_js import APP_JS, HARNESS

TOP = HARNESS.split("const input")[0] + r"""
const rows = JSON.parse(process.argv[2]);
ctx.renderTop(rows);
console.log(JSON.stringify({ html: elements.top.innerHTML, agent: ctx.topQuery("agent"), user: ctx.topQuery("user") }));
"""


def test_top_by_agent_shows_inclusive_cost_beside_the_agents_own() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    rows = [{"key": "planner", "usd": "0.002500000", "inclusive_usd": "0.810000000", "subagents": 2, "events": 1,
             "tokens": 1000},
            {"key": "lone", "usd": "0.500000000", "inclusive_usd": "0.500000000", "subagents": 0, "events": 3,
             "tokens": 200_000}]
    proc = subprocess.run([node, "-e", TOP, str(APP_JS), json.dumps(rows)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["agent"].endswith("&inclusive=1") and "inclusive" not in out["user"]
    planner, lone = out["html"].split('<div class="rank"')[1:]
    assert "<b>$0.810</b>" in planner and "own $0.0025 + 2 sub-agents" in planner
    assert ">0%</span>" in planner and ">100%</span>" in lone  # shares of own spend: 0.0025 / 0.5025 and 0.5 / 0.5025
    assert "sub-agent" not in lone and 'style="width:100.0%"' in planner
