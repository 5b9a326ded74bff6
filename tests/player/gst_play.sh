#!/usr/bin/env bash
# Plays an HLS stream (media or multivariant playlist) to the end with GStreamer's playbin3
# (hlsdemux2, the libav decoders), as fast as it decodes, and says whether it played cleanly.
#
#   tests/player/gst_play.sh [--ref MEDIA] [--frames FILE] [--stall S] [--tolerance S] [--strict]
#                            [--root DIR] URL_OR_PATH [TIMEOUT_S=60]
#
# URL_OR_PATH: an http(s):// URL, or a local .m3u8 (a path or file:// URL). hlsdemux2 fetches
# over HTTP only (it fails on file://), so a local playlist's directory (or --root DIR) is served
# for the run by a Python HTTP server on 127.0.0.1 and a free port.
#
# Video goes to checksumsink (one "PTS MD5" line per decoded frame, printed as it is rendered,
# so the count is exact), audio to a checksumsink with SHA-1 (40 hex digits: that is how its
# lines are told apart). Exit 0 only when all of these hold:
#   - gst-launch reported EOS ("Got EOS from element") and exited 0, with no ERROR message;
#   - at least one video frame was decoded ("frames decoded: N");
#   - the video timeline has no holes: no frame's PTS is more than 1.5 frame durations (the
#     median PTS step) after the previous one, and none goes back (a segment that lost frames
#     still ends in EOS with no error, so this is the check that sees it);
#   - for a local playlist, the decoded video covers the playlist's duration (the sum of its
#     EXTINF; of the first variant for a multivariant playlist) to within --tolerance S (0.5);
#   - --ref MEDIA: the frames are bit-identical, in order and count, to ffmpeg's decode of
#     MEDIA's first video stream (compares MD5s; needs a width whose rows GStreamer does not pad,
#     i.e. a multiple of 8 for 8-bit 4:2:0);
#   - --strict: no WARNING message either (by default warnings are printed but do not fail).
# Otherwise it prints the errors and exits 1. --stall S (default 10): no new decoded buffer for
# S seconds (hlsdemux2 hangs on some broken segments instead of failing) kills it, exit 1.
# TIMEOUT_S: the whole run is killed after that many seconds, exit 124. Bad usage: exit 2.
# --frames FILE writes the "PTS MD5" lines of the video frames to FILE.
set -uo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }
ref= frames_out= stall=10 tol=0.5 strict=0 root=
while [[ $# -gt 0 ]]; do
  case $1 in
    --ref) ref=${2:?}; shift 2 ;;
    --frames) frames_out=${2:?}; shift 2 ;;
    --stall) stall=${2:?}; shift 2 ;;
    --tolerance) tol=${2:?}; shift 2 ;;
    --root) root=${2:?}; shift 2 ;;
    --strict) strict=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "gst_play: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 1 && $# -le 2 ]] || usage
target=$1
timeout_s=${2:-60}
[[ $timeout_s =~ ^[0-9]+$ && $stall =~ ^[0-9]+$ ]] || usage
command -v gst-launch-1.0 >/dev/null ||
  { echo "gst_play: gst-launch-1.0 not found (scripts/setup.sh installs GStreamer)" >&2; exit 1; }

work=$(mktemp -d /tmp/gst_play.XXXXXX)
gst_pid= srv_pid=
cleanup() {
  [[ -n $gst_pid ]] && kill -KILL "$gst_pid" 2>/dev/null
  [[ -n $srv_pid ]] && kill "$srv_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the URI: local playlists are served over loopback HTTP ----------------------------------
local_playlist=
if [[ $target =~ ^https?:// ]]; then
  uri=$target
else
  path=${target#file://}
  [[ -f $path ]] || { echo "gst_play: no such file: $path" >&2; exit 1; }
  local_playlist=$(realpath "$path")
  root=$(realpath "${root:-$(dirname "$local_playlist")}")
  rel=$(realpath --relative-to="$root" "$local_playlist")
  [[ $rel != ../* ]] || { echo "gst_play: $path is not under --root $root" >&2; exit 1; }
  python3 -c '
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=sys.argv[1]))
with open(sys.argv[2] + ".tmp", "w") as f: f.write(str(srv.server_address[1]))
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
srv.serve_forever()' "$root" "$work/port" 2>"$work/http.err" &
  srv_pid=$!
  for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.05; done
  [[ -s $work/port ]] || { echo "gst_play: HTTP server did not start" >&2; cat "$work/http.err" >&2; exit 1; }
  uri="http://127.0.0.1:$(cat "$work/port")/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$rel")"
fi

# --- play ---------------------------------------------------------------------------------------
start=$(date +%s.%N)
gst-launch-1.0 playbin3 "uri=$uri" \
  "video-sink=checksumsink sync=false hash=md5" \
  "audio-sink=checksumsink sync=false hash=sha1" >"$work/out" 2>"$work/err" </dev/null &
gst_pid=$!
verdict=
count() { grep -acE '[0-9]+:[0-9]{2}:[0-9]{2}\.[0-9]{9} [0-9a-f]{32,40}' "$work/out"; }
last_n=-1 last_change=$SECONDS t0=$SECONDS
while kill -0 "$gst_pid" 2>/dev/null; do
  sleep 0.2
  n=$(count)
  if [[ $n != "$last_n" ]]; then last_n=$n last_change=$SECONDS; fi
  if (( SECONDS - t0 >= timeout_s )); then verdict=timeout; break; fi
  if (( SECONDS - last_change >= stall )); then verdict=stall; break; fi
done
if [[ -n $verdict ]]; then
  kill -KILL "$gst_pid" 2>/dev/null
  wait "$gst_pid" 2>/dev/null
  rc=137
else
  wait "$gst_pid"
  rc=$?
fi
gst_pid=
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')

# --- judge --------------------------------------------------------------------------------------
tr '\r' '\n' <"$work/out" >"$work/out.n"
grep -aoE '[0-9]+:[0-9]{2}:[0-9]{2}\.[0-9]{9} [0-9a-f]{32}\b' "$work/out.n" |
  awk '{ split($1, t, ":"); printf "%.9f %s\n", t[1] * 3600 + t[2] * 60 + t[3], $2 }' >"$work/video"
grep -aoE '[0-9]+:[0-9]{2}:[0-9]{2}\.[0-9]{9} [0-9a-f]{40}\b' "$work/out.n" >"$work/audio"
[[ -n $frames_out ]] && cp "$work/video" "$frames_out"
nv=$(wc -l <"$work/video")
na=$(wc -l <"$work/audio")
fail=()
echo "gst_play: $uri"
echo "frames decoded: $nv"
echo "audio buffers decoded: $na"

errors=$(cat "$work/out.n" "$work/err" | grep -aE -A2 '^ERROR|ERROR: ' || true)
warnings=$(cat "$work/out.n" "$work/err" | grep -aE -A2 '^WARNING|WARNING: ' || true)
if [[ -n $errors ]]; then fail+=("ERROR message"); echo "$errors"; fi
if [[ -n $warnings ]]; then
  echo "$warnings"
  [[ $strict == 1 ]] && fail+=("WARNING message (--strict)")
fi
case $verdict in
  timeout) echo "gst_play: TIMEOUT after ${timeout_s} s (killed)" ;;
  stall) fail+=("stalled: no new buffer for $stall s") ;;
  *)
    grep -aq 'Got EOS from element' "$work/out.n" || fail+=("no EOS")
    [[ $rc == 0 ]] || fail+=("gst-launch-1.0 exit $rc")
    ;;
esac
(( nv > 0 )) || fail+=("no video frame decoded")

if (( nv > 0 )); then
  # PTS steps: the median is the frame duration; a step over 1.5 of it is a hole.
  awk 'NR > 1 { print $1 - prev } { prev = $1 }' "$work/video" | sort -g >"$work/steps"
  med=$(awk '{ s[NR] = $1 } END { print (NR ? s[int((NR + 1) / 2)] : 0) }' "$work/steps")
  read -r first last dur holes back worst worst_at < <(awk -v med="$med" '
    NR > 1 { d = $1 - prev; if (d < 0) back++; if (d > 1.5 * med + 1e-6) { holes++; if (d > m) { m = d; w = prev } } }
    NR == 1 { first = $1 } { prev = $1 }
    END { printf "%.6f %.6f %.6f %d %d %.6f %.6f\n", first, prev, med, holes, back, m, w }' "$work/video")
  span=$(awk -v a="$first" -v b="$last" -v d="$dur" 'BEGIN { printf "%.3f", b + d - a }')
  echo "video: pts $first .. $last s, frame duration $dur s, span $span s"
  (( holes == 0 )) || fail+=("video has $holes hole(s) in its timeline, the largest $worst s after pts $worst_at s")
  (( back == 0 )) || fail+=("video pts went back $back time(s)")

  if [[ -n $local_playlist ]]; then
    # Playlist duration: the sum of EXTINF, of the first variant for a multivariant playlist.
    media=$local_playlist
    variant=$(awk '/^#EXT-X-STREAM-INF/ { getline; print; exit }' "$media" | tr -d '\r')
    if [[ -n $variant ]]; then media="$(dirname "$media")/$variant"; fi
    if [[ -f $media ]]; then
      pl=$(awk -F'[:,]' '/^#EXTINF:/ { s += $2 } END { printf "%.3f", s }' "$media")
      echo "playlist: $pl s (${media#"$root"/})"
      awk -v a="$span" -v b="$pl" -v t="$tol" 'BEGIN { exit !((a - b) > t || (b - a) > t) }' &&
        fail+=("decoded video spans $span s, the playlist $pl s (tolerance $tol s)")
    fi
  fi

  if [[ -n $ref ]]; then
    ffmpeg -nostdin -v error -i "$ref" -map 0:v:0 -f framemd5 - 2>"$work/ref.err" |
      awk -F', *' '!/^#/ { print $6 }' >"$work/ref"
    nr=$(wc -l <"$work/ref")
    if (( nr == 0 )); then
      fail+=("--ref $ref: ffmpeg decoded no frame: $(head -c 300 "$work/ref.err")")
    else
      cmp=$(awk 'NR == FNR { r[FNR] = $1; nr = FNR; next }
        { n++; if (!bad && $2 != r[n]) bad = n " (pts " $1 " s)" }
        END { if (!bad && n != nr) bad = "count"; print (bad ? bad : "ok") }' "$work/ref" "$work/video")
      if [[ $cmp == ok ]]; then
        echo "reference: all $nr frames identical to ffmpeg's decode of $ref"
      elif [[ $cmp == count ]]; then
        fail+=("--ref: $nv frames decoded, ffmpeg decodes $nr from $ref (those present are identical)")
      else
        fail+=("--ref: frame $cmp differs from ffmpeg's decode of $ref ($nv frames vs $nr)")
      fi
    fi
  fi
fi

if [[ $verdict == timeout ]]; then
  echo "gst_play: FAIL (timeout) in $elapsed s"
  exit 124
fi
if [[ ${#fail[@]} -gt 0 ]]; then
  if [[ -s $work/err ]] && [[ -z $errors ]]; then echo "--- gst-launch stderr:"; tail -n 20 "$work/err"; fi
  printf 'gst_play: FAIL: %s\n' "${fail[@]}"
  echo "gst_play: FAIL in $elapsed s"
  exit 1
fi
echo "gst_play: OK (EOS, no error) in $elapsed s"
