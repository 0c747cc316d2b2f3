# Shell helpers shared by dev.sh and the bench/ scripts: source it, do not run it.

log() { printf '\033[1m[%s]\033[0m %s\n' "${LOG_TAG:-dev.sh}" "$*" >&2; }

# Debian packages wanted for a command: "command:package".
apt_wanted() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local install="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    log "installing ${missing[*]}"
    sh -c "$install" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    log "installing ${missing[*]} (sudo)"
    sudo sh -c "$install" >/dev/null
  else
    log "missing: ${missing[*]}. Install them with:"
    log "  sudo sh -c '$install'"
    exit 1
  fi
}

die() { log "$*"; exit 1; }

# A TCP port free on 127.0.0.1 right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 30 s for URL to answer with STATUS (default 200).
wait_http() { # url [status [curl options...]]
  local code
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${@:3}" "$1" || true)
    [ "$code" = "${2:-200}" ] && return 0
    sleep 0.1
  done
  die "no HTTP ${2:-200} from $1"
}

# Bench scripts: a scratch directory $work, removed at exit together with every process
# whose pid was added to $pids. Readable by all: nginx workers (user nobody) write there.
bench_workdir() {
  work=$(mktemp -d)
  chmod 755 "$work"
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# The fast static upstream every bench case proxies to: one nginx worker answering 200 "ok".
# Sets UPSTREAM to its port. Arguments: an optional command prefix (e.g. taskset -c 1).
start_static_upstream() {
  UPSTREAM=$(free_port)
  cat > "$work/upstream.conf" <<EOF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.err warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$UPSTREAM; keepalive_requests 1000000;
  location / { return 200 "ok"; } } }
EOF
  "$@" nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
  wait_http "http://127.0.0.1:$UPSTREAM/"
}

# The config of an edge under a bench, to stdout: one thread, loopback only, no grace period,
# the bench tokens' issuer and audience ($ISSUER, $AUDIENCE). Entries added inside `proxy:`
# and `auth_origin:` come from $EDGE_PROXY_EXTRA and $EDGE_ORIGIN_EXTRA (YAML flow-map
# entries, e.g. `EDGE_ORIGIN_EXTRA="timeout: 1s" bench_edge_yaml ...`); the arguments after
# the algorithm are further top-level lines (e.g. `cache: { refresh_after: 30s }`).
bench_edge_yaml() { # name proxy-port admin-port auth-port upstream-port algorithm [yaml-line...]
  # EDGE_PROXY_EXTRA, EDGE_ORIGIN_EXTRA, EDGE_TOKEN_EXTRA: more keys of those sections.
  local name=$1 proxy=$2 admin=$3 auth=$4 upstream=$5 algorithm=$6
  shift 6
  cat <<YAML
server: { threads: 1, pid_file: $work/$name.pid, upgrade_sock: $work/$name.sock, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }
proxy: { listen: ["127.0.0.1:$proxy"], upstream: { peers: ["127.0.0.1:$upstream"] }${EDGE_PROXY_EXTRA:+, $EDGE_PROXY_EXTRA} }
admin: { listen: "127.0.0.1:$admin" }
auth_origin: { url: "http://127.0.0.1:$auth"${EDGE_ORIGIN_EXTRA:+, $EDGE_ORIGIN_EXTRA} }
token: { algorithms: [$algorithm], issuer: "$ISSUER", audience: "$AUDIENCE"${EDGE_TOKEN_EXTRA:+, $EDGE_TOKEN_EXTRA} }
YAML
  [ $# -eq 0 ] || printf '%s\n' "$@"
}
