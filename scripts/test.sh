#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs everything (Python deps, the pinned Claude
# CLI and pm2 from npm, bubblewrap and socat for the sandbox tests), lints, then runs pytest.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/bootstrap.sh"

# The playground's browser test drives Debian's chromium. Without it that test fails (it does
# not skip): install it when we can (root with apt-get), say so clearly when we cannot.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing Debian chromium for the browser test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
      || echo "test.sh: could not install chromium; the browser test will fail" >&2
  else
    echo "test.sh: chromium is missing and cannot be installed here (needs root and apt-get):" \
      "the browser test will fail. Install it with: apt-get install -y chromium" >&2
  fi
fi
# promtool (checks the shipped Prometheus rules): only the binary, taken out of Debian's
# prometheus package into .tools/ (installing the package would also set up a server).
if [ -z "${PROMTOOL:-}" ] && ! command -v promtool >/dev/null 2>&1; then
  if [ ! -x .tools/bin/promtool ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: fetching promtool from Debian's prometheus package"
    mkdir -p .tools/bin .tools/prometheus-deb
    ( cd .tools/prometheus-deb \
        && { apt-get download prometheus >/dev/null 2>&1 \
             || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 \
                  && apt-get download prometheus >/dev/null 2>&1; }; } \
        && dpkg-deb -x prometheus_*.deb extracted \
        && cp extracted/usr/bin/promtool ../bin/promtool ) \
      || echo "test.sh: could not fetch promtool; its rules test will be skipped" >&2
    rm -rf .tools/prometheus-deb
  fi
  [ -x .tools/bin/promtool ] && export PROMTOOL="$ROOT/.tools/bin/promtool"
fi
# The sandbox tests run the real CLI under bubblewrap: they fail (never skip) without it.
if ! command -v bwrap >/dev/null 2>&1 || ! command -v socat >/dev/null 2>&1; then
  echo "test.sh: bubblewrap or socat is missing (bootstrap.sh installs them as root):" \
    "the sandbox tests will fail. Install them with: apt-get install -y bubblewrap socat" >&2
fi
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
.venv/bin/ruff check .
set +e
.venv/bin/pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
