"""/permissions: the conversation's "Always allow" grants, with who and when; remove one.

A removed grant must also leave the CLI, which holds it as a session rule: the conversation's
warm process is closed (after its running turn), so the next turn starts one with the grants
that remain. `/new` clears them all (handlers/commands.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from feishu_bot import wording

if TYPE_CHECKING:
    from database.models import Grant
    from feishu_bot.context import BotContext
    from feishu_bot.events import InboundMessage

__all__ = ["cmd_permissions", "describe_grant"]


def describe_grant(grant: Grant, now: float | None = None) -> str:
    """One line: what is allowed, by whom, how long ago."""
    what = f"network: {grant.rule}" if grant.kind == "host" else grant.rule
    return f"{what} · by {grant.granted_by or 'someone'} · {_ago(grant.granted_at, now)}"


def _ago(ts: float, now: float | None) -> str:
    seconds = max(0, int((now if now is not None else time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


async def cmd_permissions(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    key = msg.conversation_key
    words = args.split()
    if words and words[0].lower() in ("rm", "remove", "del"):
        return await _remove(ctx, key, words[1:])
    if words:
        return "Usage: /permissions, or /permissions rm N (N from the list)."
    grants = await ctx.store.list_grants(key)
    notice = await ctx.store.take_grant_notice(key)
    lines = []
    if notice:
        lines.append(
            f"Note: earlier “Always allow” grants ({wording.bounded(notice, 80)}) allowed every "
            "use of a tool, so they were removed when the bot was updated. Grants now name a "
            "command prefix, a tool or a host."
        )
    if not grants:
        lines.append(
            "Nothing is always allowed in this conversation: Claude asks before running "
            "commands (press “Always allow” on an approval to add a grant)."
        )
        return "\n".join(lines)
    lines.append("Always allowed in this conversation (/permissions rm N removes one; /new all):")
    lines += [f"{n}. {describe_grant(g)}" for n, g in enumerate(grants, 1)]
    return "\n".join(lines)


async def _remove(ctx: BotContext, key: str, rest: list[str]) -> str:
    if len(rest) != 1 or not rest[0].isdigit():
        return "Usage: /permissions rm N, with N from /permissions."
    grants = await ctx.store.list_grants(key)
    n = int(rest[0])
    if not 1 <= n <= len(grants):
        return f"There is no grant {n}; /permissions lists {len(grants)}."
    grant = grants[n - 1]
    if not await ctx.store.remove_grant(key, grant.grant_id):
        return f"Grant {n} was already removed."
    # The running CLI holds the grant as a session rule: only a new process forgets it.
    await ctx.launcher.close_session(key)
    return f"Removed: {grant.rule}. Claude asks again from the next message on."
