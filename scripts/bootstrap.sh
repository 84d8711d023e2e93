#!/usr/bin/env bash
# Installs everything the bot and its tests need, from the project's own lock files:
# uv (pinned), the Python environment (.venv from uv.lock), and the pinned Node tools
# (Claude Code CLI, pm2) into node_modules from package-lock.json. Safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV_VERSION=0.13.8
export UV_PYTHON_DOWNLOADS=never

if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
uv sync --frozen --quiet

command -v npm >/dev/null 2>&1 || { echo "bootstrap: npm is required (Node.js >= 20)" >&2; exit 1; }
if [ ! -x node_modules/.bin/claude ] || [ ! -x node_modules/.bin/pm2 ] \
   || ! cmp -s package-lock.json node_modules/.package-lock.json 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
fi
node_modules/.bin/claude --version >/dev/null
