"""The dashboard's own text and layout code, run in node against a stub DOM (no worker, no
browser): decision messages read as people write numbers, and the cost-per-task labels never
overlap, however close the marks sit (the bug: "p90" under "p99 = max")."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

APP_JS = Path(__file__).resolve().parents[2] / "sinks" / "web" / "app.js"

HARNESS = r"""
const vm = require("vm"), fs = require("fs");
const elements = {};
const stub = () => new Proxy(function () {}, {
  get: (t, k) => (k === Symbol.toPrimitive ? () => "" : k === "then" ? undefined : stub()),
  apply: () => stub(), set: () => true,
});
const element = (id) => (elements[id] = elements[id] || { id, innerHTML: "", clientWidth: 360,
  addEventListener() {}, classList: stub(), dataset: {}, setAttribute() {} });
const ctx = {
  document: { getElementById: element, querySelector: () => null, querySelectorAll: () => [], body: { classList: stub() } },
  window: stub(), location: { hash: "", pathname: "/", search: "" }, history: stub(), sessionStorage: stub(),
  fetch: () => new Promise(() => {}), setInterval() {}, setTimeout() {}, console, Intl, Math, Number, String,
  Date, Promise, Map, Set, JSON, Object, Array, parseFloat, URLSearchParams, AbortController: function () { return stub(); },
};
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), ctx);
const input = JSON.parse(process.argv[2]);
const out = { messages: input.messages.map((m) => ctx.humanize(m)), ladders: [] };
for (const marks of input.marks) {
  ctx.renderTasks({ p50_usd: marks[0], p90_usd: marks[1], p99_usd: marks[2], max_usd: marks[3], tasks: 1 }, []);
  out.ladders.push(elements.tasks.innerHTML);
}
console.log(JSON.stringify(out));
"""


def run(messages: list[str], marks: list[list[str]]) -> dict[str, list[str]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    proc = subprocess.run([node, "-e", HARNESS, str(APP_JS), json.dumps({"messages": messages, "marks": marks})],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_decision_messages_show_dollars_and_separators() -> None:
    out = run([
        "Agent batch-summarizer is over its daily budget: 1003942 tokens of 1000000 tokens",
        "User u-4 is over its daily budget: $0.520477500 of $0.500000000",
        "Agent loop-agent may be looping: 15915 tokens/task in task loop-agent-t00005 on 2026-12-05",
        "tiny: $0.000450000, zero: $0.000000000, big: $1234.5",
    ], [])
    assert out["messages"] == [
        "Agent batch-summarizer is over its daily budget: 1,003,942 tokens of 1,000,000 tokens",
        "User u-4 is over its daily budget: $0.52 of $0.50",
        "Agent loop-agent may be looping: 15,915 tokens/task in task loop-agent-t00005 on 2026-12-05",
        "tiny: $0.00045, zero: $0.00, big: $1,234.50",
    ]


def test_cost_per_task_labels_never_overlap() -> None:
    cases = [["0.067", "0.558", "1.29", "1.81"], ["0.05", "1.0", "1.01", "1.02"], ["1", "1", "1", "1"],
             ["0.001", "0.002", "50", "51"]]
    for marks, svg in zip(cases, run([], cases)["ladders"]):
        labels = sorted((float(x), name) for x, name in re.findall(r'<text x="([\d.e-]+)"[^>]*>(\w+)</text>', svg))
        assert [name for _, name in labels] == ["p50", "p90", "p99", "max"], (marks, svg)
        for (x1, a), (x2, b) in zip(labels, labels[1:]):
            half_widths = (len(a) + len(b)) * 6.6 / 2
            assert x2 - x1 >= half_widths, (marks, a, b, x1, x2)  # 11px monospace: 6.6px a character
        assert labels[0][0] >= 0 and labels[-1][0] <= 360  # inside the panel
