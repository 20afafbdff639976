"""``python -m stream_detector`` is the ``stream-detector`` command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest


def test_python_dash_m_runs_the_command_line_and_passes_its_exit_code() -> None:
    ok = subprocess.run([sys.executable, "-m", "stream_detector", "--help"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: stream-detector") and "check-config" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "stream_detector", "no-such-command"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'no-such-command'" in bad.stderr


def test_sigterm_inside_a_long_command_runs_its_cleanup_like_ctrl_c() -> None:
    """``train --streamed`` and ``retrain --once`` run inside ``_terminated_as_interrupt``: a
    SIGTERM (a timeout, Kubernetes) raises ``KeyboardInterrupt`` there, so their ``finally``
    clauses (the work directory, the history spool) run; the previous handler is back after."""
    from stream_detector.cli import _terminated_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(KeyboardInterrupt):
        with _terminated_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10_000_000):  # Python runs the handler between bytecodes: at once
                    pass
            finally:
                cleaned.append(True)
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) == before
