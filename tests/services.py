"""Starting the real Kafka + Redis for tests through the project's own ``deploy/services.sh``."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

SCRIPT = str(ROOT / "deploy" / "services.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Services:
    kafka: str
    redis: str
    env: dict[str, str]

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """``deploy/services.sh COMMAND`` for this instance (up, down, stop-kafka, stop-redis)."""
        done = subprocess.run([SCRIPT, command], env=self.env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"services.sh {command} failed:\n{done.stderr[-4000:]}")
        return done


def start_services(state: Path) -> Services:
    env = dict(os.environ, SD_KAFKA_PORT=str(free_port()), SD_KAFKA_CONTROLLER_PORT=str(free_port()),
               SD_REDIS_PORT=str(free_port()), SD_SERVICES_DIR=str(state))
    services = Services(f"127.0.0.1:{env['SD_KAFKA_PORT']}", f"redis://127.0.0.1:{env['SD_REDIS_PORT']}/0", env)
    services.run("up")
    return services
