#!/usr/bin/env bash
# Requests/s, latency, CPU per request (wrk): epochgate vs bare Pingora and nginx auth_request.
# What the gate costs, against what an operator would run instead. On 127.0.0.1 only; it
# stops by itself.
#
#   bench/compare.sh                 (DURATION=15 seconds a run, RUNS=3 rounds)
#
# Each against the same upstream (nginx `return 200`, one worker) and the same wrk load
# (bench/rotate_tokens.lua: 10,000 valid tokens for 10,000 accounts):
#   1. the upstream directly;
#   2. Pingora proxying without any gate (examples/passthrough.rs): the floor;
#   3. epochgate, ES256 tokens, caches warm;
#   4. epochgate, RS256 tokens, caches warm;
#   4b. epochgate, ES256 tokens, with the access log on (every request, to a file);
#   5. nginx with auth_request to the reference auth origin's /v1/check, the answer cached
#      per token for 10 s (bench/nginx-auth-request.conf);
#   6. Pingora without a gate terminating TLS (HTTP/2 offered through ALPN; wrk speaks
#      HTTP/1.1 over TLS on its keep-alive connections);
#   7. epochgate, ES256 tokens, terminating TLS with the same certificate and settings;
#   8. epochgate, ES256 tokens, in fleet-replica mode (records from a bucket on a local
#      nats-server, none for these accounts) instead of the epoch cache.
# The proxy under test (cases 2-5: one worker thread / process) is pinned to core 0; wrk, the
# upstream and the auth origin to core 1. All proxies run from the start; the cases take
# turns, one run each per round, so a change in the machine's speed during the benchmark
# (seen here: the passthrough from 30,293 to 19,288 req/s within two minutes) hits every
# case alike instead of one case's runs.
# Prints req/s, p50 and p99 per run and case, the proxy's CPU time per request (user and
# kernel), and the ratios epochgate/passthrough (plain and TLS) and epochgate/nginx: each the
# median of the per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
RUNS=${RUNS:-3}
COUNT=${COUNT:-10000}
CONNECTIONS=${CONNECTIONS:-64}
ISSUER=https://auth.bench
AUDIENCE=streaming-edge

LOG_TAG=compare
# shellcheck source=../scripts/lib.sh
source scripts/lib.sh

apt_wanted wrk:wrk nginx:nginx curl:curl taskset:util-linux openssl:openssl nats-server:nats-server
nginx -V 2>&1 | grep -q http_auth_request_module || die "this nginx lacks the auth_request module"

if [ "$(nproc)" -ge 2 ]; then
  PROXY_PIN=(taskset -c 0); LOAD_PIN=(taskset -c 1); placement="proxy on core 0; wrk, upstream and auth origin on core 1"
else
  PROXY_PIN=(); LOAD_PIN=(); placement="one core: no pinning"
fi

log "building (release)"
nice cargo build --release --locked --bins --examples >&2

bench_workdir # $work (nginx keeps its auth cache in there), $pids, cleanup at exit
start_static_upstream "${LOAD_PIN[@]}"

# --- auth origins: ES256 and RS256, each writing COUNT tokens ---------------------------
openssl genrsa -traditional -out "$work/rsa.pem" 2048 2>/dev/null
# Starts an origin in the background (no command substitution: its pid must reach `pids`);
# sets ORIGIN_PORT.
start_origin() { # name extra-args...
  local name=$1; shift
  local port; port=$(free_port)
  "${LOAD_PIN[@]}" target/release/examples/bench_origins --auth-port "$port" --upstream-port "$(free_port)" \
    --tokens "$work/$name.tokens" --count "$COUNT" --issuer "$ISSUER" --audience "$AUDIENCE" "$@" \
    > "$work/$name.origin.out" 2>&1 & pids+=($!)
  for _ in $(seq 1 600); do grep -q ready "$work/$name.origin.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$work/$name.origin.out" || die "origin $name did not start: $(cat "$work/$name.origin.out")"
  ORIGIN_PORT=$port
}
start_origin es256; AUTH_ES=$ORIGIN_PORT
start_origin rs256 --rsa-key "$work/rsa.pem"; AUTH_RS=$ORIGIN_PORT

# --- wrk ----------------------------------------------------------------------------------
# One wrk thread on its own core, 64 keep-alive connections: more than one proxy worker serves.
run_wrk() { # url tokens seconds out
  "${LOAD_PIN[@]}" wrk -t1 -c"$CONNECTIONS" -d"$3s" --latency -s bench/rotate_tokens.lua "$1" -- "$2" > "$4" 2>&1 \
    || die "wrk failed: $(cat "$4")"
}
# "req/s p50 p99 failures" from the summary line bench/rotate_tokens.lua prints.
summarize() {
  awk '/^soak:/ {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      printf "%.0f %.2fms %.2fms %d\n", f["requests"] / (f["duration_us"] / 1e6),
        f["p50_us"] / 1000, f["p99_us"] / 1000, f["non2xx"] + f["socket_errors"] }' "$1"
}

# "user system" CPU clock ticks of a process and its children (nginx's workers), all threads.
cpu_ticks() { # pid
  local pid total_user=0 total_sys=0
  for pid in "$1" $(pgrep -P "$1" || true); do
    read -r user sys < <(awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$pid/stat" 2>/dev/null || echo "0 0")
    total_user=$((total_user + user)); total_sys=$((total_sys + sys))
  done
  echo "$total_user $total_sys"
}

declare -A RESULTS CPU
warm_up() { # url tokens
  run_wrk "$1" "$2" 5 "$work/warm.out"
}
measure() { # case-name run url tokens [proxy-pid: also report its CPU time per request]
  local name=$1 run=$2 url=$3 tokens=$4 pid=${5:-} before="" cpu=""
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  run_wrk "$url" "$tokens" "$DURATION" "$work/$name.$run.out"
  read -r rps p50 p99 bad < <(summarize "$work/$name.$run.out")
  [ "$bad" = "0" ] || die "$name run $run: $bad failed requests: $(grep -E 'HTTP|^soak:' "$work/$name.$run.out" | head -4)"
  if [ -n "$pid" ]; then
    # CPU microseconds per request, user and kernel, from the clock ticks the run took.
    cpu=$(awk -v b="$before" -v a="$(cpu_ticks "$pid")" -v rps="$rps" -v d="$DURATION" -v hz="$(getconf CLK_TCK)" 'BEGIN {
      split(b, x, " "); split(a, y, " "); n = rps * d
      printf "%.1f/%.1f", (y[1] - x[1]) / hz * 1e6 / n, (y[2] - x[2]) / hz * 1e6 / n }')
    CPU[$name]+="$cpu "
  fi
  log "$name run $run: $rps req/s, p50 $p50, p99 $p99${cpu:+, proxy CPU per request ${cpu/\// us user, } us kernel}"
  RESULTS[$name]+="$rps/$p50/$p99 "
}

# Starts an edge in the background; sets EDGE and EDGE_PID.
start_edge() { # name auth-port algorithm [extra-yaml] [tls]
  local admin tls=""; EDGE=$(free_port); admin=$(free_port)
  [ -n "${5:-}" ] && tls="tls: { cert_file: \"$work/tls.pem\", key_file: \"$work/tls.key\" }"
  EDGE_PROXY_EXTRA=$tls EDGE_ORIGIN_EXTRA="timeout: 1s" bench_edge_yaml "$1" "$EDGE" "$admin" "$2" "$UPSTREAM" "$3" \
    "cache: { refresh_after: 30s, max_stale: 10m }" "${4:-}" > "$work/$1.yaml"
  RUST_LOG=warn "${PROXY_PIN[@]}" target/release/epochgate -c "$work/$1.yaml" > "$work/$1.log" 2>&1 & pids+=($!)
  EDGE_PID=$!
  wait_http "http://127.0.0.1:$admin/readyz"
}

log "machine: $(nproc) cores, $placement; wrk -t1 -c$CONNECTIONS, ${DURATION}s x $RUNS rounds"

# 2. Pingora without a gate
PASS=$(free_port)
"${PROXY_PIN[@]}" target/release/examples/passthrough "127.0.0.1:$PASS" "127.0.0.1:$UPSTREAM" 1 > "$work/pass.log" 2>&1 & pids+=($!)
PASS_PID=$!
wait_http "http://127.0.0.1:$PASS/"

# 3. and 4. epochgate
start_edge edge-es256 "$AUTH_ES" ES256; ES=$EDGE; ES_PID=$EDGE_PID
start_edge edge-rs256 "$AUTH_RS" RS256; RS=$EDGE; RS_PID=$EDGE_PID
start_edge edge-es256-log "$AUTH_ES" ES256 "access_log: { enabled: true, path: $work/access.log }"
LOG=$EDGE; LOG_PID=$EDGE_PID

# 6. and 7. the same certificate (ECDSA P-256, as a CDN edge would usually present) for both
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null
PASS_TLS=$(free_port)
"${PROXY_PIN[@]}" target/release/examples/passthrough "127.0.0.1:$PASS_TLS" "127.0.0.1:$UPSTREAM" 1 \
  "$work/tls.pem" "$work/tls.key" > "$work/pass-tls.log" 2>&1 & pids+=($!)
PASS_TLS_PID=$!
wait_http "https://127.0.0.1:$PASS_TLS/" 200 --cacert "$work/tls.pem"
start_edge edge-es256-tls "$AUTH_ES" ES256 "" tls; ES_TLS=$EDGE; ES_TLS_PID=$EDGE_PID

# 8. fleet replica: a nats-server, the bucket created by the reference origin (--nats)
NATS=$(free_port)
"${LOAD_PIN[@]}" nats-server -a 127.0.0.1 -p "$NATS" -js -sd "$work/nats" > "$work/nats.log" 2>&1 & pids+=($!)
BUCKET_MAKER=$(free_port)
"${LOAD_PIN[@]}" target/release/epochgate reference-origin --listen "127.0.0.1:$BUCKET_MAKER" \
  --nats "nats://127.0.0.1:$NATS" > "$work/bucket-maker.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$BUCKET_MAKER/.well-known/jwks.json"
EDGE_TOKEN_EXTRA="max_lifetime: 30d" start_edge edge-es256-replica "$AUTH_ES" ES256 \
  "replica: { nats: { servers: [\"nats://127.0.0.1:$NATS\"] } }"
REPLICA=$EDGE; REPLICA_PID=$EDGE_PID

# 5. nginx + auth_request
NGX=$(free_port)
sed -e "s#@WORK@#$work#g" -e "s#@PORT@#$NGX#g" -e "s#@UPSTREAM@#$UPSTREAM#g" -e "s#@AUTH@#$AUTH_ES#g" \
  bench/nginx-auth-request.conf > "$work/nginx-auth.conf"
"${PROXY_PIN[@]}" nginx -c "$work/nginx-auth.conf" -p "$work" & pids+=($!)
NGX_PID=$!
wait_http "http://127.0.0.1:$NGX/" 401

# name url tokens proxy-pid (none for the upstream itself)
CASES=(
  "upstream http://127.0.0.1:$UPSTREAM/live/seg1.ts $work/es256.tokens"
  "passthrough http://127.0.0.1:$PASS/live/seg1.ts $work/es256.tokens $PASS_PID"
  "epochgate_es256 http://127.0.0.1:$ES/live/seg1.ts $work/es256.tokens $ES_PID"
  "epochgate_rs256 http://127.0.0.1:$RS/live/seg1.ts $work/rs256.tokens $RS_PID"
  "epochgate_es256_log http://127.0.0.1:$LOG/live/seg1.ts $work/es256.tokens $LOG_PID"
  "nginx_auth_request http://127.0.0.1:$NGX/live/seg1.ts $work/es256.tokens $NGX_PID"
  "passthrough_tls https://127.0.0.1:$PASS_TLS/live/seg1.ts $work/es256.tokens $PASS_TLS_PID"
  "epochgate_es256_tls https://127.0.0.1:$ES_TLS/live/seg1.ts $work/es256.tokens $ES_TLS_PID"
  "epochgate_es256_replica http://127.0.0.1:$REPLICA/live/seg1.ts $work/es256.tokens $REPLICA_PID"
)
for run in $(seq 1 "$RUNS"); do
  for case in "${CASES[@]}"; do
    read -r name url tokens pid <<<"$case"
    # Right before each run: nginx's auth answers expire after 10 s, and every case should
    # start its run in the same state (caches warm).
    warm_up "$url" "$tokens"
    measure "$name" "$run" "$url" "$tokens" "$pid"
  done
done

# --- report -------------------------------------------------------------------------------
rps_per_run() { tr ' ' '\n' <<<"${RESULTS[$1]}" | grep -v '^$' | cut -d/ -f1; } # case
# The median of the numbers on stdin; with --list, followed by all of them, sorted.
median() {
  sort -g | awk -v list="${1:-}" '{ v[NR] = $1; all = all sprintf(" %.3f", $1) } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    if (list) printf "%.3f  (per round, sorted:%s)\n", m, all; else print m }'
}
median_rps() { rps_per_run "$1" | median; } # case
printf '\n%-22s %-40s %12s\n' case "runs (req/s / p50 / p99)" "median req/s"
for name in upstream passthrough epochgate_es256 epochgate_rs256 epochgate_es256_log nginx_auth_request passthrough_tls epochgate_es256_tls epochgate_es256_replica; do
  printf '%-22s %-40s %12s\n' "$name" "${RESULTS[$name]}" "$(median_rps "$name")"
done
printf '\nproxy CPU per request, microseconds user/kernel, per run:\n'
for name in passthrough epochgate_es256 epochgate_rs256 epochgate_es256_log nginx_auth_request passthrough_tls epochgate_es256_tls epochgate_es256_replica; do
  printf '%-22s %s\n' "$name" "${CPU[$name]}"
done
# Ratios per round (the cases of one round ran minutes apart at most), then their median.
median_ratio() { # numerator-case denominator-case
  paste -d' ' <(rps_per_run "$1") <(rps_per_run "$2") | awk '{ print $1 / $2 }' | median --list
}
printf '\nepochgate ES256 / passthrough : %s\n' "$(median_ratio epochgate_es256 passthrough)"
printf 'epochgate RS256 / passthrough : %s\n' "$(median_ratio epochgate_rs256 passthrough)"
printf 'epochgate ES256 / nginx auth_request : %s\n' "$(median_ratio epochgate_es256 nginx_auth_request)"
printf 'epochgate ES256 with access log / without : %s\n' "$(median_ratio epochgate_es256_log epochgate_es256)"
printf 'epochgate ES256 TLS / passthrough TLS : %s\n' "$(median_ratio epochgate_es256_tls passthrough_tls)"
printf 'epochgate ES256 fleet replica / epoch cache : %s\n' "$(median_ratio epochgate_es256_replica epochgate_es256)"
