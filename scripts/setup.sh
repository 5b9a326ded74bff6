#!/usr/bin/env bash
# Installs everything kafka-hls needs to build and test on Debian bookworm (run as
# root), fetches the Kafka broker jars, and builds Release into build/.
# Idempotent: a second run installs nothing and goes straight to the (incremental) build.
#
#   KHLS_SKIP_BUILD=1        install and fetch only
#   KHLS_BUILD_DIR=DIR       build tree (default build)
#   KHLS_CMAKE_ARGS="..."    extra CMake arguments, e.g. -DKHLS_SANITIZE=ON
#   KHLS_CACHE=DIR           downloads outside the repo (default ~/.cache/kafka-hls):
#                            Kafka jars, node/node_modules/playwright-core
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD=${KHLS_BUILD_DIR:-build}
CACHE=${KHLS_CACHE:-$HOME/.cache/kafka-hls}
NODE_DIR=$CACHE/node
say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }
mkdir -p "$CACHE"

# --- Debian packages -----------------------------------------------------------
PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config git
  ffmpeg libavformat-dev libavcodec-dev libavutil-dev
  librdkafka-dev libfmt-dev libyaml-cpp-dev doctest-dev libcli11-dev nlohmann-json3-dev
  libssl-dev libxxhash-dev libcpp-httplib-dev libboost-dev
  # fuzzing / sanitizers
  clang libclang-rt-14-dev
  # tests: broker (Java + Maven for the jars), kcat, /usr/bin/time, player tests (Chromium + Node)
  kcat time chromium openjdk-17-jre-headless maven nodejs npm ca-certificates python3
  # tests/player/gst_play.sh: playbin3 (base), hlsdemux2 + qtdemux + souphttpsrc (good),
  # tsdemux + checksumsink (bad), avdec_h264/h265/aac (libav), gst-launch-1.0 (tools)
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-libav
  # objstore (S3 client): libcurl; scripts/s3proxy.sh: curl (its readiness check), Java + Maven as above
  libcurl4-openssl-dev curl
  # encryption tests: the openssl command decrypts what the packager encrypted (an independent AES)
  openssl
)

# Installed = "ii" in dpkg (one dpkg-query for all); node and npm also count when they
# come from elsewhere (e.g. NodeSource's nodejs, which conflicts with Debian's npm).
declare -A status=()
while read -r pkg st; do status[$pkg]=$st; done < <(
  dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for p in "${PACKAGES[@]}"; do
  [ "${status[$p]:-}" = ii ] && continue
  [ "$p" = nodejs ] && command -v node >/dev/null && continue
  [ "$p" = npm ] && command -v npm >/dev/null && continue
  missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "not root; install these packages first: ${missing[*]}"
    SUDO=(sudo -n)
  fi
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  aptlog=$CACHE/apt.log
  if ! { "${SUDO[@]}" apt-get update -q && \
         "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } </dev/null >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog" >&2
    die "apt-get failed (log: $aptlog)"
  fi
else
  say "Debian packages: all ${#PACKAGES[@]} installed"
fi

# --- playwright-core (player tests drive the system Chromium with it), hls.js, shaka-player, hls-parser
# (the origin's page embeds hls.min.js at build time, so it is installed before the build;
# tests/player/shaka.mjs injects shaka-player's compiled build; hls-parser checks playlists)
if [ -f "$NODE_DIR/node_modules/playwright-core/package.json" ] && [ -f "$NODE_DIR/node_modules/hls.js/dist/hls.min.js" ] &&
   [ -f "$NODE_DIR/node_modules/shaka-player/dist/shaka-player.compiled.js" ] &&
   [ -f "$NODE_DIR/node_modules/hls-parser/package.json" ]; then
  say "playwright-core, hls.js, shaka-player and hls-parser: present in $NODE_DIR/node_modules"
else
  # playwright-core >= 1.62 needs Node 20; bookworm's nodejs is 18
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  pw=${KHLS_PLAYWRIGHT_VERSION:-$([ "$node_major" -ge 20 ] && echo 1 || echo 1.61)}
  say "installing playwright-core@$pw, hls.js@1, shaka-player@5 and hls-parser@0 into $NODE_DIR/node_modules"
  mkdir -p "$NODE_DIR"
  if ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$NODE_DIR" --no-audit --no-fund \
        --loglevel=error "playwright-core@$pw" "hls.js@1" "shaka-player@5" "hls-parser@0" </dev/null >"$CACHE/npm.log" 2>&1; then
    tail -n 30 "$CACHE/npm.log" >&2
    die "npm install playwright-core hls.js shaka-player hls-parser failed (log: $CACHE/npm.log)"
  fi
fi

# --- Kafka broker jars (Maven Central) ----------------------------------------------
bash scripts/kafka.sh fetch
# --- S3Proxy jar (Maven Central): the local S3 server of tests/s3_test.cc -----------
bash scripts/s3proxy.sh fetch

# --- build ----------------------------------------------------------------------------
if [ "${KHLS_SKIP_BUILD:-0}" = 1 ]; then
  say "KHLS_SKIP_BUILD=1: not building"
  exit 0
fi
read -r -a extra <<<"${KHLS_CMAKE_ARGS:-}"
gen=()
# an existing tree keeps its generator (CMake refuses to switch)
[ -f "$BUILD/CMakeCache.txt" ] || gen=(-G Ninja)
say "configuring $BUILD (Release${KHLS_CMAKE_ARGS:+, $KHLS_CMAKE_ARGS})"
cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null </dev/null
say "building $BUILD"
cmake --build "$BUILD" </dev/null
say "built $BUILD"
