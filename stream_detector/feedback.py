"""Delayed labels: the feedback contract, and which label an event has at a given time.

Fraud teams learn the truth late: an analyst's verdict within hours, a chargeback within weeks.
Each verdict is one record, on the feedback topic (``SD_FEEDBACK_TOPIC``) or in a file given to
``train --feedback`` (CSV, JSON Lines or Parquet; ``inputs.read_feedback``)::

    {"event_id": "e-123",                 # the event's id (the input's event_id), text
     "label": "fraud" | "legit",          # exactly these two words
     "source": "chargeback" | "analyst" | any other text,   # optional: "unspecified"
     "labelled_at": "2026-11-30T10:00:00Z" | 1764496800000}  # RFC 3339 or an epoch number

``labelled_at`` is when the label became known. On the topic it may be left out: the record's
Kafka timestamp is taken instead (the time the label was published). In a file it is required —
a file has no other clock, and point-in-time features need it.

A record that breaks the contract is a ``Problem`` (reason + message, the dead-letter reasons of
``schema.RejectReason``), never silently dropped or coerced.

**One event, several labels** (an analyst's verdict, then a chargeback; a representment that
reverses a chargeback): the label that wins is the one of the highest-ranked source —
``chargeback`` over ``analyst`` over any other source — and, within a source, the latest
``labelled_at``; on an exact tie ``fraud`` wins. The rule depends only on the records, not on the
order they arrive in, so every reader (retrainer, console, ``train``) reaches the same verdict.
``Verdicts.verdict(event_id, as_of=t)`` applies it to the labels known at time ``t`` only
(``labelled_at <= t``): the point-in-time view that features and evaluations must use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .fieldschema import epoch_to_ms
from .schema import Problem, RejectReason, json_type, not_json_message, parse_timestamp_ms

FRAUD, LEGIT = "fraud", "legit"
SOURCE_RANK = {"chargeback": 2, "analyst": 1}  # any other source ranks 0
UNSPECIFIED = "unspecified"
MAX_ID = 512  # as an event's id (schema.Event)
PLAUSIBLE_MS = (631_152_000_000.0, 4_102_444_800_000.0)  # 1990-01-01 .. 2100-01-01 UTC, as fieldschema


@dataclass(frozen=True, slots=True)
class Label:
    """One verdict on one event. ``labelled_at`` in epoch ms (float64, UTC)."""

    event_id: str
    fraud: bool
    source: str
    labelled_at: float

    @property
    def label(self) -> str:
        return FRAUD if self.fraud else LEGIT

    @property
    def rank(self) -> tuple[int, float, bool, str]:
        """The precedence key of the module docstring's rule: the greatest wins (two other sources
        with the same time and label: the source name decides, so arrival order never does)."""
        return SOURCE_RANK.get(self.source, 0), self.labelled_at, self.fraud, self.source

    def as_record(self) -> dict[str, Any]:
        """The feedback record of this label (``labelled_at`` a whole epoch ms as an integer)."""
        return {"event_id": self.event_id, "label": self.label, "source": self.source,
                "labelled_at": int(self.labelled_at) if self.labelled_at.is_integer() else self.labelled_at}

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_record())


def parse_label(obj: object, default_time_ms: float | None = None, text_ids: bool = False) -> Label | Problem:
    """One feedback record (a parsed JSON object or a file row) as a ``Label``, or why it is not one.

    ``default_time_ms`` stands for a missing ``labelled_at`` (the Kafka record's timestamp); without
    it a missing ``labelled_at`` is a problem. ``text_ids``: the ``event_id`` must be a JSON string,
    as an event's is on the topic (files: an integer id is its digits, as ``inputs`` reads events).
    """
    if not isinstance(obj, dict):
        return RejectReason.NOT_AN_OBJECT, f"a feedback record must be a JSON object, got {json_type(obj)}"
    event_id = obj.get("event_id")
    if event_id is None or event_id == "":
        return RejectReason.MISSING_EVENT_ID, "feedback record without event_id"
    if isinstance(event_id, bool) or not isinstance(event_id, str if text_ids else (str, int)):
        return RejectReason.WRONG_TYPE, f"event_id must be a string, got {json_type(event_id)}"
    event_id = str(event_id)
    if len(event_id) > MAX_ID:
        return RejectReason.WRONG_TYPE, f"event_id longer than {MAX_ID} characters"
    label = obj.get("label")
    if label not in (FRAUD, LEGIT):
        if isinstance(label, str) and label.strip().lower() in (FRAUD, LEGIT):  # a trial: "Fraud", no hint
            return RejectReason.INVALID_LABEL, (f"label must be \"fraud\" or \"legit\", got {label.strip()!r}"
                                                f"{' with spaces' if label != label.strip() else ''}: "
                                                f"labels are lowercase ({label.strip().lower()!r})")
        flag = _flag_word(label)
        if flag is not None:  # a trial (G): 1/0 labels, said as "text of 1 character"
            fraud, legit = flag
            return RejectReason.INVALID_LABEL, (f"label must be \"fraud\" or \"legit\", got the flag {label!r}: "
                                                f"write fraud for {fraud} and legit for {legit}")
        return RejectReason.INVALID_LABEL, f"label must be \"fraud\" or \"legit\", got {_kind(label)}"
    source = obj.get("source")
    if source is None or source == "":
        source = UNSPECIFIED
    elif not isinstance(source, str):
        return RejectReason.WRONG_TYPE, f"source must be text, got {json_type(source)}"
    at = obj.get("labelled_at")
    if at is None or at == "":
        if default_time_ms is None:
            return RejectReason.INVALID_TIMESTAMP, "feedback record without labelled_at"
        at_ms = float(default_time_ms)
    else:
        parsed = labelled_at_ms(at)
        if not isinstance(parsed, float):
            return parsed
        at_ms = parsed
    return Label(event_id, label == FRAUD, source, at_ms)


_FLAGS = {"1": ("1", "0"), "0": ("1", "0"), "1.0": ("1.0", "0.0"), "0.0": ("1.0", "0.0"), "true": ("true", "false"),
          "false": ("true", "false"), "yes": ("yes", "no"), "no": ("yes", "no"), "y": ("y", "n"), "n": ("y", "n")}


def _flag_word(value: object) -> tuple[str, str] | None:
    """The (fraud, legit) spellings of a 0/1, true/false or yes/no flag ``value`` is one of, or None.
    Such a value is a well-known token, safe to repeat in a message (``_kind`` never repeats one)."""
    if isinstance(value, bool):
        return ("true", "false")
    if isinstance(value, (int, float)) and value in (0, 1):
        return ("1", "0")
    if isinstance(value, str):
        return _FLAGS.get(value.strip().lower())
    return None


def _kind(value: object) -> str:
    """A value's type (and a text's length), never the value: messages reach dead-letter headers."""
    if isinstance(value, str):
        return f"text of {len(value)} character{'s' if len(value) != 1 else ''}" if value else "empty text"
    return "nothing" if value is None else json_type(value)


def labelled_at_ms(value: object) -> float | Problem:
    """``labelled_at`` as epoch ms: RFC 3339 text (naive = UTC), or an epoch number (or its digits)
    whose unit is read from its magnitude as for events' timestamps (< 1e11 seconds, < 1e14 ms,
    ``fieldschema.epoch_to_ms``); 1990..2100 only (``implausible_timestamp`` else, never a 1970)."""
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, bool):
        return RejectReason.INVALID_TIMESTAMP, "labelled_at: a boolean is not a time"
    try:
        ms = epoch_to_ms(float(value), "auto") if isinstance(value, (int, float)) else parse_timestamp_ms(value)
    except (TypeError, ValueError, OverflowError):
        return RejectReason.INVALID_TIMESTAMP, f"labelled_at is neither RFC 3339 nor an epoch number ({_kind(value)})"
    if not math.isfinite(ms):
        return RejectReason.INVALID_TIMESTAMP, "labelled_at is not finite"
    if not PLAUSIBLE_MS[0] <= ms <= PLAUSIBLE_MS[1]:
        return RejectReason.IMPLAUSIBLE_TIMESTAMP, f"labelled_at ({_kind(value)}) is outside 1990..2100"
    return ms


def decode_label(value: bytes | None, record_time_ms: float | None = None) -> Label | Problem:
    """A feedback topic record's value as a ``Label``, or why it is not one (its dead-letter reason).
    ``record_time_ms``: the Kafka record timestamp, used when ``labelled_at`` is absent."""
    if value is None:
        return RejectReason.TOMBSTONE, "null record value"
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return RejectReason.INVALID_JSON, not_json_message(value, str(exc))
    return parse_label(obj, record_time_ms, text_ids=True)


def prefer(old: Label | None, new: Label) -> Label:
    """The label that wins between two of the same event (the module docstring's rule)."""
    return new if old is None or new.rank > old.rank else old


class Verdicts:
    """Every label seen, per event; the winning label of an event, now or as known at a time.

    Memory: the labels themselves (~200 B each); fraud teams label a small share of events.
    """

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        self._by_event: dict[str, list[Label]] = {}
        self.count = 0
        for label in labels:
            self.add(label)

    def add(self, label: Label) -> None:
        self._by_event.setdefault(label.event_id, []).append(label)
        self.count += 1

    def __len__(self) -> int:
        """Number of labelled events."""
        return len(self._by_event)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._by_event

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_event)

    def labels(self) -> list[Label]:
        """Every label, as added (per event)."""
        return [label for labels in self._by_event.values() for label in labels]

    def winner(self, event_id: str, as_of: float | None = None) -> Label | None:
        """The label that wins among those known at ``as_of`` (epoch ms; None: all), or None."""
        best: Label | None = None
        for label in self._by_event.get(event_id, ()):
            if as_of is None or label.labelled_at <= as_of:
                best = prefer(best, label)
        return best

    def verdict(self, event_id: str, as_of: float | None = None) -> bool | None:
        """True (fraud), False (legit) or None (no label known at ``as_of``)."""
        best = self.winner(event_id, as_of)
        return None if best is None else best.fraud

    def frauds(self, as_of: float | None = None) -> set[str]:
        """Ids of the events whose winning label (at ``as_of``) is fraud."""
        return {e for e in self._by_event if self.verdict(e, as_of)}

