#!/usr/bin/env bash
# Quick start: install what is missing, then run the bot in the foreground.
# Configuration comes from the environment and ./.env (see .env.example).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/scripts/serve.sh" "$@"
