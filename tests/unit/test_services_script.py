"""deploy/services.sh without starting anything: valid bash, every subcommand documented in its
usage line, and bad node numbers refused before any process is touched."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import ROOT

SCRIPT = str(ROOT / "deploy" / "services.sh")
SUBCOMMANDS = ["up", "down", "status", "stop-kafka", "stop-redis", "kill-kafka", "cluster-up", "cluster-down",
               "cluster-status", "kill-broker", "stop-broker", "start-broker", "cluster-controller", "sentinel-up",
               "sentinel-down", "sentinel-status", "kill-redis-primary", "start-redis-nodes"]


def test_script_parses() -> None:
    assert subprocess.run(["bash", "-n", SCRIPT], capture_output=True).returncode == 0


def test_usage_names_every_subcommand() -> None:
    done = subprocess.run([SCRIPT, "no-such-command"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    for name in SUBCOMMANDS:
        assert name in done.stderr.replace("|", " ").split(), name


@pytest.mark.parametrize("command", ["kill-broker", "stop-broker", "start-broker"])
@pytest.mark.parametrize("node", ["", "0", "4", "x"])
def test_node_commands_refuse_bad_node_numbers(command: str, node: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run([SCRIPT, command, node], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "SD_SERVICES_DIR": str(tmp_path)})
    assert done.returncode == 1 and "expected a node number 1..3" in done.stderr
