"""Writing ``benchmarks/RESULTS.md``: each suite owns one section between markers, stamped with
the machine and versions that produced it, so suites can be rerun independently."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is rewritten by its suite (`python -m benchmarks NAME`).\n"


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, Python, torch, kafka-python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for name in ("torch", "numpy", "kafka", "orjson"):
        try:
            module = __import__(name)
            versions.append(f"{name if name != 'kafka' else 'kafka-python'} {module.__version__}")
        except ImportError:
            pass
    try:
        import crc32c  # noqa: F401
        versions.append("crc32c ext")
    except ImportError:
        versions.append("NO crc32c")
    return f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}; " + ", ".join(versions)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_section(name: str, title: str, body: str, on: str | None = None) -> Path:
    """Replace (or append) the section ``name`` of RESULTS.md with ``body`` plus a provenance line;
    ``on`` names the machine when the run was elsewhere (the lent GPU machine), else this one's."""
    stamp = (f"_Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {git_commit()} on: "
             f"{on or machine()}._\n\n")
    block = f"<!-- {name}:start -->\n## {title}\n\n{stamp}{body.rstrip()}\n<!-- {name}:end -->\n"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->\n?", re.DOTALL)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    RESULTS.write_text(text)
    return RESULTS
