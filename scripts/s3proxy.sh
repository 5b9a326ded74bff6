#!/usr/bin/env bash
# A local S3 server for the tests and for trying the S3 output: S3Proxy
# (github.com/gaul/s3proxy) with its filesystem backend, SigV4 authentication and a
# fixed local identity, on 127.0.0.1 only. Its jar comes from Maven Central
# (scripts/s3proxy/pom.xml) and is cached outside the repo.
#
#   scripts/s3proxy.sh fetch      resolve the S3Proxy jar into the cache (once)
#   scripts/s3proxy.sh start      start, wait until a signed request succeeds; no-op if running
#   scripts/s3proxy.sh stop       SIGTERM, up to 10 s for a clean shutdown, then SIGKILL
#   scripts/s3proxy.sh status     exit 0 if running and answering (prints one line)
#   scripts/s3proxy.sh env        the client settings, one KEY=VALUE a line:
#                                   set -a; eval "$(bash scripts/s3proxy.sh env)"; set +a
#   scripts/s3proxy.sh restart    stop + start, keeping the data
#   scripts/s3proxy.sh reset      stop and wipe the data (every bucket)
#   scripts/s3proxy.sh logs [-f]  the server's log
#
# Environment:
#   S3PROXY_PORT           HTTP port on 127.0.0.1 (default 9300)
#   S3PROXY_IDENTITY       access key id the server accepts (default khls-local)
#   S3PROXY_CREDENTIAL     its secret access key (default khls-local-secret)
#   KHLS_CACHE             cache dir (default ~/.cache/kafka-hls): the jar in s3proxy-<version>/
#   KHLS_S3PROXY_DIR       config, data (data/<bucket>/<key>), log and pid of this server
#                          (default $KHLS_CACHE/s3proxy-run-$S3PROXY_PORT)
#   S3PROXY_START_TIMEOUT  seconds to wait for the server to answer (default 60)
#   S3PROXY_HEAP_OPTS      default "-Xms64m -Xmx768m" (SigV4 bodies are buffered: see MAX_BODY)
#   S3PROXY_LOG_LEVEL      S3Proxy's log level (default info: start-up and errors)
#   KHLS_JAVA              java binary (default: Java 17 if installed, else java on PATH)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM=$HERE/s3proxy/pom.xml
S3PROXY_VERSION=$(sed -n 's:.*<s3proxy.version>\(.*\)</s3proxy.version>.*:\1:p' "$POM")
CACHE=${KHLS_CACHE:-$HOME/.cache/kafka-hls}
SHOME=$CACHE/s3proxy-$S3PROXY_VERSION
JAR=$SHOME/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar
PORT=${S3PROXY_PORT:-9300}
IDENTITY=${S3PROXY_IDENTITY:-khls-local}
CREDENTIAL=${S3PROXY_CREDENTIAL:-khls-local-secret}
REGION=us-east-1
DIR=${KHLS_S3PROXY_DIR:-$CACHE/s3proxy-run-$PORT}
CONF=$DIR/s3proxy.conf
PIDFILE=$DIR/s3proxy.pid
LOG=$DIR/s3proxy.log
TIMEOUT=${S3PROXY_START_TIMEOUT:-60}
ENDPOINT=http://127.0.0.1:$PORT
# A SigV4 request with a signed payload hash is buffered whole by S3Proxy to check
# it; bodies above this size are refused (S3Proxy's default is 32 MiB).
MAX_BODY=$((256 * 1024 * 1024))

say() { echo "s3proxy: $*" >&2; }
die() { echo "s3proxy: error: $*" >&2; exit 1; }
# `env` lines are eval'ed and the config is a properties file: keep the values plain.
[[ $IDENTITY =~ ^[A-Za-z0-9._+/-]+$ && $CREDENTIAL =~ ^[A-Za-z0-9._+/-]+$ ]] ||
  die "S3PROXY_IDENTITY and S3PROXY_CREDENTIAL may hold only A-Z a-z 0-9 . _ + / -"
[[ $PORT =~ ^[0-9]+$ ]] && (( PORT > 0 && PORT <= 65535 )) || die "S3PROXY_PORT '$PORT' is not a port"

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
fetched() { [ -f "$JAR" ] && [ -f "$SHOME/.complete" ] && [ "$(cat "$SHOME/.complete")" = "$(pom_sum)" ]; }

fetch() {
  fetched && return 0
  command -v mvn >/dev/null || die "mvn not found (run scripts/setup.sh)"
  mkdir -p "$SHOME"
  exec 8>"$SHOME/.fetch.lock"
  flock -w 600 8 || die "timed out waiting for another fetch ($SHOME/.fetch.lock)"
  if fetched; then exec 8>&-; return 0; fi
  say "fetching S3Proxy $S3PROXY_VERSION from Maven Central into $SHOME"
  local tmp=$SHOME/jar.tmp.$$
  rm -rf "$tmp"
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$SHOME/fetch.log" 2>&1; then
    tail -n 30 "$SHOME/fetch.log" >&2
    rm -rf "$tmp"
    die "could not resolve the S3Proxy jar (log: $SHOME/fetch.log)"
  fi
  [ -f "$tmp/${JAR##*/}" ] || { rm -rf "$tmp"; die "${JAR##*/} missing after fetch"; }
  mv -f "$tmp/${JAR##*/}" "$JAR"
  rm -rf "$tmp"
  pom_sum >"$SHOME/.complete"
  exec 8>&-
}

# --- process state -----------------------------------------------------------
pid_of() { # prints the server's pid if it is alive (and really this server)
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "org.gaul.s3proxy.Main --properties $CONF" || return 1
  echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# A signed ListBuckets succeeds: the server is up and takes the credentials `env` prints.
answers() {
  command -v curl >/dev/null || die "curl not found (run scripts/setup.sh)"
  curl -sf -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:$REGION:s3" --user "$IDENTITY:$CREDENTIAL" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" "$ENDPOINT/"
}

show_logs() {
  [ -s "$LOG" ] || return 0
  echo "---- last 30 lines of $LOG ----" >&2
  tail -n 30 "$LOG" >&2
}

# --- config ------------------------------------------------------------------
write_config() {
  mkdir -p "$DIR/data"
  cat >"$CONF.tmp" <<EOF
# Written by scripts/s3proxy.sh on every start; edit the script, not this file.
s3proxy.endpoint=$ENDPOINT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$IDENTITY
s3proxy.credential=$CREDENTIAL
s3proxy.v4-max-non-chunked-request-size=$MAX_BODY
jclouds.provider=filesystem
jclouds.filesystem.basedir=$DIR/data
EOF
  chmod 600 "$CONF.tmp"
  mv -f "$CONF.tmp" "$CONF"
}

# --- verbs -------------------------------------------------------------------
lock_dir() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "timed out waiting for another s3proxy.sh on $DIR"
}

wait_ready() { # PID
  local pid=$1 t0=$SECONDS
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_logs
      die "the server exited during startup (log: $LOG)"
    fi
    port_open "$PORT" && answers && return 0
    if (( SECONDS - t0 >= TIMEOUT )); then
      show_logs
      die "the server did not answer a signed request on $ENDPOINT within ${TIMEOUT}s (pid $pid; log: $LOG)"
    fi
    sleep 0.2
  done
}

start() {
  lock_dir
  local pid
  if pid=$(pid_of); then
    if answers; then say "already running on $ENDPOINT (pid $pid)"; return 0; fi
    say "pid $pid is alive but not answering yet; waiting"
    wait_ready "$pid"
    say "running on $ENDPOINT (pid $pid)"
    return 0
  fi
  port_open "$PORT" && die "port 127.0.0.1:$PORT is already in use by another process (not the S3Proxy of $DIR; set S3PROXY_PORT)"
  fetch
  write_config
  rm -f "$PIDFILE"
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.1"
  local java t0ms=${EPOCHREALTIME/./}
  java=$(java_bin)
  say "starting S3Proxy $S3PROXY_VERSION on $ENDPOINT (dir $DIR)"
  # setsid: own session, survives the calling shell; the child writes its pid, then execs the JVM.
  # shellcheck disable=SC2016  # expanded by the inner bash
  KHLS_J="$java" KHLS_P="$PIDFILE" KHLS_JAR="$JAR" KHLS_C="$CONF" KHLS_OPTS="${S3PROXY_HEAP_OPTS:--Xms64m -Xmx768m}" \
    LOG_LEVEL="${S3PROXY_LOG_LEVEL:-info}" \
    setsid -f bash -c 'echo $$ >"$KHLS_P"; exec "$KHLS_J" $KHLS_OPTS -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true -Dlogback.statusListenerClass=ch.qos.logback.core.status.NopStatusListener \
      -cp "$KHLS_JAR" org.gaul.s3proxy.Main --properties "$KHLS_C"' \
    </dev/null >"$LOG" 2>&1 9>&- 8>&-
  for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
  [ -s "$PIDFILE" ] || { show_logs; die "the server process did not start"; }
  pid=$(cat "$PIDFILE")
  wait_ready "$pid"
  local ms=$(( (${EPOCHREALTIME/./} - t0ms) / 1000 ))
  say "running on $ENDPOINT (pid $pid, ready in $((ms / 1000)).$((ms % 1000 / 100)) s)"
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
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "no clean shutdown after 10 s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  local pid
  if ! pid=$(pid_of); then
    echo "s3proxy: not running ($DIR)"
    return 3
  fi
  if answers; then
    echo "s3proxy: running on $ENDPOINT (pid $pid, S3Proxy $S3PROXY_VERSION, dir $DIR)"
    return 0
  fi
  echo "s3proxy: pid $pid is alive but not answering on $ENDPOINT (log: $LOG)"
  return 1
}

reset() {
  stop
  say "wiping $DIR"
  # keep the lock file: another s3proxy.sh may be waiting on it
  find "$DIR" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
}

print_env() {
  cat <<EOF
AWS_ENDPOINT_URL=$ENDPOINT
AWS_ACCESS_KEY_ID=$IDENTITY
AWS_SECRET_ACCESS_KEY=$CREDENTIAL
AWS_REGION=$REGION
EOF
}

logs() {
  [ -f "$LOG" ] || die "no log yet ($LOG)"
  if [ "${1:-}" = -f ]; then exec tail -n 50 -F "$LOG"; fi
  tail -n "${S3PROXY_LOG_LINES:-100}" "$LOG"
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
  env) print_env ;;
  restart) stop; start ;;
  reset) reset ;;
  logs) logs "$@" ;;
  *) usage ;;
esac
