#!/usr/bin/env bash
# The README's first command: set up, start the local broker, generate a sample
# movie, and ingest + package it through Kafka. Ends by printing the playlist.
#
#   bash scripts/demo.sh              # ingest + package, print the master.m3u8 path
#   KHLS_SERVE=8080 bash scripts/demo.sh   # ... then serve it; open the printed URL
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${KHLS_BUILD_DIR:-build}
OUT=${KHLS_OUT:-$ROOT/out}
CACHE=${KHLS_CACHE:-$HOME/.cache/kafka-hls}
say() { echo "demo: $*" >&2; }

[ "${KHLS_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
bash scripts/kafka.sh start

SAMPLE=$CACHE/sample-1080p-60s.mp4
if [ ! -s "$SAMPLE" ]; then
  say "generating a 60 s 1080p H.264/AAC sample ($SAMPLE)"
  mkdir -p "$CACHE"
  ffmpeg -nostdin -v error -y \
    -f lavfi -i "testsrc2=size=1920x1080:rate=25" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 60 \
    -c:v libx264 -preset veryfast -profile:v high -b:v 4M -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p \
    -c:a aac -b:a 128k "$SAMPLE.tmp.mp4"
  mv "$SAMPLE.tmp.mp4" "$SAMPLE"
fi

ARGS=(run "$SAMPLE" --title sample --out "$OUT")
if [ -n "${KHLS_SERVE:-}" ]; then ARGS+=(--serve "$KHLS_SERVE" --realtime); fi
say "ingest + package through Kafka: $BUILD/kafka-hls ${ARGS[*]}"
PLAYLIST=$("$BUILD/kafka-hls" "${ARGS[@]}")
say "done. Play it with:  ffplay $PLAYLIST"
say "or serve it:         $BUILD/kafka-hls serve $OUT --port 8080   and open http://127.0.0.1:8080/"
echo "$PLAYLIST"
