#!/usr/bin/env bash
# make demo: start the local services (unless already running), run `stream-detector demo`,
# and stop again only what this script started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=0
if ! deploy/services.sh status | grep -q "kafka: running" || ! deploy/services.sh status | grep -q "redis: running"; then
  started=1
fi
deploy/services.sh up
cleanup() { [ "$started" = 1 ] && deploy/services.sh down || true; }
trap cleanup EXIT
export SD_KAFKA_BOOTSTRAP="127.0.0.1:${SD_KAFKA_PORT:-9092}"
export SD_REDIS_URL="redis://127.0.0.1:${SD_REDIS_PORT:-6379}/0"
.venv/bin/stream-detector demo --cards "${DEMO_CARDS:-2000}" --rate "${DEMO_RATE:-2000}"
