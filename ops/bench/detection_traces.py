"""Labelled agent traces for `bench detection`: loops, and legitimate work that looks like one.

A trace is JSON Lines, one model call per line, in the format of issue 17: `agent_id`,
`task_id`, `step`, `ts_ms`, `model`, `provider`, `messages` (OpenAI chat format: the whole
conversation sent, so it grows by the assistant's tool call and the tool's result every turn),
`tool_calls` (the calls the model asked for in its response: `name`, `arguments` as a JSON
string), `usage` (the provider's usage object) and `status`. A label file is one JSON object,
`{task_id: "loop" | "ok"}`; the generator writes `{task_id: {"label", "kind", "loop_start"}}`,
`loop_start` being the first step of the loop (steps to a kill are counted from it).

Loops (label `loop`), each after a few ordinary steps:
- `stuck_call`: the same tool call with the same arguments, the same answer but for timestamps
  and request ids (a deploy still pending, a search that finds nothing new);
- `tool_cycle`: a block of 2-4 calls (search, open, summarize...) repeated with the same arguments;
- `retry_storm`: the model call itself fails again and again (`error` / `retry`), the same prompt
  resent each time;
- `no_progress_poll`: polling a job with arguments that change (wait time, attempt, since) and
  an answer that does not;
- `rephrase_loop`: no tools; a critic asks again for the same fix in other words every turn.
Legitimate look-alikes (label `ok`):
- `poll_until_done`: the same status call until a job finishes; the answer moves through
  stages, each lasting a geometric number of polls (mean 2.5), with progress numbers changing;
- `batch_similar`: one task classifying 10-40 tickets with the same instruction, one per turn;
- `long_research`: 15-60 varied searches, page reads and notes, an occasional page read twice;
- `one_tool_many_args`: one tool (read_file, write_file answering the same acknowledgement,
  listing pages) called 10-50 times with other arguments;
and 10% of them meet one or two transient errors that a retry fixes.

Loops that nothing stops run on for 30-80 more calls (a runaway agent runs for hours).
"""
from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

LOOP_KINDS = ("stuck_call", "tool_cycle", "retry_storm", "no_progress_poll", "rephrase_loop")
OK_KINDS = ("poll_until_done", "batch_similar", "long_research", "one_tool_many_args")
MODELS = (("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-sonnet", "anthropic"),
          ("claude-3-5-haiku", "anthropic"))
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

WORDS = (
    "account agent answer api balance batch billing build cache call change charge check client cloud code "
    "config contract cost customer data database deadline deploy design detail device document domain draft "
    "email error estimate event export feature field file filter forecast format growth guide incident index "
    "invoice issue item job key latency launch ledger limit list log market memory metric migration model "
    "module network node note order owner package page partner patch payment plan platform policy pool price "
    "process product profile project query queue quota rate record refund region release report request "
    "revenue review risk role rollout schema score search segment server service session signal source "
    "spend stage status storage stream summary supplier support table target task team test ticket timeline "
    "token tool trace traffic trend update usage user vendor version volume warning window workflow"
).split()
VERBS = ("shows", "reports", "lists", "describes", "compares", "explains", "tracks", "mentions", "covers")
TOPICS = ("EU data residency rules", "Q3 revenue by region", "churn drivers for SMB customers",
          "latency regressions after the 4.2 release", "supplier risk in APAC", "GPU pricing trends",
          "competitor pricing pages", "refund policy changes", "the billing migration plan",
          "incident 2291 root cause", "onboarding funnel drop-off", "carbon reporting requirements")


def _sentence(rng: random.Random, n: int = 12) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    words.insert(rng.randrange(1, n), rng.choice(VERBS))
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng, rng.randint(8, 16)) for _ in range(sentences))


def _stamp(ts_ms: int) -> str:
    s = ts_ms // 1000
    return f"2026-01-{1 + s // 86400 % 28:02d}T{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z"


@dataclass
class Task:
    """One task's calls as they are built: the conversation, the lines, the clock."""

    rng: random.Random
    agent_id: str
    task_id: str
    ts_ms: int
    model: str
    provider: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)

    def _usage(self, status: str) -> dict[str, int]:
        prompt = sum(len(m.get("content") or "") + 60 * len(m.get("tool_calls") or []) for m in self.messages) // 4 + 40
        if status == "error":
            prompt = out = 0  # refused before any token was processed (429, 500): nothing billed
        else:
            out = self.rng.randint(20, 60) if status == "retry" else self.rng.randint(30, 400)
        if self.provider == "anthropic":
            return {"input_tokens": prompt, "output_tokens": out}
        return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}

    def call(self, calls: list[tuple[str, dict[str, Any]]] | None, status: str = "ok") -> None:
        """One model call with the conversation so far; the model answers with `calls`."""
        line: dict[str, Any] = {
            "agent_id": self.agent_id, "task_id": self.task_id, "step": len(self.lines), "ts_ms": self.ts_ms,
            "model": self.model, "provider": self.provider, "messages": list(self.messages),
            "usage": self._usage(status), "status": status}
        if calls:
            line["tool_calls"] = [{"name": n, "arguments": json.dumps(a)} for n, a in calls]
        self.lines.append(line)
        self.ts_ms += self.rng.randint(1_500, 12_000)

    def step(self, name: str, args: dict[str, Any], result: str, status: str = "ok") -> None:
        """The model asks for one tool call; the tool's result joins the conversation."""
        self.call([(name, args)], status)
        call_id = f"call_{uuid.UUID(int=self.rng.getrandbits(128)).hex[:24]}"
        self.messages += [
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": call_id, "type": "function",
                             "function": {"name": name, "arguments": json.dumps(args)}}]},
            {"role": "tool", "tool_call_id": call_id, "content": result}]

    def say(self, user: str) -> None:
        """A model call that answers in text; `user` is the next user turn."""
        self.call(None)
        self.messages += [{"role": "assistant", "content": _text(self.rng, 2)}, {"role": "user", "content": user}]

    def transient_errors(self) -> None:
        for _ in range(self.rng.randint(1, 2)):
            self.call(None, self.rng.choice(("error", "retry")))

    def ids(self) -> str:
        return f"req {uuid.UUID(int=self.rng.getrandbits(128))} at {_stamp(self.ts_ms)}"


def _research_step(t: Task) -> None:
    rng = t.rng
    kind = rng.random()
    if kind < 0.4:
        q = f"{rng.choice(TOPICS)} {rng.choice(WORDS)} {rng.choice(WORDS)}"
        hits = "\n".join(f"{i + 1}. {_sentence(rng, 6)} https://{rng.choice(WORDS)}.example/{rng.getrandbits(32):x}"
                         for i in range(rng.randint(3, 5)))
        t.step("web_search", {"query": q}, hits)
    elif kind < 0.8:
        url = f"https://{rng.choice(WORDS)}.example/{rng.choice(WORDS)}/{rng.getrandbits(24):x}"
        t.step("open_url", {"url": url}, _text(rng, rng.randint(3, 8)))
    else:
        t.step("save_note", {"title": f"{rng.choice(WORDS)} {rng.choice(WORDS)}", "body": _sentence(rng)},
               f"saved note {rng.getrandbits(20)}")


def _start(rng: random.Random, agent: str, task_id: str, ts_ms: int, goal: str) -> Task:
    model, provider = rng.choice(MODELS)
    t = Task(rng, agent, task_id, ts_ms, model, provider)
    t.messages = [{"role": "system", "content": f"You are {agent}, an autonomous agent with tools. " + _text(rng, 2)},
                  {"role": "user", "content": goal}]
    return t


# --- loops ---------------------------------------------------------------------------------------


def _stuck_call(t: Task, n: int) -> None:
    rng = t.rng
    build = rng.randint(100, 9999)
    name, args, answer = rng.choice((
        ("deploy_status", {"build": build}, f"build {build}: pending, 0 of 3 replicas ready"),
        ("web_search", {"query": rng.choice(TOPICS)}, "No new results for this query."),
        ("run_sql", {"sql": f"SELECT count(*) FROM {rng.choice(WORDS)}_events"},
         "Error: relation does not exist (SQLSTATE 42P01)"),
    ))
    for _ in range(n):
        t.step(name, args, f"{answer} ({t.ids()})")


def _tool_cycle(t: Task, n: int) -> None:
    rng = t.rng
    period = rng.randint(2, 4)
    block = [("web_search", {"query": rng.choice(TOPICS)}), ("open_url", {"url": f"https://{rng.choice(WORDS)}.example/a"}),
             ("summarize", {"style": "bullets"}), ("save_note", {"title": "draft"})][:period]
    answers = [_text(rng, 2) for _ in block]
    for i in range(n):
        name, args = block[i % period]
        t.step(name, args, f"{answers[i % period]} ({t.ids()})")


def _retry_storm(t: Task, n: int) -> None:
    for _ in range(n):
        t.call([("open_url", {"url": "https://api.example/report"})], t.rng.choice(("error", "error", "retry")))


def _no_progress_poll(t: Task, n: int) -> None:
    rng = t.rng
    job = f"job-{rng.getrandbits(32):x}"
    vary = rng.choice(("wait_s", "attempt", "since"))
    for i in range(n):
        value: Any = {"wait_s": 10 * (i + 1), "attempt": i + 1, "since": _stamp(t.ts_ms)}[vary]
        t.step("get_job_status", {"job_id": job, vary: value}, f"{job}: queued, position 4 in queue ({t.ids()})")


_CRITIC = (
    ("The draft", "Your answer", "This version", "The summary"),
    ("still does not include", "is still missing", "again leaves out", "still lacks"),
    ("the revenue figures for Q3", "the Q3 revenue numbers", "the third quarter revenue figures"),
    ("Please revise it and add them.", "Rewrite it so they are included.", "Add them and try again.",
     "Please fix this and add them."),
    ("Keep the rest of the structure.", "Do not change the other sections.", "Leave the other parts as they are.", ""),
)


def _rephrase_loop(t: Task, n: int) -> None:
    for _ in range(n):
        t.say(" ".join(x for x in (t.rng.choice(part) for part in _CRITIC) if x))


# --- legitimate look-alikes ------------------------------------------------------------------------


def _poll_until_done(t: Task) -> None:
    rng = t.rng
    job = f"job-{rng.getrandbits(32):x}"
    t.step("submit_job", {"kind": rng.choice(("export", "backfill", "reindex")), "table": rng.choice(WORDS)},
           f"submitted {job}")
    stages = ["queued", "running: reading input", "running: transforming rows", "running: writing output",
              "running: verifying checksums"][: rng.randint(2, 5)]
    progress = 0
    for stage in stages:
        polls = 1
        while rng.random() > 0.4:  # geometric, mean 2.5 polls per stage
            polls += 1
        for _ in range(polls):
            progress = min(99, progress + rng.randint(1, 9))
            t.step("get_job_status", {"job_id": job},
                   f"{job}: {stage}, {progress}% done, {rng.randint(1, 900)} s elapsed ({t.ids()})")
    t.step("get_job_status", {"job_id": job}, f"{job}: succeeded, {rng.randint(1000, 90000)} rows written")
    t.call(None)


def _batch_similar(t: Task) -> None:
    rng = t.rng
    for i in range(rng.randint(10, 40)):
        t.say(f"Classify the following support ticket as billing, bug, feature request or account. "
              f"Answer with one label. Ticket #{rng.randint(1000, 99999)}: {_text(rng, rng.randint(1, 3))}")


def _long_research(t: Task) -> None:
    rng = t.rng
    for _ in range(rng.randint(15, 60)):
        earlier = [line for line in t.lines if line.get("tool_calls")]
        if earlier and rng.random() < 0.05:  # read a page again (the same call, the same page)
            old = rng.choice(earlier)
            name, args = old["tool_calls"][0]["name"], json.loads(old["tool_calls"][0]["arguments"])
            t.step(name, args, _text(rng, 3))
            continue
        _research_step(t)
    t.call(None)


def _one_tool_many_args(t: Task) -> None:
    rng = t.rng
    kind = rng.random()
    root = rng.choice(("src", "lib", "docs", "services/api"))
    if kind < 0.35:
        for _ in range(rng.randint(10, 50)):
            path = f"{root}/{rng.choice(WORDS)}_{rng.choice(WORDS)}.py"
            t.step("read_file", {"path": path}, f"# {path}\n" + _text(rng, rng.randint(2, 6)))
    elif kind < 0.7:  # writes that all answer the same acknowledgement
        for _ in range(rng.randint(10, 50)):
            t.step("write_file", {"path": f"{root}/{rng.choice(WORDS)}_{rng.choice(WORDS)}.md",
                                  "content": _text(rng, 2)}, f"ok: {rng.randint(200, 4000)} bytes written")
    else:
        for page in range(1, rng.randint(10, 50) + 1):
            rows = "\n".join(f"- {_sentence(rng, 5)}" for _ in range(5))
            t.step("list_tickets", {"status": "open", "page": page}, f"page {page}:\n{rows}")
    t.call(None)


LOOPS = {"stuck_call": _stuck_call, "tool_cycle": _tool_cycle, "retry_storm": _retry_storm,
         "no_progress_poll": _no_progress_poll, "rephrase_loop": _rephrase_loop}
OKS = {"poll_until_done": _poll_until_done, "batch_similar": _batch_similar, "long_research": _long_research,
       "one_tool_many_args": _one_tool_many_args}


def generate(tasks: int = 1_000, loop_share: float = 0.3, seed: int = 17) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(trace lines, labels): `tasks` tasks, `loop_share` of them loops, kinds in turn."""
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    labels: dict[str, Any] = {}
    n_loops = round(tasks * loop_share)
    for i in range(tasks):
        loop = i < n_loops
        kind = LOOP_KINDS[i % len(LOOP_KINDS)] if loop else OK_KINDS[i % len(OK_KINDS)]
        agent = f"{kind.split('_')[0]}-agent-{i % 7}"
        task_id = f"{'L' if loop else 'K'}{i:05d}-{kind}"
        t = _start(rng, agent, task_id, START_MS + i * 60_000, f"Research {rng.choice(TOPICS)} and report.")
        if loop:
            for _ in range(rng.randint(1, 6)):
                _research_step(t)
            start = len(t.lines)
            LOOPS[kind](t, rng.randint(30, 80))
            labels[task_id] = {"label": "loop", "kind": kind, "loop_start": start}
        else:
            if rng.random() < 0.1:
                t.transient_errors()
            OKS[kind](t)
            labels[task_id] = {"label": "ok", "kind": kind, "loop_start": None}
        lines += t.lines
    return lines, labels


def write(lines: list[dict[str, Any]], labels: dict[str, Any], traces_path: str, labels_path: str) -> None:
    with open(traces_path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    with open(labels_path, "w", encoding="utf-8") as f:
        json.dump(labels, f, indent=1)


def read(traces_path: str, labels_path: str) -> tuple[Iterator[dict[str, Any]], dict[str, Any]]:
    """The trace lines (streamed) and the labels of files in the documented format."""
    with open(labels_path, encoding="utf-8") as f:
        labels = json.load(f)

    def lines() -> Iterator[dict[str, Any]]:
        with open(traces_path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                if raw.strip():
                    try:
                        yield json.loads(raw)
                    except ValueError as err:
                        raise ValueError(f"{traces_path} line {n}: not JSON ({err})") from None

    return lines(), labels
