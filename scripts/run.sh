#!/usr/bin/env bash
# Quick start: install what is missing, then run the bot in the foreground.
# Configuration comes from the environment and ./.env (see .env.example).
#
# Without a Feishu app configured (FEISHU_APP_ID neither in the environment nor in ./.env) and
# without arguments, it starts the playground instead: the bot answering in a browser through
# a local Feishu simulator (offline demo model when no Claude credentials are found).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"

app_configured() {
  [ -n "${FEISHU_APP_ID:-}" ] && return 0
  [ -f .env ] && grep -Eq \
    "^[[:space:]]*(export[[:space:]]+)?FEISHU_APP_ID[[:space:]]*=[[:space:]]*[\"']?[^\"'[:space:]#]" .env
}

if [ "$#" -eq 0 ] && ! app_configured; then
  echo "run.sh: FEISHU_APP_ID is not configured (environment or ./.env): starting the playground."
  echo "run.sh: then open the address it prints (http://127.0.0.1:PORT/?token=...) in a browser."
  exec "$ROOT/scripts/serve.sh" playground --auto-offline
fi
exec "$ROOT/scripts/serve.sh" "$@"
