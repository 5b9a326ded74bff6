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
  # 12 s HEVC + AAC, 640x360, 25 fps, 2 s keyframes, B-frames. Closed GOP: every keyframe is
  # an IDR (nal_unit_type 20) and no picture references across it.
  ff hevc_closed.mp4 -f lavfi -i "$(src_v 640x360 25 12)" -f lavfi -i "$(src_a 12)" \
    -c:v libx265 -preset ultrafast -tag:v hvc1 -pix_fmt yuv420p \
    -x265-params "log-level=error:keyint=50:min-keyint=50:no-open-gop=1:scenecut=0:bframes=3" "${AAC[@]}"
  # Open GOP: the keyframes at 2, 4, ... 10 s are CRA pictures (21), each followed in decode
  # order by 4 RASL pictures (one RASL_R 9, three RASL_N 8) that are shown before it and
  # reference the previous GOP (bframes=4 puts 4 B-frames before every CRA with keyint 50).
  # The MP4 marks the CRAs as sync samples.
  ff hevc_open.mp4 -f lavfi -i "$(src_v 640x360 25 12)" -f lavfi -i "$(src_a 12)" \
    -c:v libx265 -preset ultrafast -tag:v hvc1 -pix_fmt yuv420p \
    -x265-params "log-level=error:keyint=50:min-keyint=50:open-gop=1:scenecut=0:bframes=4" "${AAC[@]}"
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

# --- Multi-track titles: audio languages, subtitles, a bitrate ladder --------------------------

# The subtitle cues the tests look for (times in seconds):
#   "First cue" 1.0-3.0, "<i>Italic cue</i>" 4.0-5.5, "Boundary cue" 5.5-6.5 (spans the 6 s cut),
#   "Late cue" 13.0-15.0, "Two-line cue\nsecond line" 16.0-18.0.
put cues.en.srt printf '%s\n' \
  1 '00:00:01,000 --> 00:00:03,000' 'First cue' '' \
  2 '00:00:04,000 --> 00:00:05,500' '<i>Italic cue</i>' '' \
  3 '00:00:05,500 --> 00:00:06,500' 'Boundary cue' '' \
  4 '00:00:13,000 --> 00:00:15,000' 'Late cue' '' \
  5 '00:00:16,000 --> 00:00:18,000' 'Two-line cue' 'second line' ''
# French ASS cues: "Premier sous-titre" 2.0-4.0, "Réplique en {\i1}italique{\i0}" 7.0-9.0,
# "Dernière réplique\NDeuxième ligne" 12.0-14.5.
put cues.fr.ass printf '%s\n' '[Script Info]' 'ScriptType: v4.00+' 'PlayResX: 384' 'PlayResY: 288' '' \
  '[V4+ Styles]' \
  'Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding' \
  'Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0' '' \
  '[Events]' \
  'Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text' \
  'Dialogue: 0,0:00:02.00,0:00:04.00,Default,,0,0,0,,Premier sous-titre' \
  'Dialogue: 0,0:00:07.00,0:00:09.00,Default,,0,0,0,,Réplique en {\i1}italique{\i0}' \
  'Dialogue: 0,0:00:12.00,0:00:14.50,Default,,0,0,0,,Dernière réplique\NDeuxième ligne'
# 20 s, 2 s GOP; audio #1 eng 440 Hz (default), audio #2 fre 660 Hz; subtitles #1 eng SubRip,
# #2 fre ASS (neither default).
ff multilang.mkv -f lavfi -i "$(src_v 320x240 25 20)" -f lavfi -i "$(src_a 20)" \
  -f lavfi -i "sine=frequency=660:sample_rate=48000:duration=20" -i "$out/cues.en.srt" -i "$out/cues.fr.ass" \
  -map 0:v -map 1:a -map 2:a -map 3:s -map 4:s "${X264[@]}" -g 50 -keyint_min 50 "${AAC[@]}" \
  -c:s:0 srt -c:s:1 ass -disposition:v:0 default \
  -metadata:s:a:0 language=eng -metadata:s:a:0 title=English -disposition:a:0 default \
  -metadata:s:a:1 language=fre -metadata:s:a:1 title=Français -disposition:a:1 0 \
  -metadata:s:s:0 language=eng -disposition:s:0 0 -metadata:s:s:1 language=fre -disposition:s:1 0
# The same English cues as an MP4 timed-text (mov_text) track.
ff movtext.mp4 -f lavfi -i "$(src_v 320x240 25 20)" -f lavfi -i "$(src_a 20)" -i "$out/cues.en.srt" \
  -map 0:v -map 1:a -map 2:s "${X264[@]}" -g 50 -keyint_min 50 "${AAC[@]}" \
  -c:s mov_text -metadata:s:s:0 language=eng
# Side-car subtitles for h264_aac.mp4 (20 s).
put sidecar.en.srt printf '%s\n' \
  1 '00:00:01,500 --> 00:00:03,500' 'Hello from the sidecar' '' \
  2 '00:00:07,000 --> 00:00:09,000' 'Second sidecar cue' '' \
  3 '00:00:12,000 --> 00:00:14,000' 'Third sidecar cue' '' \
  4 '00:00:17,000 --> 00:00:19,000' 'Last sidecar cue' ''
put sidecar.fr.vtt printf '%s\n' WEBVTT '' \
  '00:00:02.000 --> 00:00:04.000' 'Bonjour du fichier à côté' '' \
  '00:00:08.000 --> 00:00:10.000' 'Deuxième réplique' '' \
  '00:00:15.000 --> 00:00:17.500' 'Dernière réplique' ''

# A 3-rung ladder scaled from one 640x360 source, 20 s, on the same 2 s keyframe grid.
ladder() {  # NAME SIZE KBPS [x264 args...]
  local name=$1 size=$2 kbps=$3
  shift 3
  ff "$name" -f lavfi -i "$(src_v 640x360 25 20)" -f lavfi -i "$(src_a 20)" -vf "scale=$size" \
    "${X264[@]}" -b:v "${kbps}k" -maxrate "${kbps}k" -bufsize "$((kbps * 2))k" "$@" "${AAC[@]}"
}
ladder ladder_a.mp4 640:360 800 -g 50 -keyint_min 50
ladder ladder_b.mp4 480:270 400 -g 50 -keyint_min 50
ladder ladder_c.mp4 320:180 200 -g 50 -keyint_min 50
# Keyframes every 2.4 s: no keyframe at 2, 4, 6 s (with a 6 s target, the 6 s cut is missed).
ladder ladder_misaligned.mp4 320:180 200 -g 60 -keyint_min 60

# Five copies of a 4.3 s clip joined by the concat demuxer (stream copy), as real joined files
# are: each part is 4.32 s of video (108 frames) but 4.3 s of AAC (its last frame holds 576
# samples), and each part's 1024-sample priming frame is kept (no edit list), so at every
# junction (4.32 s, 8.64 s...) the last audio frame of a part (pts 4.3093 s, muxed with
# duration 512) overlaps the next part's priming frame (pts 4.32 s) by 64 samples.
ff concat_part.mp4 -f lavfi -i "$(src_v 320x240 25 4.3)" -f lavfi -i "$(src_a 4.3)" \
  "${X264[@]}" -g 50 -keyint_min 50 "${AAC[@]}"
put concat5.txt printf "file 'concat_part.mp4'\n%.0s" 1 2 3 4 5
ff concat5.mp4 -f concat -safe 0 -i "$out/concat5.txt" -c copy

# 10 s; audio #1 AAC stereo eng (default), audio #2 AC-3 5.1 eng "English 5.1" (a tone per channel).
ff surround.mkv -f lavfi -i "$(src_v 320x240 25 10)" -f lavfi -i "$(src_a 10)" \
  -f lavfi -i "aevalsrc=exprs=0.4*sin(2*PI*300*t)|0.4*sin(2*PI*400*t)|0.4*sin(2*PI*500*t)|0.4*sin(2*PI*60*t)|0.4*sin(2*PI*600*t)|0.4*sin(2*PI*700*t):channel_layout=5.1:sample_rate=48000:duration=10" \
  -map 0:v -map 1:a -map 2:a "${X264[@]}" -g 50 -keyint_min 50 \
  -c:a:0 aac -b:a:0 96k -ac:a:0 2 -c:a:1 ac3 -b:a:1 384k -disposition:v:0 default \
  -metadata:s:a:0 language=eng -disposition:a:0 default \
  -metadata:s:a:1 language=eng -metadata:s:a:1 "title=English 5.1" -disposition:a:1 0

# Bitmap subtitles (PGS) beside H.264 + AAC: the ffmpeg CLI cannot make bitmap subtitles from
# text, so two minimal PGS display sets (a composition and its end, at 1 s and 3 s) are
# written by hand and muxed in.
put bitmap.sup python3 -c '
import struct, sys
def seg(pts, typ, data): return b"PG" + struct.pack(">IIBH", pts, 0, typ, len(data)) + data
out = b""
for t in (1.0, 3.0):
    pcs = struct.pack(">HHBHBBBB", 320, 240, 0x10, 0, 0x80, 0, 0, 0)
    out += seg(int(t * 90000), 0x16, pcs) + seg(int(t * 90000), 0x80, b"")
sys.stdout.buffer.write(out)'
ff pgs.mkv -i "$out/h264_aac.mp4" -i "$out/bitmap.sup" -map 0 -map 1 -c copy -metadata:s:s:0 language=eng

# Audio that stops long before the video: 12 s of video, 5 s of audio.
ff short_audio.mp4 -f lavfi -i "$(src_v 320x240 25 12)" -f lavfi -i "$(src_a 5)" "${X264[@]}" -g 50 -keyint_min 50 "${AAC[@]}"

# Checks of the multi-track media (packet headers only: fast).
if command -v ffprobe >/dev/null; then
  keyframes() {
    ffprobe -v error -select_streams v:0 -show_entries packet=pts_time,flags -of csv=p=0 "$out/$1" |
      awk -F, '$2 ~ /K/ { printf "%s ", $1 }'
  }
  grid="0.000000 2.000000 4.000000 6.000000 8.000000 10.000000 12.000000 14.000000 16.000000 18.000000 "
  for f in ladder_a.mp4 ladder_b.mp4 ladder_c.mp4; do
    [[ $(keyframes "$f") == "$grid" ]] || { echo "make_media: $f: keyframes not on the 2 s grid: $(keyframes "$f")" >&2; exit 1; }
  done
  streams=$(ffprobe -v error -show_entries stream=codec_name:stream_tags=language:stream_disposition=default \
    -of csv=p=0 "$out/multilang.mkv" | tr '\n' ' ')
  [[ $streams == "h264,1 aac,1,eng aac,0,fre subrip,0,eng ass,0,fre " ]] ||
    { echo "make_media: multilang.mkv: unexpected streams: $streams" >&2; exit 1; }
fi
# hevc_open.mp4 must have CRA pictures with leading RASL pictures (NAL types in decode order).
if [[ -e "$out/hevc_open.mp4" ]]; then
  nals=$(ffmpeg -nostdin -hide_banner -i "$out/hevc_open.mp4" -map 0:v -c copy -bsf:v trace_headers -f null - 2>&1 |
    awk '/nal_unit_type/ { printf "%s ", $NF }')
  [[ $(grep -oE '21 (8|9) ' <<<"$nals" | wc -l) -ge 5 ]] ||
    { echo "make_media: hevc_open.mp4: no CRA (21) followed by RASL (8/9) pictures" >&2; exit 1; }
fi

echo "make_media: $made made, $skipped already present in $out ($((SECONDS - start)) s)" >&2
