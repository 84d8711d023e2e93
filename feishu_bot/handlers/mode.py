"""/mode: the conversation's permission mode (default, acceptEdits, plan, ...).

The modes offered are CLAUDE_ALLOWED_MODES (default: default, acceptEdits, plan); the operator
must list bypassPermissions for anyone to choose it. A change closes the conversation's warm
process (now if idle, after its running turn otherwise), so the next message starts in the new
mode; `/new` goes back to the operator's CLAUDE_PERMISSION_MODE. In plan mode Claude plans
first and asks for approval with a plan card (`feishu_bot.plan_review`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from feishu_bot import wording

if TYPE_CHECKING:
    from feishu_bot.context import BotContext
    from feishu_bot.events import InboundMessage

__all__ = ["MODE_WORDS", "cmd_mode", "effective_mode"]

MODE_WORDS: Final = {
    "default": "Claude asks before editing files or running commands",
    "acceptEdits": "Claude edits files without asking; commands are still asked for",
    "plan": "Claude only plans; you approve the plan before it changes anything",
    "bypassPermissions": "Claude does everything without asking",
    "dontAsk": "Claude does only what is allowed beforehand, without asking",
    "manual": "Claude asks before every tool",
    "auto": "the CLI decides what to ask",
}


async def effective_mode(ctx: BotContext, conversation_key: str) -> tuple[str, bool]:
    """(the mode the conversation's next turn runs in, whether /mode chose it)."""
    chosen = await ctx.store.permission_mode(conversation_key)
    return (chosen or ctx.settings.CLAUDE_PERMISSION_MODE), chosen is not None


async def cmd_mode(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    allowed = list(ctx.settings.CLAUDE_ALLOWED_MODES)
    current, chosen = await effective_mode(ctx, msg.conversation_key)
    wanted = args.strip()
    if not wanted:
        origin = "chosen with /mode" if chosen else "the bot's default"
        return (
            f"Permission mode: {current} ({origin}): {MODE_WORDS.get(current, current)}.\n"
            f"Usage: /mode {'|'.join(allowed)}"
        )
    match = next((m for m in allowed if m.lower() == wanted.lower()), None)
    if match is None:
        return (
            f"{wording.bounded(wanted, 40)} is not a mode you can choose here; choose one of "
            f"{', '.join(allowed)} (CLAUDE_ALLOWED_MODES)."
        )
    if match == current and chosen:
        return f"This conversation is already in {match} mode."
    await ctx.store.set_permission_mode(msg.conversation_key, match)
    await ctx.launcher.close_session(msg.conversation_key)
    return (
        f"Permission mode is now {match}: {MODE_WORDS.get(match, match)}. It applies from your "
        "next message, until /mode changes it or /new resets it."
    )
