#!/usr/bin/env bash
# The README's test command (and what .ci/run runs): set up and build (scripts/setup.sh),
# start the local Kafka broker if it is not running, run ctest, stop the broker again
# if this script started it. Exits with ctest's status.
#
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -L kafka      # extra arguments go to ctest
#   KHLS_SKIP_SETUP=1 bash scripts/test.sh -R proto   # no apt/npm/build step
#
# Tests get: KHLS_BROKERS (127.0.0.1:$KAFKA_PORT), KAFKA_PORT (so scripts/kafka.sh
# restart hits the same broker), KHLS_NODE_MODULES (playwright-core), KHLS_CHROMIUM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD=${KHLS_BUILD_DIR:-build}
CACHE=${KHLS_CACHE:-$HOME/.cache/kafka-hls}
say() { echo "test: $*" >&2; }

export KAFKA_PORT=${KAFKA_PORT:-9092}
export KHLS_BROKERS=127.0.0.1:$KAFKA_PORT
export KHLS_NODE_MODULES=${KHLS_NODE_MODULES:-$CACHE/node/node_modules}
if [ -z "${KHLS_CHROMIUM:-}" ] && command -v chromium >/dev/null; then
  KHLS_CHROMIUM=$(command -v chromium)
  export KHLS_CHROMIUM
fi

if [ "${KHLS_SKIP_SETUP:-0}" = 1 ]; then
  say "KHLS_SKIP_SETUP=1: not running scripts/setup.sh"
else
  bash scripts/setup.sh
fi
[ -f "$BUILD/CTestTestfile.cmake" ] || { say "error: no test tree in $BUILD (run scripts/setup.sh)"; exit 1; }

started=0
# shellcheck disable=SC2329  # run by the EXIT trap
stop_broker() {
  if [ "$started" = 1 ]; then
    started=0
    bash scripts/kafka.sh stop || true
  fi
}
trap stop_broker EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if bash scripts/kafka.sh status >/dev/null 2>&1; then
  say "using the Kafka broker already running on $KHLS_BROKERS"
else
  started=1
  bash scripts/kafka.sh start
fi

say "ctest --test-dir $BUILD $*"
set +e
ctest --test-dir "$BUILD" --output-on-failure --timeout 600 "$@" </dev/null
rc=$?
set -e
say "ctest exit status $rc"
exit "$rc"
