"""Dispatch: ``python -m benchmarks NAME [args]``; each NAME is a module with ``main(argv) -> int``."""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "throughput": "benchmarks.throughput",
    "quality": "benchmarks.quality",
    "entity": "benchmarks.entity",
    "inputs": "benchmarks.inputs",
    "before-after": "benchmarks.before_after",
    "cuda": "benchmarks.cuda",
    "entity-worker": "benchmarks.entity_worker",
    "entity-cluster": "benchmarks.entity_cluster",
    "entity-workers": "benchmarks.entity_workers",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in SUITES:
        print("usage: python -m benchmarks {" + ",".join(SUITES) + "} [--help]", file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(SUITES[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
