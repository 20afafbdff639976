"""The transport package depends only on itself: ``base`` and ``eos`` on no client library and no
settings, each adapter only on ``base``/``eos``, its own modules and its own client library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

TRANSPORT = Path(__file__).resolve().parents[2] / "stream_detector" / "transport"
STDLIB = set(sys.stdlib_module_names)
ALLOWED = {  # module -> (package-internal modules, third-party top-level packages)
    "base": ({"errors"}, set()),
    "eos": ({"transport.base"}, set()),
    "kafka_python": ({"transport.base"}, {"kafka"}),
    "kafka_python_out": ({"transport.base", "transport.eos", "transport.kafka_python"}, {"kafka"}),
    "confluent": ({"transport.base"}, {"confluent_kafka"}),
    "confluent_out": ({"transport.base", "transport.eos", "transport.confluent"}, {"confluent_kafka"}),
    "memory": ({"transport.base", "transport.eos"}, set()),
}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(modules of stream_detector, other top-level packages) that ``transport/<module>.py`` imports."""
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(ast.parse((TRANSPORT / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = "transport" if node.level == 1 else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            ours.add(name)
        elif isinstance(node, ast.ImportFrom):
            theirs.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            theirs.update(alias.name.split(".")[0] for alias in node.names)
    return ours, theirs - STDLIB - {"__future__"}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_each_transport_module_imports_only_what_it_may(module: str) -> None:
    ours, theirs = _imports(module)
    allowed_ours, allowed_theirs = ALLOWED[module]
    assert ours <= allowed_ours, f"transport/{module}.py imports {sorted(ours - allowed_ours)}"
    assert theirs <= allowed_theirs, f"transport/{module}.py imports {sorted(theirs - allowed_theirs)}"


def test_every_transport_module_is_checked() -> None:
    modules = {p.stem for p in TRANSPORT.glob("*.py")} - {"__init__", "factory"}
    assert modules == set(ALLOWED), "a new transport module needs its import rule here"
