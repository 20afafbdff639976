"""Signed model artifacts on the real Redis: workers with a verify key refuse what is not ours."""

from __future__ import annotations

import pytest

from stream_detector.errors import ModelError
from stream_detector.model.signing import generate_keypair
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from stream_detector.worker import Worker
from tests.helpers import small_bundle, wait_until

pytestmark = pytest.mark.integration


def test_workers_require_our_signature(settings, bundle, tmp_path, start_worker):
    private, public = generate_keypair(tmp_path / "keys")
    signed = settings.model_copy(update={"signing_key_file": str(private)})
    verifying = settings.model_copy(update={"verify_key_file": str(public)})
    ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic])

    # an artifact written by someone without the key (anyone who can write Redis) is refused at start
    ControlPlane.from_settings(settings).publish(bundle, set_by="intruder")
    refused = Worker(verifying)
    with pytest.raises(ModelError, match="not signed"):
        refused.start()
    refused.close()

    # signed by the publisher: accepted
    ControlPlane.from_settings(signed).publish(bundle, set_by="publisher")
    running = start_worker(verifying)
    assert running.worker.scorer is not None and running.worker.scorer.version == bundle.version

    # a later unsigned version is not swapped in: the worker keeps the signed one
    other = small_bundle(rows=1500, seed=3, epochs=5)
    ControlPlane.from_settings(settings).publish(other, set_by="intruder")
    wait_until(lambda: running.worker.stats.swap_failures >= 1, message="the unsigned model was refused")
    assert running.worker.scorer.version == bundle.version
    running.stop()
