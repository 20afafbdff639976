"""Shapes of what crosses the wire: events in, alerts and dead-letter records out. No I/O here.

An **event** is one flat JSON object per Kafka message: ``event_id`` (string, required),
optional ``account_id`` (string or integer), optional ``timestamp`` (RFC 3339 string or epoch
milliseconds), optional ``schema_version`` (only ``1`` is known), and any number of other fields
whose values are numbers, booleans, strings or null. How each field is typed (and whether it is a
feature) is the bundle's field schema (``fieldschema.py``). Nested objects and arrays are
rejected: the detector scores flat records.

The hot path validates with hand-written checks on top of orjson (see ``pipeline/decode.py``),
because per-event pydantic validation costs more than the whole rest of the pipeline; the
``Event`` model below is the reference contract, and a unit test keeps the two in agreement.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
RESERVED_FIELDS = frozenset({"event_id", "account_id", "timestamp", "schema_version"})
Scalar = str | int | float | bool | None


class RejectReason(StrEnum):
    """Why an event went to the dead-letter topic (header ``sd.error.reason``)."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_EVENT_ID = "missing_event_id"
    WRONG_TYPE = "wrong_type"
    NON_FINITE_NUMBER = "non_finite_number"
    OVERSIZE = "oversize"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID_TIMESTAMP = "invalid_timestamp"
    DUPLICATE_KEY = "duplicate_key"
    TOMBSTONE = "tombstone"  # a null record value (Kafka's delete marker); the key is kept
    IMPLAUSIBLE_TIMESTAMP = "implausible_timestamp"  # decades away from the model's training range
    NO_FEATURES = "no_features"  # none of the model's input fields has a value (fieldschema.FieldSchema.input_fields)
    INVALID_ROW = "invalid_row"  # a CSV row with the wrong number of cells, or a cell that is not UTF-8 text
    INVALID_LABEL = "invalid_label"  # a feedback record whose label is not "fraud" or "legit"
    UNREADABLE = "unreadable_record"  # the client could not read the record (corrupt or unknown codec)
    NO_CARRIED_FEATURES = "no_carried_features"  # two stages: a repartition topic's record without stage 1's features


Problem = tuple[RejectReason, str]  # why a record cannot be scored: the reason and a human message


class Event(BaseModel):
    """Reference contract of one event (extra flat fields are allowed and become features)."""

    model_config = ConfigDict(extra="allow", strict=True)

    event_id: str = Field(min_length=1, max_length=512, description="Unique id of the event.")
    account_id: str | int | None = Field(None, description="Entity the event belongs to; the Kafka key.")
    timestamp: str | int | float | None = Field(None, description="RFC 3339 string or epoch milliseconds.")
    schema_version: int | None = Field(None, description="Event schema version; only 1 is known.")

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int | None) -> int | None:
        if value is not None and value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(f"unknown schema_version {value}")
        return value

    @field_validator("timestamp")
    @classmethod
    def _parsable_timestamp(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None:
            parse_timestamp_ms(value)
        return value

    def model_post_init(self, context: Any, /) -> None:
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise ValueError(f"field {name!r}: nested values are not supported")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"field {name!r}: non-finite number")


def parse_timestamp_ms(value: object) -> float:
    """Epoch milliseconds from an RFC 3339 string or a number of epoch milliseconds.

    Raises ``ValueError`` for anything else. Naive RFC 3339 strings are taken as UTC.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be RFC 3339 or epoch milliseconds, not a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("timestamp is not finite")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc).timestamp() * 1000.0
        return parsed.timestamp() * 1000.0
    raise ValueError(f"timestamp must be RFC 3339 or epoch milliseconds, got {json_type(value)}")




class FeatureContribution(BaseModel):
    """One feature's part of an event's reconstruction error."""

    feature: str = Field(description="Input field name (one-hot columns are summed into their field), or with "
                         "why (contribution not null) the name of the fields made typical together: an input "
                         "field, KEY__history or KEY__frauds (fields).")
    share: float = Field(description="Fraction of the event's total error, 0..1.")
    error: float = Field(description="The field's summed squared reconstruction error (scaled space).")
    contribution: float | None = Field(None, description="What this field took off the score when it took its "
                                       "typical value (after the fields listed before it), score units: the fields "
                                       "whose typical values clear the alert, chosen greedily (docs/alerts.md, "
                                       "Why). Null with SD_WHY_CANDIDATES=0 or a model trained before 2026-12-07: "
                                       "the fields with the largest errors are listed.")
    score_after: float | None = Field(None, description="The score with this field and those listed before it at "
                                      "their typical values: above the threshold on the last one listed, the "
                                      "fields listed do not clear the alert. Null where contribution is.")
    fields: list[str] | None = Field(None, description="The fields made typical together under this name, "
                                     "largest error first, at most SD_TOP_FEATURES: an input field alone, or with "
                                     "the entity features computed from its value (its ratios to each entity's "
                                     "history, its first-seen flag); for KEY__history a key's history features "
                                     "(counts, sums, means, seconds since its last event), for KEY__frauds its "
                                     "label features. Null where contribution is.")


class HeadContribution(BaseModel):
    """One unit's part in the supervised head's verdict (``Scorer.head_attributions``)."""

    feature: str = Field(description="The unit's name, as in top_features (a model without typical values: the "
                         "input field's name, one-hot columns summed).")
    contribution: float = Field(description="How far it pushed the head towards fraud: the calibrated log-odds of "
                                "the event less those with this unit at its typical value (occlusion; a model "
                                "without typical values: gradient × input of the head's logit).")


class Alert(BaseModel):
    """What a subscriber of the alerts topic receives for each flagged event."""

    event_id: str
    account_id: str | None
    score: float = Field(description="Reconstruction error of the event (mean over features).")
    threshold: float = Field(description="The autoencoder's threshold (the score is above it when "
                             "\"autoencoder\" fired).")
    threshold_version: int
    model_version: str
    top_features: list[FeatureContribution] = Field(description="Why the autoencoder fired (docs/alerts.md, Why); "
                                                    "empty when only the supervised head fired (its score is under "
                                                    "the threshold): head_top_features says why.")
    fired: list[str] = Field(default_factory=lambda: ["autoencoder"], description="Which part fired: "
                             "\"autoencoder\" (score > threshold), \"supervised\" (probability > "
                             "head_threshold), or both.")
    probability: float | None = Field(None, description="The supervised head's calibrated fraud probability "
                                      "(models trained with --supervised; else null).")
    head_threshold: float | None = Field(None, description="The supervised head's threshold of this threshold "
                                         "version (null without a head).")
    head_top_features: list[HeadContribution] | None = Field(None, description="With a supervised head: the "
                                                             "fields that pushed its verdict towards fraud most "
                                                             "(positive contributions, largest first).")
    event: dict[str, Scalar] = Field(description="The original event as received.")
    detected_at: str = Field(description="RFC 3339 UTC time the worker decided.")
    event_time_ms: int = Field(description="Kafka timestamp of the input record (epoch ms).")
    topic: str
    partition: int
    offset: int


class DeadLetterHeaders:
    """Header names on dead-letter records; the value is the original bytes, untouched."""

    REASON = "sd.error.reason"
    MESSAGE = "sd.error.message"
    TOPIC = "sd.source.topic"
    PARTITION = "sd.source.partition"
    OFFSET = "sd.source.offset"
    FAILED_AT = "sd.failed_at"


_NESTED = (dict, list)


_ID_WORDS = ("event", "transaction", "trans", "txn", "tx", "trx", "payment", "order", "record")


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
               dict: "object"}


def json_type(value: object) -> str:
    """A value's JSON type for a message (``null``, ``boolean``, ``integer``, ``number``,
    ``string``, ``array``, ``object``), never the value; another Python type by its name. A trial's
    dead letter of a JSON ``null`` said ``got NoneType``."""
    return _JSON_TYPES.get(type(value)) or type(value).__name__


def _id_hint(obj: dict[str, Any]) -> str:
    """For a ``missing_event_id`` message: a field of ``obj`` that looks like the event's id under
    another name (``Event_ID``, ``id``, ``transaction_id``, ``TxnID``: as ``inputs.id_like_columns``
    names them), said with what to do; field names only, never a value (messages reach dead-letter
    headers). A trial's producer sent ``transaction_id``, and every event was a dead letter
    ``event_id is required``."""
    for name in obj:
        flat = "".join(c for c in str(name).lower() if c.isalnum())
        if flat == "eventid" or flat == "id" or (flat.endswith("id") and flat[:-2].startswith(_ID_WORDS)):
            return (f" (the event has {str(name)[:40]!r}: its id under another name? The event contract names it "
                    f"event_id; stream-detector produce --id-column {str(name)[:40]} renames it)")
    return ""


def validate_event(obj: object, finite_floats: bool = False, check_timestamp: bool = True) -> Problem | None:
    """Check one parsed JSON value against the event contract; ``None`` when valid.

    ``finite_floats=True`` says the object comes from orjson, which rejects NaN, Infinity and
    out-of-range numbers itself, so the per-value finiteness scan is skipped and nested values
    are found from the set of value types (one C-level pass) — same verdicts, about 3× faster.
    ``pipeline/decode.py::_all_valid`` clears whole batches by the same rules a column at a time:
    a rule changed here must change there (``tests/unit/test_decode_batch.py`` compares the two).
    """
    if not isinstance(obj, dict):
        return RejectReason.NOT_AN_OBJECT, f"expected a JSON object, got {json_type(obj)}"
    event_id = obj.get("event_id")
    if event_id == "":  # present but empty: not another name (a trial was told to rename event_id to itself)
        return RejectReason.MISSING_EVENT_ID, "event_id is required: it is empty"
    if event_id is None:
        return RejectReason.MISSING_EVENT_ID, "event_id is required" + ("" if "event_id" in obj else _id_hint(obj))
    if not isinstance(event_id, str):
        return RejectReason.WRONG_TYPE, f"event_id must be a string, got {json_type(event_id)}"
    if len(event_id) > 512:
        return RejectReason.WRONG_TYPE, "event_id is longer than 512 characters"
    account = obj.get("account_id")
    if account is not None and (isinstance(account, bool) or not isinstance(account, (str, int))):
        return RejectReason.WRONG_TYPE, f"account_id must be a string or integer, got {json_type(account)}"
    version = obj.get("schema_version")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS
    ):
        shown = version if isinstance(version, int) and not isinstance(version, bool) and abs(version) < 1000 \
            else f"({json_type(version)})"
        return RejectReason.UNKNOWN_SCHEMA, f"unknown schema_version {shown}"
    if not finite_floats or not set(map(type, obj.values())).isdisjoint(_NESTED):
        for name, value in obj.items():
            if isinstance(value, float):
                if not math.isfinite(value):
                    return RejectReason.NON_FINITE_NUMBER, f"field {name!r} is not finite"
            elif isinstance(value, _NESTED):
                return RejectReason.WRONG_TYPE, f"field {name!r}: nested values are not supported"
    ts = obj.get("timestamp") if check_timestamp else None
    if ts is not None:
        try:
            parse_timestamp_ms(ts)
        except (ValueError, TypeError, OverflowError):
            return RejectReason.INVALID_TIMESTAMP, f"timestamp is neither RFC 3339 nor epoch ms ({json_type(ts)})"
    return None


def not_json_message(raw: bytes, message: str) -> str:
    """Why ``raw`` is not a JSON text, in words (orjson alone says "invalid literal, expected 'true'"
    or "str is not valid UTF-8: surrogates not allowed: line 1 column 1"): a byte order mark, the
    first byte that is not UTF-8 and its place, or orjson's message after "not valid JSON". The
    events' and the feedback records' dead letters say it alike (found by new-user trials)."""
    if "byte order mark" in message.lower():
        return "not valid JSON: it starts with a UTF-8 byte order mark (BOM), which a JSON record must not have"
    if "utf-8" in message.lower():
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte {exc.start} (counting from 0)"
        except TypeError:
            pass
    return f"not valid JSON: {message}"[:200]
