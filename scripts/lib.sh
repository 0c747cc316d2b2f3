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
wait_http() { # url [status]
  local code
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
    [ "$code" = "${2:-200}" ] && return 0
    sleep 0.1
  done
  die "no HTTP ${2:-200} from $1"
}
