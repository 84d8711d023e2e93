"""Claude Code transcripts on disk: removing the ones the bot has superseded.

Every resumed turn runs with `--fork-session` (see `Launcher._run_turn`), which writes a full,
self-contained copy of the conversation under a new session id. The parent transcript is then
never used again by the bot, and keeping it would make disk use grow with the square of a
conversation's length. Measured on 2.1.329: resuming a fork whose parent file was deleted
carries the whole history.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path

from loguru import logger

__all__ = ["config_dir", "discard_transcript"]

_SESSION_ID = re.compile(r"^[0-9a-fA-F-]{36}$")


def config_dir(env: Mapping[str, str]) -> Path:
    """Where the CLI keeps its state for a child started with `env`."""
    configured = env.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(configured)
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".claude"


def _remove(root: Path, session_id: str) -> int:
    removed = 0
    for path in root.glob(f"projects/*/{session_id}.jsonl"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


async def discard_transcript(session_id: str, env: Mapping[str, str]) -> int:
    """Delete the transcript file(s) of one session id; returns how many were removed.

    Never raises: a transcript left behind costs disk, not correctness.
    """
    if not _SESSION_ID.match(session_id):
        return 0
    try:
        removed = await asyncio.to_thread(_remove, config_dir(env), session_id)
    except OSError as exc:
        logger.warning("could not remove transcript of session {}: {}", session_id, exc)
        return 0
    if removed:
        logger.debug("removed superseded transcript of session {}", session_id)
    return removed
