"""How far event-time alignment across workers can go, against re-keying by terminal: a replay in
rounds, no Kafka or Redis (``python -m benchmarks align-rounds``; issue 16's "choose by measurement
between re-keying through an internal repartition topic ... and event-time alignment across
partitions").

The workload is ``entity-workers``' (raw card transactions keyed by account, a terminal per event,
time-ordered), spread over ``--partitions`` partitions by Kafka's default partitioner (murmur2 of
the key). One worker per partition replays it exactly (every terminal's events applied in event-time
order) under one of three release rules, in synchronous **rounds**: each round every worker
publishes what the rule needs, then releases what it may. A round stands for one exchange through
Redis plus the batch's enrichment, delivery and commit: the measured per-round cost of today's rule
(``entity-workers``, grace 0) turns rounds into events/s.

* **global watermark, grace 0** (today's ``SD_ALIGN_PEER_GRACE_MS=0``): each worker publishes its
  partition's head; a record goes when it is before every other partition's head.
* **per-terminal, in offset order**: each worker also publishes the terminals of its next
  ``--lookahead`` records with the earliest time of each, and the time of the last; a record goes
  when it is before every other partition's last published time and no other partition holds an
  earlier record of its terminal. Releases stay a prefix of each partition (the committed offset
  still says what was applied).
* **per-terminal, any order**: the same, but any record of the lookahead whose terminal is not held
  back goes (a terminal held back holds its later records too). A commit then no longer says what
  was applied: it would need per-record idempotence in the state store.

**Lower bound for any rule without re-keying**: a terminal whose consecutive events (in event time)
sit on different partitions hands its state from one worker to another; each hand-off waits at
least one round for the other's update. The most hand-offs of any terminal, plus one, bounds every
such rule from below. Re-keying by terminal (an internal repartition topic, as Kafka Streams does)
has no hand-off: every terminal's events are in one partition, ordered there by a local merge.

Results: the ``align-rounds`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka.partitioner.default import murmur2

from . import entity_speed
from .results import write_section

INF = float("inf")
Records = list[tuple[float, str]]  # one partition's (event time ms, terminal), in offset order
RULES = ("global watermark, grace 0", "per-terminal, in offset order", "per-terminal, any order")
TURN_MS = 5.4  # entity-workers 2026-12-04 14:00, grace 0: 101,002 events in 407 s over 75.7k simulated rounds


def partitioned(n: int, accounts: int, partitions: int, density: float, seed: int = 0) -> list[Records]:
    """The entity workload (``entity_speed.workload``), time-ordered at ``density`` events per second
    of event time, split by murmur2 of the account key as Kafka's default partitioner does."""
    events = entity_speed.workload(n, accounts, seed)
    t0 = float(events[0]["timestamp"])
    out: list[Records] = [[] for _ in range(partitions)]
    for i, e in enumerate(events):
        p = (murmur2(str(e["account_id"]).encode()) & 0x7FFFFFFF) % partitions
        out[p].append((t0 + i * 1000.0 / density, str(e["terminal_id"])))
    return out


def min_rounds(parts: Sequence[Records]) -> int:
    """1 + the most hand-offs of one terminal between partitions, in event-time order (ties by
    partition): no rule without re-keying replays the backlog exactly in fewer rounds."""
    merged = sorted((t, p, term) for p, records in enumerate(parts) for t, term in records)
    last: dict[str, int] = {}
    handoffs: dict[str, int] = {}
    for _t, p, term in merged:
        if term in last and last[term] != p:
            handoffs[term] = handoffs.get(term, 0) + 1
        last[term] = p
    return 1 + max(handoffs.values(), default=0)


def replay(parts: Sequence[Records], rule: str, lookahead: int,
           log: list[tuple[int, float, str, int]] | None = None) -> int:
    """Rounds for one worker per partition to apply every record under ``rule`` (one of ``RULES``).
    Each round reads the state of every partition as of the round's start, as published heads and
    lookaheads would be. ``log``: each application appended as (round, event time, terminal,
    partition), for a test to check that every terminal's events were applied in order. Raises ``RuntimeError`` if a round makes no progress (a rule that can
    deadlock; none of these can: the earliest pending record always goes)."""
    pending = [list(records) for records in parts]  # not applied yet, in offset order
    at = [0] * len(pending)  # the prefix rules: pending[p][at[p]:] is what is left
    left = sum(map(len, pending))
    rounds = 0
    while left:
        rounds += 1
        heads = [records[i][0] if i < len(records) else INF for records, i in zip(pending, at, strict=True)]
        looks: list[tuple[dict[str, float], float]] = []
        if rule != RULES[0]:
            for records, i in zip(pending, at, strict=True):
                window = records[i:i + lookahead]
                # each terminal's earliest time in the window: the last write of the reversed pairs wins
                first = dict(zip(reversed([term for _t, term in window]), reversed([t for t, _term in window]),
                                 strict=True))
                looks.append((first, INF if len(records) - i <= lookahead else window[-1][0]))
        progress = 0
        for p, records in enumerate(pending):
            start = at[p]
            end = len(records) if rule == RULES[0] else min(len(records), start + lookahead)
            keep: Records = []
            held: set[str] = set()
            k = start
            while k < end:
                t, term = records[k]
                ok = term not in held
                for q in range(len(pending)):
                    if not ok or q == p:
                        continue
                    if rule == RULES[0]:
                        ok = t < heads[q] or (t == heads[q] and p < q)
                    else:
                        first, horizon = looks[q]
                        earlier = first.get(term)
                        ok = ((t < horizon or (t == horizon and p < q))  # ties: the lower partition first, as offline
                              and (earlier is None or earlier > t or (earlier == t and p < q)))
                if not ok:
                    if rule != RULES[2]:  # a prefix: the first record held back holds the rest
                        break
                    held.add(term)
                    keep.append((t, term))
                elif log is not None:
                    log.append((rounds, t, term, p))
                k += 1
            if rule == RULES[2]:
                progress += (end - start) - len(keep)
                pending[p] = keep + records[end:]
            else:
                progress += k - start
                at[p] = k
        if not progress:
            raise RuntimeError(f"{rule}: no progress in round {rounds}")
        left -= progress
    return rounds


def run(n: int, accounts_list: Sequence[int], partitions: int, lookahead: int, turn_ms: float) -> dict[str, Any]:
    rows = []
    for accounts in accounts_list:
        parts = partitioned(n, accounts, partitions, density=200.0)
        events = sum(map(len, parts))
        terminals = len({term for records in parts for _t, term in records})
        bound = min_rounds(parts)
        for rule in RULES:
            t = time.perf_counter()
            rounds = replay(parts, rule, lookahead)
            rows.append({"accounts": accounts, "terminals": terminals, "events": events, "rule": rule,
                         "rounds": rounds, "bound": bound, "seconds": time.perf_counter() - t})
            print(f"[{accounts:,} accounts] {rule}: {rounds:,} rounds ({events / rounds:,.1f} events a round; "
                  f"at least {bound:,})", flush=True)
    return {"rows": rows, "partitions": partitions, "lookahead": lookahead, "turn_ms": turn_ms}


def markdown(r: dict[str, Any]) -> str:
    k = r["partitions"]
    cost = (f"{r['turn_ms']} ms a round, the per-round cost measured for today's rule (entity-workers "
            "2026-12-04 14:00, grace 0: 101,002 events in 407 s, 75.7k rounds of the default run)"
            if r["turn_ms"] == TURN_MS else f"{r['turn_ms']} ms a round (--turn-ms)")
    lines = [f"One worker per partition ({k} partitions, keyed by account), the entity-workers workload "
             f"time-ordered; lookahead {r['lookahead']:,} records. Events/s projected at {cost}; a "
             "per-terminal round publishes and reads more, so its projection is a ceiling.", "",
             f"| terminals | rule | rounds | events a round | projected events/s ({k} workers) "
             "| fewest rounds without re-keying |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        per = row["events"] / row["rounds"]
        lines.append(f"| {row['terminals']:,} | {row['rule']} | {row['rounds']:,} | {per:,.1f} | "
                     f"{per / r['turn_ms'] * 1000:,.0f} | {row['bound']:,} |")
    return "\n".join(lines) + "\n"


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value
    parse.__name__ = f"integer >= {low}"  # argparse names the type in its one-line error
    return parse


def _accounts(text: str) -> list[int]:
    values = [_at_least(1)(a) for a in text.split(",")]
    if not values:
        raise ValueError(text)
    return values


def _milliseconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


_accounts.__name__ = "list of account counts >= 1"
_milliseconds.__name__ = "positive number of ms"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks align-rounds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=_at_least(1), default=100_000,
                   help="legit events (default 100000; frauds are added)")
    p.add_argument("--accounts", type=_accounts, default=[1000, 10000, 100000],
                   help="account counts to run, comma-separated, no thousands separators (terminals: fewer, "
                        "497 at 1000 accounts, 37847 at 100000; default 1000,10000,100000)")
    p.add_argument("--partitions", type=_at_least(1), default=4, help="partitions, one worker each (default 4)")
    p.add_argument("--lookahead", type=_at_least(1), default=8192,
                   help="records a worker publishes ahead (default 8192: a batch)")
    p.add_argument("--turn-ms", type=_milliseconds, default=TURN_MS, help=f"cost of one round in ms (default {TURN_MS})")
    p.add_argument("--write", action="store_true", help="also write the section of benchmarks/RESULTS.md (the "
                   "hand-written reading in it is replaced too)")
    args = p.parse_args(argv)
    result = run(args.events, args.accounts, args.partitions, args.lookahead, args.turn_ms)
    body = markdown(result)
    print(body)
    if args.write:
        write_section("align-rounds", "Exact replay by several workers: rounds of alignment vs re-keying "
                      "(`python -m benchmarks align-rounds`)", body)
    return 0
