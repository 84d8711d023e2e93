"""Bot commands: a table of `/name` → handler. Each returns the text of its reply.

Commands run at once, outside the conversation's queue, so `/stop` and `/status` answer while a
turn is running. Any `/word` not in the table is not a command: it goes to Claude as text.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from feishu_bot.events import InboundMessage

if TYPE_CHECKING:
    from database.models import Conversation
    from feishu_bot.context import BotContext

__all__ = ["COMMANDS", "parse_command", "run_command"]

CommandFn = Callable[["BotContext", InboundMessage, str], Awaitable[str]]
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\]:]{0,99}$")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


async def cmd_help(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    lines = ["Send me a message and Claude Code answers it in this chat's working directory."]
    lines += [f"/{name} — {summary}" for name, (_, summary) in COMMANDS.items()]
    lines.append("Any other /command is passed to Claude as text.")
    return "\n".join(lines)


async def cmd_new(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    await _ensure(ctx, msg)
    await ctx.store.clear_session(msg.conversation_key)
    return "Started a new conversation: your next message begins a fresh Claude session."


async def cmd_stop(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    stopped = ctx.turns.cancel_conversation(msg.conversation_key, reason="stop")
    if not stopped:
        return "Nothing is running in this conversation."
    return f"Stopped {stopped} request{'s' if stopped != 1 else ''} (running and queued)."


async def cmd_status(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    conv = await ctx.store.get_conversation(msg.conversation_key)
    handles = ctx.turns.handles(msg.conversation_key)
    running = [h for h in handles if h.running]
    if running:
        position = ctx.launcher.queue_position(msg.conversation_key)
        state = f"queued, position {position}" if position else "running"
    elif handles:
        state = f"{len(handles)} waiting"
    else:
        state = "idle"
    if len(handles) > 1:
        state += f" ({len(handles) - 1} more waiting)"
    stats = ctx.launcher.stats()
    model = (conv.model if conv else None) or ctx.settings.CLAUDE_MODEL or "CLI default"
    turns, cost = (conv.turn_count, conv.total_cost_usd) if conv else (0, 0.0)
    gateway = ctx.gateway_status()
    ws = "connected" if gateway.get("connected") else "disconnected"
    lines = [
        f"Conversation {msg.conversation_key}",
        f"• session: {(conv.session_id if conv else None) or 'none (next message starts fresh)'}",
        f"• state: {state}",
        f"• working directory: {conv.workdir if conv else ctx.workdir_root}",
        f"• model: {model}",
        f"• turns: {turns}, cost ${cost:.4f}",
        f"Bot: {stats.active}/{stats.max_concurrent} running, {stats.queued} queued, "
        f"uptime {_duration(ctx.uptime_s)}, websocket {ws}",
    ]
    return "\n".join(lines)


async def cmd_cd(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    root = ctx.workdir_root.resolve()
    conv = await _ensure(ctx, msg)
    if not args:
        return f"Working directory: {conv.workdir}\nUsage: /cd <path under {root}>"
    raw = Path(args).expanduser()
    target = (raw if raw.is_absolute() else Path(conv.workdir) / raw).resolve()
    if target != root and root not in target.parents:
        return f"Refused: {args} is outside the workspace {root}."
    if not target.is_dir():
        return f"No such directory: {target}"
    await ctx.store.set_workdir(msg.conversation_key, str(target))
    return f"Working directory is now {target}. Your next message starts a fresh Claude session."


async def cmd_model(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    conv = await _ensure(ctx, msg)
    if not args:
        current = conv.model or ctx.settings.CLAUDE_MODEL or "CLI default"
        return f"Model: {current}\nUsage: /model <name>, or /model default"
    if args.lower() in ("default", "reset"):
        await ctx.store.set_model(msg.conversation_key, None)
        return "Model reset to the default."
    if not _MODEL_NAME.match(args):
        return f"Not a valid model name: {args!r}"
    await ctx.store.set_model(msg.conversation_key, args)
    return f"Model set to {args} for this conversation."


async def _ensure(ctx: BotContext, msg: InboundMessage) -> Conversation:
    return await ctx.store.ensure_conversation(
        msg.conversation_key,
        chat_id=msg.chat_id,
        chat_type=msg.chat_type,
        thread_root=msg.thread_root,
        workdir=str(ctx.workdir_root.resolve()),
    )


COMMANDS: dict[str, tuple[CommandFn, str]] = {
    "help": (cmd_help, "show this help"),
    "new": (cmd_new, "forget this conversation's Claude session"),
    "stop": (cmd_stop, "stop the running request and the queued ones"),
    "status": (cmd_status, "show this conversation and the bot's state"),
    "cd": (cmd_cd, "change the working directory (under the workspace)"),
    "model": (cmd_model, "set the Claude model for this conversation"),
}


def parse_command(text: str) -> tuple[str, str] | None:
    """(name, args) when the text is one of our commands, else None."""
    if not text.startswith("/"):
        return None
    head, _, rest = text[1:].partition(" ")
    name = head.strip().lower()
    if name not in COMMANDS:
        return None
    return name, rest.strip()


async def run_command(ctx: BotContext, msg: InboundMessage, name: str, args: str) -> str:
    handler, _ = COMMANDS[name]
    return await handler(ctx, msg, args)
