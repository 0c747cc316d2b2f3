#!/usr/bin/env bash
# Instructions and (CACHE_SIM=1) cache misses per request under callgrind: epochgate vs Pingora.
# What the gate costs per request, in CPU instructions: the same Pingora passthrough and
# epochgate (ES256, cache warm) each run under valgrind's callgrind, which counts the
# instructions the proxy process executes (user space; the kernel's share is the same for
# both). Unlike requests per second, the counts repeat from run to run whatever else the
# machine is doing, so this is the figure to watch when changing the hot path.
#
#   bench/instructions.sh
#
# On 127.0.0.1 only; stops by itself. For each proxy: start it under callgrind, send every
# token once (warm-up: the verified-token and epoch caches fill), zero the counters, run wrk
# for MEASURE_SECONDS, dump the counters and divide by the requests wrk completed. Prints
# instructions per request, the ratio epochgate / passthrough, and the instructions spent in
# epochgate's own hooks. Environment: COUNT (1000 tokens; the warm-up repeats 20 s loads
# until every token was sent once, which takes about a minute per proxy for 10000 at
# callgrind's speed), MEASURE_SECONDS (15), KEEP_DUMPS (a directory to copy the callgrind
# dumps to, for callgrind_annotate), CACHE_SIM=1 (also simulate the caches and print the
# misses per request: first-level instruction and data misses, last-level data misses; what
# a bigger code path and lookups spread over many tokens and accounts cost, which
# instruction counts do not show), LL (the simulated last level, see below), EPOCHGATE_BIN
# (the edge binary to measure, default this tree's release build).
# One difference from native runs: valgrind's CPU has no SHA extensions, so the SHA-256 that
# keys the verified-token cache runs aws-lc's AVX code under callgrind (about 12,700
# instructions per request for the ES256 bench tokens, inside `request_filter`), while
# natively it runs the SHA-NI code (`sha256_block_data_order_hw` in a perf profile).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-1000}
MEASURE_SECONDS=${MEASURE_SECONDS:-15}
# Another build of the edge to measure (an older commit's, say); the passthrough is this tree's.
EPOCHGATE_BIN=${EPOCHGATE_BIN:-target/release/epochgate}
# The simulated last-level cache: one core's own L2 on this machine, 1 MiB 8-way (the L3 is shared
# with whatever else runs on the host). Size, associativity, line size.
LL=${LL:-1048576,8,64}
ISSUER=https://auth.bench
AUDIENCE=streaming-edge

LOG_TAG=instructions
# shellcheck source=../scripts/lib.sh
. scripts/lib.sh # log, apt_wanted, die, free_port, wait_http, bench_workdir, start_static_upstream, bench_edge_yaml

apt_wanted valgrind:valgrind wrk:wrk nginx:nginx curl:curl
log "building (release)"
nice cargo build --release --locked --bins --examples >&2

bench_workdir # $work, $pids, cleanup at exit
start_static_upstream

AUTH=$(free_port)
target/release/examples/bench_origins --auth-port "$AUTH" --upstream-port "$(free_port)" \
  --tokens "$work/tokens" --count "$COUNT" --issuer "$ISSUER" --audience "$AUDIENCE" \
  > "$work/origin.out" 2>&1 & pids+=($!)
for _ in $(seq 1 600); do grep -q ready "$work/origin.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$work/origin.out" || die "the origins did not start: $(cat "$work/origin.out")"

load() { # port seconds out [first token]
  TOKENS_START=${4:-0} wrk -t1 -c16 -d"$2s" -s bench/rotate_tokens.lua "http://127.0.0.1:$1/live/seg1.ts" \
    -- "$work/tokens" > "$3" 2>&1 || die "wrk failed: $(cat "$3")"
  grep -q "Non-2xx" "$3" && die "non-2xx answers: $(cat "$3")"
  return 0
}

declare -A IR_PER_REQUEST MISSES_PER_REQUEST
measure() { # name port command...
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind ${CACHE_SIM:+--cache-sim=yes --LL=$LL} --callgrind-out-file="$work/$name.%p.out" "$@" \
    > "$work/$name.log" 2>&1 & pids+=($!)
  local pid=$!
  wait_ready "$port"
  log "$name: warm-up (every token once at callgrind's speed)"
  # wrk's one thread hands out the tokens in turn, each run from where the last one stopped
  # (at callgrind's speed a run sends fewer than 10,000): COUNT requests have sent each once.
  local sent=0
  while [ "$sent" -lt "$COUNT" ]; do
    load "$port" 20 "$work/$name.warm" "$sent"
    sent=$((sent + $(awk '/requests in/ { print $1 }' "$work/$name.warm")))
  done
  callgrind_control -z "$pid" > /dev/null 2>&1
  load "$port" "$MEASURE_SECONDS" "$work/$name.wrk"
  callgrind_control -d "$pid" > /dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true; unset 'pids[-1]'
  local requests dump total
  requests=$(awk '/requests in/ { print $1 }' "$work/$name.wrk")
  # The dump made on request (callgrind_control -d) is the one with a ".1" suffix.
  dump=$(ls "$work/$name".*.out.1)
  callgrind_annotate "$dump" > "$work/$name.totals" 2>/dev/null
  total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$work/$name.totals")
  IR_PER_REQUEST[$name]=$((total / requests))
  if [ -n "${CACHE_SIM:-}" ]; then
    # Read and write misses together, per level, from the totals under the "Events" line.
    MISSES_PER_REQUEST[$name]=$(awk -v n="$requests" '
      /^Events shown:/ { for (i = 3; i <= NF; i++) col[$i] = i - 2 }
      /PROGRAM TOTALS/ { gsub(/\([^)]*\)/, ""); gsub(",", "")
        printf "%.0f %.0f %.1f", ($col["I1mr"]) / n, ($col["D1mr"] + $col["D1mw"]) / n,
          ($col["DLmr"] + $col["DLmw"]) / n }' "$work/$name.totals")
  fi
  [ -n "${KEEP_DUMPS:-}" ] && cp "$dump" "$KEEP_DUMPS/$name.callgrind" && echo "$requests" > "$KEEP_DUMPS/$name.requests"
  log "$name: $requests requests, $total instructions, ${IR_PER_REQUEST[$name]} per request"
  if [ "$name" = epochgate ]; then
    printf '\nepochgate hooks, instructions per request (inclusive):\n'
    # A function inlined into others is listed once per source file it has lines from, with
    # or without its object file: each hook's count is the largest of its lines.
    callgrind_annotate --auto=no --inclusive=yes "$dump" 2>/dev/null \
      | grep -E 'EpochGateProxy as pingora_proxy::proxy_trait::ProxyHttp>::(request_filter|upstream_request_filter)|epochgate::gate::Gate::(check|decide)|epochgate::verify::Verifier::remembered|epochgate::epoch_cache::EpochCache::lookup|pingora_http::RequestHeader::insert_header' \
      | awk -v n="$requests" '{ ir = $1; gsub(",", "", ir); name = $0; sub(/ \[.*/, "", name)
          # Up to the last "file.rs:": with CACHE_SIM the line has a column per cache event.
          sub(/^.*\.rs:/, "", name); if (ir + 0 > most[name]) most[name] = ir + 0 }
        END { for (name in most) printf "  %7.0f  %s\n", most[name] / n, name }' \
      | sort -rn
  fi
}
wait_ready() { # port: the proxy answers a valid token with 200
  local token; token=$(head -1 "$work/tokens")
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$1/")" = 200 ] && return 0
    sleep 0.2
  done
  die "nothing answers on port $1"
}

PASS=$(free_port)
measure passthrough "$PASS" target/release/examples/passthrough "127.0.0.1:$PASS" "127.0.0.1:$UPSTREAM" 1

EDGE=$(free_port)
EDGE_ORIGIN_EXTRA="timeout: 1s" bench_edge_yaml edge "$EDGE" "$(free_port)" "$AUTH" "$UPSTREAM" ES256 \
  "cache: { refresh_after: 30m, max_stale: 60m }" > "$work/edge.yaml"
RUST_LOG=warn measure epochgate "$EDGE" "$EPOCHGATE_BIN" -c "$work/edge.yaml"

awk -v g="${IR_PER_REQUEST[epochgate]}" -v p="${IR_PER_REQUEST[passthrough]}" 'BEGIN {
  printf "\npassthrough: %d instructions/request\nepochgate:   %d instructions/request\n", p, g
  printf "epochgate / passthrough: %.3f  (gate cost %.1f%% of the proxy'"'"'s instructions)\n", g / p, (g / p - 1) * 100 }'
if [ -n "${CACHE_SIM:-}" ]; then
  printf '\ncache misses per request, simulated (L1 32 KiB each; last level %s):\n' "$LL"
  printf '%-12s %10s %10s %12s\n' "" "L1 instr" "L1 data" "last level"
  for name in passthrough epochgate; do
    read -r i1 d1 dl <<<"${MISSES_PER_REQUEST[$name]}"
    printf '%-12s %10s %10s %12s\n' "$name:" "$i1" "$d1" "$dl"
  done
fi
