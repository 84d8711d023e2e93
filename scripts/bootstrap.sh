#!/usr/bin/env bash
# Installs everything the bot and its tests need, from the project's own lock files:
# uv (pinned), the Python environment (.venv from uv.lock), and the pinned Node tools
# (Claude Code CLI, pm2) into node_modules from package-lock.json. Safe to run again.
#
# uv goes into a private tool environment (.tools/uv-venv), never into the system Python, so
# this works on a stock Debian/Ubuntu python3 that refuses `pip install` (PEP 668).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV_VERSION=0.13.8
export UV_PYTHON_DOWNLOADS=never
TOOL_VENV="$ROOT/.tools/uv-venv"

die() { echo "bootstrap: $*" >&2; exit 1; }

# Prerequisites first, one line each, before anything slow runs.
command -v python3 >/dev/null 2>&1 || die "python3 is required: install the python3 package (>= 3.11)"
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
  || die "Node.js and npm are required: install the nodejs and npm packages (Node.js >= 20)"

uv_version() { "$1" --version 2>/dev/null | awk '{print $2}'; }

if [ "$(uv_version "$TOOL_VENV/bin/uv")" = "$UV_VERSION" ]; then
  UV="$TOOL_VENV/bin/uv"
elif command -v uv >/dev/null 2>&1 && [ "$(uv_version uv)" = "$UV_VERSION" ]; then
  UV="$(command -v uv)"
else
  # Debian/Ubuntu ship venv without ensurepip unless python3-venv is installed.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 \
    || die "install the python3-venv package (python3 -m venv is unavailable)"
  rm -rf "$TOOL_VENV"
  python3 -m venv "$TOOL_VENV" \
    || die "install the python3-venv package (python3 -m venv failed)"
  "$TOOL_VENV/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  UV="$TOOL_VENV/bin/uv"
fi
"$UV" sync --frozen --quiet

# npm's own node_modules/.package-lock.json never equals package-lock.json byte for byte, so a
# copy of the lock file installed last is kept as the stamp.
STAMP=node_modules/.feishu-bot-package-lock.json
if [ ! -x node_modules/.bin/claude ] || [ ! -x node_modules/.bin/pm2 ] \
   || ! cmp -s package-lock.json "$STAMP" 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$STAMP"
fi
node_modules/.bin/claude --version >/dev/null

# Claude Code's sandbox (CLAUDE_SANDBOX=auto, the default) needs bubblewrap and socat; without
# them the bot runs Claude's commands unconfined and says so. Installed when we can (root with
# apt-get), otherwise one line says how.
if ! command -v bwrap >/dev/null 2>&1 || ! command -v socat >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing bubblewrap and socat for Claude Code's sandbox"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq bubblewrap socat >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap socat >/dev/null 2>&1; } \
      || echo "bootstrap: could not install bubblewrap and socat; the sandbox will be off" >&2
  else
    echo "bootstrap: bubblewrap or socat is missing (needs root and apt-get to install):" \
      "Claude's commands will run unconfined. Install them with: sudo apt-get install -y" \
      "bubblewrap socat" >&2
  fi
fi
