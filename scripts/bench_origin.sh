#!/usr/bin/env bash
# Benchmark: the kafka-hls origin (`kafka-hls serve`) against nginx serving the same HLS tree, with
# wrk, on this machine. Prints a table; the targets are informational (it never fails on them), but
# it fails loudly when a server does not start, answers wrongly, dies, or wrk cannot run.
#
#   bash scripts/bench_origin.sh              # alone (also run by scripts/bench.sh; KHLS_BENCH_ORIGIN=0 skips it there)
#   KHLS_BENCH_ORIGIN_ROUNDS=3 KHLS_BENCH_ORIGIN_DURATION=20 bash scripts/bench_origin.sh
#
# The tree: the 10-minute bench movie (scripts/bench.sh makes it) ingested and packaged by kafka-hls
# through the local broker once, into $KHLS_CACHE/bench/origin-tree (reused while it is complete:
# every media playlist has #EXT-X-ENDLIST; KHLS_BENCH_ORIGIN_REBUILD=1 rebuilds it). Its video
# segments are ~3.7 MB .ts files, its playlists a few KB.
#
# Workloads (wrk, scripts/wrk/paths.lua), each against nginx then the origin, alternating, for
# KHLS_BENCH_ORIGIN_ROUNDS rounds (default 2; medians), each run after a 2 s warm-up:
#   segments   every video segment in turn: wrk -t2 -c200 -dD --latency --timeout 10s
#   playlists  the media playlists:         wrk -t2 -c1000 -dD --latency
# D = KHLS_BENCH_ORIGIN_DURATION seconds (default 10). Time: about 2 x 2 x rounds x (D + 2) s plus
# ~5 s, i.e. ~100 s by default; building the tree the first time adds ~10-20 s.
#
# Environment: KHLS_BIN (default build/kafka-hls), KHLS_CACHE, KAFKA_PORT, KHLS_NGINX (/usr/sbin/nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KHLS_BIN:-build/kafka-hls}
CACHE=${KHLS_CACHE:-$HOME/.cache/kafka-hls}
DIR=$CACHE/bench
MOVIE=$DIR/movie-1080p-10min.mp4
TREE=$DIR/origin-tree
BROKERS=127.0.0.1:${KAFKA_PORT:-9092}
say() { echo "bench-origin: $*" >&2; }
die() { echo "bench-origin: error: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no $BIN: run scripts/setup.sh first"
[ -s "$MOVIE" ] || die "no $MOVIE: run scripts/bench.sh once (it generates the bench inputs)"

# --- wrk and nginx (Debian packages wrk, nginx-light) ----------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
NGINX=${KHLS_NGINX:-/usr/sbin/nginx}
[ -x "$NGINX" ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "not root; install these packages first: ${need[*]}"
  say "installing Debian packages: ${need[*]}"
  mkdir -p "$CACHE"
  # nginx's package starts the system service on install; this bench runs its own instance, so keep
  # the service from starting (policy-rc.d exit 101 = "action forbidden"), unless a policy exists.
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; } \
       </dev/null >"$CACHE/apt-bench.log" 2>&1; then
    tail -n 30 "$CACHE/apt-bench.log" >&2
    die "apt-get install ${need[*]} failed (log: $CACHE/apt-bench.log)"
  fi
  if [ -n "$policy" ]; then rm -f "$policy"; fi
  command -v wrk >/dev/null && [ -x "$NGINX" ] || die "wrk or $NGINX still missing after apt-get"
fi

# --- open files: 1000 connections per wrk run, on both sides ---------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  die "only $(ulimit -n) open files allowed (ulimit -n); 1000 connections need more"
fi
[ "$(ulimit -n)" = 65536 ] || say "open files limited to $(ulimit -n) (hard limit), not 65536: enough for 1000 connections"

# --- the tree ----------------------------------------------------------------------------------------
tree_complete() { # every media playlist ends, and there is a master playlist
  local t=$1 p n=0
  [ -s "$t/movie/master.m3u8" ] || return 1
  while IFS= read -r -d '' p; do
    grep -q '^#EXT-X-ENDLIST' "$p" || return 1
    n=$((n + 1))
  done < <(find "$t/movie" -name index.m3u8 -print0)
  [ "$n" -ge 2 ]
}
if [ "${KHLS_BENCH_ORIGIN_REBUILD:-0}" = 1 ] || ! tree_complete "$TREE"; then
  bash scripts/kafka.sh start >&2
  topic=bench-origin-$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')
  tmp=$TREE.tmp.$$
  rm -rf "$tmp"
  say "building the tree: ingest + package $(basename "$MOVIE") through topic $topic into $TREE"
  t0=$SECONDS
  if ! "$BIN" ingest "$MOVIE" --title movie --brokers "$BROKERS" --topic "$topic" >"$DIR/origin-ingest.log" 2>&1; then
    tail -n 20 "$DIR/origin-ingest.log" >&2; die "ingest failed (log: $DIR/origin-ingest.log)"
  fi
  if ! timeout 600 "$BIN" package --out "$tmp" --group "$topic" --until-complete movie --brokers "$BROKERS" \
        --topic "$topic" >"$DIR/origin-package.log" 2>&1; then
    tail -n 20 "$DIR/origin-package.log" >&2; die "package failed (log: $DIR/origin-package.log)"
  fi
  # The tree is all this bench needs: drop the topic and its index (<topic>.titles).
  bash scripts/kafka.sh topics --delete --topic "$topic(\\.titles)?" >/dev/null 2>&1 || true
  tree_complete "$tmp" || die "the packaged tree $tmp is not complete"
  rm -rf "$TREE"
  mv "$tmp" "$TREE"
  say "tree built in $((SECONDS - t0)) s"
fi

python3 -B scripts/bench_origin.py "$BIN" "$TREE" "$NGINX"
say "done in $SECONDS s"
