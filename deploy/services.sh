#!/usr/bin/env bash
# Local services for stream-detector: a real Apache Kafka 4.x broker (KRaft, single node, jars
# from Maven Central through deploy/kafka/pom.xml) and a real Redis (Debian's redis-server).
#
#   deploy/services.sh up|down|status   (stop-kafka / stop-redis: one service, for chaos tests)
#
# The failover tier (tests/failover, `make reliability`) also starts, on other ports:
#   cluster-up|cluster-down|cluster-status   three KRaft nodes (broker+controller each, 3-voter quorum),
#                                            replication factor 3, min.insync.replicas=2 everywhere
#   kill-broker N | stop-broker N | start-broker N   one node (1..3): SIGKILL, SIGTERM, start again
#   cluster-controller                       prints the node id of the active controller
#   sentinel-up|sentinel-down|sentinel-status  Redis primary + replica + 3 Sentinels (Debian's packages)
#   kill-redis-primary                       SIGKILLs whichever Redis Sentinel reports as the primary
#   start-redis-nodes                        restarts killed Redis nodes (Sentinel makes them replicas)
#   redis-cluster-up|redis-cluster-down|redis-cluster-status
#                                            a Redis Cluster of three primaries (16384 slots split
#                                            evenly; entity state, SD_ENTITY_REDIS_CLUSTER)
# The single broker stays the default of `up` (make demo, make test).
#
# Environment (all optional):
#   SD_KAFKA_PORT            broker port (9092)            SD_KAFKA_CONTROLLER_PORT (SD_KAFKA_PORT+1)
#   SD_REDIS_PORT            redis port (6379)             SD_SERVICES_DIR  state folder (.cache/services)
#   SD_KAFKA_VERSION         broker version (4.4.0)        SD_CACHE_DIR     download cache (.cache)
#   SD_KAFKA_HEAP            JVM heap (768m)               SD_READY_TIMEOUT seconds to wait (120)
#   SD_KAFKA_ADVERTISED_PORT port clients are told to use (default SD_KAFKA_PORT; chaos tests put a
#                            TCP proxy there to cut the network)
#   SD_CLUSTER_PORTS         the 3 nodes' client ports (9192,9194,9196)
#   SD_CLUSTER_CONTROLLER_PORTS  their controller ports (9193,9195,9197)
#   SD_CLUSTER_ADVERTISED_PORTS  client ports advertised (default SD_CLUSTER_PORTS; a test's proxies)
#   SD_CLUSTER_VOTERS_N      node N's controller.quorum.voters (default: the controller ports; a
#                            test routes one node's quorum traffic through proxies to partition it)
#   SD_CLUSTER_HEAP          JVM heap per node (512m)
#   SD_SENTINEL_REDIS_PORTS  primary,replica (6380,6381)   SD_SENTINEL_PORTS  3 Sentinels (26379,26380,26381)
#   SD_REDIS_SENTINEL_MASTER the monitored name (sd-primary)
#   SD_REDIS_CLUSTER_PORTS   the Redis Cluster's 3 nodes (7001,7002,7003; cluster bus: port + 10000)
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
pid_in() { local pid=""; [ -f "$1" ] && pid=$(cat "$1" 2>/dev/null || true); echo "$pid"; }  # never fails: redis
# deletes its own pidfile as it shuts down, so a file seen a moment ago may be gone when read
alive() { local pid; pid=$(pid_in "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

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
  kafka_props "$KDIR/server.properties" 1 "controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT" \
    "$KAFKA_PORT" "$CONTROLLER_PORT" "${SD_KAFKA_ADVERTISED_PORT:-$KAFKA_PORT}" "$KDIR/data" 1 1
  local cp="$LIBS/*"
  if [ ! -f "$KDIR/data/meta.properties" ]; then
    local cid
    cid=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$cp" kafka.tools.StorageTool format -t "$cid" -c "$KDIR/server.properties" --standalone \
      >"$KDIR/format.log" 2>&1 || { cat "$KDIR/format.log" >&2; die "could not format the KRaft storage"; }
  fi
  launch_kafka "$KDIR" "$HEAP"
  wait_kafka
}

wait_kafka() { wait_kafka_in "$KDIR" "$KAFKA_PORT" kafka; }

kafka_props() {  # file node.id quorum-line client-port controller-port advertised-port data-dir replication min-isr
  cat > "$1" <<PROPS
process.roles=broker,controller
node.id=$2
$3
listeners=PLAINTEXT://127.0.0.1:$4,CONTROLLER://127.0.0.1:$5
advertised.listeners=PLAINTEXT://127.0.0.1:$6
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$7
num.partitions=1
default.replication.factor=$8
min.insync.replicas=$9
auto.create.topics.enable=false
offsets.topic.replication.factor=$8
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$8
transaction.state.log.min.isr=$9
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=$8
share.coordinator.state.topic.min.isr=$9
group.initial.rebalance.delay.ms=0
message.max.bytes=16777216
PROPS
}

launch_kafka() {  # dir heap: one JVM on dir/server.properties, pid in dir/pid; does not wait
  : > "$1/server.log"
  nohup java -Xms"$2" -Xmx"$2" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$LIBS/*" kafka.Kafka "$1/server.properties" >>"$1/server.log" 2>&1 &
  echo $! > "$1/pid"
}

wait_kafka_in() {  # dir port name: until it logged "Kafka Server started" and accepts connections
  local deadline=$((SECONDS + TIMEOUT))
  until grep -q "Kafka Server started" "$1/server.log" 2>/dev/null && port_open "$2"; do
    alive "$1/pid" || { tail -n 40 "$1/server.log" >&2; die "$3 exited during start-up (log: $1/server.log)"; }
    [ $SECONDS -lt $deadline ] || die "$3 not ready after ${TIMEOUT}s (log: $1/server.log)"
    sleep 0.2
  done
  log "$3 ready on 127.0.0.1:$2"
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

wait_gone() {  # pid pidfile name: wait up to 30 s for pid to exit (then SIGKILL), remove the pidfile
  for _ in $(seq 1 150); do kill -0 "$1" 2>/dev/null || { rm -f "$2"; log "stopped $3"; return 0; }; sleep 0.2; done
  kill -9 "$1" 2>/dev/null || true; rm -f "$2"; log "killed $3"
}

stop_pid() {  # pidfile name
  stop_all "$1|$2"
}

stop_all() {  # "pidfile|name"...: SIGTERM to all at once, then wait for each. Each pid is read once,
  # before any signal: a redis-server deletes its pidfile while it shuts down, so reading the file
  # again after a signal failed now and then (the cluster-down of a CI run, 2026-12-08)
  local item pid pids=() files=() names=() i
  for item in "$@"; do
    pid=$(pid_in "${item%%|*}")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true; pids+=("$pid"); files+=("${item%%|*}"); names+=("${item#*|}")
    else
      rm -f "${item%%|*}"
    fi
  done
  for i in "${!pids[@]}"; do wait_gone "${pids[$i]}" "${files[$i]}" "${names[$i]}"; done
}

# ---- three-node KRaft cluster ---------------------------------------------------------------
IFS=, read -r -a CPORTS <<< "${SD_CLUSTER_PORTS:-9192,9194,9196}"
IFS=, read -r -a CCTRL <<< "${SD_CLUSTER_CONTROLLER_PORTS:-9193,9195,9197}"
IFS=, read -r -a CADV <<< "${SD_CLUSTER_ADVERTISED_PORTS:-${SD_CLUSTER_PORTS:-9192,9194,9196}}"
CHEAP=${SD_CLUSTER_HEAP:-512m}
CDIR="$STATE/cluster-${CPORTS[0]}"

node_dir() { echo "$CDIR/node-$1"; }
check_node() { [[ "${1:-}" =~ ^[123]$ ]] || die "expected a node number 1..3, got '${1:-}'"; }

default_voters() {
  echo "1@127.0.0.1:${CCTRL[0]},2@127.0.0.1:${CCTRL[1]},3@127.0.0.1:${CCTRL[2]}"
}

write_node_config() {  # node
  local n=$1 i=$(($1 - 1)) dir; dir=$(node_dir "$1")
  local voters_var="SD_CLUSTER_VOTERS_$n"
  mkdir -p "$dir"
  kafka_props "$dir/server.properties" "$n" "controller.quorum.voters=${!voters_var:-$(default_voters)}" \
    "${CPORTS[$i]}" "${CCTRL[$i]}" "${CADV[$i]}" "$dir/data" 3 2
  cat >> "$dir/server.properties" <<PROPS
unclean.leader.election.enable=false
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
PROPS
}

start_node() {  # node: start it unless it runs; does not wait
  local n=$1 dir; dir=$(node_dir "$1")
  alive "$dir/pid" && return 0
  port_open "${CPORTS[$((n - 1))]}" && die "port ${CPORTS[$((n - 1))]} is taken by another process (set SD_CLUSTER_PORTS)"
  write_node_config "$n"
  if [ ! -f "$dir/data/meta.properties" ]; then
    java -cp "$LIBS/*" kafka.tools.StorageTool format -t "$(cat "$CDIR/cluster.id")" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "could not format node $n's KRaft storage"; }
  fi
  launch_kafka "$dir" "$CHEAP"
}

wait_node() { wait_kafka_in "$(node_dir "$1")" "${CPORTS[$(($1 - 1))]}" "kafka node $1"; }

cluster_up() {
  fetch_kafka
  mkdir -p "$CDIR"
  [ -f "$CDIR/cluster.id" ] || java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "$CDIR/cluster.id"
  for n in 1 2 3; do start_node "$n"; done   # all three first: a node waits for the quorum to start
  for n in 1 2 3; do wait_node "$n"; done
}

stop_node() {  # node signal
  local dir pid; dir=$(node_dir "$1")
  alive "$dir/pid" || { rm -f "$dir/pid"; return 0; }
  pid=$(pid_in "$dir/pid")
  if [ "$2" = KILL ]; then
    kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$dir/pid"; log "kafka node $1 killed (SIGKILL)"
  else
    stop_pid "$dir/pid" "kafka node $1"
  fi
}

cluster_controller() {  # the active controller: the newest Raft epoch's leader among the live nodes' logs
  local best_epoch=-1 best_leader="" n line epoch leader
  for n in 1 2 3; do
    alive "$(node_dir "$n")/pid" || continue
    line=$(grep -h "Completed transition to \(Leader\|FollowerState\)" "$(node_dir "$n")/server.log" | tail -n 1)
    case "$line" in
      *"transition to Leader("*) epoch=$(grep -o 'epoch=[0-9]*, epochStartOffset' <<< "$line" | grep -o '[0-9]*'); leader=$n ;;
      *FollowerState*) epoch=$(grep -o ' epoch=[0-9]*' <<< "$line" | head -n 1 | grep -o '[0-9]*')
                       leader=$(grep -o ' leader=[0-9]*' <<< "$line" | head -n 1 | grep -o '[0-9]*') ;;
      *) continue ;;
    esac
    if [ "${epoch:--1}" -gt "$best_epoch" ]; then best_epoch=$epoch; best_leader=$leader; fi
  done
  [ -n "$best_leader" ] || die "no node has logged a controller leader yet"
  echo "$best_leader"
}

# ---- Redis primary + replica + three Sentinels ----------------------------------------------
IFS=, read -r -a SRPORTS <<< "${SD_SENTINEL_REDIS_PORTS:-6380,6381}"
IFS=, read -r -a SPORTS <<< "${SD_SENTINEL_PORTS:-26379,26380,26381}"
SMASTER=${SD_REDIS_SENTINEL_MASTER:-sd-primary}
SDIR="$STATE/sentinel-${SRPORTS[0]}"

ensure_sentinel() {
  ensure_redis
  command -v redis-sentinel >/dev/null && return 0
  log "redis-sentinel is missing; installing Debian's redis-sentinel"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-sentinel >&2 || die "could not install redis-sentinel"
}

rcli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }

start_redis_node() {  # index (0 = first primary, 1 = replica); a restarted node rejoins as Sentinel says
  local port=${SRPORTS[$1]} dir="$SDIR/redis-${SRPORTS[$1]}" extra=()
  mkdir -p "$dir"
  alive "$dir/pid" && return 0
  port_open "$port" && die "port $port is taken by another process (set SD_SENTINEL_REDIS_PORTS)"
  if [ ! -f "$dir/started" ] && [ "$1" -ne 0 ]; then extra=(--replicaof 127.0.0.1 "${SRPORTS[0]}"); fi
  if [ -f "$dir/started" ]; then  # a comeback: follow whoever the Sentinels call primary now
    local addr; addr=$(rcli "${SPORTS[0]}" SENTINEL get-master-addr-by-name "$SMASTER" | tail -n 1)
    [ -n "$addr" ] && [ "$addr" != "$port" ] && extra=(--replicaof 127.0.0.1 "$addr")
  fi
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --pidfile "$dir/pid" --dir "$dir" \
    --logfile "$dir/redis.log" --appendonly yes --save "" "${extra[@]}" >/dev/null
  touch "$dir/started"
  local deadline=$((SECONDS + TIMEOUT))
  until [ "$(rcli "$port" ping)" = "PONG" ]; do
    [ $SECONDS -lt $deadline ] || die "redis :$port not ready after ${TIMEOUT}s"; sleep 0.1
  done
}

start_sentinel() {  # index
  local port=${SPORTS[$1]} dir="$SDIR/sentinel-${SPORTS[$1]}"
  mkdir -p "$dir"
  alive "$dir/pid" && return 0
  port_open "$port" && die "port $port is taken by another process (set SD_SENTINEL_PORTS)"
  [ -f "$dir/sentinel.conf" ] || cat > "$dir/sentinel.conf" <<CONF
bind 127.0.0.1
port $port
dir $dir
sentinel resolve-hostnames no
sentinel monitor $SMASTER 127.0.0.1 ${SRPORTS[0]} 2
sentinel down-after-milliseconds $SMASTER 2000
sentinel failover-timeout $SMASTER 10000
sentinel parallel-syncs $SMASTER 1
CONF
  redis-sentinel "$dir/sentinel.conf" --daemonize yes --pidfile "$dir/pid" --logfile "$dir/sentinel.log" >/dev/null
}

sentinel_ready() {  # every Sentinel agrees on a primary that answers and sees the other two Sentinels
  local primary="" s
  for s in "${SPORTS[@]}"; do
    local addr; addr=$(rcli "$s" SENTINEL get-master-addr-by-name "$SMASTER" | tail -n 1)
    [ -n "$addr" ] || return 1
    [ -z "$primary" ] || [ "$primary" = "$addr" ] || return 1
    primary=$addr
    rcli "$s" SENTINEL ckquorum "$SMASTER" | grep -q "^OK" || return 1
    [ "$(rcli "$s" SENTINEL sentinels "$SMASTER" | grep -c '^name$')" -ge 2 ] || return 1
  done
  rcli "$primary" info replication | grep -q "connected_slaves:[1-9]"
}

sentinel_up() {
  ensure_sentinel
  mkdir -p "$SDIR"
  start_redis_node 0; start_redis_node 1
  for i in 0 1 2; do start_sentinel "$i"; done
  local deadline=$((SECONDS + TIMEOUT))
  until sentinel_ready; do
    [ $SECONDS -lt $deadline ] || die "sentinels not ready after ${TIMEOUT}s (logs: $SDIR)"; sleep 0.2
  done
  log "redis primary 127.0.0.1:$(sentinel_primary) with a replica, sentinels on ${SPORTS[*]} (master name $SMASTER)"
}

sentinel_primary() { rcli "${SPORTS[0]}" SENTINEL get-master-addr-by-name "$SMASTER" | tail -n 1; }

kill_redis_primary() {
  local port dir pid; port=$(sentinel_primary); dir="$SDIR/redis-$port"
  [ -n "$port" ] && alive "$dir/pid" || die "no running primary known to the sentinels"
  pid=$(pid_in "$dir/pid"); kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$dir/pid"; log "redis primary :$port killed (SIGKILL)"; echo "$port"
}

sentinel_down() {  # SIGTERM to all five at once (each takes a second or two to exit), then wait for each
  local s p items=()
  for s in "${SPORTS[@]}"; do items+=("$SDIR/sentinel-$s/pid|sentinel :$s"); done
  for p in "${SRPORTS[@]}"; do items+=("$SDIR/redis-$p/pid|redis :$p"); done
  stop_all "${items[@]}"
}

# ---- Redis Cluster: three primaries ---------------------------------------------------------
IFS=, read -r -a RCPORTS <<< "${SD_REDIS_CLUSTER_PORTS:-7001,7002,7003}"
RCDIR="$STATE/redis-cluster-${RCPORTS[0]}"

redis_cluster_ok() {  # every node answers and reports cluster_state:ok with all slots assigned
  local p
  for p in "${RCPORTS[@]}"; do
    rcli "$p" cluster info | tr -d '\r' | grep -q '^cluster_state:ok$' || return 1
    rcli "$p" cluster info | tr -d '\r' | grep -q '^cluster_slots_assigned:16384$' || return 1
  done
}

redis_cluster_up() {
  ensure_redis
  [ "${#RCPORTS[@]}" -ge 3 ] || die "a Redis Cluster needs at least 3 primaries; SD_REDIS_CLUSTER_PORTS has ${#RCPORTS[@]}"
  local p dir deadline
  for p in "${RCPORTS[@]}"; do
    dir="$RCDIR/node-$p"; mkdir -p "$dir"
    alive "$dir/pid" && continue
    port_open "$p" && die "port $p is taken by another process (set SD_REDIS_CLUSTER_PORTS)"
    port_open "$((p + 10000))" && die "cluster bus port $((p + 10000)) is taken (set SD_REDIS_CLUSTER_PORTS)"
    redis-server --bind 127.0.0.1 --port "$p" --daemonize yes --pidfile "$dir/pid" --dir "$dir" \
      --logfile "$dir/redis.log" --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
      --cluster-node-timeout 2000 --appendonly yes --save "" >/dev/null
  done
  deadline=$((SECONDS + TIMEOUT))
  for p in "${RCPORTS[@]}"; do
    until [ "$(rcli "$p" ping)" = "PONG" ]; do
      [ $SECONDS -lt $deadline ] || die "redis cluster node :$p not ready after ${TIMEOUT}s"; sleep 0.1
    done
  done
  if ! redis_cluster_ok && [ "$(rcli "${RCPORTS[0]}" cluster info | tr -d '\r' | awk -F: '/^cluster_slots_assigned/ {print $2}')" = "0" ]; then
    local nodes=(); for p in "${RCPORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$RCDIR/create.log" 2>&1 \
      || die "redis-cli --cluster create failed (log: $RCDIR/create.log)"
  fi
  until redis_cluster_ok; do
    [ $SECONDS -lt $deadline ] || die "redis cluster not ok after ${TIMEOUT}s (logs: $RCDIR)"; sleep 0.1
  done
  log "redis cluster ready on ${RCPORTS[*]} (${#RCPORTS[@]} primaries)"
}

redis_cluster_down() {  # SIGTERM to the three at once, then wait for each
  local p items=()
  for p in "${RCPORTS[@]}"; do items+=("$RCDIR/node-$p/pid|redis cluster node :$p"); done
  stop_all "${items[@]}"
}

case "${1:-}" in
  up) redis_up; kafka_up ;;
  down) stop_pid "$KDIR/pid" "kafka :$KAFKA_PORT"; stop_pid "$RDIR/pid" "redis :$REDIS_PORT" ;;
  stop-kafka) stop_pid "$KDIR/pid" "kafka :$KAFKA_PORT" ;;   # for chaos tests; `up` brings it back
  stop-redis) stop_pid "$RDIR/pid" "redis :$REDIS_PORT" ;;
  kill-kafka)
    if alive "$KDIR/pid"; then
      pid=$(pid_in "$KDIR/pid"); kill -9 "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
      log "kafka killed (SIGKILL)"
    fi
    rm -f "$KDIR/pid" ;;
  status)
    alive "$KDIR/pid" && echo "kafka: running on 127.0.0.1:$KAFKA_PORT (pid $(pid_in "$KDIR/pid"))" || echo "kafka: stopped"
    alive "$RDIR/pid" && echo "redis: running on 127.0.0.1:$REDIS_PORT (pid $(pid_in "$RDIR/pid"))" || echo "redis: stopped" ;;
  cluster-up) cluster_up ;;
  cluster-down)  # SIGTERM to all three at once: one by one, the last nodes would wait for a lost quorum
    stop_all "$(node_dir 1)/pid|kafka node 1" "$(node_dir 2)/pid|kafka node 2" "$(node_dir 3)/pid|kafka node 3" ;;
  cluster-status)
    for n in 1 2 3; do
      d=$(node_dir "$n")
      alive "$d/pid" && echo "kafka node $n: running on 127.0.0.1:${CPORTS[$((n - 1))]} (pid $(pid_in "$d/pid"))" \
        || echo "kafka node $n: stopped"
    done ;;
  kill-broker) check_node "${2:-}"; stop_node "$2" KILL ;;
  stop-broker) check_node "${2:-}"; stop_node "$2" TERM ;;
  start-broker) check_node "${2:-}"; fetch_kafka; start_node "$2"; wait_node "$2" ;;
  cluster-controller) cluster_controller ;;
  sentinel-up) sentinel_up ;;
  sentinel-down) sentinel_down ;;
  sentinel-status)
    for p in "${SRPORTS[@]}"; do
      echo "redis :$p: $(rcli "$p" info replication | awk -F: '/^role/ {print $2}' | tr -d '\r' || true)"
    done
    echo "primary per sentinels: $(sentinel_primary || true)" ;;
  kill-redis-primary) kill_redis_primary ;;
  start-redis-nodes) ensure_sentinel; start_redis_node 0; start_redis_node 1 ;;
  redis-cluster-up) redis_cluster_up ;;
  redis-cluster-down) redis_cluster_down ;;
  redis-cluster-status)
    for p in "${RCPORTS[@]}"; do
      if alive "$RCDIR/node-$p/pid"; then
        echo "redis cluster node :$p: $(rcli "$p" cluster info | tr -d '\r' | awk -F: '/^cluster_state/ {print $2}' || true)"
      else
        echo "redis cluster node :$p: stopped"
      fi
    done ;;
  *) echo "usage: $0 up|down|status|stop-kafka|stop-redis|kill-kafka" \
          "|cluster-up|cluster-down|cluster-status|kill-broker N|stop-broker N|start-broker N|cluster-controller" \
          "|sentinel-up|sentinel-down|sentinel-status|kill-redis-primary|start-redis-nodes" \
          "|redis-cluster-up|redis-cluster-down|redis-cluster-status" >&2; exit 2 ;;
esac
