"""Two exactly-once workers started on one host with the default SD_WORKER_ID: each takes its own
worker slot (``slot.py``), so their transactional ids differ and neither fences the other. A trial
(2026-12-06) saw both named ``{group}-{host}``: ProducerFencedError eight times in 20 s per worker,
every batch held 1-2 s, nothing said about the cause."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import orjson
import pytest

from stream_detector.kafka_util import lag, read_all
from stream_detector.simulate import Simulator
from tests.helpers import anomaly, wait_until

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "stream_detector.cli"]


def test_two_exactly_once_workers_on_one_host_take_two_slots(settings, published, env_for, tmp_path):
    s = settings.model_copy(update={"delivery": "exactly_once"})
    env = env_for(s)
    env.pop("SD_WORKER_ID")  # the default: the host name
    env["SD_SLOT_DIR"] = str(tmp_path / "slots")
    events, _ = Simulator(seed=3, accounts=300, run_id="slots").batch(600, 0.0)
    events += [anomaly(f"slot-bad-{i}") for i in range(4)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    workers = [subprocess.Popen(CLI + ["worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        produced = subprocess.run(CLI + ["produce", "--input", str(path), "--rate", "300"], env=env,
                                  capture_output=True, text=True, timeout=120)
        assert produced.returncode == 0, produced.stderr
        wait_until(lambda: lag(s, s.group_id, s.input_topic) == 0, timeout_s=120, message="both workers drained")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        errs = [w.communicate(timeout=90)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errs
    host = socket.gethostname()
    slotted = [e for e in errs if f"worker slot {host}-2: {host} is taken by another worker" in e]
    assert len(slotted) == 1, errs
    assert f"[{host}-2 pid " in slotted[0], slotted[0]  # its log lines name its slot (a trial: they said the host)
    assert not any("ProducerFenced" in e for e in errs), errs
    ids = [orjson.loads(r.value)["event_id"] for r in read_all(s, s.alerts_topic, isolation_level="read_committed")]
    assert len(ids) == len(set(ids)) and {f"slot-bad-{i}" for i in range(4)} <= set(ids)
