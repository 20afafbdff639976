#!/usr/bin/env bash
# make demo: run `stream-detector demo` on a Kafka and a Redis. Which ones, in this order:
#   1. SD_KAFKA_BOOTSTRAP and SD_REDIS_URL, when both are set (your own services; left as they are);
#   2. this checkout's local services (deploy/services.sh) when they are running (left running);
#   3. a Kafka and a Redis already answering on 127.0.0.1:SD_KAFKA_PORT (9092) / SD_REDIS_PORT (6379),
#      e.g. started by another checkout's `make services-up` (left running);
#   4. else this checkout's local services, started now and stopped again at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
sd=.venv/bin/stream-detector
answers() {  # both Kafka (SD_KAFKA_BOOTSTRAP) and Redis (SD_REDIS_URL) answer `check-config`
  local checks  # its exit status also fails on "no active model": only the kafka and redis checks count
  checks=$("$sd" check-config --timeout 3 --json 2>/dev/null || true)
  .venv/bin/python -c 'import json, sys
ok = {c["name"] for c in json.loads(sys.argv[1] or "[]") if c["status"] == "ok"}
sys.exit(0 if {"kafka", "redis"} <= ok else 1)' "$checks"
}
started=0
if [ -n "${SD_KAFKA_BOOTSTRAP:-}" ] && [ -n "${SD_REDIS_URL:-}" ]; then
  answers || { echo "demo: Kafka at $SD_KAFKA_BOOTSTRAP or Redis at $SD_REDIS_URL does not answer" \
                    "(start them: for this checkout's on those ports, make services-up with SD_KAFKA_PORT and" \
                    "SD_REDIS_PORT set; or unset both and the demo starts local ones)" >&2; exit 1; }
  echo "demo: using Kafka $SD_KAFKA_BOOTSTRAP and Redis $SD_REDIS_URL (SD_KAFKA_BOOTSTRAP / SD_REDIS_URL)" >&2
else
  export SD_KAFKA_BOOTSTRAP="127.0.0.1:${SD_KAFKA_PORT:-9092}"
  export SD_REDIS_URL="redis://127.0.0.1:${SD_REDIS_PORT:-6379}/0"
  status=$(deploy/services.sh status)
  if grep -q "kafka: running" <<<"$status" && grep -q "redis: running" <<<"$status"; then
    deploy/services.sh up  # only checks them
  elif answers; then
    echo "demo: using the Kafka ($SD_KAFKA_BOOTSTRAP) and Redis ($SD_REDIS_URL) already running" \
         "(not started by this checkout: left running)" >&2
  else
    started=1
    deploy/services.sh up
  fi
fi
cleanup() { [ "$started" = 1 ] && deploy/services.sh down || true; }
trap cleanup EXIT
"$sd" demo --cards "${DEMO_CARDS:-2000}" --rate "${DEMO_RATE:-2000}"
