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

