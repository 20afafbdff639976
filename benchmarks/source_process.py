"""kafka-python's record parsing off the worker's thread: what a child process owning the consumer
could give the stateless worker (``python -m benchmarks source-process``). A measurement for a design
choice, not of the worker: issue 16 asks the stateless worker for >= 85 % of its client's
consume-only ceiling, and kafka-python's worker gets ~66 % (the *throughput* section), its
``source`` step (kafka-python's per-record Python parsing: ``Fetcher._unpack_records``,
``DefaultRecordBatch._read_msg``) the largest on its thread.

Three loops over the same pre-produced topic (``throughput``'s workload: 300,000 padded events of
~724 bytes, 4 partitions), a fresh consumer group each, interleaved, ``--repeats`` times:

* **consume-only**: the client's ceiling (``harness.consume_only``, as the throughput section);
* **in-process**: one process polls (``max_poll_records`` = the batch size) and runs the worker's
  steps 2-4 on each poll's values (``ChunkedCompute.run``: decode, features, score on the scoring
  thread), as the worker's thread does, without publish and commit;
* **child process**: a child process owns the consumer and sends each poll's values through a pipe
  (pickled, protocol 5); the parent runs the same steps 2-4 on them.

Events/s from the first batch handed over to the last (the group's join is left out). Publish and
commit are left out of both compute loops alike: a real split would also carry commits back to the
child, and rebalance callbacks across the pipe.

Results: the ``source-process`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pickle
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .results import write_section

BATCH = 8192


def say(msg: str) -> None:
    print(f"[source-process] {msg}", file=sys.stderr, flush=True)


def _consumer(bootstrap: str, topic: str, group: str, fetch: dict[str, Any]) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(topic, bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", **fetch)


def _child(conn: Any, bootstrap: str, topic: str, group: str, fetch: dict[str, Any], total: int) -> None:
    """The child process: poll, send each partition's values to the parent, until ``total``."""
    consumer = _consumer(bootstrap, topic, group, fetch)
    seen = 0
    while seen < total:
        for records in consumer.poll(timeout_ms=500).values():
            conn.send_bytes(pickle.dumps([r.value for r in records], protocol=5))
            seen += len(records)
    conn.send_bytes(b"")
    conn.recv_bytes()  # the parent is done: close
    consumer.close(autocommit=False)


def in_process(bootstrap: str, topic: str, fetch: dict[str, Any], total: int, scorer: Any) -> float:
    from stream_detector.pipeline.compute import ChunkedCompute

    compute = ChunkedCompute(1024, 1)
    consumer = _consumer(bootstrap, topic, f"sp-in-{uuid.uuid4().hex[:8]}", fetch)
    seen, first = 0, 0.0
    try:
        while seen < total:
            for records in consumer.poll(timeout_ms=500).values():
                first = first or time.perf_counter()
                compute.run(scorer, [r.value for r in records], 1 << 20)
                seen += len(records)
        return seen / (time.perf_counter() - first)
    finally:
        consumer.close(autocommit=False)
        compute.close()


def child_process(bootstrap: str, topic: str, fetch: dict[str, Any], total: int, scorer: Any) -> float:
    from stream_detector.pipeline.compute import ChunkedCompute

    compute = ChunkedCompute(1024, 1)
    ours, theirs = mp.Pipe(duplex=True)
    child = mp.get_context("spawn").Process(target=_child, daemon=True,
                                            args=(theirs, bootstrap, topic, f"sp-ch-{uuid.uuid4().hex[:8]}", fetch,
                                                  total))
    child.start()
    seen, first = 0, 0.0
    try:
        while data := ours.recv_bytes():
            values = pickle.loads(data)
            first = first or time.perf_counter()
            compute.run(scorer, values, 1 << 20)
            seen += len(values)
        return seen / (time.perf_counter() - first)
    finally:
        ours.send_bytes(b"x")
        child.join(timeout=60)
        compute.close()


def main(argv: Sequence[str]) -> int:
    import torch

    from stream_detector.pipeline.score import Scorer
    from stream_detector.settings import load_settings
    from stream_detector.topics import ensure_topics
    from stream_detector.transport.factory import transport_config
    from stream_detector.transport.kafka_python import consumer_config

    from . import harness
    from .throughput import keys_of, trained_bundle
    from .workload import encode, make_events

    parser = argparse.ArgumentParser(prog="python -m benchmarks source-process", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="pre-produced events (default 300,000)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each loop (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args(list(argv))
    torch.set_num_threads(1)
    settings = load_settings().model_copy(update={"create_topics": False, "batch_size": BATCH})
    bootstrap = settings.kafka_bootstrap
    topic = f"bench-sp-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic], 4)
    say("training the throughput section's model")
    scorer = Scorer(trained_bundle(0))
    events, _ = make_events(args.events, 0)
    say(f"producing {args.events:,} events to {topic}")
    harness.produce(bootstrap, topic, encode(events), keys_of(events))
    fetch = {k: v for k, v in consumer_config(transport_config(settings)).items()
             if k in ("max_poll_records", "fetch_max_bytes", "max_partition_fetch_bytes", "fetch_min_bytes",
                      "fetch_max_wait_ms", "isolation_level")}
    loops: dict[str, Callable[[], float]] = {"consume-only (the client's ceiling)":
             lambda: harness.consume_only(bootstrap, topic, f"sp-co-{uuid.uuid4().hex[:8]}", args.events, fetch),
             "in-process: poll, then steps 2-4 on the same thread": lambda: in_process(bootstrap, topic, fetch,
                                                                                        args.events, scorer),
             "child process polls, parent runs steps 2-4": lambda: child_process(bootstrap, topic, fetch,
                                                                                   args.events, scorer)}
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for rep in range(args.repeats):
        for name, loop in loops.items():
            rates[name].append(loop())
            say(f"run {rep + 1}: {name}: {rates[name][-1]:,.0f} events/s")
    ceiling = statistics.median(rates["consume-only (the client's ceiling)"])
    rows = ["| loop | events/s (median) | runs | / consume-only |", "|---|---|---|---|"]
    for name, got in rates.items():
        rows.append(f"| {name} | {statistics.median(got):,.0f} | {', '.join(f'{x:,.0f}' for x in got)} | "
                    f"{statistics.median(got) / ceiling:.0%} |")
    body = (f"{args.events:,} events ({topic}, 4 partitions), kafka-python, `max_poll_records` {BATCH:,}, "
            f"`torch_threads=1`; loops interleaved, {args.repeats} runs each, a fresh group per run; broker on "
            "the same 2 cores. No publish or commit in any loop.\n\n" + "\n".join(rows) + "\n")
    print(body)
    if not args.no_write:
        write_section("source-process", "kafka-python's parsing in a child process (`python -m benchmarks "
                      "source-process`)", body)
    return 0
