"""docs/alerts.md keeps up with the code: every field of ``schema.Alert`` (and of its nested
objects), every ``RejectReason``, every dead-letter header and every key of a shadow record has a
row of its own in a table of its section, and the alert example is a valid ``Alert``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from stream_detector.pipeline.shadow import ModelVerdicts, build_shadow_records
from stream_detector.schema import Alert, DeadLetterHeaders, FeatureContribution, HeadContribution, RejectReason
from stream_detector.transport.base import Batch

DOC = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def _rows(text: str) -> set[str]:
    """The first cell of every table row of ``text``, without its backquotes: ``| `name` | ...`` → ``name``."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))


def _section(text: str, title: str) -> str:
    """The part of ``text`` under the heading ``## {title}``, up to the next ``## `` heading."""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    found = [part for part in parts if part.split("\n", 1)[0].strip() == title]
    assert len(found) == 1, f"docs/alerts.md should have one section '## {title}'"
    return found[0]


def _shadow_keys() -> set[str]:
    """The keys of a shadow record as ``build_shadow_records`` writes it, nested ones included."""
    batch = Batch(topic="t", partitions=[0], offsets=[5], keys=[b"k"], values=[b"{}"], timestamps=[1])
    scores = np.array([2.0])
    champion = ModelVerdicts.of("m1", scores, np.array([0.5]), 1.0, 0.4)
    challenger = ModelVerdicts.of("m2", scores, None, 3.0, None)
    (message,) = build_shadow_records(batch, [{"event_id": "e"}], [0], champion, challenger, "shadow")
    record = json.loads(message.value or b"")
    nested = {key for part in ("champion", "challenger") for key in record[part]}
    return set(record) | nested


def _documented_alert_fields() -> set[str]:
    top = set(Alert.model_fields)
    nested = {f"top_features[].{name}" for name in FeatureContribution.model_fields}
    nested |= {f"head_top_features[].{name}" for name in HeadContribution.model_fields}
    return top | nested


@pytest.mark.parametrize("kind, section", [("alert fields", "Alert"), ("reject reasons", "Reject reasons"),
                                           ("dead-letter headers", "Dead letter of an input event"),
                                           ("shadow record keys", "Shadow record")])
def test_every_name_of_the_code_has_a_row_in_its_section_of_docs_alerts(kind: str, section: str) -> None:
    names = {
        "alert fields": _documented_alert_fields(),
        "reject reasons": {reason.value for reason in RejectReason},
        "dead-letter headers": {value for name, value in vars(DeadLetterHeaders).items() if name.isupper()},
        "shadow record keys": _shadow_keys(),
    }[kind]
    missing = sorted(names - _rows(_section(DOC.read_text(encoding="utf-8"), section)))
    assert not missing, f"docs/alerts.md, section '{section}', has no table row for these {kind}: {missing}"


def test_the_alert_example_in_docs_alerts_is_a_valid_alert_with_every_field_in_order() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/alerts.md should hold exactly one ```json block: the alert example"
    example = json.loads(blocks[0])
    assert list(example) == list(Alert.model_fields)  # every field present (null, never left out), in order
    Alert(**example)


def test_a_page_without_a_row_misses_its_field() -> None:
    """The check can fail: without the alert table's row of ``offset``, the section misses it
    (the shadow record's row of ``offset`` does not stand in for it)."""
    alert = _section(DOC.read_text(encoding="utf-8"), "Alert")
    assert "offset" in _rows(alert)
    text = "\n".join(line for line in alert.splitlines() if not line.startswith("| `offset` |"))
    assert "offset" in _documented_alert_fields() - _rows(text)
