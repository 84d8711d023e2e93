"""Does the Claude CLI have credentials? A cheap, offline guess for the playground.

Kept simple on purpose (README, "Playground"): the CLI counts as usable when one of these is
true, in this order —

1. ``ANTHROPIC_API_KEY``, ``ANTHROPIC_AUTH_TOKEN`` or ``CLAUDE_CODE_OAUTH_TOKEN`` is set
   (environment or ``.env``, which the caller has exported already);
2. the CLI was logged in with a subscription: ``$CLAUDE_CONFIG_DIR/.credentials.json`` or
   ``~/.claude/.credentials.json`` exists;
3. the CLI was logged in with an API key: ``~/.claude.json`` has a ``primaryApiKey``.

Nothing is sent anywhere; a wrong key is only found out by the first answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV_KEYS", "claude_credentials"]

ENV_KEYS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")


def claude_credentials(env: Mapping[str, str] | None = None) -> str | None:
    """Where the CLI's credentials come from (a short description), or None when none found."""
    env = os.environ if env is None else env
    for key in ENV_KEYS:
        if env.get(key, "").strip():
            return key
    home = Path(env.get("HOME") or Path.home())
    configured = env.get("CLAUDE_CONFIG_DIR")
    config_dir = Path(configured) if configured else home / ".claude"
    credentials = config_dir / ".credentials.json"
    if credentials.is_file():
        return f"CLI login ({credentials})"
    config = home / ".claude.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("primaryApiKey"):
        return f"CLI API key ({config})"
    return None
