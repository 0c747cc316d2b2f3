#!/usr/bin/env bash
# Runs the `token_path` fuzz target for a bounded time on the stable toolchain.
#
#   fuzz/run.sh [SECONDS]        (default 120)
#
# `cargo fuzz` with `-s none` (no sanitizer) needs no nightly flags: the coverage
# instrumentation (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*) and
# `--cfg fuzzing` are stable rustc options. Debug assertions stay on, so integer
# overflow panics too. The committed seeds (fuzz/seeds/) are copied into a scratch corpus
# (fuzz/corpus/, git-ignored, minimized after a clean run); crashes land in
# fuzz/artifacts/token_path/.
set -euo pipefail

secs="${1:-120}"
target=token_path
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
corpus="$here/corpus/$target"
artifacts="$here/artifacts/$target"
log="$here/artifacts/$target-run.log"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    nice -n 10 cargo install cargo-fuzz --locked
fi

mkdir -p "$corpus" "$artifacts"
cp "$here/seeds/$target/"* "$corpus/"

cd "$root"
# Built first so the time limit is all fuzzing.
nice -n 10 cargo fuzz build -s none "$target"

start=$(date +%s)
set +e
# -max_len: room for a token over the 8192-byte limit plus the other two sources.
nice -n 10 cargo fuzz run -s none "$target" "$corpus" -- \
    -max_total_time="$secs" -max_len=12288 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
status=$?
set -e
elapsed=$(( $(date +%s) - start ))

tail -n 25 "$log"
before=$(find "$corpus" -type f | wc -l)
if [ "$status" -eq 0 ]; then
    # libFuzzer keeps every superseded input on disk: keep the corpus to what adds coverage.
    nice -n 10 cargo fuzz cmin -s none "$target" "$corpus" -- -max_len=12288 >>"$log" 2>&1
fi
echo "----"
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
fuzzed=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
echo "target:      $target"
echo "exit status: $status"
echo "run time:    ${fuzzed:-?}s fuzzing (limit ${secs}s), ${elapsed}s wall clock"
echo "executions:  ${execs:-unknown (see $log)}"
echo "corpus:      $(find "$corpus" -type f | wc -l) files in $corpus ($before before cmin)"
crashes=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'slow-unit-*' \) | sort)
if [ -n "$crashes" ]; then
    echo "findings:"
    echo "$crashes"
else
    echo "findings:    none"
fi
echo "full log:    $log"
exit "$status"
