"""Commands about Claude sessions and numbers: /sessions, /resume N, /stats.

Switching sessions closes the conversation's warm process, so the next turn starts a process
that resumes the chosen session.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from feishu_bot import wording

if TYPE_CHECKING:
    from database.models import TurnStats
    from feishu_bot.context import BotContext
    from feishu_bot.events import InboundMessage

__all__ = ["cmd_resume", "cmd_sessions", "cmd_stats"]

_LIST = 10


def _ago(ts: float | None) -> str:
    if not ts:
        return "?"
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


async def cmd_sessions(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    rows = await ctx.store.list_sessions(msg.conversation_key, limit=_LIST)
    if not rows:
        return "No Claude sessions in this conversation yet."
    conv = await ctx.store.get_conversation(msg.conversation_key)
    current = conv.session_id if conv else None
    lines = ["Recent Claude sessions (newest first); /resume N switches back to one:"]
    for n, row in enumerate(rows, 1):
        mark = " ← current" if row.session_id == current else ""
        words = wording.bounded(row.first_prompt.replace("\n", " "), 40)
        lines.append(
            f"{n}. {row.session_id[:8]} · {_ago(row.last_used_at)} · "
            f"{row.turns} turns · {words or '(no text)'}{mark}"
        )
    return "\n".join(lines)


async def cmd_resume(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    if not args.strip().isdigit():
        return "Usage: /resume N, with N from /sessions."
    n = int(args.strip())
    rows = await ctx.store.list_sessions(msg.conversation_key, limit=_LIST)
    if not 1 <= n <= len(rows):
        return f"There is no session {wording.bounded(args, 12)}; /sessions lists {len(rows)}."
    sid = rows[n - 1].session_id
    await ctx.launcher.close_session(msg.conversation_key)
    await ctx.store.set_session(msg.conversation_key, sid)
    return f"Switched to session {sid[:8]}: your next message continues it."


def _summary(label: str, stats: TurnStats) -> str:
    if not stats.count:
        return f"{label}: no turns"
    median = stats.median_duration_ms
    latency = f"{median / 1000:.1f}s" if median is not None else "?"
    return (
        f"{label}: {stats.count} turns, {100 * stats.ok / stats.count:.0f}% ok,"
        f" median {latency}, ${stats.total_cost_usd:.4f}"
    )


async def cmd_stats(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    midnight = time.time() - (time.time() % 86400)
    key = msg.conversation_key
    lines = ["Turns (success rate, median time, cost):"]
    for label, who in (("This conversation", key), ("Whole bot", None)):
        today = await ctx.store.turn_stats(who, since=midnight)
        total = await ctx.store.turn_stats(who, since=None)
        lines.append(_summary(f"{label}, today", today))
        lines.append(_summary(f"{label}, total", total))
    from feishu_bot.spend import SpendPolicy

    lines.append(await SpendPolicy.from_settings(ctx.settings, ctx.store).summary(
        msg.sender_open_id))
    return "\n".join(lines)
