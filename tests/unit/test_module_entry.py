"""``python -m stream_detector`` is the ``stream-detector`` command line."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_runs_the_command_line_and_passes_its_exit_code() -> None:
    ok = subprocess.run([sys.executable, "-m", "stream_detector", "--help"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: stream-detector") and "check-config" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "stream_detector", "no-such-command"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'no-such-command'" in bad.stderr
