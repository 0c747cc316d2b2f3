#!/usr/bin/env bash
# A forged-token flood from one client against an edge with one worker thread, with the
# invalid-token budget off and on. On 127.0.0.1 only; it stops by itself.
#
#   bench/forged_flood.sh            (DURATION=10 seconds a run, RUNS=3 rounds)
#
# Every request carries a forged ES256 token: the header and claims of a valid token (known
# kid) with another token's signature, so each one costs a full signature check unless the
# budget refuses it. 10,000 different forged tokens in rotation (bench/rotate_tokens.lua).
#   off: limits.invalid_tokens_per_client: off, every request verified and answered 401;
#   on:  the default budget ({per_second: 20, burst: 100}): after the first 100, 429s.
# The edge (server.threads: 1) is pinned to core 0, wrk and the origins to core 1. The two
# cases take turns, round by round. Prints per run: answers per second, how they split by
# status, the edge's CPU use, and answers per CPU-second of the edge (rejections per second
# per core).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
COUNT=${COUNT:-10000}
CONNECTIONS=${CONNECTIONS:-64}
ISSUER=https://auth.bench
AUDIENCE=streaming-edge

LOG_TAG=forged_flood
# shellcheck source=../scripts/lib.sh
source scripts/lib.sh

[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a whole number"
apt_wanted wrk:wrk curl:curl taskset:util-linux python3:python3

log "building (release)"
nice cargo build --release --locked --bins --examples >&2

if [ "$(nproc)" -ge 2 ]; then
  EDGE_PIN=(taskset -c 0); LOAD_PIN=(taskset -c 1); placement="edge on core 0; wrk and origins on core 1"
else
  EDGE_PIN=(); LOAD_PIN=(); placement="one core: nothing pinned"
fi

bench_workdir # $work, $pids, cleanup at exit
cp target/release/epochgate target/release/examples/bench_origins "$work/"

AUTH_PORT=$(free_port); UPSTREAM_PORT=$(free_port)
"${LOAD_PIN[@]}" "$work/bench_origins" --auth-port "$AUTH_PORT" --upstream-port "$UPSTREAM_PORT" \
  --tokens "$work/valid.tokens" --count "$COUNT" --issuer "$ISSUER" --audience "$AUDIENCE" \
  >"$work/origins.out" 2>&1 & pids+=($!)
for _ in $(seq 600); do grep -qx ready "$work/origins.out" 2>/dev/null && break; sleep 0.1; done
grep -qx ready "$work/origins.out" || die "bench_origins did not start: $(cat "$work/origins.out")"

# Token i keeps its header and claims and takes token i+1's signature.
awk -F. '{ head[NR] = $1 "." $2; sig[NR] = $3 }
  END { for (i = 1; i <= NR; i++) print head[i] "." sig[i % NR + 1] }' \
  "$work/valid.tokens" >"$work/forged.tokens"

# Starts an edge with the given `limits:` value; sets EDGE_PID and EDGE_PORT.
start_edge() { # budget
  EDGE_PORT=$(free_port); local admin; admin=$(free_port)
  bench_edge_yaml edge "$EDGE_PORT" "$admin" "$AUTH_PORT" "$UPSTREAM_PORT" ES256 \
    "limits: { invalid_tokens_per_client: $1 }" >"$work/edge.yaml"
  RUST_LOG=warn "${EDGE_PIN[@]}" "$work/epochgate" -c "$work/edge.yaml" >"$work/edge.log" 2>&1 &
  EDGE_PID=$!; pids+=("$EDGE_PID")
  wait_http "http://127.0.0.1:$admin/readyz"
}
stop_edge() { kill "$EDGE_PID" 2>/dev/null || true; wait "$EDGE_PID" 2>/dev/null || true; }
cpu_ticks() { sed 's/^.*) //' "/proc/$EDGE_PID/stat" | awk '{print $12 + $13}'; }

declare -A budget=([off]=off [on]="{ per_second: 20, burst: 100 }")
results="$work/results"
for round in $(seq 1 "$RUNS"); do
  for mode in off on; do
    start_edge "${budget[$mode]}"
    ticks=$(cpu_ticks); start_ns=$(date +%s%N)
    "${LOAD_PIN[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s bench/rotate_tokens.lua \
      "http://127.0.0.1:$EDGE_PORT/live/seg1.ts" -- "$work/forged.tokens" >"$work/wrk.out" 2>&1 \
      || die "wrk failed: $(cat "$work/wrk.out")"
    cpu_s=$(awk -v t=$(( $(cpu_ticks) - ticks )) -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz}')
    wall_s=$(awk -v ns=$(( $(date +%s%N) - start_ns )) 'BEGIN {print ns / 1e9}')
    stop_edge
    requests=$(grep -o 'requests=[0-9]*' "$work/wrk.out" | cut -d= -f2)
    duration_us=$(grep -o 'duration_us=[0-9]*' "$work/wrk.out" | cut -d= -f2)
    s401=$(awk '/HTTP 401:/ {print $3}' "$work/wrk.out"); s429=$(awk '/HTTP 429:/ {print $3}' "$work/wrk.out")
    awk -v round="$round" -v mode="$mode" -v r="$requests" -v d="$duration_us" -v a="${s401:-0}" \
      -v b="${s429:-0}" -v cpu="$cpu_s" -v wall="$wall_s" 'BEGIN {
        printf "%d %s %.0f %d %d %.0f %.0f\n", round, mode, r / (d / 1e6), a, b,
          100 * cpu / wall, r / cpu }' >>"$results"
    tail -1 "$results" | awk '{ printf "round %d, budget %-3s: %s answers/s (401: %s, 429: %s), edge CPU %s %%, %s answers per CPU-second\n", $1, $2, $3, $4, $5, $6, $7 }' >&2
  done
done

echo "=== forged-token flood ($(git rev-parse --short HEAD 2>/dev/null || echo '?'); $placement; wrk -t1 -c$CONNECTIONS -d${DURATION}s; $RUNS rounds) ==="
# "median (min-max)" of the numbers on stdin.
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%d (%d-%d)", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
printf '%-8s %-24s %-24s %s\n' budget "answers/s" "answers per CPU-second" "edge CPU %"
for mode in off on; do
  column() { awk -v m="$mode" -v c="$1" '$2 == m { print $c }' "$results" | median; }
  printf '%-8s %-24s %-24s %s\n' "$mode" "$(column 3)" "$(column 7)" "$(column 6)"
done
