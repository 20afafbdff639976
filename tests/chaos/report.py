"""Markdown for docs/RELIABILITY.md from the chaos figures."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COLUMNS = ["scenario", "delivery", "events", "anomalies", "poison", "kills", "restarts", "distinct_alerts",
           "lost_alerts", "duplicate_alerts", "dead_letters", "poison_not_dead_lettered", "all_committed",
           "live_reader_agrees"]

FAILOVER_COLUMNS = ["scenario", "delivery", "events", "anomalies", "poison", "killed", "open_transaction_seen",
                    "held_or_failed",
                    "distinct_alerts", "lost_alerts", "duplicate_alerts", "dead_letters", "duplicate_dead_letters",
                    "poison_not_dead_lettered", "all_committed", "live_reader_agrees", "seconds"]
FAILOVER_INTRO = [
    "",
    "## Failover tier: three brokers, Redis with Sentinel (`tests/failover`)",
    "",
    "A three-node KRaft cluster (each node broker + controller, replication factor 3,",
    "`min.insync.replicas=2` for every topic including `__consumer_offsets` and `__transaction_state`)",
    "and Redis with a replica and three Sentinels, from `deploy/services.sh`. Two workers (threads of",
    "the test process) consume while a paced producer (`acks=all`, idempotent) feeds the stream; the",
    "fault hits once they are under way. `killed` names what was killed or cut, `held_or_failed` counts",
    "batches held or deliveries failed during a stall, `seconds` the scenario's wall time.",
    "Same pass rules as above; the live `read_committed` reader must agree with the verifier.",
]
FAILOVER_NOTES = [
    "- **Leader kills**: with one of three replicas gone, 2 remain = `min.insync.replicas`, so `acks=all`",
    "  writes, transactions and offset commits continue on the new leaders after the controller fences",
    "  the dead node (`broker.session.timeout.ms`, 6 s here). In exactly-once mode the alerts-leader",
    "  fault first waits until an alerts partition's last stable offset trails its high watermark (a",
    "  transaction open on it) and then kills that partition's leader (`open_transaction_seen`).",
    "- **Two brokers down**: below `min.insync.replicas` and without a controller quorum nothing can be",
    "  written or committed; the workers hold their batch (partitions paused) until the nodes return.",
    "- **Found and fixed by this tier**: with two brokers down, `commit_transaction` can time out on the",
    "  worker's watchdog after the coordinator has prepared the commit; the coordinator then completes it,",
    "  and retrying the held batch published its records a second time (2 duplicate dead letters under",
    "  `read_committed` in one of two short runs). A batch whose transaction failed at commit is now",
    "  settled instead (`BatchHold.settle`: a fresh producer's `init_transactions` completes or",
    "  aborts it, then the partitions are rewound to the committed offsets and re-read only if needed).",
    "- **Also found**: after brokers were killed, kafka-python transaction calls that never return kept",
    "  the watchdog's ThreadPoolExecutor thread, which the interpreter joins at exit: the worker process",
    "  hung on shutdown. The watchdog now waits on a daemon thread per call (`transport/eos.py`: `watchdog`).",
    "- **Partition**: node 3's client listener, its controller listener and its own path to the other",
    "  controllers go through loopback TCP proxies that the test cuts; only node 3's follower fetches",
    "  from the other leaders stay possible (they cannot make it a leader again). No network namespaces.",
    "- **Redis failover and entity features — the rule**: an entity feature sees either the state the new",
    "  primary holds or, while no primary answers, nothing (the batch is held, never scored on missing",
    "  state, and its offsets are not committed). Replication is asynchronous, so the last writes before",
    "  the kill may be missing on the promoted replica: those events are then absent from their entity's",
    "  history (the features undercount), never counted twice, because each record's per-partition",
    "  idempotency offsets are stored in the same value and roll back with it. Alerts are never lost.",
    "  Bound the window with `min-replicas-to-write 1` / `min-replicas-max-lag` on the primary.",
]
KEEP_MARKER = "<!-- soak: written by tests/soak, kept by this report -->"


def write_report(target: str, figures: list[dict[str, Any]], rounds: int) -> None:
    lines = [
        "# Reliability: what the chaos suite measured",
        "",
        f"_Written by `SD_CHAOS_ROUNDS={rounds} SD_RELIABILITY_REPORT=docs/RELIABILITY.md pytest tests/chaos` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}), against a real Kafka 4.4 broker and a real Redis._",
        "",
        "Each scenario produces a known stream (N events with K anomalies and poison records, unique ids),",
        "breaks something, and counts outcomes from the alerts and dead-letter topics: a `read_committed`",
        "reader runs during the chaos where stated, and a verifier reads everything afterwards",
        "(`read_committed` in exactly-once mode). Pass: no anomaly without an alert (at-least-once), exactly",
        "K distinct alerts and no duplicates in exactly-once mode, every poison record dead-lettered, every",
        "offset committed.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in figures:
        if row.get("tier") != "failover":
            lines.append("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
    lines += [
        "",
        "Duplicates in at-least-once mode are allowed by design (a batch whose commit was lost to a kill is",
        "redelivered); in exactly-once mode the `read_committed` view must show none.",
        "",
        "Also in the suite, asserted but not tabulated (`tests/chaos/test_chaos.py`): SIGKILL and restart of",
        "a single worker in both modes; Redis down past the staleness budget (batch held, partitions paused,",
        "no commit, automatic resume); broker restart after a drain; the alerts topic deleted (writes",
        "refused) until it is recreated (no commit, partitions paused, then every anomaly alerted); a second",
        "worker joining mid-stream under cooperative and eager rebalancing (no loss; no duplicate in exactly-once). And",
        "`tests/integration/test_fuzz.py`: adversarial payloads never crash the worker.",
        "",
    ]
    failover = [row for row in figures if row.get("tier") == "failover"]
    if failover:
        lines += [*FAILOVER_INTRO, "", "| " + " | ".join(FAILOVER_COLUMNS) + " |", "|" + "---|" * len(FAILOVER_COLUMNS)]
        lines += ["| " + " | ".join(str(row.get(c, "")) for c in FAILOVER_COLUMNS) + " |" for row in failover]
        lines += ["", *FAILOVER_NOTES, ""]
    path = Path(target)
    kept = path.read_text().partition(KEEP_MARKER) if path.exists() else ("", "", "")
    if kept[1]:  # the soak section (tests/soak) is written by its own harness and kept as it is
        lines += [KEEP_MARKER + kept[2].rstrip("\n"), ""]
    path.write_text("\n".join(lines))
