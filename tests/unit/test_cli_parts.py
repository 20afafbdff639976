"""The command line's parts that need no service: `python -m stream_detector`, SIGTERM as Ctrl-C, the threshold warning."""

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


def test_a_threshold_that_would_flood_alerts_is_named_by_the_share_it_would_flag() -> None:
    from stream_detector.cli import threshold_warning

    calibration = {"threshold": 2.99, "validation_error_quantiles": {"0.5": 0.3, "0.9": 0.9, "0.95": 1.5,
                                                                     "0.99": 2.9, "0.999": 5.0}}
    assert "more than 50% of normal events" in (threshold_warning(calibration, 0.2) or "")
    assert "more than 10%" in (threshold_warning(calibration, 0.5) or "")
    assert "more than 1%" in (threshold_warning(calibration, 2.0) or "")
    assert "calibrated threshold is 2.99" in (threshold_warning(calibration, 2.0) or "")
    assert threshold_warning(calibration, 3.0) is None and threshold_warning(calibration, 99.0) is None
    assert threshold_warning({}, 0.0) is None  # a bundle without quantiles: nothing to say
