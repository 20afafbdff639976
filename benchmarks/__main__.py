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
    "align-rounds": "benchmarks.align_rounds",
    "labels": "benchmarks.labels",
    "labels-worker": "benchmarks.labels_worker",
    "retrain-scale": "benchmarks.retrain_scale",
    "labels-tables": "benchmarks.labels_tables",
    "shadow-worker": "benchmarks.shadow_worker",
    "big-history": "benchmarks.big_history",
    "big-typing": "benchmarks.big_typing",
    "error-weights": "benchmarks.error_weights",
    "scoring-threads": "benchmarks.scoring_threads",
    "cli-startup": "benchmarks.cli_startup",
    "end-offsets": "benchmarks.end_offsets",
    "retrain-budget": "benchmarks.retrain_budget",
    "why": "benchmarks.why",
    "source-process": "benchmarks.source_process",
}
WHAT = {
    "throughput": "worker events/s and event->alert latency on a real local Kafka (make bench)",
    "quality": "detection quality on the real datasets, beside River and PyOD (make bench-quality)",
    "entity": "entity features: kernel speed, state bytes, features + score per batch",
    "inputs": "file readers (CSV, JSON Lines, Parquet) and what the field schema costs decoding",
    "before-after": "the same workload on a baseline commit and on the working tree, in one run",
    "cuda": "CPU vs CUDA scoring, step 4 alone and the worker end to end (needs a GPU for CUDA)",
    "entity-worker": "one worker with and without entity features on real Kafka and Redis; p99 latency",
    "entity-cluster": "entity state on a 3-node Redis Cluster vs a single Redis, per batch",
    "entity-workers": "1 vs 4 workers with terminal history: events/s, agreement with offline, lost updates",
    "align-rounds": "exact replay by several workers: rounds of event-time alignment per rule vs re-keying (no services)",
    "labels": "delayed labels, the Fraud Detection Handbook's protocol: AUC, AP, card precision@k per variant",
    "labels-worker": "one worker with the supervised head vs the same autoencoder alone, real Kafka and Redis",
    "retrain-scale": "retraining an entity + label + head model: time per phase and peak memory by history size",
    "labels-tables": "delayed labels on the labelled tables: supervised head vs autoencoder, scarce-label fallback",
    "shadow-worker": "one worker with a challenger in shadow vs the champion alone (stateless and entity paths)",
    "big-history": "train --streamed on 20M rows: time per phase, peak memory, 1 vs 4 shards, vs in-memory train",
    "big-typing": "train --streamed pass 1 on CSV / Parquet / JSON Lines: columnar typing vs row by row",
    "error-weights": "per-feature error weights over training + validation rows vs validation rows alone",
    "scoring-threads": "step 4 with one intra-op thread (the worker's default) vs torch's default, alone and busy",
    "cli-startup": "registry, threshold and lag commands now vs with torch imported first (the old import chain)",
    "end-offsets": "the confluent source's end offsets: one ListOffsets request vs one per partition (before)",
    "retrain-budget": "retraining generations: live alert rate, threshold on traffic vs on clean events (before)",
    "why": "why an alert fired: the field named by its reconstruction error vs by its part in the score",
    "source-process": "kafka-python's record parsing in a child process vs on the worker's thread (steps 2-4 alike)",
}


def usage() -> str:
    width = max(map(len, SUITES))
    lines = ["usage: python -m benchmarks NAME [--help]", "",
             "Each benchmark measures against a baseline in the same run; results go to benchmarks/RESULTS.md",
             "(with the machine). NAME --help gives its options.", ""]
    return "\n".join(lines + [f"  {name:<{width}}  {WHAT[name]}" for name in SUITES])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in SUITES:
        print(usage(), file=sys.stdout if argv and argv[0] in {"-h", "--help"} else sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(SUITES[argv[0]])
    try:
        return int(module.main(argv[1:]))
    finally:  # the runs' Redis keys (fresh prefixes each): none left on a developer's running Redis
        from . import harness

        harness.drop_run_keys()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
