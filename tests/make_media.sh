#!/usr/bin/env bash
# Generates the test media used by the unit and integration tests.
#
#   tests/make_media.sh OUTDIR
#
# Idempotent: a file that already exists is kept; every file is written under a
# temporary name and renamed into place, so an interrupted run leaves no
# half-written media behind. Everything is synthetic (lavfi testsrc2 / sine) and
# small, so the whole set takes well under a minute on two cores.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
command -v ffmpeg >/dev/null || { echo "make_media: ffmpeg not found" >&2; exit 1; }

made=0
skipped=0
start=$SECONDS

# ff NAME ARGS... : runs ffmpeg with ARGS and the output file last, unless NAME exists.
ff() {
  local name=$1
  shift
  if [[ -e "$out/$name" ]]; then
    skipped=$((skipped + 1))
    return 0
  fi
  local tmp="$out/.tmp.$name"  # keeps the extension so ffmpeg picks the muxer
  rm -f "$tmp"
  if ! ffmpeg -nostdin -hide_banner -loglevel error -y "$@" "$tmp"; then
    rm -f "$tmp"
    echo "make_media: failed to make $name" >&2
    return 1
  fi
  mv -f "$tmp" "$out/$name"
  made=$((made + 1))
}

# put NAME CMD... : writes CMD's stdout to NAME, unless NAME exists.
put() {
  local name=$1
  shift
  if [[ -e "$out/$name" ]]; then
    skipped=$((skipped + 1))
    return 0
  fi
  local tmp="$out/.tmp.$name"
  "$@" >"$tmp"
  mv -f "$tmp" "$out/$name"
  made=$((made + 1))
}

# (no "grep -q" on a pipe: with pipefail, ffmpeg dying of SIGPIPE would count as "absent")
encoders=$(ffmpeg -hide_banner -encoders 2>/dev/null)
has_encoder() { grep -q " $1 " <<<"$encoders"; }

src_v() { echo "testsrc2=size=$1:rate=$2:duration=$3"; }        # size rate seconds
src_a() { echo "sine=frequency=440:sample_rate=48000:duration=$1"; }  # seconds
# libx264 "superfast" keeps B-frames and the 8x8 transform (High profile) and is fast at these sizes.
X264=(-c:v libx264 -preset superfast -pix_fmt yuv420p -sc_threshold 0)
AAC=(-c:a aac -b:a 96k -ac 2)

# The reference title: 20 s, 25 fps, 2 s GOP, B-frames, AAC, moov at the end (ffmpeg's default).
ff h264_aac.mp4 -f lavfi -i "$(src_v 320x240 25 20)" -f lavfi -i "$(src_a 20)" \
  "${X264[@]}" -g 50 -keyint_min 50 "${AAC[@]}"

# The same streams in other containers (stream copy: identical frames and GOPs).
ff faststart.mp4 -i "$out/h264_aac.mp4" -c copy -movflags +faststart
ff h264_aac.mkv -i "$out/h264_aac.mp4" -c copy
ff h264_aac.mov -i "$out/h264_aac.mp4" -c copy
ff h264_aac.ts -i "$out/h264_aac.mp4" -c copy
ff h264_aac.flv -i "$out/h264_aac.mp4" -c copy
# Timestamps that pass 2^33 (95443.7 s) about 13 s into the file.
ff wrap.ts -i "$out/h264_aac.mp4" -c copy -output_ts_offset 95430
# Audio starts 1 s before the video.
ff audio_first.ts -i "$out/h264_aac.mp4" -itsoffset 1 -i "$out/h264_aac.mp4" -map 1:v -map 0:a -c copy
# A capture joined mid-stream: starts at an arbitrary TS packet, inside a GOP.
put midstream.ts tail -c +$((188 * 1500 + 1)) "$out/h264_aac.ts"
# Two captures back to back: timestamps jump from ~21 s to ~95430 s, then wrap.
put discont.ts cat "$out/h264_aac.ts" "$out/wrap.ts"

# 10 s GOPs: a 6 s target still gives 10 s segments.
ff longgop.mp4 -f lavfi -i "$(src_v 320x240 25 30)" -f lavfi -i "$(src_a 30)" \
  "${X264[@]}" -g 250 -keyint_min 250 "${AAC[@]}"
# 29.97 fps, 2 s GOP.
ff ntsc.mp4 -f lavfi -i "$(src_v 320x240 30000/1001 20)" -f lavfi -i "$(src_a 20)" \
  "${X264[@]}" -g 60 -keyint_min 60 "${AAC[@]}"
# H.264 with AC-3 audio.
ff h264_ac3.mkv -i "$out/h264_aac.mp4" -f lavfi -i "$(src_a 20)" -map 0:v -map 1:a \
  -c:v copy -c:a ac3 -b:a 128k
if has_encoder libx265; then
  ff hevc_aac.mp4 -f lavfi -i "$(src_v 320x240 25 10)" -f lavfi -i "$(src_a 10)" \
    -c:v libx265 -preset ultrafast -tag:v hvc1 -pix_fmt yuv420p \
    -x265-params "log-level=error:keyint=50:min-keyint=50:scenecut=0" "${AAC[@]}"
fi
ff audio_only.m4a -f lavfi -i "$(src_a 20)" "${AAC[@]}"
ff mp3_audio.mp3 -f lavfi -i "$(src_a 20)" -c:a libmp3lame -b:a 128k
# MP3 with cover art (an attached-picture video stream): still an audio-only title.
ff cover_art.mp3 -i "$out/mp3_audio.mp3" -f lavfi -i "testsrc2=size=64x64:duration=0.04" -map 0:a -map 1:v \
  -c:a copy -c:v mjpeg -frames:v 1 -disposition:v attached_pic -id3v2_version 3

# Unsupported codecs: HLS over MPEG-TS carries neither VP9 nor Opus.
ff vp9.webm -f lavfi -i "$(src_v 320x240 25 2)" -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 200k
ff h264_opus.mkv -f lavfi -i "$(src_v 320x240 25 2)" -f lavfi -i "$(src_a 2)" \
  "${X264[@]}" -g 50 -c:a libopus -b:a 64k

# Broken inputs.
put empty.mp4 true
# 100 KB of reproducible noise: an AES-CTR keystream with a fixed key, or Python's seeded PRNG.
noise() {
  if command -v openssl >/dev/null; then
    openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
      -iv 00000000000000000000000000000000 </dev/zero 2>/dev/null | head -c 102400 || true
  else
    python3 -c 'import random, sys; random.seed(42); sys.stdout.buffer.write(random.randbytes(102400))'
  fi
}
put random.bin noise
[[ $(stat -c %s "$out/random.bin") -eq 102400 ]] || { echo "make_media: random.bin is not 100 KB" >&2; exit 1; }
put text.mp4 printf 'This is a text file, not a movie.\nkafka-hls test media.\n'
# The first 40% of a moov-at-end MP4: mdat only, no moov.
put truncated.mp4 bash -c 'f="$1"; head -c $(( $(stat -c %s "$f") * 4 / 10 )) "$f"' _ "$out/h264_aac.mp4"

# A longer, larger clip for player tests.
ff clip40.mp4 -f lavfi -i "$(src_v 640x360 25 40)" -f lavfi -i "$(src_a 40)" \
  "${X264[@]}" -g 50 -keyint_min 50 "${AAC[@]}"

echo "make_media: $made made, $skipped already present in $out ($((SECONDS - start)) s)" >&2
