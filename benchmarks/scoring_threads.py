"""Scoring threads: one intra-op thread (the worker's default since 2026-12-03) vs torch's default.

``Scorer.outputs`` (step 4, one TorchScript call) on batches of 2 to 8,192 rows of the throughput
suite's model (``benchmarks/workload.py``: 30 fields, 108 columns), with ``torch.set_num_threads``
1 and torch's default (one per core), each in its own process so that the intra-op pool is set
before its first use. Three conditions, in the same run:

* **alone**: nothing else runs in the process or beside it;
* **busy 1**: a second Python thread of the same process spins in pure Python (what the worker's
  decode/features thread does while its scoring thread scores, ``pipeline/compute.py``), and one
  busy process beside it (the broker, Redis or another worker on the same cores);
* **busy 3**: the same thread and three busy processes: a loaded machine, as a test run or a
  host shared by several workers, the broker and Redis.

Per batch size: the median wall time of one call over ``--calls`` calls after a warm-up, best of
``--repeats`` processes per setting (the settings alternate). ``SD_TORCH_THREADS`` unset gives a
worker 1 thread (``Settings.scoring_threads``); ``0`` gives torch's default.

Results: the ``scoring-threads`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .results import write_section
from .workload import make_events, table

SIZES = (2, 16, 128, 1024, 8192)
BUSY = (0, 1, 3)  # busy processes beside the measuring one (and, when any, a busy thread inside it)


def say(msg: str) -> None:
    print(f"[scoring-threads] {msg}", file=sys.stderr, flush=True)


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(1000))


def measure(model: Path, threads: int, busy: int, calls: int) -> dict[str, float]:
    """One process's medians, ms per call by batch size (``threads`` 0: torch's default)."""
    import torch

    from stream_detector.model.bundle import load_bundle
    from stream_detector.pipeline.score import Scorer

    if threads:
        torch.set_num_threads(threads)
    scorer = Scorer(load_bundle(model))
    rng = np.random.default_rng(0)
    stop = threading.Event()
    other = multiprocessing.get_context("spawn").Event()
    helpers: list[Any] = []
    if busy:
        helpers = [threading.Thread(target=_spin, args=(stop,), daemon=True),
                   *(multiprocessing.get_context("spawn").Process(target=_spin, args=(other,), daemon=True)
                     for _ in range(busy))]
        for h in helpers:
            h.start()
    out: dict[str, float] = {"threads": float(torch.get_num_threads())}
    try:
        for n in SIZES:
            x = rng.standard_normal((n, scorer.bundle.spec.width)).astype(np.float32)
            for _ in range(5):
                scorer.outputs(x)
            times = []
            for _ in range(calls if n < 4096 else max(5, calls // 10)):
                t = time.perf_counter()
                scorer.outputs(x)
                times.append(time.perf_counter() - t)
            out[str(n)] = float(np.median(times)) * 1000.0
    finally:
        stop.set()
        other.set()
        for h in helpers:
            h.join(timeout=5)
    return out


def run(repeats: int, calls: int, work: Path) -> dict[str, Any]:
    from stream_detector.model.bundle import build_bundle, save_bundle
    from stream_detector.model.train import TrainConfig, train

    say("training the throughput suite's model (3 epochs)")
    model = save_bundle(build_bundle(train(make_events(6000, seed=0)[0], TrainConfig(epochs=3, seed=0))), work / "model")
    best: dict[tuple[int, int], dict[str, float]] = {}
    for r in range(repeats):
        for busy in BUSY:
            for threads in (1, 0):
                say(f"repeat {r + 1}/{repeats}: threads {threads or 'default'}, busy processes {busy}")
                done = subprocess.run([sys.executable, "-m", "benchmarks.scoring_threads", "--child", str(model),
                                       str(threads), str(busy), str(calls)],
                                      capture_output=True, text=True, check=True)
                got = json.loads(done.stdout.strip().splitlines()[-1])
                key = (threads, busy)
                best[key] = {k: min(v, best.get(key, {}).get(k, float("inf"))) for k, v in got.items()}
    return {"best": best, "repeats": repeats, "calls": calls}


def markdown(ctx: dict[str, Any]) -> str:
    best = ctx["best"]
    rows = []
    for busy in BUSY:
        one, default = best[(1, busy)], best[(0, busy)]
        for n in SIZES:
            a, b = one[str(n)], default[str(n)]
            rows.append([f"busy {busy}" if busy else "alone", f"{n:,}",
                         f"{a:.3f}", f"{b:.3f} ({int(default['threads'])} threads)", f"{b / a:.1f}×"])
    head = ("`python -m benchmarks scoring-threads`: `Scorer.outputs` on the throughput suite's model (108 "
            f"columns); median ms per call over {ctx['calls']} calls (a tenth of that at 8,192 rows), best of "
            f"{ctx['repeats']} processes per setting, settings alternating.\n\n")
    return head + table(["condition", "rows", "1 thread ms", "torch default ms", "default / 1"], rows)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "--child":
        model, threads, busy, calls = argv[1:5]
        print(json.dumps(measure(Path(model), int(threads), int(busy), int(calls))))
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks scoring-threads",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=3, help="processes per setting (best of; default 3)")
    p.add_argument("--calls", type=int, default=200, help="calls per batch size (default 200)")
    p.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ctx = run(args.repeats, args.calls, Path(tmp))
    body = markdown(ctx)
    print(body)
    if not args.no_write:
        write_section("scoring-threads", "Scoring threads: one intra-op thread vs torch's default", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
