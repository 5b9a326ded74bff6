#!/usr/bin/env bash
# A local single-node Apache Kafka (KRaft: broker + controller in one JVM) for
# the demo and the tests. Jars come from Maven Central (scripts/kafka/pom.xml)
# and are cached outside the repo.
#
#   scripts/kafka.sh fetch      resolve the Kafka jars into the cache (once)
#   scripts/kafka.sh start      format storage (once), start, wait until it answers; no-op if running
#   scripts/kafka.sh stop       SIGTERM, up to 30 s for a clean shutdown, then SIGKILL
#   scripts/kafka.sh status     exit 0 if running and answering (prints one line)
#   scripts/kafka.sh restart    stop + start, keeping the data
#   scripts/kafka.sh reset      stop and wipe the data dir  (or: KAFKA_RESET=1 scripts/kafka.sh start)
#   scripts/kafka.sh logs [-f]  the broker's log (WARN and up)
#   scripts/kafka.sh topics ... kafka-topics (--bootstrap-server is added), e.g. topics --list
#   scripts/kafka.sh groups ... kafka-consumer-groups, e.g. groups --describe --all-groups
#
# A local 3-node cluster (KRaft, each node broker + controller, replication factor 3, min ISR 2),
# for failover tests; nodes are N = 1, 2, 3 on client ports BASE, BASE+1, BASE+2:
#   scripts/kafka.sh cluster start        start the stopped nodes (formatting once), wait until all
#                                         answer and transactions work; no-op if all are running
#   scripts/kafka.sh cluster stop         stop every node
#   scripts/kafka.sh cluster status       one line per node; exit 0 if all answer
#   scripts/kafka.sh cluster bootstrap    prints the bootstrap list (127.0.0.1:BASE,...)
#   scripts/kafka.sh cluster kill N       SIGKILL node N (a crash)
#   scripts/kafka.sh cluster start-node N start node N again (the others must be running)
#   scripts/kafka.sh cluster reset        stop and wipe every node's data
#
# Environment:
#   KAFKA_PORT             client port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  controller port (default KAFKA_PORT+1000)
#   KHLS_CACHE             cache dir (default ~/.cache/kafka-hls): jars in kafka-<version>/libs
#   KHLS_KAFKA_DIR         config, data, logs and pid of this broker (default $KHLS_CACHE/kafka-run-$KAFKA_PORT)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 60)
#   KAFKA_HEAP_OPTS        default "-Xms256m -Xmx1g";  KAFKA_JVM_OPTS: extra JVM options
#   KHLS_JAVA              java binary (default: Java 17 if installed, else java on PATH)
#   KAFKA_CLUSTER_PORT     cluster: client port of node 1 (default 19092); controllers on +1000
#   KHLS_KAFKA_CLUSTER_DIR cluster: its nodes' dirs node-1..3 (default $KHLS_CACHE/kafka-cluster-$KAFKA_CLUSTER_PORT)
# Set by the cluster verbs for each node (single node: defaults):
#   KAFKA_NODE_ID (1), KAFKA_VOTERS (1@127.0.0.1:CONTROLLER_PORT), KAFKA_REPLICATION (1),
#   KAFKA_MIN_ISR (1), KAFKA_CLUSTER_ID (random at the first format)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM=$HERE/kafka/pom.xml
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
CACHE=${KHLS_CACHE:-$HOME/.cache/kafka-hls}
KHOME=$CACHE/kafka-$KAFKA_VERSION
LIBS=$KHOME/libs
PORT=${KAFKA_PORT:-9092}
CPORT=${KAFKA_CONTROLLER_PORT:-$((PORT + 1000))}
DIR=${KHLS_KAFKA_DIR:-$CACHE/kafka-run-$PORT}
PIDFILE=$DIR/kafka.pid
LOG=$DIR/logs/server.log
OUT=$DIR/kafka.out
TIMEOUT=${KAFKA_START_TIMEOUT:-60}
BOOTSTRAP=127.0.0.1:$PORT
NODE_ID=${KAFKA_NODE_ID:-1}
VOTERS=${KAFKA_VOTERS:-1@127.0.0.1:$CPORT}
REPLICATION=${KAFKA_REPLICATION:-1}
MIN_ISR=${KAFKA_MIN_ISR:-1}

say() { echo "kafka: $*" >&2; }
die() { echo "kafka: error: $*" >&2; exit 1; }

java_bin() {
  if [ -n "${KHLS_JAVA:-}" ]; then echo "$KHLS_JAVA"; return; fi
  local j
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [ -x "$j" ] && { echo "$j"; return; }
  done
  command -v java || die "java not found (run scripts/setup.sh, or set KHLS_JAVA)"
}

# --- fetch -------------------------------------------------------------------
pom_sum() { sha256sum "$POM" | cut -d' ' -f1; }
fetched() { [ -f "$LIBS/.complete" ] && [ "$(cat "$LIBS/.complete")" = "$(pom_sum)" ]; }

fetch() {
  fetched && return 0
  command -v mvn >/dev/null || die "mvn not found (run scripts/setup.sh)"
  mkdir -p "$KHOME"
  exec 8>"$KHOME/.fetch.lock"
  flock -w 600 8 || die "timed out waiting for another fetch ($KHOME/.fetch.lock)"
  if fetched; then exec 8>&-; return 0; fi
  say "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  local tmp=$KHOME/libs.tmp.$$
  rm -rf "$tmp"
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$KHOME/fetch.log" 2>&1; then
    tail -n 30 "$KHOME/fetch.log" >&2
    rm -rf "$tmp"
    die "could not resolve the Kafka jars (log: $KHOME/fetch.log)"
  fi
  [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  pom_sum >"$LIBS/.complete"
  exec 8>&-
}

# Log4j config for the command-line tools (StorageTool, TopicCommand): warnings to stderr.
tools_log4j() {
  local f=$KHOME/tools-log4j.properties
  [ -f "$f" ] || cat >"$f" <<'EOF'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
  echo "$f"
}

run_tool() { # CLASS ARGS...
  local cls=$1; shift
  "$(java_bin)" -Xmx256m -XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$(tools_log4j)" -cp "$LIBS/*" "$cls" "$@"
}

# --- process state -----------------------------------------------------------
pid_of() { # prints the broker's pid if it is alive (and really our broker)
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $DIR/server.properties" || return 1
  echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# The broker answers a metadata request and lists itself (node 1).
answers() {
  command -v kcat >/dev/null || die "kcat not found (run scripts/setup.sh)"
  timeout 10 kcat -b "$BOOTSTRAP" -L -J -m 3 -X topic.metadata.refresh.interval.ms=-1 2>/dev/null \
    | grep -q "\"brokers\":\\[.*{\"id\":$NODE_ID,"
}

# A transactional producer can initialize: the transaction coordinator is up
# (this also creates __transaction_state, which the broker makes lazily).
txn_ready() {
  timeout 20 kcat -P -b "$BOOTSTRAP" -t __khls_ready -X transactional.id="khls-ready" \
    -X transaction.timeout.ms=10000 -m 15 </dev/null >/dev/null 2>&1
}

show_logs() {
  local f
  for f in "$OUT" "$LOG"; do
    [ -s "$f" ] || continue
    echo "---- last 30 lines of $f ----" >&2
    tail -n 30 "$f" >&2
  done
}

# --- config ------------------------------------------------------------------
write_config() {
  mkdir -p "$DIR/data" "$DIR/logs"
  cat >"$DIR/server.properties" <<EOF
# Written by scripts/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
default.replication.factor=$REPLICATION
min.insync.replicas=$MIN_ISR
unclean.leader.election.enable=false
auto.create.topics.enable=false
offsets.topic.replication.factor=$REPLICATION
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
EOF
  cat >"$DIR/log4j.properties" <<EOF
# Broker logging: warnings and errors to $LOG, plus start/stop lines. Nothing to the terminal.
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$LOG
log4j.appender.file.MaxFileSize=10MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.Kafka\$=INFO
EOF
}

format_storage() {
  [ -f "$DIR/data/meta.properties" ] && return 0
  local id
  if [ -n "${KAFKA_CLUSTER_ID:-}" ]; then
    id=$KAFKA_CLUSTER_ID
  elif [ -s "$DIR/cluster.id" ]; then
    id=$(cat "$DIR/cluster.id")
  else
    id=$(run_tool kafka.tools.StorageTool random-uuid) || die "StorageTool random-uuid failed"
    echo "$id" >"$DIR/cluster.id"
  fi
  say "formatting $DIR/data (cluster id $id)"
  if ! run_tool kafka.tools.StorageTool format -t "$id" -c "$DIR/server.properties" >"$DIR/format.log" 2>&1; then
    cat "$DIR/format.log" >&2
    die "formatting the storage failed"
  fi
}

# --- verbs -------------------------------------------------------------------
lock_dir() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 180 9 || die "timed out waiting for another kafka.sh on $DIR"
}

wait_ready() { # PID
  local pid=$1 t0=$SECONDS
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_logs
      die "the broker exited during startup (logs: $LOG, $OUT)"
    fi
    port_open "$PORT" && answers && break
    if (( SECONDS - t0 >= TIMEOUT )); then
      show_logs
      die "the broker did not answer on $BOOTSTRAP within ${TIMEOUT}s (pid $pid; logs: $LOG)"
    fi
    sleep 0.2
  done
  [ "${KAFKA_SKIP_TXN_CHECK:-0}" = 1 ] && return 0
  while ! txn_ready; do
    if (( SECONDS - t0 >= TIMEOUT )); then
      show_logs
      die "the broker answers, but a transactional producer cannot initialize within ${TIMEOUT}s (logs: $LOG)"
    fi
    sleep 1
  done
}

start() {
  [ "${KAFKA_RESET:-0}" = 1 ] && reset
  lock_dir
  local pid
  if pid=$(pid_of); then
    if answers; then say "already running on $BOOTSTRAP (pid $pid)"; return 0; fi
    say "pid $pid is alive but not answering yet; waiting"
    wait_ready "$pid"
    say "running on $BOOTSTRAP (pid $pid)"
    return 0
  fi
  (( CPORT <= 65535 )) || die "controller port $CPORT out of range (set KAFKA_CONTROLLER_PORT)"
  local p
  for p in "$PORT" "$CPORT"; do
    port_open "$p" && die "port 127.0.0.1:$p is already in use by another process (not the broker of $DIR)"
  done
  fetch
  write_config
  format_storage
  rm -f "$PIDFILE"
  local java t0ms=${EPOCHREALTIME/./}
  java=$(java_bin)
  say "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller :$CPORT, dir $DIR)"
  # setsid: own session, survives the calling shell; the child writes its pid, then execs the JVM.
  # shellcheck disable=SC2016  # expanded by the inner bash
  KHLS_J="$java" KHLS_P="$PIDFILE" KHLS_CP="$LIBS/*" KHLS_D="$DIR" KHLS_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} ${KAFKA_JVM_OPTS:-}" \
    setsid -f bash -c 'echo $$ >"$KHLS_P"; exec "$KHLS_J" $KHLS_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j.configuration="file:$KHLS_D/log4j.properties" -Dkafka.logs.dir="$KHLS_D/logs" \
      -cp "$KHLS_CP" kafka.Kafka "$KHLS_D/server.properties"' \
    </dev/null >"$OUT" 2>&1 9>&- 8>&-
  for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
  [ -s "$PIDFILE" ] || { show_logs; die "the broker process did not start"; }
  pid=$(cat "$PIDFILE")
  wait_ready "$pid"
  local ms=$(( (${EPOCHREALTIME/./} - t0ms) / 1000 ))
  say "running on $BOOTSTRAP (pid $pid, ready in $((ms / 1000)).$((ms % 1000 / 100)) s)"
}

stop() {
  lock_dir
  local pid
  if ! pid=$(pid_of); then
    rm -f "$PIDFILE"
    say "not running ($DIR)"
    return 0
  fi
  say "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "no clean shutdown after 30 s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  local pid
  if ! pid=$(pid_of); then
    echo "kafka: not running ($DIR)"
    return 3
  fi
  if answers; then
    echo "kafka: running on $BOOTSTRAP (pid $pid, Kafka $KAFKA_VERSION, dir $DIR)"
    return 0
  fi
  echo "kafka: pid $pid is alive but not answering on $BOOTSTRAP (log: $LOG)"
  return 1
}

reset() {
  stop
  say "wiping $DIR"
  # keep the lock file: another kafka.sh may be waiting on it
  find "$DIR" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
}

logs() {
  [ -f "$LOG" ] || die "no log yet ($LOG)"
  if [ "${1:-}" = -f ]; then exec tail -n 50 -F "$LOG"; fi
  tail -n "${KAFKA_LOG_LINES:-100}" "$LOG"
}

# --- cluster -----------------------------------------------------------------
CBASE=${KAFKA_CLUSTER_PORT:-19092}
CDIR=${KHLS_KAFKA_CLUSTER_DIR:-$CACHE/kafka-cluster-$CBASE}
CNODES=3

cluster_bootstrap() {
  local i out=
  for i in $(seq "$CNODES"); do out+="${out:+,}127.0.0.1:$((CBASE + i - 1))"; done
  echo "$out"
}

cluster_node() { # N VERB: runs this script's VERB for node N of the cluster
  local n=$1 verb=$2 voters= i
  [[ $n =~ ^[1-9]$ ]] && (( n <= CNODES )) || die "no cluster node '$n' (1..$CNODES)"
  for i in $(seq "$CNODES"); do voters+="${voters:+,}$i@127.0.0.1:$((CBASE + 1000 + i - 1))"; done
  [ -s "$CDIR/cluster.id" ] || die "no cluster id yet (cluster start makes it)"
  KAFKA_PORT=$((CBASE + n - 1)) KAFKA_CONTROLLER_PORT=$((CBASE + 1000 + n - 1)) KHLS_KAFKA_DIR=$CDIR/node-$n \
    KAFKA_NODE_ID=$n KAFKA_VOTERS=$voters KAFKA_REPLICATION=$CNODES KAFKA_MIN_ISR=2 \
    KAFKA_CLUSTER_ID=$(cat "$CDIR/cluster.id") KAFKA_SKIP_TXN_CHECK=1 \
    KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-120} \
    "$0" "$verb"
}

cluster() {
  local verb=${1:-} i rc=0
  case $verb in
    start)
      fetch
      mkdir -p "$CDIR"
      if [ ! -s "$CDIR/cluster.id" ]; then
        run_tool kafka.tools.StorageTool random-uuid >"$CDIR/cluster.id.tmp" && mv "$CDIR/cluster.id.tmp" "$CDIR/cluster.id" ||
          die "StorageTool random-uuid failed"
      fi
      # A node answers only once a quorum of controllers runs: start them together.
      local pids=()
      for i in $(seq "$CNODES"); do cluster_node "$i" start & pids+=($!); done
      for i in "${pids[@]}"; do wait "$i" || rc=1; done
      (( rc == 0 )) || die "the cluster did not start (logs: $CDIR/node-*/logs)"
      BOOTSTRAP=$(cluster_bootstrap)
      local t0=$SECONDS
      until txn_ready; do
        (( SECONDS - t0 < 120 )) || die "the cluster answers, but transactions cannot initialize (logs: $CDIR/node-*/logs)"
        sleep 1
      done
      say "cluster running: $(cluster_bootstrap)" ;;
    stop) for i in $(seq "$CNODES"); do cluster_node "$i" stop & done; wait ;;
    status) for i in $(seq "$CNODES"); do cluster_node "$i" status || rc=$?; done; return "$rc" ;;
    bootstrap) cluster_bootstrap ;;
    kill)
      local pid
      pid=$(cat "$CDIR/node-${2:?node}/kafka.pid" 2>/dev/null) || die "node $2 has no pid file"
      kill -KILL "$pid" 2>/dev/null && say "node $2 killed (pid $pid)" || say "node $2 was not running" ;;
    start-node) cluster_node "${2:?node}" start ;;
    reset)
      if [ -s "$CDIR/cluster.id" ]; then for i in $(seq "$CNODES"); do cluster_node "$i" reset & done; wait; fi
      rm -rf "$CDIR" ;;
    *) usage ;;
  esac
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  reset) reset ;;
  logs) logs "$@" ;;
  topics) fetch; run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@" ;;
  cluster) cluster "$@" ;;
  groups) fetch; run_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BOOTSTRAP" "$@" ;;
  *) usage ;;
esac
