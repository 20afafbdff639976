"""A worker of an account + terminal model frozen past its session timeout, in a live stream.

Trials V and W (2026-12-07, by hand): two ``stream-detector worker`` processes, events keyed by
account on 4 partitions produced live, one worker SIGSTOPped past its session timeout, the other
taking its partitions over, then the frozen one resumed with SIGCONT while the stream was still
live: the zombie wakes with a batch fetched and a write-behind window open, whose terminal records
another worker has written since. It published alerts offline scoring does not raise, and alerts
scored otherwise (with ``SD_ENTITY_SOLE_OWNER=false`` still after 30b2bda). ``Worker._overtaken``
gives such a batch up unpublished and ``Worker._rejoin`` makes the client rejoin at once
(docs/entity-features.md, *a worker the group has moved past*).

Here the whole thing with real processes, real Kafka and Redis, in both modes on kafka-python and
with ``SD_ENTITY_SOLE_OWNER=false`` on confluent (librdkafka's own assignor): every alert is one
offline scoring of the time-ordered stream raises, with offline's score; none is missing;
duplicates (at least once) carry the same score; every entity record ends as offline
enrichment's. In one of its first 7 runs (by hand) both modes failed, 2-3 alerts of one terminal
each scored unlike offline, and once ended with a terminal's record unlike offline's: the zombie
rejoined and kafka-python's sticky assignor handed its partitions back in the generation the other
worker revoked them, so it read them from the offset committed before that worker's revoke hook
committed, and replaying the other worker's last terminal write from its undo snapshot undid the
part of partitions that worker kept reading on from (``entity.enrich.replays``,
``tests/unit/test_entity.py::test_a_new_owner_re_reading_part_of_a_live_workers_last_write_loses_none_of_its_events``).
Then 3 runs of 12 (``SD_ENTITY_SOLE_OWNER=false``) ended with up to 28 account records of a
partition short of the other worker's last events: kafka-python named the woken worker's lost
partitions in its JoinGroup, and its assignor gave one of them back to it in the generation the
other worker gave it up; its replay ended where its first batch ended, and its refused commit
rewound it past the rest (``transport.kafka_python.ExclusiveCooperativeStickyAssignor``,
``claim_only_held_partitions``; docs/entity-features.md, *a partition owned twice*).
Only workers are stopped: the session's Kafka
and Redis serve it, with fresh topics, group and prefix. ``long_tier``: deselected by ``make
test``, run by ``make test-chaos`` (``SD_CHAOS_STORMS=1``) and ``make test-long`` (tests/conftest.py).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream_detector.entity import EntitySpec, InMemoryState, RedisState, enrich_history
from stream_detector.entity.binary import decode
from stream_detector.entity.state import unwrap
from stream_detector.kafka_util import committed_offsets, end_offsets, read_all
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from tests.chaos.harness import WorkerProcs, base_settings, committed_total, drained, group_members, publish
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.long_tier]

SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400), max_distinct=8)
T0 = 1_790_000_000_000
DAY_MS = 86_400_000
RATE = 600  # events/s produced while the workers run
TERMINALS = 40  # few, busy terminals: each is seen on every partition
PER_DAY = 1_500  # events a day of event time, in the training history and the stream alike
MOST = 120_000  # events generated; the feed stops well before (~200 s at RATE)
# what the frozen worker's log says after SIGCONT when it was evicted and knew it
GIVE_UP = "past this batch (first offsets"  # Worker._overtaken's WARNING
EVICTED = ("lost (evicted from the group?)", "is no longer a member of its group", GIVE_UP)
APPROXIMATE = "already applied and not in the replay log"  # Enricher.warn_misses: said only of a batch kept


def _events(n: int, seed: int, end_ms: int) -> list[dict[str, Any]]:
    """``n`` raw card events up to ``end_ms``, ``PER_DAY`` a day of event time (the training
    history's density, so that the stream is scored like the history the model learned), in
    strictly increasing event time (no ties for alignment and offline ordering to break
    differently), each at a terminal: 70 % at its account's home terminal, the rest at any of
    ``TERMINALS``."""
    events, _ = Simulator(seed=seed, accounts=300, run_id=f"frz{seed}", raw=True).batch(
        n, 0.03, now_ms=end_ms, span_ms=n * DAY_MS // PER_DAY)
    rng = random.Random(seed)
    last = 0
    for event in events:
        last = event["timestamp"] = max(int(event["timestamp"]), last + 1)
        home = int(str(event["account_id"]).rsplit("-", 1)[1]) % TERMINALS
        event["terminal_id"] = f"term-{home if rng.random() < 0.7 else rng.randrange(TERMINALS):03d}"
    return events


@pytest.fixture(scope="module")
def terminal_bundle() -> Bundle:
    history = _events(3000, seed=101, end_ms=T0 - MOST * DAY_MS // PER_DAY)  # just before the stream
    return build_bundle(train(enrich_history(SPEC, history), TrainConfig(
        epochs=3, seed=0, threshold_method="quantile", target_fpr=0.01), entity=SPEC))


class _Feed:
    """Produces ``events`` in order, keyed by account, at ``rate`` per second until stopped."""

    def __init__(self, settings: Settings, events: list[dict[str, Any]], rate: int) -> None:
        self.settings, self.events, self.rate = settings, events, rate
        self.sent = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with EventProducer(self.settings, self.settings.input_topic) as producer:
                started = time.monotonic()
                while not self.halt.is_set() and self.sent < len(self.events):
                    due = min(len(self.events), int((time.monotonic() - started) * self.rate) + 1)
                    if due > self.sent:
                        producer.send(self.events[self.sent:due])
                        self.sent = due
                    self.halt.wait(0.02)  # the pace of the stream, not a synchronisation
        except BaseException as exc:  # noqa: BLE001 - surfaced by finish()
            self.error = exc

    def finish(self) -> list[dict[str, Any]]:
        """Stop producing; the events produced (all acknowledged), in order."""
        self.halt.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive() and self.error is None, f"the feed failed: {self.error!r}"
        assert self.sent < len(self.events), "the feed ran out of events before it was stopped: raise MOST"
        return self.events[:self.sent]


def _committed(settings: Settings) -> dict[int, int]:
    return {tp.partition: o for tp, o in committed_offsets(settings, settings.group_id, settings.input_topic).items()}


def _records_unlike_offline(settings: Settings, produced: list[dict[str, Any]]) -> dict[str, Any]:
    """The entity records in Redis (every window written and committed) that differ from offline
    enrichment's final state of the time-ordered stream: where a lost update, a double or an
    out-of-order application happened (an alert's score shows it only where it alerts). Per such
    record (``key=value``), both states as ``binary.decode`` gives them, for ``mismatch.json``."""
    store = InMemoryState()
    enrich_history(SPEC, produced, store=store)
    client = redis.Redis.from_url(settings.redis_url)
    state = RedisState(client, settings.redis_prefix)
    differ: dict[str, Any] = {}
    for (_, (key, value)), record in store.records.items():
        raw = client.get(state.key(SPEC, (key, value)))
        online = None if raw is None else decode(SPEC, key, unwrap(raw))
        if online is None or online["c"] != record["c"]:
            differ[f"{key}={value}"] = {"online": online, "offline": record}
    client.close()
    return dict(sorted(differ.items()))


def _log_after(path: Path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


@pytest.mark.parametrize(("sole", "transport"), [(True, "kafka-python"), (False, "kafka-python"), (False, "confluent")],
                         ids=["sole-owner", "not-sole-owner", "not-sole-owner-confluent"])
def test_an_entity_worker_frozen_past_its_session_timeout_then_resumed_alerts_like_offline(
        services: Any, terminal_bundle: Bundle, env_for: Any, tmp_path: Path, sole: bool, transport: str) -> None:
    bundle = terminal_bundle
    settings = base_settings(services, entity_sole_owner=sole, transport=transport)
    publish(settings, bundle)
    feed = _Feed(settings, _events(MOST, seed=7, end_ms=T0), RATE)  # event times in the past
    procs = WorkerProcs(env_for(settings), tmp_path)
    log0 = tmp_path / "worker-0.log"
    timeline: dict[str, float] = {}
    began = time.monotonic()

    def mark(what: str) -> None:
        timeline[what] = round(time.monotonic() - began, 1)

    try:
        procs.start(0)
        procs.start(1)
        wait_until(lambda: group_members(settings) == 2, timeout_s=90, message="two members")
        feed.thread.start()
        mark("feed")
        # both making progress: every partition committed, the group still of two members
        wait_until(lambda: len(c := _committed(settings)) == 4 and min(c.values()) > 300
                   and group_members(settings) == 2, timeout_s=90, message="two members making progress")
        procs.signal(0, signal.SIGSTOP)  # frozen mid-whatever, its window open, past the 10 s session timeout
        mark("sigstop")
        fetched = end_offsets(settings, settings.input_topic)  # all it can have fetched before the freeze
        wait_until(lambda: group_members(settings) == 1, timeout_s=60, message="the frozen worker left the group")
        mark("evicted")
        # the other worker has handled and committed everything the frozen one could hold
        wait_until(lambda: all(_committed(settings).get(tp.partition, -1) >= end for tp, end in fetched.items()),
                   timeout_s=90, message="the other worker committed past the frozen worker's batch")
        mark("overtaken")
        woke_at = log0.stat().st_size
        procs.signal(0, signal.SIGCONT)  # the zombie wakes with a stale batch and window, the stream live
        mark("sigcont")
        before = committed_total(settings)
        wait_until(lambda: group_members(settings) == 2 and committed_total(settings) > before + 5_000,
                   timeout_s=90, message="the zombie rejoined and the stream went on")
        mark("rejoined")
        produced = feed.finish()
        mark("feed stopped")
        wait_until(lambda: drained(settings), timeout_s=120, message="drained after the feed stopped")
        mark("drained")
    finally:
        feed.halt.set()
        procs.stop_all()
    woke = _log_after(log0, woke_at)

    offline = score_events(bundle, produced).scores.tolist()
    expected = {e["event_id"]: s for e, s in zip(produced, offline, strict=True) if s > bundle.threshold}
    alerts = [orjson.loads(r.value) for r in read_all(settings, settings.alerts_topic)]
    scores: dict[str, list[float]] = defaultdict(list)
    for alert in alerts:
        scores[alert["event_id"]].append(alert["score"])
    extra = sorted(set(scores) - set(expected))
    missing = sorted(set(expected) - set(scores))
    # float32 GEMM precision: a batch's shape decides the kernel's summation order (~1e-7 relative)
    wrong = sorted(i for i, got in scores.items() if i in expected
                   and any(s != pytest.approx(expected[i], rel=1e-5) for s in got))
    unequal_duplicates = sorted(i for i, got in scores.items() if len(set(got)) > 1)
    unlike = _records_unlike_offline(settings, produced)
    if extra or missing or wrong or unequal_duplicates or unlike:
        where = {orjson.loads(r.value)["event_id"]: (r.partition, r.offset)
                 for r in read_all(settings, settings.input_topic)}
        offline_by_id = dict(zip((e["event_id"] for e in produced), offline, strict=True))

        def shown(ids: list[str]) -> list[Any]:
            return [(i, where.get(i), scores.get(i), offline_by_id.get(i)) for i in ids[:20]]

        odd = set(extra) | set(missing) | set(wrong) | set(unequal_duplicates)
        features = {e["event_id"]: e for e in enrich_history(SPEC, produced) if e["event_id"] in odd}
        (tmp_path / "mismatch.json").write_bytes(orjson.dumps({  # for the analysis: what differs, and where
            "timeline": timeline, "records_unlike_offline": unlike, "extra": extra, "missing": missing,
            "events_of_unlike_records": {name: [(where.get(e["event_id"]), e["event_id"], e["timestamp"])
                                                for e in produced if f"account_id={e['account_id']}" == name
                                                or f"terminal_id={e['terminal_id']}" == name] for name in unlike},
            "wrong": wrong, "unequal_duplicates": unequal_duplicates,
            "offline_scores": {i: offline_by_id.get(i) for i in odd},
            "where": {i: where.get(i) for i in odd}, "offline_features": features,
            "alerts": [a for a in alerts if a["event_id"] in odd]}, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
        pytest.fail(f"(details: {tmp_path / 'mismatch.json'}) "
                    f"sole={sole}: {len(produced)} events, {len(expected)} alerts offline, {len(alerts)} published; "
                    f"extra {len(extra)} {shown(extra)}; missing {len(missing)} {shown(missing)}; wrong score "
                    f"{len(wrong)} {shown(wrong)}; duplicates with other scores {len(unequal_duplicates)} "
                    f"{shown(unequal_duplicates)}; entity records unlike offline's {len(unlike)} {list(unlike)[:10]}; "
                    f"timeline {timeline}; worker 0 after SIGCONT: "
                    f"{[line for line in woke.splitlines() if 'WARNING' in line or 'member' in line][:20]}")
    assert len(expected) >= 50, f"too few alerts to tell: {len(expected)}"
    # the scenario made a zombie: after SIGCONT the frozen worker found itself evicted
    assert any(sign in woke for sign in EVICTED), f"worker 0 did not find itself evicted after SIGCONT: {woke[-3000:]}"
    if GIVE_UP in woke:  # the batch it gave up: no warning of approximate features first (a trial, 2026-12-07)
        assert APPROXIMATE not in woke[:woke.index(GIVE_UP)], woke[:woke.index(GIVE_UP)][-3000:]
    print(f"sole={sole}: {len(produced)} events, {len(expected)} alerts ({len(alerts) - len(scores)} duplicates), "
          f"entity records unlike offline's {len(unlike)}, timeline {timeline}, "
          f"worker 0 after SIGCONT: {[sign for sign in EVICTED if sign in woke]}")
