#!/usr/bin/env bash
# Local services for stream-detector: a real Apache Kafka 4.x broker (KRaft, single node, jars
# from Maven Central through deploy/kafka/pom.xml) and a real Redis (Debian's redis-server).
#
#   deploy/services.sh up|down|status   (stop-kafka / stop-redis: one service, for chaos tests)
#
# Environment (all optional):
#   SD_KAFKA_PORT            broker port (9092)            SD_KAFKA_CONTROLLER_PORT (SD_KAFKA_PORT+1)
#   SD_REDIS_PORT            redis port (6379)             SD_SERVICES_DIR  state folder (.cache/services)
#   SD_KAFKA_VERSION         broker version (4.4.0)        SD_CACHE_DIR     download cache (.cache)
#   SD_KAFKA_HEAP            JVM heap (768m)               SD_READY_TIMEOUT seconds to wait (120)
#   SD_KAFKA_ADVERTISED_PORT port clients are told to use (default SD_KAFKA_PORT; chaos tests put a
#                            TCP proxy there to cut the network)
#
# Idempotent: `up` on a running stack only checks it; `down` on a stopped one does nothing.
# Waits until the broker has logged "Kafka Server started" and accepts connections, and until
# Redis answers PING.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
KAFKA_PORT=${SD_KAFKA_PORT:-9092}
CONTROLLER_PORT=${SD_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
REDIS_PORT=${SD_REDIS_PORT:-6379}
KAFKA_VERSION=${SD_KAFKA_VERSION:-4.4.0}
CACHE=${SD_CACHE_DIR:-$root/.cache}
STATE=${SD_SERVICES_DIR:-$CACHE/services}
HEAP=${SD_KAFKA_HEAP:-768m}
TIMEOUT=${SD_READY_TIMEOUT:-120}
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
KDIR="$STATE/kafka-$KAFKA_PORT"
RDIR="$STATE/redis-$REDIS_PORT"

die() { echo "services: $*" >&2; exit 1; }
log() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

fetch_kafka() {
  [ -f "$LIBS/.complete" ] && return 0
  command -v java >/dev/null || die "Java is missing: install a JDK 17+ (Debian: apt-get install openjdk-17-jre-headless)."
  command -v mvn >/dev/null || die "Maven is missing: install it (Debian: apt-get install maven)."
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  rm -rf "$LIBS"
  mvn -q -B -f "$here/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2 \
    || die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
  touch "$LIBS/.complete"
}

ensure_redis() {
  command -v redis-server >/dev/null && return 0
  log "redis-server is missing; installing Debian's redis-server"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || die "redis-server is missing and apt-get is not available: install Redis 7+."
  $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2 \
    || die "could not install redis-server"
}

kafka_up() {
  if alive "$KDIR/pid"; then log "kafka already running on 127.0.0.1:$KAFKA_PORT"; wait_kafka; return; fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set SD_KAFKA_PORT)"
  fetch_kafka
  mkdir -p "$KDIR"
  cat > "$KDIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:${SD_KAFKA_ADVERTISED_PORT:-$KAFKA_PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KDIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=16777216
PROPS
  local cp="$LIBS/*"
  if [ ! -f "$KDIR/data/meta.properties" ]; then
    local cid
    cid=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$cp" kafka.tools.StorageTool format -t "$cid" -c "$KDIR/server.properties" --standalone \
      >"$KDIR/format.log" 2>&1 || { cat "$KDIR/format.log" >&2; die "could not format the KRaft storage"; }
  fi
  : > "$KDIR/server.log"
  nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$cp" kafka.Kafka "$KDIR/server.properties" >>"$KDIR/server.log" 2>&1 &
  echo $! > "$KDIR/pid"
  wait_kafka
}

wait_kafka() {
  local deadline=$((SECONDS + TIMEOUT))
  until grep -q "Kafka Server started" "$KDIR/server.log" 2>/dev/null && port_open "$KAFKA_PORT"; do
    alive "$KDIR/pid" || { tail -n 40 "$KDIR/server.log" >&2; die "kafka exited during start-up (log: $KDIR/server.log)"; }
    [ $SECONDS -lt $deadline ] || die "kafka not ready after ${TIMEOUT}s (log: $KDIR/server.log)"
    sleep 0.2
  done
  log "kafka ready on 127.0.0.1:$KAFKA_PORT"
}

redis_up() {
  ensure_redis
  mkdir -p "$RDIR"
  if alive "$RDIR/pid"; then log "redis already running on 127.0.0.1:$REDIS_PORT"; else
    port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another process (set SD_REDIS_PORT)"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --pidfile "$RDIR/pid" \
      --dir "$RDIR" --logfile "$RDIR/redis.log" --appendonly yes --save "" >/dev/null
  fi
  local deadline=$((SECONDS + TIMEOUT))
  until [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; do
    [ $SECONDS -lt $deadline ] || die "redis not ready after ${TIMEOUT}s (log: $RDIR/redis.log)"
    sleep 0.1
  done
  log "redis ready on 127.0.0.1:$REDIS_PORT"
}

stop_pid() {  # pidfile name
  alive "$1" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || { rm -f "$1"; log "stopped $2"; return 0; }; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true; rm -f "$1"; log "killed $2"
}

case "${1:-}" in
  up) redis_up; kafka_up ;;
  down) stop_pid "$KDIR/pid" "kafka :$KAFKA_PORT"; stop_pid "$RDIR/pid" "redis :$REDIS_PORT" ;;
  stop-kafka) stop_pid "$KDIR/pid" "kafka :$KAFKA_PORT" ;;   # for chaos tests; `up` brings it back
  stop-redis) stop_pid "$RDIR/pid" "redis :$REDIS_PORT" ;;
  kill-kafka)
    if alive "$KDIR/pid"; then
      pid=$(cat "$KDIR/pid"); kill -9 "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
      log "kafka killed (SIGKILL)"
    fi
    rm -f "$KDIR/pid" ;;
  status)
    alive "$KDIR/pid" && echo "kafka: running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$KDIR/pid"))" || echo "kafka: stopped"
    alive "$RDIR/pid" && echo "redis: running on 127.0.0.1:$REDIS_PORT (pid $(cat "$RDIR/pid"))" || echo "redis: stopped" ;;
  *) echo "usage: $0 up|down|status|stop-kafka|stop-redis|kill-kafka" >&2; exit 2 ;;
esac
