"""`budgetwarden bench ...`: benchmarks that print measured numbers.

Subcommands: `sink`, `contention`, `scale` and `subagents` (chDB), `client`, `processor`, `all` (every benchmark,
then the soak, into bench/), `soak`, and the fault runs `rebalance` and `faults`. Each imports its `ops.bench` module when it runs, so
the bench extra (matplotlib, psutil) is only needed for the command being run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import msgspec
import typer

from ops.commands.common import console, err_console, fail

__all__ = ["register"]

bench_app = typer.Typer(help="Benchmarks that print measured numbers (never timed tests).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


# Options more than one benchmark takes.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Use this broker instead of a throwaway one."),
]
Rate = Annotated[int, typer.Option("--rate", min=1, help="Soak load, events/s.")]
Agents = Annotated[int, typer.Option("--agents", min=1, help="Simulated agents in the soak load.")]


def progress(message: str) -> None:
    err_console.print(f"[dim]… {message}[/dim]", highlight=False)


def emit_json(result: Any) -> None:
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


# --- sink and chDB -----------------------------------------------------------------------


@bench_app.command("sink")
def bench_sink(
    rows: Annotated[int, typer.Option("--rows", min=1000, help="Events through Kafka -> writer -> chDB.")] = 300_000,
    query_rows: Annotated[int, typer.Option("--query-rows", min=0, help="Events generated in chDB for the query timings (0 skips).")] = 10_000_000,
    per_message: Annotated[int, typer.Option("--per-message", min=1, max=5000, help="Events per Kafka message (1 = singles; >1 = usage_batch envelopes).")] = 1,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Sink and bare insert alternate this many times; medians are reported.")] = 3,
    bootstrap: BootstrapOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Rows/s from Kafka into chDB through the writer vs one bare INSERT; attribution query times."""
    from ops.bench.sink import run

    result = run(rows, query_rows, per_message, bootstrap, progress, rounds)
    if as_json:
        emit_json(result)
        return
    for i, r in enumerate(result["rounds"], 1):
        print(f"round {i}: sink {r['sink_rows_per_s']:>9,} rows/s, bare {r['bare_insert_rows_per_s']:>9,} rows/s, "
              f"ratio {r['ratio_vs_bare']}")
    print(f"sink:  {result['sink_rows_per_s']:>10,} rows/s  (median; {result['rows']:,} rows, {per_message} event(s)/message)")
    print(f"bare:  {result['bare_insert_rows_per_s']:>10,} rows/s  (median; one INSERT of the same rows)")
    print(f"ratio: {result['ratio_vs_bare']} x bare (median of the rounds' ratios)   "
          "targets: >= 100,000 rows/s and >= 0.7 x bare")
    for name, seconds in result["query_seconds"].items():
        print(f"  {name:<26} {seconds:>7.3f} s over {result.get('query_rows', 0):,} events")


@bench_app.command("contention")
def bench_contention(
    sizes: Annotated[str, typer.Option("--sizes", help="Rows per insert, comma-separated.")] = "10000,100000",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Inserts per size per round.")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="The three conditions alternate this many times.")] = 3,
    as_json: JsonFlag = False,
) -> None:
    """ms per chDB insert alone, next to the writer's decode loop on a thread, and next to it in another process."""
    from ops.bench.contention import CONDITIONS, run

    try:
        rows = [int(s) for s in sizes.split(",")]
    except ValueError:
        fail(f"--sizes: {sizes!r} is not a comma-separated list of row counts")
    if min(rows) < 1:
        fail("--sizes: every row count must be at least 1")
    result = run(rows, repeats, rounds, progress)
    if as_json:
        emit_json(result)
        return
    ms = result["ms_per_call"]
    print(f"{'ms per call':<16}" + "".join(f"{c:>10}" for c in CONDITIONS))
    for name in ms["alone"]:
        print(f"{name:<16}" + "".join(f"{ms[c][name]:>10}" for c in CONDITIONS))


@bench_app.command("subagents")
def bench_subagents(
    events: Annotated[int, typer.Option("--events", min=1000, help="Events generated inside chDB (20 a task, chains of ten tasks).")] = 2_000_000,
    as_json: JsonFlag = False,
) -> None:
    """Inclusive cost over sub-agent chains in chDB: the edge query, the walk, top --inclusive, and a recursive CTE doing the same."""
    from ops.bench.subagents import run

    result = run(events, progress)
    if as_json:
        emit_json(result)
        return
    print(f"{result['events']:,} events, {result['tasks']:,} tasks, {result['edges']:,} sub-agent edges "
          f"({result['parent_agents']:,} parent agents)")
    for name in ("top_agent_direct_ms", "edges_ms", "walk_every_agent_ms", "walk_every_task_ms", "top_inclusive_agent_ms",
                 "top_inclusive_task_ms", "recursive_cte_every_task_ms"):
        print(f"  {name:<30} {result[name]:>9,.1f} ms")
    print(f"recursive CTE's answer equals the walk's: {result['cte_equals_walk']}; top --inclusive equals "
          f"ranking every key: {result['top_inclusive_equals_brute_force']}")


@bench_app.command("scale")
def bench_scale(
    events: Annotated[int, typer.Option("--events", min=1000, help="Events generated inside chDB (plus 1% duplicates).")] = 100_000_000,
    as_json: JsonFlag = False,
) -> None:
    """A month of a 1,000-agent fleet generated in chDB: every dashboard and attribution query cold and warm, peak RSS."""
    from ops.bench.scale import run

    result = run(events, progress)
    if as_json:
        emit_json(result)
        return
    print(f"{result['events']:,} events (+1% duplicates) over 30 days: generated in {result['generate_ms'] / 1000:.1f} s, "
          f"rollups built in {result['rollup_build_ms'] / 1000:.1f} s")
    for name, warm in result["query_ms"].items():
        print(f"  {name:<28} cold {result['query_ms_cold'][name]:>9,.1f} ms   warm {warm:>9,.1f} ms")
    print(f"dashboard max {result['dashboard_ms_max']:,.1f} ms (target <= 300)   attribution max "
          f"{result['attribution_ms_max']:,.1f} ms (target <= 2,000)   peak RSS {result['rss_peak_mb']:,.0f} MB (target <= 8,192)")


# --- client and processor ----------------------------------------------------------------


@bench_app.command("client")
def bench_client(
    calls: Annotated[int, typer.Option("--calls", min=1000, help="record() calls timed.")] = 100_000,
    events: Annotated[int, typer.Option("--events", min=1000, help="Events published for the rate.")] = 200_000,
    kills: Annotated[int, typer.Option("--kills", min=1, help="kill_task commands timed.")] = 50,
    bootstrap: BootstrapOption = None,
    as_json: JsonFlag = False,
) -> None:
    """p50/p99 µs added by record(), events/s one client publishes, kill latency p50/p99 ms."""
    from ops.bench.client import run

    result = run(calls, events, kills, bootstrap, progress)
    if as_json:
        emit_json(result)
        return
    print(f"record():  p50 {result['record_p50_us']} µs   p99 {result['record_p99_us']} µs   "
          f"(target p99 < 100 µs; {result['record_calls']:,} calls)")
    print(f"publish:   {result['publish_eps']:,} events/s acknowledged ({result['publish_events']:,} events)")
    print(f"kill:      p50 {result['kill_latency_p50_ms']} ms   p99 {result['kill_latency_p99_ms']} ms   "
          f"(command produced -> TaskKilled caught; {result['kills']} kills; target < 1000 ms)")


@bench_app.command("ingest")
def bench_ingest(
    spans: Annotated[int, typer.Option("--spans", min=1000, help="GenAI spans posted to /v1/traces.")] = 200_000,
    events: Annotated[int, typer.Option("--events", min=1000, help="Events posted to /v1/usage, and published by the client.")] = 200_000,
    batch: Annotated[int, typer.Option("--batch", min=1, max=5000, help="Spans or events per HTTP request.")] = 1000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="HTTP requests in flight.")] = 4,
    bootstrap: BootstrapOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Spans/s through the OTLP receiver and events/s through /v1/usage to the topic (acknowledged),
    next to the Python client's publisher in the same run."""
    from ops.bench.ingest import run

    result = run(spans, events, batch, concurrency, bootstrap, progress)
    if as_json:
        emit_json(result)
        return
    print(f"otlp:    {result['otlp_spans_per_s']:>9,} spans/s   ({result['otlp_spans']:,} spans, /v1/traces protobuf)")
    print(f"http:    {result['http_events_per_s']:>9,} events/s  ({result['http_events']:,} events, /v1/usage JSON Lines)")
    print(f"client:  {result['client_events_per_s']:>9,} events/s  ({result['client_events']:,} events, BudgetClient)")
    print(f"({result['batch']} per request, {result['concurrency']} in flight; target: each >= 20,000/s)")


@bench_app.command("admission")
def bench_admission(
    agents: Annotated[int, typer.Option("--agents", min=1, help="Agents sharing the budget.")] = 50,
    limit: Annotated[int, typer.Option("--limit", min=10_000, help="The shared daily budget, tokens.")] = 5_000_000,
    feedback_ms: Annotated[int, typer.Option("--feedback-ms", min=0, help="Usage -> processor/ledger delay.")] = 200,
    network_ms: Annotated[int, typer.Option("--network-ms", min=0, help="One way: admission request, grant, pause.")] = 5,
    overrun_pct: Annotated[float, typer.Option("--overrun-pct", min=0, max=100, help="Calls that use more than their estimate (up to 1.5x).")] = 1.0,
    usd_limit: Annotated[float, typer.Option("--usd-limit", min=0.01, help="The shared daily USD budget of the second run, $.")] = 20.0,
    as_json: JsonFlag = False,
) -> None:
    """Overshoot of one shared daily budget with admission off (react after usage) vs on, false
    refusals, before_call p50/p99 µs; first a token budget, then a USD one (calls priced for
    their model). In one process: real clients, the real ledger, a simulated network (delays as
    given); no broker."""
    from ops.bench.admission import run
    from ops.logsetup import configure

    configure(level="WARNING")  # not 100 clients' start lines
    result = run(agents, limit, feedback_ms=feedback_ms, network_ms=network_ms, overrun_pct=overrun_pct,
                 usd_limit=round(usd_limit * 1e9), progress=progress)
    if as_json:
        emit_json(result)
        return
    print(f"overshoot, admission off: {result['overshoot_pct_off']} % of the limit  "
          f"({result['spent_off']:,} of {result['limit_tokens']:,} tokens; the pause came {feedback_ms} + {network_ms} ms late)")
    print(f"overshoot, admission on:  {result['overshoot_pct_on']} %  (target <= 1 %; unused {result['underuse_pct_on']} %, "
          f"estimate errors {result['estimate_error_tokens_on']:,} tokens)")
    print(f"false refusals:           {result['false_refusal_pct']} % of calls  (target <= 1 %; "
          f"{result['false_refusals_on']} of {result['refused_on']} refusals, {result['calls_on']:,} calls)")
    print(f"before_call check:        p50 {result['check_p50_us']} µs   p99 {result['check_p99_us']} µs  (target p99 <= 20 µs)")
    usd = f"${result['limit_nano_usd'] / 1e9:,.2f}"
    print(f"USD budget ({usd}), overshoot off: {result['overshoot_usd_pct_off']} %   on: {result['overshoot_usd_pct_on']} %  "
          f"(target <= 1 %; unused {result['underuse_usd_pct_on']} %, ${result['spent_usd_on'] / 1e9:,.4f} spent)")
    print(f"USD false refusals:       {result['false_refusal_usd_pct']} % of calls  ({result['false_refusals_usd_on']} of "
          f"{result['refused_usd_on']} refusals, {result['calls_usd_on']:,} calls)")
    print(f"USD before_call check:    p50 {result['check_usd_p50_us']} µs   p99 {result['check_usd_p99_us']} µs")


@bench_app.command("processor")
def bench_processor(
    as_json: JsonFlag = False,
    events: Annotated[int, typer.Option("--events", min=1_000, help="Events for (a) and (c); (b) a third, (d) 10x")] = 30_000,
    bootstrap: BootstrapOption = None,
) -> None:
    """One broker, one run: (a) bare Faust, (b) naive Faust tables, (c) processor, (d) batch envelopes, latency."""
    from ops.bench.processor import run

    result = run(bootstrap, events, progress=progress)
    if as_json:
        emit_json(result)
        return
    console.print(
        f"(a) bare Faust agent      {result['bare_eps']:>9,} events/s\n"
        f"(b) naive Faust tables    {result['naive_eps']:>9,} events/s\n"
        f"(c) processor, 1/message  {result['single_eps']:>9,} events/s   c/a {result['ratio_vs_bare']:.2f} (target ≥ 0.75)"
        f"   c/b {result['ratio_vs_naive']:.1f} (target ≥ 5)\n"
        f"(d) processor, batches    {result['batch_eps']:>9,} events/s   (target ≥ 50,000)\n"
        f"decision latency          p50 {result['latency_p50_ms']} ms   p99 {result['latency_p99_ms']} ms"
        f"   ({result['latency_samples']} kills at ~1,000 events/s; target p99 ≤ 50 ms)",
        highlight=False,
    )


@bench_app.command("estimates")
def bench_estimates(
    rounds: Annotated[int, typer.Option("--rounds", min=100, help="Tasks run per task type.")] = 1_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fleet and its tasks.")] = 15,
    as_json: JsonFlag = False,
) -> None:
    """Learned task estimates on a simulated fleet (real engine, fake clock): error, runaways and normal tasks killed."""
    from ops.bench.estimates import run

    result = run(rounds, seed, progress)
    if as_json:
        emit_json(result)
        return
    q = f"p{100 * result['quantile']:g}"
    for n in (100, 1_000):
        if f"est_error_{n}" in result:
            print(f"learned estimate error after {n:>5,} tasks/type: median {result[f'est_error_{n}']:>5}%   "
                  f"max {result[f'est_error_{n}_max']}%   (vs each type's true {q}"
                  f"{'; target <= 10%' if n == 1_000 else ''})")
    print(f"runaway tasks killed, no estimate given: {result['runaways_killed_pct']}%   "
          f"({result['runaways_killed']} of {result['runaways']}; median kill at "
          f"{result['runaway_killed_at_median']}x the true {q}; target >= 95%)")
    print(f"normal tasks killed:                     {result['normal_killed_pct']}%   "
          f"({result['normal_killed']} of {result['normal_tasks']:,}; in the first 100 tasks/type "
          f"{result.get('normal_killed_pct_first_100')}%; target <= 0.5%)")
    print(f"({result['types']} task types of {result['agents']} agents, {result['events']:,} events through the engine)")


@bench_app.command("detection")
def bench_detection(
    traces: Annotated[Optional[Path], typer.Option("--traces", help="Trace file (JSON Lines, one model call a line).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Label file ({task_id: \"loop\" | \"ok\"}).")] = None,
    tasks: Annotated[int, typer.Option("--tasks", min=10, help="Tasks generated without --traces.")] = 1_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated traces.")] = 17,
    save: Annotated[Optional[Path], typer.Option("--save", help="Also write the generated traces.jsonl and labels.json here.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Loop rules on labelled traces (client fingerprints, real engine, fake clock) vs the whole-prompt-hash rule."""
    from ops.bench import detection_traces
    from ops.bench.detection import TARGETS, run

    if (traces is None) != (labels is None):
        fail("give --traces and --labels together (or neither, to generate traces)")
    if traces is not None and labels is not None:
        try:
            _, label_map = detection_traces.read(str(traces), str(labels))
        except (OSError, ValueError) as err:
            fail(f"--labels {labels}: {err}")
        try:
            result = run(lambda: detection_traces.read(str(traces), str(labels))[0], label_map, progress)
        except (OSError, ValueError) as err:  # InputError: a trace line that is not a model call
            fail(f"--traces {traces}: {err}")
    else:
        progress(f"generating {tasks:,} labelled tasks (seed {seed})")
        lines, label_map = detection_traces.generate(tasks, seed=seed)
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            detection_traces.write(lines, label_map, str(save / "traces.jsonl"), str(save / "labels.json"))
        result = run(lambda: iter(lines), label_map, progress)
    if as_json:
        emit_json(result)
        return
    rules, base = result["rules"], result["baseline"]
    print(f"{rules['loop_tasks']} loop tasks, {rules['ok_tasks']} ok tasks, {result['events']:,} calls")
    print(f"{'':<24}{'recall':>8}{'false kills':>13}{'median steps':>14}{'median $ to kill':>18}")
    for name, r in (("rules (all detectors)", rules), ("baseline (prompt_hash)", base)):
        print(f"{name:<24}{r['recall']:>7}%{r['false_kill_pct']:>12}%{str(r['median_steps_to_kill']):>14}"
              f"{str(r['median_usd_before_kill']):>18}")
    for rule, d in rules["detectors"].items():
        print(f"  {rule:<22}{d['loops_killed']:>7} loops{d['false_kills']:>8} ok{str(d['median_steps_to_kill']):>14}"
              f"{str(d['median_usd_before_kill']):>18}")
    for kind, k in rules["kinds"].items():
        shown = f"{k['killed']} of {k['tasks']} killed" if k["label"] == "loop" else f"{k['false_kills']} of {k['tasks']} falsely killed"
        print(f"  {kind:<22}{k['label']:>5}  {shown}")
    print(f"$ spent by loops until killed: {rules['usd_before_kills']}; in loops never killed: "
          f"{rules['usd_in_missed_loops']}; all loops with no rule: {result['usd_in_loops_unchecked']}")
    print(f"targets: recall >= {TARGETS['recall']}%, false kills <= {TARGETS['false_kill_pct']}%, "
          f"median <= {TARGETS['median_steps_to_kill']} steps")


# --- everything, and the soak ------------------------------------------------------------


@bench_app.command("all")
def bench_all(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with everything.")] = False,
    soak_seconds: Annotated[float, typer.Option("--soak-seconds", min=10, help="How long the soak runs.")] = 300.0,
    rate: Rate = 2_000,
    agents: Agents = 50,
    skip: Annotated[Optional[str], typer.Option("--skip", help="Comma list of processor,sink,client,soak.")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where results.json and soak.png go.")] = Path("bench"),
) -> None:
    """Processor, sink and client benchmarks, then a soak; writes results.json and soak.png."""
    from ops.bench.all import parse_skip, run_all, summary_lines
    from ops.bench.soak_stats import SoakConfig

    try:
        skipped = parse_skip(skip)
    except ValueError as err:
        fail(str(err))
    result = run_all(SoakConfig(seconds=soak_seconds, rate=rate, agents=agents), skipped, out_dir, progress)
    if as_json:
        emit_json(result)
        return
    print("\n".join(summary_lines(result)))
    print(f"written: {out_dir / 'results.json'}" + (f", {out_dir / 'soak.png'}" if "soak" in result else ""))


@bench_app.command("soak")
def bench_soak(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (summary and samples).")] = False,
    seconds: Annotated[float, typer.Option("--seconds", min=10, help="How long the soak runs.")] = 300.0,
    rate: Rate = 2_000,
    agents: Agents = 50,
    chart: Annotated[Optional[Path], typer.Option("--chart", help="Write the PNG chart here.")] = None,
) -> None:
    """Only the soak: a real stack at a steady rate; rate, decision latency, lag and memory over time."""
    from ops.bench.all import summary_lines
    from ops.bench.soak import run
    from ops.bench.soak_stats import SoakConfig
    from ops.bench.soak_chart import write_chart

    result = run(SoakConfig(seconds=seconds, rate=rate, agents=agents), progress)
    if chart is not None:
        write_chart(result, chart)
    if as_json:
        emit_json(result)
        return
    print("\n".join(summary_lines({"soak": result})))


# --- faults: runs that break things and check the totals -----------------------------------

Runs = Annotated[int, typer.Option("--runs", min=1, help="How many runs.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the runs' fleets and fault schedules.")]
LogsDir = Annotated[Path, typer.Option("--logs-dir", help="Where the worker logs of runs that were not exact (or needed the recovery watchdog) go.")]


@bench_app.command("rebalance")
def bench_rebalance(
    runs: Runs = 20,
    seed: Seed = 1,
    phase_timeout: Annotated[float, typer.Option("--phase-timeout", min=5, help="Seconds each rebalance gets to reach exact totals.")] = 60.0,
    logs_dir: LogsDir = Path("bench/rebalance-logs"),
    bootstrap: BootstrapOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Two processors, three rebalances per run (stop, kill -9 during a rebalance, join): stalls and exact totals."""
    from ops.bench.rebalance import run

    result = run(runs, bootstrap, progress, seed=seed, phase_timeout_s=phase_timeout, logs_dir=logs_dir)
    if as_json:
        emit_json(result)
        return
    for r in result["per_run"]:
        phases = ", ".join(f"{name} {'ok' if p['exact'] else ('STALL' if p.get('stalled') else 'LOST' if p.get('lost') else 'WRONG')}"
                           for name, p in r["phases"].items())
        print(f"run {r['run']:>3}: {'exact' if r['exact'] else 'NOT EXACT'}  {r['events']:,} events  "
              f"{r['reseeks']} re-seeks  {r['seconds']} s  ({phases})")
    print(f"{result['exact_runs']} of {result['runs']} runs exact, {result['stalls']} stalled, "
          f"{result['lost_runs']} lost events for good, "
          f"{result['reseeks']} recovery re-seeks by the watchdog   (target: all exact, 0 stalls)")


@bench_app.command("faults")
def bench_faults(
    runs: Runs = 20,
    seed: Seed = 1,
    faults: Annotated[int, typer.Option("--faults", min=1, help="Faults injected per run, one after another.")] = 3,
    events: Annotated[int, typer.Option("--events", min=100, help="Unique events the fleet sends per run.")] = 2_000,
    rate: Annotated[int, typer.Option("--rate", min=10, help="Messages/s the fleet sends.")] = 100,
    settle: Annotated[float, typer.Option("--settle", min=10, help="Seconds after the faults for every total to match.")] = 90.0,
    logs_dir: LogsDir = Path("bench/faults-logs"),
    as_json: JsonFlag = False,
) -> None:
    """Seeded kill -9 of a processor or the sink, broker restarts and rebalances under a steady fleet: exact totals?"""
    from ops.bench.faults import run

    result = run(runs, progress, seed=seed, faults=faults, events=events, rate=rate, settle_s=settle, logs_dir=logs_dir)
    if as_json:
        emit_json(result)
        return
    for r in result["per_run"]:
        print(f"run {r['run']:>3}: {'exact' if r['exact'] else 'NOT EXACT'}  {', '.join(r['schedule'])}  "
              f"lost {r['lost_events']}  double {r['double_counted_events']}  missed kills {r['missed_kills']}  "
              f"{r['seconds']} s")
    print(f"{result['exact_runs']} of {result['runs']} runs exact, {result['stalls']} stalled, "
          f"{result['lost_events']} events lost, {result['double_counted_events']} counted twice, "
          f"{result['missed_kills']} of {result['kills']} kills missed, "
          f"{result['reseeks']} recovery re-seeks by the watchdog   (target: all exact)")
