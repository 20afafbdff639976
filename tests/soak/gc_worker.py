"""``stream-detector worker`` with the garbage collector's pauses recorded (soak only).

``gc.callbacks`` time every collection; every 5 s the process writes its pause list (generation,
seconds) since the last write as one JSON line to ``SD_SOAK_GC_FILE``. The worker itself is the
unchanged CLI entry point.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from typing import Any

_pauses: list[tuple[int, float]] = []
_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pauses.append((int(info["generation"]), time.perf_counter() - _started[0]))


def _flush(path: str) -> None:
    while True:
        time.sleep(5.0)  # a reporting period, not a wait for a condition
        taken = _pauses[:]
        del _pauses[:len(taken)]
        with open(path, "a") as out:
            out.write(json.dumps({"t": time.time(), "pid": os.getpid(), "pauses": taken}) + "\n")


def main() -> int:
    from stream_detector.cli import main as cli

    gc.callbacks.append(_on_gc)
    threading.Thread(target=_flush, args=(os.environ["SD_SOAK_GC_FILE"],), daemon=True).start()
    return cli(["worker"])


if __name__ == "__main__":
    raise SystemExit(main())
