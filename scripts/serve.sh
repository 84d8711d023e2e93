#!/usr/bin/env bash
# Runs `feishu-bot run` with the project's environment; `exec` keeps the PID so pm2/systemd
# signals reach the bot itself. The pinned Claude CLI in node_modules comes first on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/node_modules/.bin:$PATH"
exec "$ROOT/.venv/bin/feishu-bot" "${@:-run}"
