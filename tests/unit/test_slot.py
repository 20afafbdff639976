"""``slot.claim``: a transactional worker's slot on this host, held by a flock (``slot.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stream_detector.errors import ConfigError
from stream_detector.slot import claim


@pytest.fixture
def folder(tmp_path: Path) -> str:
    return str(tmp_path / "slots")


def test_the_default_id_takes_the_first_free_slot_and_gets_it_back(folder: str) -> None:
    first, second, third = (claim("g", "host", explicit=False, folder=folder) for _ in range(3))
    assert (first.worker_id, second.worker_id, third.worker_id) == ("host", "host-2", "host-3")
    assert claim("other", "host", explicit=False, folder=folder).worker_id == "host"  # slots are per group
    second.release()
    assert claim("g", "host", explicit=False, folder=folder).worker_id == "host-2"  # a restart takes it back


def test_an_explicit_id_held_by_a_running_worker_is_refused_naming_it(folder: str) -> None:
    held = claim("g", "w1", explicit=True, folder=folder)
    with pytest.raises(ConfigError, match=rf"SD_WORKER_ID=w1 is taken by another worker of group g on this host "
                                          rf"\(pid {os.getpid()}\): .*transactional id g-w1"):
        claim("g", "w1", explicit=True, folder=folder)
    held.release()
    assert claim("g", "w1", explicit=True, folder=folder).worker_id == "w1"


def test_a_killed_workers_slot_is_free_at_once(folder: str) -> None:
    """The operating system drops the flock of a process however it ends (SIGKILL here)."""
    code = ("import sys, time; from stream_detector.slot import claim; "
            "s = claim('g', 'w1', explicit=True, folder=sys.argv[1]); print(s.worker_id, flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, folder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "w1"
        with pytest.raises(ConfigError, match=rf"\(pid {proc.pid}\)"):
            claim("g", "w1", explicit=True, folder=folder)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert claim("g", "w1", explicit=True, folder=folder).worker_id == "w1"


def test_a_folder_that_cannot_be_made_leaves_the_id_unchecked(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert claim("g", "host", explicit=False, folder=str(tmp_path / "file" / "slots")).worker_id == "host"
    assert "cannot lock a worker slot in" in caplog.text and "used unchecked" in caplog.text
