"""The retrainer's memory: a bounded window of recent events and a bounded set of excluded ids.

**Window.** Each valid input event is kept as one ``WindowEntry`` — its raw JSON bytes (not a
parsed dict: a 13-field dict costs ~1.5 KB in CPython, its JSON ~350 B), event id, Kafka
partition/offset and record timestamp. An entry costs about ``len(raw) + 250`` bytes (slotted
object, bytes and str headers, the deque slot), so the default 100 000 events of ~350 B take
~60 MB. The window holds at most ``max_events`` (a ``deque(maxlen=…)`` drops the oldest) and
drops entries older than ``max_age_s`` (by record timestamp) as new ones arrive.

**Exclusions.** Alerts and analyst labels may arrive before or after their event, so nothing is
filtered at ingestion: ``Exclusions`` remembers alerted ids and labels (each bounded, oldest
forgotten first, ~120 B per id) and ``TrainingWindow.select`` applies them at training time.
Events the workers have not decided yet (offset at or past the worker group's committed offset)
are left out too: their alert may not exist yet.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..feedback import Label, prefer

ALERTED = "alerted"
FRAUD = "fraud"
UNDECIDED = "undecided"
TOO_OLD = "too_old"
LEFT_OUT_REASONS = (ALERTED, FRAUD, UNDECIDED, TOO_OLD)


@dataclass(frozen=True, slots=True)
class WindowEntry:
    timestamp_s: float
    partition: int
    offset: int
    event_id: str
    raw: bytes


V = TypeVar("V")


class BoundedIds(Generic[V]):
    """Insertion-ordered id → value map that forgets its oldest entries past ``max_size``."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: dict[str, V | None] = {}

    def add(self, event_id: str, value: V | None = None) -> None:
        self._items.pop(event_id, None)  # re-insert at the young end
        self._items[event_id] = value
        while len(self._items) > self.max_size:
            del self._items[next(iter(self._items))]

    def get(self, event_id: str) -> V | None:
        return self._items.get(event_id)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._items

    def __len__(self) -> int:
        return len(self._items)


class Exclusions:
    """Alerted event ids and labels (the winning ``feedback.Label`` per event), both bounded."""

    def __init__(self, max_ids: int) -> None:
        self.alerted: BoundedIds[None] = BoundedIds(max_ids)
        self.labels: BoundedIds[Label] = BoundedIds(max_ids)

    def add_alert(self, event_id: str) -> None:
        self.alerted.add(event_id)

    def add_label(self, label: Label) -> bool:
        """Keep the label that wins by the feedback contract's rule (``feedback.prefer``); True when
        the event's verdict became fraud with it (a new confirmed fraud)."""
        before = self.labels.get(label.event_id)
        winner = prefer(before, label)
        self.labels.add(label.event_id, winner)
        return winner.fraud and not (before is not None and before.fraud)

    def reason(self, event_id: str) -> str | None:
        """Why an event must not be trained on, or None."""
        if event_id in self.alerted:
            return ALERTED
        label = self.labels.get(event_id)
        if label is not None and label.fraud:
            return FRAUD
        return None


@dataclass
class Selection:
    """What a training run may use, and how many events were left out for which reason.

    ``alerted``: the decided events of the window that the workers alerted and no label says are
    fraud (silence reads as legit, as fraud teams read it). Never trained on, but part of the
    traffic a model's alert budget is a share of: the retrainer calibrates a candidate's threshold
    and gates its alert rate on the clean events *and* these (``retrain/job.py``). Calibrated on
    clean events alone, each generation alerted on its budget of them plus most of what the one
    before had alerted: 0.5 %, then 1.0, 1.3, 1.7, 2.0 % of live traffic over four retrainings,
    every gate passed (2026-12-07, docs/retraining.md)."""

    clean: list[WindowEntry] = field(default_factory=list)
    labelled: list[tuple[WindowEntry, str]] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    alerted: list[WindowEntry] = field(default_factory=list)
    # decided alerted events whose winning label is a review (any source but chargeback, which only ever says
    # fraud: not a review of the alert queue), legit and fraud (``job.alerted_weights``)
    reviewed_legit: int = 0
    reviewed_fraud: int = 0
    # with a label delay (``SD_RETRAIN_LABEL_DELAY_S``): the record time before which an alert's label has had time
    # to arrive (an alert older than it that nobody labelled is legit), and the decided alerted events labelled
    # fraud (any source) older and newer than it (``job.alerted_weights``)
    matured_before_s: float | None = None
    fraud_alerts_matured: int = 0
    fraud_alerts_young: int = 0

    def matured(self, entry: WindowEntry) -> bool:
        """Whether ``entry``'s label, if it has one, has had time to arrive (``matured_before_s``)."""
        return self.matured_before_s is not None and entry.timestamp_s < self.matured_before_s

    def legit_ids(self) -> set[str]:
        """The ids of the labelled events whose label is legit."""
        return {e.event_id for e, label in self.labelled if label != FRAUD}


class TrainingWindow:
    def __init__(self, max_events: int, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._entries: deque[WindowEntry] = deque(maxlen=max_events)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entries: Iterable[WindowEntry]) -> None:
        self._entries.extend(entries)
        self.evict()

    def evict(self) -> int:
        """Drop entries from the old end while they are older than ``max_age_s``."""
        cutoff = self.clock() - self.max_age_s
        dropped = 0
        while self._entries and self._entries[0].timestamp_s < cutoff:
            self._entries.popleft()
            dropped += 1
        return dropped

    def select(self, exclusions: Exclusions, decided: Mapping[int, int] | None,
               label_delay_s: float = 0.0) -> Selection:
        """Clean entries (oldest first) and labelled ones; ``decided`` maps partition → first
        offset the workers have not committed (None: treat everything as decided).
        ``label_delay_s`` (> 0): alerts older than that (record time) have their labels
        (``Selection.matured_before_s``)."""
        now = self.clock()
        cutoff = now - self.max_age_s
        out = Selection(left_out=dict.fromkeys(LEFT_OUT_REASONS, 0))  # every reason, 0 included (the report)
        if label_delay_s > 0:
            out.matured_before_s = now - label_delay_s
        for entry in self._entries:
            reason = exclusions.reason(entry.event_id)
            if entry.timestamp_s < cutoff:
                reason = TOO_OLD
            elif decided is not None and entry.offset >= decided.get(entry.partition, 0):
                reason = UNDECIDED
            else:
                label = exclusions.labels.get(entry.event_id)
                if label is not None:
                    out.labelled.append((entry, label.label))
            if reason is None:
                out.clean.append(entry)
            else:
                if reason == ALERTED and not _fraud(exclusions, entry.event_id):
                    out.alerted.append(entry)
                elif reason == ALERTED:
                    if out.matured(entry):
                        out.fraud_alerts_matured += 1
                    else:
                        out.fraud_alerts_young += 1
                label = exclusions.labels.get(entry.event_id)
                if reason == ALERTED and label is not None and label.source != "chargeback":
                    if label.fraud:
                        out.reviewed_fraud += 1
                    else:
                        out.reviewed_legit += 1
                out.left_out[reason] = out.left_out.get(reason, 0) + 1
        return out

    def estimate_bytes(self) -> int:
        """Approximate memory held by the entries (object, payload, id, numbers, deque slot)."""
        return sum(sys.getsizeof(e) + sys.getsizeof(e.raw) + sys.getsizeof(e.event_id) + 112
                   for e in self._entries)


def _fraud(exclusions: Exclusions, event_id: str) -> bool:
    label = exclusions.labels.get(event_id)
    return label is not None and label.fraud
