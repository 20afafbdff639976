"""End offsets asked of the broker by the confluent source: one ``AdminClient.list_offsets`` request
(now) vs the consumer's ``get_watermark_offsets(cached=False)`` per partition (before 2026-12-06).

Event-time alignment asks the broker for partitions' end offsets on the worker's thread: to check
another worker's idle claim (``store/watermarks.py``) and, since 2026-12-06, one of its own idle
partitions before a release passes it (``AlignedSource._unseen``). Both variants run in the same
process against the same topic (``SD_KAFKA_BOOTSTRAP``; ``make services-up`` for the local broker),
alternating, ``--runs`` times each per partition count after a warm-up; medians and maxima of wall
time. The baseline is the old code path, called on the same consumer.

Results: the ``end-offsets`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence

from .results import write_section


def say(msg: str) -> None:
    print(f"[end-offsets] {msg}", file=sys.stderr, flush=True)


def timed(call: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        out.append(1000 * (time.perf_counter() - started))
    return out


def main(argv: Sequence[str]) -> int:
    from confluent_kafka import TopicPartition as CTopicPartition

    from stream_detector.settings import load_settings
    from stream_detector.topics import ensure_topics
    from stream_detector.transport.confluent import ConfluentSource
    from stream_detector.transport.factory import transport_config

    parser = argparse.ArgumentParser(prog="python -m benchmarks end-offsets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21, help="timed calls of each variant per count (default 21)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the topic (default 12)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args(list(argv))
    settings = load_settings().model_copy(update={"create_topics": False})
    topic = f"bench-ends-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic], args.partitions)
    source = ConfluentSource(transport_config(settings.model_copy(update={"input_topic": topic,
                                                                          "group_id": f"g-{topic}"})))
    source.start()
    try:
        for _ in range(50):  # joined and assigned: the worker's situation
            source.poll_batch(wait_ms=100)
            if source.assignment():
                break
        consumer = source.consumer
        assert consumer is not None

        def before(n: int) -> dict[int, int]:
            return {p: int(consumer.get_watermark_offsets(CTopicPartition(topic, p), timeout=1.0, cached=False)[1])
                    for p in range(n)}

        rows = ["| partitions asked | now: one list_offsets (ms, median / max) | before: per partition (ms, median / max) "
                "| same answers |", "|---|---|---|---|"]
        for n in sorted({1, 3, args.partitions - 1, args.partitions} - {0}):
            assert source.end_offsets(range(n)) == before(n)  # warm-up, and the same answers
            now, old = [], []
            for _ in range(args.runs):
                now += timed(lambda n=n: source.end_offsets(range(n)), 1)  # type: ignore[misc]
                old += timed(lambda n=n: before(n), 1)  # type: ignore[misc]
            say(f"{n} partitions: {statistics.median(now):.2f} ms vs {statistics.median(old):.2f} ms before")
            rows.append(f"| {n} | {statistics.median(now):.2f} / {max(now):.2f} | {statistics.median(old):.2f} / "
                        f"{max(old):.2f} | yes |")
    finally:
        source.close()
    body = (f"A {args.partitions}-partition topic on the local broker; the confluent source joined and assigned; "
            f"{args.runs} calls of each variant per count, alternating, after a warm-up that checks both give the "
            "same ends.\n\n" + "\n".join(rows) + "\n")
    print(body)
    if not args.no_write:
        write_section("end-offsets", "End offsets on the confluent source: one ListOffsets request vs one per "
                      "partition (`python -m benchmarks end-offsets`)", body)
    return 0
