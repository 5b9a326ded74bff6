#!/usr/bin/env bash
# Builds the libFuzzer target (clang, ASan+UBSan) and fuzzes the record decoder,
# reassembly and packager engine for a bounded time from the committed corpus.
#   bash scripts/fuzz.sh            # 60 s
#   KHLS_FUZZ_SECONDS=600 bash scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${KHLS_FUZZ_BUILD_DIR:-build-fuzz}
SECONDS_TO_RUN=${KHLS_FUZZ_SECONDS:-60}
command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing (scripts/setup.sh installs it)" >&2; exit 1; }

CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKHLS_FUZZ=ON >/dev/null
cmake --build "$BUILD" --target record_fuzz

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp tests/fuzz/corpus/* "$WORK/"
echo "fuzz: record_fuzz for ${SECONDS_TO_RUN} s from $(ls tests/fuzz/corpus | wc -l) seeds" >&2
# New inputs go to the scratch copy; crashes are written as crash-* in the current directory.
rc=0
"$BUILD/tests/record_fuzz" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048 \
  -print_final_stats=1 "$WORK" >"$WORK.log" 2>&1 || rc=$?
grep -E "^(Done|==[0-9]+==ERROR|SUMMARY|stat::number_of_executed_units|#[0-9]+ +DONE)" "$WORK.log" >&2 || true
if [ "$rc" -ne 0 ]; then
  tail -40 "$WORK.log" >&2
  echo "fuzz: FAILED (exit $rc)" >&2
fi
rm -f "$WORK.log"
exit "$rc"
