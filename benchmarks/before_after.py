"""Before/after: the same workload on a baseline commit and on the working tree, in one run.

For a change that must not cost speed (issue 15's restructuring): a git worktree of
``--baseline`` is checked out next to this one; both trees drain the same pre-produced topic
with one worker process each (fresh consumer group per run), alternating A B A B … so that
machine noise hits both alike, on both transports, and time the in-process steps 2-4
(``ChunkedCompute.run`` on 8,192-record batches). Each run is a subprocess with
``PYTHONPATH`` set to its tree: the two versions never share an interpreter.

    python -m benchmarks before-after [--baseline e9b60d3] [--events 60000] [--rounds 3]

Results: a table on stdout and the ``Before/after`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from . import harness
from .results import write_section

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "e9b60d3"  # main before issue 15's restructuring

# Runs inside each tree (only API both versions share: Settings from SD_* variables, Worker,
# run_once, stats; ChunkedCompute.run). Prints one JSON line.
_DRAIN = r"""
import json, os, sys, time
from stream_detector.settings import Settings
from stream_detector.worker import Worker
total = int(sys.argv[1])
w = Worker(Settings())
w.start()
steps = {}
w.steps.listeners.append(lambda step, s: steps.__setitem__(step, steps.get(step, 0.0) + s))
first = None
deadline = time.monotonic() + 300
while w.stats.events < total and time.monotonic() < deadline:
    n = w.run_once()
    if n and first is None:
        first, first_n = time.perf_counter(), n
if hasattr(w, "_flush_and_commit"):  # write-behind (entity/behind.py): its last window's write is timed too
    w._flush_and_commit()
end = time.perf_counter()
events = w.stats.events
w.close()
rate = (events - first_n) / (end - first) if first is not None and end > first else 0.0
print(json.dumps({"events": events, "events_per_s": rate, "batches": w.stats.batches,
                  "steps": {k: round(v, 3) for k, v in steps.items()}}))
"""

_COMPUTE = r"""
import json, sys, time
import orjson
from stream_detector.pipeline.compute import ChunkedCompute
from stream_detector.pipeline.score import Scorer
from stream_detector.model.bundle import load_bundle
from stream_detector.simulate import Simulator
from pathlib import Path
bundle = load_bundle(Path(sys.argv[1]))
scorer = Scorer(bundle)
scorer.warm()
if len(sys.argv) > 2 and sys.argv[2].endswith(".jsonl"):  # the records themselves (made by this suite's tree)
    values = Path(sys.argv[2]).read_bytes().splitlines()
else:
    if len(sys.argv) > 2 and sys.argv[2] == "padded":
        from benchmarks.workload import make_events
        events, _ = make_events(8192, 3)
    else:
        events, _ = Simulator(seed=3, accounts=2000, run_id="ba").batch(8192, 0.01)
    values = [orjson.dumps(e) for e in events]
compute = ChunkedCompute(1024, 0)
best = float("inf")
for _ in range(12):
    t = time.perf_counter()
    compute.run(scorer, values, 65536)
    best = min(best, time.perf_counter() - t)
compute.close()
print(json.dumps({"rows_per_s": len(values) / best}))
"""


def _say(msg: str) -> None:
    print(f"[before-after {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _tree(rev: str, where: Path) -> Path:
    path = where / f"baseline-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev],
                   check=True, capture_output=True)
    return path


def _run(tree: Path, code: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``code`` on ``tree``'s version. ``python -c`` puts the current directory first on
    ``sys.path``, ahead of ``PYTHONPATH``, so the child runs *in* the tree; it reports where it
    imported ``stream_detector`` from, and a run that loaded another tree's code is refused
    (before 2026-12-01 both sides ran the working tree: see RESULTS.md)."""
    where = "import stream_detector as _sd, sys as _sys; print('SD_FROM', _sd.__file__, file=_sys.stderr)\n"
    out = subprocess.run([sys.executable, "-c", where + code, *args], env={**env, "PYTHONPATH": str(tree)},
                         cwd=str(tree), capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{tree.name}: {out.stderr[-2000:]}")
    loaded = next((line.split(" ", 1)[1] for line in out.stderr.splitlines() if line.startswith("SD_FROM ")), "")
    if not Path(loaded).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"{tree.name}: stream_detector was imported from {loaded}, not from {tree}")
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks before-after", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with (default %(default)s)")
    parser.add_argument("--events", type=int, default=60_000, help="pre-produced events per drain")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs per transport")
    parser.add_argument("--transports", default=",".join(harness_transports()),
                        help="comma-separated: kafka-python, confluent (default: those installed)")
    parser.add_argument("--padded", action="store_true",
                        help="the throughput suite's workload (30 fields, ~724 bytes: benchmarks/workload.py) "
                             "instead of the simulator's ~15-field events")
    parser.add_argument("--drift", action="store_true",
                        help="with --padded: the produced events drift from what the model was trained on as "
                             "producers' events do (benchmarks/workload.py's drifted: a key the schema does not "
                             "name in every event, a feature field left out of one in 20)")
    parser.add_argument("--entity", action="store_true",
                        help="the entity-worker workload (account + terminal history, state in Redis: "
                             "benchmarks/entity_worker.py's model and events); drains only, a fresh state "
                             "prefix per run")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="the drains' SD_BATCH_SIZE (default: the worker's own, 8,192): a small batch is the "
                             "per-batch cost a worker at a moderate load pays (a 20,000/s latency run's ~500 events)")
    parser.add_argument("--section", default="before-after",
                        help="RESULTS.md section to write (default %(default)s: issue 15's check)")
    parser.add_argument("--title", default="Before/after (same run): issue 15's restructuring",
                        help="that section's title")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.drift and not args.padded:
        parser.error("--drift needs --padded")

    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator
    from stream_detector.store import ControlPlane
    from stream_detector.topics import ensure_topics
    from tests.helpers import small_bundle

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                         capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], check=True,
                                capture_output=True, text=True).stdout.strip())
    trees = {"before": None, "after": ROOT}
    workload = "padded" if args.padded else "simulator"
    rates: dict[tuple[str, str], list[float]] = {}
    step_runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    compute: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="sd-before-after-") as tmp, harness.services(_say) as svc:
        trees["before"] = _tree(rev, Path(tmp))
        try:
            if args.entity:
                from . import entity_speed
                from .entity_worker import models

                entity_events = entity_speed.workload(args.events, max(500, args.events // 100), seed=0)
                bundle = models(entity_events[:40_000])["entity"]
            elif args.padded:
                from stream_detector.model.bundle import build_bundle
                from stream_detector.model.train import TrainConfig, train

                from .workload import make_events

                history, _ = make_events(20_000, 11)
                bundle = build_bundle(train(history, TrainConfig(epochs=2, seed=0, threshold_method="quantile",
                                                                 target_fpr=0.002)))
            else:
                bundle = small_bundle()
            model_dir = save_bundle(bundle, Path(tmp) / "model")
            if args.drift:  # this tree's workload for both: the baseline's benchmarks/ may not have ``drifted``
                from .workload import drifted, make_events

                workload = str(Path(tmp) / "drifted.jsonl")
                Path(workload).write_bytes(b"\n".join(orjson.dumps(e) for e in drifted(make_events(8192, 3)[0])))
            tag = uuid.uuid4().hex[:8]
            from stream_detector.settings import Settings

            config: dict[str, Any] = {"kafka_bootstrap": svc.kafka, "redis_url": svc.redis,
                                      "redis_prefix": f"ba-{tag}", "input_topic": f"ba-{tag}",
                                      "alerts_topic": f"ba-alerts-{tag}", "dlq_topic": f"ba-dlq-{tag}",
                                      "topic_partitions": 4}
            settings = Settings(**config)
            ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic])
            ControlPlane.from_url(svc.redis, settings.redis_prefix).publish(bundle, set_by="bench")
            if args.entity:
                events = entity_events
            elif args.padded:
                events, _ = make_events(args.events, 1)
                if args.drift:
                    from .workload import drifted

                    events = drifted(events)
            else:
                events, _ = Simulator(seed=1, accounts=5000, run_id="ba").batch(args.events, 0.01)
            harness.produce(svc.kafka, settings.input_topic, [orjson.dumps(e) for e in events],
                            [str(e["account_id"]).encode() for e in events])
            _say(f"{args.events} events produced; baseline {rev}, after {head}{' + uncommitted' if dirty else ''}")
            base_env = {k: v for k, v in os.environ.items() if not k.startswith("SD_")}
            for name in () if args.entity else ("before", "after"):  # untimed warm-up: bytecode caches
                _run(trees[name], _COMPUTE, [str(model_dir), workload], base_env)  # type: ignore[arg-type]
            for transport in args.transports.split(","):
                for r in range(args.rounds):
                    order = ("before", "after") if r % 2 == 0 else ("after", "before")
                    for name in order:
                        prefix = settings.redis_prefix
                        if args.entity:  # entity state empty at the start of every drain
                            prefix = f"{prefix}-{name}-{transport}-{r}"
                            ControlPlane.from_url(svc.redis, prefix).publish(bundle, set_by="bench")
                        env = {**base_env, "SD_KAFKA_BOOTSTRAP": svc.kafka, "SD_REDIS_URL": svc.redis,
                               "SD_REDIS_PREFIX": prefix, "SD_INPUT_TOPIC": settings.input_topic,
                               "SD_ALERTS_TOPIC": settings.alerts_topic, "SD_DLQ_TOPIC": settings.dlq_topic,
                               "SD_GROUP_ID": f"ba-{name}-{transport}-{r}-{tag}", "SD_TRANSPORT": transport,
                               "SD_CREATE_TOPICS": "false", "SD_WORKER_ID": f"ba-{name}-{r}"}
                        if args.batch_size:
                            env["SD_BATCH_SIZE"] = str(args.batch_size)
                        got = _run(trees[name], _DRAIN, [str(args.events)], env)  # type: ignore[arg-type]
                        rates.setdefault((transport, name), []).append(float(got["events_per_s"]))
                        step_runs.setdefault((transport, name), []).append(got.get("steps", {}))
                        _say(f"{transport} {name}: {got['events_per_s']:,.0f} events/s ({got['events']} events, "
                             f"{got.get('batches')} batches; step seconds {got.get('steps')})")
            for r in range(0 if args.entity else args.rounds * 2):
                for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    got = _run(trees[name], _COMPUTE, [str(model_dir), workload], base_env)  # type: ignore[arg-type]
                    compute[name].append(float(got["rows_per_s"]))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["before"])],
                           capture_output=True, check=False)
    rows = []
    for (transport, name), values in sorted(rates.items()):
        rows.append((f"worker drain, {transport}", name, statistics.median(values), values))
    for name, values in compute.items() if not args.entity else ():
        rows.append(("steps 2-4 in process (8,192-record batch)", name, statistics.median(values), values))
    text = render(rows, rev, head, dirty, args) + steps_table(step_runs)
    print(text)
    if not args.no_write:
        write_section(args.section, args.title, text)
    return 0


STEPS = ("source", "decode", "enrich", "features", "publish", "flush", "commit", "scoring thread")  # flush: write-behind


def steps_table(step_runs: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    """The drains' wall seconds per worker step (the worker's step timers), median over the runs."""
    lines = ["", "Where the drains' time went: wall seconds per step on the worker's thread (the scoring thread "
             "beside it), median of the runs:", "",
             "| transport | tree | " + " | ".join(STEPS) + " |", "|---|---|" + "---:|" * len(STEPS)]
    for (transport, name), runs in sorted(step_runs.items()):
        cells = [f"{statistics.median(r.get(s, 0.0) for r in runs):.2f}" for s in STEPS]
        lines.append(f"| {transport} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def harness_transports() -> list[str]:
    return ["kafka-python", "confluent"] if harness.has_confluent() else ["kafka-python"]


def render(rows: list[tuple[str, str, float, list[float]]], rev: str, head: str, dirty: bool,
           args: argparse.Namespace) -> str:
    lines = [f"`python -m benchmarks before-after --baseline {rev} --events {args.events} --rounds {args.rounds} "
             f"--transports {args.transports}{' --padded' if args.padded else ''}{' --drift' if args.drift else ''}"
             f"{' --entity' if args.entity else ''}{f' --batch-size {args.batch_size}' if args.batch_size else ''}"
             f"{f' --section {args.section}' if args.section != 'before-after' else ''}`: "
             f"baseline `{rev}` against `{head}`{' plus uncommitted changes' if dirty else ''}, one worker process draining the same "
             "pre-produced topic (fresh group per run), runs alternating A B A B. Median of the runs; the ratio is "
             "after / before. Workload: "
             + ("`benchmarks/entity_worker.py`'s (raw events with account and terminal ids, 4 partitions keyed by "
                "account) and its entity model (keys account and terminal, 1h/1d/7d/30d; event-time alignment on), "
                "entity state in Redis empty at each drain's start." if args.entity else
                "the throughput suite's (30 fields, ~724 bytes of JSON, `benchmarks/workload.py`), a model trained on "
                "it" + (", the produced events drifted from it (`workload.drifted`: a key the schema does not name in "
                        "every event, a feature field left out of one in 20)." if args.drift else ".")
                if args.padded else "the simulator's events (~15 fields), `tests.helpers.small_bundle`."), "",
             "| workload | before | after | after / before | runs (before; after) |", "|---|---:|---:|---:|---|"]
    by: dict[str, dict[str, tuple[float, list[float]]]] = {}
    for what, name, median, values in rows:
        by.setdefault(what, {})[name] = (median, values)
    for what, pair in by.items():
        (b, bv), (a, av) = pair["before"], pair["after"]
        unit = "rows/s" if "in process" in what else "events/s"
        lines.append(f"| {what} | {b:,.0f} {unit} | {a:,.0f} {unit} | {a / b:.2f} | "
                     f"{', '.join(f'{v:,.0f}' for v in bv)}; {', '.join(f'{v:,.0f}' for v in av)} |")
    return "\n".join(lines) + "\n"
