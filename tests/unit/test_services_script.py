"""deploy/services.sh without starting anything: valid bash, every subcommand documented in its
usage line, and bad node numbers refused before any process is touched."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

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


# A stand-in for redis-server's shutdown: on SIGTERM it deletes its own pidfile at once, then takes a
# while to exit (redis-server writes its data and closes its port after removing the file).
_DAEMON = """
import os, signal, sys, time
pidfile = sys.argv[1]
def stop(*_):
    os.remove(pidfile)
    time.sleep(0.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(pidfile + ".tmp", pidfile)
while True:
    time.sleep(1)
"""


def test_group_stop_waits_for_processes_that_delete_their_pidfile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``redis-cluster-down`` returns only once every node has exited, and does not fail when a node
    deletes its pidfile as it shuts down (a CI run, 2026-12-08: the script read the file again after
    signalling and died on 'No such file'; read again and found gone, it returned at once)."""
    ports = ["27901", "27902", "27903"]
    procs, reaped = [], []
    for port in ports:
        node = tmp_path / f"redis-cluster-{ports[0]}" / f"node-{port}"
        node.mkdir(parents=True)
        proc = subprocess.Popen([sys.executable, "-c", _DAEMON, str(node / "pid")])
        done = threading.Event()  # reaped as soon as it exits: a zombie would still answer kill -0
        threading.Thread(target=lambda p=proc, d=done: (p.wait(), d.set()), daemon=True).start()
        procs.append(proc)
        reaped.append(done)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"redis-cluster-{ports[0]}" / f"node-{p}" / "pid").exists() for p in ports):
        assert time.monotonic() < deadline, "the stand-ins did not write their pidfiles"
        time.sleep(0.01)
    try:
        stopped = subprocess.run([SCRIPT, "redis-cluster-down"], capture_output=True, text=True, timeout=60,
                                 env={"PATH": "/usr/bin:/bin", "SD_SERVICES_DIR": str(tmp_path),
                                      "SD_REDIS_CLUSTER_PORTS": ",".join(ports)})
        exited = [d.is_set() for d in reaped]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert stopped.returncode == 0, stopped.stderr
    assert exited == [True, True, True], stopped.stderr
    assert all(proc.returncode == 0 for proc in procs)  # exited on SIGTERM, not killed
    assert stopped.stderr.count("stopped redis cluster node") == 3, stopped.stderr
