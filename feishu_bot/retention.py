"""Scheduled retention: the store's `prune` on an interval, plus the transcripts of the Claude
sessions it dropped (issue 12 #12).

The retention rules themselves (30 days of journal, 7 days of processed ids, the newest 20
sessions per conversation and the one in use) live in `database.history`, next to the SQL.
This module only schedules them and deletes what the database cannot: transcript files under
the CLI's config directory, via `claude.transcripts.discard_transcript`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from loguru import logger

from feishu_bot.claude.transcripts import discard_transcript

__all__ = ["PRUNE_INTERVAL_S", "prune_once", "run_pruning"]

PRUNE_INTERVAL_S = 3600.0

Discard = Callable[[str, Mapping[str, str]], Awaitable[int]]
Sleep = Callable[[float], Awaitable[None]]


class _Prunable(Protocol):
    async def prune(self, now: float | None = None) -> Any: ...


async def prune_once(
    store: _Prunable,
    *,
    env: Mapping[str, str] | None = None,
    discard: Discard = discard_transcript,
) -> Any:
    """Prune the store once and delete the dropped sessions' transcripts; the PruneResult.

    `env` is the environment the `claude` children get (it says where their transcripts
    are: HOME or CLAUDE_CONFIG_DIR); default the bot's own.
    """
    env = os.environ if env is None else env
    result = await store.prune()
    removed = 0
    for session_id in result.sessions:
        removed += await discard(session_id, env)
    if result.total:
        logger.info(
            "retention: pruned {} journal rows, {} processed ids, {} old sessions "
            "({} transcripts deleted)",
            result.turns,
            result.processed,
            len(result.sessions),
            removed,
        )
    return result


async def run_pruning(
    store: _Prunable,
    interval: float = PRUNE_INTERVAL_S,
    *,
    env: Mapping[str, str] | None = None,
    discard: Discard = discard_transcript,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Forever: `prune_once` now, then every `interval` seconds. Cancel the task to stop.

    A failed round is logged and tried again at the next interval; it never ends the loop.
    """
    while True:
        try:
            await prune_once(store, env=env, discard=discard)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("retention: pruning failed; trying again in {:g}s", interval)
        await sleep(interval)
