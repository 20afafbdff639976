"""CLI start-up: the registry and threshold commands with and without torch imported.

Until 2026-12-03 ``model/bundle.py`` imported torch at module level, so every command that reads the
control plane (``threshold``, ``model``, ``publish``, through ``store``) paid torch's import
though it never loads a TorchScript module. Now torch is imported where a module is loaded or built.

The baseline is the same command in the same run with ``import torch`` first (what the old import
chain did), so the difference is what the change saves whatever the machine's speed. Each command
runs as a whole process (``python -m stream_detector …``), the two variants alternating, ``--runs``
times each after one warm-up; medians of wall time. The commands run against ``SD_REDIS_URL`` and
``SD_KAFKA_BOOTSTRAP`` as set (``make services-up`` for the local ones); the exit status is in
the table (2: the command's own one-line refusal, e.g. no threshold published yet on fresh local
services, after it reached Redis).

Results: the ``cli-startup`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from .results import write_section

COMMANDS = (("threshold get",), ("model list",))
BASELINE = ("import sys, runpy, torch; sys.argv = ['stream-detector', *sys.argv[1:]]; "
            "runpy.run_module('stream_detector', run_name='__main__')")


def say(msg: str) -> None:
    print(f"[cli-startup] {msg}", file=sys.stderr, flush=True)


def once(argv: list[str]) -> tuple[float, int]:
    """Wall seconds of one process and its exit status."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=300)
    return time.perf_counter() - started, done.returncode


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cli-startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each variant (default 7)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args(list(argv))
    rows = ["| command | exit | now (s, median) | torch imported first (s, median) | saved |", "|---|---|---|---|---|"]
    for command in COMMANDS:
        words = " ".join(command).split()
        now_argv = [sys.executable, "-m", "stream_detector", *words]
        base_argv = [sys.executable, "-c", BASELINE, *words]
        once(now_argv), once(base_argv)  # warm-up: the page cache holds both import chains
        now, base, codes = [], [], set()
        for _ in range(args.runs):
            seconds, code = once(now_argv)
            now.append(seconds)
            codes.add(code)
            base.append(once(base_argv)[0])
        a, b = statistics.median(now), statistics.median(base)
        say(f"{' '.join(words)}: {a:.2f} s vs {b:.2f} s with torch first (exit {sorted(codes)})")
        rows.append(f"| `stream-detector {' '.join(words)}` | {', '.join(map(str, sorted(codes)))} | {a:.2f} | "
                    f"{b:.2f} | {b - a:.2f} s ({(b - a) / b:.0%}) |")
    body = (f"Each command as a whole process, {args.runs} runs of each variant alternating after a warm-up; "
            "the baseline is the same command with `import torch` first (the import chain before "
            "2026-12-03). Exit 2: the command's one-line refusal after reaching Redis (no threshold published "
            "yet on fresh local services).\n\n"
            + "\n".join(rows) + "\n")
    print(body)
    if not args.no_write:
        write_section("cli-startup", "CLI start-up: commands that never load a model no longer import torch "
                      "(`python -m benchmarks cli-startup`)", body)
    return 0
