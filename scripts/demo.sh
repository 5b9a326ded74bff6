#!/usr/bin/env bash
# The README's first command: set up, start the local broker, generate a sample
# title (two video variants, two audio languages, a subtitle file), and ingest +
# package it through Kafka. Ends by printing the master playlist.
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

# A title as platforms ingest them: a two-rung ladder from one encode (keyframes
# every 2 s in both), English and French audio, and English subtitles in a file.
SAMPLE=$CACHE/sample-v2
if [ ! -s "$SAMPLE/sample-720p.mkv" ]; then
  say "generating a 30 s sample title in $SAMPLE: 720p and 360p H.264, English + French AAC, English subtitles"
  mkdir -p "$SAMPLE"
  ffmpeg -nostdin -v error -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=25:duration=30" -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=30" \
    -f lavfi -i "sine=frequency=660:sample_rate=48000:duration=30" \
    -filter_complex "[0:v]split=2[a][b];[b]scale=640:360[small]" \
    -map "[a]" -map 1:a -map 2:a -c:v libx264 -preset veryfast -b:v 2500k -g 50 -keyint_min 50 -sc_threshold 0 \
    -pix_fmt yuv420p -c:a aac -b:a 128k -metadata:s:a:0 language=eng -metadata:s:a:0 title=English \
    -metadata:s:a:1 language=fre -metadata:s:a:1 title=Français -disposition:a:0 default -disposition:a:1 0 \
    "$SAMPLE/sample-720p.tmp.mkv" \
    -map "[small]" -c:v libx264 -preset veryfast -b:v 800k -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p \
    "$SAMPLE/sample-360p.tmp.mp4"
  printf '%s\n' 1 '00:00:01,000 --> 00:00:04,000' 'Hello from kafka-hls.' '' \
    2 '00:00:10,000 --> 00:00:14,000' 'Every track of the movie went through Kafka.' '' >"$SAMPLE/sample.en.srt"
  mv "$SAMPLE/sample-360p.tmp.mp4" "$SAMPLE/sample-360p.mp4"
  mv "$SAMPLE/sample-720p.tmp.mkv" "$SAMPLE/sample-720p.mkv"
fi

ARGS=(run "$SAMPLE/sample-720p.mkv" "$SAMPLE/sample-360p.mp4" --subtitles "$SAMPLE/sample.en.srt"
      --title sample --out "$OUT")
if [ -n "${KHLS_SERVE:-}" ]; then ARGS+=(--serve "$KHLS_SERVE" --realtime); fi
say "ingest + package through Kafka: $BUILD/kafka-hls ${ARGS[*]}"
PLAYLIST=$("$BUILD/kafka-hls" "${ARGS[@]}")
say "done: $(grep -c '^#EXT-X-STREAM-INF' "$PLAYLIST") variants, $(grep -c 'TYPE=AUDIO' "$PLAYLIST") audio languages, $(grep -c 'TYPE=SUBTITLES' "$PLAYLIST") subtitle track(s)"
say "play it with:  ffplay $PLAYLIST"
say "or serve it:   $BUILD/kafka-hls serve $OUT --port 8080   and open http://127.0.0.1:8080/"
echo "$PLAYLIST"
